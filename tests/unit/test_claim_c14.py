"""C14 and C14-areas at their boundaries, on cells shaped like the `areas` matrix's rows.

The expected verdicts are worked out by hand from the rules in the claims' threshold texts, not by calling
the statistics the judges use.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from lab.claims import MAX_MAPPING_SLABS, judge_c14, judge_c14_areas, rules

NSLABS = 32768
ON, OFF = 29491, NSLABS  # high_throttle: the kernel's default (90%) and "100/100" (never exceeded)


def row(rep: int, areas: int, high: int, iops: float, **extra: object) -> dict[str, object]:
    return {
        "run_id": "r",
        "host_id": "h",
        "kernel": "throttle",
        "pool_slabs_requested": NSLABS,
        "nslabs": NSLABS,
        "device": "nvme",
        "vcpus": 2,
        "memory_mib": 1024,
        "repetition": rep,
        "swiotlb_areas_requested": 1.0 if areas == 1 else math.nan,
        "swiotlb_areas": areas,
        "cmdline_extra": "",
        "status": "ok",
        "observed": False,
        "workload": "heavy",
        "numjobs": 4,
        "iodepth": 128,
        "hipri": False,
        "high_throttle": high,
        "high_throttle_count": 0,
        "low_throttle_count": 0,
        "fio_iops": iops,
        "map_failures": 0,
        "hiwater": NSLABS,
        "cell_id": f"r{rep}-a{areas}-{'on' if high < NSLABS else 'off'}",
    } | extra


def heavy(ratios: list[float]) -> pd.DataFrame:
    """Per repetition: unthrottled one area at 1,000 IOPS, throttled one per vCPU at 1,000 x ratio; the
    other two arms at 1,100 (they only enter the detail)."""
    rows = []
    for rep, ratio in enumerate(ratios):
        rows += [
            row(rep, 1, OFF, 1000.0),
            row(rep, 1, ON, 1100.0),
            row(rep, 2, OFF, 1100.0),
            row(rep, 2, ON, 1000.0 * ratio),
        ]
    return pd.DataFrame(rows)


@pytest.mark.parametrize(
    ("ratios", "verdict"),
    [
        # +9..+12% in every repetition: log ratios 0.086-0.113, sd ~0.012, t ~ 17 with 3 df: improved
        ([1.10, 1.12, 1.09, 1.11], "supported"),
        # -18..-21% in every repetition: regressed
        ([0.80, 0.82, 0.79, 0.81], "contradicted"),
        # the same IOPS in every repetition: p = 1, interval [0, 0] inside ±2%: not significant, a real "no more"
        ([1.0, 1.0, 1.0, 1.0], "supported"),
        # mean ~0 but sd ~0.046: the 95% interval reaches ~±7.6%, past ±2%: too noisy, nothing decided
        ([0.97, 1.03, 0.95, 1.05], "inconclusive"),
        # one repetition cannot be paired into a test
        ([1.10], "inconclusive"),
    ],
)
def test_c14_compares_throttling_with_one_area_repetition_by_repetition(ratios: list[float], verdict: str) -> None:
    judged = judge_c14(heavy(ratios))
    assert judged.verdict == verdict, judged.detail
    if len(ratios) > 1:
        assert f"[{len(ratios)} unobserved repetitions]" in judged.detail
        # the throttle's own cost within a boot: 1,100 -> 1,000 x ratio with one per vCPU; 1,000 -> 1,100 on one
        assert "the throttle's cost within a boot, one area: IOPS +10.0%" in judged.detail
        assert "one area vs one per vCPU, unthrottled (the locking's cost): IOPS -9.1%" in judged.detail
        assert f"the throttle engaged in 0 of {2 * len(ratios)} throttled cells" in judged.detail


def test_c14_pairs_only_the_boots_of_one_repetition() -> None:
    cells = heavy([1.10, 1.12, 1.09, 1.11])
    # repetitions 2 and 3 lost their one-area boots: two repetitions are left to pair, still enough
    left = cells[~((cells["repetition"] >= 2) & (cells["swiotlb_areas"] == 1))]
    assert "[2 unobserved repetitions]" in judge_c14(left).detail
    # a second run's cells of the same repetition numbers pair among themselves, never with the first run's
    # (4 + 4 pairs; across the runs there would be 4 per repetition, 16)
    other = cells.assign(run_id="s", fio_iops=cells["fio_iops"] * 3)
    assert "[8 unobserved repetitions]" in judge_c14(pd.concat([cells, other])).detail


def test_c14_without_area_cells_is_not_tested() -> None:
    cells = heavy([1.1, 1.1]).assign(swiotlb_areas_requested=math.nan, swiotlb_areas=2)
    judged = judge_c14(cells)
    assert judged.verdict == "not tested" and 'areas = ["1", "default"]' in judged.detail
    assert judge_c14_areas(cells).verdict == "not tested"


def unthrottled(per_vcpu: list[tuple[int, int]], one: list[tuple[int, int]]) -> pd.DataFrame:
    """Unthrottled "fill" cells: (failed maps, hiwater) for each cell with one area per vCPU and with one."""
    rows = [
        row(rep, areas, OFF, 1000.0, workload="fill", numjobs=1, iodepth=224, map_failures=f, hiwater=h)
        for areas, cells in ((2, per_vcpu), (1, one))
        for rep, (f, h) in enumerate(cells)
    ]
    return pd.DataFrame(rows)


BELOW = NSLABS - MAX_MAPPING_SLABS  # the fullest a pool may be and still have had room for any mapping
FULL = BELOW + 1


@pytest.mark.parametrize(
    ("per_vcpu", "one", "verdict"),
    [
        # failed with room left (hiwater exactly one largest mapping below the size) only with per-vCPU areas;
        # the one-area cell failed too, but one slot closer to full: not below a full pool
        ([(5, BELOW), (0, BELOW)], [(5, FULL), (0, BELOW)], "supported"),
        # one area fails below a full pool as often as per-vCPU areas: the areas explain nothing
        ([(5, BELOW), (0, BELOW)], [(3, BELOW), (0, BELOW)], "contradicted"),
        ([(5, BELOW), (0, BELOW)], [(3, BELOW), (2, BELOW)], "contradicted"),
        # fewer with one area, but not none
        ([(5, BELOW), (4, BELOW)], [(3, BELOW), (0, BELOW)], "inconclusive"),
        # failures only at a full pool: nothing for the areas to explain
        ([(5, FULL), (4, NSLABS)], [(3, FULL), (0, BELOW)], "inconclusive"),
    ],
)
def test_c14_areas_counts_failures_below_a_full_pool(
    per_vcpu: list[tuple[int, int]], one: list[tuple[int, int]], verdict: str
) -> None:
    judged = judge_c14_areas(unthrottled(per_vcpu, one))
    assert judged.verdict == verdict, judged.detail
    if verdict == "inconclusive" and not any(h <= BELOW and f for f, h in per_vcpu + one):
        assert "nothing for the areas to explain" in judged.detail


def test_c14_areas_leaves_throttled_cells_out() -> None:
    cells = unthrottled([(5, BELOW)], [(0, BELOW)])
    throttled_one = row(0, 1, ON, 1000.0, workload="fill", map_failures=9, hiwater=BELOW, cell_id="t")
    judged = judge_c14_areas(pd.concat([cells, pd.DataFrame([throttled_one])]))
    assert judged.verdict == "supported" and "t" not in judged.evidence


STORED = Path(__file__).resolve().parent.parent / "data" / "c14-cells.parquet"


def test_the_published_c14_verdicts_follow_from_the_stored_run() -> None:
    # docs/findings.md and the README quote these from the areas.toml run of 2026-12-03 (tests/data/README.md)
    cells = pd.read_parquet(STORED)
    c14 = judge_c14(cells)
    assert c14.verdict == "inconclusive"
    assert "fio_iops -6.4% (too noisy; ~14 repetitions per group would detect it) [4 unobserved" in c14.detail
    assert "one area per vCPU: IOPS -0.7%" in c14.detail and "one area: IOPS -2.7%" in c14.detail
    assert "(the locking's cost): IOPS +6.1%" in c14.detail
    assert "the throttle engaged in 1 of 8 throttled cells" in c14.detail
    areas = judge_c14_areas(cells)
    assert areas.verdict == "contradicted"
    [failed] = cells[(cells["map_failures"] > 0)].itertuples()
    assert (failed.swiotlb_areas, failed.high_throttle, failed.map_failures, failed.hiwater) == (1, NSLABS, 2, 30437)
    assert "one per vCPU, heavy: failed below a full pool in 0 of 4 cells" in areas.detail


def test_the_stored_run_was_judged_by_the_rules_it_fixed_before_it_started() -> None:
    stored = json.loads((STORED.parent / "c14-rules.json").read_text())
    now = rules()
    assert {c: now[c] for c in ("C14", "C14-areas")} == {c: stored["rules"][c] for c in ("C14", "C14-areas")}
