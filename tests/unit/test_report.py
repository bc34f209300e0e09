"""Report, claims and notebooks on a small real run committed under tests/data/run-small."""

from __future__ import annotations

import math
import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from lab.claims import judge_all
from lab.compare import compare_runs
from lab.report import build_report, report_markdown
from lab.store import load_cells

RUN = Path(__file__).resolve().parent.parent / "data" / "run-small"
ANALYSIS = Path(__file__).resolve().parents[2] / "analysis"


@pytest.fixture
def run_copy(tmp_path: Path) -> Path:
    copy = tmp_path / RUN.name
    shutil.copytree(RUN, copy)
    return copy


def test_claims_table_is_filled_from_real_cells() -> None:
    verdicts = {v.claim: v for v in judge_all(load_cells(RUN))}
    assert list(verdicts) == [
        "C1",
        "C2",
        "C3",
        "C4",
        "C5",
        "C6",
        "C7",
        "C8",
        "C9",
        "C10",
        "C11",
        "C12",
        "C13",
        "C14",
        "C14-areas",
        "C7-plain",
    ]
    for verdict in verdicts.values():
        assert verdict.verdict in ("supported", "contradicted", "inconclusive", "not tested")
        assert verdict.metric and verdict.threshold and verdict.detail
    # C1 rests on static cells that really failed maps
    assert verdicts["C1"].evidence and all(c.startswith("static-") for c in verdicts["C1"].evidence)


def test_claims_without_the_needed_cells_are_not_tested_not_guessed() -> None:
    cells = load_cells(RUN)
    only_static = cells[cells["kernel"] == "static"]
    verdicts = {v.claim: v for v in judge_all(only_static)}
    for claim in ("C2", "C3", "C4", "C5", "C6", "C7"):
        assert verdicts[claim].verdict == "not tested", claim
        assert verdicts[claim].detail.startswith("not tested by this matrix: it has no "), claim
        assert verdicts[claim].evidence == ()


def test_report_writes_markdown_html_figures_and_tables(run_copy: Path) -> None:
    written = build_report(run_copy)
    html = (run_copy / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 4
    assert "id='claims'" in html and "C7" in html
    assert (run_copy / "report.md").read_text().startswith("# swiotlb throttling: measured verdicts")
    assert len(pd.read_parquet(run_copy / "claims.parquet")) == 16
    assert {"usage_over_time.png", "hiwater_by_pool.png", "performance.png", "failures_and_throttle.png"} <= set(
        written
    )


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium (make setup installs it)")
def test_report_renders_in_a_headless_browser_with_its_figures(run_copy: Path, tmp_path: Path) -> None:
    build_report(run_copy)
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    url = (run_copy / "report.html").as_uri()
    dom = subprocess.run(["chromium", *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert dom.stdout.count("<img") == 4
    assert '<table id="claims"' in dom.stdout or "id='claims'" in dom.stdout
    shot = tmp_path / "report.png"
    subprocess.run(
        ["chromium", *flags, "--window-size=1400,3000", f"--screenshot={shot}", url],
        capture_output=True,
        timeout=120,
        check=True,
    )
    assert shot.stat().st_size > 50_000  # a page with tables and four plots, not a blank one


def test_compare_two_runs_side_by_side(run_copy: Path, tmp_path: Path) -> None:
    out = compare_runs(RUN, run_copy, tmp_path / "compare.md")
    text = out.read_text()
    assert "| C1 |" in text and "not significant" in text  # a run compared with itself changes nothing


def test_report_of_ten_thousand_cells_lists_every_cell(run_copy: Path) -> None:
    """Functional check; how long it takes is measured by `python -m lab bench matrix` (BENCHMARKS.md)."""
    cells = load_cells(run_copy)
    copies = [
        cells.assign(cell_id=cells["cell_id"] + f"-x{i}", repetition=cells["repetition"] + 100 * i)
        for i in range(10_000 // len(cells) + 1)
    ]
    pd.concat(copies).iloc[:10_000].to_parquet(run_copy / "cells.parquet", index=False)
    build_report(run_copy)
    html = (run_copy / "report.html").read_text()
    assert html.count("-x") >= 10_000 - len(cells)


def test_report_draws_a_variant_it_has_no_colour_for(run_copy: Path) -> None:
    # A user's own variant (kernel-configs/variants.toml) must not break the figures.
    cells = pd.read_parquet(run_copy / "cells.parquet")
    cells["kernel"] = cells["kernel"].replace({"dynamic": "my-own-variant"})
    cells.to_parquet(run_copy / "cells.parquet", index=False)
    written = build_report(run_copy)
    assert "my-own-variant" in written["html"].read_text()
    assert len(list((run_copy / "figures").glob("*.png"))) >= 4


def test_median_interval_is_seeded_and_needs_three_values() -> None:
    from lab.report import median_interval

    median, low, high = median_interval([10, 11, 12, 13, 30])
    assert median == 12 and low <= 11 and high >= 13 and (low, high) == median_interval([10, 11, 12, 13, 30])[1:]
    assert median_interval([5, 7])[0] == 6 and math.isnan(median_interval([5, 7])[1])


def test_median_interval_contains_the_median_when_values_tie() -> None:
    """p99.9 latencies (ms) of a real night (CI, 2026-11-27): fio's histogram bins make ties common, and the
    bootstrap's percentile landed 6e-14 above the median, which failed the whole report."""
    from lab.report import median_interval

    median, low, high = median_interval([417.333248, 404.750336, 404.750336])
    assert median == 404.750336 and low <= median <= high and high == 417.333248


# The figure each claim row of run-small's report links ("-": none; C9, C10 and C13's figures need cells of
# their own, which run-small lacks, so nothing is drawn or linked for them).
LINKED = {
    "C1": "failures_and_throttle.png",
    "C2": "hiwater_by_pool.png",
    "C3": "usage_over_time.png",
    "C4": "hiwater_by_pool.png",
    "C5": "performance.png",
    "C6": "performance.png",
    "C7": "performance.png",
    "C8": "-",
    "C9": "-",
    "C10": "-",
    "C11": "-",
    "C12": "-",
    "C13": "-",
    "C14": "-",
    "C14-areas": "-",
    "C7-plain": "performance.png",
}


def test_every_claim_links_the_figure_that_shows_it(tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(Path(__file__).resolve().parent.parent / "data" / "run-small", run)
    written = build_report(run)
    rows = re.findall(
        r"^\| \*\*([\w-]+)\*\* .* \| (\[[\w.]+\]\(figures/[\w.]+\)|-) \|$", written["md"].read_text(), re.M
    )
    linked = {claim: re.sub(r"\[([\w.]+)\].*", r"\1", figure) for claim, figure in rows}
    assert linked == LINKED
    for figure in set(LINKED.values()) - {"-"}:
        assert (run / "figures" / figure).is_file()
    assert not (run / "figures" / "neighbour.png").exists()
    assert "href='#fig-performance.png'" in written["html"].read_text()


def test_report_lists_the_cells_whose_boot_was_tried_twice() -> None:
    cells = load_cells(RUN)
    cells["boot_retries"] = 0
    cells["boot_retry_reason"] = ""
    retried = cells.index[0]
    cells.loc[retried, ["boot_retries", "boot_retry_reason"]] = [1, "boot 1: kernel panic"]
    text = report_markdown({"run_id": "r"}, cells, [], [], [])
    section = text.split("## Boots tried twice", 1)[1]
    assert f"{cells.loc[retried, 'cell_id']}" in section and "boot 1: kernel panic" in section
    assert section.count("\n- ") == 1
    assert "## Boots tried twice" not in report_markdown({"run_id": "r"}, load_cells(RUN), [], [], [])


def test_questions_of_their_own_get_figures_of_their_own() -> None:
    """C10's stored cells (AHCI and LSI disks) draw the failing-driver figure, not the plain ones, and
    the C10 rows link it."""
    from lab.claims import figure_for
    from lab.report import figures

    cells = pd.read_parquet(Path(__file__).resolve().parent.parent / "data" / "c10-cells.parquet")
    drawn = figures(cells, pd.DataFrame())
    assert set(drawn) == {"failing_drivers.png"} and drawn["failing_drivers.png"].startswith(b"\x89PNG")
    assert figure_for("C10") == figure_for("C10-throttle") == figure_for("C10-throttle-v2") == "failing_drivers.png"


def test_the_hosts_table_has_a_row_per_host_and_platform_with_what_it_is_and_how_its_cells_ended() -> None:
    from lab.report import hosts_table

    cells = pd.DataFrame(
        {
            "cell_id": list("abcdefg"),
            "status": ["ok", "ok", "failed", "ok", "skipped", "lost", "ok"],
            "host_id": ["snp1", "snp1", "snp1", "tdx1", "ctl", "snp1", "snp1"],
            "platform": ["sev-snp", "sev-snp", "sev-snp", "tdx", "tdx", "sev-snp", "kvm"],
            "cpu_model": ["EPYC 9654", "EPYC 9654", "EPYC 9654", "Xeon 8592+", "x", "EPYC 9654", "EPYC 9654"],
        }
    )
    table = hosts_table(cells)
    rows = {
        (r["host_id"], r["platform"]): (r["cpu_model"], r["cells ok"], r["cells failed"])
        for r in table.to_dict("records")
    }
    # skipped and lost cells ran nowhere: no row for the controller, and snp1 counts only what it ran
    assert rows == {
        ("snp1", "sev-snp"): ("EPYC 9654", 2, 1),
        ("snp1", "kvm"): ("EPYC 9654", 1, 0),
        ("tdx1", "tdx"): ("Xeon 8592+", 1, 0),
    }
