"""The nightly history: every night's run directory under one root, indexed, queryable with DuckDB.

``HISTORY/runs/<run-id>/`` are ordinary run directories (manifest, cells.parquet,
claims.parquet, ...).  The manifests are the index: a night is a run of a
matrix, with its status as recorded, except that a run whose manifest says
``running`` while its process is gone is *dead* (never a night in progress,
never a baseline), and one that runs on another controller is *unknown* until
``UNKNOWN_FOR_S`` after its last sign of life, then dead.  DuckDB reads the
Parquet tables of all nights in place.
"""

from __future__ import annotations

import calendar
import contextlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from lab.errors import ConfigError
from lab.store import LOST, MANIFEST, PHASE, SKIPPED, UPGRADE_COLUMNS, liveness, load_cells

NIGHT_COLUMNS = (
    "run_id",
    "matrix_name",
    "status",
    "started_utc",
    "finished_utc",
    "lab_revision",
    "tree_describe",
    "tree_commit",
    "baseline",
    "regressions",
    "exit_code",
    "matrix_hash",
    "controller",
    "path",
)
# A run whose manifest says ``running`` on another controller cannot be checked from here.  It counts as
# running (shown ``unknown``, kept by retention, never a baseline) for this long after its last sign of life
# (start, resume, or the last phase it wrote), then as dead: no night takes two days, and a history shared
# with a controller that vanished must not keep its run for ever.
UNKNOWN_FOR_S = 2 * 86400


# A night's exit codes (lab nightly): usable and no regression, a regression, no usable result
# (infrastructure).  Here because which nights count as usable is the history's question too.
EXIT_OK, EXIT_REGRESSION, EXIT_NO_RESULT = 0, 1, 3
# Reasons only a boot gives (the platform checks after SSH included): for rows without ``boot_s``, the only
# sign of how far a failed cell got.  Timeouts, panics and a dead QEMU happen during workloads too.
BOOT_ONLY_FAILURES = frozenset({"boot failed", "vcpu mismatch", "no memory encryption"})


def failure_counts(failed: pd.Series | pd.DataFrame) -> str:
    """The failure reasons of failed cells with their counts: "kernel panic: 2, timeout: 1"."""
    counts = failed["failure_reason"].fillna("unknown").value_counts()
    return ", ".join(f"{reason}: {count}" for reason, count in sorted(counts.items()))


def reached_workload(cells: pd.DataFrame) -> pd.Series:
    """Whether each cell's guest came up and began its workload: a booted guest's rows carry the boot's
    timings (``boot_s``), while a boot that failed (never reached SSH, or failed the platform checks) writes
    its cells without them.  Rows from before ``boot_s``: whether the failure is one only a boot gives."""
    if "boot_s" in cells:
        return cells["boot_s"].notna()
    return ~cells.get("failure_reason", pd.Series("", index=cells.index)).isin(BOOT_ONLY_FAILURES)


def no_usable_result(cells: pd.DataFrame) -> str:
    """Why a night measured nothing (infrastructure), or "" if it did.  A cell whose guest booted and then
    failed during its workload (a panic, a hang, a dead QEMU under fio) is a result: the revision's."""
    if cells.empty:
        return "no cell ran (no host, or every platform missing)"
    status = cells["status"]
    if status.eq(SKIPPED).all():
        return "every cell was skipped: no host offers the matrix's platforms"
    failed = status.eq("failed")
    if status.eq("ok").any() or (failed & reached_workload(cells)).any():
        return ""
    parts = [f"{int(failed.sum())} failed to boot ({failure_counts(cells[failed])})"]
    parts += [f"{int(status.eq(s).sum())} {s}" for s in (LOST, SKIPPED) if status.eq(s).any()]
    others = len(cells) - int(failed.sum()) - int(status.isin([LOST, SKIPPED]).sum())
    parts += [f"{others} with another status"] if others else []
    return "no cell ran its workload: " + ", ".join(p for p in parts if not p.startswith("0 "))


def _utc_seconds(text: Any) -> float | None:
    try:
        return float(calendar.timegm(time.strptime(str(text), "%Y-%m-%dT%H:%M:%SZ")))
    except ValueError:
        return None


def last_sign_of_life(manifest: dict[str, Any], run_dir: Path) -> float | None:
    """When a run last showed it was running (seconds since the epoch): its start, its resume, or the
    newest phase it wrote; None if nothing says."""
    times = [manifest.get("started_utc"), manifest.get("resumed_utc")]
    with contextlib.suppress(OSError, json.JSONDecodeError, AttributeError):
        times.append(json.loads((run_dir / PHASE).read_text()).get("utc"))
    seconds = [t for t in map(_utc_seconds, times) if t is not None]
    return max(seconds) if seconds else None


def _status(manifest: dict[str, Any], run_dir: Path, now: float) -> str:
    state = liveness(manifest)
    if state == "alive":
        return "running"
    if state == "unknown":
        seen = last_sign_of_life(manifest, run_dir)
        return "unknown" if seen is not None and now - seen < UNKNOWN_FOR_S else "dead"
    return state


def upgraded(con: Any, table: str, source: str) -> str:
    """The columns today's runs have that none of the stored tables in ``source`` has, as typed nulls (for a
    SELECT list after ``*``): nights stored before a column existed are read as not having recorded it."""
    have = {str(row[0]) for row in con.execute(f"DESCRIBE SELECT * FROM {source}").fetchall()}
    missing = {name: kind for name, kind in UPGRADE_COLUMNS.get(table, {}).items() if name not in have}
    return "".join(f", CAST(NULL AS {kind}) AS {name}" for name, kind in missing.items())


@dataclass(frozen=True)
class History:
    root: Path

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    def nights(self, matrix_name: str | None = None) -> pd.DataFrame:
        """One row per run, oldest first; status ``dead`` for a run whose process died without a word,
        ``unknown`` for one running on another controller (see ``UNKNOWN_FOR_S``)."""
        rows = []
        now = time.time()
        for manifest_path in sorted(self.runs.glob(f"*/{MANIFEST}")):
            try:
                manifest = json.loads(manifest_path.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            nightly = manifest.get("nightly", {})
            rows.append(
                {
                    "run_id": manifest.get("run_id", manifest_path.parent.name),
                    "matrix_name": manifest.get("matrix_name", ""),
                    "status": _status(manifest, manifest_path.parent, now),
                    "started_utc": manifest.get("started_utc", ""),
                    "finished_utc": manifest.get("finished_utc", ""),
                    "lab_revision": manifest.get("lab_revision", ""),
                    "tree_describe": nightly.get("tree_describe", ""),
                    "tree_commit": nightly.get("tree_commit", ""),
                    "baseline": nightly.get("baseline", ""),
                    "regressions": nightly.get("regressions"),
                    "exit_code": nightly.get("exit_code"),
                    "matrix_hash": nightly.get("matrix_hash", ""),
                    "controller": manifest.get("controller", ""),
                    "path": str(manifest_path.parent),
                }
            )
        nights = pd.DataFrame(rows, columns=list(NIGHT_COLUMNS))
        if matrix_name is not None:
            nights = nights[nights["matrix_name"] == matrix_name]
        return nights.sort_values(["started_utc", "run_id"]).reset_index(drop=True)

    def baseline(self, matrix_name: str, before: str, matrix_hash: str | None = None) -> str | None:
        """The newest complete run of ``matrix_name`` that started before run ``before`` and had a usable
        result (dead, partial, interrupted, running and unknown ones never are, nor a night that exited 3).
        With ``matrix_hash``, only a night of the same matrix content: one that recorded that hash, or one
        from before hashes were recorded, if no night since recorded one."""
        return self._baseline(self.nights(matrix_name), before, matrix_hash)

    def _baseline(self, nights: pd.DataFrame, before: str | None, matrix_hash: str | None) -> str | None:
        earlier = nights[nights["run_id"] != before]
        started = nights.loc[nights["run_id"] == before, "started_utc"]
        if not started.empty:
            earlier = earlier[earlier["started_utc"] <= started.iloc[0]]
        candidates = earlier[earlier["status"] == "complete"]
        if matrix_hash is not None:
            hashes = earlier["matrix_hash"].fillna("")
            legacy = candidates["matrix_hash"].fillna("") == ""
            if (hashes != "").any():  # a night without a hash matches only until a night records one
                legacy &= candidates["started_utc"] > earlier.loc[hashes != "", "started_utc"].max()
            candidates = candidates[(candidates["matrix_hash"] == matrix_hash) | legacy]
        for _, night in candidates.iloc[::-1].iterrows():
            if self.usable(night):
                return str(night["run_id"])
        return None

    @staticmethod
    def usable(night: pd.Series) -> bool:
        """Whether a night had a usable result: its recorded exit code was not 3; a night without one (the
        gate never ran on it) is judged from its stored cells by the same rule."""
        code = night.get("exit_code")
        if code is not None and not pd.isna(code):
            return int(code) != EXIT_NO_RESULT
        return not no_usable_result(load_cells(Path(night["path"])))

    def retain(self, keep: int, matrix_name: str | None = None) -> list[str]:
        """Remove all but the newest ``keep`` runs (of a matrix), never a possible next baseline (per matrix
        name: the newest usable complete night, and the one of the newest recorded matrix content) nor a
        run that is still running or whose state is unknown.  Returns the run ids removed."""
        if keep < 1:
            raise ConfigError(f"--keep {keep}: keep at least one night")
        nights = self.nights(matrix_name)
        protected: set[str] = set()
        for _, part in nights.groupby("matrix_name"):
            hashes = part.loc[part["matrix_hash"].fillna("") != "", "matrix_hash"]
            for matrix_hash in {None, *hashes.iloc[-1:]}:
                baseline = self._baseline(part, None, matrix_hash)
                protected |= {baseline} if baseline else set()
        protected |= set(nights.loc[nights["status"].isin(["running", "unknown"]), "run_id"])
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
                source = f"read_parquet([{listed}], union_by_name = true, filename = true)"
                con.execute(
                    f"CREATE VIEW {table} AS SELECT *{upgraded(con, table, source)}, "
                    f"regexp_extract(filename, 'runs/([^/]+)/', 1) AS night FROM {source}"
                )
        return con

    def query(self, sql: str) -> pd.DataFrame:
        """Any SQL over the views ``nights``, ``cells`` and ``claims``; a query DuckDB refuses is a ConfigError
        carrying DuckDB's own message (it names the column or table that is wrong)."""
        if not self.runs.is_dir():
            raise ConfigError(f"{self.root}: no nights here (expected {self.runs}/<run-id>/)")
        try:
            return self.connect().execute(sql).fetchdf()
        except Exception as exc:
            raise ConfigError(f"history query failed: {exc}") from exc

    def ask(self, question: str, metric: str = "fio_iops") -> pd.DataFrame:
        """The common questions (``QUESTIONS``): one row per night, the verdicts per night, or ``metric``'s
        median and quartiles per night, kernel and workload over the finished cells."""
        return self.query(QUESTIONS[question].format(metric=metric))


QUESTIONS = {
    "nights": "SELECT run_id, matrix_name, status, controller, started_utc, tree_describe, lab_revision, "
    "baseline, regressions, exit_code, left(matrix_hash, 12) AS matrix FROM nights ORDER BY started_utc",
    "claims": "SELECT night, scope, claim, verdict FROM claims ORDER BY night, scope, claim",
    "metric": "SELECT night, kernel, workload, count(*) AS cells, median({metric}) AS median, "
    "quantile_cont({metric}, 0.25) AS q1, quantile_cont({metric}, 0.75) AS q3 "
    "FROM cells WHERE status = 'ok' GROUP BY night, kernel, workload ORDER BY night, kernel, workload",
}
