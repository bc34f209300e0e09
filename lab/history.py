"""The nightly history: every night's run directory under one root, indexed, queryable with DuckDB.

``HISTORY/runs/<run-id>/`` are ordinary run directories (manifest, cells.parquet,
claims.parquet, ...).  The manifests are the index: a night is a run of a
matrix, with its status as recorded, except that a run whose manifest says
``running`` while its process is gone is *dead* (never a night in progress,
never a baseline).  DuckDB reads the Parquet tables of all nights in place.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from lab.errors import ConfigError
from lab.store import MANIFEST, liveness

NIGHT_COLUMNS = ("run_id", "matrix_name", "status", "started_utc", "finished_utc", "lab_revision",
                 "tree_describe", "tree_commit", "baseline", "regressions", "exit_code", "path")  # fmt: skip


@dataclass(frozen=True)
class History:
    root: Path

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    def nights(self, matrix_name: str | None = None) -> pd.DataFrame:
        """One row per run, oldest first; status ``dead`` for a run whose process died without a word."""
        rows = []
        for manifest_path in sorted(self.runs.glob(f"*/{MANIFEST}")):
            try:
                manifest = json.loads(manifest_path.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            state = liveness(manifest)
            status = {"alive": "running", "unknown": "running"}.get(state, state)
            nightly = manifest.get("nightly", {})
            rows.append({
                "run_id": manifest.get("run_id", manifest_path.parent.name),
                "matrix_name": manifest.get("matrix_name", ""),
                "status": status,
                "started_utc": manifest.get("started_utc", ""),
                "finished_utc": manifest.get("finished_utc", ""),
                "lab_revision": manifest.get("lab_revision", ""),
                "tree_describe": nightly.get("tree_describe", ""),
                "tree_commit": nightly.get("tree_commit", ""),
                "baseline": nightly.get("baseline", ""),
                "regressions": nightly.get("regressions"),
                "exit_code": nightly.get("exit_code"),
                "path": str(manifest_path.parent),
            })  # fmt: skip
        nights = pd.DataFrame(rows, columns=list(NIGHT_COLUMNS))
        if matrix_name is not None:
            nights = nights[nights["matrix_name"] == matrix_name]
        return nights.sort_values(["started_utc", "run_id"]).reset_index(drop=True)

    def baseline(self, matrix_name: str, before: str) -> str | None:
        """The newest complete run of ``matrix_name`` that started before run ``before`` (dead, partial,
        interrupted and running ones never are)."""
        nights = self.nights(matrix_name)
        nights = nights[(nights["status"] == "complete") & (nights["run_id"] != before)]
        current = self.nights(matrix_name)
        started = current.loc[current["run_id"] == before, "started_utc"]
        if not started.empty:
            nights = nights[nights["started_utc"] <= started.iloc[0]]
        return str(nights["run_id"].iloc[-1]) if not nights.empty else None

    def retain(self, keep: int, matrix_name: str | None = None) -> list[str]:
        """Remove all but the newest ``keep`` runs (of a matrix), never the newest complete run (the next
        night's baseline) nor one that is still running.  Returns the run ids removed."""
        if keep < 1:
            raise ConfigError(f"--keep {keep}: keep at least one night")
        nights = self.nights(matrix_name)
        complete = nights[nights["status"] == "complete"]
        protected = {str(complete["run_id"].iloc[-1])} if not complete.empty else set()
        protected |= set(nights.loc[nights["status"] == "running", "run_id"])
        removed = []
        for _, night in nights.iloc[: max(len(nights) - keep, 0)].iterrows():
            if night["run_id"] in protected:
                continue
            shutil.rmtree(night["path"], ignore_errors=True)
            removed.append(str(night["run_id"]))
        return removed

    def connect(self) -> Any:
        """A DuckDB connection with views over every night: ``nights``, ``cells``, ``claims``."""
        import duckdb

        con = duckdb.connect()
        con.register("nights_frame", self.nights())
        con.execute("CREATE VIEW nights AS SELECT * FROM nights_frame")
        for table in ("cells", "claims"):
            files = sorted(str(p) for p in self.runs.glob(f"*/{table}.parquet"))
            if files:
                listed = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
                con.execute(f"CREATE VIEW {table} AS SELECT *, regexp_extract(filename, 'runs/([^/]+)/', 1) AS night "
                            f"FROM read_parquet([{listed}], union_by_name = true, filename = true)")  # fmt: skip
        return con

    def query(self, sql: str) -> pd.DataFrame:
        return self.connect().execute(sql).fetchdf()
