"""Results on disk: results/<run-id>/ with a manifest, per-cell artifacts and Parquet tables.

Every file is written atomically (temp file + rename).  A cell is complete
when its ``cell.json`` exists; run-level tables are rebuilt from those, so an
interrupted run keeps every finished cell and ``--resume`` can find them.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from lab.errors import ConfigError, HostError
from lab.util import atomic_write_bytes, atomic_write_text

MANIFEST = "manifest.json"
CELL_RECORD = "cell.json"
PHASE = "phase.json"
ENGINE_LOG = "engine.log"  # the engine's (Dask's) own log lines, kept off the terminal (lab.fanout.engine_log)
SKIPPED = "skipped"  # status of a cell whose platform the host does not offer: not a failure, not a finding
# status of a cell whose boot group was lost to infrastructure (its worker or host gone, a task that failed
# outside the guest): not a finding either; a resume runs it again
LOST = "lost"

# Columns of the run tables that runs stored before them lack, with their SQL types.  The history reads
# every stored run through them (lab.history's views give a night that lacks one a typed null), so a
# question about the nights can name today's columns: an old night answers "not recorded", not a binder
# error.  Pandas readers (load_cells) get a run's tables as stored: there a column's absence is itself
# information (a run from before it existed) that the claims' judges test for, and a null host_id or
# platform would drop the row from every comparison grouped by them.
UPGRADE_COLUMNS: dict[str, dict[str, str]] = {
    "cells": {
        # what the cell asked for (lab.runner.base_row)
        "platform": "VARCHAR",
        "observed": "BOOLEAN",
        "sample_hz_requested": "DOUBLE",
        "triggers_armed": "VARCHAR",
        "queue_limits": "VARCHAR",
        "conversion_ns": "BIGINT",
        "neighbour": "VARCHAR",
        "swiotlb_areas_requested": "DOUBLE",
        "cmdline_extra": "VARCHAR",
        # where it ran (lab.host.host_facts)
        "host_id": "VARCHAR",
        "cpu_model": "VARCHAR",
        "coco_firmware": "VARCHAR",
        "lab_diff_sha256": "VARCHAR",  # the lab's uncommitted changes, if any (lab.host.provenance)
        "host_guest_slots": "BIGINT",  # guests the host ran at once (lab.session, lab.fanout)
        "host_oversubscribed": "BOOLEAN",  # more of them than its cores allow (lab.runner.oversubscription)
        # its boot (lab.runner)
        "boot_retries": "BIGINT",
        "boot_retry_reason": "VARCHAR",
        "swiotlb_areas_logged": "BIGINT",
        "boot_id": "VARCHAR",  # the boot's directory
        "qemu_toolchain": "VARCHAR",  # "host" or the toolchain root whose QEMU ran the cell
        "boot_position": "BIGINT",  # cells that ran before it in that boot
        # what it measured (lab.runner.build_row); counters a cell may lack are DOUBLE, as pandas stores them
        "swiotlb_areas": "DOUBLE",
        "throttle_timeouts": "DOUBLE",
        "throttle_timeout_ms": "DOUBLE",
        "grow_limit_slabs": "DOUBLE",
        "map_failures_counted_by": "VARCHAR",
        "guest_cpu_s": "DOUBLE",
        "guest_cpu_us_per_io": "DOUBLE",
        "queue_nr_requests": "DOUBLE",
        "queue_max_sectors_kb": "DOUBLE",
        "neighbour_iops": "DOUBLE",
        "neighbour_clat_p99_us": "DOUBLE",
        "conversion_ns_applied": "DOUBLE",
        "dmesg_ata_exceptions": "DOUBLE",
        "kernel_splat": "VARCHAR",
        "kernel_splat_text": "VARCHAR",
        "kernel_splats": "DOUBLE",
        "hung_tasks": "DOUBLE",
    },
    # a run over several hosts or platforms judges each claim within one (lab.claims.Verdict.scope)
    "claims": {"scope": "VARCHAR"},
}


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def stat_start_time(stat: str) -> int:
    """The start time of a process (field 22 of ``/proc/<pid>/stat``: clock ticks since boot).  Field 2,
    the command name in parentheses, may itself hold spaces and parentheses: count from the last ``)``."""
    fields = stat[stat.rindex(")") + 1 :].split()
    return int(fields[22 - 3])  # the fields after the name start at field 3


def _start_time(pid: int) -> int | None:
    try:
        return stat_start_time(Path(f"/proc/{pid}/stat").read_text())
    except (OSError, ValueError, IndexError):
        return None


def _cmdline(pid: int | str) -> bytes | None:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None


def cmdline_digest(cmdline: bytes) -> str:
    """How a run names its own process: the sha256 of its exact argv as the kernel holds it
    (``/proc/<pid>/cmdline``, NUL-separated), so no path of the machine lands in the manifest."""
    return hashlib.sha256(cmdline).hexdigest()


def owner() -> dict[str, Any]:
    """Who runs a run: recorded in the manifest so that a dead run can be told from a running one.  The
    start time (with the pid it belongs to) tells a reused pid from the process that wrote the manifest;
    the digest of the process's exact argv tells it from any other process, whatever its path holds."""
    pid = os.getpid()
    own = _cmdline("self")
    return {
        "pid": pid,
        "process_start": {
            "pid": pid,
            "ticks": _start_time(pid),
            "cmdline_sha256": cmdline_digest(own) if own is not None else None,
        },
        "boot_id": _boot_id(),
        "controller": platform.node(),
    }


def liveness(manifest: dict[str, Any]) -> str:
    """For a manifest that says ``running``: "alive" if its process still runs, "dead" if it cannot, and
    "unknown" if this machine cannot tell.  Decided only from what the run recorded of itself, never from
    what a command line happens to contain (a checkout under ``.../lab/`` would make any Python a "lab"
    process):

    - another controller: "unknown"; another boot of this one, or no pid: "dead";
    - the pid gone: "dead";
    - a start time recorded for this pid that is not the pid's start time now: "dead" (the pid was reused);
    - an argv digest recorded for this pid that is not the pid's argv now: "dead" (another program);
    - at least one of the two recorded and matching: "alive";
    - neither recorded (a manifest from before the lab recorded them) and the pid present: "unknown".

    Any other status is returned as it is."""
    status = str(manifest.get("status", ""))
    if status != "running":
        return status
    if manifest.get("controller") not in (None, platform.node()):
        return "unknown"
    if manifest.get("boot_id") != _boot_id() or "pid" not in manifest:
        return "dead"
    try:
        pid = int(manifest["pid"])
    except (TypeError, ValueError):
        return "dead"
    cmdline = _cmdline(pid)
    ticks = _start_time(pid)
    if cmdline is None or ticks is None:
        return "dead"
    start = manifest.get("process_start")
    recorded = start if isinstance(start, dict) and start.get("pid") == pid else {}
    checks = []
    if recorded.get("ticks") is not None:
        checks.append(recorded["ticks"] == ticks)
    if recorded.get("cmdline_sha256") is not None:
        checks.append(recorded["cmdline_sha256"] == cmdline_digest(cmdline))
    if not checks:
        return "unknown"
    return "alive" if all(checks) else "dead"


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + secrets.token_hex(2)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and value != value:  # NaN → null
        return None
    return value


def write_parquet(path: Path, frame: pd.DataFrame) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        frame.to_parquet(tmp, index=False)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@dataclass
class RunStore:
    root: Path  # results/<run-id>

    @property
    def run_id(self) -> str:
        return self.root.name

    @classmethod
    def create(cls, results_dir: Path, manifest: dict[str, Any], run_id: str | None = None) -> RunStore:
        root = results_dir / (run_id or new_run_id())
        try:
            root.mkdir(parents=True, exist_ok=False)
        except FileExistsError as exc:
            raise ConfigError(f"{root} already exists; pick another run id or use --resume") from exc
        except OSError as exc:
            raise HostError(f"cannot create results directory {root}: {exc.strerror}") from exc
        store = cls(root)
        store.write_manifest({**manifest, "run_id": store.run_id, "status": "running", **owner()})
        return store

    def claim(self) -> str:
        """Take over a run for --resume.  Refuses a run whose process is still alive; a run that says
        ``running`` but whose process is gone (kill -9, power loss) is marked as having died.  Returns
        the status the run had."""
        manifest = self.manifest()
        previous = str(manifest.get("status", "?"))
        state = liveness(manifest)
        if state == "alive":
            raise ConfigError(
                f"{self.root} is still being run by process {manifest.get('pid')} on this machine; "
                "stop it (Ctrl-C) before resuming"
            )
        changes: dict[str, Any] = {"status": "running", **owner()}
        if state == "dead":
            changes["died"] = f"its process {manifest.get('pid')} ended without marking the run (kill -9, crash)"
            previous = "dead"
        self.update_manifest(**changes)
        return previous

    @classmethod
    def open(cls, path: Path) -> RunStore:
        if not (path / MANIFEST).is_file():
            raise ConfigError(f"{path} is not a lab run directory (no {MANIFEST})")
        return cls(path)

    # -- manifest -------------------------------------------------------------------
    def manifest(self) -> dict[str, Any]:
        return dict(json.loads((self.root / MANIFEST).read_text()))

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        atomic_write_text(self.root / MANIFEST, json.dumps(_jsonable(manifest), indent=2, sort_keys=True) + "\n")

    def update_manifest(self, **changes: Any) -> None:
        self.write_manifest({**self.manifest(), **changes})

    def write_phase(self, cell_id: str, phase: str) -> None:
        """What the run is doing now (``phase.json``), for operators, CI watchdogs and tests."""
        record = {
            "cell_id": cell_id,
            "phase": phase,
            "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "pid": os.getpid(),
        }
        atomic_write_text(self.root / PHASE, json.dumps(record, sort_keys=True) + "\n")

    # -- cells ----------------------------------------------------------------------
    def cell_dir(self, cell_id: str) -> Path:
        path = self.root / "cells" / cell_id
        path.mkdir(parents=True, exist_ok=True)
        return path

    def boot_dir(self, name: str) -> Path:
        path = self.root / "boots" / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def completed_cells(self) -> dict[str, dict[str, Any]]:
        records = {}
        for record in sorted((self.root / "cells").glob(f"*/{CELL_RECORD}")):
            data = json.loads(record.read_text())
            records[str(data["cell_id"])] = data
        return records

    def cells_to_skip(self, retry_failed: bool = False) -> set[str]:
        """Cells a resumed run must not redo: every finished one, or only the successful ones.  Cells
        skipped because their platform was not offered, or lost with their worker or host, are never
        finished: a resume tries them again."""
        redo = (SKIPPED, LOST)
        return {
            cid
            for cid, rec in self.completed_cells().items()
            if rec.get("status") not in redo and (not retry_failed or rec.get("status") == "ok")
        }

    def write_cell(self, row: dict[str, Any], samples: pd.DataFrame | None, fio_jobs: pd.DataFrame | None) -> None:
        """Persist one finished cell (ok or failed); ``cell.json`` goes last and marks it complete."""
        directory = self.cell_dir(str(row["cell_id"]))
        if samples is not None and not samples.empty:
            write_parquet(directory / "samples.parquet", samples.assign(cell_id=row["cell_id"]))
        if fio_jobs is not None and not fio_jobs.empty:
            write_parquet(directory / "fio_jobs.parquet", fio_jobs.assign(cell_id=row["cell_id"]))
        atomic_write_bytes(
            directory / CELL_RECORD, (json.dumps(_jsonable(row), indent=2, sort_keys=True) + "\n").encode()
        )

    def consolidate(self) -> dict[str, Path]:
        """Rebuild cells.parquet, samples.parquet and fio_jobs.parquet from the finished cells."""
        written: dict[str, Path] = {}
        records = list(self.completed_cells().values())
        if records:
            write_parquet(self.root / "cells.parquet", pd.DataFrame(records))
            written["cells"] = self.root / "cells.parquet"
        for table in ("samples", "fio_jobs"):
            parts = [pd.read_parquet(p) for p in sorted((self.root / "cells").glob(f"*/{table}.parquet"))]
            if parts:
                write_parquet(self.root / f"{table}.parquet", pd.concat(parts, ignore_index=True))
                written[table] = self.root / f"{table}.parquet"
        return written


def load_cells(run_dir: Path) -> pd.DataFrame:
    """The cells table of a run (public API for reports and notebooks)."""
    path = run_dir / "cells.parquet"
    if path.exists():
        return pd.read_parquet(path)
    return pd.DataFrame(list(RunStore.open(run_dir).completed_cells().values()))


def load_samples(run_dir: Path) -> pd.DataFrame:
    path = run_dir / "samples.parquet"
    return pd.read_parquet(path) if path.exists() else pd.DataFrame()
