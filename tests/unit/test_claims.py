"""The claims judges and the run's exit code on the cells of a real default-matrix run (tests/data/default-cells)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from lab.claims import (
    VERDICTS,
    judge_all,
    judge_c2,
    judge_c4,
    judge_c5,
    judge_c7,
    judge_c7_emulated,
    judge_c7_plain,
    judge_c9,
    judge_c10,
    judge_c10_throttle,
    judge_c11,
    judge_c12,
    judge_c13,
)
from lab.session import run_exit_code

CELLS = Path(__file__).resolve().parent.parent / "data" / "default-cells.parquet"


@pytest.fixture(scope="module")
def cells() -> pd.DataFrame:
    return pd.read_parquet(CELLS)


def test_every_claim_gets_a_verdict_with_evidence(cells: pd.DataFrame) -> None:
    verdicts = judge_all(cells)
    assert [v.claim for v in verdicts] == [f"C{i}" for i in range(1, 15)] + ["C14-areas", "C7-plain"]
    for verdict in verdicts:
        assert verdict.verdict in VERDICTS
        if verdict.claim == "C8":  # the stored run predates series v2: no cells, and it says what it lacks
            assert verdict.evidence == () and "it has no `throttle-v2` heavy cells" in verdict.detail
            continue
        if verdict.claim == "C12":  # nor has it the QD1/QD32 loads
            assert verdict.evidence == () and "it has no `static` and `throttle-v2` cells" in verdict.detail
            continue
        if verdict.claim == "C11":  # nor a block queue fitted to the pool
            assert verdict.evidence == () and 'queue_limits = "fit"' in verdict.detail
            continue
        if verdict.claim == "C13":  # nor a sweep up to an ample pool
            assert verdict.evidence == () and "no ample pool" in verdict.detail
            continue
        if verdict.claim == "C9":  # nor a slow neighbour disk
            assert verdict.evidence == () and 'neighbour = "slow"' in verdict.detail
            continue
        if verdict.claim in ("C14", "C14-areas"):  # nor an area count on the command line
            assert verdict.verdict == "not tested" and 'areas = ["1", "default"]' in verdict.detail
            continue
        if verdict.claim == "C10":  # nor a disk whose driver fails instead of requeueing
            assert verdict.evidence == () and "on an AHCI or LSI disk" in verdict.detail
            continue
        assert verdict.evidence and set(verdict.evidence) <= set(cells["cell_id"])
        assert verdict.metric and verdict.threshold and verdict.detail


def test_c2_is_judged_for_every_pool_size(cells: pd.DataFrame) -> None:
    verdict = judge_c2(cells)
    for pool in (1024, 2048, 4096):
        assert f"pool {pool} slabs" in verdict.detail
    # The 2 MiB pool fails maps under throttling in this run: a counter-example, whatever the larger pools do.
    small = cells[(cells["kernel"] == "throttle") & (cells["pool_slabs_requested"] == 1024)]
    assert (small["map_failures"] > 0).any()
    assert verdict.verdict == "contradicted"
    # On the largest pool alone it holds (README: "holds at 8 MiB"): hiwater 3066-3067 is 199-200 slabs
    # above high_throttle 2867, within 10% of 4096 (409 slabs), with no failed maps and no fio errors.
    largest = cells[cells["pool_slabs_requested"] == 4096]
    assert judge_c2(largest).verdict == "supported"


def test_c4_premise_unmet_is_inconclusive(cells: pd.DataFrame) -> None:
    single = (cells["kernel"] == "static") & (cells["workload"] == "single-queue")
    quiet = cells.copy()
    quiet.loc[single, "map_failures"] = 0
    quiet.loc[single, "hiwater"] = 100
    verdict = judge_c4(quiet)
    assert verdict.verdict == "inconclusive" and "premise is not met" in verdict.detail


def test_c4_premise_holds_when_one_static_cell_fills_the_pool(cells: pd.DataFrame) -> None:
    # "If one CPU can queue enough": one repetition that fills the pool shows it can.  Every other static cell
    # quiet, one at nslabs - 128 exactly (the threshold's edge), then one slab short of it.
    single = cells.index[(cells["kernel"] == "static") & (cells["workload"] == "single-queue")]
    edge = cells.copy()
    edge.loc[single, "map_failures"] = 0
    edge.loc[single, "hiwater"] = 100
    edge.loc[single[0], "hiwater"] = edge.loc[single[0], "nslabs"] - 128
    assert "premise is not met" not in judge_c4(edge).detail
    edge.loc[single[0], "hiwater"] = edge.loc[single[0], "nslabs"] - 129
    assert judge_c4(edge).verdict == "inconclusive" and "premise is not met" in judge_c4(edge).detail


def test_c4_contradicted_when_throttle_lowers_hiwater(cells: pd.DataFrame) -> None:
    # Stored cells: hiwater static 961-1021 vs throttle 751-757, a drop no test of any kind would miss.
    verdict = judge_c4(cells)
    hiwater = next(c for c in verdict.comparisons if c.metric == "hiwater")
    assert hiwater.conclusion == "improved" and verdict.verdict == "contradicted"
    # Both kernels fill the pool alike in every repetition: the throttle did nothing.
    single = (cells["workload"] == "single-queue") & cells["kernel"].isin(["static", "throttle"])
    alike = cells.copy()
    alike.loc[single, "hiwater"] = 1020
    alike.loc[single, "map_failures"] = 2000
    assert judge_c4(alike).verdict == "supported"
    # As alike in the median, but one kernel all over the place: too noisy to say.
    noisy = alike.copy()
    throttle_rows = noisy.index[single & (noisy["kernel"] == "throttle")]
    noisy.loc[throttle_rows, "map_failures"] = [0, 4000, 2000, 100, 3900][: len(throttle_rows)]
    assert judge_c4(noisy).verdict == "inconclusive"


def test_c5_reports_the_variant_that_keeps_polled_io_off_the_throttle(cells: pd.DataFrame) -> None:
    verdict = judge_c5(cells)
    nopoll = cells[(cells["kernel"] == "throttle-nopoll") & (cells["workload"] == "polled")]
    assert not nopoll.empty and set(nopoll["cell_id"]) <= set(verdict.evidence)
    ok = int((nopoll["status"] == "ok").sum())
    assert f"(throttle-nopoll): {ok} of {len(nopoll)} cells ok" in verdict.detail
    without = judge_c5(cells[cells["kernel"] != "throttle-nopoll"])
    assert "throttle-nopoll" not in without.detail and without.verdict == verdict.verdict


def test_c5_without_throttle_cells_says_what_is_missing(cells: pd.DataFrame) -> None:
    verdict = judge_c5(cells[cells["kernel"] != "throttle"])
    assert verdict.verdict == "not tested" and "polled" in verdict.detail and not verdict.evidence


def test_c7_is_left_to_a_coco_host_and_the_plain_comparison_is_its_own_row(cells: pd.DataFrame) -> None:
    assert set(cells["memory_encryption"]) == {"none"}  # TCG: no SEV-SNP, no TDX
    verdict = judge_c7(cells)
    assert verdict.verdict == "inconclusive" and verdict.detail.startswith("needs an SEV-SNP or TDX host")
    assert verdict.evidence  # the cells it looked at
    coco = cells.assign(memory_encryption="AMD SEV SEV-ES SEV-SNP")
    decided = judge_c7(coco)
    assert decided.verdict == "contradicted" and "memory encryption: AMD SEV SEV-ES SEV-SNP" in decided.detail
    assert judge_c7_plain(coco) == []  # a CoCo run's C7 is the real thing: no plain row beside it


def test_c7_plain_one_significant_regression_decides(cells: pd.DataFrame) -> None:
    # Stored cells: throttle's IOPS 25% below dynamic's in all 5 repetitions (README: "IOPS -25%").
    [verdict] = judge_c7_plain(cells)
    iops = next(c for c in verdict.comparisons if c.metric == "fio_iops")
    assert iops.change_pct == pytest.approx(-24.7, abs=0.1) and iops.conclusion == "regressed"
    assert verdict.claim == "C7-plain" and verdict.verdict == "contradicted"


# The verdicts the README publishes for the default matrix, pinned here and checked against the stored
# cells of that run (tests/data/default-cells.parquet) and against the README's own text.
PUBLISHED = {
    "C1": "supported",
    "C2": "contradicted",
    "C3": "supported",
    "C4": "contradicted",
    "C5": "supported",
    "C6": "supported",
    "C7": "inconclusive",
    "C7-plain": "contradicted",
}


def test_the_published_verdicts_follow_from_the_stored_run(cells: pd.DataFrame) -> None:
    verdicts = {v.claim: v.verdict for v in judge_all(cells)}
    # That run predates series v2: C8 (its timeout sweep), C9 (neighbour.toml), C10 (failing-driver.toml),
    # C11 (queue-fit.toml) and C12 (blocking.toml) have no cells there: not tested. It swept static and
    # throttle over three pools, which C13 asks for, but static failed maps on the largest: inconclusive.
    later = [verdicts.pop(c) for c in ("C8", "C9", "C10", "C11", "C12", "C13", "C14", "C14-areas")]
    assert later == ["not tested"] * 5 + ["inconclusive"] + ["not tested"] * 2  # no area counts set either
    assert verdicts == PUBLISHED


def test_the_rerun_with_the_kernels_failure_counters_gives_the_same_verdicts() -> None:
    # The stored run above missed failed scatterlists (README: "A counting correction").  Its rerun with the
    # lab kernels' counters (tests/data/default-counted-cells.parquet) counts them, and nothing flips.
    cells = pd.read_parquet(CELLS.parent / "default-counted-cells.parquet")
    assert set(cells[cells["status"] == "ok"]["map_failures_counted_by"]) == {"kernel counter"}
    verdicts = {v.claim: v for v in judge_all(cells)}
    assert {c: verdicts[c].verdict for c in PUBLISHED} == PUBLISHED
    assert "pool 4096 slabs, high_throttle 2867" in verdicts["C2"].detail
    assert "map failures 0, fio errors 0, throttled 2727-3092 times per cell: holds" in verdicts["C2"].detail
    assert "map failures static 4301-9668, throttle 0-10" in verdicts["C4"].detail
    assert verdicts["C2-v2"].verdict == "contradicted" and "pool 2048 slabs" in verdicts["C2-v2"].detail
    assert verdicts["C2-v2"].detail.endswith("map failures 0, fio errors 0, throttled 9868-13037 times per cell: holds")


def test_the_readme_publishes_those_verdicts() -> None:
    findings = (Path(__file__).resolve().parents[2] / "docs" / "findings.md").read_text()
    for claim, verdict in PUBLISHED.items():
        assert f"{claim} **{verdict}" in findings, f"docs/findings.md does not say {claim} is {verdict}"


def test_failed_cells_are_findings_unless_strict(cells: pd.DataFrame) -> None:
    assert (cells["status"] == "failed").any()  # the throttled polled cells hang in this run
    assert run_exit_code(cells, "complete", strict=False) == 0
    assert run_exit_code(cells, "complete", strict=True) == 1
    assert run_exit_code(cells, "partial", strict=False) == 1
    assert run_exit_code(cells.assign(status="failed"), "complete", strict=False) == 1  # measured nothing
    assert run_exit_code(cells.iloc[0:0], "complete", strict=False) == 1


def test_claims_are_judged_within_each_host_never_across(cells: pd.DataFrame) -> None:
    # The stored run, as if every repetition >= 2 had run on a second host whose static kernel is 3x faster:
    # pooled, throttle would look far slower than static; within each host, it is what it was.
    two = cells.assign(host_id=["snp1" if rep < 2 else "snp2" for rep in cells["repetition"]], platform="sev-snp")
    faster = (two["host_id"] == "snp2") & (two["kernel"] == "static")
    two.loc[faster, "fio_iops"] = two.loc[faster, "fio_iops"] * 3
    verdicts = judge_all(two)
    assert [v.scope for v in verdicts] == ["host snp1, platform sev-snp"] * 16 + ["host snp2, platform sev-snp"] * 16
    for verdict in verdicts:
        hosts = set(two[two["cell_id"].isin(verdict.evidence)]["host_id"])
        assert hosts <= {verdict.scope.split(",")[0].removeprefix("host ")}, (verdict.claim, hosts)
    assert all(v.scope == "" for v in judge_all(cells))  # one host: no scopes, verdicts as published


def test_c5_does_not_count_a_lost_doorbell_as_a_sleeping_poller(cells: pd.DataFrame) -> None:
    polled = (cells["kernel"] == "throttle") & (cells["workload"] == "polled")
    assert (cells.loc[polled, "status"] == "failed").any()  # the stored run: v1's pollers hung
    relabelled = cells.copy()
    relabelled.loc[polled & (cells["status"] == "failed"), "failure_reason"] = "lost nvme doorbell"
    verdict = judge_c5(relabelled)
    assert verdict.verdict == "inconclusive" and "lost an NVMe doorbell" in verdict.detail
    # one cell that hung for another reason is still evidence
    first = relabelled.index[polled & (cells["status"] == "failed")][0]
    relabelled.loc[first, "failure_reason"] = "timeout"
    assert judge_c5(relabelled).verdict == "supported"


def test_c11_a_queue_fitted_to_half_the_pool_does_what_throttling_does_on_the_stored_run() -> None:
    # README: at 50% of the 2 MiB pool (nr_requests 4 x max_sectors_kb 128) static failed no map in 5 cells and
    # was faster than throttle-v2 (IOPS +38.8%, p99 -25.1%); at 75% (nr_requests 6) it still failed 4,195-17,998.
    cells = pd.read_parquet(CELLS.parent / "c11-cells.parquet")
    verdict = judge_c11(cells)
    assert verdict.verdict == "supported"
    assert "fitted to 50% (nr_requests 4, max_sectors_kb 128) holds: failed maps 0;" in verdict.detail
    assert (
        "fitted to 75% (nr_requests 6, max_sectors_kb 128) fails (maps fail): failed maps 4195-17998" in verdict.detail
    )
    by_name = {c.metric: c for c in verdict.comparisons}
    assert by_name["fit 50% fio_iops"].change_pct == pytest.approx(38.8, abs=0.1)
    assert by_name["fit 50% fio_iops"].conclusion == "improved"
    assert by_name["fit 50% fio_clat_p99_us"].change_pct == pytest.approx(-25.1, abs=0.1)
    # the 75% share alone, as the first C11 run had it, contradicts the claim
    assert judge_c11(cells[cells["queue_limits"] != "fit:50%"]).verdict == "contradicted"
    # without any fitted cell the matrix did not ask the question
    assert judge_c11(cells[cells["queue_limits"] == "default"]).verdict == "not tested"
    assert "C11 **supported**" in (Path(__file__).resolve().parents[2] / "docs" / "findings.md").read_text()


def _queue_cells(kernel: str, limits: str, failed: list[int], iops: list[float]) -> pd.DataFrame:
    """Heavy NVMe cells on a 2 MiB pool with the columns judge_c11 reads; latency moves inversely to IOPS."""
    return pd.DataFrame(
        {
            "cell_id": [f"{kernel}-{limits}-r{i}" for i in range(len(iops))],
            "status": "ok",
            "kernel": kernel,
            "device": "nvme",
            "pool_slabs_requested": 1024,
            "numjobs": 4,
            "iodepth": 128,
            "hipri": False,
            "observed": False,
            "queue_limits": limits,
            "map_failures": failed,
            "fio_iops": iops,
            "fio_clat_p50_us": [1e7 / v for v in iops],
            "fio_clat_p99_us": [3e7 / v for v in iops],
            "fio_clat_p999_us": [5e7 / v for v in iops],
        }
    )


V2_DEFAULT = _queue_cells("throttle-v2", "default", [0, 3, 0, 1, 0], [1000.0, 1010.0, 990.0, 1005.0, 995.0])
FAST = [1500.0, 1490.0, 1510.0, 1505.0, 1495.0]  # clearly better than V2_DEFAULT on every metric
SLOW = [500.0, 490.0, 510.0, 505.0, 495.0]  # clearly worse
NOISY = [500.0, 1500.0, 900.0, 2000.0, 700.0]  # too noisy to decide against V2_DEFAULT


@pytest.mark.parametrize(
    ("shares", "expected", "outcomes"),
    [
        # a median of 0 failed maps holds (two of five cells failing some is still a median of 0) ...
        pytest.param({"fit:50%": ([0, 0, 0, 4, 4], FAST)}, "supported", ["fitted to 50% (", ") holds"], id="median-0"),
        # ... three of five is a median above 0: the share fails, however fast it is
        pytest.param({"fit:50%": ([0, 0, 4, 4, 4], FAST)}, "contradicted", ["fails (maps fail)"], id="median-4"),
        # no failed map but a significant regression fails the share too
        pytest.param({"fit:50%": ([0] * 5, SLOW)}, "contradicted", ["fails (regressed)"], id="regressed"),
        # one share that holds is enough, and the detail names it next to the one that failed
        pytest.param(
            {"fit": ([9000] * 5, FAST), "fit:50%": ([0] * 5, FAST)},
            "supported",
            ["fitted to 50% (", ") holds", "fitted to 75% (", "fails (maps fail)"],
            id="one-of-two",
        ),
        # every share failing, for either reason, contradicts
        pytest.param(
            {"fit": ([9000] * 5, FAST), "fit:50%": ([0] * 5, SLOW)},
            "contradicted",
            ["fails (maps fail)", "fails (regressed)"],
            id="all-fail",
        ),
        # a share that could not be decided keeps the claim open when no other share holds
        pytest.param(
            {"fit": ([9000] * 5, FAST), "fit:50%": ([0] * 5, NOISY)},
            "inconclusive",
            ["fails (maps fail)", "undecided"],
            id="undecided",
        ),
    ],
)
def test_c11_rule_per_share_at_its_boundaries(
    shares: dict[str, tuple[list[int], list[float]]], expected: str, outcomes: list[str]
) -> None:
    fitted = [_queue_cells("static", limits, failed, iops) for limits, (failed, iops) in shares.items()]
    verdict = judge_c11(pd.concat([V2_DEFAULT, *fitted], ignore_index=True))
    assert verdict.verdict == expected, verdict.detail
    for text in outcomes:
        assert text in verdict.detail
    # every share's comparisons are reported under its own name
    assert {c.metric.rsplit(" ", 1)[0] for c in verdict.comparisons} == {
        "fit 75%" if limits == "fit" else f"fit {limits.removeprefix('fit:')}" for limits in shares
    }


def test_c12_blocking_submission_shows_no_cost_on_the_stored_run() -> None:
    # README: with the throttle idle, nothing moved significantly (IOPS +2.9% at QD1, +2.3% at QD32;
    # CPU per I/O +0.3% and -1.4%), and QD32's latency tails were too noisy: inconclusive.
    cells = pd.read_parquet(CELLS.parent / "c12-cells.parquet")
    verdict = judge_c12(cells)
    assert verdict.verdict == "inconclusive"
    changes = {c.metric: round(c.change_pct, 1) for c in verdict.comparisons}
    assert changes["QD1 fio_iops"] == 2.9 and changes["QD32 fio_iops"] == 2.3
    assert changes["QD1 guest_cpu_us_per_io"] == 0.3 and changes["QD32 guest_cpu_us_per_io"] == -1.4
    assert {c.conclusion for c in verdict.comparisons} <= {"not significant", "too noisy"}
    # a throttle that engaged makes the cells useless for the question
    engaged = cells.copy()
    engaged.loc[engaged["kernel"] == "throttle-v2", "high_throttle_count"] = 3
    assert judge_c12(engaged).verdict == "inconclusive" and "engaged" in judge_c12(engaged).detail


def test_c9_on_the_stored_run_the_neighbour_holds_up_the_throttled_fast_disk() -> None:
    # README: per boot, the fast disk kept 0.85 of its IOPS next to the slow neighbour on static, 0.23 on v1
    # and 0.48 on v2 (medians of 6 boots); p99 x1.67 vs x6.82 and x4.32; all four comparisons regressed.
    cells = pd.read_parquet(CELLS.parent / "c9-cells.parquet")
    v1 = judge_c9(cells)
    assert v1.verdict == "supported" and "IOPS kept static 0.85 vs throttle 0.23" in v1.detail
    assert {c.conclusion for c in v1.comparisons} == {"regressed"} and len(v1.evidence) == 24
    v2 = judge_c9(cells, kernel="throttle-v2")
    assert v2.verdict == "supported" and "vs throttle-v2 0.48" in v2.detail and "x1.67 vs x4.32" in v2.detail


def test_c7_emulated_on_the_stored_run_growth_loses_only_past_200_us_per_page() -> None:
    # README: dynamic charged 0, 2, 20 and 200 us per converted page is not worse than throttle (v1, fixed
    # pool); at 2 ms per page it loses 90% of its IOPS.  The CoCo verdict (C7) still needs a CoCo host.
    cells = pd.read_parquet(CELLS.parent / "c7e-cells.parquet")
    [row] = judge_c7_emulated(cells)
    assert row.verdict == "supported"
    assert row.detail.startswith("break-even above 200000 ns and at most 2000000 ns per page (emulated")
    assert "2000000 ns: IOPS -90.3% (regressed), growth worse" in row.detail
    assert judge_c7(cells).verdict == "inconclusive" and judge_c7(cells).detail.startswith("needs an SEV-SNP")


def test_c13_on_the_stored_run_only_the_zero_failure_pools_are_decided() -> None:
    # README: no failed map from 64 MiB on static but from 4 MiB on throttle-v2 (heavy load); whether p99 stays
    # within 10% cannot be decided under TCG: the largest pool's p99 varies by up to 40% between repetitions.
    verdict = judge_c13(pd.read_parquet(CELLS.parent / "c13-cells.parquet"))
    assert verdict.verdict == "inconclusive"
    assert (
        "heavy: the latency criterion cannot be decided: p99 on the largest pool varies by up to 40%" in verdict.detail
    )
    assert "no failed map from static 64 MiB, dynamic 4 MiB (grew to 48 MiB), throttle 16 MiB, throttle-v2 4 MiB" in (
        verdict.detail
    )
    assert "moderate: " in verdict.detail and "static 16 MiB, dynamic 4 MiB (grew to 12 MiB)" in verdict.detail


def _failing_cells(kernel: str, failed: list[int], errors: list[int], device: str = "ahci") -> pd.DataFrame:
    """Cells as a failing-driver run writes them; only the columns the C10 judges read."""
    return pd.DataFrame(
        {
            "cell_id": [f"{kernel}-{device}-r{i}" for i in range(len(failed))],
            "status": "ok",
            "kernel": kernel,
            "device": device,
            "pool_slabs_requested": 1024,
            "numjobs": 4,
            "iodepth": 32,
            "hipri": False,
            "map_failures": failed,
            "fio_errors": errors,
            "dmesg_io_errors": 0,
            "dmesg_ata_exceptions": 0,
            "fio_iops": 250.0,
            "high_throttle_count": 0,
        }
    )


@pytest.mark.parametrize(
    ("failed", "errors", "expected"),
    [
        pytest.param([5, 5, 5, 5], [1, 1, 1, 0], "supported", id="three-of-four"),
        pytest.param([5, 5, 5, 5], [1, 1, 0, 0], "inconclusive", id="exactly-half-is-not-more-than-half"),
        pytest.param([5, 5, 5, 5], [0, 0, 0, 0], "contradicted", id="maps-failed-no-errors"),
        pytest.param([0, 0, 0, 0], [0, 0, 0, 0], "inconclusive", id="pool-never-exhausted"),
        pytest.param([0, 0, 0, 0], [1, 1, 1, 1], "inconclusive", id="errors-without-failed-maps"),
    ],
)
def test_c10_rule_at_its_boundaries(failed: list[int], errors: list[int], expected: str) -> None:
    assert judge_c10(_failing_cells("static", failed, errors)).verdict == expected


def test_c10_one_device_showing_errors_is_enough_and_nvme_cells_never_count() -> None:
    ahci = _failing_cells("static", [5, 5, 5], [0, 0, 0])
    lsi = _failing_cells("static", [5, 5, 5], [2, 3, 1], device="lsi")
    nvme = _failing_cells("static", [5, 5, 5], [9, 9, 9], device="nvme")
    assert judge_c10(pd.concat([ahci, nvme])).verdict == "contradicted"  # NVMe's errors are not C10's
    verdict = judge_c10(pd.concat([ahci, lsi, nvme]))
    assert verdict.verdict == "supported" and "ahci pool 1024" in verdict.detail and "lsi pool 1024" in verdict.detail
    assert not any("nvme" in cell for cell in verdict.evidence)


def test_c10_throttle_rows_answer_per_kernel() -> None:
    static = _failing_cells("static", [5, 5, 5], [1, 1, 1], device="lsi")
    cured = _failing_cells("throttle", [0, 0, 0], [0, 0, 0], device="lsi")
    not_cured = _failing_cells("throttle-v2", [5, 5, 5], [1, 1, 0], device="lsi")
    rows = {v.claim: v.verdict for v in judge_c10_throttle(pd.concat([static, cured, not_cured]))}
    assert rows == {"C10-throttle": "supported", "C10-throttle-v2": "contradicted"}


def _heavy(kernel: str, cost: int, iops: list[float], applied: int | None = None) -> pd.DataFrame:
    """Heavy-load cells with the columns the C7 judges read; latency moves inversely to IOPS."""
    return pd.DataFrame(
        {
            "cell_id": [f"{kernel}-{cost}-r{i}" for i in range(len(iops))],
            "status": "ok",
            "kernel": kernel,
            "device": "nvme",
            "pool_slabs_requested": 1024,
            "numjobs": 4,
            "iodepth": 128,
            "hipri": False,
            "observed": False,
            "conversion_ns": cost,
            "conversion_ns_applied": cost if applied is None else applied,
            "memory_encryption": "none",
            "nslabs_after": 4096,
            "fio_iops": iops,
            "fio_clat_p50_us": [1e7 / v for v in iops],
            "fio_clat_p99_us": [3e7 / v for v in iops],
            "fio_clat_p999_us": [5e7 / v for v in iops],
        }
    )


THROTTLE = _heavy("throttle", 0, [1000.0, 1010.0, 990.0, 1005.0])


@pytest.mark.parametrize(
    ("dynamic", "verdict", "lead"),
    [
        # growth costs more as conversion gets dearer: throttling wins from 20 us per page on
        pytest.param(
            {0: 1500, 2000: 1450, 20000: 700, 200000: 300},
            "supported",
            "break-even above 2000 ns and at most 20000 ns",
            id="break-even-in-the-sweep",
        ),
        # worse at 2 us, not at 20 us: the break-even is where it stays worse, 200 us
        pytest.param(
            {0: 1500, 2000: 800, 20000: 1300, 200000: 300},
            "supported",
            "break-even above 20000 ns and at most 200000 ns",
            id="not-monotone",
        ),
        pytest.param(
            {0: 1500, 2000: 1500, 20000: 1450, 200000: 1400},
            "contradicted",
            "growth is not worse even at 200000 ns",
            id="never-worse",
        ),
    ],
)
def test_c7_emulated_break_even(dynamic: dict[int, float], verdict: str, lead: str) -> None:
    spread = (1.0, 1.01, 0.99, 1.005)
    cells = pd.concat(
        [THROTTLE, *(_heavy("dynamic", cost, [iops * s for s in spread]) for cost, iops in dynamic.items())]
    )
    [row] = judge_c7_emulated(cells)
    assert (row.claim, row.verdict) == ("C7-emulated", verdict) and row.detail.startswith(lead), row.detail
    assert "emulated" in row.text.lower() and "needs an SEV-SNP or TDX host" in row.threshold


def test_c7_emulated_ignores_cells_whose_kernel_did_not_take_the_cost() -> None:
    spread = (1.0, 1.01, 0.99, 1.005)
    took = _heavy("dynamic", 20000, [700 * s for s in spread])
    ignored = _heavy("dynamic", 200000, [300 * s for s in spread], applied=0)  # a kernel without the knob
    [row] = judge_c7_emulated(pd.concat([THROTTLE, _heavy("dynamic", 0, [1500 * s for s in spread]), took, ignored]))
    assert row.detail.startswith("break-even above 0 ns and at most 20000 ns") and "200000 ns" not in row.detail
    assert judge_c7_emulated(pd.concat([THROTTLE, _heavy("dynamic", 0, [1500.0] * 4)])) == []  # no sweep, no row


POOLS = (2048, 8192, 32768, 131072)  # 4, 16, 64, 256 MiB in 2 KiB slabs


def _sweep(kernel: str, failed: dict[int, int], p99: dict[int, float], grown: int = 0) -> pd.DataFrame:
    """Two heavy cells per pool, as a pool-search run writes them (only the columns C13 reads)."""
    rows = [
        {
            "cell_id": f"{kernel}-{pool}-r{rep}",
            "status": "ok",
            "kernel": kernel,
            "device": "nvme",
            "workload": "heavy",
            "pool_slabs_requested": pool,
            "map_failures": failed[pool],
            "fio_errors": 0,
            "fio_clat_p99_us": p99[pool],
            "nslabs_after": max(pool, grown),
            "numjobs": 4,
            "iodepth": 128,
            "hipri": False,
        }
        for pool in POOLS
        for rep in range(2)
    ]
    return pd.DataFrame(rows)


STATIC_SWEEP = _sweep("static", {2048: 9, 8192: 9, 32768: 9, 131072: 0}, dict.fromkeys(POOLS, 100.0))


@pytest.mark.parametrize(
    ("p99_at_16mib", "expected", "smallest"),
    [
        pytest.param(110.0, "supported", "throttle 16 MiB", id="p99-exactly-10-percent-above-is-within"),
        pytest.param(110.5, "supported", "throttle 64 MiB", id="p99-just-over-10-percent-needs-64-mib"),
    ],
)
def test_c13_smallest_pool_at_the_p99_boundary(p99_at_16mib: float, expected: str, smallest: str) -> None:
    # throttle: failed maps only on 4 MiB; from 16 MiB on clean, p99 at 64 and 256 MiB = the ample 100 us
    throttle = _sweep(
        "throttle",
        {2048: 3, 8192: 0, 32768: 0, 131072: 0},
        {2048: 500.0, 8192: p99_at_16mib, 32768: 100.0, 131072: 100.0},
    )
    verdict = judge_c13(pd.concat([STATIC_SWEEP, throttle]))
    assert verdict.verdict == expected and "static 256 MiB" in verdict.detail and smallest in verdict.detail


def test_c13_a_pool_counts_only_if_every_larger_one_does_too() -> None:
    # clean at 16 MiB, a failed map at 64 MiB: the smallest sufficient pool is 256 MiB, as static's
    throttle = _sweep("throttle", {2048: 3, 8192: 0, 32768: 1, 131072: 0}, dict.fromkeys(POOLS, 100.0))
    verdict = judge_c13(pd.concat([STATIC_SWEEP, throttle]))
    assert verdict.verdict == "contradicted" and "throttle 256 MiB" in verdict.detail


def test_c13_a_growing_pool_counts_what_it_grew_to_and_needs_an_ample_largest_pool() -> None:
    dynamic = _sweep("dynamic", dict.fromkeys(POOLS, 0), dict.fromkeys(POOLS, 100.0), grown=65536)
    throttle = _sweep("throttle", dict.fromkeys(POOLS, 0), dict.fromkeys(POOLS, 100.0))
    verdict = judge_c13(pd.concat([STATIC_SWEEP, dynamic, throttle]))
    assert "dynamic 4 MiB (grew to 128 MiB)" in verdict.detail and "throttle 4 MiB" in verdict.detail
    assert verdict.verdict == "supported"
    never_ample = STATIC_SWEEP.assign(map_failures=1)
    assert "no ample pool" in judge_c13(pd.concat([never_ample, throttle])).detail


def _neighbour_boots(
    kernel: str, alone: list[float], beside: list[float], p99_alone: float = 1000.0, p99_factor: float = 1.0
) -> pd.DataFrame:
    """Per boot, the fast disk alone and next to the neighbour (same boot: same repetition)."""
    rows = []
    for rep, (a, b) in enumerate(zip(alone, beside, strict=True)):
        common = {
            "status": "ok",
            "kernel": kernel,
            "device": "nvme",
            "neighbour": "slow",
            "pool_slabs_requested": 1024,
            "vcpus": 2,
            "memory_mib": 1024,
            "repetition": rep,
        }
        rows.append(
            {
                **common,
                "cell_id": f"{kernel}-alone-r{rep}",
                "fio_iops": a,
                "fio_clat_p99_us": p99_alone,
                "neighbour_iops": None,
            }
        )
        rows.append(
            {
                **common,
                "cell_id": f"{kernel}-beside-r{rep}",
                "fio_iops": b,
                "fio_clat_p99_us": p99_alone * p99_factor * (1 + rep / 100),
                "neighbour_iops": 256.0,
            }
        )
    return pd.DataFrame(rows)


def test_c9_compares_what_the_neighbour_costs_the_fast_disk_within_each_boot() -> None:
    # static keeps ~90% of its IOPS next to the neighbour; throttle keeps ~50%: the neighbour holds it up
    static = _neighbour_boots("static", [1000, 1100, 900, 1050], [900, 990, 810, 945], p99_factor=1.1)
    throttle = _neighbour_boots("throttle", [1000, 1100, 900, 1050], [500, 560, 445, 520], p99_factor=1.1)
    verdict = judge_c9(pd.concat([static, throttle]))
    assert verdict.verdict == "supported", verdict.detail
    assert "IOPS kept static 0.90 vs throttle 0.50" in verdict.detail
    # the same loss on both kernels: the throttle holds nothing up
    same = _neighbour_boots("throttle", [1000, 1100, 900, 1050], [901, 989, 811, 946], p99_factor=1.1)
    assert judge_c9(pd.concat([static, same])).verdict == "contradicted"
    # a boot without its alone cell is not a pair and is not used
    assert len(judge_c9(pd.concat([static, throttle[throttle["cell_id"] != "throttle-alone-r3"]])).evidence) == 14


def test_c10_counts_cells_the_kernel_reported_in_with_their_numbers() -> None:
    lsi = _failing_cells("static", [5, 5, 5], [2, 0, 0], device="lsi")
    warned = "sym53c8xx 0000:00:02.0: Buffer overflow detected. Allocation size: 4096. Mapping size: 65536."
    lsi = lsi.assign(
        status=["failed", "ok", "ok"],
        kernel_splat=["warning", "", ""],
        kernel_splat_text=[f"\n{warned}\nWARNING: CPU: 1 PID: 109 at swiotlb.c:963", "", ""],
    )
    verdict = judge_c10(lsi)
    assert len(verdict.evidence) == 3 and f"kernel reports in 1 cells (first: {warned[:160]})" in verdict.detail
    lost = lsi.assign(fio_iops=[None, 250.0, 250.0])  # a cell with no numbers is not evidence
    assert len(judge_c10(lost).evidence) == 2


def test_c10_throttle_one_counterexample_contradicts() -> None:
    # AHCI: no errors on either kernel (says nothing); LSI: errors on both (the throttle did not prevent them)
    ahci = [_failing_cells(kernel, [5, 5], [0, 0]) for kernel in ("static", "throttle")]
    lsi = [_failing_cells(kernel, [5, 5], [4, 4], device="lsi") for kernel in ("static", "throttle")]
    cells = pd.concat([*ahci, *lsi])
    [row] = judge_c10_throttle(cells)
    assert row.verdict == "contradicted" and "ahci" in row.detail and "(inconclusive)" in row.detail


def test_c13_cannot_decide_latency_when_the_ample_pools_p99_varies_more_than_the_slack() -> None:
    # the stored pool search's largest pool: p99 147.8 and 254.8 ms in two repetitions of static (RSD 37%)
    throttle = _sweep("throttle", dict.fromkeys(POOLS, 0), dict.fromkeys(POOLS, 100.0))
    noisy = STATIC_SWEEP.copy()
    largest = noisy.index[noisy["pool_slabs_requested"] == 131072]
    noisy.loc[largest, "fio_clat_p99_us"] = [80.0, 120.0]  # RSD 28%
    verdict = judge_c13(pd.concat([noisy, throttle]))
    assert verdict.verdict == "inconclusive" and "varies by up to 28%" in verdict.detail
    assert "no failed map from static 256 MiB, throttle 4 MiB" in verdict.detail
    steady = STATIC_SWEEP.copy()
    steady.loc[largest, "fio_clat_p99_us"] = [95.0, 105.0]  # RSD 7%: within the slack, decided
    assert judge_c13(pd.concat([steady, throttle])).verdict == "supported"


def test_cells_whose_pool_the_guest_kernel_chose_stay_out_of_the_claims_groups() -> None:
    from lab.claims import special_cells

    cells = pd.DataFrame({"pool_slabs_requested": [0, 1024, 32768], "device": "nvme"})
    assert special_cells(cells).tolist() == [True, False, False]


def test_performance_compares_cells_of_the_same_contention() -> None:
    from lab.claims import like_with_like

    def group(iops: list[float], crowded: list[bool | None]) -> pd.DataFrame:
        return pd.DataFrame({"fio_iops": iops, "observed": False, "host_oversubscribed": crowded})

    # Two of each group had their host to themselves, two ran beside another guest (--jobs 2 on 2 cores):
    # the comparison takes the first two against the first two.
    base, cand = (
        group([100, 101, 50, 51], [False, False, True, True]),
        group([90, 91, 40, 41], [False, None, True, True]),
    )
    b, c, label = like_with_like(base, cand)
    assert list(b["fio_iops"]) == [100, 101] and list(c["fio_iops"]) == [90, 91] and label == "unobserved cells"
    # Only the crowded cells are two a side: those, and the label says so.
    b, c, label = like_with_like(group([100, 50, 51], [False, True, True]), group([90, 40, 41], [False, True, True]))
    assert (
        list(b["fio_iops"]) == [50, 51] and label == "unobserved cells, all beside other guests on too few host cores"
    )
    # Neither: every cell, and the label says they are mixed.
    b, c, label = like_with_like(group([100, 50], [False, True]), group([90, 40], [False, True]))
    assert len(b) == 2 and label.endswith(", some beside other guests on too few host cores")
