"""The report's figures: each draws what its claim is judged on, and its caption says what it plots and what
it leaves out."""

from __future__ import annotations

import hashlib
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from lab.claims import (
    FAILING_DRIVERS,
    FIGURE_DRIVERS,
    FIGURE_FAILURES,
    FIGURE_HIWATER,
    FIGURE_NEIGHBOUR,
    FIGURE_PERFORMANCE,
    FIGURE_POOLS,
    FIGURE_USAGE,
    P99_SLACK,
    POLICIES,
    cell_io_errors,
    failing_driver_cells,
    neighbour_ratios,
    observed,
    smallest_sufficient,
    special_cells,
)
from lab.store import LOST, SKIPPED
from lab.swiotlb import SLAB_BYTES

VARIANT_COLOURS = {
    "static": "#d62728",
    "throttle": "#1f77b4",
    "dynamic": "#2ca02c",
    "throttle-dynamic": "#9467bd",
    "throttle-nopoll": "#17becf",
    "stock": "#7f7f7f",
}
OTHER_COLOURS = ("#ff7f0e", "#8c564b", "#e377c2", "#bcbd22", "#aec7e8", "#98df8a")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
PERFORMANCE_FIGURE = FIGURE_PERFORMANCE
OWN_QUESTIONS = (
    "cells that ask a question of their own (failing-driver disks, a slow neighbour, an emulated conversion "
    "cost, the kernel's default pool: their own figures)"
)


@dataclass(frozen=True)
class Figure:
    """One drawn figure: its file name under figures/, a caption in the report's inline markup (what is
    plotted and what is left out), and the PNG."""

    name: str
    caption: str
    png: bytes = b""


def variant_colour(kernel: object) -> str:
    """A variant's colour in every figure; variants of a user's own are given a stable one by name."""
    name = str(kernel)
    if name in VARIANT_COLOURS:
        return VARIANT_COLOURS[name]
    return OTHER_COLOURS[int(hashlib.sha256(name.encode()).hexdigest(), 16) % len(OTHER_COLOURS)]


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


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buffer.getvalue()


def _pool_label(slabs: int) -> str:
    size = slabs * SLAB_BYTES
    return f"{size >> 20} MiB" if size % (1 << 20) == 0 else f"{slabs} slabs"


def _count(n: int, what: str) -> str:
    return f"{n:,} {what}" + ("" if n == 1 else "s")


def draw(cells: pd.DataFrame, samples: pd.DataFrame) -> list[Figure]:
    """Every figure this run's cells can fill, in the report's order."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if cells.empty or "status" not in cells:
        return []
    ok = cells[cells["status"] == "ok"]
    if ok.empty:
        return []
    out: list[Figure] = []
    usage = _usage_figure(ok, samples, plt)
    if usage is not None:
        out.append(usage)
    ran = cells[~cells["status"].isin((SKIPPED, LOST))]
    plain = ran[~special_cells(ran)]
    if not plain[plain["status"] == "ok"].empty:
        for make in (_hiwater_figure, _performance_figure, _failures_figure):
            figure = make(plain, plt)
            if figure is not None:
                out.append(figure)
    out += _special_figures(cells, ok, plt)
    return out


def _usage_figure(ok: pd.DataFrame, samples: pd.DataFrame, plt: Any) -> Figure | None:
    """Slabs in use over time, one panel per variant: its heavy cell on the smallest pool (the repetition with
    the lowest IOPS, the worst case), with the pool size and thresholds drawn."""
    if samples.empty or "io_tlb_used" not in samples:
        return None
    picked = []
    for kernel, group in ok.groupby("kernel"):
        pick = group.sort_values(["pool_slabs_requested", "fio_iops"], ascending=[True, True])
        heavy = pick[pick["numjobs"].fillna(1).astype(int) > 1]
        cell = (heavy if not heavy.empty else pick).iloc[0]
        series = samples[samples["cell_id"] == cell["cell_id"]].dropna(subset=["io_tlb_used"])
        if not series.empty:
            picked.append((kernel, cell, series))
    if not picked:
        return None
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
            f"{kernel}: {cell['workload']}, pool {int(cell['pool_slabs_requested']):,} slabs ({cell['cell_id']})",
            fontsize=9,
            loc="left",
        )
        ax.set_ylabel("slabs in use", fontsize=8)
        ax.set_ylim(bottom=0)  # the idle level (virtio-net's receive buffers) is not zero
        ax.legend(fontsize=7, loc="upper right", ncol=2)
    axes[-1, 0].set_xlabel("time since sampler start (s)")
    fig.suptitle("swiotlb slabs in use over time, per variant")
    sampled = samples["cell_id"].nunique()
    caption = (
        f"Slabs in use over time for one cell per kernel ({len(picked)} of the {_count(sampled, 'cell')} the "
        "in-guest sampler watched): its heavy-load cell on the smallest pool, the repetition with the lowest "
        "IOPS (the worst case). Dotted: the pool's size at the start and, for a pool that grew, after the run; "
        "dashed: `high_throttle` and `low_throttle` where the kernel has them. Left out: every other cell, "
        "and cells that ran without the sampler."
    )
    return Figure(FIGURE_USAGE, caption, _png(fig))


def _hiwater_figure(plain: pd.DataFrame, plt: Any) -> Figure | None:
    """Per workload: each cell's high-water mark as a share of the pool it asked for (a grown pool can exceed
    100%), what a growing pool grew to, and the throttle thresholds where the rows carry them."""
    if "hiwater" not in plain:
        return None
    ok = plain[(plain["status"] == "ok") & plain["hiwater"].notna()]
    if ok.empty:
        return None
    workloads = sorted(set(ok["workload"]))
    kernels = sorted(set(ok["kernel"]))
    share = ok["hiwater"] / ok["pool_slabs_requested"] * 100
    grown_share = ok.get("nslabs_after", pd.Series(np.nan, index=ok.index)) / ok["pool_slabs_requested"] * 100
    top = float(max(share.max(), grown_share.max() if grown_share.notna().any() else 0.0))
    log = top > 250.0  # a grown pool next to fixed ones: a log axis keeps 70% and 100% apart
    ncols = min(len(workloads), 3)
    nrows = math.ceil(len(workloads) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.4 * nrows), squeeze=False)
    width = 0.8 / max(len(kernels), 1)
    labelled: set[str] = set()

    def once(label: str) -> str:
        if label in labelled:
            return "_nolegend_"
        labelled.add(label)
        return label

    for ax, workload in zip(axes.flat, workloads, strict=False):
        mine = ok[ok["workload"] == workload]
        pools = sorted(set(mine["pool_slabs_requested"]))
        for p, pool in enumerate(pools):
            for k, kernel in enumerate(kernels):
                group = mine[(mine["kernel"] == kernel) & (mine["pool_slabs_requested"] == pool)]
                if group.empty:
                    continue
                x = p + (k - (len(kernels) - 1) / 2) * width
                values = group["hiwater"] / pool * 100
                colour = variant_colour(kernel)
                ax.scatter([x] * len(values), values, color=colour, s=14, alpha=0.6, zorder=3)
                ax.hlines(values.median(), x - width * 0.45, x + width * 0.45, color=colour, lw=2.2, label=once(kernel))
                for column, style, label in (
                    ("high_throttle", "--", "high_throttle"),
                    ("low_throttle", ":", "low_throttle"),
                ):
                    if column in group and group[column].notna().any():
                        level = group[column].median() / pool * 100
                        ax.hlines(
                            level, x - width / 2, x + width / 2, color="black", ls=style, lw=1.1, label=once(label)
                        )
                after = group.get("nslabs_after", pd.Series(np.nan, index=group.index)).max()
                if pd.notna(after) and after > pool:
                    ax.plot(
                        x,
                        after / pool * 100,
                        marker="s",
                        mfc="none",
                        mec=colour,
                        ms=8,
                        ls="",
                        label=once("pool after the run (grown)"),
                    )
                    ax.annotate(
                        f"grew to {int(after):,}",
                        (x, after / pool * 100),
                        textcoords="offset points",
                        xytext=(0, 7),
                        ha="center",
                        fontsize=7,
                    )
        ax.axhline(100, color="grey", lw=0.8)
        ax.set_xticks(range(len(pools)), [f"{int(pool):,} slabs" for pool in pools], fontsize=8)
        ax.set_xlim(-0.6, len(pools) - 0.4)
        if log:
            ax.set_yscale("log", base=2)
            from matplotlib.ticker import FuncFormatter

            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}%"))
            ax.set_ylim(max(min(share.min(), 100) / 1.5, 1), top * 1.6)
        else:
            ax.set_ylim(0, max(top, 100) * 1.12)
        ax.set_title(workload, fontsize=9, loc="left")
        ax.set_ylabel("high-water mark, % of requested pool", fontsize=8)
    for ax in list(axes.flat)[len(workloads) :]:
        ax.set_visible(False)
    _figure_legend(fig, axes, columns=6, below=0.06)
    fig.suptitle("Pool high-water mark per workload, as a share of the pool each cell asked for", fontsize=10)
    fig.tight_layout()
    failed = int((plain["status"] != "ok").sum())
    caption = (
        "Each cell's high-water mark (dots; line: the median) as a share of the pool it asked for, one panel "
        "per workload; the grey line is the requested pool (100%). A pool that grows (`dynamic`) is drawn "
        "against the pool it asked for, so it can exceed 100%; the open square is what it grew to. Dashed: "
        "`high_throttle`, dotted: `low_throttle`, where the cells record them (C2 allows the high-water mark "
        "10% of the pool above `high_throttle`)."
        + (" The axis is logarithmic: a grown pool is many times the requested one." if log else "")
        + f" Left out: {_count(failed, 'failed cell')} (no high-water mark read)"
        + f" and {OWN_QUESTIONS}."
    )
    return Figure(FIGURE_HIWATER, caption, _png(fig))


def _performance_figure(plain: pd.DataFrame, plt: Any) -> Figure | None:
    """One row of panels per workload (IOPS, p99, p99.9), variants side by side within each pool size: the
    median of the unobserved repetitions, its 95% bootstrap interval where there are 3 or more, and the failed
    cells of each group marked (a hang is C5's evidence, and has no measurement)."""
    metrics = [
        ("fio_iops", "IOPS"),
        ("fio_clat_p99_us", "p99 completion latency"),
        ("fio_clat_p999_us", "p99.9 completion latency"),
    ]
    data = plain[(plain["status"] == "ok") & plain["fio_iops"].notna()]
    failed_all = plain[plain["status"] == "failed"]
    if data.empty:
        return None
    workloads = sorted(set(data["workload"]) | set(failed_all["workload"]))
    kernels = sorted(set(data["kernel"]) | set(failed_all["kernel"]))
    pools = sorted(set(data["pool_slabs_requested"]) | set(failed_all["pool_slabs_requested"]))
    fig, axes = plt.subplots(
        len(workloads), len(metrics), figsize=(4.4 * len(metrics), 2.9 * len(workloads)), squeeze=False
    )
    width = 0.8 / max(len(kernels), 1)
    with_interval = without_interval = observed_groups = 0
    for row, workload in enumerate(workloads):
        cells = data[data["workload"] == workload]
        failed_here = failed_all[failed_all["workload"] == workload]
        for col, (metric, label) in enumerate(metrics):
            ax = axes[row, col]
            # Latency in ms once µs would need four digits or more on the axis.
            big = not cells.empty and cells[metric].max() >= 1000
            scale, unit = (1.0, "") if metric == "fio_iops" else ((1e-3, " (ms)") if big else (1.0, " (µs)"))
            top = 0.0
            for k, kernel in enumerate(kernels):
                xs, ys, lows, highs = [], [], [], []
                for p, pool in enumerate(pools):
                    x = p + (k - (len(kernels) - 1) / 2) * width
                    hung = failed_here[
                        (failed_here["kernel"] == kernel) & (failed_here["pool_slabs_requested"] == pool)
                    ]
                    if not hung.empty:
                        ax.plot(
                            x,
                            0,
                            marker="X",
                            ms=8,
                            ls="",
                            color=variant_colour(kernel),
                            mec="black",
                            clip_on=False,
                            zorder=4,
                            label="failed cells (no measurement)",
                        )
                        ax.annotate(
                            f"{len(hung)} failed",
                            (x, 0),
                            textcoords="offset points",
                            xytext=(0, 7),
                            ha="center",
                            fontsize=7,
                        )
                    group = cells[(cells["kernel"] == kernel) & (cells["pool_slabs_requested"] == pool)]
                    unobserved = group[~observed(group)]
                    chosen = unobserved if len(unobserved) >= 2 else group
                    if chosen.empty:
                        continue
                    values = (chosen[metric] * scale).tolist()
                    median, low, high = median_interval(values)
                    if col == 0:
                        observed_groups += len(unobserved) < 2
                        if pd.notna(low):
                            with_interval += 1
                        else:
                            without_interval += 1
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
                        yerr=[lows, highs] if any(lows) or any(highs) else None,
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
    _figure_legend(fig, axes, columns=None, below=0.02)
    groups = with_interval + without_interval
    if without_interval == 0:
        interval = "with its 95% bootstrap interval"
    elif with_interval == 0:
        interval = "without an interval (every group has fewer than 3 repetitions)"
    else:
        interval = (
            f"with its 95% bootstrap interval where a group has 3 or more repetitions ({with_interval} of {groups})"
        )
    fig.suptitle(
        f"Performance by variant: median (marker) {interval}, and each repetition (dots);"
        + ("\nX: failed cells (hang, timeout), which have no measurement" if not failed_all.empty else ""),
        fontsize=10,
    )
    fig.tight_layout()
    caption = (
        f"IOPS, p99 and p99.9 completion latency per workload (rows), kernel and pool: the median (marker) "
        f"{interval}, and each repetition (dots), of the repetitions that ran without the in-guest sampler "
        f"where a group has two or more ({observed_groups} of {groups} groups had fewer and show their "
        "observed cells)."
        + (
            f" X marks {_count(len(failed_all), 'failed cell')} (a hang or timeout: C5's evidence), which "
            "have no measurement."
            if not failed_all.empty
            else ""
        )
        + f" Left out: {OWN_QUESTIONS}."
    )
    return Figure(PERFORMANCE_FIGURE, caption, _png(fig))


def _failures_figure(plain: pd.DataFrame, plt: Any) -> Figure | None:
    """Failed DMA maps and throttle activity per cell (per group of cells above 60), on symmetric log axes:
    throttle's handful of failed maps stays visible next to static's thousands."""
    if "map_failures" not in plain:
        return None
    cells = plain[plain["status"].isin(("ok", "failed"))]
    per_cell = len(cells) <= 60
    if per_cell:
        failed = cells["status"] == "failed"
        reason = cells.get("failure_reason", pd.Series("", index=cells.index)).fillna("").astype(str)
        label = cells["cell_id"].astype(str).str.slice(0, 48) + np.where(failed, " (failed: " + reason + ")", "")
        data = cells.assign(label=label)
    else:
        keys = ["kernel", "pool_slabs_requested", "workload"]
        columns = [c for c in ("map_failures", "high_throttle_count", "throttle_wait_ns") if c in cells]
        data = cells[cells["status"] == "ok"].groupby(keys, as_index=False)[columns].median()
        data["label"] = data[keys].astype(str).agg("/".join, axis=1)
    failures = data["map_failures"].astype(float).fillna(0)
    fig, axes = plt.subplots(1, 2, figsize=(13, max(3.0, 0.24 * len(data))))
    axes[0].barh(data["label"], failures, color=[variant_colour(k) for k in data["kernel"]])
    for y, value in enumerate(data["map_failures"].astype(float)):
        if pd.notna(value):
            axes[0].annotate(
                f"{value:,.0f}", (value, y), textcoords="offset points", xytext=(3, 0), va="center", fontsize=6
            )
    axes[0].set_xscale("symlog", linthresh=1)
    axes[0].set_xlim(0, max(float(failures.max()), 1.0) * 4)
    axes[0].set_title(
        "failed DMA maps " + ("per cell" if per_cell else "(median per kernel/pool/workload)") + ", log axis",
        fontsize=9,
    )
    throttled = data.get("high_throttle_count", pd.Series(0, index=data.index)).astype(float).fillna(0)
    wait_s = data.get("throttle_wait_ns", pd.Series(0, index=data.index)).astype(float).fillna(0) / 1e9
    axes[1].barh(data["label"], throttled, color="#1f77b4", label="throttled mappings")
    axes[1].set_xscale("symlog", linthresh=1)
    axes[1].set_xlim(0, max(float(throttled.max()), 1.0) * 4)
    twin = axes[1].twiny()
    twin.plot(wait_s, data["label"], "k.", label="throttle wait (s)")
    twin.set_xlabel("total throttle wait (s), dots", fontsize=8)
    axes[1].set_title("times the throttle engaged (bars, log axis)", fontsize=9, pad=30)
    axes[1].set_yticklabels([])
    fig.tight_layout()
    unread = int(data["map_failures"].isna().sum())
    caption = (
        (
            "Per cell"
            if per_cell
            else f"Per kernel, pool and workload (the median of its successful cells; there are {len(cells):,} cells)"
        )
        + ": failed DMA maps (left, the number at each bar) and how often the throttle engaged (right, bars) "
        "with the total time mappings waited on it (dots). Both axes are symmetric-logarithmic, so 0 stays 0 "
        "and a handful of failed maps shows next to thousands."
        + (
            f" {_count(unread, 'cell')} without a bar failed before their counters were read (named with their reason)."
            if per_cell and unread
            else ""
        )
        + f" Left out: {OWN_QUESTIONS}"
        + ("." if per_cell else ", and failed cells.")
    )
    return Figure(FIGURE_FAILURES, caption, _png(fig))


def _special_figures(cells: pd.DataFrame, ok: pd.DataFrame, plt: Any) -> list[Figure]:
    """One figure per question of its own: C9 (a slow neighbour), C10 (failing drivers), C13 (pool search)."""
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    out: list[Figure] = []
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
        boots = sum(len(r) for r in ratios.values())
        caption = (
            f"C9: per boot ({boots:,} boots), the fast NVMe disk's IOPS next to a slow neighbour as a fraction of "
            "the same disk alone in the same boot (left), and its p99 latency likewise (right, log axis); dots "
            "are boots, bars the median per kernel. Left out: boots without a neighbour, and cells of a pair "
            "whose other half failed."
        )
        out.append(Figure(FIGURE_NEIGHBOUR, caption, _png(fig)))
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
        caption = (
            f"C10: per disk whose driver fails a request on a failed map ({', '.join(FAILING_DRIVERS)}) and "
            "kernel, heavy load on the smallest pool the kernel ran there: failed maps (median per cell, left) "
            "and the share of cells with I/O errors, from fio or the kernel's log (right). Cells that failed "
            "only by a kernel report (a WARN) count, with their numbers. Left out: other workloads and pools, "
            "and cells that failed otherwise."
        )
        out.append(Figure(FIGURE_DRIVERS, caption, _png(fig)))
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
        caption = (
            f"C13: per workload and policy swept over 3 or more pools ({', '.join(POLICIES)}), the memory of "
            "the smallest pool from which on no cell failed a map or had a fio error (bar; a growing pool "
            f"counts what it grew to), and of the smallest whose median p99 is also within {P99_SLACK:.0%} of "
            "the largest pool's (x; grey where p99 varies more than that between repetitions, so the "
            "criterion cannot be decided). Left out: policies swept over fewer than 3 pools, and failed cells."
        )
        out.append(Figure(FIGURE_POOLS, caption, _png(fig)))
    return out


def _figure_legend(fig: Any, axes: Any, columns: int | None, below: float) -> None:
    """One legend for the whole figure, under it: every panel's entries once (a variant may have cells in
    some panels only), in at most ``columns`` columns (all in one row if None)."""
    handles: dict[str, Any] = {}
    for ax in axes.flat:
        for handle, name in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(name, handle)
    fig.legend(
        list(handles.values()),
        list(handles),
        loc="lower center",
        ncol=len(handles) if columns is None else min(len(handles), columns),
        fontsize=8,
        bbox_to_anchor=(0.5, -below),
    )
