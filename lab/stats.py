"""Statistics over repetitions: summaries, Welch's t-test, and a conclusion per metric."""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from scipy import stats as scipy_stats

# Thresholds, stated in every report (see ``THRESHOLDS_TEXT``); ``compare`` applies exactly this rule.
ALPHA = 0.05  # significance level, after the Holm-Bonferroni correction within a family of metrics
NOISY_RSD_PCT = 15.0  # relative SD above which a metric is noisy: a rank test must agree
NEGLIGIBLE_PCT = 2.0  # relative change below which a significant difference is negligible
POWER = 0.8  # the power "repetitions needed" is computed for
# What an instrument may cost and still count as free (PairedCost.verdict): declared here, before any bench.
EQUIVALENCE_MARGIN_PCT = 5.0

THRESHOLDS_TEXT = (
    "Each metric is compared over repetitions with Welch's t-test. Where a claim or a table row compares "
    "several metrics of the same cells (a family), the p-values are adjusted with the Holm-Bonferroni method "
    f"across that family. When either group's relative standard deviation exceeds {NOISY_RSD_PCT:g}% "
    "(noisy), a metric's p-value is the larger of Welch's and the Mann-Whitney U rank test's, since a "
    "t-test on a few noisy values can be carried by one outlier; the Holm adjustment acts on these p-values. "
    f"A change is significant when its adjusted p-value is below {ALPHA}. A change that is not significant "
    "is *too noisy* when a group is noisy, else *not significant*; a significant change smaller than "
    f"{NEGLIGIBLE_PCT:g}% of the baseline median is *negligible*; otherwise it is *improved* or *regressed*. "
    "Fewer than 2 valid values per group, or a missing group, is *invalid data*. For every *too noisy* or "
    "*not significant* result, `reps_needed` is the number of repetitions per group that would detect the "
    f"observed change with {POWER:.0%} power at the family's Bonferroni level (two-sample t-test on the "
    "observed means and SDs; for noisy metrics at least as many as the rank test needs to reach that level "
    "at all). Groups compare like with like: cells that ran without the in-guest sampler when each group "
    "has at least two, else cells that ran with it; mixed only when neither exists, and then the claim says so."
)

CONCLUSIONS = ("invalid data", "too noisy", "not significant", "negligible", "improved", "regressed")
UNDECIDED = frozenset({"invalid data", "too noisy"})  # conclusions that decide nothing


@dataclass(frozen=True)
class Summary:
    n: int
    median: float
    mean: float
    rsd_pct: float  # relative standard deviation (%SD)
    ci_low: float  # 95% confidence interval of the mean (t distribution)
    ci_high: float
    sd: float = math.nan


def _clean(values: Sequence[float | None]) -> list[float]:
    return [float(v) for v in values if v is not None and not math.isnan(float(v))]


def summarize(values: Sequence[float]) -> Summary:
    clean = _clean(values)
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
    return Summary(n, median, mean, rsd, mean - half, mean + half, sd)


@dataclass(frozen=True)
class Comparison:
    metric: str
    baseline: Summary
    candidate: Summary
    change_pct: float  # candidate median vs baseline median
    p_value: float  # the deciding p-value, Holm-adjusted within the family (see THRESHOLDS_TEXT)
    conclusion: str
    p_raw: float = math.nan  # the deciding p-value before the adjustment
    family: int = 1  # how many comparisons the adjustment spans
    noisy: bool = False  # a group's RSD exceeds NOISY_RSD_PCT: the rank test had to agree
    reps_needed: int | None = None  # per group, for POWER at the family's level (undecided results only)


@dataclass(frozen=True)
class Metric:
    """One metric to compare between a baseline and a candidate group."""

    name: str
    baseline: Sequence[float]
    candidate: Sequence[float]
    higher_is_better: bool


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (statsmodels' implementation); NaN stays NaN and is not
    counted in the family."""
    from statsmodels.stats.multitest import multipletests

    valid = [i for i, p in enumerate(p_values) if not math.isnan(p)]
    adjusted = [math.nan] * len(p_values)
    if valid:
        _, corrected, _, _ = multipletests([p_values[i] for i in valid], alpha=ALPHA, method="holm")
        for i, p in zip(valid, corrected, strict=True):
            adjusted[i] = float(p)
    return adjusted


def _raw(base: list[float], cand: list[float], noisy: bool) -> float:
    """The deciding p-value: Welch's t-test, and for noisy groups the larger of it and the rank test's."""
    if len(set(base)) == 1 and len(set(cand)) == 1:
        # No variance at all (e.g. a counter that is 0 in every run): exact comparison.
        return 1.0 if base[0] == cand[0] else 0.0
    with warnings.catch_warnings():
        # A group of (nearly) identical values: scipy warns that its moments lose precision; the
        # t statistic is then extreme or near zero, and no verdict hinges on its last digits.
        warnings.filterwarnings("ignore", "Precision loss occurred", RuntimeWarning)
        p = float(scipy_stats.ttest_ind(cand, base, equal_var=False).pvalue)
    if noisy:
        p = max(p, float(scipy_stats.mannwhitneyu(cand, base, alternative="two-sided").pvalue))
    return p


def _rank_test_min_n(alpha: float) -> int:
    """Repetitions per group below which a two-sided Mann-Whitney U test cannot reach ``alpha`` at all
    (its smallest p-value with n per group is 2 / C(2n, n))."""
    n = 2
    while 2.0 / math.comb(2 * n, n) >= alpha:
        n += 1
    return n


def _power(n: int, effect: float, alpha: float, paired: bool = False) -> float:
    """Power of a two-sided t-test at effect size ``effect`` (noncentral t): two-sample with n per group, or
    (``paired``) one-sample over n paired differences."""
    df, nc = (n - 1, effect * math.sqrt(n)) if paired else (2 * n - 2, effect * math.sqrt(n / 2))
    crit = float(scipy_stats.t.ppf(1 - alpha / 2, df))
    return float(scipy_stats.nct.sf(crit, df, nc) + scipy_stats.nct.cdf(-crit, df, nc))


def n_for_power(effect: float, alpha: float, paired: bool = False, limit: int = 10_000) -> int | None:
    """The smallest n (from 2) whose t-test has POWER at ``alpha`` for ``effect`` (see ``_power``); None
    beyond ``limit``.  Exact at small n, where the answer matters; coarse (doubling) beyond 64."""
    n = 2
    while _power(n, effect, alpha, paired) < POWER:
        n = n + 1 if n < 64 else n * 2
        if n > limit:
            return None
    return n


def reps_needed(base: Summary, cand: Summary, family: int, noisy: bool, limit: int = 10_000) -> int | None:
    """Repetitions per group that would detect the observed difference of means with POWER, at the
    family's Bonferroni level ALPHA / family.  None when the means are equal (nothing to detect) or
    more than ``limit`` would be needed."""
    alpha = ALPHA / max(family, 1)
    diff = abs(cand.mean - base.mean)
    spread = math.sqrt((base.sd**2 + cand.sd**2) / 2)
    if not diff or math.isnan(diff) or math.isnan(spread):
        return None
    n = n_for_power(diff / spread, alpha, limit=limit) if spread > 0 else 2
    if n is None:
        return None
    return max(n, _rank_test_min_n(alpha)) if noisy else n


def conclude(change: float, p: float, noisy: bool, higher_is_better: bool) -> str:
    if math.isnan(p) or p >= ALPHA:
        return "too noisy" if noisy else "not significant"
    if abs(change) < NEGLIGIBLE_PCT:
        return "negligible"
    better = change > 0 if higher_is_better else change < 0
    return "improved" if better else "regressed"


@dataclass(frozen=True)
class _Measured:
    """One metric of a family before the Holm adjustment: its summaries, change and raw p-value (NaN: not
    enough data), whether a non-significant result is undecided (``noisy``), and how many repetitions would
    decide it given the family's size."""

    name: str
    higher_is_better: bool
    base: Summary
    cand: Summary
    change: float = math.nan
    p_raw: float = math.nan
    noisy: bool = False
    needed: Callable[[int], int | None] = lambda family: None


def _conclude_family(measured: Sequence[_Measured]) -> tuple[Comparison, ...]:
    """Holm-adjust the family's p-values and conclude each metric at its adjusted p-value."""
    adjusted = holm([m.p_raw for m in measured])
    family = sum(not math.isnan(m.p_raw) for m in measured)
    out = []
    for m, p in zip(measured, adjusted, strict=True):
        if math.isnan(m.p_raw):
            out.append(Comparison(m.name, m.base, m.cand, math.nan, math.nan, "invalid data", family=family))
            continue
        conclusion = conclude(m.change, p, m.noisy, m.higher_is_better)
        needed = m.needed(family) if conclusion in ("too noisy", "not significant") else None
        out.append(Comparison(m.name, m.base, m.cand, m.change, p, conclusion, m.p_raw, family, m.noisy, needed))
    return tuple(out)


def compare_family(metrics: Sequence[Metric]) -> tuple[Comparison, ...]:
    """Compare several metrics of the same two groups of cells; p-values are Holm-adjusted across them."""
    measured = []
    for m in metrics:
        base, cand = summarize(m.baseline), summarize(m.candidate)
        if base.n < 2 or cand.n < 2:
            measured.append(_Measured(m.name, m.higher_is_better, base, cand))
            continue
        if base.median:
            change = (cand.median - base.median) / abs(base.median) * 100.0
        else:
            change = 0.0 if cand.median == 0 else math.copysign(math.inf, cand.median)
        noisy = any(s.rsd_pct > NOISY_RSD_PCT for s in (base, cand) if s.mean != 0)
        p_raw = _raw(_clean(m.baseline), _clean(m.candidate), noisy)
        needed = functools.partial(reps_needed, base, cand, noisy=noisy)
        measured.append(_Measured(m.name, m.higher_is_better, base, cand, change, p_raw, noisy, needed))
    return _conclude_family(measured)


PAIRED_TEXT = (
    "Where both arms of a comparison ran in the same boot (C8's bounds), each metric is compared within the "
    "boots: the change is the geometric mean of the per-boot ratios candidate / baseline, the p-value a "
    "one-sample t-test of their logarithms against 0, Holm-adjusted across the family as above; boot-to-boot "
    "differences cancel. A change that is not significant is *not significant* only if the 95% interval of "
    f"the change lies within ±{NEGLIGIBLE_PCT:g}% (nothing that matters was missed), else *too noisy*. Fewer "
    "than 2 boots with both arms is *invalid data*; `reps_needed` is counted in boots."
)


@dataclass(frozen=True)
class PairedMetric:
    """One metric of two arms measured in the same boots: (baseline, candidate) per boot."""

    name: str
    pairs: Sequence[tuple[float, float]]
    higher_is_better: bool


def _paired_reps_needed(logs: Summary, family: int) -> int | None:
    """Boots that would detect the observed mean log ratio with POWER at the family's Bonferroni level
    (one-sample t-test); None without an effect."""
    if not logs.mean or not logs.sd:
        return None
    return n_for_power(abs(logs.mean) / logs.sd, ALPHA / max(family, 1), paired=True)


def ratio_interval_pct(logs: Summary) -> tuple[float, float]:
    """95% interval of the geometric-mean change (%), from the summary of per-boot log ratios."""
    return (math.exp(logs.ci_low) - 1.0) * 100.0, (math.exp(logs.ci_high) - 1.0) * 100.0


def compare_paired_family(metrics: Sequence[PairedMetric]) -> tuple[Comparison, ...]:
    """Compare several metrics of two arms within the boots both ran in (PAIRED_TEXT)."""
    measured = []
    for m in metrics:
        pairs = [(float(b), float(c)) for b, c in m.pairs if b > 0 and c > 0]  # NaN compares False: dropped too
        base, cand = summarize([b for b, _ in pairs]), summarize([c for _, c in pairs])
        if len(pairs) < 2:
            measured.append(_Measured(m.name, m.higher_is_better, base, cand))
            continue
        ratios = [math.log(c / b) for b, c in pairs]
        logs = summarize(ratios)
        change = (math.exp(logs.mean) - 1.0) * 100.0
        exact = 1.0 if ratios[0] == 0 else 0.0  # every boot the same ratio: no variance to test against
        p_raw = exact if len(set(ratios)) == 1 else float(scipy_stats.ttest_1samp(ratios, 0.0).pvalue)
        low, high = ratio_interval_pct(logs)
        wide = not (low > -NEGLIGIBLE_PCT and high < NEGLIGIBLE_PCT)  # a change that matters is not ruled out
        needed = functools.partial(_paired_reps_needed, logs)
        measured.append(_Measured(m.name, m.higher_is_better, base, cand, change, p_raw, wide, needed))
    return _conclude_family(measured)


EQUIVALENCE_TEXT = (
    "A claim that something costs nothing needs more than a change that is not significant: each metric "
    "must be *equivalent*, by two one-sided tests at 5% each (TOST). The 90% interval of the ratio of "
    "geometric means, candidate / baseline (Welch's t on the logarithms, Welch-Satterthwaite degrees of "
    f"freedom), must lie within ±{EQUIVALENCE_MARGIN_PCT:g}%. Every metric of the family must pass; that "
    "is an intersection-union test, so no multiplicity adjustment applies."
)


@dataclass(frozen=True)
class Equivalence:
    """The TOST of one metric (EQUIVALENCE_TEXT): the 90% interval of the ratio's change, in %."""

    metric: str
    low_pct: float
    high_pct: float

    @property
    def equivalent(self) -> bool:
        margin = EQUIVALENCE_MARGIN_PCT
        return not math.isnan(self.low_pct) and -margin < self.low_pct and self.high_pct < margin

    def __str__(self) -> str:
        if math.isnan(self.low_pct):
            return f"{self.metric}: no interval (fewer than 2 positive values per group)"
        within = "within" if self.equivalent else "not within"
        return (
            f"{self.metric}: 90% interval {self.low_pct:+.1f}% to {self.high_pct:+.1f}%, {within} "
            f"±{EQUIVALENCE_MARGIN_PCT:g}%"
        )


def equivalence(metric: str, baseline: Sequence[float], candidate: Sequence[float]) -> Equivalence:
    """Two one-sided tests at 5% each on the logarithms (EQUIVALENCE_TEXT)."""
    base = [math.log(v) for v in _clean(baseline) if v > 0]
    cand = [math.log(v) for v in _clean(candidate) if v > 0]
    if len(base) < 2 or len(cand) < 2:
        return Equivalence(metric, math.nan, math.nan)
    mean_b, mean_c = sum(base) / len(base), sum(cand) / len(cand)
    var_b = sum((x - mean_b) ** 2 for x in base) / (len(base) - 1) / len(base)
    var_c = sum((x - mean_c) ** 2 for x in cand) / (len(cand) - 1) / len(cand)
    diff, se = mean_c - mean_b, math.sqrt(var_b + var_c)
    if se == 0:
        low = high = diff
    else:
        df = (var_b + var_c) ** 2 / (var_b**2 / (len(base) - 1) + var_c**2 / (len(cand) - 1))
        half = float(scipy_stats.t.ppf(0.95, df)) * se
        low, high = diff - half, diff + half
    # rounded to 1e-9 %: a change of exactly the margin is on it (outside), not a rounding error inside
    return Equivalence(metric, round((math.exp(low) - 1) * 100, 9), round((math.exp(high) - 1) * 100, 9))


def compare(metric: str, baseline: Sequence[float], candidate: Sequence[float], higher_is_better: bool) -> Comparison:
    """Compare one metric between two groups of repetitions and conclude (a family of one)."""
    return compare_family([Metric(metric, baseline, candidate, higher_is_better)])[0]


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
        """An equivalence test, not "no effect seen": 'equivalent within ±M%' if the whole 95% interval lies
        inside the declared margin (EQUIVALENCE_MARGIN_PCT; two one-sided tests at 2.5% each); 'costs up to
        X%' (the interval's far end) if the interval excludes 0 and is not inside the margin; otherwise
        'inconclusive': the interval holds 0 but reaches past the margin, so a cost that matters is not
        ruled out."""
        if self.pairs < 2 or math.isnan(self.ci_low_pct):
            return "undecided (fewer than 2 pairs)"
        margin = EQUIVALENCE_MARGIN_PCT
        far = max(abs(self.ci_low_pct), abs(self.ci_high_pct))
        if -margin < self.ci_low_pct and self.ci_high_pct < margin:
            return f"equivalent within ±{margin:g}%"
        if self.ci_low_pct > 0 or self.ci_high_pct < 0:
            return f"costs up to {far:.1f}%"
        return f"inconclusive (the interval reaches {far:.1f}%, past the ±{margin:g}% margin)"


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
