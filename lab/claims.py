"""The thread's claims (C1-C14; the README's claims table, docs/findings.md), judged from measured cells.

Each judge takes the run's cells table and returns a ``Verdict``: supported,
contradicted or inconclusive, with the metric, the threshold and the cells it
rests on; "not tested" when the matrix had none of the cells the claim needs
(whatever became of them), and inconclusive when it had them but too few
succeeded to decide.  A judge that lacks the cells it needs says so; it never
guesses.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import pandas as pd

from lab.doorbells import FAILURE_REASON
from lab.matrix import DEFAULT_POOL, THROTTLE_FOREVER_MS, queue_fit_share, timeout_label
from lab.stats import (
    EQUIVALENCE_MARGIN_PCT,
    UNDECIDED,
    Comparison,
    Metric,
    PairedMetric,
    compare_family,
    compare_paired_family,
    equivalence,
)
from lab.store import SKIPPED

MAX_MAPPING_SLABS = 128  # largest single bounce mapping: 256 KiB
NEAR_THRESHOLD_FRAC = 0.10  # "near the threshold": at most 10% of the pool above high_throttle
PERF_METRICS = (("fio_iops", True), ("fio_clat_p50_us", False), ("fio_clat_p99_us", False), ("fio_clat_p999_us", False))


@dataclass(frozen=True)
class Verdict:
    claim: str
    text: str
    verdict: str  # one of VERDICTS
    metric: str
    threshold: str
    evidence: tuple[str, ...]
    detail: str
    comparisons: tuple[Comparison, ...] = ()
    scope: str = ""  # "host X, platform Y" when a run spans several: every verdict is judged within one
    rule: str = ""  # whether its rule was fixed before the run (RULE_STATES; lab.claims.check_rules)

    @property
    def rule_digest(self) -> str:
        """The printed rule (claim text, metric, threshold) as a digest: what a run fixes when it starts."""
        printed = "\0".join((self.text, self.metric, self.threshold))
        return hashlib.sha256(printed.encode()).hexdigest()[:16]


NOT_TESTED = "not tested"  # the matrix had none of the cells the claim needs: neither a finding nor undecided
VERDICTS = ("supported", "contradicted", "inconclusive", NOT_TESTED)

FAILING_DRIVERS = ("ahci", "lsi")  # devices whose driver fails a request when its map fails (claim C10)


def special_cells(cells: pd.DataFrame, conversion: bool = True) -> pd.Series:
    """Cells that ask a question of their own and stay out of the other claims' groups: a driver that fails
    instead of requeueing (C10), a slowed neighbour disk (C9), an emulated conversion cost (C7 emulated;
    unless ``conversion`` is False), an area count or further kernel parameters from the matrix (C14's
    own cells), and a pool whose size the guest kernel chose (pool = "default": the
    claims order pools by their requested size, which such a cell does not have; the summary shows what it
    got).  Columns absent from older runs mean none of these."""
    special = pd.Series(False, index=cells.index)
    if "pool_slabs_requested" in cells:
        special |= cells["pool_slabs_requested"] == DEFAULT_POOL
    if "device" in cells:
        special |= cells["device"].isin(FAILING_DRIVERS)
    if "neighbour" in cells:
        special |= cells["neighbour"].fillna("none") != "none"
    if conversion and "conversion_ns" in cells:
        special |= cells["conversion_ns"].fillna(0) != 0
    if "swiotlb_areas_requested" in cells:  # an area count set on the command line (C14)
        special |= cells["swiotlb_areas_requested"].notna()
    if "cmdline_extra" in cells:  # further kernel parameters: another guest than the claims assume
        special |= cells["cmdline_extra"].fillna("") != ""
    return special


def _ok_any(cells: pd.DataFrame) -> pd.DataFrame:
    return cells[cells["status"] == "ok"] if not cells.empty else cells


def _ok(cells: pd.DataFrame) -> pd.DataFrame:
    """Successful cells of the plain kind every claim but C7-emulated, C9 and C10 is judged on."""
    ok = _ok_any(cells)
    return ok[~special_cells(ok)] if not ok.empty else ok


def _kind(cells: pd.DataFrame) -> pd.Series:
    """Workload kind from its parameters: polled, single-queue (1 job, deep), qd1 (1 job, depth 1) or heavy
    (several jobs)."""
    if cells.empty:
        return pd.Series(dtype=str)
    hipri = cells.get("hipri", pd.Series(False, index=cells.index)).fillna(False).astype(bool)
    numjobs = cells["numjobs"].fillna(1).astype(int)
    iodepth = cells["iodepth"].fillna(1).astype(int)
    kind = pd.Series("other", index=cells.index)
    kind[(numjobs > 1) & ~hipri & (iodepth >= 16)] = "heavy"
    kind[(numjobs == 1) & ~hipri & (iodepth >= 32)] = "single-queue"
    kind[(numjobs == 1) & ~hipri & (iodepth == 1)] = "qd1"
    kind[hipri] = "polled"
    return kind


def _select(cells: pd.DataFrame, kernel: str, kind: str, pool: int | None = None) -> pd.DataFrame:
    if cells.empty:
        return cells
    chosen = cells[(cells["kernel"] == kernel) & (_kind(cells) == kind)]
    if pool is not None:
        chosen = chosen[chosen["pool_slabs_requested"] == pool]
    return chosen


def _common_pools(cells: pd.DataFrame, kernels: tuple[str, ...], kind: str) -> set[int]:
    """Pool sizes on which every one of ``kernels`` has successful cells of this kind."""
    pools: set[int] | None = None
    for kernel in kernels:
        have = set(_select(_ok(cells), kernel, kind)["pool_slabs_requested"])
        pools = have if pools is None else pools & have
    return pools or set()


def _smallest_common_pool(cells: pd.DataFrame, kernels: tuple[str, ...], kind: str) -> int | None:
    pools = _common_pools(cells, kernels, kind)
    return min(pools) if pools else None


def _ids(*frames: pd.DataFrame) -> tuple[str, ...]:
    return tuple(cid for frame in frames for cid in frame["cell_id"])


def _ran(cells: pd.DataFrame, kernel: str, kind: str, *, plain: bool = True) -> pd.DataFrame:
    """The cells of a kernel and workload kind the matrix had, whatever became of them (ok, failed, lost; not
    skipped, whose platform was not offered): whether a claim was tested at all, not whether it can be judged.
    ``plain``: leave out the cells that ask a question of their own, as ``_ok`` does."""
    if cells.empty or "status" not in cells:
        return cells.iloc[0:0]
    ran = cells[cells["status"] != SKIPPED]
    if plain and not ran.empty:
        ran = ran[~special_cells(ran)]
    return _select(ran, kernel, kind)


def _ran_all(cells: pd.DataFrame, kernels: Sequence[str], kind: str) -> bool:
    return all(not _ran(cells, kernel, kind).empty for kernel in kernels)


def _missing(claim: str, text: str, metric: str, threshold: str, need: str, *, tested: bool) -> Verdict:
    """A claim the cells cannot judge: "not tested" if the matrix had none of the cells it needs (``need``
    names them), inconclusive if it had them but too few succeeded (on a common pool) to decide."""
    if not tested:
        return Verdict(claim, text, NOT_TESTED, metric, threshold, (), f"not tested by this matrix: it has no {need}")
    detail = f"no usable cells: the matrix has {need}, but too few of them succeeded (on a common pool) to judge"
    return Verdict(claim, text, "inconclusive", metric, threshold, (), detail)


def judge_c1(cells: pd.DataFrame) -> Verdict:
    text = "Without SWIOTLB_DYNAMIC and without throttling, fio easily hits the pool limit and DMA map fails"
    metric = "failed dma_map_page calls; hiwater vs nslabs; fio errors"
    threshold = f"every cell: map failures > 0 and hiwater >= nslabs - {MAX_MAPPING_SLABS}"
    pool = _smallest_common_pool(cells, ("static",), "heavy")
    if pool is None:
        need, tested = "`static` cells with a heavy workload", _ran_all(cells, ("static",), "heavy")
        return _missing("C1", text, metric, threshold, need, tested=tested)
    chosen = _select(_ok(cells), "static", "heavy", pool)
    failing = (chosen["map_failures"] > 0) & (chosen["hiwater"] >= chosen["nslabs"] - MAX_MAPPING_SLABS)
    detail = (
        f"pool {pool} slabs: map failures {int(chosen['map_failures'].min())}-{int(chosen['map_failures'].max())}"
        f" per cell, hiwater {int(chosen['hiwater'].max())}/{int(chosen['nslabs'].max())},"
        f" fio errors {int(chosen['fio_errors'].sum())} (NVMe requeues failed maps, so fio may see none)"
    )
    if failing.all():
        verdict = "supported"
    elif (chosen["map_failures"] == 0).all():
        verdict = "contradicted"
    else:
        verdict = "inconclusive"
    return Verdict("C1", text, verdict, metric, threshold, _ids(chosen), detail)


def judge_c2(cells: pd.DataFrame, kernel: str = "throttle") -> Verdict:
    text = "With throttling and the same fio load, the high-water mark stays near the throttle threshold, no errors"
    metric = "hiwater - high_throttle; failed maps; fio errors; per pool size"
    threshold = (
        f"every cell of a pool: map failures == 0, fio errors == 0, hiwater <= high_throttle + "
        f"{NEAR_THRESHOLD_FRAC:.0%} of nslabs, and throttling engaged (high_throttle_count > 0); "
        "contradicted if any pool size fails this"
    )
    usable = _select(_ok(cells), kernel, "heavy")
    if usable.empty:
        need, tested = f"`{kernel}` cells with a heavy workload", _ran_all(cells, (kernel,), "heavy")
        return _missing("C2", text, metric, threshold, need, tested=tested)
    parts, outcomes, evidence = [], [], []
    for pool in sorted(set(usable["pool_slabs_requested"])):
        chosen = _select(usable, kernel, "heavy", pool)
        engaged = chosen["high_throttle_count"].fillna(0) > 0
        near = chosen["hiwater"] <= chosen["high_throttle"] + NEAR_THRESHOLD_FRAC * chosen["nslabs"]
        clean = (chosen["map_failures"] == 0) & (chosen["fio_errors"] == 0)
        outcome = "not reached" if not engaged.all() else ("holds" if (clean & near).all() else "fails")
        outcomes.append(outcome)
        evidence.append(chosen)
        parts.append(
            f"pool {pool} slabs, high_throttle {_span(chosen['high_throttle'])}: hiwater {_span(chosen['hiwater'])} "
            f"({_span(chosen['hiwater'] - chosen['high_throttle'])} above high_throttle), map failures "
            f"{_span(chosen['map_failures'])}, fio errors {int(chosen['fio_errors'].sum())}, throttled "
            f"{_span(chosen['high_throttle_count'].fillna(0))} times per cell: {outcome}"
        )
    if "fails" in outcomes:
        verdict = "contradicted"
    elif set(outcomes) == {"holds"}:
        verdict = "supported"
    else:
        verdict = "inconclusive"
        parts.append("the load did not reach the threshold in every cell")
    return Verdict("C2", text, verdict, metric, threshold, _ids(*evidence), "; ".join(parts))


def judge_c3(cells: pd.DataFrame) -> Verdict:
    text = "SWIOTLB_DYNAMIC grows the pool without any limit"
    metric = "io_tlb_nslabs after the run vs the requested pool"
    threshold = "every cell: nslabs after > requested (growth factor reported; no upper limit can be proven)"
    pool = _smallest_common_pool(cells, ("dynamic",), "heavy")
    if pool is None:
        need, tested = "`dynamic` cells with a heavy workload", _ran_all(cells, ("dynamic",), "heavy")
        return _missing("C3", text, metric, threshold, need, tested=tested)
    chosen = _select(_ok(cells), "dynamic", "heavy", pool)
    growth = chosen["nslabs_after"] / chosen["pool_slabs_requested"]
    detail = (
        f"requested {pool} slabs; after the run {int(chosen['nslabs_after'].min())}-"
        f"{int(chosen['nslabs_after'].max())} slabs (x{growth.max():.1f})"
    )
    verdict = "supported" if (growth > 1).all() else ("contradicted" if (growth <= 1).all() else "inconclusive")
    return Verdict("C3", text, verdict, metric, threshold, _ids(chosen), detail)


def _pair(cells: pd.DataFrame, a: str, b: str, kind: str) -> tuple[pd.DataFrame, pd.DataFrame, int | None]:
    pool = _smallest_common_pool(cells, (a, b), kind)
    if pool is None:
        return cells.iloc[0:0], cells.iloc[0:0], None
    return _select(_ok(cells), a, kind, pool), _select(_ok(cells), b, kind, pool), pool


def judge_c4(cells: pd.DataFrame) -> Verdict:
    text = "If one CPU can queue enough requests to fill the pool, throttling does nothing"
    metric = "hiwater and failed maps, static vs throttle, one fio job with a deep queue"
    threshold = (
        "premise: at least one static cell fills the pool (map failures > 0 or hiwater >= nslabs - "
        f"{MAX_MAPPING_SLABS}), else inconclusive; contradicted if throttle lowers hiwater or map failures "
        "significantly (Holm over the two); supported if it lowers neither and both are decided; "
        "inconclusive otherwise"
    )
    static, throttle, pool = _pair(cells, "static", "throttle", "single-queue")
    if pool is None:
        tested = _ran_all(cells, ("static", "throttle"), "single-queue")
        need = "`static` and `throttle` cells with one deep-queue job"
        return _missing("C4", text, metric, threshold, need, tested=tested)
    comparisons = compare_family(
        [
            Metric("hiwater", static["hiwater"].tolist(), throttle["hiwater"].tolist(), False),
            Metric("map_failures", static["map_failures"].tolist(), throttle["map_failures"].tolist(), False),
        ]
    )
    hiwater, failures = comparisons
    engaged = throttle["high_throttle_count"].fillna(0)
    detail = (
        f"pool {pool}: hiwater static {_span(static['hiwater'])}, throttle {_span(throttle['hiwater'])} "
        f"(high_throttle {_span(throttle['high_throttle'])}; {hiwater.conclusion}, p={hiwater.p_value:.3g}); "
        f"map failures static {_span(static['map_failures'])}, throttle {_span(throttle['map_failures'])} "
        f"({failures.conclusion}, p={failures.p_value:.3g}); throttled {_span(engaged)} times per cell"
    )
    fills = (static["map_failures"] > 0) | (static["hiwater"] >= static["nslabs"] - MAX_MAPPING_SLABS)
    conclusions = {c.conclusion for c in comparisons}
    if not fills.any():
        verdict = "inconclusive"
        detail += "; one job did not fill the pool without throttling, so the premise is not met"
    elif "improved" in conclusions:
        verdict = "contradicted"
    elif conclusions & UNDECIDED:
        verdict = "inconclusive"
    else:
        verdict = "supported"
    return Verdict("C4", text, verdict, metric, threshold, _ids(static, throttle), detail, comparisons)


def _span(values: pd.Series) -> str:
    """'min-max' (or the one value) of a column, as integers."""
    clean = values.dropna()
    if clean.empty:
        return "n/a"
    low, high = int(clean.min()), int(clean.max())
    return f"{low}" if low == high else f"{low}-{high}"


def observed(cells: pd.DataFrame) -> pd.Series:
    """Whether the in-guest sampler ran during each cell's fio (rows from before the `observed` column:
    whether it left samples; in a frame that unites runs from before and after it, row by row)."""
    if "observed" in cells:
        seen = cells["observed"].astype("boolean")
        if "sampler_samples" in cells:
            seen = seen.fillna(cells["sampler_samples"].fillna(0) > 0)
        return seen.fillna(True).astype(bool)
    return cells.get("sampler_samples", pd.Series(0, index=cells.index)).fillna(0) > 0


def crowded(cells: pd.DataFrame) -> pd.Series:
    """Whether each cell ran beside more guests than its host has cores for (lab.runner.oversubscription;
    rows from before the column: not known to, so no)."""
    if "host_oversubscribed" in cells:
        return cells["host_oversubscribed"].astype("boolean").fillna(False).astype(bool)
    return pd.Series(False, index=cells.index)


def like_with_like(base: pd.DataFrame, cand: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """The cells a performance comparison may use.  First the same contention: both groups' cells that had
    their host's cores to themselves, else both groups' crowded ones, each with at least 2 cells (mixed only
    when neither exists).  Then both groups unobserved (the sampler competes with fio for the vCPUs, and
    not equally on every kernel), else both observed, each with at least 2 cells; only when neither exists,
    all of them.  The label says which."""
    note = ""
    base_crowded, cand_crowded = crowded(base), crowded(cand)
    if base_crowded.any() or cand_crowded.any():
        note = ", some beside other guests on too few host cores"
        for kind, text in ((False, ""), (True, ", all beside other guests on too few host cores")):
            if (base_crowded == kind).sum() >= 2 and (cand_crowded == kind).sum() >= 2:
                base, cand, note = base[base_crowded == kind], cand[cand_crowded == kind], text
                break
    for kind, label in ((False, "unobserved cells"), (True, "observed cells (sampler running)")):
        b, c = base[observed(base) == kind], cand[observed(cand) == kind]
        if len(b) >= 2 and len(c) >= 2:
            return b, c, label + note
    return base, cand, "observed and unobserved cells mixed (the sampler's cost is not excluded)" + note


def _perf(base: pd.DataFrame, cand: pd.DataFrame) -> tuple[Comparison, ...]:
    """The performance family (IOPS and three latency percentiles), Holm-adjusted together, on like cells."""
    base, cand, _ = like_with_like(base, cand)
    return compare_family([Metric(m, base[m].tolist(), cand[m].tolist(), higher) for m, higher in PERF_METRICS])


def _regression_verdict(comparisons: tuple[Comparison, ...], *, if_regressed: str, otherwise: str) -> str:
    """Verdict of a claim about a performance regression: one significant regression decides it;
    without one, every metric must be decided (not too noisy, not invalid) for the other verdict."""
    conclusions = {c.conclusion for c in comparisons}
    if "regressed" in conclusions:
        return if_regressed
    return "inconclusive" if conclusions & UNDECIDED else otherwise


def _describe(
    comparisons: tuple[Comparison, ...], base: pd.DataFrame | None = None, cand: pd.DataFrame | None = None
) -> str:
    def one(c: Comparison) -> str:
        text = f"{c.metric} {c.change_pct:+.1f}% ({c.conclusion}"
        if c.reps_needed is not None:
            text += f"; ~{c.reps_needed} repetitions per group would detect it"
        return text + ")"

    text = "; ".join(one(c) for c in comparisons)
    if base is not None and cand is not None:
        b, c, label = like_with_like(base, cand)
        text += f" [{len(b)} vs {len(c)} {label}]"
    return text


def judge_c5(cells: pd.DataFrame, kernel: str = "throttle") -> Verdict:
    text = "A thread stuck on the throttle while it should poll completions can make things worse (poll queues)"
    metric = "polled I/O (hipri) IOPS and completion latency, throttle vs static; failed cells"
    threshold = (
        "supported if throttle's cells fail (hang, timeout) or it regresses IOPS or a latency percentile "
        "significantly (Holm within the family); inconclusive if its only failures are lost NVMe doorbells; "
        "contradicted if neither and every metric is decided; inconclusive otherwise"
    )
    pool = _smallest_common_pool(cells, ("static",), "polled")
    all_throttle = _select(cells, kernel, "polled", pool) if pool is not None else cells.iloc[0:0]
    if pool is None or all_throttle.empty:
        need, tested = f"`static` and `{kernel}` cells with polled I/O", _ran_all(cells, ("static", kernel), "polled")
        return _missing("C5", text, metric, threshold, need, tested=tested)
    static = _select(_ok(cells), "static", "polled", pool)
    throttle = _select(_ok(cells), kernel, "polled", pool)
    exempt_text, exempt_cells = _exempt_polled(cells, static, pool) if kernel == "throttle" else ("", static.iloc[0:0])
    failed = all_throttle[all_throttle["status"] == "failed"]
    # A lost doorbell hangs a cell because the emulated controller never read its commands, not because
    # a poller slept: it is no evidence for C5, and a cell that never ran is none against it either.
    lost = failed[failed["failure_reason"] == FAILURE_REASON]
    failed = failed[failed["failure_reason"] != FAILURE_REASON]
    if not failed.empty:
        reasons = ", ".join(sorted(set(failed["failure_reason"])))
        detail = f"{len(failed)} of {len(all_throttle)} {kernel} cells failed ({reasons}){exempt_text}"
        return Verdict("C5", text, "supported", metric, threshold, _ids(failed, static, exempt_cells), detail)
    if not lost.empty:
        detail = (
            f"{len(lost)} of {len(all_throttle)} {kernel} cells lost an NVMe doorbell (the emulated "
            f"controller stopped reading a queue), which says nothing of a sleeping poller; run them again"
        )
        return Verdict("C5", text, "inconclusive", metric, threshold, _ids(lost, static, exempt_cells), detail)
    comparisons = _perf(static, throttle)
    verdict = _regression_verdict(comparisons, if_regressed="supported", otherwise="contradicted")
    return Verdict(
        "C5",
        text,
        verdict,
        metric,
        threshold,
        _ids(static, throttle, exempt_cells),
        _describe(comparisons, static, throttle) + exempt_text,
        comparisons,
    )


def _exempt_polled(cells: pd.DataFrame, static: pd.DataFrame, pool: int) -> tuple[str, pd.DataFrame]:
    """What the `throttle-nopoll` variant (polled requests never wait) did with the same load, if it ran."""
    nopoll = _select(cells, "throttle-nopoll", "polled", pool)
    if nopoll.empty:
        return "", nopoll
    ok = _ok(nopoll)
    text = f"; with polled requests exempt from the throttle (throttle-nopoll): {len(ok)} of {len(nopoll)} cells ok"
    if len(ok) >= 2:
        text += ", vs static: " + _describe(_perf(static, ok), static, ok)
    return text, nopoll


def judge_c6(cells: pd.DataFrame, kernel: str = "throttle") -> Verdict:
    text = "Throttling costs some throughput/latency above the threshold"
    metric = "IOPS, p50/p99/p99.9 completion latency, throttle vs static (heavy load, smallest pool)"
    threshold = (
        "supported if any of them regresses significantly (Holm within the family); contradicted if none does "
        "and every metric is decided; inconclusive otherwise"
    )
    static, throttle, pool = _pair(cells, "static", kernel, "heavy")
    if pool is None:
        need = f"`static` and `{kernel}` cells with a heavy workload"
        return _missing("C6", text, metric, threshold, need, tested=_ran_all(cells, ("static", kernel), "heavy"))
    comparisons = _perf(static, throttle)
    wait_ms = throttle["throttle_wait_ns"].fillna(0).median() / 1e6 if "throttle_wait_ns" in throttle else 0.0
    detail = f"pool {pool}: {_describe(comparisons, static, throttle)}; median throttle wait {wait_ms:.0f} ms per cell"
    verdict = _regression_verdict(comparisons, if_regressed="supported", otherwise="contradicted")
    return Verdict("C6", text, verdict, metric, threshold, _ids(static, throttle), detail, comparisons)


C7_TEXT = "Delaying requests is cheaper than growing the pool in a CoCo VM"
C7_METRIC = "IOPS and completion latency, throttle vs dynamic at the same requested pool"
C7_THRESHOLD = (
    "contradicted if throttle is significantly worse than dynamic on any of them; "
    "supported if it is worse on none and every metric is decided"
)
NEEDS_COCO = "needs an SEV-SNP or TDX host"


def _encryption(*frames: pd.DataFrame) -> set[str]:
    cells = pd.concat(frames)
    return set(cells.get("memory_encryption", pd.Series("unknown", index=cells.index)).fillna("unknown"))


def _c7_measured(cells: pd.DataFrame) -> tuple[Verdict, bool] | None:
    """The C7 comparison as measured, and whether the guests had memory encryption; None without cells."""
    dynamic, throttle, pool = _pair(cells, "dynamic", "throttle", "heavy")
    if pool is None:
        return None
    comparisons = _perf(dynamic, throttle)
    grown = int(dynamic["nslabs_after"].max()) if not dynamic.empty else 0
    detail = f"pool {pool} (dynamic grew to {grown} slabs): {_describe(comparisons, dynamic, throttle)}"
    encryption = _encryption(dynamic, throttle)
    coco = bool(encryption) and not encryption <= {"none", "unknown"}
    if coco:
        detail += f"; memory encryption: {', '.join(sorted(encryption))}"
    verdict = _regression_verdict(comparisons, if_regressed="contradicted", otherwise="supported")
    return Verdict("C7", C7_TEXT, verdict, C7_METRIC, C7_THRESHOLD, _ids(dynamic, throttle), detail, comparisons), coco


def judge_c7(cells: pd.DataFrame) -> Verdict:
    """Decided only by guests with memory encryption: without it growing the pool converts no page, which is
    the cost the claim is about.  Elsewhere the row says what it needs; C7-plain and C7-emulated (below)
    report what a plain host measured."""
    measured = _c7_measured(cells)
    if measured is None:
        need, tested = (
            "`dynamic` and `throttle` cells with a heavy workload",
            _ran_all(cells, ("dynamic", "throttle"), "heavy"),
        )
        return _missing("C7", C7_TEXT, C7_METRIC, C7_THRESHOLD, need, tested=tested)
    verdict, coco = measured
    if coco:
        return verdict
    return replace(
        verdict,
        verdict="inconclusive",
        comparisons=(),
        detail=f"{NEEDS_COCO}: these guests ran without memory encryption, so growing the pool "
        "converted no page; what they measured is row C7-plain, and conversion.toml's row "
        "C7-emulated charges an emulated conversion cost",
    )


def judge_c7_plain(cells: pd.DataFrame) -> list[Verdict]:
    """C7's comparison on guests without memory encryption, as its own row (only where such cells exist)."""
    measured = _c7_measured(cells)
    if measured is None or measured[1]:
        return []
    verdict = measured[0]
    return [
        replace(
            verdict,
            claim="C7-plain",
            text="Without memory encryption (growing converts no page): delaying requests is cheaper "
            "than growing the pool",
        )
    ]


def judge_c7_emulated(cells: pd.DataFrame) -> list[Verdict]:
    """Growth charged an emulated conversion cost per page (patches/swiotlb-emulate-conversion), swept: the
    cost from which on throttling beats growth.  Only where the run swept it; never the CoCo verdict."""
    ok = _ok_any(cells)
    ok = ok[~special_cells(ok, conversion=False)] if not ok.empty else ok
    if ok.empty or "conversion_ns" not in ok or not (ok["conversion_ns"].fillna(0) > 0).any():
        return []
    text = (
        "Emulated: delaying requests is cheaper than growing the pool once converting a page costs at least "
        "the break-even (a busy-wait per page stands in for SEV-SNP/TDX page-state changes)"
    )
    metric = (
        "IOPS and completion latency, throttle vs dynamic charged each swept conversion cost per page, "
        "heavy load, smallest pool both ran; break-even = the smallest swept cost from which on dynamic "
        "is significantly worse at every larger cost"
    )
    threshold = (
        "supported if the sweep has a break-even; contradicted if dynamic is not significantly worse "
        "even at the largest cost and every metric there is decided; inconclusive otherwise. "
        f"Emulated: the CoCo verdict (C7) {NEEDS_COCO}"
    )
    applied = ok["conversion_ns_applied"].fillna(-1) if "conversion_ns_applied" in ok else pd.Series(-1, ok.index)
    charged = ok[(ok["conversion_ns"].fillna(0) == 0) | (applied == ok["conversion_ns"])]
    plain_throttle = charged[charged["conversion_ns"].fillna(0) == 0]
    pools = _common_pools(plain_throttle, ("throttle",), "heavy") & set(
        _select(charged, "dynamic", "heavy")["pool_slabs_requested"]
    )
    if not pools:
        return [
            _missing(
                "C7-emulated",
                text,
                metric,
                threshold,
                "`throttle` heavy cells and `dynamic` heavy cells with a conversion cost on one pool",
                tested=_ran_all(cells, ("throttle",), "heavy"),  # dynamic's conversion cells ran: see above
            )
        ]
    pool = min(pools)
    throttle = _select(plain_throttle, "throttle", "heavy", pool)
    dynamic = _select(charged, "dynamic", "heavy", pool)
    worse: dict[int, bool] = {}
    notes, evidence = [], [throttle]
    decided_at_max = True
    for cost, group in sorted(dynamic.groupby(dynamic["conversion_ns"].fillna(0).astype(int))):
        comparisons = _perf(throttle, group)
        conclusions = {c.conclusion for c in comparisons}
        # dynamic is the candidate: "regressed" = growth slower than throttling
        worse[cost] = "regressed" in conclusions
        decided_at_max = not (conclusions & UNDECIDED)
        iops = next(c for c in comparisons if c.metric == "fio_iops")
        notes.append(
            f"{cost} ns: IOPS {iops.change_pct:+.1f}% ({iops.conclusion}), "
            f"{'growth worse' if worse[cost] else 'growth not worse'}"
        )
        evidence.append(group)
    costs = sorted(worse)
    break_even = _from_on(costs, worse)
    if break_even is not None:
        below = [c for c in costs if c < break_even]
        where = f"above {below[-1]} ns and at most {break_even} ns" if below else f"at most {break_even} ns"
        verdict, lead = "supported", f"break-even {where} per page (emulated; the sweep's steps bound it)"
    elif decided_at_max:
        verdict, lead = "contradicted", f"growth is not worse even at {costs[-1]} ns per page (emulated)"
    else:
        verdict, lead = "inconclusive", "no break-even in the sweep, and the largest cost is not decided"
    detail = f"{lead}; pool {pool}, dynamic vs throttle ({len(throttle)} cells), change of dynamic: " + "; ".join(notes)
    return [Verdict("C7-emulated", text, verdict, metric, threshold, _ids(*evidence), detail)]


DEFAULT_TIMEOUT_MS = 100  # series v2's default bound
SERIES_V2 = "throttle-v2"


# What puts two cells in one boot: the run, the host, and the boot group's own key (lab.matrix.Cell.boot_key).
BOOT_COLUMNS = (
    "run_id",
    "host_id",
    "kernel",
    "pool_slabs_requested",
    "device",
    "vcpus",
    "memory_mib",
    "repetition",
    "swiotlb_areas_requested",
    "cmdline_extra",
)


def boot_pairs(base: pd.DataFrame, cand: pd.DataFrame, keys: Sequence[str] = BOOT_COLUMNS) -> tuple[pd.DataFrame, str]:
    """One row per boot that ran both arms (``base`` and ``cand`` cells, one of each), metrics suffixed
    ``_base`` and ``_cand``: the unobserved boots if there are 2, else the observed ones (like_with_like).
    Also the label of the boots used.  Other ``keys`` pair other units (C14: the boots of one repetition)."""
    keys = [c for c in keys if c in base and c in cand]
    merged = base.assign(_seen=observed(base)).merge(
        cand.assign(_seen=observed(cand)), on=keys, suffixes=("_base", "_cand")
    )
    merged = merged[merged["_seen_base"] == merged["_seen_cand"]]
    for kind, label in ((False, "unobserved boots"), (True, "observed boots (sampler running)")):
        chosen = merged[merged["_seen_base"] == kind]
        if len(chosen) >= 2:
            return chosen, label
    return merged.iloc[0:0], "no two boots ran both"


def _paired_perf(pairs: pd.DataFrame, metrics: Sequence[tuple[str, bool]] = PERF_METRICS) -> tuple[Comparison, ...]:
    """A family of ``metrics`` (the performance family by default) compared within the pairs of ``pairs``
    (boot_pairs' rows; stats.PAIRED_TEXT)."""
    return compare_paired_family(
        [
            PairedMetric(m, list(zip(pairs[f"{m}_base"], pairs[f"{m}_cand"], strict=True)), higher)
            for m, higher in metrics
        ]
    )


def judge_c8(cells: pd.DataFrame) -> Verdict:
    text = (
        "The wait should be bounded (wait with a timeout, then fail or grow): series v2's default bound "
        "costs nothing against an unbounded wait"
    )
    metric = (
        "IOPS, p50/p99/p99.9 completion latency, throttle-v2 with its default bound vs no bound "
        "(throttle_timeout_ms = U32_MAX), heavy load, smallest common pool; the sweep's medians"
    )
    threshold = (
        "compared within the boots that ran both bounds (per-boot ratios, paired t-test on their logarithms; "
        "unpaired only where fewer than 2 boots ran both); contradicted if the bounded wait regresses any of "
        "them significantly (Holm within the family); supported if none regresses and every metric is decided"
    )
    need = f'`{SERIES_V2}` heavy cells with the default bound and with throttle_timeout = "none"'
    ran = _ran(cells, SERIES_V2, "heavy")
    if ran.empty or "throttle_timeout_ms" not in ran:
        return _missing("C8", text, metric, threshold, need, tested=False)
    v2 = _select(_ok(cells), SERIES_V2, "heavy")
    v2 = v2[v2["throttle_timeout_ms"].notna()]
    bounded = v2[v2["throttle_timeout_ms"] == DEFAULT_TIMEOUT_MS]
    unbounded = v2[v2["throttle_timeout_ms"] >= THROTTLE_FOREVER_MS]
    pools = set(bounded["pool_slabs_requested"]) & set(unbounded["pool_slabs_requested"])
    if not pools:
        tested = (ran["throttle_timeout_ms"] == DEFAULT_TIMEOUT_MS).any() and (
            ran["throttle_timeout_ms"] >= THROTTLE_FOREVER_MS
        ).any()
        return _missing("C8", text, metric, threshold, need, tested=bool(tested))
    pool = min(pools)
    bounded = bounded[bounded["pool_slabs_requested"] == pool]
    unbounded = unbounded[unbounded["pool_slabs_requested"] == pool]
    pairs, boots = boot_pairs(unbounded, bounded)
    if len(pairs) >= 2:
        comparisons = _paired_perf(pairs)
        ratios = ", ".join(f"{r:.2f}" for r in pairs["fio_iops_cand"] / pairs["fio_iops_base"])
        described = _describe(comparisons).replace("repetitions per group", "boots with both bounds")
        how = f"{described} [within {len(pairs)} {boots}; IOPS ratio per boot {ratios}]"
    else:
        comparisons = _perf(unbounded, bounded)
        how = f"{_describe(comparisons, unbounded, bounded)} (unpaired: {boots})"
    sweep = []
    for kernel in (SERIES_V2, f"{SERIES_V2}-dynamic"):
        part = _select(_ok(cells), kernel, "heavy", pool)
        part = part[part["throttle_timeout_ms"].notna()] if "throttle_timeout_ms" in part else part.iloc[0:0]
        for ms, group in sorted(part.groupby("throttle_timeout_ms"), key=lambda item: item[0]):
            grown = (group["nslabs_after"].fillna(group["nslabs"]) - group["nslabs"]).max()
            sweep.append(
                f"{kernel} {timeout_label(ms)}: IOPS {group['fio_iops'].median():.0f}, p99 "
                f"{group['fio_clat_p99_us'].median() / 1e3:.0f} ms, failed maps "
                f"{_span(group['map_failures'])}, timeouts {_span(group['throttle_timeouts'])}"
                + (f", grew {int(grown)} slabs" if kernel.endswith("dynamic") else "")
            )
    detail = f"pool {pool}: {DEFAULT_TIMEOUT_MS} ms vs none: {how}"
    if sweep:
        detail += "; sweep (medians): " + "; ".join(sweep)
    verdict = _regression_verdict(comparisons, if_regressed="contradicted", otherwise="supported")
    return Verdict("C8", text, verdict, metric, threshold, _ids(bounded, unbounded), detail, comparisons)


def _queue_limits(cells: pd.DataFrame) -> pd.Series:
    """Each cell's block queue setting ("default" for rows from before the queue_limits column)."""
    return cells.get("queue_limits", pd.Series("default", index=cells.index)).fillna("default")


def judge_c11(cells: pd.DataFrame, kernel: str = SERIES_V2) -> Verdict:
    text = (
        "The alternative (Bart Van Assche): a driver can limit what it has in flight, so a static pool with "
        "the block queue sized to fit it does what throttling does"
    )
    metric = (
        f"failed maps, then IOPS and p50/p99/p99.9 latency: `static` with nr_requests x max_sectors_kb fitted "
        f"to a share of the pool (each share the run has) vs `{kernel}` with default queue limits, heavy "
        "load, smallest pool both ran"
    )
    threshold = (
        "judged per share: a share fails if its fitted static pool still fails maps (median per cell > 0) "
        "or regresses a performance metric significantly (Holm within the share); it holds if neither, "
        "and every metric is decided. Supported if any share holds (named in the detail), contradicted "
        "if every share fails, inconclusive otherwise"
    )
    ok = _ok(cells)
    limits = _queue_limits(ok) if not ok.empty else pd.Series(dtype=object)
    fitted_all = ok[limits != "default"] if not ok.empty else ok
    plain = ok[limits == "default"] if not ok.empty else ok
    pools = set(_select(fitted_all, "static", "heavy")["pool_slabs_requested"]) & set(
        _select(plain, kernel, "heavy")["pool_slabs_requested"]
    )
    if not pools:
        need = (
            f'`static` heavy cells with queue_limits = "fit" (or "fit:N%") and `{kernel}` heavy cells on the same pool'
        )
        ran_static, ran_kernel = _ran(cells, "static", "heavy"), _ran(cells, kernel, "heavy")
        tested = (_queue_limits(ran_static) != "default").any() and (_queue_limits(ran_kernel) == "default").any()
        return _missing("C11", text, metric, threshold, need, tested=bool(tested))
    pool = min(pools)
    fitted_pool, throttled = _select(fitted_all, "static", "heavy", pool), _select(plain, kernel, "heavy", pool)
    outcomes: list[str] = []
    comparisons: list[Comparison] = []
    parts = [f"pool {pool}: `{kernel}` failed maps {_span(throttled['map_failures'])}"]
    share_of = _queue_limits(fitted_pool)
    for value in sorted(set(share_of), key=lambda v: queue_fit_share(v) or 0.0):
        fitted = fitted_pool[share_of == value]
        label = f"{round((queue_fit_share(value) or 0.0) * 100)}%"
        applied = "limits not recorded"
        if "queue_nr_requests" in fitted:
            applied = (
                f"nr_requests {_span(fitted['queue_nr_requests'])}, "
                f"max_sectors_kb {_span(fitted['queue_max_sectors_kb'])}"
            )
        found = _perf(throttled, fitted)
        if fitted["map_failures"].median() > 0:
            outcome = "fails (maps fail)"
        else:
            outcome = {"contradicted": "fails (regressed)", "supported": "holds", "inconclusive": "undecided"}[
                _regression_verdict(found, if_regressed="contradicted", otherwise="supported")
            ]
        outcomes.append(outcome)
        comparisons += [replace(c, metric=f"fit {label} {c.metric}") for c in found]
        parts.append(
            f"fitted to {label} ({applied}) {outcome}: failed maps {_span(fitted['map_failures'])}; "
            f"{_describe(found, throttled, fitted)}"
        )
    if "holds" in outcomes:
        verdict = "supported"
    elif all(o.startswith("fails") for o in outcomes):
        verdict = "contradicted"
    else:
        verdict = "inconclusive"
    return Verdict(
        "C11", text, verdict, metric, threshold, _ids(fitted_pool, throttled), "; ".join(parts), tuple(comparisons)
    )


def _largest_common_pool(cells: pd.DataFrame, kernels: tuple[str, ...], kind: str) -> int | None:
    pools = _common_pools(cells, kernels, kind)
    return max(pools) if pools else None


def _tested_c12(cells: pd.DataFrame, kernel: str) -> bool:
    """Whether the matrix had `static` and ``kernel`` cells of 4 KiB reads at QD1, or at QD32."""
    for kind in ("qd1", "single-queue"):
        both = [_ran(cells, k, kind) for k in ("static", kernel)]
        if all("bs" in f and f["bs"].astype(str).str.lower().isin(("4k", "4096")).any() for f in both):
            return True
    return False


def judge_c12(cells: pd.DataFrame, kernel: str = SERIES_V2) -> Verdict:
    text = (
        "Blocking submission is not free (Christoph Hellwig): with the throttle never engaged, a driver that "
        "opted in to BLK_MQ_F_BLOCKING costs IOPS, latency or CPU"
    )
    metric = (
        f"IOPS, p50/p99/p99.9 completion latency and guest CPU time per I/O, `{kernel}` vs `static`, one job "
        "of 4 KiB reads at QD1 and at QD32, on the largest pool both ran"
    )
    threshold = (
        "supported if any metric regresses significantly (Holm over the metrics of both loads together); "
        f"contradicted (blocking is free) if none does and every metric is equivalent within "
        f"±{EQUIVALENCE_MARGIN_PCT:g}% (two one-sided tests, stats.EQUIVALENCE_TEXT); inconclusive otherwise, "
        "and if the throttle engaged or the driver did not opt in (then the cells do not ask the question)"
    )
    metrics: list[Metric] = []
    evidence: list[pd.DataFrame] = []
    notes: list[str] = []
    ok = _ok(cells)
    small = ok[ok["bs"].astype(str).str.lower().isin(("4k", "4096"))] if "bs" in ok else ok.iloc[0:0]  # 4 KiB
    for kind, label in (("qd1", "QD1"), ("single-queue", "QD32")):
        pool = _largest_common_pool(small, ("static", kernel), kind)
        if pool is None:
            continue
        static, cand = _select(small, "static", kind, pool), _select(small, kernel, kind, pool)
        zero = pd.Series(0, index=cand.index)
        engaged = int(
            cand.get("high_throttle_count", zero).fillna(0).sum() + cand.get("low_throttle_count", zero).fillna(0).sum()
        )
        blocking = bool(cand.get("hctx_blocking", pd.Series(False, index=cand.index)).fillna(False).all())
        if engaged or not blocking:
            why = f"the throttle engaged {engaged} times" if engaged else "the driver did not opt in to blocking"
            return Verdict(
                "C12",
                text,
                "inconclusive",
                metric,
                threshold,
                _ids(static, cand),
                f"{label} on pool {pool}: {why}, so these cells do not ask the question",
            )
        base, other, like = like_with_like(static, cand)
        metrics += [
            Metric(f"{label} {m}", base[m].tolist(), other[m].tolist(), higher)
            for m, higher in (*PERF_METRICS, ("guest_cpu_us_per_io", False))
        ]
        evidence += [static, cand]
        notes.append(f"{label} on pool {pool} ({len(base)} vs {len(other)} {like})")
    if not metrics:
        need = f"`static` and `{kernel}` cells of 4 KiB reads at QD1 or QD32"
        return _missing("C12", text, metric, threshold, need, tested=_tested_c12(cells, kernel))
    comparisons = compare_family(metrics)
    tests = [equivalence(m.name, m.baseline, m.candidate) for m in metrics]
    if any(c.conclusion == "regressed" for c in comparisons):
        verdict = "supported"
    else:
        verdict = "contradicted" if all(t.equivalent for t in tests) else "inconclusive"
    equivalent = sum(t.equivalent for t in tests)
    detail = (
        "; ".join(notes) + ": " + _describe(comparisons) + f"; equivalence: {equivalent} of {len(tests)} metrics "
        f"within ±{EQUIVALENCE_MARGIN_PCT:g}% (" + "; ".join(str(t) for t in tests) + ")"
    )
    return Verdict("C12", text, verdict, metric, threshold, _ids(*evidence), detail, comparisons)


def neighbour_ratios(cells: pd.DataFrame, kernel: str) -> pd.DataFrame:
    """Per boot with a slow neighbour: the fast device's IOPS and p99 next to the neighbour's load, as a
    fraction of the same device alone in the same boot (pairs within a boot cancel boot-to-boot spread)."""
    ok = _ok_any(cells)
    if ok.empty or "neighbour" not in ok:
        return pd.DataFrame()
    mine = ok[(ok["kernel"] == kernel) & (ok["neighbour"].fillna("none") != "none")]
    busy = mine["neighbour_iops"].notna() if "neighbour_iops" in mine else pd.Series(False, index=mine.index)
    keys = [c for c in BOOT_COLUMNS if c in mine]
    pairs = mine[busy].merge(mine[~busy], on=keys, suffixes=("", "_alone"))
    if pairs.empty:
        return pairs
    pairs = pairs.assign(
        iops_ratio=pairs["fio_iops"] / pairs["fio_iops_alone"],
        p99_ratio=pairs["fio_clat_p99_us"] / pairs["fio_clat_p99_us_alone"],
    )
    return pairs


def _tested_c9(cells: pd.DataFrame, kernel: str) -> bool:
    """Whether the matrix had `static` and ``kernel`` cells next to a slow neighbour, whatever became of them."""
    if cells.empty or "neighbour" not in cells:
        return False
    ran = cells[(cells["status"] != SKIPPED) & (cells["neighbour"].fillna("none") != "none")]
    return all((ran["kernel"] == k).any() for k in ("static", kernel))


def judge_c9(cells: pd.DataFrame, kernel: str = "throttle") -> Verdict:
    text = (
        "A global throttle lets a slow device hold up a fast one (Petr Tesařík): the fast device suffers more "
        "from a slow neighbour with throttling than without"
    )
    metric = (
        f"the fast NVMe disk's IOPS and p99 next to a slow neighbour's reads, as a fraction of the same disk "
        f"alone in the same boot; `{kernel}` vs `static`, smallest pool both ran"
    )
    threshold = (
        "supported if either fraction is significantly worse under the throttle (Holm over the two); "
        "contradicted if neither is and both are decided"
    )
    static, cand = neighbour_ratios(cells, "static"), neighbour_ratios(cells, kernel)
    pools = (
        set(static["pool_slabs_requested"]) & set(cand["pool_slabs_requested"])
        if not static.empty and not cand.empty
        else set()
    )
    if not pools:
        need = (
            f'`static` and `{kernel}` boots with neighbour = "slow" running the fast device alone and '
            "next to the neighbour"
        )
        return _missing("C9", text, metric, threshold, need, tested=_tested_c9(cells, kernel))
    pool = min(pools)
    static, cand = (f[f["pool_slabs_requested"] == pool] for f in (static, cand))
    comparisons = compare_family(
        [
            Metric(
                "fast-device IOPS with the neighbour / alone",
                static["iops_ratio"].tolist(),
                cand["iops_ratio"].tolist(),
                True,
            ),
            Metric(
                "fast-device p99 with the neighbour / alone",
                static["p99_ratio"].tolist(),
                cand["p99_ratio"].tolist(),
                False,
            ),
        ]
    )
    detail = (
        f"pool {pool}, {len(static)} vs {len(cand)} boots: IOPS kept static "
        f"{static['iops_ratio'].median():.2f} vs {kernel} {cand['iops_ratio'].median():.2f} (median), p99 "
        f"x{static['p99_ratio'].median():.2f} vs x{cand['p99_ratio'].median():.2f}; neighbour IOPS static "
        f"{_span(static['neighbour_iops'])}, {kernel} {_span(cand['neighbour_iops'])}; " + _describe(comparisons)
    )
    verdict = _regression_verdict(comparisons, if_regressed="supported", otherwise="contradicted")
    ids = (*static["cell_id"], *static["cell_id_alone"], *cand["cell_id"], *cand["cell_id_alone"])
    return Verdict("C9", text, verdict, metric, threshold, tuple(ids), detail, comparisons)


POLICIES = ("static", "dynamic", "throttle", SERIES_V2)
P99_SLACK = 0.10  # C13: "p99 within 10% of an ample pool"
MIN_POOLS = 3  # C13: a search needs at least this many pool sizes per policy and workload


def _mib(slabs: int) -> str:
    return f"{slabs * 2 / 1024:g} MiB"


@dataclass(frozen=True)
class PoolSearch:
    """C13 for one policy and workload."""

    used: int | None  # slabs of memory the smallest sufficient pool used (a growing pool: what it grew to)
    note: str  # e.g. "16 MiB", "4 MiB (grew to 48 MiB)", "none up to 256 MiB"
    clean_from: str  # the smallest pool from which on no cell failed a map or had a fio error
    ample_rsd_pct: float  # relative SD of p99 over the largest pool's cells: can a 10% slack be resolved?
    clean_used: int | None = None  # slabs of memory at clean_from (a growing pool: what it grew to)


def _from_on(ordered: Sequence[int], holds: Mapping[int, bool]) -> int | None:
    """The first of ``ordered`` from which on every later one holds too (None if not even the last does)."""
    return next((x for i, x in enumerate(ordered) if all(holds[y] for y in ordered[i:])), None)


def smallest_sufficient(group: pd.DataFrame) -> PoolSearch:
    """C13 for one policy and workload: the smallest swept pool from which on every larger swept pool too
    had no failed map and no fio error in any cell and a median p99 within P99_SLACK of the largest pool's."""
    by_pool = {int(p): g for p, g in group.groupby("pool_slabs_requested")}
    pools = sorted(by_pool)
    ample_p99 = by_pool[pools[-1]]["fio_clat_p99_us"].astype(float)
    ample = float(ample_p99.median())
    rsd = float(ample_p99.std() / ample_p99.mean() * 100) if len(ample_p99) > 1 else math.inf
    clean = {
        p: bool((g["map_failures"].fillna(1) == 0).all() and (g["fio_errors"].fillna(1) == 0).all())
        for p, g in by_pool.items()
    }
    ok = {p: clean[p] and float(g["fio_clat_p99_us"].median()) <= ample * (1 + P99_SLACK) for p, g in by_pool.items()}

    def memory(pool: int) -> tuple[int, str]:
        """Slabs a pool used (a growing one: what it grew to), and how to say it."""
        used = int(max(by_pool[pool]["nslabs_after"].max(), pool)) if "nslabs_after" in group else pool
        return used, _mib(pool) + (f" (grew to {_mib(used)})" if used > pool else "")

    clean_from, smallest = _from_on(pools, clean), _from_on(pools, ok)
    grew, clean_note = memory(clean_from) if clean_from is not None else (None, "none")
    if smallest is None:
        return PoolSearch(None, f"none up to {_mib(pools[-1])}", clean_note, rsd, grew)
    return PoolSearch(*memory(smallest), clean_note, rsd, grew)


def _tested_c13(cells: pd.DataFrame) -> bool:
    """Whether the matrix swept `static` and a throttle kernel over MIN_POOLS or more pools of one workload,
    whatever became of the cells."""
    if cells.empty or "status" not in cells:
        return False
    ran = cells[cells["status"] != SKIPPED]
    ran = ran[~special_cells(ran)]
    for _, workload in ran.groupby("workload") if not ran.empty else ():
        swept = {k for k, g in workload.groupby("kernel") if g["pool_slabs_requested"].nunique() >= MIN_POOLS}
        if "static" in swept and any("throttle" in k for k in swept):
            return True
    return False


def judge_c13(cells: pd.DataFrame) -> Verdict:
    text = (
        "Pools are sized for the worst case and waste hundreds of MiB (the RFC's motivation): throttling "
        "serves the same load from a smaller pool"
    )
    metric = (
        f"per workload and policy ({', '.join(POLICIES)}), the smallest swept pool with no failed map, no "
        f"fio error and a median p99 within {int(P99_SLACK * 100)}% of the largest swept pool's (memory "
        f"used: a growing pool counts what it grew to); at least {MIN_POOLS} pool sizes"
    )
    threshold = (
        "the largest swept pool must be ample (static fails no map there) and its p99 must vary between "
        f"repetitions by at most the {int(P99_SLACK * 100)}% slack (relative SD), else the latency "
        "criterion cannot be decided; supported if, on some decided workload, a throttle kernel's "
        "smallest pool uses less memory than static's; contradicted if on every decided workload no "
        "throttle kernel's is smaller; inconclusive otherwise"
    )
    ok = _ok(cells)
    notes, evidence, answers = [], [], []
    if not ok.empty:
        for name, workload in ok.groupby("workload"):
            found: dict[str, PoolSearch] = {}
            for kernel in POLICIES:
                group = workload[workload["kernel"] == kernel]
                if group["pool_slabs_requested"].nunique() >= MIN_POOLS:
                    found[kernel] = smallest_sufficient(group)
                    evidence.append(group)
            throttled = [k for k in found if "throttle" in k]
            if "static" not in found or not throttled:
                continue
            static = workload[workload["kernel"] == "static"]
            largest = static[static["pool_slabs_requested"] == static["pool_slabs_requested"].max()]
            if not (largest["map_failures"].fillna(1) == 0).all():  # then no swept pool was ample
                notes.append(
                    f"{name}: static still failed maps on the largest pool swept, "
                    f"{_mib(int(largest['pool_slabs_requested'].iloc[0]))}: no ample pool"
                )
                continue
            clean = "; no failed map from " + ", ".join(f"{k} {f.clean_from}" for k, f in found.items())
            noisiest = max(f.ample_rsd_pct for f in found.values())
            if noisiest > P99_SLACK * 100:
                notes.append(
                    f"{name}: the latency criterion cannot be decided: p99 on the largest pool varies by "
                    f"up to {noisiest:.0f}% (relative SD) between repetitions, more than the "
                    f"{int(P99_SLACK * 100)}% slack{clean}"
                )
                answers.append("inconclusive")
                continue
            notes.append(f"{name}: " + ", ".join(f"{k} {f.note}" for k, f in found.items()) + clean)
            base = found["static"].used
            smaller = [k for k in throttled if (mine := found[k].used) is not None and (base is None or mine < base)]
            answers.append("supported" if smaller else "contradicted")
    if not answers:
        need = f"`static` and throttle cells on {MIN_POOLS} or more pool sizes of one workload, the largest ample"
        untested = _missing("C13", text, metric, threshold, need, tested=_tested_c13(cells))
        return replace(untested, detail=untested.detail + (f" ({'; '.join(notes)})" if notes else ""))
    decided = [a for a in answers if a != "inconclusive"]
    if "supported" in decided:
        verdict = "supported"
    elif decided and len(decided) == len(answers):
        verdict = "contradicted"
    else:
        verdict = "inconclusive"
    return Verdict("C13", text, verdict, metric, threshold, _ids(*evidence), "; ".join(notes))


def cell_io_errors(cells: pd.DataFrame) -> pd.Series:
    """Per cell: fio's errors plus the kernel's block-layer "I/O error" lines."""
    return cells["fio_errors"].fillna(0) + cells.get("dmesg_io_errors", pd.Series(0, index=cells.index)).fillna(0)


def _splats(cells: pd.DataFrame) -> str:
    """How many cells the kernel reported in, and the first report's line, e.g. a WARN in swiotlb_bounce."""
    texts = cells.get("kernel_splat_text", pd.Series("", index=cells.index)).fillna("").astype(str)
    reported = texts[texts != ""]
    if reported.empty:
        return ""
    first = next((line.strip() for line in reported.iloc[0].splitlines() if line.strip()), "")
    return f", kernel reports in {len(reported)} cells (first: {first[:160]})"


def _measured_or_splat(cells: pd.DataFrame) -> pd.DataFrame:
    """Successful cells, and cells failed only because the kernel reported (a WARN, lockdep...): their
    numbers are kept, and for a driver that fails requests the report is part of what happens."""
    if cells.empty:
        return cells
    splat = cells.get("kernel_splat", pd.Series("", index=cells.index)).fillna("").astype(str) != ""
    return cells[(cells["status"] == "ok") | ((cells["status"] == "failed") & splat & cells["fio_iops"].notna())]


def failing_driver_cells(cells: pd.DataFrame, kernel: str) -> dict[str, pd.DataFrame]:
    """Per failing-driver device: the kernel's heavy cells on the smallest pool it ran there."""
    ok = _measured_or_splat(cells)
    if ok.empty or "device" not in ok:
        return {}
    chosen = ok[ok["device"].isin(FAILING_DRIVERS) & (ok["kernel"] == kernel) & (_kind(ok) == "heavy")]
    by_device = {}
    for device, group in chosen.groupby("device"):
        by_device[str(device)] = group[group["pool_slabs_requested"] == group["pool_slabs_requested"].min()]
    return by_device


def _errors_verdict(failed: pd.Series, errors: pd.Series) -> str:
    """One device's C10 answer: errors in more than half the cells, none at all, or neither."""
    if not (failed > 0).any():
        return "inconclusive"  # the pool was never exhausted: the cells do not ask the question
    if (errors > 0).sum() * 2 > len(errors):
        return "supported"
    return "contradicted" if (errors == 0).all() else "inconclusive"


def _combine(verdicts: list[str]) -> str:
    """Devices together: supported if one device shows it, contradicted only if every device contradicts."""
    if "supported" in verdicts:
        return "supported"
    return "contradicted" if verdicts and set(verdicts) == {"contradicted"} else "inconclusive"


def _tested_c10(cells: pd.DataFrame, kernel: str) -> bool:
    """Whether the matrix had ``kernel``'s heavy cells on a failing driver's disk, whatever became of them."""
    ran = _ran(cells, kernel, "heavy", plain=False)
    return "device" in ran and bool(ran["device"].isin(FAILING_DRIVERS).any())


def judge_c10(cells: pd.DataFrame) -> Verdict:
    text = (
        "The RFC's motivation: an exhausted pool means I/O errors (on a driver that fails a request whose map "
        "fails; NVMe and virtio-blk requeue it)"
    )
    metric = (
        "failed DMA maps, fio errors and kernel 'I/O error' lines per cell, `static`, heavy load, per disk "
        "whose driver fails a request on a failed map (AHCI: libata; LSI: sym53c8xx), smallest pool"
    )
    threshold = (
        "per device: supported if maps failed and more than half of the cells had I/O errors; "
        "contradicted if maps failed and no cell had one; inconclusive if no map failed (the pool was "
        "not exhausted) or errors came in half the cells or fewer. Supported if any device supports it, "
        "contradicted if every device contradicts it. Cells failed only by a kernel report (a WARN) "
        "count, with their numbers: for such a driver the report is part of the outcome"
    )
    by_device = failing_driver_cells(cells, "static")
    if not by_device:
        need = "`static` heavy cells on an AHCI or LSI disk"
        return _missing("C10", text, metric, threshold, need, tested=_tested_c10(cells, "static"))
    answers, notes = [], []
    for device, chosen in sorted(by_device.items()):
        errors = cell_io_errors(chosen)
        answers.append(_errors_verdict(chosen["map_failures"].fillna(0), errors))
        rounds = chosen.get("dmesg_ata_exceptions", pd.Series(dtype=float))
        notes.append(
            f"{device} pool {int(chosen['pool_slabs_requested'].iloc[0])}: failed maps "
            f"{_span(chosen['map_failures'])} per cell, fio errors {_span(chosen['fio_errors'])}, kernel "
            f"I/O errors {_span(chosen['dmesg_io_errors'])}, libata error-handler rounds {_span(rounds)}, "
            f"{_span(chosen['fio_iops'])} IOPS{_splats(chosen)}; {int((errors > 0).sum())} of {len(chosen)} "
            f"cells had I/O errors ({answers[-1]})"
        )
    evidence = _ids(*by_device.values())
    return Verdict("C10", text, _combine(answers), metric, threshold, evidence, "; ".join(notes))


def judge_c10_throttle(cells: pd.DataFrame) -> list[Verdict]:
    """Per throttle kernel with failing-driver cells: does the series prevent those errors?"""
    text = "Throttling prevents the I/O errors of an exhausted pool on a driver that fails instead of requeueing"
    threshold = (
        "per device: supported if `static` had I/O errors and the throttle kernel had none on the same "
        "pool; contradicted if the throttle kernel had I/O errors in more than half of its cells; "
        "inconclusive otherwise. Contradicted if any device contradicts it (a counterexample), else "
        "supported if any device supports it"
    )
    static = failing_driver_cells(cells, "static")
    ok = _measured_or_splat(cells)
    if ok.empty or "device" not in ok:
        return []
    kernels = sorted(k for k in set(ok[ok["device"].isin(FAILING_DRIVERS)]["kernel"]) if "throttle" in k)
    verdicts = []
    for kernel in kernels:
        claim = "C10-" + kernel
        metric = f"fio errors and kernel 'I/O error' lines per cell, `{kernel}` vs `static`, heavy load, per device"
        cand = failing_driver_cells(cells, kernel)
        shared = sorted(
            d
            for d in cand
            if d in static and set(cand[d]["pool_slabs_requested"]) == set(static[d]["pool_slabs_requested"])
        )
        if not shared:
            verdicts.append(
                _missing(
                    claim,
                    text,
                    metric,
                    threshold,
                    f"`static` and `{kernel}` cells on one failing driver's disk and pool",
                    tested=_tested_c10(cells, "static"),
                )
            )
            continue
        answers, notes, evidence = [], [], []
        for device in shared:
            base, mine = static[device], cand[device]
            base_errors, errors = cell_io_errors(base), cell_io_errors(mine)
            engaged = int(mine.get("high_throttle_count", pd.Series(0, index=mine.index)).fillna(0).sum())
            if (errors > 0).sum() * 2 > len(mine):
                answers.append("contradicted")
            elif (base_errors > 0).any() and (errors == 0).all():
                answers.append("supported")
            else:
                answers.append("inconclusive")
            notes.append(
                f"{device}: cells with I/O errors static {int((base_errors > 0).sum())}/{len(base)}, "
                f"{kernel} {int((errors > 0).sum())}/{len(mine)}; failed maps {_span(base['map_failures'])}"
                f" vs {_span(mine['map_failures'])}; the throttle engaged {engaged} times{_splats(mine)} "
                f"({answers[-1]})"
            )
            evidence += [base, mine]
        detail = "; ".join(notes) + " (neither driver maps with DMA_ATTR_MAY_BLOCK)"
        # one driver whose errors the throttle did not prevent is a counterexample to the claim
        verdict = "contradicted" if "contradicted" in answers else _combine(answers)
        verdicts.append(Verdict(claim, text, verdict, metric, threshold, _ids(*evidence), detail))
    return verdicts


IOPS_ONLY = (("fio_iops", True),)  # C14's primary metric, the only one it judges
C14_KERNEL = "throttle"  # the RFC's throttle (v1): thresholds it can be run without, in the same boot
C14_POOL_SLABS = 32768  # 64 MiB: the size a guest kernel picks by itself outside SEV-SNP and TDX


def _c14_cells(cells: pd.DataFrame) -> pd.DataFrame:
    """C14's cells: ``C14_KERNEL``, a 64 MiB pool, no further kernel parameters, with the area count the
    guest got (``swiotlb_areas``) and whether its throttle could act (``throttled``: high_throttle below the
    pool; "off" is the HIGH/LOW = 100/100 setting, whose threshold usage never exceeds)."""
    if cells.empty or "swiotlb_areas" not in cells or "high_throttle" not in cells:
        return cells.iloc[0:0]
    ok = _ok_any(cells)
    ok = ok[(ok["kernel"] == C14_KERNEL) & (ok["nslabs"] == C14_POOL_SLABS) & ok["swiotlb_areas"].notna()]
    if "cmdline_extra" in ok:
        ok = ok[ok["cmdline_extra"].fillna("") == ""]
    # the other special kinds stay out (a failing driver, a neighbour, a conversion cost); these are C14's own
    ok = ok[~special_cells(ok.drop(columns=["swiotlb_areas_requested", "pool_slabs_requested"], errors="ignore"))]
    return ok.assign(throttled=ok["high_throttle"] < ok["nslabs"])


def _c14_ran(cells: pd.DataFrame) -> bool:
    """Whether the matrix had C14's kind of cells at all: throttle-kernel heavy cells with an area count."""
    ran = _ran(cells, C14_KERNEL, "heavy", plain=False)
    return "swiotlb_areas_requested" in ran and bool(ran["swiotlb_areas_requested"].notna().any())


# What pairs cells of one repetition across its boots (two area counts boot twice): the boot's key without
# the area count.
REPETITION_COLUMNS = tuple(c for c in BOOT_COLUMNS if c != "swiotlb_areas_requested")


def judge_c14(cells: pd.DataFrame) -> Verdict:
    text = (
        "Throttling costs no more than the allocator's own locking: at the 64 MiB pool and the heavy load, "
        f"`{C14_KERNEL}` throttling with one swiotlb area per vCPU keeps at least the IOPS of the same kernel "
        "unthrottled on one area"
    )
    metric = (
        "IOPS (primary, the only metric judged): throttled with one area per vCPU vs unthrottled (HIGH/LOW = "
        "100/100) with one area; the throttle's own cost within each boot and the locking cost (one area vs "
        "one per vCPU, unthrottled) in the detail"
    )
    threshold = (
        "paired by repetition (the two boots of one repetition, run one after the other): per-repetition "
        "ratio throttled-per-vCPU / unthrottled-one-area, one-sample t-test of their logarithms against 0 "
        "(stats.PAIRED_TEXT, a family of one). Supported if IOPS is improved, negligible or not significant "
        "with its 95% interval within the negligible band; contradicted if it regressed; inconclusive if too "
        "noisy or fewer than 2 repetitions have both"
    )
    need = (
        f'`{C14_KERNEL}` heavy cells on a 64 MiB pool with areas = ["1", "default"] and throttle = '
        '["default", "100/100"]'
    )
    mine = _c14_cells(cells)
    if mine.empty:
        return _missing("C14", text, metric, threshold, need, tested=_c14_ran(cells))
    heavy = mine[_kind(mine) == "heavy"]
    per_vcpu, one = heavy[heavy["swiotlb_areas"] > 1], heavy[heavy["swiotlb_areas"] == 1]
    on_per, off_per = per_vcpu[per_vcpu["throttled"]], per_vcpu[~per_vcpu["throttled"]]
    on_one, off_one = one[one["throttled"]], one[~one["throttled"]]
    if on_per.empty or off_one.empty:
        return _missing("C14", text, metric, threshold, need, tested=_c14_ran(cells))
    pairs, units = boot_pairs(off_one, on_per, keys=REPETITION_COLUMNS)
    if len(pairs) < 2:
        return _missing("C14", text, metric, threshold, need, tested=True)
    comparisons = _paired_perf(pairs, IOPS_ONLY)
    conclusion = comparisons[0].conclusion
    if conclusion == "regressed":
        verdict = "contradicted"
    elif conclusion in ("improved", "negligible", "not significant"):
        verdict = "supported"  # "not significant" is only given when the interval lies within the band
    else:
        verdict = "inconclusive"
    units = units.replace("boots", "repetitions")
    notes = [f"throttled per vCPU vs unthrottled one area: {_describe(comparisons)} [{len(pairs)} {units}]"]
    for label, on, off, keys in (
        ("the throttle's cost within a boot, one area per vCPU", on_per, off_per, BOOT_COLUMNS),
        ("the throttle's cost within a boot, one area", on_one, off_one, BOOT_COLUMNS),
        ("one area vs one per vCPU, unthrottled (the locking's cost)", off_one, off_per, REPETITION_COLUMNS),
    ):
        both, _ = boot_pairs(off, on, keys=keys)
        if len(both) >= 2:
            [c] = _paired_perf(both, IOPS_ONLY)
            notes.append(f"{label}: IOPS {c.change_pct:+.1f}% ({c.conclusion}, {len(both)} pairs)")
    throttled = pd.concat([on_per, on_one])
    engaged = (throttled["high_throttle_count"].fillna(0) + throttled["low_throttle_count"].fillna(0)) > 0
    notes.append(
        f"the throttle engaged in {int(engaged.sum())} of {len(throttled)} throttled cells (hiwater "
        f"{_span(throttled['hiwater'])} of {C14_POOL_SLABS}, threshold {_span(throttled['high_throttle'])})"
    )
    areas = int(per_vcpu["swiotlb_areas"].max())
    detail = f"pool {C14_POOL_SLABS} slabs, {areas} areas vs 1: " + "; ".join(notes)
    return Verdict("C14", text, verdict, metric, threshold, _ids(on_per, off_one), detail, comparisons)


def judge_c14_areas(cells: pd.DataFrame) -> Verdict:
    text = (
        "The area count explains failed maps below a full pool: unthrottled, a mapping fails while the pool "
        "as a whole has room with one swiotlb area per vCPU, and not with one area"
    )
    metric = (
        f"unthrottled `{C14_KERNEL}` cells on the 64 MiB pool, every load: cells whose maps failed while the "
        f"pool's peak use (hiwater) stayed at least one largest mapping ({MAX_MAPPING_SLABS} slots) below its "
        "size (failed below a full pool), one area vs one per vCPU"
    )
    threshold = (
        "supported if a cell with one area per vCPU fails below a full pool and no cell with one area does; "
        "contradicted if as many cells with one area fail below a full pool as with one per vCPU (at least "
        "one); inconclusive otherwise, and when no cell fails below a full pool (nothing to explain)"
    )
    need = f'unthrottled `{C14_KERNEL}` cells on a 64 MiB pool with areas = ["1", "default"]'
    mine = _c14_cells(cells)
    if mine.empty:
        return _missing("C14-areas", text, metric, threshold, need, tested=_c14_ran(cells))
    off = mine[~mine["throttled"]]
    per_vcpu, one = off[off["swiotlb_areas"] > 1], off[off["swiotlb_areas"] == 1]
    if per_vcpu.empty or one.empty:
        return _missing("C14-areas", text, metric, threshold, need, tested=_c14_ran(cells))

    def below_full(part: pd.DataFrame) -> pd.Series:
        return (part["map_failures"] > 0) & (part["hiwater"] <= part["nslabs"] - MAX_MAPPING_SLABS)

    n_per, n_one = int(below_full(per_vcpu).sum()), int(below_full(one).sum())
    if n_per > 0 and n_one == 0:
        verdict = "supported"
    elif n_one > 0 and n_one >= n_per:
        verdict = "contradicted"
    else:
        verdict = "inconclusive"
    parts = []
    for label, part in (("one per vCPU", per_vcpu), ("one area", one)):
        for workload, group in part.groupby("workload"):
            parts.append(
                f"{label}, {workload}: failed below a full pool in {int(below_full(group).sum())} of {len(group)} "
                f"cells; failed maps {_span(group['map_failures'])}, hiwater {_span(group['hiwater'])}/"
                f"{_span(group['nslabs'])}"
            )
    if n_per == n_one == 0:
        parts.insert(0, "no cell failed below a full pool: nothing for the areas to explain")
    return Verdict("C14-areas", text, verdict, metric, threshold, _ids(per_vcpu, one), "; ".join(parts))


# The report's figures (lab.figures draws each under these names), for the claims table to point at.
FIGURE_PERFORMANCE = "performance.png"
FIGURE_FAILURES = "failures_and_throttle.png"
FIGURE_HIWATER = "hiwater_by_pool.png"
FIGURE_USAGE = "usage_over_time.png"
FIGURE_NEIGHBOUR = "neighbour.png"
FIGURE_DRIVERS = "failing_drivers.png"
FIGURE_POOLS = "pool_search.png"


@dataclass(frozen=True)
class Claim:
    """One row of the claims table: what the lab knows about a claim, in one place.  ``judge`` gives its
    verdict (``per_kernel``: a list, one row per kernel it finds, only where the run has their cells;
    their IDs start with ``id``); ``figure`` is the report's figure for its rows; ``v2``: series v2 answers
    it too, as ``<id>-v2``, by the same judge on the throttle-v2 cells."""

    id: str
    judge: Callable[..., Any]
    figure: str = ""
    v2: bool = False
    per_kernel: bool = False


CLAIMS: tuple[Claim, ...] = (
    Claim("C1", judge_c1, FIGURE_FAILURES),
    Claim("C2", judge_c2, FIGURE_HIWATER, v2=True),
    Claim("C3", judge_c3, FIGURE_USAGE),
    Claim("C4", judge_c4, FIGURE_HIWATER),
    Claim("C5", judge_c5, FIGURE_PERFORMANCE, v2=True),
    Claim("C6", judge_c6, FIGURE_PERFORMANCE, v2=True),
    Claim("C7", judge_c7, FIGURE_PERFORMANCE),
    Claim("C8", judge_c8),
    Claim("C9", judge_c9, FIGURE_NEIGHBOUR, v2=True),
    Claim("C10", judge_c10, FIGURE_DRIVERS),
    Claim("C11", judge_c11),
    Claim("C12", judge_c12),
    Claim("C13", judge_c13, FIGURE_POOLS),
    Claim("C14", judge_c14),
    Claim("C14-areas", judge_c14_areas),
    Claim("C7-plain", judge_c7_plain, FIGURE_PERFORMANCE, per_kernel=True),
    Claim("C7-emulated", judge_c7_emulated, per_kernel=True),
    Claim("C10-throttle", judge_c10_throttle, FIGURE_DRIVERS, per_kernel=True),
)


def claim_of(verdict_id: str, table: Sequence[Claim] | None = None) -> Claim | None:
    """The table's row a verdict comes from: its own ID, ``<id>-v2`` of a claim series v2 answers, or a
    per-kernel row's ID, which starts with its claim's."""
    for claim in CLAIMS if table is None else table:
        if verdict_id == claim.id or (claim.v2 and verdict_id == f"{claim.id}-v2"):
            return claim
        if claim.per_kernel and verdict_id.startswith(claim.id):
            return claim
    return None


def figure_for(verdict_id: str) -> str:
    claim = claim_of(verdict_id)
    return claim.figure if claim else ""


def _judged(cells: pd.DataFrame, *, v2_always: bool = False, per_kernel: bool = True) -> list[Verdict]:
    """The table's verdicts on ``cells``: every claim, then series v2's (where the cells have throttle-v2,
    or always), then the per-kernel rows."""
    verdicts = [c.judge(cells) for c in CLAIMS if not c.per_kernel]
    if v2_always or (not cells.empty and (cells["kernel"] == SERIES_V2).any()):
        for claim in (c for c in CLAIMS if c.v2):
            verdict = claim.judge(cells, kernel=SERIES_V2)
            verdicts.append(replace(verdict, claim=f"{verdict.claim}-v2", text=f"Series v2: {verdict.text}"))
    if per_kernel:
        verdicts += [v for c in CLAIMS if c.per_kernel for v in c.judge(cells)]
    return verdicts


SCOPE_KEYS = ("host_id", "platform")  # a comparison never crosses these: host-to-host variance stays out


def scopes(cells: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """The cells split by host and platform, each part labelled; one unlabelled part if there is only one."""
    keys = [k for k in SCOPE_KEYS if k in cells and cells[k].notna().any()]
    if cells.empty or not keys or len(cells.groupby(keys, dropna=False)) <= 1:
        return [("", cells)]
    parts = []
    for values, group in cells.groupby(keys, dropna=False):
        values = values if isinstance(values, tuple) else (values,)
        label = ", ".join(f"{k.removesuffix('_id')} {v}" for k, v in zip(keys, values, strict=True))
        parts.append((label, group))
    return parts


# The columns the judges read, for judging before any cell exists (``rules``).
JUDGED_COLUMNS = (
    "run_id",
    "cell_id",
    "status",
    "kernel",
    "pool_slabs_requested",
    "nslabs",
    "device",
    "numjobs",
    "iodepth",
    "hipri",
    "workload",
    "repetition",
    "fio_iops",
    "map_failures",
    "hiwater",
    "observed",
    "failure_reason",
    "throttle_timeout_ms",
    "queue_limits",
    "neighbour",
    "conversion_ns",
    "swiotlb_areas",
    "swiotlb_areas_requested",
    "high_throttle",
    "cmdline_extra",
)
RULE_FIXED = "fixed before the run"
RULE_CHANGED = "changed after the run started: exploratory (a new run, under the new rule, decides it)"
RULE_UNPLANNED = "not fixed before the run: exploratory"
RULE_STATES = (RULE_FIXED, RULE_CHANGED, RULE_UNPLANNED)


def rules() -> dict[str, str]:
    """Each claim's printed rule as a digest (``Verdict.rule_digest``), as the judges state it before a cell is
    measured: a run stores these in its manifest when it starts.  The claims that answer per kernel they find
    (``Claim.per_kernel``) are not among them: which rows they give depends on the cells."""
    empty = pd.DataFrame(columns=list(JUDGED_COLUMNS))
    return {v.claim: v.rule_digest for v in _judged(empty, v2_always=True, per_kernel=False)}


def check_rules(verdicts: Sequence[Verdict], planned: Mapping[str, str] | None) -> list[Verdict]:
    """Mark each verdict with whether the rule that judged it is the one its run fixed when it started
    (``planned``: the manifest's ``rules``; None for runs from before the lab stored them: unmarked)."""
    if planned is None:
        return list(verdicts)
    marked = []
    for v in verdicts:
        if v.claim not in planned:
            state = RULE_UNPLANNED
        else:
            state = RULE_FIXED if planned[v.claim] == v.rule_digest else RULE_CHANGED
        marked.append(replace(v, rule=state))
    return marked


def judge_all(cells: pd.DataFrame) -> list[Verdict]:
    """Every claim, judged within each host and platform; cells skipped because their platform was not
    offered are not evidence of anything."""
    if not cells.empty and "status" in cells:
        cells = cells[cells["status"] != SKIPPED]
    verdicts = []
    for label, part in scopes(cells):
        for verdict in _judged(part):
            verdicts.append(replace(verdict, scope=label) if label else verdict)
    return verdicts
