"""Nightly CI on stored real cells: each night is a copy of a real run directory (tests/data/run-small)
holding the 70 cells of a real default-matrix run (tests/data/default-cells.parquet, 5 repetitions per
group), so the gate has the statistics it needs.  Baseline, regression gate, JUnit XML, history with DuckDB,
retention, dead runs and the trend page."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from functools import cache
from pathlib import Path

import pandas as pd
import pytest
from junitparser import Error, Failure, JUnitXml

from lab.claims import judge_all
from lab.history import History
from lab.nightly import EXIT_NO_RESULT, EXIT_OK, EXIT_REGRESSION, build_trend, judge_night
from lab.report import claims_frame
from lab.store import RunStore

RUN = Path(__file__).resolve().parent.parent / "data" / "run-small"
CELLS = Path(__file__).resolve().parent.parent / "data" / "default-cells.parquet"


def night(
    history: History,
    run_id: str,
    started: str,
    status: str = "complete",
    change: Callable[[pd.DataFrame], pd.DataFrame] | None = None,
) -> RunStore:
    root = history.runs / run_id
    shutil.copytree(RUN, root)
    store = RunStore(root)
    store.update_manifest(run_id=run_id, started_utc=started, status=status)
    cells = change(pd.read_parquet(CELLS)) if change is not None else pd.read_parquet(CELLS)
    cells.to_parquet(root / "cells.parquet", index=False)
    claims = claims_frame(judge_all(cells)) if change is not None else unchanged_claims()
    claims.to_parquet(root / "claims.parquet", index=False)
    return store


@cache
def unchanged_claims() -> pd.DataFrame:
    """The claims of the stored cells as they are, judged once for the module (most nights are unchanged)."""
    return claims_frame(judge_all(pd.read_parquet(CELLS)))


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
    mail = (first.root / "summary.txt").read_text()
    assert "Baseline night: none (this night is the baseline)" in mail and "python -m lab compare" not in mail
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
    failures = {
        case.name: case.result[0]
        for suite in JUnitXml.fromfile(str(junit))
        for case in suite
        if case.result and isinstance(case.result[0], Failure)
    }
    iops = failures["fio_iops throttle/1024/nvme/heavy"]
    assert "baseline" in iops.message and "change -50.0%" in iops.message and "p = " in iops.message
    assert "/cells/throttle-1024-nvme-heavy-r" in iops.text  # the evidence cells, linked
    assert "fio_iops throttle/1024/nvme/single-queue" in failures
    manifest = second.manifest()["nightly"]
    assert manifest["exit_code"] == 1 and manifest["baseline"] == "20261101T010000-aaaa"
    assert manifest["tree_describe"] == "v6.12-rc1-42-gabc"
    # the same night in plain text, for a mailing list
    mail = (second.root / "summary.txt").read_text().splitlines()
    assert mail[0].startswith("Subject: [swiotlb-lab] run-small night 20261102T010000-bbbb: ")
    assert mail[0].endswith(" regression(s)")
    assert all(len(line) <= 72 for line in mail[1:] if not line.startswith("  python -m lab"))  # commands whole
    text = "\n".join(mail)
    assert "Revision under test: v6.12-rc1-42-gabc" in text and "Baseline night: 20261101T010000-aaaa" in text
    assert "fio_iops throttle/1024/nvme/heavy: baseline" in text and "change -50.0%" in text
    assert "not yet\nconfirmed by a second run" in text
    assert "  python -m lab compare runs/20261101T010000-aaaa runs/20261102T010000-bbbb" in text


def test_a_run_that_died_is_neither_in_progress_nor_a_baseline(tmp_path: Path) -> None:
    history = History(tmp_path)
    night(history, "20261101T010000-aaaa", "2026-11-01T01:00:00Z")
    dead = night(history, "20261102T010000-bbbb", "2026-11-02T01:00:00Z", status="running")
    dead.update_manifest(pid=2**22 + 12345, boot_id="an-earlier-boot")  # kill -9 or power loss
    third = night(history, "20261103T010000-cccc", "2026-11-03T01:00:00Z")
    assert history.nights().set_index("run_id").loc["20261102T010000-bbbb", "status"] == "dead"
    assert history.baseline("run-small", third.run_id) == "20261101T010000-aaaa"


def boot_failed(cells: pd.DataFrame) -> pd.DataFrame:
    """Every boot failed: its cells are written without the boot's timings (runner.run_group), half of them
    a boot that never came up, half a boot that timed out before SSH."""
    first_half = cells.index < len(cells) // 2
    return cells.assign(
        status="failed",
        failure_reason=["boot failed" if f else "timeout" for f in first_half],
        boot_s=float("nan"),
        boot_attempt=float("nan"),
        ssh_connect_s=float("nan"),
    )


def panicked_under_fio(cells: pd.DataFrame) -> pd.DataFrame:
    """Every guest booted (its rows keep boot_s) and then panicked during fio."""
    return cells.assign(status="failed", failure_reason="kernel panic")


def test_a_night_whose_every_boot_failed_exits_3_with_an_infrastructure_error_in_junit(tmp_path: Path) -> None:
    history = History(tmp_path)
    broken = night(history, "20261101T010000-aaaa", "2026-11-01T01:00:00Z", change=boot_failed)
    junit = tmp_path / "ci" / "junit.xml"
    code, summary = judge_night(history, broken, {}, junit)
    assert code == EXIT_NO_RESULT
    assert summary == "no usable result: no cell ran its workload: 70 failed to boot (boot failed: 35, timeout: 35)"
    for path in (broken.root / "junit.xml", junit):
        [suite] = list(JUnitXml.fromfile(str(path)))
        [case] = list(suite)
        [error] = case.result
        assert isinstance(error, Error) and error.type == "infrastructure"
        assert (
            error.message
            == "infrastructure: no cell ran its workload: 70 failed to boot (boot failed: 35, timeout: 35)"
        )
        assert suite.errors == 1 and suite.failures == 0
    assert broken.manifest()["nightly"]["exit_code"] == 3


def test_a_night_that_panics_in_every_cell_during_fio_is_a_regression_not_infrastructure(tmp_path: Path) -> None:
    history = History(tmp_path)
    night(history, "20261101T010000-aaaa", "2026-11-01T01:00:00Z")
    second = night(history, "20261102T010000-bbbb", "2026-11-02T01:00:00Z", change=panicked_under_fio)
    code, summary = judge_night(history, second, {})
    assert code == EXIT_REGRESSION and "regression(s) against 20261101T010000-aaaa" in summary
    failures = {
        case.name: case.result[0]
        for suite in JUnitXml.fromfile(str(second.root / "junit.xml"))
        for case in suite
        if case.result and isinstance(case.result[0], Failure)
    }
    heavy = failures["cells failed static/1024/nvme/heavy"]
    assert heavy.message == (
        "cells failed static/1024/nvme/heavy: baseline 5 ok of 5, measured 5 failed of 5 (kernel panic: 5)"
    )
    assert "/cells/static-1024-nvme-heavy-r4-3e41edb9/cell.json" in heavy.text
    # throttle's polled cells timed out in the baseline too (5 of 5): as many fail now, no regression
    assert "cells failed throttle/1024/nvme/polled" not in failures


@pytest.mark.parametrize(
    ("statuses", "reasons", "booted", "expected"),
    [
        pytest.param(
            ["failed", "lost", "skipped"],
            ["boot failed", "infrastructure", "platform not offered"],
            [False, False, False],
            "no cell ran its workload: 1 failed to boot (boot failed: 1), 1 lost, 1 skipped",
            id="boot-failed-lost-skipped",
        ),
        pytest.param(
            ["failed", "failed"], ["boot failed", "kernel panic"], [False, True], "", id="one-cell-reached-its-workload"
        ),
        pytest.param(
            ["lost", "lost"],
            ["infrastructure", "infrastructure"],
            [False, False],
            "no cell ran its workload: 2 lost",
            id="all-lost",
        ),
        pytest.param(
            ["skipped"],
            ["platform not offered"],
            [False],
            "every cell was skipped: no host offers the matrix's platforms",
            id="all-skipped",
        ),
        pytest.param(["ok", "lost"], ["", "infrastructure"], [True, False], "", id="one-ok"),
    ],
)
def test_only_cells_that_never_reached_their_workload_make_a_night_unusable(
    statuses: list[str], reasons: list[str], booted: list[bool], expected: str
) -> None:
    from lab.nightly import no_usable_result

    boot_s = [3.5 if b else float("nan") for b in booted]
    cells = pd.DataFrame(
        {
            "cell_id": [f"c{i}" for i in range(len(statuses))],
            "status": statuses,
            "failure_reason": reasons,
            "boot_s": boot_s,
        }
    )
    assert no_usable_result(cells) == expected


def test_rows_without_boot_timings_tell_a_boot_failure_by_its_reason() -> None:
    from lab.nightly import no_usable_result

    timeout = pd.DataFrame({"cell_id": ["a"], "status": ["failed"], "failure_reason": ["timeout"]})
    assert no_usable_result(timeout) == ""  # a timeout happens under fio too: the revision's result
    boot = pd.DataFrame({"cell_id": ["a"], "status": ["failed"], "failure_reason": ["vcpu mismatch"]})
    assert no_usable_result(boot) == "no cell ran its workload: 1 failed to boot (vcpu mismatch: 1)"


def test_a_night_without_a_usable_result_is_never_the_baseline_nor_kept_as_one(tmp_path: Path) -> None:
    history = History(tmp_path)
    first = night(history, "20261101T010000-aaaa", "2026-11-01T01:00:00Z")
    judge_night(history, first, {})
    broken = night(history, "20261102T010000-bbbb", "2026-11-02T01:00:00Z", change=boot_failed)
    assert judge_night(history, broken, {})[0] == EXIT_NO_RESULT
    third = night(history, "20261103T010000-cccc", "2026-11-03T01:00:00Z")
    assert history.baseline("run-small", third.run_id) == "20261101T010000-aaaa"
    code, summary = judge_night(history, third, {})
    assert code == EXIT_OK and "no regression against 20261101T010000-aaaa" in summary
    shutil.rmtree(third.root)
    assert history.retain(1) == []  # aaaa is still the next baseline; bbbb the newest night


def test_a_night_the_gate_never_judged_is_a_baseline_only_if_its_cells_are_usable(tmp_path: Path) -> None:
    history = History(tmp_path)
    night(history, "20261101T010000-aaaa", "2026-11-01T01:00:00Z")
    night(history, "20261102T010000-bbbb", "2026-11-02T01:00:00Z", change=boot_failed)  # no nightly record
    third = night(history, "20261103T010000-cccc", "2026-11-03T01:00:00Z")
    assert history.baseline("run-small", third.run_id) == "20261101T010000-aaaa"


def with_reasons(rows: dict[str, str], status: str = "failed") -> Callable[[pd.DataFrame], pd.DataFrame]:
    def change(cells: pd.DataFrame) -> pd.DataFrame:
        hit = cells["cell_id"].isin(rows)
        cells.loc[hit, "status"] = status
        cells.loc[hit, "failure_reason"] = cells.loc[hit, "cell_id"].map(rows)
        return cells

    return change


def test_newly_failing_cells_of_a_group_are_a_regression_with_their_reasons_and_cells() -> None:
    from lab.nightly import gate

    base = pd.read_parquet(CELLS)
    now = with_reasons(
        {"static-2048-nvme-heavy-r1-4f23c103": "kernel warning", "static-2048-nvme-heavy-r3-32b1f06b": "timeout"}
    )(pd.read_parquet(CELLS))
    findings = {f.name: f for f in gate(base, now) if f.kind == "cells"}
    assert set(findings) == {"cells failed static/2048/nvme/heavy", "cells failed throttle/1024/nvme/polled"}
    polled = findings["cells failed throttle/1024/nvme/polled"]  # failed in both nights alike
    assert not polled.regressed and polled.baseline == polled.measured == "5 failed of 5 (timeout: 5)"
    finding = findings["cells failed static/2048/nvme/heavy"]
    assert finding.regressed
    assert (finding.baseline, finding.measured) == ("5 ok of 5", "2 failed of 5 (kernel warning: 1, timeout: 1)")
    assert finding.evidence == ("static-2048-nvme-heavy-r1-4f23c103", "static-2048-nvme-heavy-r3-32b1f06b")


@pytest.mark.parametrize(
    ("before", "after", "regressed"),
    [
        pytest.param(1, 1, False, id="as-many-as-before"),
        pytest.param(1, 2, True, id="one-more"),
        pytest.param(2, 1, False, id="fewer"),
    ],
)
def test_a_group_regresses_when_a_larger_share_of_its_cells_failed(before: int, after: int, regressed: bool) -> None:
    from lab.nightly import gate

    ids = [f"static-4096-nvme-heavy-r{i}-{h}" for i, h in enumerate(("4672e215", "c4264188", "d59bd507"))]
    base = with_reasons(dict.fromkeys(ids[:before], "timeout"))(pd.read_parquet(CELLS))
    now = with_reasons(dict.fromkeys(ids[:after], "timeout"))(pd.read_parquet(CELLS))
    [finding] = [f for f in gate(base, now) if f.name == "cells failed static/4096/nvme/heavy"]
    assert finding.regressed is regressed
    assert finding.baseline == f"{before} failed of 5 (timeout: {before})"


def test_lost_and_skipped_cells_are_not_failures_of_their_group() -> None:
    from lab.nightly import gate

    lost = with_reasons({"static-2048-nvme-heavy-r1-4f23c103": "infrastructure"}, status="lost")
    skipped = with_reasons({"static-2048-nvme-heavy-r2-79f3c3cd": "platform not offered"}, status="skipped")
    now = skipped(lost(pd.read_parquet(CELLS)))
    assert not [f for f in gate(pd.read_parquet(CELLS), now) if f.name == "cells failed static/2048/nvme/heavy"]


def test_an_error_junit_for_a_night_that_never_ran_a_cell(tmp_path: Path) -> None:
    from lab.nightly import write_error_junit

    write_error_junit(tmp_path / "infra.xml", "nightly 2026-11-27", "no host reachable: ssh: timed out")
    [suite] = list(JUnitXml.fromfile(str(tmp_path / "infra.xml")))
    [case] = list(suite)
    [error] = case.result
    assert isinstance(error, Error) and error.message == "infrastructure: no host reachable: ssh: timed out"
    write_error_junit(tmp_path / "build.xml", "nightly 2026-11-27", "make failed: mm/swiotlb.c:12", kind="build")
    [suite] = list(JUnitXml.fromfile(str(tmp_path / "build.xml")))
    [case] = list(suite)
    [failure] = case.result
    assert isinstance(failure, Failure) and failure.type == "build"
    assert failure.message == "build: make failed: mm/swiotlb.c:12" and suite.failures == 1 and suite.errors == 0


def cell_ids(count: int) -> list[str]:
    return [f"static-1024-nvme-heavy-r{i}-0000000{i}" for i in range(count)]


def test_a_changed_matrix_establishes_a_new_baseline_and_says_so(tmp_path: Path) -> None:
    history = History(tmp_path)
    first = night(history, "20261101T010000-aaaa", "2026-11-01T01:00:00Z")
    first.update_manifest(cells=cell_ids(3))
    judge_night(history, first, {})
    assert (
        first.manifest()["nightly"]["matrix_hash"]
        == hashlib.sha256("\n".join(sorted(cell_ids(3))).encode()).hexdigest()[:16]
    )
    edited = night(history, "20261102T010000-bbbb", "2026-11-02T01:00:00Z", change=slower_throttle)
    edited.update_manifest(cells=cell_ids(4))  # a repetition more: another matrix
    code, summary = judge_night(history, edited, {})
    assert code == EXIT_OK and summary.startswith(
        "the matrix changed since the last night: this night is the new baseline (20261101T010000-aaaa ran other cells)"
    )
    assert edited.manifest()["nightly"]["baseline"] == ""
    reverted = night(history, "20261103T010000-cccc", "2026-11-03T01:00:00Z")
    reverted.update_manifest(cells=cell_ids(3)[::-1])  # the same cells in another order: the same matrix
    code, summary = judge_night(history, reverted, {})
    assert code == EXIT_OK and "no regression against 20261101T010000-aaaa" in summary


def test_nights_from_before_the_matrix_hash_match_by_name_until_a_night_records_one(tmp_path: Path) -> None:
    history = History(tmp_path)
    night(history, "20261101T010000-aaaa", "2026-11-01T01:00:00Z")  # no nightly record, no hash
    second = night(history, "20261102T010000-bbbb", "2026-11-02T01:00:00Z")
    second.update_manifest(cells=cell_ids(3))
    assert judge_night(history, second, {})[1].startswith("no regression against 20261101T010000-aaaa (")
    third = night(history, "20261103T010000-cccc", "2026-11-03T01:00:00Z")
    third.update_manifest(cells=cell_ids(4))
    assert history.baseline("run-small", third.run_id, "another-matrix") is None  # aaaa predates bbbb's hash


def test_retention_keeps_the_last_nights_and_always_the_baseline(tmp_path: Path) -> None:
    history = History(tmp_path)
    night(history, "20261101T010000-aaaa", "2026-11-01T01:00:00Z")
    night(history, "20261102T010000-bbbb", "2026-11-02T01:00:00Z")
    night(history, "20261103T010000-cccc", "2026-11-03T01:00:00Z", status="partial")
    night(history, "20261104T010000-dddd", "2026-11-04T01:00:00Z", status="interrupted")
    removed = history.retain(2)
    assert removed == ["20261101T010000-aaaa"]  # bbbb is the newest complete night: the next baseline
    assert sorted(history.nights()["run_id"]) == [
        "20261102T010000-bbbb",
        "20261103T010000-cccc",
        "20261104T010000-dddd",
    ]


def test_duckdb_answers_questions_across_nights(tmp_path: Path) -> None:
    history = History(tmp_path)
    night(history, "20261101T010000-aaaa", "2026-11-01T01:00:00Z")
    night(history, "20261102T010000-bbbb", "2026-11-02T01:00:00Z", change=slower_throttle)
    per_night = history.query(
        "SELECT night, median(fio_iops) AS iops FROM cells WHERE kernel = 'throttle' "
        "AND status = 'ok' GROUP BY night ORDER BY night"
    )
    assert list(per_night["night"]) == ["20261101T010000-aaaa", "20261102T010000-bbbb"]
    assert per_night["iops"][1] == pytest.approx(per_night["iops"][0] / 2)
    claims = history.query("SELECT count(*) AS n FROM claims")
    assert int(claims["n"][0]) == 32  # fourteen claims, C14-areas and C7-plain per night
    cli = subprocess.run(
        [sys.executable, "-m", "lab", "history", "nights", "--history", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert cli.returncode == 0 and "20261102T010000-bbbb" in cli.stdout


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium (make setup installs it)")
def test_the_trend_page_renders_both_nights(tmp_path: Path) -> None:
    history = History(tmp_path)
    night(history, "20261101T010000-aaaa", "2026-11-01T01:00:00Z")
    second = night(history, "20261102T010000-bbbb", "2026-11-02T01:00:00Z", change=slower_throttle)
    second.update_manifest(nightly={"tree_describe": "v6.12-series-v2"})
    page = build_trend(history, "run-small")  # the copied manifests keep run-small's matrix name
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
    dom = subprocess.run(["chromium", *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "20261101T010000-aaaa" in dom.stdout and "20261102T010000-bbbb" in dom.stdout
    assert "v6.12-series-v2" in dom.stdout and dom.stdout.count("<img") == 1
    assert json.loads((second.root / "manifest.json").read_text())["nightly"]["tree_describe"] == "v6.12-series-v2"


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


def test_the_trend_page_is_built_when_no_night_recorded_claims(tmp_path: Path) -> None:
    history = History(tmp_path)
    for store in (
        night(history, "20261101T010000-aaaa", "2026-11-01T01:00:00Z"),
        night(history, "20261102T010000-bbbb", "2026-11-02T01:00:00Z"),
    ):
        (store.root / "claims.parquet").unlink()
    page = build_trend(history, "run-small").read_text()
    for run_id in ("20261101T010000-aaaa", "20261102T010000-bbbb"):
        row = page[page.index(run_id) :]
        assert row.index("no claims recorded") < row.index("</tr>")
    assert page.count("<img") == 1  # the metrics are still there


def test_trend_points_use_unobserved_cells_and_the_t_interval_of_the_mean() -> None:
    from lab.nightly import trend_points

    rows = [
        ("n1", False, 100.0),
        ("n1", False, 110.0),
        ("n1", False, 120.0),
        ("n1", False, 130.0),
        ("n1", True, 10.0),  # the sampler's cell: left out, the night has unobserved ones
        ("n2", True, 50.0),
        ("n2", True, 60.0),
    ]
    cells = pd.DataFrame(
        [
            {
                "night": n,
                "kernel": "static",
                "workload": "heavy",
                "status": "ok",
                "observed": o,
                "fio_iops": v,
                "fio_clat_p99_us": 1.0,
                "map_failures": 0.0,
                "hiwater_frac": 0.5,
            }
            for n, o, v in rows
        ]
    )
    cells.loc[len(cells)] = {**cells.iloc[0].to_dict(), "status": "failed", "fio_iops": 1e9}  # never counted
    points = trend_points(cells).set_index("night")
    assert list(points["n"]) == [4, 2] and list(points["observed"]) == [False, True]
    # n1: mean 115, sd sqrt(500/3) = 12.9099, t(0.975, 3) = 3.18245: half width 20.5426 (1.96 sd/sqrt(n) would
    # give 12.65)
    assert points.loc["n1", "fio_iops_median"] == 115.0
    assert points.loc["n1", "fio_iops_low"] == pytest.approx(94.4574, abs=1e-3)
    assert points.loc["n1", "fio_iops_high"] == pytest.approx(135.5426, abs=1e-3)
    # n2, observed only: mean 55, sd 7.0711, t(0.975, 1) = 12.7062: half width 63.5310
    assert points.loc["n2", "fio_iops_median"] == 55.0
    assert points.loc["n2", "fio_iops_low"] == pytest.approx(-8.5310, abs=1e-3)


def test_the_trend_page_says_which_cells_its_points_come_from(tmp_path: Path) -> None:
    history = History(tmp_path)
    night(history, "20261101T010000-aaaa", "2026-11-01T01:00:00Z", change=lambda c: c.assign(observed=True))
    night(
        history,
        "20261102T010000-bbbb",
        "2026-11-02T01:00:00Z",
        change=lambda c: c.assign(observed=c["repetition"] == 0),
    )
    page = build_trend(history, "run-small").read_text()
    assert "only its cells that ran without the in-guest sampler (observed = false) when it has any" in page
    assert "Plotted from observed cells: 20261101T010000-aaaa." in page


@pytest.mark.parametrize(
    ("error", "code", "kind"),
    [("build", 1, Failure), ("host", EXIT_NO_RESULT, Error)],
    ids=["revision-does-not-build", "host-lacks-packages"],
)
def test_a_night_that_never_ran_a_cell_still_leaves_ci_a_red_junit_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: str, code: int, kind: type
) -> None:
    from lab.cli import main
    from lab.errors import BuildError, HostError
    from lab.session import Session

    def prepare(self: Session) -> None:
        if error == "build":
            raise BuildError("kernel throttle-v2 failed with exit code 2: kernel/dma/swiotlb.c:412: error: ...")
        raise HostError("missing on this host: qemu-img; install with: apt-get install qemu-utils")

    monkeypatch.setattr(Session, "prepare", prepare)
    junit = tmp_path / "junit.xml"
    assert main(["nightly", "--history", str(tmp_path / "history"), "--junit", str(junit)]) == code
    [case] = [case for suite in JUnitXml.fromfile(str(junit)) for case in suite]
    [result] = case.result
    assert isinstance(result, kind)
    assert ("swiotlb.c:412" if error == "build" else "qemu-utils") in (result.message or "") + (result.text or "")


def test_the_revision_under_test_is_the_trees_describe_and_commit(tmp_path: Path) -> None:
    from lab.nightly import tree_revision

    tree = tmp_path / "linux"
    tree.mkdir()

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(tree), *args], check=True, capture_output=True, text=True
        ).stdout.strip()

    git("init", "-q")
    (tree / "Makefile").write_text("VERSION = 6\n")
    git("add", "Makefile")
    git("-c", "user.name=lab", "-c", "user.email=lab@example.org", "commit", "-q", "-m", "v6.12")
    git("tag", "v6.12")
    commit = git("rev-parse", "HEAD")
    assert tree_revision(tree) == {"tree_describe": "v6.12", "tree_commit": commit, "tree": str(tree)}
    (tree / "Makefile").write_text("VERSION = 7\n")  # an uncommitted change is part of what is measured
    assert tree_revision(tree)["tree_describe"] == "v6.12-dirty"
    assert tree_revision(None) == {}
