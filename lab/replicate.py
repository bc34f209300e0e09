"""Replication as a verdict (``python -m lab replicate RUN_A RUN_B``): two runs of the same matrix, on two
machines or two days, judged claim by claim; a verdict only one of them reaches is published as "not
replicated", not as either side.  Failed maps are compared as rates, since raw counts scale with how fast
a host retries."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from lab.claims import NOT_TESTED, judge_all
from lab.errors import ConfigError
from lab.report import _md_table
from lab.store import RunStore, load_cells
from lab.util import atomic_write_text

DECIDED = frozenset({"supported", "contradicted"})
REPLICATED = "replicated"
NOT_REPLICATED = "not replicated"
UNDECIDED = "undecided in both"

REPLICATION_RULE = (
    f"A claim's verdict *{REPLICATED}* when both runs reach the same decided verdict (supported or "
    f"contradicted). It is *{NOT_REPLICATED}* when the runs decide it differently, or only one of them decides "
    f"it (the other is inconclusive or did not test it): such a verdict is published as not replicated, not as "
    f"either side. *{UNDECIDED}*: neither run decides it; *{NOT_TESTED}*: neither run had the cells it needs."
)


def replication(a: str, b: str) -> str:
    """The replication outcome of one claim judged ``a`` in one run and ``b`` in the other (REPLICATION_RULE)."""
    if a in DECIDED or b in DECIDED:
        return REPLICATED if a == b else NOT_REPLICATED
    return NOT_TESTED if a == b == NOT_TESTED else UNDECIDED


def failure_rates(cells: pd.DataFrame) -> pd.DataFrame:
    """Per kernel, pool and workload of the finished cells: how many cells, the share with any failed map,
    and the median of failed maps per completed I/O (comparable across hosts, unlike raw counts)."""
    ok = cells[cells["status"] == "ok"].copy()
    if ok.empty or "map_failures" not in ok:
        return pd.DataFrame(columns=["kernel", "pool_slabs_requested", "workload", "cells", "failing", "per_io"])
    ok["failing"] = ok["map_failures"].fillna(0) > 0
    ios = ok["fio_total_ios"].where(ok["fio_total_ios"] > 0)
    ok["per_io"] = ok["map_failures"] / ios
    keys = ["kernel", "pool_slabs_requested", "workload"]
    grouped = ok.groupby(keys)
    return pd.DataFrame(
        {"cells": grouped.size(), "failing": grouped["failing"].mean(), "per_io": grouped["per_io"].median()}
    ).reset_index()


@dataclass(frozen=True)
class Replication:
    claims: pd.DataFrame  # claim, A, B, outcome
    rates: pd.DataFrame  # kernel, pool, workload: cells, share failing and failed maps per I/O in A and B
    notes: tuple[str, ...]  # how the two runs differ beyond their hosts (matrix, lab revision)


def replicate(cells_a: pd.DataFrame, cells_b: pd.DataFrame, notes: tuple[str, ...] = ()) -> Replication:
    """Every claim judged on each run's cells alone, then side by side (by claim and scope; a claim one run
    judges and the other does not, such as series v2's when only one run had its cells, is not tested there)."""

    def verdicts(cells: pd.DataFrame) -> dict[tuple[str, str], str]:
        return {(v.claim, v.scope): v.verdict for v in judge_all(cells)}

    a, b = verdicts(cells_a), verdicts(cells_b)
    claims = pd.DataFrame(
        [
            {
                "claim": claim + (f" ({scope})" if scope else ""),
                "A": a.get((claim, scope), NOT_TESTED),
                "B": b.get((claim, scope), NOT_TESTED),
                "outcome": replication(a.get((claim, scope), NOT_TESTED), b.get((claim, scope), NOT_TESTED)),
            }
            for claim, scope in dict.fromkeys([*a, *b])
        ]
    )
    keys = ["kernel", "pool_slabs_requested", "workload"]
    rates = failure_rates(cells_a).merge(failure_rates(cells_b), on=keys, how="outer", suffixes=("_A", "_B"))
    return Replication(claims, rates.sort_values(keys).reset_index(drop=True), notes)


def _differences(a: dict[str, object], b: dict[str, object]) -> tuple[str, ...]:
    """How two runs' manifests differ beyond when they ran (a replication on two hosts differs in its host)."""
    notes = []
    if a.get("matrix") != b.get("matrix"):
        notes.append(f"matrix: A {a.get('matrix_name', '?')}, B {b.get('matrix_name', '?')} (definitions differ)")
    for key, what in (
        ("lab_revision", "lab revision"),
        ("host", "host"),
        ("qemu_version", "QEMU"),
        ("accel", "accelerator"),
    ):
        if a.get(key) != b.get(key):
            notes.append(f"{what}: A {a.get(key, '?')}, B {b.get(key, '?')}")
    return tuple(notes)


def replicate_runs(a: Path, b: Path, output: Path | None = None) -> tuple[Replication, Path]:
    """``replicate`` on two stored runs, written as Markdown (beside neither run unless asked)."""
    for run in (a, b):
        RunStore.open(run)
    cells_a, cells_b = load_cells(a), load_cells(b)
    if cells_a.empty or cells_b.empty:
        raise ConfigError(f"nothing to replicate: {a if cells_a.empty else b} has no finished cells")
    manifests = [json.loads((run / "manifest.json").read_text()) for run in (a, b)]
    result = replicate(cells_a, cells_b, _differences(*manifests))
    counts = result.claims["outcome"].value_counts()
    text = "\n".join(
        [
            f"# Replication of {a.name} (A) by {b.name} (B)",
            "",
            REPLICATION_RULE,
            "",
            ", ".join(f"{int(n)} {outcome}" for outcome, n in counts.items()) + ".",
            "",
            *([f"The runs differ in: {'; '.join(result.notes)}.", ""] if result.notes else []),
            "## Claims",
            "",
            _md_table(result.claims),
            "## Failed maps as rates",
            "",
            "Per group of finished cells: the share of cells with any failed map, and the median of failed maps "
            "per completed I/O.",
            "",
            _md_table(result.rates),
        ]
    )
    out = output or Path(f"replicate-{a.name}-vs-{b.name}.md")
    atomic_write_text(out, text)
    return result, out
