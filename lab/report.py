"""Reports from stored results: the Markdown summary printed at the end of a run."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd


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


def summary_markdown(cells: pd.DataFrame, run_dir: str, manifest: dict[str, Any]) -> str:
    """A compact Markdown table of every cell, with the run's provenance."""
    lines = [
        f"# swiotlb-lab run {manifest.get('run_id', '?')}",
        "",
        f"- results: `{run_dir}`",
        f"- matrix: {manifest.get('matrix_name', '?')} — {manifest.get('matrix_description', '')}",
        f"- lab revision {manifest.get('lab_revision', '?')}, QEMU {manifest.get('qemu_version', '?')}, "
        f"accelerator {manifest.get('accel', '?')}, host CPUs {manifest.get('host_cpus', '?')}",
        f"- status: {manifest.get('status', '?')}",
        "",
        "| " + " | ".join(name for name, _ in SUMMARY_COLUMNS) + " |",
        "|" + "---|" * len(SUMMARY_COLUMNS),
    ]
    if cells.empty:
        return "\n".join([*lines, "", "_no cells finished_"]) + "\n"
    for _, row in cells.sort_values(["kernel", "pool_slabs_requested", "device", "workload", "repetition"]).iterrows():
        ok = row.get("status") == "ok"
        nslabs = row.get("nslabs") if ok else None
        hiwater = row.get("hiwater") if ok else None
        values = []
        for name, key in SUMMARY_COLUMNS:
            if name.startswith("pool"):
                values.append(f"{_fmt(row['pool_slabs_requested'])} → {_fmt(nslabs)}")
            elif name.startswith("hiwater"):
                frac = row.get("hiwater_frac") if ok else None
                values.append(f"{_fmt(hiwater)} / {_fmt(nslabs)} ({_fmt(frac * 100 if frac is not None else None)}%)")
            elif name == "status":
                values.append("ok" if ok else f"**failed: {row.get('failure_reason', '')}**")
            elif key in ("fio_iops", "fio_clat_p99_us"):
                values.append(_fmt(float(row[key]) if ok else None))
            else:
                values.append(_fmt(row.get(key)) if ok or key in ("kernel", "device", "workload") else "-")
        lines.append("| " + " | ".join(values) + " |")
    failed = int((cells["status"] != "ok").sum())
    lines += ["", f"{len(cells)} cells, {failed} failed."]
    return "\n".join(lines) + "\n"
