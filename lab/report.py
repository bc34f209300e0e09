"""Reports from stored results: the run summary, and the claims report: one model (sections of text,
tables and figures, numbers already in human units) rendered as Markdown and as self-contained HTML."""

from __future__ import annotations

import base64
import html
import json
import math
import numbers
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lab.claims import (
    NOT_TESTED,
    RULE_FIXED,
    Verdict,
    check_rules,
    crowded,
    figure_for,
    judge_all,
    like_with_like,
    scopes,
)
from lab.figures import PERFORMANCE_FIGURE as PERFORMANCE_FIGURE
from lab.figures import Figure, draw
from lab.figures import median_interval as median_interval
from lab.figures import variant_colour as variant_colour
from lab.matrix import DEFAULT_POOL
from lab.stats import EQUIVALENCE_TEXT, PAIRED_TEXT, THRESHOLDS_TEXT, Metric, compare_family
from lab.store import LOST, SKIPPED, load_cells, load_samples, write_parquet
from lab.util import atomic_write_bytes, atomic_write_text

COMPARED_METRICS = (
    ("fio_iops", True),
    ("fio_clat_p50_us", False),
    ("fio_clat_p99_us", False),
    ("fio_clat_p999_us", False),
    ("map_failures", False),
    ("hiwater_frac", False),
)
METRIC_NAMES = {
    "fio_iops": "IOPS",
    "fio_clat_p50_us": "p50 latency",
    "fio_clat_p99_us": "p99 latency",
    "fio_clat_p999_us": "p99.9 latency",
    "map_failures": "failed maps",
    "hiwater_frac": "hiwater / nslabs",
}


# --- numbers in human units ---------------------------------------------------------------------


def _missing_value(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def _fmt(value: Any, digits: int = 0) -> str:
    if _missing_value(value):
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _number(value: Any) -> str:
    """A number as a reader wants it: thousands separators, no exponent, as many decimals as it needs."""
    if _missing_value(value):
        return "-"
    if isinstance(value, bool | np.bool_):
        return str(value)
    if not isinstance(value, numbers.Real):
        return str(value)
    number = float(value)
    if number.is_integer():
        return f"{int(number):,}"
    if abs(number) >= 100:
        return f"{number:,.0f}"
    if abs(number) >= 1:
        return f"{number:,.2f}"
    return f"{number:.3f}"


def latency(us: Any) -> str:
    """A latency in µs, or in ms from 10 ms on, with thousands separators: 734 µs, 1,061.2 ms."""
    if _missing_value(us):
        return "-"
    value = float(us)
    return f"{value / 1e3:,.1f} ms" if abs(value) >= 10_000 else f"{value:,.0f} µs"


def metric_value(metric: str, value: Any) -> str:
    """One compared metric's value in its unit."""
    if _missing_value(value):
        return "-"
    if metric.startswith("fio_clat"):
        return latency(value)
    if metric == "hiwater_frac":
        return f"{float(value) * 100:.1f}%"
    return _number(value)


def _p_value(p: Any) -> str:
    if _missing_value(p):
        return "-"
    return "< 0.001" if float(p) < 0.001 else f"{float(p):.3f}"


def _pct(value: Any, signed: bool = False) -> str:
    if _missing_value(value):
        return "-"
    return f"{float(value):+.1f}%" if signed else f"{float(value):.1f}%"


def _pool(requested: Any, actual: Any) -> str:
    """The pool a cell asked for and the one it had (a growing pool: the largest size it had)."""
    asked = "default" if requested == DEFAULT_POOL else _number(requested)
    return f"{asked} → {_number(actual)}"


# --- the report model ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Table:
    """Rows of cells already formatted, in the inline markup (``**strong**``, ``*em*``, `` `code` ``,
    ``[text](href)``); ``classes`` gives each row a CSS class (the claims table: its verdict)."""

    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    id: str = ""
    classes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Bullets:
    items: tuple[str, ...]


Block = str | Table | Bullets | Figure  # a str is a paragraph


@dataclass(frozen=True)
class Section:
    title: str
    blocks: tuple[Block, ...]


@dataclass(frozen=True)
class Report:
    title: str
    intro: tuple[Block, ...]
    sections: tuple[Section, ...] = field(default_factory=tuple)


NONE = "_none_"


def frame_table(frame: pd.DataFrame, id: str = "") -> Table:
    """A table of a frame's values, numbers in human units (a latency column in µs as a latency)."""
    rows = []
    for values in frame.itertuples(index=False):
        rows.append(
            tuple(
                latency(v)
                if str(c).startswith("fio_clat") and str(c).endswith("_us")
                else _number(v)
                if isinstance(v, numbers.Real) and not isinstance(v, bool | np.bool_)
                else _fmt(v)
                for c, v in zip(frame.columns, values, strict=True)
            )
        )
    return Table(tuple(str(c) for c in frame.columns), tuple(rows), id)


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
                        "variant_ci95": f"[{metric_value(c.metric, c.candidate.ci_low)}, "
                        f"{metric_value(c.metric, c.candidate.ci_high)}]",
                        "variant_ci_low": c.candidate.ci_low,
                        "variant_ci_high": c.candidate.ci_high,
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
                "rule": v.rule,
            }
            for v in verdicts
        ]
    )


# --- the sections -------------------------------------------------------------------------------------


def _cell_link(cell_id: str) -> str:
    return f"[{cell_id}](cells/{cell_id}/cell.json)"


def _figure_link(name: str) -> str:
    return f"[{name}](figures/{name})"


def summary_line(cells: pd.DataFrame) -> str:
    """ "18 cells, 2 failed", and the skipped and lost cells, which are neither failures nor findings."""
    status = cells["status"] if not cells.empty and "status" in cells else pd.Series(dtype=str)
    failed, skipped, lost = (int((status == s).sum()) for s in ("failed", SKIPPED, LOST))
    return (
        f"{len(cells):,} cells, {failed:,} failed"
        + (
            f", {skipped:,} skipped (platform not offered by this host: neither a failure nor a finding)"
            if skipped
            else ""
        )
        + (
            f", {lost:,} lost to the infrastructure (worker or host gone: neither a failure nor a finding; "
            "--resume runs them)"
            if lost
            else ""
        )
        + "."
    )


SUMMARY_COLUMNS = (
    ("kernel", "kernel"),
    ("pool (slabs req → actual)", None),
    ("device", "device"),
    ("workload", "workload"),
    ("hiwater / nslabs", None),
    ("map failures", "map_failures"),
    ("fio IOPS", "fio_iops"),
    ("p99 clat", "fio_clat_p99_us"),
    ("fio errors", "fio_errors"),
    ("status", None),
)
SUMMARY_MAX_ROWS = 200  # above this, the summary shows one row per kernel/pool/device/workload


def _cell_values(row: Mapping[str, Any]) -> dict[str, str]:
    """One cell's row of the summary and the report, formatted: the pool it asked for and the largest it had,
    the high-water mark against that, latencies in ms or µs."""
    ok = row.get("status") == "ok"
    # A dynamic pool grows during the cell: show the largest size it had, as hiwater_frac does.
    sizes = [float(row[k]) for k in ("nslabs", "nslabs_after") if ok and pd.notna(row.get(k))]
    nslabs = max(sizes) if sizes else None
    frac = row.get("hiwater_frac") if ok else None
    pct = f" ({float(frac) * 100:,.0f}%)" if frac is not None and pd.notna(frac) else ""
    status = row.get("status")
    if status == SKIPPED:
        shown = f"skipped: {row.get('failure_detail', '')}"
    elif status == LOST:
        shown = f"lost (infrastructure): {row.get('failure_detail', '')}"
    else:
        shown = "ok" if ok else f"**failed: {row.get('failure_reason', '')}**"
    return {
        "kernel": str(row.get("kernel", "-")),
        "pool": _pool(row.get("pool_slabs_requested"), nslabs),
        "device": str(row.get("device", "-")),
        "workload": str(row.get("workload", "-")),
        "hiwater": f"{_number(row.get('hiwater') if ok else None)} / {_number(nslabs)}{pct}",
        "map_failures": _number(row.get("map_failures")) if ok else "-",
        "throttled": _number(row.get("high_throttle_count")) if ok else "-",
        "fio_iops": _number(row.get("fio_iops")) if ok else "-",
        "fio_clat_p99_us": latency(row.get("fio_clat_p99_us")) if ok else "-",
        "fio_errors": _number(row.get("fio_errors")) if ok else "-",
        "status": shown,
    }


CELL_READS = (
    "cell_id",
    "status",
    "failure_reason",
    "failure_detail",
    "kernel",
    "pool_slabs_requested",
    "nslabs",
    "nslabs_after",
    "device",
    "workload",
    "hiwater",
    "hiwater_frac",
    "map_failures",
    "high_throttle_count",
    "fio_iops",
    "fio_clat_p99_us",
    "fio_errors",
)


def _sorted_cells(cells: pd.DataFrame) -> pd.DataFrame:
    """The columns ``_cell_values`` reads, in the report's order of cells."""
    keys = [k for k in ("kernel", "pool_slabs_requested", "device", "workload", "repetition") if k in cells]
    ordered = cells.sort_values(keys) if keys else cells
    return ordered[[c for c in CELL_READS if c in ordered]]


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
    rows = tuple(
        (
            str(row.kernel),
            _number(row.pool_slabs_requested),
            str(row.device),
            str(row.workload),
            _number(row.cells),
            _number(row.failed),
            _pct(row.hiwater_frac * 100 if pd.notna(row.hiwater_frac) else None),
            _number(row.map_failures),
            _number(row.fio_iops),
            latency(row.fio_clat_p99_us),
            _number(row.fio_errors),
        )
        for row in table.itertuples(index=False)
    )
    columns = (
        "kernel",
        "pool (slabs)",
        "device",
        "workload",
        "cells ok",
        "failed",
        "median hiwater/nslabs",
        "median map failures",
        "median IOPS",
        "median p99",
        "fio errors",
    )
    intro = f"{len(cells):,} cells, summarised per kernel/pool/device/workload (medians over ok cells):"
    return intro + "\n\n" + markdown_table(Table(columns, rows))


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
    ]
    if cells.empty:
        return "\n".join([*lines, "_no cells finished_"]) + "\n"
    if len(cells) > SUMMARY_MAX_ROWS:
        return "\n".join([*lines, _grouped_summary(cells)]) + "\n"
    keys = ("kernel", "pool", "device", "workload", "hiwater", "map_failures", "fio_iops", "fio_clat_p99_us")
    rows = []
    for row in _sorted_cells(cells).to_dict("records"):  # dicts: Series.get per value is slow at 10,000 rows
        values = _cell_values(row)
        rows.append((*(values[k] for k in keys), values["fio_errors"], values["status"]))
    table = Table(tuple(n for n, _ in SUMMARY_COLUMNS), tuple(rows))
    return "\n".join([*lines, markdown_table(table).rstrip("\n"), "", summary_line(cells)]) + "\n"


def series_tables(cells: pd.DataFrame) -> list[tuple[str, str, pd.DataFrame]]:
    """The series-comparison tables (lab.series) that this run has cells for."""
    from lab.series import SERIES_TABLES

    found = [(title, note, make(cells)) for title, note, make in SERIES_TABLES]
    return [(title, note, table) for title, note, table in found if not table.empty]


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
    is judged within one of these rows' hosts; a run on one machine has one row.  Rows from before the
    host_id and platform columns name the host by its ``host`` column and the platform by the accelerator."""
    if cells.empty or "status" not in cells:
        return pd.DataFrame()
    ran = cells[~cells["status"].isin((SKIPPED, LOST))]
    if ran.empty:
        return pd.DataFrame()
    fallback = {"host_id": "host", "platform": "accel"}
    for column, older in fallback.items():
        before = ran.get(older, pd.Series("this host", index=ran.index)).fillna("this host")
        ran = ran.assign(**{column: ran[column].fillna(before) if column in ran else before})
    keys = [c for c in HOST_COLUMNS if c in ran]
    table = ran[keys].astype(str).drop_duplicates(subset=["host_id", "platform"]).set_index(["host_id", "platform"])
    counts = ran.groupby(["host_id", "platform"])["status"].value_counts().unstack(fill_value=0)
    table["cells ok"] = counts.get("ok", 0)
    table["cells failed"] = counts.get("failed", 0)
    return table.reset_index()


def _claims_table(verdicts: Sequence[Verdict], figure_names: Sequence[str]) -> Table:
    rows, classes = [], []
    for v in verdicts:
        evidence = ", ".join(_cell_link(c) for c in v.evidence[:6]) + (
            f" and {len(v.evidence) - 6:,} more" if len(v.evidence) > 6 else ""
        )
        figure = figure_for(v.claim)
        where = f" ({v.scope})" if v.scope else ""
        rows.append(
            (
                f"**{v.claim}**{where} {v.text}",
                f"**{v.verdict}**" + (f" ({v.rule})" if v.rule and v.rule != RULE_FIXED else ""),
                v.metric,
                v.threshold,
                v.detail,
                evidence or "-",
                _figure_link(figure) if figure in figure_names else "-",
            )
        )
        classes.append(v.verdict.replace(" ", "-"))
    columns = ("claim", "verdict", "metric", "threshold", "measured", "evidence", "figure")
    return Table(columns, tuple(rows), "claims", tuple(classes))


def _statistics_table(rows: Sequence[dict[str, Any]]) -> Table:
    """The comparisons, each value in its metric's unit."""
    scoped = any(row.get("scope") for row in rows)
    columns = (
        *(("scope",) if scoped else ()),
        "pool (slabs)",
        "workload",
        "variant vs baseline",
        "metric",
        "baseline median (RSD)",
        "variant median (RSD)",
        "variant 95% CI",
        "n",
        "change",
        "p (Holm)",
        "p (raw)",
        "conclusion",
        "repetitions needed",
        "cells compared",
    )
    out = []
    for row in rows:
        metric = str(row["metric"])
        low, high = row.get("variant_ci_low"), row.get("variant_ci_high")
        interval = (
            f"{metric_value(metric, low)} to {metric_value(metric, high)}"
            if not _missing_value(low) and not _missing_value(high)
            else "-"
        )
        out.append(
            (
                *((str(row.get("scope") or "-"),) if scoped else ()),
                _number(row["pool_slabs"]),
                str(row["workload"]),
                f"{row['variant']} vs {row['baseline']}",
                METRIC_NAMES.get(metric, metric),
                f"{metric_value(metric, row['baseline_median'])} ({_pct(row['baseline_rsd_pct'])})",
                f"{metric_value(metric, row['variant_median'])} ({_pct(row['variant_rsd_pct'])})",
                interval,
                str(row["n"]),
                _pct(row["change_pct"], signed=True),
                _p_value(row["p_value"]),
                _p_value(row["p_raw"]),
                f"*{row['conclusion']}*",
                _number(row["reps_needed"]),
                str(row["cells"]),
            )
        )
    return Table(columns, tuple(out), "statistics")


CELL_COLUMNS = (
    "cell",
    "status",
    "kernel",
    "pool (slabs req → actual)",
    "device",
    "workload",
    "hiwater / nslabs",
    "map failures",
    "throttled",
    "fio IOPS",
    "p99 clat",
    "fio errors",
)


def _cells_table(cells: pd.DataFrame) -> Table:
    keys = ("status", "kernel", "pool", "device", "workload", "hiwater", "map_failures", "throttled", "fio_iops")
    rows = []
    for row in _sorted_cells(cells).to_dict("records"):
        values = _cell_values(row)
        rows.append(
            (
                _cell_link(str(row["cell_id"])),
                *(values[k] for k in keys),
                values["fio_clat_p99_us"],
                values["fio_errors"],
            )
        )
    return Table(CELL_COLUMNS, tuple(rows), "cells")


def report_model(
    manifest: dict[str, Any],
    cells: pd.DataFrame,
    verdicts: Sequence[Verdict],
    comparison_rows: Sequence[dict[str, Any]],
    figures: Sequence[Figure | str],
) -> Report:
    """The claims report as one value, which ``markdown`` and ``html_page`` render alike."""
    drawn = [f if isinstance(f, Figure) else Figure(f, "") for f in figures]
    names = [f.name for f in drawn]
    status = cells["status"] if not cells.empty and "status" in cells else pd.Series(dtype=str)
    intro: list[Block] = [
        f"Run `{manifest.get('run_id', '?')}`, lab revision `{manifest.get('lab_revision', '?')}`, QEMU "
        f"{manifest.get('qemu_version', '?')}, accelerator **{manifest.get('accel', '?')}**, "
        f"{manifest.get('host_cpus', '?')} host CPUs, matrix `{manifest.get('matrix_name', '?')}`, status "
        f"{manifest.get('status', '?')}.",
        summary_line(cells),
    ]
    if manifest.get("mixed_batches"):
        intro.append(
            f"**Warning: this run mixes batches** ({manifest['mixed_batches']}; resumed at "
            f"`{manifest.get('resumed_lab_revision', '?')}` with --mix-batches): its cells' `lab_revision` "
            "says which batch each is from, and comparisons across them are not one run's."
        )
    beside_others = crowded(cells)
    if beside_others.any():
        intro.append(
            f"**Warning: {int(beside_others.sum())} of {len(cells)} cells ran with more guests at once than their "
            f"host has cores** ({manifest.get('contention') or 'see host_guest_slots and host_cpus in their rows'}); "
            "their IOPS and latencies measure the host's scheduler too."
        )
    sections: list[Section] = []
    gate = manifest.get("nightly") or {}
    if "exit_code" in gate:
        outcome = {0: "passed", 1: "REGRESSION", 3: "no usable result"}.get(int(gate["exit_code"]), "?")
        tree = f"; kernel tree `{gate['tree']}` at `{gate.get('tree_describe', '?')}`" if gate.get("tree") else ""
        sections.append(
            Section(
                "Nightly gate",
                (
                    f"**{outcome}** (exit {gate['exit_code']}): {gate.get('summary', '')}",
                    f"Baseline night: `{gate.get('baseline') or 'none (this night is the baseline)'}`; "
                    f"regressions: {gate.get('regressions', 0)}"
                    f"{tree}. The per-comparison results are in `junit.xml` beside this report.",
                ),
            )
        )
    hosts = hosts_table(cells)
    sections.append(
        Section(
            "Hosts",
            (
                "Each claim is judged within one host and platform (its row says which when the run had "
                "several); cells are never compared across hosts.",
                frame_table(hosts, "hosts") if not hosts.empty else "_no cell ran_",
            ),
        )
    )
    counted = pd.Series([v.verdict for v in verdicts], dtype=object).value_counts()
    tally = ", ".join(f"{int(n)} {verdict}" for verdict, n in counted.items())
    claims_note = (
        f"{len(verdicts)} claims: {tally}. *{NOT_TESTED}*: this matrix had none of the cells the claim needs; "
        "*inconclusive*: it had them, and they do not decide it (the row says why). "
        + (
            "Each claim's rule (its text, metric and threshold) was stored when the run started; a verdict "
            "whose rule changed since, or that had none, says it is exploratory."
            if any(v.rule for v in verdicts)
            else "This run predates stored rules: which rules were fixed before it is not known."
        )
        if verdicts
        else "No claims judged: no cell finished."
    )
    sections.append(Section("Claims", (claims_note, _claims_table(verdicts, names))))
    for title, note, table in series_tables(cells):
        sections.append(Section(title, (note, frame_table(table))))
    sections.append(
        Section(
            "Statistics",
            (
                THRESHOLDS_TEXT,
                PAIRED_TEXT,
                EQUIVALENCE_TEXT,
                _statistics_table(comparison_rows) if comparison_rows else NONE,
            ),
        )
    )
    failed = cells[status == "failed"]
    sections.append(
        Section(
            "Failed cells",
            (Bullets(tuple(f"{_cell_link(r['cell_id'])}: {r['failure_reason']}" for _, r in failed.iterrows())),)
            if not failed.empty
            else (NONE,),
        )
    )
    retried = cells[cells["boot_retries"].fillna(0) > 0] if "boot_retries" in cells else cells.iloc[0:0]
    if not retried.empty:
        items = tuple(
            f"{_cell_link(r['cell_id'])} ({r['status']}): {r['boot_retry_reason']}" for _, r in retried.iterrows()
        )
        note = (
            "A boot that panicked or hung before SSH is tried once more (the emulator, not the kernel, can be at "
            "fault under TCG); these cells ran on the second boot. Each first boot's console is kept in the "
            "run's `boots/` directory."
        )
        sections.append(Section("Boots tried twice", (note, Bullets(items))))
    skipped = cells[status == SKIPPED]
    if not skipped.empty:
        note = (
            "Their platform is not offered by the host that ran this matrix; they are neither failures nor "
            "findings, and `--resume` on a host that offers it runs them."
        )
        items = tuple(f"{len(g):,} cell(s): {reason}" for reason, g in skipped.groupby("failure_detail"))
        sections.append(Section("Skipped cells", (note, Bullets(items))))
    lost = cells[status == LOST]
    if not lost.empty:
        note = (
            "Their boot group was lost with its worker or host, or failed outside the guest; they are neither "
            "failures nor findings, and `--resume` runs them again."
        )
        items = tuple(f"{_cell_link(r['cell_id'])}: {r['failure_detail']}" for _, r in lost.iterrows())
        sections.append(Section("Lost cells (infrastructure)", (note, Bullets(items))))
    sections.append(Section("Figures", tuple(drawn) if drawn else (NONE,)))
    sections.append(Section("Cells", (_cells_table(cells),) if not cells.empty else (NONE,)))
    title = f"swiotlb throttling: measured verdicts (run {manifest.get('run_id', '?')})"
    return Report(title, tuple(intro), tuple(sections))


# --- rendering ----------------------------------------------------------------------------------------


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(table: Table) -> str:
    if not table.rows:
        return NONE + "\n"
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in table.rows]
    return "\n".join(lines) + "\n"


def _md_table(frame: pd.DataFrame) -> str:
    """A frame as a Markdown table, numbers in human units (``lab compare`` uses it too)."""
    return markdown_table(frame_table(frame)) if not frame.empty else NONE + "\n"


def _markdown_block(block: Block) -> str:
    if isinstance(block, Table):
        return markdown_table(block).rstrip("\n")
    if isinstance(block, Bullets):
        return "\n".join(f"- {item}" for item in block.items)
    if isinstance(block, Figure):
        return f"![{block.name}](figures/{block.name})" + (f"\n\n{block.caption}" if block.caption else "")
    return block


def markdown(report: Report) -> str:
    parts = [f"# {report.title}", *(_markdown_block(b) for b in report.intro)]
    for section in report.sections:
        parts += [f"## {section.title}", *(_markdown_block(b) for b in section.blocks)]
    return "\n\n".join(parts) + "\n"


_CODE = re.compile(r"(`[^`]+`)")
_LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)")
_STRONG = re.compile(r"\*\*(.+?)\*\*")
_EM = re.compile(r"(?<![\w*])[*_](?![\s*])(.+?)(?<![\s*])[*_](?![\w*])")


def _href(target: str) -> str:
    # The HTML page carries its figures inline: a link to a figure's file goes to the figure on the page.
    return f"#fig-{target.removeprefix('figures/')}" if target.startswith("figures/") else target


def inline_html(text: str) -> str:
    """The inline markup (``**strong**``, ``*em*`` or ``_em_``, `` `code` ``, ``[text](href)``) as HTML."""
    if not any(mark in text for mark in "*_`["):
        return html.escape(text)
    out = []
    for piece in _CODE.split(text):
        if piece.startswith("`") and piece.endswith("`") and len(piece) > 1:
            out.append(f"<code>{html.escape(piece[1:-1])}</code>")
            continue
        escaped = html.escape(piece, quote=False)
        escaped = _LINK.sub(lambda m: f"<a href='{html.escape(_href(m.group(2)))}'>{m.group(1)}</a>", escaped)
        escaped = _STRONG.sub(r"<strong>\1</strong>", escaped)
        out.append(_EM.sub(r"<em>\1</em>", escaped))
    return "".join(out)


def html_table(table: Table) -> str:
    if not table.rows:
        return f"<p>{inline_html(NONE)}</p>"
    head = "".join(f"<th>{html.escape(c)}</th>" for c in table.columns)
    classes = table.classes or ("",) * len(table.rows)
    body = "\n".join(
        (f"<tr class='{html.escape(cls)}'>" if cls else "<tr>")
        + "".join(f"<td>{inline_html(c)}</td>" for c in row)
        + "</tr>"
        for row, cls in zip(table.rows, classes, strict=True)
    )
    ident = f" id='{html.escape(table.id)}'" if table.id else ""
    return f"<div class='table'><table{ident}><thead><tr>{head}</tr></thead>\n<tbody>{body}</tbody></table></div>"


def _html_block(block: Block, pngs: dict[str, bytes]) -> str:
    if isinstance(block, Table):
        return html_table(block)
    if isinstance(block, Bullets):
        return "<ul>" + "".join(f"<li>{inline_html(item)}</li>" for item in block.items) + "</ul>"
    if isinstance(block, Figure):
        data = block.png or pngs.get(block.name, b"")
        source = f"data:image/png;base64,{base64.b64encode(data).decode()}" if data else f"figures/{block.name}"
        return (
            f"<figure id='fig-{html.escape(block.name)}'><img alt='{html.escape(block.name)}' src='{source}'>"
            f"<figcaption>{inline_html(block.caption)}</figcaption></figure>"
        )
    return f"<p>{inline_html(block)}</p>"


HTML_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1400px;padding:0 1em;color:#222;box-sizing:border-box}
.table{max-width:100%;overflow-x:auto}
table{border-collapse:collapse;margin:1em 0;font-size:13px;max-width:100%}
td,th{border:1px solid #ccc;padding:4px 6px;vertical-align:top;overflow-wrap:break-word}
th{background:#f3f3f3;text-align:left}
#statistics,#cells{font-size:12px}
#claims td:first-child{min-width:13em}
#claims td:nth-child(2){white-space:nowrap}
#claims td:nth-child(4),#claims td:nth-child(5){min-width:16em}
#claims td:nth-child(6),#claims td:nth-child(7),#cells td:first-child{overflow-wrap:anywhere;min-width:8em}
.supported{background:#e3f6e3}.contradicted{background:#fbe3e3}.inconclusive{background:#f6f3dc}
.not-tested{background:#eeeeee;color:#555}
img{max-width:100%;border:1px solid #ddd;margin:0.5em 0}
figcaption{font-size:13px;color:#444;max-width:60em}
code{background:#f5f5f5;padding:0 3px}
"""


def html_page(report: Report, pngs: dict[str, bytes] | None = None) -> str:
    pngs = pngs or {}
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>{html.escape(report.title)}</title>",
        f"<style>{HTML_STYLE}</style></head><body>",
        f"<h1>{inline_html(report.title)}</h1>",
        *(_html_block(b, pngs) for b in report.intro),
    ]
    for section in report.sections:
        parts.append(f"<h2>{inline_html(section.title)}</h2>")
        parts += [_html_block(b, pngs) for b in section.blocks]
    parts.append("</body></html>")
    return "\n".join(parts)


def report_markdown(
    manifest: dict[str, Any],
    cells: pd.DataFrame,
    verdicts: list[Verdict],
    comparison_rows: list[dict[str, Any]],
    figures: Sequence[Figure | str],
) -> str:
    return markdown(report_model(manifest, cells, verdicts, comparison_rows, figures))


def report_html(
    manifest: dict[str, Any],
    cells: pd.DataFrame,
    verdicts: list[Verdict],
    comparison_rows: list[dict[str, Any]],
    figures: Sequence[Figure] | dict[str, bytes],
) -> str:
    drawn = [Figure(n, "", p) for n, p in figures.items()] if isinstance(figures, dict) else list(figures)
    return html_page(report_model(manifest, cells, verdicts, comparison_rows, drawn))


def figures(cells: pd.DataFrame, samples: pd.DataFrame) -> dict[str, bytes]:
    """PNG figures keyed by file name (``lab.figures.draw`` has their captions)."""
    return {f.name: f.png for f in draw(cells, samples)}


def run_verdicts(cells: pd.DataFrame, manifest: dict[str, Any]) -> list[Verdict]:
    """A run's verdicts as its report states them: judged on its cells, each marked with whether its rule is
    the one the run fixed when it started (the manifest's ``rules``)."""
    return check_rules(judge_all(cells), manifest.get("rules")) if not cells.empty else []


def build_report(run_dir: Path, output: Path | None = None) -> dict[str, Path]:
    """Write report.md, report.html, figures/*.png and the tables they came from into ``output`` (by
    default ``run_dir``: the run's own report, as a run writes it at its end)."""
    manifest = json.loads((run_dir / "manifest.json").read_text())
    cells = load_cells(run_dir)
    samples = load_samples(run_dir)
    verdicts = run_verdicts(cells, manifest)
    comparison_rows = comparisons(cells) if not cells.empty else []
    drawn = draw(cells, samples) if not cells.empty else []
    out = output or run_dir
    written: dict[str, Path] = {}
    for figure in drawn:
        atomic_write_bytes(out / "figures" / figure.name, figure.png)
        written[figure.name] = out / "figures" / figure.name
    write_parquet(out / "claims.parquet", claims_frame(verdicts))
    write_parquet(out / "comparisons.parquet", pd.DataFrame(comparison_rows))
    model = report_model(manifest, cells, verdicts, comparison_rows, drawn)
    atomic_write_text(out / "report.md", markdown(model))
    atomic_write_text(out / "report.html", html_page(model))
    written.update(md=out / "report.md", html=out / "report.html")
    return written
