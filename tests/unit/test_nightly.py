"""Nightly CI on stored real cells: each night is a copy of a real run directory (tests/data/run-small)
holding the 70 cells of a real default-matrix run (tests/data/default-cells.parquet, 5 repetitions per
group), so the gate has the statistics it needs.  Baseline, regression gate, JUnit XML, history with DuckDB,
retention, dead runs and the trend page."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
from junitparser import Failure, JUnitXml

from lab.claims import judge_all
from lab.history import History
from lab.nightly import EXIT_NO_RESULT, EXIT_OK, EXIT_REGRESSION, build_trend, judge_night
from lab.report import claims_frame
from lab.store import RunStore

RUN = Path(__file__).resolve().parent.parent / "data" / "run-small"
CELLS = Path(__file__).resolve().parent.parent / "data" / "default-cells.parquet"


def night(history: History, run_id: str, started: str, status: str = "complete",
          change: Callable[[pd.DataFrame], pd.DataFrame] | None = None) -> RunStore:  # fmt: skip
    root = history.runs / run_id
    shutil.copytree(RUN, root)
    store = RunStore(root)
    store.update_manifest(run_id=run_id, started_utc=started, status=status)
    cells = pd.read_parquet(CELLS)
    cells = change(cells) if change is not None else cells
    cells.to_parquet(root / "cells.parquet", index=False)
    claims_frame(judge_all(cells)).to_parquet(root / "claims.parquet", index=False)
    return store


def slower_throttle(cells: pd.DataFrame) -> pd.DataFrame:
    """The second night's series halves throttle's IOPS in every repetition and adds thousands of failed
    maps: a regression a reviewer sees without statistics."""
    throttle = cells["kernel"] == "throttle"
    cells.loc[throttle, "fio_iops"] = cells.loc[throttle, "fio_iops"] / 2
    cells.loc[throttle, "map_failures"] = cells.loc[throttle, "map_failures"] * 10 + 5000
    return cells


def test_the_first_night_establishes_the_baseline(tmp_path: Path) -> None:
    history = History(tmp_path)
    first = night(history, "20261101T010000-aaaa", "2026-11-01T01:00:00Z")
    code, summary = judge_night(history, first, {})
    assert code == EXIT_OK and "this night is the baseline" in summary
    xml = JUnitXml.fromfile(str(first.root / "junit.xml"))
    [suite] = list(xml)
    [case] = list(suite)
    assert case.name == "baseline" and case.is_passed


def test_the_same_revision_again_is_no_regression(tmp_path: Path) -> None:
    history = History(tmp_path)
    night(history, "20261101T010000-aaaa", "2026-11-01T01:00:00Z")
    second = night(history, "20261102T010000-bbbb", "2026-11-02T01:00:00Z")
    code, summary = judge_night(history, second, {})
    assert code == EXIT_OK and "no regression against 20261101T010000-aaaa" in summary
    cases = [case for suite in JUnitXml.fromfile(str(second.root / "junit.xml")) for case in suite]
    assert len(cases) > 7 and all(case.is_passed for case in cases)
    assert {case.name for case in cases} >= {f"C{i}" for i in range(1, 8)}


def test_a_regression_fails_the_night_and_junit_names_it_with_the_numbers(tmp_path: Path) -> None:
    history = History(tmp_path)
    night(history, "20261101T010000-aaaa", "2026-11-01T01:00:00Z")
    second = night(history, "20261102T010000-bbbb", "2026-11-02T01:00:00Z", change=slower_throttle)
    junit = tmp_path / "ci" / "junit.xml"
    code, summary = judge_night(history, second, {"tree_describe": "v6.12-rc1-42-gabc"}, junit)
    assert code == EXIT_REGRESSION and "regression(s) against 20261101T010000-aaaa" in summary
    failures = {case.name: case.result[0] for suite in JUnitXml.fromfile(str(junit)) for case in suite
                if case.result and isinstance(case.result[0], Failure)}  # fmt: skip
    iops = failures["fio_iops throttle/1024/nvme/heavy"]
    assert "baseline" in iops.message and "change -50.0%" in iops.message and "p = " in iops.message
    assert "/cells/throttle-1024-nvme-heavy-r" in iops.text  # the evidence cells, linked
    assert "fio_iops throttle/1024/nvme/single-queue" in failures
    manifest = second.manifest()["nightly"]
    assert manifest["exit_code"] == 1 and manifest["baseline"] == "20261101T010000-aaaa"
    assert manifest["tree_describe"] == "v6.12-rc1-42-gabc"


def test_a_run_that_died_is_neither_in_progress_nor_a_baseline(tmp_path: Path) -> None:
    history = History(tmp_path)
    night(history, "20261101T010000-aaaa", "2026-11-01T01:00:00Z")
    dead = night(history, "20261102T010000-bbbb", "2026-11-02T01:00:00Z", status="running")
    dead.update_manifest(pid=2**22 + 12345, boot_id="an-earlier-boot")  # kill -9 or power loss
    third = night(history, "20261103T010000-cccc", "2026-11-03T01:00:00Z")
    assert history.nights().set_index("run_id").loc["20261102T010000-bbbb", "status"] == "dead"
    assert history.baseline("run-small", third.run_id) == "20261101T010000-aaaa"


def test_no_usable_result_exits_3(tmp_path: Path) -> None:
    history = History(tmp_path)

    def failed(cells: pd.DataFrame) -> pd.DataFrame:
        return cells.assign(status="failed", failure_reason="timeout")

    broken = night(history, "20261101T010000-aaaa", "2026-11-01T01:00:00Z", change=failed)
    code, summary = judge_night(history, broken, {})
    assert code == EXIT_NO_RESULT and "every cell failed to boot" in summary


def test_retention_keeps_the_last_nights_and_always_the_baseline(tmp_path: Path) -> None:
    history = History(tmp_path)
    night(history, "20261101T010000-aaaa", "2026-11-01T01:00:00Z")
    night(history, "20261102T010000-bbbb", "2026-11-02T01:00:00Z")
    night(history, "20261103T010000-cccc", "2026-11-03T01:00:00Z", status="partial")
    night(history, "20261104T010000-dddd", "2026-11-04T01:00:00Z", status="interrupted")
    removed = history.retain(2)
    assert removed == ["20261101T010000-aaaa"]  # bbbb is the newest complete night: the next baseline
    assert sorted(history.nights()["run_id"]) == ["20261102T010000-bbbb", "20261103T010000-cccc",
                                                  "20261104T010000-dddd"]  # fmt: skip


def test_duckdb_answers_questions_across_nights(tmp_path: Path) -> None:
    history = History(tmp_path)
    night(history, "20261101T010000-aaaa", "2026-11-01T01:00:00Z")
    night(history, "20261102T010000-bbbb", "2026-11-02T01:00:00Z", change=slower_throttle)
    per_night = history.query("SELECT night, median(fio_iops) AS iops FROM cells WHERE kernel = 'throttle' "
                              "AND status = 'ok' GROUP BY night ORDER BY night")  # fmt: skip
    assert list(per_night["night"]) == ["20261101T010000-aaaa", "20261102T010000-bbbb"]
    assert per_night["iops"][1] == pytest.approx(per_night["iops"][0] / 2)
    claims = history.query("SELECT count(*) AS n FROM claims")
    assert int(claims["n"][0]) == 28  # thirteen claims and C7-plain per night
    cli = subprocess.run([sys.executable, "-m", "lab", "history", "nights", "--history", str(tmp_path)],
                         capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2])  # fmt: skip
    assert cli.returncode == 0 and "20261102T010000-bbbb" in cli.stdout


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium (make setup installs it)")
def test_the_trend_page_renders_both_nights(tmp_path: Path) -> None:
    history = History(tmp_path)
    night(history, "20261101T010000-aaaa", "2026-11-01T01:00:00Z")
    second = night(history, "20261102T010000-bbbb", "2026-11-02T01:00:00Z", change=slower_throttle)
    second.update_manifest(nightly={"tree_describe": "v6.12-series-v2"})
    page = build_trend(history, "run-small")  # the copied manifests keep run-small's matrix name
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}"]  # fmt: skip
    dom = subprocess.run(["chromium", *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "20261101T010000-aaaa" in dom.stdout and "20261102T010000-bbbb" in dom.stdout
    assert "v6.12-series-v2" in dom.stdout and dom.stdout.count("<img") == 1
    assert json.loads((second.root / "manifest.json").read_text())["nightly"]["tree_describe"] == "v6.12-series-v2"


def test_the_trends_notebook_runs_its_sql_over_the_history(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import nbformat
    from nbclient import NotebookClient

    history = History(tmp_path)
    night(history, "20261101T010000-aaaa", "2026-11-01T01:00:00Z")
    night(history, "20261102T010000-bbbb", "2026-11-02T01:00:00Z", change=slower_throttle)
    monkeypatch.setenv("LAB_HISTORY", str(tmp_path))
    analysis = Path(__file__).resolve().parents[2] / "analysis"
    book = nbformat.read(analysis / "trends.ipynb", as_version=4)
    NotebookClient(book, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(analysis)}}).execute()
    outputs = [o for cell in book.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = json.dumps(outputs)
    assert "20261101T010000-aaaa" in text and "20261102T010000-bbbb" in text


def test_a_night_whose_report_failed_still_has_its_row_in_the_trend(tmp_path: Path) -> None:
    """A night's report can fail after its cells are stored (it did in CI, 2026-11-27: a negative error bar):
    the night is complete and gated, only claims.parquet is missing; the trend says so instead of dropping it."""
    history = History(tmp_path)
    night(history, "20261101T010000-aaaa", "2026-11-01T01:00:00Z")
    second = night(history, "20261102T010000-bbbb", "2026-11-02T01:00:00Z")
    (second.root / "claims.parquet").unlink()
    page = build_trend(history, "run-small").read_text()
    row = page[page.index("20261102T010000-bbbb") :]
    assert "20261101T010000-aaaa" in page and row.index("no claims recorded") < row.index("</tr>")


def test_failed_maps_are_compared_only_between_nights_that_counted_them_alike() -> None:
    """The default matrix before and after the lab's failure counter (both stored, real): the counter sees
    failed scatterlists the old trigger never did, so failed maps rose; that is not a regression."""
    from lab.nightly import gate

    data = Path(__file__).resolve().parent.parent / "data"
    before = pd.read_parquet(data / "default-cells.parquet")
    after = pd.read_parquet(data / "default-counted-cells.parquet")
    findings = gate(before, after)
    assert findings and not [f for f in findings if f.name.startswith("map_failures")]
    assert [f for f in gate(after, after) if f.name.startswith("map_failures")]  # alike: compared
