"""Whether a run that says ``running`` still is: its controller, boot, pid, the pid's start time and its
command line; and how the nightly history treats a run on another controller (unknown, for a while)."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.history import History
from lab.store import RunStore, liveness, owner, stat_start_time


def boot_id() -> str:
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()


def start_ticks(pid: int) -> int:
    """Field 22 of /proc/<pid>/stat, counted after the command name's closing parenthesis (fields 3...)."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])


SLEEPER = "import time; print('ready', flush=True); time.sleep(120)"


def started(*argv: str, python: str = sys.executable) -> subprocess.Popen[bytes]:
    """A sleeping Python process, returned once it runs (right after exec its cmdline reads empty)."""
    child = subprocess.Popen([python, "-c", SLEEPER, *argv], stdout=subprocess.PIPE)
    assert child.stdout is not None and child.stdout.readline() == b"ready\n"
    return child


def stopped(child: subprocess.Popen[bytes]) -> None:
    child.kill()
    child.wait()


@pytest.fixture
def checkout_python(tmp_path: Path) -> str:
    """This Python reached through a path like a user's checkout: it holds "lab", "swiotlb-lab" and a space,
    so any process started from it has all three on its command line (as every Python of the project's venv
    has wherever the user cloned it)."""
    link = tmp_path / "my checkouts" / "swiotlb-lab" / "lab" / ".venv" / "bin" / "python"
    link.parent.mkdir(parents=True)
    link.symlink_to(Path(sys.executable).resolve())
    return str(link)


@pytest.fixture
def lab_process(checkout_python: str) -> Iterator[subprocess.Popen[bytes]]:
    """A process like `python -m lab run ...` started from a checkout; stopped by its pid afterwards."""
    child = started("-m", "lab", "run", "matrix", python=checkout_python)
    try:
        yield child
    finally:
        stopped(child)


def cmdline_sha256(pid: int) -> str:
    return hashlib.sha256(Path(f"/proc/{pid}/cmdline").read_bytes()).hexdigest()


def running(
    pid: int, ticks: int | None = None, start_pid: int | None = None, argv_sha256: str | None = None
) -> dict[str, object]:
    """A manifest saying ``running`` on this machine and boot; with ``ticks`` and/or ``argv_sha256``, the
    start time and argv digest recorded for ``start_pid`` (by default the recorded pid)."""
    manifest: dict[str, object] = {"status": "running", "pid": pid, "boot_id": boot_id(), "controller": platform.node()}
    if ticks is not None or argv_sha256 is not None:
        manifest["process_start"] = {
            "pid": pid if start_pid is None else start_pid,
            "ticks": ticks,
            "cmdline_sha256": argv_sha256,
        }
    return manifest


def test_the_start_time_is_field_22_even_when_the_command_name_holds_spaces_and_parentheses() -> None:
    stat = "1234 (python3 (lab) x) S 1 1234 1234 0 -1 4194560 2000 0 0 0 10 5 0 0 20 0 1 0 987654 12345678 900"
    assert stat_start_time(stat) == 987654


def test_owner_records_this_process_start_time_and_argv_digest() -> None:
    import psutil

    record = owner()
    assert record["pid"] == record["process_start"]["pid"] == os.getpid()
    since_boot = psutil.Process().create_time() - psutil.boot_time()
    assert record["process_start"]["ticks"] / os.sysconf("SC_CLK_TCK") == pytest.approx(since_boot, abs=1.0)
    argv = b"\0".join(arg.encode() for arg in psutil.Process().cmdline()) + b"\0"
    assert record["process_start"]["cmdline_sha256"] == hashlib.sha256(argv).hexdigest()


def test_the_run_process_recorded_with_its_start_time_and_argv_is_alive(lab_process: subprocess.Popen[bytes]) -> None:
    pid = lab_process.pid
    assert liveness(running(pid, start_ticks(pid), argv_sha256=cmdline_sha256(pid))) == "alive"
    assert liveness(running(pid, start_ticks(pid))) == "alive"  # manifests of session 7 recorded the start only
    assert liveness(running(pid, argv_sha256=cmdline_sha256(pid))) == "alive"


def test_a_pid_reused_by_a_later_process_is_dead(lab_process: subprocess.Popen[bytes]) -> None:
    pid = lab_process.pid
    earlier = start_ticks(pid) - 1  # the recorded process started a tick before this one
    assert liveness(running(pid, earlier)) == "dead"
    assert liveness(running(pid, earlier, argv_sha256=cmdline_sha256(pid))) == "dead"  # even with the same argv


def test_a_process_with_another_argv_is_dead_wherever_the_checkout_lives(checkout_python: str) -> None:
    """Any Python of a checkout under .../swiotlb-lab/lab/ has "lab" on its command line; only the run's own
    argv, as recorded, makes a pid the run's.  The old substring check said "alive" here."""
    child = started(python=checkout_python)
    try:
        cmdline = Path(f"/proc/{child.pid}/cmdline").read_bytes()
        assert b"lab" in cmdline and b"swiotlb-lab" in cmdline and b" " in cmdline
        the_run = hashlib.sha256(b"python\0-m\0lab\0run\0matrix\0").hexdigest()
        assert liveness(running(child.pid, start_ticks(child.pid), argv_sha256=the_run)) == "dead"
        assert liveness(running(child.pid, argv_sha256=the_run)) == "dead"
    finally:
        stopped(child)


def test_a_manifest_that_records_no_identity_is_unknown_while_its_pid_lives(
    lab_process: subprocess.Popen[bytes],
) -> None:
    """Manifests from before the lab recorded its process: a live pid cannot be told apart, whatever its
    command line says; a gone pid is dead."""
    assert liveness(running(lab_process.pid)) == "unknown"
    # a start time recorded for another pid (the pid edited alone) says nothing about this one
    assert liveness(running(lab_process.pid, start_ticks(lab_process.pid) - 1, start_pid=os.getpid())) == "unknown"
    stopped(lab_process)
    assert liveness(running(lab_process.pid)) == "dead"


def test_resume_takes_over_a_run_whose_pid_was_reused(tmp_path: Path, lab_process: subprocess.Popen[bytes]) -> None:
    store = RunStore.create(tmp_path, {"matrix_name": "m"}, run_id="r1")
    ticks = start_ticks(lab_process.pid) + 1  # recorded for a process that started a tick after this one
    store.update_manifest(
        pid=lab_process.pid,
        process_start={"pid": lab_process.pid, "ticks": ticks, "cmdline_sha256": cmdline_sha256(lab_process.pid)},
    )
    assert store.claim() == "dead"
    manifest = store.manifest()
    assert manifest["pid"] == os.getpid()
    assert manifest["process_start"] == {
        "pid": os.getpid(),
        "ticks": start_ticks(os.getpid()),
        "cmdline_sha256": cmdline_sha256(os.getpid()),
    }
    assert "ended without marking the run" in manifest["died"]


def utc(seconds_ago: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - seconds_ago))


def elsewhere(history: History, run_id: str, started: str, matrix: str = "nightly") -> Path:
    root = history.runs / run_id
    root.mkdir(parents=True)
    (root / "manifest.json").write_text(
        json.dumps(
            {
                "run_id": run_id,
                "matrix_name": matrix,
                "status": "running",
                "started_utc": started,
                "controller": "another-host",
                "pid": 1,
                "boot_id": "theirs",
            }
        )
    )
    return root


DAY = 86400


def test_a_run_on_another_controller_is_unknown_for_two_days_then_dead(tmp_path: Path) -> None:
    history = History(tmp_path)
    elsewhere(history, "young", utc(2 * DAY - 60))
    elsewhere(history, "old", utc(2 * DAY + 60))
    status = history.nights().set_index("run_id")["status"]
    assert status.to_dict() == {"old": "dead", "young": "unknown"}
    assert set(history.nights()["controller"]) == {"another-host"}


def test_a_phase_written_lately_keeps_a_run_on_another_controller_unknown(tmp_path: Path) -> None:
    history = History(tmp_path)
    root = elsewhere(history, "long", utc(5 * DAY))
    (root / "phase.json").write_text(json.dumps({"cell_id": "c", "phase": "booting", "utc": utc(3600)}))
    assert history.nights()["status"].tolist() == ["unknown"]


def test_retention_keeps_an_unknown_run_only_while_it_is_young(tmp_path: Path) -> None:
    history = History(tmp_path)
    elsewhere(history, "20261120T010000-aaaa", "2026-11-20T01:00:00Z")  # a week ago: dead by now
    elsewhere(history, "young", utc(3600))
    for run_id, day in (("20261126T010000-cccc", 1), ("20261127T010000-dddd", 0)):
        root = history.runs / run_id
        root.mkdir(parents=True)
        manifest = {"run_id": run_id, "matrix_name": "nightly", "status": "failed", "started_utc": utc(day * DAY + 60)}
        (root / "manifest.json").write_text(json.dumps(manifest))
    assert history.retain(1) == ["20261120T010000-aaaa", "20261126T010000-cccc"]
    assert sorted(history.nights()["run_id"]) == ["20261127T010000-dddd", "young"]


def test_a_run_on_another_controller_with_no_time_recorded_is_dead(tmp_path: Path) -> None:
    history = History(tmp_path)
    elsewhere(history, "nodate", "")
    assert history.nights()["status"].tolist() == ["dead"]
