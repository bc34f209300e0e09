"""Statistics over repetitions: summaries, Welch's t-test, and a conclusion per metric."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
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


def _power(n: int, effect: float, alpha: float) -> float:
    """Power of a two-sided two-sample t-test with n per group at effect size ``effect`` (noncentral t)."""
    df = 2 * n - 2
    crit = float(scipy_stats.t.ppf(1 - alpha / 2, df))
    nc = effect * math.sqrt(n / 2)
    return float(scipy_stats.nct.sf(crit, df, nc) + scipy_stats.nct.cdf(-crit, df, nc))


def reps_needed(base: Summary, cand: Summary, family: int, noisy: bool, limit: int = 10_000) -> int | None:
    """Repetitions per group that would detect the observed difference of means with POWER, at the
    family's Bonferroni level ALPHA / family.  None when the means are equal (nothing to detect) or
    more than ``limit`` would be needed."""
    alpha = ALPHA / max(family, 1)
    diff = abs(cand.mean - base.mean)
    spread = math.sqrt((base.sd**2 + cand.sd**2) / 2)
    if not diff or math.isnan(diff) or math.isnan(spread):
        return None
    n = 2
    if spread > 0:
        effect = diff / spread
        while _power(n, effect, alpha) < POWER:
            n = n + 1 if n < 64 else n * 2  # exact at small n, where the answer matters; coarse beyond
            if n > limit:
                return None
    return max(n, _rank_test_min_n(alpha)) if noisy else n


def conclude(change: float, p: float, noisy: bool, higher_is_better: bool) -> str:
    if math.isnan(p) or p >= ALPHA:
        return "too noisy" if noisy else "not significant"
    if abs(change) < NEGLIGIBLE_PCT:
        return "negligible"
    better = change > 0 if higher_is_better else change < 0
    return "improved" if better else "regressed"


def compare_family(metrics: Sequence[Metric]) -> tuple[Comparison, ...]:
    """Compare several metrics of the same two groups of cells; p-values are Holm-adjusted across them."""
    prepared = []
    for m in metrics:
        base, cand = summarize(m.baseline), summarize(m.candidate)
        if base.n < 2 or cand.n < 2:
            prepared.append((m, base, cand, math.nan, math.nan, False))
            continue
        if base.median:
            change = (cand.median - base.median) / abs(base.median) * 100.0
        else:
            change = 0.0 if cand.median == 0 else math.copysign(math.inf, cand.median)
        noisy = any(s.rsd_pct > NOISY_RSD_PCT for s in (base, cand) if s.mean != 0)
        prepared.append((m, base, cand, change, _raw(_clean(m.baseline), _clean(m.candidate), noisy), noisy))
    raw = [p for *_, p, _ in prepared]
    adjusted = holm(raw)
    family = sum(not math.isnan(p) for p in raw)
    out = []
    for (m, base, cand, change, p_raw, noisy), p in zip(prepared, adjusted, strict=True):
        if math.isnan(p_raw):
            out.append(Comparison(m.name, base, cand, math.nan, math.nan, "invalid data", family=family))
            continue
        conclusion = conclude(change, p, noisy, m.higher_is_better)
        needed = reps_needed(base, cand, family, noisy) if conclusion in ("too noisy", "not significant") else None
        out.append(Comparison(m.name, base, cand, change, p, conclusion, p_raw, family, noisy, needed))
    return tuple(out)


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


def _paired_reps_needed(logs: Sequence[float], family: int, limit: int = 10_000) -> int | None:
    """Boots that would detect the observed mean log ratio with POWER at the family's Bonferroni level
    (one-sample t-test, noncentral t); None without an effect or beyond ``limit``."""
    n = len(logs)
    mean = sum(logs) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in logs) / (n - 1))
    if not mean or not sd:
        return None
    alpha, effect = ALPHA / max(family, 1), abs(mean) / sd
    boots = 2
    while True:
        crit = float(scipy_stats.t.ppf(1 - alpha / 2, boots - 1))
        nc = effect * math.sqrt(boots)
        power = float(scipy_stats.nct.sf(crit, boots - 1, nc) + scipy_stats.nct.cdf(-crit, boots - 1, nc))
        if power >= POWER:
            return boots
        boots = boots + 1 if boots < 64 else boots * 2
        if boots > limit:
            return None


def compare_paired_family(metrics: Sequence[PairedMetric]) -> tuple[Comparison, ...]:
    """Compare several metrics of two arms within the boots both ran in (PAIRED_TEXT)."""
    prepared: list[tuple[PairedMetric, Summary, Summary, float, float, list[float]]] = []
    for m in metrics:
        pairs = [(float(b), float(c)) for b, c in m.pairs if b > 0 and c > 0]  # NaN compares False: dropped too
        base, cand = summarize([b for b, _ in pairs]), summarize([c for _, c in pairs])
        if len(pairs) < 2:
            prepared.append((m, base, cand, math.nan, math.nan, []))
            continue
        logs = [math.log(c / b) for b, c in pairs]
        change = (math.exp(sum(logs) / len(logs)) - 1.0) * 100.0
        exact = 1.0 if logs[0] == 0 else 0.0  # every boot the same ratio: no variance to test against
        p = exact if len(set(logs)) == 1 else float(scipy_stats.ttest_1samp(logs, 0.0).pvalue)
        prepared.append((m, base, cand, change, p, logs))
    raw = [p for *_, p, _ in prepared]
    adjusted = holm(raw)
    family = sum(not math.isnan(p) for p in raw)
    out = []
    for (m, base, cand, change, p_raw, logs), p in zip(prepared, adjusted, strict=True):
        if math.isnan(p_raw):
            out.append(Comparison(m.name, base, cand, math.nan, math.nan, "invalid data", family=family))
            continue
        low, high = _ratio_interval_pct(logs)
        wide = not (low > -NEGLIGIBLE_PCT and high < NEGLIGIBLE_PCT)  # a change that matters is not ruled out
        conclusion = conclude(change, p, wide, m.higher_is_better)
        needed = _paired_reps_needed(logs, family) if conclusion in ("too noisy", "not significant") else None
        out.append(Comparison(m.name, base, cand, change, p, conclusion, p_raw, family, wide, needed))
    return tuple(out)


def _ratio_interval_pct(logs: Sequence[float]) -> tuple[float, float]:
    """95% interval of the geometric-mean change (%) from per-boot log ratios (t distribution)."""
    n = len(logs)
    mean = sum(logs) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in logs) / (n - 1))
    half = float(scipy_stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    return (math.exp(mean - half) - 1.0) * 100.0, (math.exp(mean + half) - 1.0) * 100.0


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
