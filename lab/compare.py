"""Two runs side by side: per kernel, pool and workload, every compared metric of B against A."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from lab.claims import like_with_like
from lab.errors import ConfigError
from lab.replicate import replicate
from lab.report import COMPARED_METRICS, _md_table
from lab.stats import THRESHOLDS_TEXT, Metric, compare_family
from lab.store import RunStore, load_cells
from lab.util import atomic_write_text


def compare_runs(a: Path, b: Path, output: Path | None = None) -> Path:
    RunStore.open(a), RunStore.open(b)
    cells_a, cells_b = load_cells(a), load_cells(b)
    if cells_a.empty or cells_b.empty:
        raise ConfigError(f"nothing to compare: {a if cells_a.empty else b} has no finished cells")
    ok_a = cells_a[cells_a["status"] == "ok"]
    ok_b = cells_b[cells_b["status"] == "ok"]
    rows = []
    keys = ["kernel", "pool_slabs_requested", "workload"]
    for key, group_b in ok_b.groupby(keys):
        group_a = ok_a[(ok_a[keys] == pd.Series(key, index=keys)).all(axis=1)]
        group_a, group_b, _ = like_with_like(group_a, group_b)
        family = compare_family(
            [Metric(m, group_a[m].tolist(), group_b[m].tolist(), higher) for m, higher in COMPARED_METRICS]
        )
        for c in family:
            rows.append(
                {
                    **dict(zip(keys, key, strict=True)),
                    "metric": c.metric,
                    "A_median": c.baseline.median,
                    "A_rsd_pct": c.baseline.rsd_pct,
                    "B_median": c.candidate.median,
                    "B_rsd_pct": c.candidate.rsd_pct,
                    "change_pct": c.change_pct,
                    "p_value": c.p_value,
                    "conclusion": c.conclusion,
                    "reps_needed": c.reps_needed,
                }
            )
    # Aligned by claim (two runs of different matrices judge different claims), with lab replicate's outcome.
    verdicts = replicate(cells_a, cells_b).claims
    text = "\n".join(
        [
            f"# Compare {a.name} (A) with {b.name} (B)",
            "",
            "## Claims",
            "",
            _md_table(verdicts),
            "## Metrics",
            "",
            THRESHOLDS_TEXT,
            "",
            _md_table(pd.DataFrame(rows)),
        ]
    )
    out = output or Path(f"compare-{a.name}-vs-{b.name}.md")  # never into a stored run unless asked
    atomic_write_text(out, text)
    return out
