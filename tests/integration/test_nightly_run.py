"""Two real nights of a tiny matrix: the first establishes the baseline, the second's revision turns the
throttle's thresholds up to 95/90% of the pool (as a series change that stops throttling would), which
moves hiwater and failed maps: the gate exits 1 and the JUnit file names the failing testcases with
their numbers.  (A repeat of the same revision is tested on stored real cells in tests/unit/test_nightly.py,
where it is exactly reproducible.)"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from junitparser import Failure, JUnitXml

from lab.history import History
from tests.conftest import qemu_pids

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def kernels_built_first(built_kernels: Callable[..., object]) -> None:
    built_kernels("throttle")


REPO = Path(__file__).resolve().parents[2]
MATRIX = """
[matrix]
kernels = ["throttle"]
pools = ["4MiB"]  # 2048 slabs: the default throttle holds hiwater at 81-87%, without it the pool fills
workloads = ["heavy"]
repetitions = 3
observe = "none"
throttle = ["THRESHOLDS"]

[workloads.heavy]
rw = "randread"
bs = "256k"
iodepth = 128
numjobs = 4
runtime = "5s"
size = "256M"
"""


def nightly(matrix: Path, history: Path, junit: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lab", "nightly", "--matrix", str(matrix), "--history", str(history),
                           "--junit", str(junit)], cwd=REPO, capture_output=True, text=True, timeout=1200)  # fmt: skip


def test_a_night_whose_revision_stops_throttling_is_a_regression(tmp_path: Path) -> None:
    matrix, history = tmp_path / "tiny.toml", tmp_path / "history"
    before = qemu_pids()
    matrix.write_text(MATRIX.replace("THRESHOLDS", "default"))  # 70% / 65%
    first = nightly(matrix, history, tmp_path / "first.xml")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "this night is the baseline" in first.stdout

    matrix.write_text(MATRIX.replace("THRESHOLDS", "95/90"))
    second = nightly(matrix, history, tmp_path / "second.xml")
    assert second.returncode == 1, second.stdout + second.stderr
    failures = {case.name: case.result[0] for suite in JUnitXml.fromfile(str(tmp_path / "second.xml"))
                for case in suite if case.result and isinstance(case.result[0], Failure)}  # fmt: skip
    assert "hiwater_frac throttle/2048/nvme/heavy" in failures, sorted(failures)
    assert "baseline" in failures["hiwater_frac throttle/2048/nvme/heavy"].message
    nights = History(history).nights()
    assert list(nights["status"]) == ["complete", "complete"] and list(nights["exit_code"]) == [0, 1]
    trend = (history / "trend-tiny.html").read_text()
    assert all(run_id in trend for run_id in nights["run_id"])
    assert qemu_pids() - before == set()
