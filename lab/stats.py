"""Statistics over repetitions: summaries, Welch's t-test, and a conclusion per metric."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

from scipy import stats as scipy_stats

# Thresholds, stated in every report (see ``THRESHOLDS_TEXT``).
ALPHA = 0.05  # significance level of Welch's t-test
NOISY_RSD_PCT = 15.0  # relative SD above which a metric is too noisy to compare
NEGLIGIBLE_PCT = 2.0  # relative change below which a significant difference is negligible

THRESHOLDS_TEXT = (
    f"Welch's t-test at alpha = {ALPHA}; a metric whose relative standard deviation exceeds "
    f"{NOISY_RSD_PCT:g}% in either group is *too noisy*; a significant change smaller than "
    f"{NEGLIGIBLE_PCT:g}% of the baseline median is *negligible*; fewer than 2 valid values "
    "per group, or a missing group, is *invalid data*."
)

CONCLUSIONS = ("invalid data", "too noisy", "not significant", "negligible", "improved", "regressed")


@dataclass(frozen=True)
class Summary:
    n: int
    median: float
    mean: float
    rsd_pct: float  # relative standard deviation (%SD)
    ci_low: float  # 95% confidence interval of the mean (t distribution)
    ci_high: float


def summarize(values: Sequence[float]) -> Summary:
    clean = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    n = len(clean)
    if n == 0:
        return Summary(0, math.nan, math.nan, math.nan, math.nan, math.nan)
    mean = sum(clean) / n
    median = float(sorted(clean)[n // 2] if n % 2 else (sorted(clean)[n // 2 - 1] + sorted(clean)[n // 2]) / 2)
    if n < 2:
        return Summary(n, median, mean, math.nan, math.nan, math.nan)
    sd = math.sqrt(sum((v - mean) ** 2 for v in clean) / (n - 1))
    rsd = sd / abs(mean) * 100.0 if mean else (0.0 if sd == 0 else math.inf)
    half = float(scipy_stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    return Summary(n, median, mean, rsd, mean - half, mean + half)


@dataclass(frozen=True)
class Comparison:
    metric: str
    baseline: Summary
    candidate: Summary
    change_pct: float  # candidate median vs baseline median
    p_value: float
    conclusion: str


def compare(metric: str, baseline: Sequence[float], candidate: Sequence[float], higher_is_better: bool) -> Comparison:
    """Compare a metric between two groups of repetitions and conclude."""
    base, cand = summarize(baseline), summarize(candidate)
    if base.n < 2 or cand.n < 2:
        return Comparison(metric, base, cand, math.nan, math.nan, "invalid data")
    if base.median:
        change = (cand.median - base.median) / abs(base.median) * 100.0
    else:
        change = 0.0 if cand.median == 0 else math.copysign(math.inf, cand.median)
    b_vals = [float(v) for v in baseline if v is not None and not math.isnan(float(v))]
    c_vals = [float(v) for v in candidate if v is not None and not math.isnan(float(v))]
    if len(set(b_vals)) == 1 and len(set(c_vals)) == 1:
        # No variance at all (e.g. a counter that is 0 in every run): exact comparison.
        p = 1.0 if b_vals[0] == c_vals[0] else 0.0
    else:
        with warnings.catch_warnings():
            # A group of (nearly) identical values: scipy warns that its moments lose precision; the
            # t statistic is then extreme or near zero, and no verdict hinges on its last digits.
            warnings.filterwarnings("ignore", "Precision loss occurred", RuntimeWarning)
            p = float(scipy_stats.ttest_ind(c_vals, b_vals, equal_var=False).pvalue)
    noisy = any(s.rsd_pct > NOISY_RSD_PCT for s in (base, cand) if s.mean != 0)
    if p >= ALPHA or math.isnan(p):
        conclusion = "too noisy" if noisy else "not significant"
    elif abs(change) < NEGLIGIBLE_PCT:
        conclusion = "negligible"
    else:
        better = change > 0 if higher_is_better else change < 0
        conclusion = "improved" if better else "regressed"
    return Comparison(metric, base, cand, change, p, conclusion)


@dataclass(frozen=True)
class PairedCost:
    """What an instrument costs, from paired runs (one with it, one without, back to back)."""

    pairs: int
    mean_pct: float  # mean over pairs of (without - with) / without, in % (positive: the instrument slows fio)
    ci_low_pct: float  # 95% confidence interval of that mean (t distribution over the pairs)
    ci_high_pct: float
    noise_pct: float  # run-to-run spread: relative SD of the runs without the instrument

    @property
    def verdict(self) -> str:
        """'no measurable cost' if the interval contains 0; 'below the noise' if the whole interval lies
        within the run-to-run spread; otherwise 'costs up to X%' (the interval's far end)."""
        if self.pairs < 2 or math.isnan(self.ci_low_pct):
            return "undecided (fewer than 2 pairs)"
        if self.ci_low_pct <= 0 <= self.ci_high_pct:
            return "no measurable cost"
        if max(abs(self.ci_low_pct), abs(self.ci_high_pct)) < self.noise_pct:
            return "below the noise"
        return f"costs up to {max(abs(self.ci_low_pct), abs(self.ci_high_pct)):.1f}%"


def paired_cost(without: Sequence[float], with_instrument: Sequence[float]) -> PairedCost:
    """The relative cost of an instrument from runs paired by index (``without[i]`` next to
    ``with_instrument[i]``); pairing cancels drifts that an unpaired comparison would count as noise."""
    if len(without) != len(with_instrument):
        raise ValueError(f"paired runs differ in number: {len(without)} without, {len(with_instrument)} with")
    costs = [(w - i) / w * 100.0 for w, i in zip(without, with_instrument, strict=True)]
    n = len(costs)
    base = summarize(without)
    noise = base.rsd_pct
    if n < 2:
        mean = costs[0] if costs else math.nan
        return PairedCost(n, mean, math.nan, math.nan, noise)
    mean = sum(costs) / n
    sd = math.sqrt(sum((c - mean) ** 2 for c in costs) / (n - 1))
    half = float(scipy_stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    return PairedCost(n, mean, mean - half, mean + half, noise)
