"""Whether a run that says ``running`` still is: its controller, boot, pid, the pid's start time and its
command line; and how the nightly history treats a run on another controller (unknown, for a while)."""

from __future__ import annotations

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


def started(*argv: str) -> subprocess.Popen[bytes]:
    """A sleeping Python process, returned once it runs (right after exec its cmdline reads empty)."""
    child = subprocess.Popen([sys.executable, "-c", SLEEPER, *argv], stdout=subprocess.PIPE)
    assert child.stdout is not None and child.stdout.readline() == b"ready\n"
    return child


@pytest.fixture
def lab_process() -> Iterator[subprocess.Popen[bytes]]:
    """A process with "lab" on its command line, like `python -m lab ...`; stopped by its pid afterwards."""
    child = started("lab")
    try:
        yield child
    finally:
        child.kill()
        child.wait()


def running(pid: int, ticks: int | None = None, start_pid: int | None = None) -> dict[str, object]:
    """A manifest saying ``running`` on this machine and boot; with ``ticks``, the start time recorded for
    ``start_pid`` (by default the recorded pid)."""
    manifest = {"status": "running", "pid": pid, "boot_id": boot_id(), "controller": platform.node()}
    if ticks is not None:
        manifest["process_start"] = {"pid": pid if start_pid is None else start_pid, "ticks": ticks}
    return manifest


def test_the_start_time_is_field_22_even_when_the_command_name_holds_spaces_and_parentheses() -> None:
    stat = "1234 (python3 (lab) x) S 1 1234 1234 0 -1 4194560 2000 0 0 0 10 5 0 0 20 0 1 0 987654 12345678 900"
    assert stat_start_time(stat) == 987654


def test_owner_records_this_process_start_time() -> None:
    import psutil

    record = owner()
    assert record["pid"] == record["process_start"]["pid"] == os.getpid()
    since_boot = psutil.Process().create_time() - psutil.boot_time()
    assert record["process_start"]["ticks"] / os.sysconf("SC_CLK_TCK") == pytest.approx(since_boot, abs=1.0)


def test_a_lab_process_started_when_recorded_is_alive(lab_process: subprocess.Popen[bytes]) -> None:
    assert liveness(running(lab_process.pid, start_ticks(lab_process.pid))) == "alive"


def test_a_pid_reused_by_a_later_lab_process_is_dead(lab_process: subprocess.Popen[bytes]) -> None:
    earlier = start_ticks(lab_process.pid) - 1  # the recorded process started a tick before this one
    assert liveness(running(lab_process.pid, earlier)) == "dead"


def test_a_manifest_without_a_start_time_is_judged_as_before(lab_process: subprocess.Popen[bytes]) -> None:
    assert liveness(running(lab_process.pid)) == "alive"
    # a start time recorded for another pid (the pid edited alone) says nothing about this one
    assert liveness(running(lab_process.pid, start_ticks(lab_process.pid) - 1, start_pid=os.getpid())) == "alive"
    lab_process.kill()
    lab_process.wait()
    assert liveness(running(lab_process.pid)) == "dead"


def test_the_command_line_must_still_be_a_lab_process() -> None:
    child = started()
    try:
        assert liveness(running(child.pid, start_ticks(child.pid))) == "dead"
    finally:
        child.kill()
        child.wait()


def test_resume_takes_over_a_run_whose_pid_was_reused(tmp_path: Path, lab_process: subprocess.Popen[bytes]) -> None:
    store = RunStore.create(tmp_path, {"matrix_name": "m"}, run_id="r1")
    ticks = start_ticks(lab_process.pid) + 1  # recorded for a process that started a tick after this one
    store.update_manifest(pid=lab_process.pid, process_start={"pid": lab_process.pid, "ticks": ticks})
    assert store.claim() == "dead"
    manifest = store.manifest()
    assert manifest["pid"] == os.getpid()
    assert manifest["process_start"] == {"pid": os.getpid(), "ticks": start_ticks(os.getpid())}
    assert "ended without marking the run" in manifest["died"]


def utc(seconds_ago: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - seconds_ago))


def elsewhere(history: History, run_id: str, started: str, matrix: str = "nightly") -> Path:
    root = history.runs / run_id
    root.mkdir(parents=True)
    (root / "manifest.json").write_text(json.dumps({"run_id": run_id, "matrix_name": matrix, "status": "running",
                                                    "started_utc": started, "controller": "another-host",
                                                    "pid": 1, "boot_id": "theirs"}))  # fmt: skip
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
