"""Statistics over repetitions: summaries, Welch's t-test and the conclusion per metric."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from lab.stats import (
    ALPHA,
    EQUIVALENCE_MARGIN_PCT,
    NEGLIGIBLE_PCT,
    NOISY_RSD_PCT,
    POWER,
    THRESHOLDS_TEXT,
    Metric,
    PairedMetric,
    compare,
    compare_family,
    compare_paired_family,
    conclude,
    holm,
    summarize,
)


def test_summary_of_three_repetitions() -> None:
    s = summarize([100.0, 110.0, 90.0])
    assert s.n == 3 and s.median == 100.0 and s.mean == 100.0
    assert s.rsd_pct == pytest.approx(10.0)
    # t(0.975, 2) = 4.303; sd = 10; half width = 4.303 * 10 / sqrt(3)
    assert (s.ci_low, s.ci_high) == pytest.approx((100 - 24.84, 100 + 24.84), abs=0.01)


def test_summary_ignores_missing_values() -> None:
    s = summarize([1.0, float("nan"), 3.0])
    assert s.n == 2 and s.median == 2.0


@pytest.mark.parametrize(
    ("baseline", "candidate", "higher", "conclusion"),
    [
        pytest.param([100, 101, 99], [80, 81, 79], True, "regressed", id="iops-down"),
        pytest.param([100, 101, 99], [120, 121, 119], True, "improved", id="iops-up"),
        pytest.param([100, 101, 99], [80, 81, 79], False, "improved", id="latency-down"),
        pytest.param([100, 101, 99], [100.5, 101.5, 99.5], True, "not significant", id="same"),
        pytest.param([1000, 1001, 999, 1000], [1010, 1011, 1009, 1010], True, "negligible", id="tiny-change"),
        pytest.param([100, 160, 50], [80, 82, 79], True, "too noisy", id="noisy"),
        pytest.param([100], [80, 81], True, "invalid data", id="one-repetition"),
        pytest.param([0, 0, 0], [0, 0, 0], False, "not significant", id="zero-counters"),
        pytest.param([0, 0, 0], [7316, 7000, 7100], False, "regressed", id="failures-appear"),
    ],
)
def test_conclusions(baseline: list[float], candidate: list[float], higher: bool, conclusion: str) -> None:
    assert compare("m", baseline, candidate, higher).conclusion == conclusion


def test_change_is_relative_to_the_baseline_median() -> None:
    c = compare("iops", [100, 100, 100], [90, 90, 90], True)
    assert c.change_pct == pytest.approx(-10.0)
    assert c.p_value == 0.0 and c.conclusion == "regressed"
    assert math.isnan(compare("x", [], [1, 2], True).change_pct)


# --- the rule stated in THRESHOLDS_TEXT, at its boundaries ---------------------------------------


def test_a_large_significant_change_in_noisy_data_is_decided_when_the_rank_test_agrees() -> None:
    # The example from the issue: baseline RSD 21.6% (noisy), a 90% drop that both tests call significant.
    c = compare("m", [100, 130, 85, 140, 95], [10, 12, 11, 9, 10], True)
    assert c.noisy and c.baseline.rsd_pct == pytest.approx(21.56, abs=0.01)
    assert c.conclusion == "regressed"
    assert c.p_value == pytest.approx(0.0119, abs=1e-4)  # the rank test's p (5 vs 5, no ties), the larger one


def test_holm_acts_on_the_rank_test_p_of_a_noisy_metric() -> None:
    # Four against four, every candidate below every baseline value, both groups noisy (RSD ~32%): the rank
    # test's exact two-sided p is 2 / C(8, 4) = 2/70 = 0.0286, larger than Welch's, so it is the metric's p.
    base, cand = [100, 140, 180, 220], [20, 28, 36, 44]
    alone = compare("a", base, cand, True)
    assert alone.noisy and alone.p_raw == pytest.approx(2 / 70) and alone.p_value == pytest.approx(2 / 70)
    assert alone.conclusion == "regressed"
    # Two such metrics in one family: Holm doubles the smaller p, 4/70 = 0.057 >= 0.05, and neither is decided
    # (the rank test cannot clear a family of two at four per group).
    pair = compare_family([Metric("a", base, cand, True), Metric("b", base, cand, True)])
    assert [c.p_value for c in pair] == [pytest.approx(4 / 70)] * 2
    assert [c.conclusion for c in pair] == ["too noisy", "too noisy"]
    # Five against five: 2 / C(10, 5) = 2/252, doubled 0.016: both decided.
    base5, cand5 = [*base, 260], [*cand, 52]
    pair5 = compare_family([Metric("a", base5, cand5, True), Metric("b", base5, cand5, True)])
    assert [c.p_value for c in pair5] == [pytest.approx(4 / 252)] * 2
    assert [c.conclusion for c in pair5] == ["regressed", "regressed"]


def test_rsd_of_exactly_15_percent_is_not_noisy_and_just_above_it_is() -> None:
    # [85, 100, 115]: mean 100, SD 15 -> RSD 15.0%, not above the limit: Welch alone decides.
    assert compare("m", [85, 100, 115], [50, 50.5, 49.5], True).conclusion == "regressed"
    # [84.9, 100, 115.1]: RSD 15.1%: the rank test must agree, and with 3 per group it cannot reach
    # p < 0.05 (its smallest p is 2 / C(6, 3) = 0.1), so the change is too noisy to call.
    c = compare("m", [84.9, 100, 115.1], [50, 50.5, 49.5], True)
    assert c.noisy and c.conclusion == "too noisy"
    assert c.reps_needed is not None and c.reps_needed >= 4  # the rank test needs 4 per group at 0.05


@pytest.mark.parametrize(
    ("change", "p", "noisy", "conclusion"),
    [
        pytest.param(10.0, 0.05, False, "not significant", id="p-equal-to-alpha"),
        pytest.param(10.0, 0.0499, False, "improved", id="p-just-below-alpha"),
        pytest.param(10.0, 0.05, True, "too noisy", id="p-equal-to-alpha-noisy"),
        pytest.param(2.0, 0.01, False, "improved", id="change-equal-to-2pct"),
        pytest.param(-1.99, 0.01, False, "negligible", id="change-just-below-2pct"),
        pytest.param(-2.0, 0.01, False, "regressed", id="drop-equal-to-2pct"),
        pytest.param(10.0, float("nan"), False, "not significant", id="no-p-value"),
    ],
)
def test_conclusion_boundaries(change: float, p: float, noisy: bool, conclusion: str) -> None:
    assert conclude(change, p, noisy, higher_is_better=True) == conclusion


def test_holm_bonferroni_by_hand() -> None:
    # Sorted: 0.005 x 4 = 0.02; 0.01 x 3 = 0.03; 0.03 x 2 = 0.06; 0.04 x 1 = 0.04 -> raised to 0.06 (monotone).
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # A missing p-value is not a member of the family: m = 2.
    adjusted = holm([0.01, float("nan"), 0.04])
    assert adjusted[0] == pytest.approx(0.02) and math.isnan(adjusted[1]) and adjusted[2] == pytest.approx(0.04)
    assert holm([0.3, 0.9]) == pytest.approx([0.6, 0.9])


def test_a_change_significant_alone_is_not_in_a_family_of_four() -> None:
    base, cand = [100, 101, 99], [103, 104, 102]
    # Welch by hand: means 100 and 103, both variances 1, t = 3 / sqrt(1/3 + 1/3) on 4 degrees of freedom;
    # Student's t with 4 df has a closed form: p = 1 - 1.5 x (1 - x^2 / 3), x = t / sqrt(4 + t^2).
    t = 3 / math.sqrt(2 / 3)
    x = t / math.sqrt(4 + t * t)
    raw = 1 - 1.5 * x * (1 - x * x / 3)
    assert raw == pytest.approx(0.02131, abs=1e-5)
    assert 0.05 / 4 < raw < 0.05  # significant alone, not after Holm over four metrics
    assert compare("iops", base, cand, True).conclusion == "improved"
    flat = [100, 101, 99]
    family = compare_family([Metric("iops", base, cand, True)] + [Metric(f"m{i}", flat, flat, True) for i in range(3)])
    assert family[0].conclusion == "not significant"
    assert family[0].p_raw == pytest.approx(raw) and family[0].p_value == pytest.approx(4 * raw)
    assert all(c.family == 4 for c in family)


def test_repetitions_needed_for_80_percent_power_match_the_textbook() -> None:
    # Effect size d = 1 (means 101 and 102, SD 1 each): 17 per group at alpha 0.05, power 0.8 (two-sided).
    c = compare("m", [100, 101, 102], [101, 102, 103], True)
    assert c.conclusion == "not significant" and c.reps_needed == 17
    # Decided comparisons need no more repetitions.
    assert compare("m", [100, 101, 99], [80, 81, 79], True).reps_needed is None


def test_the_thresholds_text_states_the_published_rule() -> None:
    """The numbers a report prints, written out here: changing a constant must be a deliberate change of
    the published rule (this test, the README and the findings), never a silent one.  The boundary tests
    above check that the code applies the same numbers."""
    assert (ALPHA, NOISY_RSD_PCT, NEGLIGIBLE_PCT, POWER, EQUIVALENCE_MARGIN_PCT) == (0.05, 15.0, 2.0, 0.8, 5.0)
    for phrase in (
        "adjusted p-value is below 0.05",
        "relative standard deviation exceeds 15%",
        "smaller than 2% of the baseline median",
        "with 80% power",
        "Holm-Bonferroni",
        "Mann-Whitney",
    ):
        assert phrase in THRESHOLDS_TEXT, phrase


# --- paired within boots (PAIRED_TEXT) -----------------------------------------------------------


def test_pairing_within_boots_sees_a_steady_ratio_that_boot_to_boot_spread_hides() -> None:
    # Four boots of very different speed, the candidate 5% slower in every one: the ratio is exactly 0.95
    # each time (no variance: exact), while the unpaired groups overlap completely.
    pairs = [(1000.0, 950.0), (3000.0, 2850.0), (5000.0, 4750.0), (2000.0, 1900.0)]
    [paired] = compare_paired_family([PairedMetric("iops", pairs, True)])
    assert paired.change_pct == pytest.approx(-5.0) and paired.p_value == 0.0 and paired.conclusion == "regressed"
    unpaired = compare("iops", [b for b, _ in pairs], [c for _, c in pairs], True)
    assert unpaired.conclusion == "too noisy"


def test_two_boots_decide_nothing_that_matters() -> None:
    # Per-boot ratios 0.74 and 0.78 (C8's stored run): logs -0.30111, -0.24846; t = -10.44 with 1 degree of
    # freedom, whose two-sided p is 1 - (2/pi) atan(|t|) = 0.0609 (t with 1 df is Cauchy). Not significant,
    # and the 95% interval of the change (-45% to +6%) reaches past +-2%: too noisy, not "no change".
    [c] = compare_paired_family([PairedMetric("iops", [(100.0, 74.0), (100.0, 78.0)], True)])
    t = (-0.301105 - 0.248461) / 2 / (0.037228 / math.sqrt(2))
    assert c.p_raw == pytest.approx(1 - 2 / math.pi * math.atan(abs(t)), abs=1e-3)
    assert c.change_pct == pytest.approx((math.sqrt(0.74 * 0.78) - 1) * 100) and c.conclusion == "too noisy"


def test_a_paired_change_is_not_significant_only_when_its_interval_is_negligible() -> None:
    # Ratios 1.001, 0.999, 1.0, 1.0005: no change, and the interval is within +-0.2%: decided, none.
    steady = [(1000.0, 1001.0), (1000.0, 999.0), (1000.0, 1000.0), (1000.0, 1000.5)]
    [c] = compare_paired_family([PairedMetric("iops", steady, True)])
    assert c.conclusion == "not significant" and not c.noisy
    [one] = compare_paired_family([PairedMetric("iops", steady[:1], True)])
    assert one.conclusion == "invalid data"  # one boot with both arms compares nothing


def test_equivalence_needs_the_whole_90_percent_interval_inside_the_margin() -> None:
    from lab.stats import equivalence

    # no spread: the interval is the point itself, +4.0% (inside ±5%) and +5.0% (on the margin: outside)
    inside = equivalence("iops", [100.0] * 3, [104.0] * 3)
    assert inside.equivalent and round(inside.low_pct, 6) == round(inside.high_pct, 6) == 4.0
    assert not equivalence("iops", [100.0] * 3, [105.0] * 3).equivalent
    assert not equivalence("iops", [100.0] * 3, [95.0] * 3).equivalent
    # by hand: logs differ by d = ln 1.1 within each group; mean difference 0; each group's variance of the
    # mean d^2/4, se = d/sqrt(2) = 0.067395; Welch df = 2, t(0.95, 2) = 2.919986; half-width 0.196794
    spread = equivalence("iops", [100.0, 110.0], [100.0, 110.0])
    assert (round(spread.low_pct, 1), round(spread.high_pct, 1)) == (-17.9, 21.7) and not spread.equivalent
    assert math.isnan(equivalence("iops", [100.0], [100.0, 101.0]).low_pct)  # one value: no interval


def test_c12_is_not_called_free_without_equivalence() -> None:
    import pandas as pd

    from lab.claims import judge_c12

    verdict = judge_c12(pd.read_parquet(Path(__file__).resolve().parent.parent / "data" / "c12-cells.parquet"))
    # nothing regressed, but no metric's 90% interval lies within ±5% (QD32 IOPS: -8.1% to +4.5%)
    assert verdict.verdict == "inconclusive"
    assert "equivalence: 0 of 10 metrics within ±5%" in verdict.detail
    assert "QD32 fio_iops: 90% interval -8.1% to +4.5%, not within ±5%" in verdict.detail
