"""Boot groups over Dask distributed: an in-process cluster with two workers, and a worker started over
real SSH (an sshd on 127.0.0.1) whose death mid-cell is survived.  Results always land on the controller."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import LocalSshd, pid_alive, qemu_pids

pytestmark = [pytest.mark.integration, pytest.mark.kernels("static")]


REPO = Path(__file__).resolve().parents[2]
MATRIX = """
[matrix]
kernels = ["static"]
pools = ["2MiB", "4MiB"]
workloads = ["a"]
observe = "all"

[workloads.a]
rw = "randread"
bs = "64k"
iodepth = 16
numjobs = 2
runtime = "RUNTIME"
size = "64M"
"""


def lab(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "lab", "run", "matrix", *args],
        cwd=REPO,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def layout(run: Path) -> set[str]:
    """The run directory's shape: file names per cell and the run-level files."""
    names = {p.name for p in run.iterdir() if p.is_file()}
    for cell in (run / "cells").iterdir():
        names |= {f"cells/*/{p.name}" for p in cell.iterdir()}
    return names


def test_two_local_workers_give_the_same_run_directory_as_one_thread(tmp_path: Path) -> None:
    matrix = tmp_path / "m.toml"
    matrix.write_text(MATRIX.replace("RUNTIME", "3s"))
    before = qemu_pids()
    runs = {}
    for jobs in ("1", "2"):
        proc = lab(str(matrix), "--results", str(tmp_path / f"jobs{jobs}"), "--jobs", jobs)
        output, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, output
        [runs[jobs]] = list((tmp_path / f"jobs{jobs}").iterdir())
    assert layout(runs["1"]) == layout(runs["2"])
    one, two = (pd.read_parquet(runs[j] / "cells.parquet") for j in ("1", "2"))
    assert sorted(one["cell_id"]) == sorted(two["cell_id"]) and (two["status"] == "ok").all()
    assert (two["hiwater"] > 0).all() and (two["bounces"] > 0).all()  # real bouncing, measured by the workers
    manifest = json.loads((runs["2"] / "manifest.json").read_text())
    assert manifest["jobs"] == 2
    # Two guests at once fit this host only with a core per vCPU plus one for each QEMU: on a 2-core machine
    # they do not, and the run, its rows and its report say so; one guest at a time never competes.
    vcpus, cores = int(two["vcpus"].iloc[0]), os.cpu_count() or 1
    crowded = 2 * (vcpus + 1) > cores
    assert list(two["host_guest_slots"].unique()) == [2] and list(one["host_guest_slots"].unique()) == [1]
    assert two["host_oversubscribed"].eq(crowded).all() and not one["host_oversubscribed"].any()
    assert (manifest["contention"] is not None) == crowded
    assert ("more guests at once" in (runs["2"] / "report.md").read_text()) == crowded
    assert qemu_pids() - before == set()


def hosts_file(tmp_path: Path, sshd: LocalSshd, extra: str = "") -> Path:
    hosts = tmp_path / "hosts.toml"
    hosts.write_text(
        f'[hosts.loopback]\naddress = "127.0.0.1:{sshd.port}"\nkey = "{sshd.client_key}"\n'
        f'host_key = "{sshd.host_key_line}"\nslots = 1\ncache = "{tmp_path / "worker-cache"}"\n'
        f'python = "{sys.executable}"\nplatforms = ["tcg"]\n{extra}'
    )
    return hosts


def workers_left() -> list[str]:
    out = subprocess.run(["pgrep", "-f", "distributed.cli.dask_worker"], capture_output=True, text=True).stdout
    return [pid for pid in out.split() if pid_alive(int(pid))]


def test_a_worker_over_ssh_runs_the_cells_and_the_results_come_home(local_sshd: LocalSshd, tmp_path: Path) -> None:
    matrix = tmp_path / "m.toml"
    matrix.write_text(MATRIX.replace("RUNTIME", "3s"))
    before = qemu_pids()
    # The host's own QEMU and firmware, as the inventory names them, reach its worker (never the controller's):
    # the worker runs the QEMU by the inventory's absolute path and records the firmware image by its hash.
    qemu = shutil.which("qemu-system-x86_64")
    firmware = tmp_path / "host-only-td.fd"
    firmware.write_bytes(b"a TDVF image only this host has")
    extra = f'qemu = "{qemu}"\nfirmware = {{tdx = "{firmware}"}}\n'
    # A second host nobody listens for: the run goes on without it and says so.
    extra += (
        f'[hosts.gone]\naddress = "127.0.0.1:1"\nkey = "{local_sshd.client_key}"\n'
        f'host_key = "{local_sshd.host_key_line}"\nplatforms = ["tcg"]\n'
    )
    hosts = hosts_file(tmp_path, local_sshd, extra)
    proc = lab(str(matrix), "--results", str(tmp_path / "results"), "--hosts", str(hosts))
    output, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, output
    [run] = list((tmp_path / "results").iterdir())
    cells = pd.read_parquet(run / "cells.parquet")
    assert len(cells) == 2 and (cells["status"] == "ok").all() and (cells["hiwater"] > 0).all()
    digest = hashlib.sha256(firmware.read_bytes()).hexdigest()[:16]
    assert set(cells["firmware_tdx"]) == {f"{firmware} (sha256 {digest})"}
    assert set(cells["host_id"]) == {"loopback"}
    unreachable = json.loads((run / "manifest.json").read_text())["hosts_unreachable"]
    assert list(unreachable) == ["gone"] and "could not start its worker over SSH" in unreachable["gone"]
    assert (run / "cells" / cells["cell_id"][0] / "fio.json").is_file()  # artifacts, not just rows
    # The worker had its own cache: kernel, initrd and key were staged there by content hash.
    staged = list((tmp_path / "worker-cache" / "staged").glob("*/*"))
    assert {p.name for p in staged} >= {"bzImage", "rootfs.cpio"}
    assert qemu_pids() - before == set()
    deadline = time.monotonic() + 30
    while workers_left() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not workers_left(), "the SSH-started worker outlived the run"


def process_age_s(pid: int) -> float:
    """Seconds since the process started (0 if it is gone)."""
    try:
        started = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, IndexError, ValueError):
        return 0.0
    return uptime - started / os.sysconf("SC_CLK_TCK")


def test_a_worker_killed_mid_cell_is_replaced_and_the_run_completes(local_sshd: LocalSshd, tmp_path: Path) -> None:
    matrix = tmp_path / "m.toml"
    matrix.write_text(MATRIX.replace("RUNTIME", "8s"))
    before = qemu_pids()
    proc = lab(str(matrix), "--results", str(tmp_path / "results"), "--hosts", str(hosts_file(tmp_path, local_sshd)))
    # A QEMU that has lived 6 s is a cell's guest (the worker's KVM probe exits within a second), and the
    # group's first: wait for it however long a loaded machine takes to start it.
    deadline = time.monotonic() + 600
    while not (booted := [pid for pid in qemu_pids() - before if process_age_s(pid) >= 6]):
        assert proc.poll() is None and time.monotonic() < deadline, "no QEMU was started"
        time.sleep(0.2)
    [qemu] = booted
    worker = int(Path(f"/proc/{qemu}/stat").read_text().split()[3])  # QEMU's parent: the worker process
    os.kill(worker, signal.SIGKILL)
    output, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, output
    assert not pid_alive(qemu), "the killed worker's QEMU survived"
    [run] = list((tmp_path / "results").iterdir())
    cells = pd.read_parquet(run / "cells.parquet")
    assert len(cells) == 2 and (cells["status"] == "ok").all(), cells[["cell_id", "status", "failure_reason"]]
    assert qemu_pids() - before == set()
    # The run says what happened: the worker lost (the nanny started another on the same host) and the group
    # it held, run again there; the engine's own lines are in engine.log, not on the terminal.
    account = json.loads((run / "manifest.json").read_text())["infrastructure"]
    [lost] = account["workers_lost"]
    assert lost["worker"] == "loopback" and len(lost["groups"]) == 1 and lost["groups"][0] in set(cells["cell_id"])
    assert account["groups_rerun"] == [
        {"group": lost["groups"][0], "cells": 1, "from": "loopback", "to": "loopback", "outcome": "1 ok"}
    ]
    assert account["groups_lost"] == [] and account["hosts_left_out"] == {}
    assert f"- worker loopback ({lost['address']}) lost at {lost['utc']}, running {lost['groups'][0]}" in output
    assert f"- boot group {lost['groups'][0]} (1 cell) ran again on loopback after loopback was lost" in output
    for noise in ("distributed.", "Traceback", "CancelledError"):
        assert noise not in output, output


def test_a_run_over_ssh_stopped_after_a_cell_resumes_over_ssh_and_keeps_that_cell(
    local_sshd: LocalSshd, tmp_path: Path
) -> None:
    matrix = tmp_path / "m.toml"
    matrix.write_text(MATRIX.replace("RUNTIME", "3s"))
    hosts = str(hosts_file(tmp_path, local_sshd))
    results = tmp_path / "results"
    before = qemu_pids()
    proc = lab(str(matrix), "--results", str(results), "--hosts", hosts)
    deadline = time.monotonic() + 600
    while not list(results.glob("*/cells/*/cell.json")):  # the first group's cell came home
        assert proc.poll() is None and time.monotonic() < deadline, "no cell finished"
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, output
    [run] = list(results.iterdir())
    [kept] = list(run.glob("cells/*/cell.json"))
    wall = json.loads(kept.read_text())["cell_wall_s"]
    assert json.loads((run / "manifest.json").read_text())["status"] == "interrupted"
    resumed = lab(str(matrix), "--results", str(results), "--hosts", hosts, "--resume", str(run))
    output, _ = resumed.communicate(timeout=900)
    assert resumed.returncode == 0, output
    cells = pd.read_parquet(run / "cells.parquet")
    assert len(cells) == 2 and (cells["status"] == "ok").all() and set(cells["host_id"]) == {"loopback"}
    again = cells.set_index("cell_id")["cell_wall_s"]
    assert again[kept.parent.name] == wall, "the kept cell was run again"
    assert qemu_pids() - before == set()
