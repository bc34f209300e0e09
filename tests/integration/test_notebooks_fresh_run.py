"""The analysis notebooks on a run made now by `lab run matrix` (the layout the code writes today, observed and
unobserved repetitions), opened as a user would: LAB_RUN at the results directory, LAB_HISTORY at a history."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from lab.store import load_cells
from tests.conftest import lab_run_matrix
from tests.unit.test_notebooks import errors, execute, figures, notebook_tables, outputs, printed, report_tables

pytestmark = [pytest.mark.integration, pytest.mark.kernels("static", "throttle")]


# Three repetitions: the first observed (the sampler runs), the other two not, so each variant has two unobserved
# cells and the comparison is made on those alone, as the report makes it.
MATRIX = """
[matrix]
kernels = ["static", "throttle"]
pools = ["2MiB"]
workloads = ["w"]
repetitions = 3

[workloads.w]
rw = "randread"
bs = "64k"
iodepth = 32
numjobs = 2
runtime = "2s"
size = "64M"
"""


def test_the_notebooks_open_a_fresh_run_and_its_history(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    matrix = tmp_path / "tiny.toml"
    matrix.write_text(MATRIX)
    history = tmp_path / "history"
    results = history / "runs"  # a run directory under runs/ is also a night of a history
    done = lab_run_matrix(matrix, results, timeout_s=1800)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    [run] = [p for p in results.iterdir() if (p / "manifest.json").is_file()]
    cells = load_cells(run)
    assert (cells["status"] == "ok").all() and len(cells) == 6
    assert sorted(cells["observed"]) == [False, False, False, False, True, True]

    monkeypatch.setenv("LAB_RUN", str(results))  # a results directory: its newest (only) run
    usage = execute("swiotlb_usage_over_time.ipynb")
    assert errors(usage) == [] and figures(usage) >= 1
    assert f"run {run.name} ({run})" in printed(usage)

    report_comparisons, report_claims = report_tables(run, tmp_path / "report")
    cost, comparisons, claims = notebook_tables(tmp_path)
    assert errors(cost) == [] and figures(cost) >= 1
    pd.testing.assert_frame_equal(comparisons, report_comparisons)
    pd.testing.assert_frame_equal(claims, report_claims)
    assert set(comparisons["cells"]) == {"unobserved cells"}  # observed repetitions left out
    assert set(comparisons["n"]) == {"2/2"}

    monkeypatch.setenv("LAB_HISTORY", str(history))
    trends = execute("trends.ipynb")
    assert errors(trends) == [] and figures(trends) >= 1
    shown = json.dumps(outputs(trends))
    assert run.name in shown and "unobserved" in shown  # the IOPS per night left the observed repetition out
