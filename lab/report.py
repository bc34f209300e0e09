"""Reports from stored results: the run summary, and the claims report (Markdown + self-contained HTML)."""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from lab.claims import (
    P99_SLACK,
    POLICIES,
    Verdict,
    cell_io_errors,
    failing_driver_cells,
    judge_all,
    like_with_like,
    neighbour_ratios,
    observed,
    scopes,
    smallest_sufficient,
    special_cells,
)
from lab.matrix import DEFAULT_POOL
from lab.stats import THRESHOLDS_TEXT, Metric, compare_family
from lab.store import LOST, SKIPPED, load_cells, load_samples, write_parquet
from lab.swiotlb import SLAB_BYTES
from lab.util import atomic_write_bytes, atomic_write_text

VARIANT_COLOURS = {
    "static": "#d62728",
    "throttle": "#1f77b4",
    "dynamic": "#2ca02c",
    "throttle-dynamic": "#9467bd",
    "throttle-nopoll": "#17becf",
    "stock": "#7f7f7f",
}
OTHER_COLOURS = ("#ff7f0e", "#8c564b", "#e377c2", "#bcbd22", "#aec7e8", "#98df8a")


def variant_colour(kernel: object) -> str:
    """A variant's colour in every figure; variants of a user's own are given a stable one by name."""
    name = str(kernel)
    if name in VARIANT_COLOURS:
        return VARIANT_COLOURS[name]
    return OTHER_COLOURS[int(hashlib.sha256(name.encode()).hexdigest(), 16) % len(OTHER_COLOURS)]


COMPARED_METRICS = (
    ("fio_iops", True),
    ("fio_clat_p50_us", False),
    ("fio_clat_p99_us", False),
    ("fio_clat_p999_us", False),
    ("map_failures", False),
    ("hiwater_frac", False),
)


def _fmt(value: Any, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


SUMMARY_COLUMNS = (
    ("kernel", "kernel"),
    ("pool (slabs req → actual)", None),
    ("device", "device"),
    ("workload", "workload"),
    ("hiwater / nslabs", None),
    ("map failures", "map_failures"),
    ("fio IOPS", "fio_iops"),
    ("p99 clat µs", "fio_clat_p99_us"),
    ("fio errors", "fio_errors"),
    ("status", None),
)


SUMMARY_MAX_ROWS = 200  # above this, the summary shows one row per kernel/pool/device/workload


def _grouped_summary(cells: pd.DataFrame) -> str:
    keys = ["kernel", "pool_slabs_requested", "device", "workload"]
    ok = cells[cells["status"] == "ok"]
    table = (
        ok.groupby(keys)
        .agg(
            cells=("cell_id", "size"),
            hiwater_frac=("hiwater_frac", "median"),
            map_failures=("map_failures", "median"),
            fio_iops=("fio_iops", "median"),
            fio_clat_p99_us=("fio_clat_p99_us", "median"),
            fio_errors=("fio_errors", "sum"),
        )
        .reset_index()
    )
    failed = cells[cells["status"] == "failed"].groupby(keys).size().rename("failed").reset_index()
    table = table.merge(failed, on=keys, how="outer").fillna({"failed": 0, "cells": 0})
    header = (
        "| kernel | pool (slabs) | device | workload | cells ok | failed | median hiwater/nslabs | median map "
        "failures | median IOPS | median p99 µs | fio errors |"
    )
    lines = [
        f"{len(cells)} cells, summarised per kernel/pool/device/workload (medians over ok cells):",
        "",
        header,
        "|" + "---|" * 11,
    ]
    for row in table.itertuples(index=False):
        lines.append(
            f"| {row.kernel} | {_fmt(row.pool_slabs_requested)} | {row.device} | {row.workload} | {int(row.cells)} | "
            f"{int(row.failed)} | {_fmt(row.hiwater_frac * 100 if pd.notna(row.hiwater_frac) else None)}% | "
            f"{_fmt(row.map_failures)} | {_fmt(row.fio_iops)} | {_fmt(row.fio_clat_p99_us)} | {_fmt(row.fio_errors)} |"
        )
    return "\n".join(lines)


def summary_markdown(cells: pd.DataFrame, run_dir: str, manifest: dict[str, Any]) -> str:
    """A compact Markdown table of every cell, with the run's provenance."""
    lines = [
        f"# swiotlb-lab run {manifest.get('run_id', '?')}",
        "",
        f"- results: `{run_dir}`",
        f"- matrix: {manifest.get('matrix_name', '?')} - {manifest.get('matrix_description', '')}",
        f"- lab revision {manifest.get('lab_revision', '?')}, QEMU {manifest.get('qemu_version', '?')}, "
        f"accelerator {manifest.get('accel', '?')}, host CPUs {manifest.get('host_cpus', '?')}",
        f"- status: {manifest.get('status', '?')}",
        "",
        "| " + " | ".join(name for name, _ in SUMMARY_COLUMNS) + " |",
        "|" + "---|" * len(SUMMARY_COLUMNS),
    ]
    if cells.empty:
        return "\n".join([*lines, "", "_no cells finished_"]) + "\n"
    if len(cells) > SUMMARY_MAX_ROWS:
        return "\n".join([*lines[:-2], "", _grouped_summary(cells)]) + "\n"
    for _, row in cells.sort_values(["kernel", "pool_slabs_requested", "device", "workload", "repetition"]).iterrows():
        ok = row.get("status") == "ok"
        # A dynamic pool grows during the cell: show the largest size it had, as hiwater_frac does.
        sizes = [row.get(k) for k in ("nslabs", "nslabs_after") if ok and pd.notna(row.get(k))]
        nslabs = max(sizes) if sizes else None
        hiwater = row.get("hiwater") if ok else None
        values = []
        for name, key in SUMMARY_COLUMNS:
            if name.startswith("pool"):
                requested = row["pool_slabs_requested"]
                asked = "default" if requested == DEFAULT_POOL else _fmt(requested)
                values.append(f"{asked} → {_fmt(nslabs)}")
            elif name.startswith("hiwater"):
                frac = row.get("hiwater_frac") if ok else None
                pct = frac * 100 if frac is not None and not pd.isna(frac) else None
                values.append(f"{_fmt(hiwater)} / {_fmt(nslabs)} ({_fmt(pct)}%)")
            elif name == "status":
                if row.get("status") == SKIPPED:
                    values.append(f"skipped: {row.get('failure_detail', '')}")
                elif row.get("status") == LOST:
                    values.append(f"lost (infrastructure): {row.get('failure_detail', '')}")
                else:
                    values.append("ok" if ok else f"**failed: {row.get('failure_reason', '')}**")
            elif key in ("fio_iops", "fio_clat_p99_us"):
                values.append(_fmt(float(row[key]) if ok else None))
            else:
                values.append(_fmt(row.get(key)) if ok or key in ("kernel", "device", "workload") else "-")
        lines.append("| " + " | ".join(values) + " |")
    failed = int((cells["status"] == "failed").sum())
    skipped = int((cells["status"] == SKIPPED).sum())
    lost = int((cells["status"] == LOST).sum())
    lines += [
        "",
        f"{len(cells)} cells, {failed} failed"
        + (
            f", {skipped} skipped (platform not offered by this host: neither a failure nor a finding)"
            if skipped
            else ""
        )
        + (
            f", {lost} lost to the infrastructure (worker or host gone: neither a failure nor a finding; "
            "--resume runs them)"
            if lost
            else ""
        )
        + ".",
    ]
    return "\n".join(lines) + "\n"


# --- figures ------------------------------------------------------------------------------


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buffer.getvalue()


PERFORMANCE_FIGURE = "performance.png"
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
# The figure that shows the evidence of each claim (linked from the claims table).
CLAIM_FIGURES = {
    "C1": "failures_and_throttle.png",
    "C2": "hiwater_by_pool.png",
    "C3": "usage_over_time.png",
    "C4": "hiwater_by_pool.png",
    "C5": PERFORMANCE_FIGURE,
    "C6": PERFORMANCE_FIGURE,
    "C7": PERFORMANCE_FIGURE,
    "C2-v2": "hiwater_by_pool.png",
    "C5-v2": PERFORMANCE_FIGURE,
    "C6-v2": PERFORMANCE_FIGURE,
    "C7-plain": PERFORMANCE_FIGURE,
    "C9": "neighbour.png",
    "C9-v2": "neighbour.png",
    "C10": "failing_drivers.png",
    "C10-throttle": "failing_drivers.png",
    "C10-throttle-v2": "failing_drivers.png",
    "C13": "pool_search.png",
}


def median_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """Median and its percentile-bootstrap confidence interval (seeded: the same cells, the same figure);
    with fewer than 3 values there is no interval (NaN).  The interval always contains the median: the
    percentiles of resampled medians can miss it by a rounding error when values tie (404.750336 vs
    404.75033600000006 for [417.333248, 404.750336, 404.750336]), which matplotlib rejects as a
    negative error bar."""
    data = np.asarray([v for v in values if pd.notna(v)], dtype=float)
    if data.size == 0:
        return math.nan, math.nan, math.nan
    median = float(np.median(data))
    if data.size < 3 or np.all(data == data[0]):
        return median, (median if data.size >= 3 else math.nan), (median if data.size >= 3 else math.nan)
    result = scipy_stats.bootstrap(
        (data,),
        np.median,
        confidence_level=confidence,
        n_resamples=2000,
        method="percentile",
        random_state=np.random.default_rng(0),
    )
    low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
    return median, min(low, median), max(high, median)


def _performance_figure(ok: pd.DataFrame, plt: Any) -> bytes | None:
    metrics = [
        ("fio_iops", "IOPS"),
        ("fio_clat_p99_us", "p99 completion latency"),
        ("fio_clat_p999_us", "p99.9 completion latency"),
    ]
    data = ok.dropna(subset=["fio_iops"])
    if data.empty:
        return None
    workloads = sorted(set(data["workload"]))
    kernels = sorted(set(data["kernel"]))
    pools = sorted(set(data["pool_slabs_requested"]))
    fig, axes = plt.subplots(
        len(workloads), len(metrics), figsize=(4.4 * len(metrics), 2.9 * len(workloads)), squeeze=False
    )
    width = 0.8 / max(len(kernels), 1)
    for row, workload in enumerate(workloads):
        cells = data[data["workload"] == workload]
        for col, (metric, label) in enumerate(metrics):
            ax = axes[row, col]
            # Latency in ms once µs would need four digits or more on the axis.
            scale, unit = (
                (1.0, "")
                if metric == "fio_iops"
                else ((1e-3, " (ms)") if cells[metric].max() >= 1000 else (1.0, " (µs)"))
            )
            top = 0.0
            for k, kernel in enumerate(kernels):
                xs, ys, lows, highs = [], [], [], []
                for p, pool in enumerate(pools):
                    group = cells[(cells["kernel"] == kernel) & (cells["pool_slabs_requested"] == pool)]
                    unobserved = group[~observed(group)]
                    chosen = unobserved if len(unobserved) >= 2 else group
                    if chosen.empty:
                        continue
                    values = (chosen[metric] * scale).tolist()
                    median, low, high = median_interval(values)
                    x = p + (k - (len(kernels) - 1) / 2) * width
                    ax.plot([x] * len(values), values, ".", color=variant_colour(kernel), alpha=0.35, ms=3)
                    top = max(top, max(values), high if pd.notna(high) else 0.0)
                    xs.append(x)
                    ys.append(median)
                    lows.append(median - low if pd.notna(low) else 0.0)
                    highs.append(high - median if pd.notna(high) else 0.0)
                if xs:
                    ax.errorbar(
                        xs,
                        ys,
                        yerr=[lows, highs],
                        fmt=MARKERS[k % len(MARKERS)],
                        capsize=3,
                        ms=5,
                        color=variant_colour(kernel),
                        label=kernel,
                    )
            ax.set_xticks(range(len(pools)), [_pool_label(int(pool)) for pool in pools])
            ax.set_xlim(-0.6, len(pools) - 0.4)
            ax.set_ylim(0, top * 1.12 or 1.0)
            ax.set_title(f"{workload}: {label}", fontsize=9, loc="left")
            ax.set_ylabel(label.split()[0] + unit, fontsize=8)
            if row == len(workloads) - 1:
                ax.set_xlabel("swiotlb pool")
    handles: dict[str, Any] = {}
    for ax in axes.flat:  # one legend for the figure: a variant may have cells in some workloads only
        for handle, name in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(name, handle)
    fig.legend(
        list(handles.values()),
        list(handles),
        loc="lower center",
        ncol=len(handles),
        fontsize=8,
        bbox_to_anchor=(0.5, -0.02),
    )
    fig.suptitle(
        "Performance by variant: median (marker) with its 95% bootstrap interval, and each repetition (dots);"
        "\nrepetitions without the in-guest sampler where a group has two or more",
        fontsize=10,
    )
    fig.tight_layout()
    return _png(fig)


def _pool_label(slabs: int) -> str:
    size = slabs * SLAB_BYTES
    return f"{size >> 20} MiB" if size % (1 << 20) == 0 else f"{slabs} slabs"


def figures(cells: pd.DataFrame, samples: pd.DataFrame) -> dict[str, bytes]:
    """PNG figures keyed by file name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out: dict[str, bytes] = {}
    ok = cells[cells["status"] == "ok"] if not cells.empty else cells
    if ok.empty:
        return out

    # 1. slabs in use over time, one panel per variant: its heavy cell on the smallest pool (the
    #    repetition with the lowest IOPS, the worst case), with the pool size and thresholds drawn
    if not samples.empty and "io_tlb_used" in samples:
        picked = []
        for kernel, group in ok.groupby("kernel"):
            pick = group.sort_values(["pool_slabs_requested", "fio_iops"], ascending=[True, True])
            heavy = pick[pick["numjobs"].fillna(1).astype(int) > 1]
            cell = (heavy if not heavy.empty else pick).iloc[0]
            series = samples[samples["cell_id"] == cell["cell_id"]].dropna(subset=["io_tlb_used"])
            if not series.empty:
                picked.append((kernel, cell, series))
        if picked:
            # Own y scale per panel: a grown dynamic pool would flatten the fixed ones.
            fig, axes = plt.subplots(len(picked), 1, figsize=(9, 1.2 + 1.9 * len(picked)), sharex=True, squeeze=False)
            for ax, (kernel, cell, series) in zip(axes[:, 0], picked, strict=True):
                ax.plot(series["t_s"], series["io_tlb_used"], color=variant_colour(kernel), lw=0.8, label="in use")
                ax.axhline(cell["nslabs"], color="black", ls=":", lw=0.9, label="nslabs")
                grown = cell.get("nslabs_after")
                if pd.notna(grown) and grown > cell["nslabs"]:
                    ax.axhline(grown, color="black", ls=(0, (1, 4)), lw=0.9, label="nslabs after the run")
                if pd.notna(cell.get("high_throttle")):
                    ax.axhline(cell["high_throttle"], color="dimgrey", ls="--", lw=0.9, label="high_throttle")
                if pd.notna(cell.get("low_throttle")):
                    ax.axhline(cell["low_throttle"], color="dimgrey", ls="-.", lw=0.7, label="low_throttle")
                ax.set_title(
                    f"{kernel}: {cell['workload']}, pool {int(cell['pool_slabs_requested'])} slabs ({cell['cell_id']})",
                    fontsize=9,
                    loc="left",
                )
                ax.set_ylabel("slabs in use", fontsize=8)
                ax.set_ylim(bottom=0)  # the idle level (virtio-net's receive buffers) is not zero
                ax.legend(fontsize=7, loc="upper right", ncol=2)
            axes[-1, 0].set_xlabel("time since sampler start (s)")
            fig.suptitle("swiotlb slabs in use over time, per variant")
            out["usage_over_time.png"] = _png(fig)

    special = ok  # C9/C10/C13 figures below; the rest shows plain cells only
    ok = ok[~special_cells(ok)]
    if ok.empty:
        out.update(_special_figures(cells, special, plt))
        return out

    # 2. hiwater / nslabs by variant and pool
    fig, ax = plt.subplots(figsize=(8, 4))
    table = ok.groupby(["pool_slabs_requested", "kernel"])["hiwater_frac"].median().unstack()
    (table * 100).plot.bar(ax=ax, color=[variant_colour(c) for c in table.columns])
    ax.axhline(100, color="black", lw=0.8)
    ax.set_xlabel("requested pool (slabs)")
    ax.set_ylabel("hiwater / nslabs (%)")
    ax.set_title("Pool high-water mark (median over cells)")
    out["hiwater_by_pool.png"] = _png(fig)

    # 3. performance: one row of panels per workload (IOPS, p99, p99.9), variants side by side within
    #    each pool size, the median of the unobserved repetitions with its 95% bootstrap interval
    perf = _performance_figure(ok, plt)
    if perf is not None:
        out[PERFORMANCE_FIGURE] = perf

    # 4. map failures and throttle activity: per cell for small runs, per group (median) for large ones
    per_cell = len(ok) <= 60
    if per_cell:
        data = ok.assign(label=ok["cell_id"].str.slice(0, 48))
    else:
        keys = ["kernel", "pool_slabs_requested", "workload"]
        data = ok.groupby(keys, as_index=False)[["map_failures", "high_throttle_count", "throttle_wait_ns"]].median()
        data["label"] = data[keys].astype(str).agg("/".join, axis=1)
    fig, axes = plt.subplots(1, 2, figsize=(13, max(3.0, 0.22 * len(data))))
    axes[0].barh(data["label"], data["map_failures"], color=[variant_colour(k) for k in data["kernel"]])
    axes[0].set_title("failed DMA maps " + ("per cell" if per_cell else "(median per kernel/pool/workload)"))
    throttled = data.get("high_throttle_count", pd.Series(0, index=data.index)).fillna(0)
    wait_s = data.get("throttle_wait_ns", pd.Series(0, index=data.index)).fillna(0) / 1e9
    axes[1].barh(data["label"], throttled, color="#1f77b4", label="throttled mappings")
    twin = axes[1].twiny()
    twin.plot(wait_s, data["label"], "k.", label="throttle wait (s)")
    axes[1].set_title("throttle count (bars) and total wait in s (dots)")
    axes[1].set_yticklabels([])
    out["failures_and_throttle.png"] = _png(fig)
    out.update(_special_figures(cells, special, plt))
    return out


def _special_figures(cells: pd.DataFrame, ok: pd.DataFrame, plt: Any) -> dict[str, bytes]:
    """One figure per question of its own: C9 (a slow neighbour), C10 (failing drivers), C13 (pool search)."""
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    out: dict[str, bytes] = {}
    ratios = {k: neighbour_ratios(cells, k) for k in sorted(set(ok["kernel"]))}
    ratios = {k: r for k, r in ratios.items() if not r.empty}
    if ratios:  # C9: what the neighbour costs the fast disk, per boot
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
        for ax, column, label in (
            (axes[0], "iops_ratio", "IOPS kept (with neighbour / alone)"),
            (axes[1], "p99_ratio", "p99 with neighbour / alone"),
        ):
            for x, (kernel, frame) in enumerate(ratios.items()):
                ax.scatter([x] * len(frame), frame[column], color=variant_colour(kernel), zorder=3)
                ax.hlines(frame[column].median(), x - 0.3, x + 0.3, color="black", lw=1.5)
            ax.set_xticks(range(len(ratios)), list(ratios), fontsize=8)
            ax.axhline(1.0, color="grey", lw=0.8, ls=":")
            ax.set_ylabel(label, fontsize=8)
        axes[1].set_yscale("log")
        axes[1].yaxis.set_major_formatter(ScalarFormatter())
        axes[1].yaxis.set_minor_formatter(NullFormatter())
        fig.suptitle("C9: the fast NVMe disk next to a slow neighbour (dots: boots; bars: medians)", y=1.02)
        out["neighbour.png"] = _png(fig)
    devices = {k: failing_driver_cells(cells, k) for k in sorted(set(ok["kernel"]))}
    pairs = [(d, k, c) for k, by in devices.items() for d, c in sorted(by.items())]
    if pairs:  # C10: what a failed map does on drivers that fail requests
        fig, axes = plt.subplots(1, 2, figsize=(11, 0.6 + 0.45 * len(pairs)))
        labels = [f"{d} / {k}" for d, k, _ in pairs]
        colours = [variant_colour(k) for _, k, _ in pairs]
        axes[0].barh(labels, [c["map_failures"].median() for _, _, c in pairs], color=colours)
        axes[0].set_title("failed maps (median per cell)", fontsize=9)
        axes[1].barh(labels, [(cell_io_errors(c) > 0).mean() * 100 for _, _, c in pairs], color=colours)
        axes[1].set_xlim(0, 100)
        axes[1].set_title("cells with I/O errors (%)", fontsize=9)
        axes[1].set_yticklabels([])
        fig.suptitle("C10: drivers that fail a request whose map fails (heavy load, smallest pool)", y=1.04)
        out["failing_drivers.png"] = _png(fig)
    found = []
    plain = ok[~special_cells(ok)]
    for workload, group in plain.groupby("workload") if not plain.empty else ():
        for kernel in POLICIES:
            mine = group[group["kernel"] == kernel]
            if mine["pool_slabs_requested"].nunique() >= 3:
                found.append((str(workload), kernel, smallest_sufficient(mine)))
    if found:  # C13: per policy and workload, the pool from which on no map failed; and with p99 too
        fig, ax = plt.subplots(figsize=(9, 0.8 + 0.4 * len(found)))
        for y, (_, kernel, search) in enumerate(found):
            if search.clean_used is not None:
                ax.barh(y, search.clean_used * SLAB_BYTES / 2**20, color=variant_colour(kernel))
            if search.used is not None:
                resolved = search.ample_rsd_pct <= P99_SLACK * 100
                ax.plot(
                    search.used * SLAB_BYTES / 2**20,
                    y,
                    marker="x",
                    ms=9,
                    ls="",
                    color="black" if resolved else "darkgrey",
                )
        ax.set_yticks(range(len(found)), [f"{w} / {k}" for w, k, _ in found], fontsize=8)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("pool, MiB (a growing pool: what it grew to)")
        ax.set_title(
            "C13: bars, no failed map from this pool on; x, also p99 within 10% of the largest pool's "
            "(grey: p99 varies more than 10% there, not resolvable)",
            fontsize=8,
        )
        out["pool_search.png"] = _png(fig)
    return out


# --- tables ----------------------------------------------------------------------------------


def comparisons(cells: pd.DataFrame, baseline: str = "static") -> list[dict[str, Any]]:
    """Every variant against the baseline variant, per (pool, workload), for the compared metrics."""
    rows: list[dict[str, Any]] = []
    ok = cells[cells["status"] == "ok"] if not cells.empty else cells
    if ok.empty or baseline not in set(ok["kernel"]):
        return rows
    for scope, part in scopes(ok):
        rows += [{"scope": scope, **row} if scope else row for row in _comparisons(part, baseline)]
    return rows


def _comparisons(ok: pd.DataFrame, baseline: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for (pool, workload), group in ok.groupby(["pool_slabs_requested", "workload"]):
        for kernel in sorted(set(group["kernel"]) - {baseline}):
            base, cand, cells_used = like_with_like(
                group[group["kernel"] == baseline], group[group["kernel"] == kernel]
            )
            family = compare_family(
                [Metric(m, base[m].tolist(), cand[m].tolist(), higher) for m, higher in COMPARED_METRICS]
            )
            for c in family:
                rows.append(
                    {
                        "pool_slabs": pool,
                        "workload": workload,
                        "baseline": baseline,
                        "variant": kernel,
                        "metric": c.metric,
                        "baseline_median": c.baseline.median,
                        "baseline_rsd_pct": c.baseline.rsd_pct,
                        "variant_median": c.candidate.median,
                        "variant_rsd_pct": c.candidate.rsd_pct,
                        "variant_ci95": f"[{c.candidate.ci_low:.4g}, {c.candidate.ci_high:.4g}]",
                        "n": f"{c.baseline.n}/{c.candidate.n}",
                        "change_pct": c.change_pct,
                        "p_value": c.p_value,
                        "p_raw": c.p_raw,
                        "conclusion": c.conclusion,
                        "reps_needed": c.reps_needed,
                        "cells": cells_used,
                    }
                )
    return rows


def claims_frame(verdicts: list[Verdict]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "claim": v.claim,
                "scope": v.scope,
                "text": v.text,
                "verdict": v.verdict,
                "metric": v.metric,
                "threshold": v.threshold,
                "detail": v.detail,
                "evidence": " ".join(v.evidence),
            }
            for v in verdicts
        ]
    )


# --- documents --------------------------------------------------------------------------------


def _md_table(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "_none_\n"
    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "|" + "---|" * len(frame.columns)
    body = [
        "| " + " | ".join(_fmt(v, 2) if isinstance(v, float) else str(v) for v in row) + " |"
        for row in frame.itertuples(index=False)
    ]
    return "\n".join([header, rule, *body]) + "\n"


def series_tables(cells: pd.DataFrame) -> list[tuple[str, str, pd.DataFrame]]:
    """The series-comparison tables (lab.series) that this run has cells for."""
    from lab.series import SERIES_TABLES

    found = [(title, note, make(cells)) for title, note, make in SERIES_TABLES]
    return [(title, note, table) for title, note, table in found if not table.empty]


def _cell_link(cell_id: str) -> str:
    return f"[{cell_id}](cells/{cell_id}/cell.json)"


HOST_COLUMNS = (
    "host_id",
    "platform",
    "cpu_model",
    "host_kernel",
    "host_cpus",
    "qemu_version",
    "coco_firmware",
    "firmware_sev-snp",
    "firmware_tdx",
)


def hosts_table(cells: pd.DataFrame) -> pd.DataFrame:
    """One row per host and platform that ran cells: what each host is, and how its cells ended.  Every claim
    is judged within one of these rows' hosts; a run on one machine has one row."""
    if cells.empty or "host_id" not in cells:
        return pd.DataFrame()
    ran = cells[~cells["status"].isin((SKIPPED, LOST))]
    if ran.empty:
        return pd.DataFrame()
    keys = [c for c in HOST_COLUMNS if c in ran]
    table = ran[keys].astype(str).drop_duplicates(subset=["host_id", "platform"]).set_index(["host_id", "platform"])
    counts = ran.groupby(["host_id", "platform"])["status"].value_counts().unstack(fill_value=0)
    table["cells ok"] = counts.get("ok", 0)
    table["cells failed"] = counts.get("failed", 0)
    return table.reset_index()


def report_markdown(
    manifest: dict[str, Any],
    cells: pd.DataFrame,
    verdicts: list[Verdict],
    comparison_rows: list[dict[str, Any]],
    figure_names: list[str],
) -> str:
    hosts = hosts_table(cells)
    lines = [
        f"# swiotlb throttling: measured verdicts (run {manifest.get('run_id', '?')})",
        "",
        f"Lab revision `{manifest.get('lab_revision', '?')}`, QEMU {manifest.get('qemu_version', '?')}, "
        f"accelerator **{manifest.get('accel', '?')}**, {manifest.get('host_cpus', '?')} host CPUs, "
        f"matrix `{manifest.get('matrix_name', '?')}`, status {manifest.get('status', '?')}.",
        "",
        "## Hosts",
        "",
        "Each claim is judged within one host and platform (its row says which when the run had several); "
        "cells are never compared across hosts.",
        "",
        _md_table(hosts) if not hosts.empty else "_no cell ran_",
        "",
        "## Claims",
        "",
        "| claim | verdict | metric | threshold | measured | evidence | figure |",
        "|---|---|---|---|---|---|---|",
    ]
    for v in verdicts:
        evidence = ", ".join(_cell_link(c) for c in v.evidence[:6]) + (" …" if len(v.evidence) > 6 else "")
        figure = CLAIM_FIGURES.get(v.claim)
        shown = f"[{figure}](figures/{figure})" if figure in figure_names else "-"
        where = f" ({v.scope})" if v.scope else ""
        lines.append(
            f"| **{v.claim}**{where} {v.text} | **{v.verdict}** | {v.metric} | {v.threshold} | {v.detail} | "
            f"{evidence or '-'} | {shown} |"
        )
    for title, note, table in series_tables(cells):
        lines += ["", f"## {title}", "", note, "", _md_table(table)]
    lines += ["", "## Statistics", "", THRESHOLDS_TEXT, ""]
    lines.append(_md_table(pd.DataFrame(comparison_rows)))
    failed = cells[cells["status"] == "failed"] if not cells.empty else cells
    lines += ["", "## Failed cells", ""]
    if failed.empty:
        lines.append("_none_")
    else:
        for _, row in failed.iterrows():
            lines.append(f"- {_cell_link(row['cell_id'])}: {row['failure_reason']}")
    retried = cells[cells["boot_retries"].fillna(0) > 0] if "boot_retries" in cells else cells.iloc[0:0]
    if not retried.empty:
        lines += [
            "",
            "## Boots tried twice",
            "",
            "A boot that panicked or hung before SSH is tried once more (the emulator, not the kernel, "
            "can be at fault under TCG); these cells ran on the second boot. Each first boot's console "
            "is kept in the run's `boots/` directory.",
            "",
        ]
        for _, row in retried.iterrows():
            lines.append(f"- {_cell_link(row['cell_id'])} ({row['status']}): {row['boot_retry_reason']}")
    skipped = cells[cells["status"] == SKIPPED] if not cells.empty else cells
    if not skipped.empty:
        lines += [
            "",
            "## Skipped cells",
            "",
            "Their platform is not offered by the host that ran this matrix; "
            "they are neither failures nor findings, and `--resume` on a host that offers it runs them.",
            "",
        ]
        for reason, group in skipped.groupby("failure_detail"):
            lines.append(f"- {len(group)} cell(s): {reason}")
    lost = cells[cells["status"] == LOST] if not cells.empty else cells
    if not lost.empty:
        lines += [
            "",
            "## Lost cells (infrastructure)",
            "",
            "Their boot group was lost with its worker or host, or failed outside the guest; they are "
            "neither failures nor findings, and `--resume` runs them again.",
            "",
        ]
        for _, row in lost.iterrows():
            lines.append(f"- {_cell_link(row['cell_id'])}: {row['failure_detail']}")
    lines += ["", "## Figures", ""]
    lines += [f"![{name}](figures/{name})" for name in figure_names]
    lines += ["", "## Cells", "", summary_markdown(cells, ".", manifest).split("\n\n", 2)[-1]]
    return "\n".join(lines) + "\n"


HTML_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:13px}
td,th{border:1px solid #ccc;padding:4px 6px;vertical-align:top}
th{background:#f3f3f3}
.supported{background:#e3f6e3}.contradicted{background:#fbe3e3}.inconclusive{background:#f6f3dc}
img{max-width:100%;border:1px solid #ddd;margin:0.5em 0}
code{background:#f5f5f5;padding:0 3px}
"""


def _html_cell(value: Any) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.4g}"
    return html.escape(str(value))


def _html_table(frame: pd.DataFrame) -> str:
    """A plain HTML table; pandas' to_html takes seconds for 10,000 rows."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = "\n".join(
        "<tr>" + "".join(f"<td>{_html_cell(v)}</td>" for v in row) + "</tr>" for row in frame.itertuples(index=False)
    )
    return f"<table><tr>{head}</tr>\n{body}</table>"


def report_html(
    manifest: dict[str, Any],
    cells: pd.DataFrame,
    verdicts: list[Verdict],
    comparison_rows: list[dict[str, Any]],
    pngs: dict[str, bytes],
) -> str:
    esc = html.escape
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>swiotlb-lab report {esc(str(manifest.get('run_id', '')))}</title>",
        f"<style>{HTML_STYLE}</style></head><body>",
        f"<h1>swiotlb throttling: measured verdicts</h1><p>Run <code>{esc(str(manifest.get('run_id', '?')))}</code>, "
        f"lab revision <code>{esc(str(manifest.get('lab_revision', '?')))}</code>, QEMU "
        f"{esc(str(manifest.get('qemu_version', '?')))}, accelerator <b>{esc(str(manifest.get('accel', '?')))}</b>, "
        f"{esc(str(manifest.get('host_cpus', '?')))} host CPUs, status {esc(str(manifest.get('status', '?')))}.</p>",
        "<h2>Claims</h2><table id='claims'><tr><th>claim</th><th>verdict</th><th>metric</th><th>threshold</th>"
        "<th>measured</th><th>evidence</th><th>figure</th></tr>",
    ]
    for v in verdicts:
        evidence = " ".join(f"<a href='cells/{esc(c)}/cell.json'>{esc(c)}</a>" for c in v.evidence)
        figure = CLAIM_FIGURES.get(v.claim, "")
        shown = f"<a href='#fig-{esc(figure)}'>{esc(figure)}</a>" if figure in pngs else "-"
        where = f" ({esc(v.scope)})" if v.scope else ""
        parts.append(
            f"<tr class='{esc(v.verdict)}'><td><b>{esc(v.claim)}</b>{where} {esc(v.text)}</td>"
            f"<td><b>{esc(v.verdict)}</b></td><td>{esc(v.metric)}</td><td>{esc(v.threshold)}</td>"
            f"<td>{esc(v.detail)}</td><td>{evidence or '-'}</td><td>{shown}</td></tr>"
        )
    parts.append("</table>")
    for title, note, table in series_tables(cells):
        parts.append(f"<h2>{esc(title)}</h2><p>{esc(note)}</p>{_html_table(table)}")
    parts.append(f"<h2>Statistics</h2><p>{esc(THRESHOLDS_TEXT)}</p>")
    if comparison_rows:
        parts.append(pd.DataFrame(comparison_rows).to_html(index=False, float_format=lambda x: f"{x:.4g}"))
    parts.append("<h2>Figures</h2>")
    for name, data in pngs.items():
        encoded = base64.b64encode(data).decode()
        parts.append(
            f"<figure id='fig-{esc(name)}'><img alt='{esc(name)}' src='data:image/png;base64,{encoded}'>"
            f"<figcaption>{esc(name)}</figcaption></figure>"
        )
    parts.append("<h2>Cells</h2>")
    columns = [
        c
        for c in (
            "cell_id",
            "status",
            "failure_reason",
            "kernel",
            "pool_slabs_requested",
            "nslabs",
            "workload",
            "hiwater",
            "map_failures",
            "high_throttle_count",
            "fio_iops",
            "fio_clat_p99_us",
            "fio_errors",
        )
        if c in cells
    ]
    if not cells.empty:
        parts.append(_html_table(cells[columns]))
    parts.append("</body></html>")
    return "\n".join(parts)


def build_report(run_dir: Path, output: Path | None = None) -> dict[str, Path]:
    """Write report.md, report.html, figures/*.png and the tables they came from into ``output`` (by
    default ``run_dir``: the run's own report, as a run writes it at its end)."""
    manifest = json.loads((run_dir / "manifest.json").read_text())
    cells = load_cells(run_dir)
    samples = load_samples(run_dir)
    verdicts = judge_all(cells) if not cells.empty else []
    comparison_rows = comparisons(cells) if not cells.empty else []
    pngs = figures(cells, samples) if not cells.empty else {}
    out = output or run_dir
    written: dict[str, Path] = {}
    for name, data in pngs.items():
        atomic_write_bytes(out / "figures" / name, data)
        written[name] = out / "figures" / name
    write_parquet(out / "claims.parquet", claims_frame(verdicts))
    write_parquet(out / "comparisons.parquet", pd.DataFrame(comparison_rows))
    atomic_write_text(out / "report.md", report_markdown(manifest, cells, verdicts, comparison_rows, list(pngs)))
    atomic_write_text(out / "report.html", report_html(manifest, cells, verdicts, comparison_rows, pngs))
    written.update(md=out / "report.md", html=out / "report.html")
    return written
