"""A real matrix run interrupted halfway (SIGINT), then resumed: every cell exactly once, no QEMU left."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from lab.store import load_cells
from tests.conftest import qemu_pids

pytestmark = [pytest.mark.integration, pytest.mark.kernels("static", "dynamic")]


MATRIX = """
[matrix]
kernels = ["static", "dynamic"]
pools = ["2MiB", "4MiB"]
workloads = ["a", "b"]
repetitions = 1

[workloads.a]
rw = "randread"
bs = "64k"
iodepth = 16
numjobs = 2
runtime = "2s"
size = "64M"

[workloads.b]
rw = "randread"
bs = "4k"
iodepth = 4
runtime = "2s"
size = "64M"
"""


def lab(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "lab", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )


def test_interrupted_matrix_resumes_and_yields_every_cell_exactly_once(tmp_path: Path) -> None:
    matrix = tmp_path / "resume.toml"
    matrix.write_text(MATRIX)
    results = tmp_path / "results"
    before = qemu_pids()
    proc = lab("run", "matrix", str(matrix), "--results", str(results))
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline and proc.poll() is None:
        done = list(results.glob("*/cells/*/cell.json"))
        if len(done) >= 4:
            break
        time.sleep(0.5)
    assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, output
    assert qemu_pids() - before == set(), "QEMU survived the interruption"

    [run_dir] = list(results.iterdir())
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "interrupted"
    interrupted = load_cells(run_dir)
    assert 4 <= len(interrupted) < 8
    first_pass = dict(zip(interrupted["cell_id"], interrupted["cell_wall_s"], strict=True))

    resumed = lab("run", "matrix", str(matrix), "--results", str(results), "--resume", str(run_dir))
    output, _ = resumed.communicate(timeout=1800)
    assert resumed.returncode == 0, output
    cells = pd.read_parquet(run_dir / "cells.parquet")
    assert len(cells) == 8
    assert sorted(cells["cell_id"]) == sorted(manifest["cells"])
    assert (cells["status"] == "ok").all(), cells[cells["status"] != "ok"][["cell_id", "failure_reason"]]
    # cells finished before the interruption were not redone
    again = dict(zip(cells["cell_id"], cells["cell_wall_s"], strict=True))
    assert all(again[cid] == wall for cid, wall in first_pass.items())
    assert json.loads((run_dir / "manifest.json").read_text())["status"] == "complete"
    assert (run_dir / "report.html").is_file()
    assert os.path.getsize(run_dir / "samples.parquet") > 0
