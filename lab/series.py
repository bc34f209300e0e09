"""Tables that compare revisions of the throttling series: overshoot past the threshold by version and
pool, the v2 timeout sweep, and the outcome of error recovery under throttling.  Medians over the ok
cells of each group; every table says how many cells it rests on."""

from __future__ import annotations

import pandas as pd

from lab.matrix import timeout_label

SERIES_KERNELS = ("throttle", "throttle-v2", "throttle-dynamic", "throttle-v2-dynamic", "throttle-v2-debug")


def _without_faults(cells: pd.DataFrame) -> pd.DataFrame:
    """Cells with no error-recovery fault: a fault's reset, stall or unplug is not the throttle's doing."""
    return cells[~cells.get("fault", pd.Series("", index=cells.index)).fillna("").astype(bool)]


def _has(cells: pd.DataFrame, *columns: str) -> bool:
    return not cells.empty and all(c in cells for c in columns)


def overshoot_table(cells: pd.DataFrame) -> pd.DataFrame:
    """Slabs above high_throttle at the high-water mark, per series kernel, pool, workload and vCPUs."""
    if not _has(cells, "hiwater", "high_throttle", "kernel"):
        return pd.DataFrame()
    ok = cells[(cells["status"] == "ok") & cells["kernel"].isin(SERIES_KERNELS) & cells["high_throttle"].notna()]
    ok = _without_faults(ok)
    if ok.empty:
        return pd.DataFrame()
    timeouts = ok.get("throttle_timeout_ms", pd.Series(float("nan"), index=ok.index))
    ok = ok.assign(overshoot=ok["hiwater"] - ok["high_throttle"], timeout=timeouts.map(timeout_label))
    table = ok.groupby(["kernel", "pool_slabs_requested", "workload", "vcpus", "timeout"]).agg(
        cells=("cell_id", "count"),
        high_throttle=("high_throttle", "median"),
        overshoot_median=("overshoot", "median"),
        overshoot_max=("overshoot", "max"),
        map_failures_median=("map_failures", "median"),
        iops_median=("fio_iops", "median"),
        p99_ms_median=("fio_clat_p99_us", lambda v: v.median() / 1e3),
    )
    return table.reset_index()


def timeout_table(cells: pd.DataFrame) -> pd.DataFrame:
    """The v2 timeout sweep: per kernel, pool and throttle_timeout_ms, what the bound bought."""
    if not _has(cells, "throttle_timeout_ms", "kernel"):
        return pd.DataFrame()
    ok = cells[(cells["status"] == "ok") & cells["throttle_timeout_ms"].notna()]
    ok = _without_faults(ok)
    if ok.empty:
        return pd.DataFrame()
    ok = ok.assign(
        timeout=ok["throttle_timeout_ms"].map(timeout_label),
        grown=ok["nslabs_after"].fillna(ok["nslabs"]) - ok["nslabs"],
    )
    table = ok.groupby(["kernel", "pool_slabs_requested", "workload", "throttle_timeout_ms", "timeout"]).agg(
        cells=("cell_id", "count"),
        iops_median=("fio_iops", "median"),
        p99_ms_median=("fio_clat_p99_us", lambda v: v.median() / 1e3),
        map_failures_median=("map_failures", "median"),
        timeouts_median=("throttle_timeouts", "median"),
        wait_ms_median=("throttle_wait_ns", lambda v: v.median() / 1e6),
        pool_growth_slabs=("grown", "max"),
    )
    return table.reset_index().drop(columns=["throttle_timeout_ms"])


def recovery_table(cells: pd.DataFrame) -> pd.DataFrame:
    """Per kernel, device and fault: how many cells recovered (fio ended, no checker report) and how the
    others ended (timeout = fio never finished: the guest hung)."""
    if not _has(cells, "fault"):
        return pd.DataFrame()
    faulted = cells[cells["fault"].fillna("").astype(bool)]
    if faulted.empty:
        return pd.DataFrame()
    rows = []
    for (kernel, device, fault), group in faulted.groupby(["kernel", "device", "fault"]):
        failed = group[group["status"] != "ok"]
        reasons = failed["failure_reason"].value_counts()
        rows.append(
            {
                "kernel": kernel,
                "device": device,
                "fault": fault,
                "cells": len(group),
                "recovered": int((group["status"] == "ok").sum()),
                "failed": ", ".join(f"{n}x {r}" for r, n in reasons.items()) or "-",
                "hung_tasks": int(group.get("hung_tasks", pd.Series(0, index=group.index)).fillna(0).sum()),
                "fio_errors_median": group["fio_errors"].median() if "fio_errors" in group else None,
                "device_after": ", ".join(
                    f"{n}x {v}"
                    for v, n in group.get("device_after", pd.Series(dtype=str)).fillna("unknown").value_counts().items()
                )
                or "-",
                "fault_errors": int(group.get("fault_error", pd.Series(dtype=str)).fillna("").astype(bool).sum()),
            }
        )
    return pd.DataFrame(rows)


SERIES_TABLES = (
    (
        "Overshoot past the throttle threshold, by series version",
        "hiwater - high_throttle in slabs (median and max over ok cells without a fault); v1 = throttle, "
        "v2 = throttle-v2 (whole-list charge, pending slots counted, hand-on after wake-up).",
        overshoot_table,
    ),
    (
        "Series v2: the throttle's wait bound (throttle_timeout_ms)",
        "0 ms never waits (like plain swiotlb), none waits without a bound (like v1); a timed-out wait maps as "
        "without a throttle: a fixed pool may fail the mapping, a dynamic pool may grow.",
        timeout_table,
    ),
    (
        "Error recovery with mappings asleep on the throttle",
        "A fault during the heavy load on a throttled pool: reset = reset_controller through sysfs; io-timeout = "
        "backend stalled at 8 IOPS under a 2 s block-layer timeout; unplug = QMP device_del.  Recovered: fio "
        "ended and no kernel checker reported; timeout: fio never ended (the guest hung).",
        recovery_table,
    ),
)
