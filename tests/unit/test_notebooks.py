"""The notebooks in analysis/ executed as a user would open them: on a copy of the real sample run, on a results
directory, with no run at all, and (throttling_cost) with the same numbers as `lab report`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import nbformat
import pandas as pd
import pytest
from nbclient import NotebookClient
from nbformat import NotebookNode

REPO = Path(__file__).resolve().parents[2]
ANALYSIS = REPO / "analysis"
SAMPLE = REPO / "tests" / "data" / "run-small"
RUN_NOTEBOOKS = ("swiotlb_usage_over_time.ipynb", "throttling_cost.ipynb")
NOTEBOOKS = (*RUN_NOTEBOOKS, "trends.ipynb")


def execute(name: str, *, parameters: str = "", extra: str = "", allow_errors: bool = False) -> NotebookNode:
    """Run a notebook from analysis/ as Jupyter would (its folder as the working directory); ``parameters`` goes
    in a cell right after the one tagged ``parameters``, where papermill puts ``-p`` values; ``extra`` last."""
    book = nbformat.read(ANALYSIS / name, as_version=4)
    if parameters:
        at = next(i for i, cell in enumerate(book.cells) if "parameters" in cell.metadata.get("tags", []))
        book.cells.insert(at + 1, nbformat.v4.new_code_cell(parameters, metadata={"tags": ["injected-parameters"]}))
    if extra:
        book.cells.append(nbformat.v4.new_code_cell(extra))
    client = NotebookClient(
        book,
        timeout=300,
        kernel_name="python3",
        allow_errors=allow_errors,
        resources={"metadata": {"path": str(ANALYSIS)}},
    )
    client.execute()
    return book


def outputs(book: NotebookNode) -> list[dict[str, Any]]:
    return [o for cell in book.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]


def errors(book: NotebookNode) -> list[dict[str, Any]]:
    return [o for o in outputs(book) if o["output_type"] == "error"]


def figures(book: NotebookNode) -> int:
    """Figures shown inline: display_data with a PNG (none when a notebook forces a non-interactive backend)."""
    return sum(o["output_type"] == "display_data" and "image/png" in o.get("data", {}) for o in outputs(book))


def printed(book: NotebookNode) -> str:
    return "".join(o.get("text", "") for o in outputs(book) if o["output_type"] == "stream")


def files(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.rglob("*"))}


def copy_run(sample: Path, results: Path, run_id: str, started_utc: str) -> Path:
    """A copy of a stored run under another id and start time (what a second run in the same directory looks like)."""
    run = results / run_id
    shutil.copytree(sample, run)
    manifest = json.loads((run / "manifest.json").read_text())
    (run / "manifest.json").write_text(json.dumps({**manifest, "run_id": run_id, "started_utc": started_utc}))
    return run


def report_tables(run: Path, output: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The comparisons and claims tables `lab report` writes for ``run``."""
    done = subprocess.run(
        [sys.executable, "-m", "lab", "report", str(run), "--output", str(output)],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return pd.read_parquet(output / "comparisons.parquet"), pd.read_parquet(output / "claims.parquet")


def notebook_tables(where: Path) -> tuple[NotebookNode, pd.DataFrame, pd.DataFrame]:
    """Execute throttling_cost (LAB_RUN set by the caller) and return the tables it displayed, as it computed them."""
    book = execute(
        "throttling_cost.ipynb",
        extra=f"comparison_table.to_parquet({str(where / 'c.parquet')!r})\n"
        f"claims_table.to_parquet({str(where / 'v.parquet')!r})",
    )
    return book, pd.read_parquet(where / "c.parquet"), pd.read_parquet(where / "v.parquet")


@pytest.fixture
def results(tmp_path: Path) -> Path:
    """A results directory holding one copy of the sample run (never the tracked fixture itself)."""
    where = tmp_path / "results"
    shutil.copytree(SAMPLE, where / SAMPLE.name)
    return where


def test_the_usage_notebook_shows_its_figures_inline_and_writes_nothing_into_the_run(
    results: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = results / SAMPLE.name
    before = files(run)
    monkeypatch.setenv("LAB_RUN", str(run))
    book = execute("swiotlb_usage_over_time.ipynb")
    assert errors(book) == []
    assert figures(book) >= 1
    assert f"run {SAMPLE.name} ({run})" in printed(book)
    assert files(run) == before


def test_no_notebook_forces_a_backend_that_hides_its_figures() -> None:
    for name in NOTEBOOKS:
        book = nbformat.read(ANALYSIS / name, as_version=4)
        source = "\n".join(cell.source for cell in book.cells if cell.cell_type == "code")
        assert "matplotlib.use(" not in source, name
        assert "%matplotlib inline" in source, name


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda n: n.removesuffix(".ipynb"))
def test_the_first_code_cell_is_the_parameters_cell(notebook: str) -> None:
    book = nbformat.read(ANALYSIS / notebook, as_version=4)
    first = next(cell for cell in book.cells if cell.cell_type == "code")
    assert first.metadata.get("tags") == ["parameters"]
    name, variable = ("HISTORY", "LAB_HISTORY") if notebook == "trends.ipynb" else ("RUN", "LAB_RUN")
    assert f'{name} = os.environ.get("{variable}", ' in first.source


def test_a_run_parameter_given_like_papermill_opens_the_run_of_that_directory_that_started_last(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """papermill -p RUN puts the value in a cell after the parameters cell: it wins over LAB_RUN (here an empty
    directory). RUN names a results directory: the run that started last is opened, whatever the names say."""
    results = tmp_path / "results"
    copy_run(SAMPLE, results, "zz-started-first", "2026-11-01T00:00:00Z")
    newest = copy_run(SAMPLE, results, "aa-started-last", "2026-11-30T00:00:00Z")
    (results / "not-a-run").mkdir()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.setenv("LAB_RUN", str(tmp_path / "elsewhere"))
    book = execute("swiotlb_usage_over_time.ipynb", parameters=f"RUN = {str(results)!r}")
    assert errors(book) == []
    assert f"run aa-started-last ({newest})" in printed(book)


def test_a_relative_run_is_found_from_the_checkout_as_typed_there(monkeypatch: pytest.MonkeyPatch) -> None:
    """`LAB_RUN=tests/data/run-small jupyter lab analysis/` in the checkout: the kernel runs in analysis/."""
    before = files(SAMPLE)
    monkeypatch.setenv("LAB_RUN", str(SAMPLE.relative_to(REPO)))
    book = execute("swiotlb_usage_over_time.ipynb")
    assert errors(book) == []
    assert f"run {SAMPLE.name} ({SAMPLE})" in printed(book)
    assert files(SAMPLE) == before  # read, never written


@pytest.mark.parametrize("notebook", RUN_NOTEBOOKS, ids=lambda n: n.removesuffix(".ipynb"))
def test_no_run_is_a_sentence_naming_the_directory_and_lab_run_not_an_index_error(
    notebook: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "results"
    empty.mkdir()
    monkeypatch.setenv("LAB_RUN", str(empty))
    first = errors(execute(notebook, allow_errors=True))[0]
    assert first["ename"] == "ConfigError"
    assert f"no lab run in {empty}" in first["evalue"] and "LAB_RUN" in first["evalue"]


def test_no_night_in_the_history_is_a_sentence_naming_it_and_lab_history(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LAB_HISTORY", str(tmp_path))
    first = errors(execute("trends.ipynb", allow_errors=True))[0]
    assert first["ename"] == "ConfigError"
    assert f"no night in {tmp_path}" in first["evalue"] and "LAB_HISTORY" in first["evalue"]


def test_throttling_cost_shows_its_figure_and_the_numbers_lab_report_writes(
    results: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = results / SAMPLE.name
    before = files(run)
    report_comparisons, report_claims = report_tables(run, tmp_path / "report")
    monkeypatch.setenv("LAB_RUN", str(run))
    book, comparisons, claims = notebook_tables(tmp_path)
    assert errors(book) == []
    assert figures(book) >= 1
    assert files(run) == before
    pd.testing.assert_frame_equal(comparisons, report_comparisons)
    pd.testing.assert_frame_equal(claims, report_claims)

    # One number spelled out: the throttle's IOPS change on the heavy load and its Holm-adjusted p-value.
    def heavy_iops(table: pd.DataFrame) -> pd.Series:
        chosen = (table["variant"] == "throttle") & (table["workload"] == "heavy") & (table["metric"] == "fio_iops")
        return table[chosen].iloc[0]

    mine, theirs = heavy_iops(comparisons), heavy_iops(report_comparisons)
    assert (mine["change_pct"], mine["p_value"]) == (theirs["change_pct"], theirs["p_value"])
    assert mine["p_value"] > mine["p_raw"]  # adjusted within its family of metrics (Holm), not the raw test's


def test_trends_draws_the_nights_of_a_history(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runs = tmp_path / "history" / "runs"
    copy_run(SAMPLE, runs, "20261101T010000-aaaa", "2026-11-01T01:00:00Z")
    copy_run(SAMPLE, runs, "20261102T010000-bbbb", "2026-11-02T01:00:00Z")
    monkeypatch.setenv("LAB_HISTORY", str(tmp_path / "history"))
    book = execute("trends.ipynb")
    assert errors(book) == []
    assert figures(book) >= 1
    shown = json.dumps(outputs(book))
    assert "20261101T010000-aaaa" in shown and "20261102T010000-bbbb" in shown
