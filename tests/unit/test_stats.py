"""Statistics over repetitions: summaries, Welch's t-test and the conclusion per metric."""

from __future__ import annotations

import math

import pytest

from lab.stats import compare, summarize


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
