"""The session API: one matrix run from request to verdict, called by the CLI, CI and notebooks alike.

``Session.plan()`` needs nothing but the matrix (cells, boots, estimate);
``prepare()`` builds kernels and the image, probes the host and writes the
manifest; ``run(reporter)`` runs the cells, locally or on Dask workers; and
``finish()`` marks the run, writes the summary and the report, and says
what the exit code is.  Nothing here prints or exits.
"""

from __future__ import annotations

import contextlib
import os
import time
import traceback
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lab import __version__, interrupt
from lab.errors import ConfigError
from lab.matrix import Cell, Matrix, load_matrix
from lab.platforms import AUTO
from lab.runner import Reporter, boot_estimate_s, cell_estimate_s, default_jobs, oversubscription
from lab.store import ENGINE_LOG, LOST, SKIPPED, RunStore
from lab.vm import Accel

if TYPE_CHECKING:
    import pandas as pd

    from lab.fanout import DaskPool
    from lab.hosts import Host
    from lab.runner import LabContext

EXIT_NOTHING_RAN = 3  # every cell skipped (no host offers its platform), or cells lost to the infrastructure


def _cells(count: int) -> str:
    return f"{count} cell" if count == 1 else f"{count} cells"


def infrastructure_markdown(manifest: dict[str, Any]) -> str:
    """The run summary's account of what the infrastructure did ("" for a run without Dask): the workers
    lost and the boot groups they held, where each group ran again, the groups given up, and the hosts left
    out at the start.  The details (addresses, times) are in the manifest's ``infrastructure``."""
    account = manifest.get("infrastructure")
    if not isinstance(account, dict):
        return ""
    lines = ["", "## Infrastructure", ""]
    workers = account.get("workers", [])
    lines.append(f"- {account.get('engine', 'Dask')}; workers: {', '.join(workers) or 'none'}")
    if account.get("error"):
        lines.append(f"- {account['error']}")
    for lost in account.get("workers_lost", []):
        held = ", ".join(lost.get("groups", [])) or "no boot group"
        queued = len(lost.get("queued", []))
        waiting = f" ({queued} more waiting there, placed again)" if queued else ""
        lines.append(f"- worker {lost['worker']} ({lost['address']}) lost at {lost['utc']}, running {held}{waiting}")
    for rerun in account.get("groups_rerun", []):
        to = f"ran again on {rerun['to']}" if rerun.get("to") else "did not run again"
        lines.append(
            f"- boot group {rerun['group']} ({_cells(rerun['cells'])}) {to} after {rerun['from']} was lost: "
            f"{rerun['outcome']}"
        )
    for lost in account.get("groups_lost", []):
        where = f" on {lost['host']}" if lost.get("host") else ""
        lines.append(f"- boot group {lost['group']} ({_cells(lost['cells'])}) lost{where}: {lost['why']}")
    for host, why in sorted(account.get("hosts_left_out", {}).items()):
        lines.append(f"- host {host} left out at the start: {why}")
    if not (account.get("workers_lost") or account.get("groups_lost") or account.get("hosts_left_out")):
        lines.append("- no worker lost, no boot group run again or given up, no host left out")
    lines.append(f"- the engine's own log lines: {account.get('engine_log', ENGINE_LOG)}")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class RunRequest:
    """What to run and where; the CLI's flags, as values."""

    matrix: str | Path = "default"
    results: Path = Path("results")
    resume: Path | None = None
    retry_failed: bool = False
    jobs: int = 0  # 0: host CPUs // (vCPUs + 1)
    accel: Accel = "auto"
    hosts: Path | None = None
    scheduler: str | None = None
    strict: bool = False
    kernel_tree: Path | None = None  # build the lab's variants from this tree (e.g. the series' git checkout)
    mix_batches: bool = False  # --resume a run that another lab revision (or another dirty tree) started


@dataclass(frozen=True)
class Plan:
    todo: tuple[Cell, ...]  # cells to run, without those no host offers the platform of
    skip: frozenset[str]  # cells done before (a resume)
    boots: int
    estimate_s: float  # for one boot at a time
    unrunnable: dict[str, str] = field(default_factory=dict)  # cell ID -> why it will be skipped here

    def dry_run(self, cells: Sequence[Cell], cores: int | None = None) -> list[str]:
        """What `run matrix --dry-run` says: each cell's fate (todo, done, skip and why), the count, boots and
        estimate; with ``cores``, the estimate for a host with that many cores."""
        lines = []
        for cell in cells:
            if cell.cell_id in self.unrunnable:
                lines.append(f"skip  {cell.cell_id}  ({self.unrunnable[cell.cell_id]})")
            else:
                lines.append(("done  " if cell.cell_id in self.skip else "todo  ") + cell.cell_id)
        if self.unrunnable:
            lines.append(
                f"{len(self.unrunnable)} cells will be skipped here (recorded as skipped, not failed; left out of "
                "the estimate)"
            )
        lines.append(f"{len(self.todo)} cells to run in {self.boots} boots, estimated {self.estimate_s / 60:.1f} min")
        if cores:
            vcpus = max((c.vcpus for c in cells), default=1)
            jobs = max(1, min(default_jobs(vcpus, cores), self.boots))
            lines.append(
                f"on a host with {cores} cores: {jobs} boots at a time ({vcpus} vCPUs + 1 each), estimated "
                f"{self.estimate_s / jobs / 60:.1f} min (this machine's boot and cell times; KVM boots faster)"
            )
        return lines


@dataclass
class Outcome:
    store: RunStore
    cells: pd.DataFrame
    status: str  # complete, partial, interrupted, failed
    exit_code: int
    report: Path | None = None
    report_error: Path | None = None


def estimate(matrix: Matrix, skip: set[str] | frozenset[str]) -> tuple[float, int]:
    groups = [[c for c in g if c.cell_id not in skip] for g in matrix.boot_groups()]
    groups = [g for g in groups if g]
    return sum(boot_estimate_s(g[0]) + sum(cell_estimate_s(c) for c in g) for g in groups), len(groups)


def run_exit_code(cells: pd.DataFrame, status: str, *, strict: bool) -> int:
    """0 when the matrix ran to the end and measured something; failed cells are findings, listed in the
    summary and the report (a hang of a patched kernel is a result), unless ``strict`` asks to fail on them.
    Skipped cells (platform not offered) and lost cells (their worker or host gone) are neither: a run in
    which every cell was skipped, or any cell was lost, exits 3 (``--resume`` runs those cells again)."""
    if status == "complete" and not cells.empty and (cells["status"] == SKIPPED).all():
        return EXIT_NOTHING_RAN
    if status == "complete" and not cells.empty and (cells["status"] == LOST).any():
        return EXIT_NOTHING_RAN
    if status != "complete" or cells.empty or not (cells["status"] == "ok").any():
        return 1
    return 1 if strict and (cells["status"] == "failed").any() else 0


@dataclass
class Session:
    """One run of one matrix.  ``busy(text)`` wraps slow preparation steps (the CLI shows a spinner)."""

    request: RunRequest
    busy: Callable[[str], AbstractContextManager[Any]] = field(default=lambda text: nullcontext())
    matrix: Matrix = field(init=False)
    store: RunStore | None = field(default=None, init=False)
    ctx: LabContext | None = field(default=None, init=False)
    pool: DaskPool | None = field(default=None, init=False)
    hosts: dict[str, Host] | None = field(default=None, init=False)
    jobs: int = field(default=1, init=False)
    contention: str | None = field(default=None, init=False)  # lab.runner.oversubscription, local runs
    mixed_batch: str | None = field(default=None, init=False)  # why a resumed run is of another batch

    def __post_init__(self) -> None:
        from lab.hosts import load_hosts

        self.matrix = load_matrix(self.request.matrix)
        # Every input is read before anything runs, a dry run included: a bad inventory exits 2 at once.
        self.hosts = load_hosts(self.request.hosts) if self.request.hosts else None
        if self.request.retry_failed and not self.request.resume:
            raise ConfigError("--retry-failed needs --resume RUN_DIR (the run whose failed cells to rerun)")
        if self.request.resume:
            self.store = RunStore.open(Path(self.request.resume))
            self.mixed_batch = self._other_batch(self.store.manifest())

    def _other_batch(self, manifest: dict[str, Any]) -> str | None:
        """Why the run being resumed belongs to another batch than this checkout would make it (None if it
        does not): another lab revision, or the same dirty revision with other uncommitted changes.  Cells
        of two batches are not comparable as one run's, so a resume refuses unless asked to mix them."""
        from lab.host import lab_diff_digest, lab_revision

        started, now = manifest.get("lab_revision"), lab_revision()
        why = None
        if started and started != now:
            why = f"it was started at lab revision {started}, this checkout is {now}"
        elif "lab_diff_sha256" in manifest and manifest["lab_diff_sha256"] != lab_diff_digest():
            why = f"it was started from revision {now} with other uncommitted changes"
        if why and not self.request.mix_batches:
            raise ConfigError(
                f"--resume {self.request.resume}: {why}; resume it from that revision, or start a new run "
                "(--mix-batches resumes it anyway, and its manifest and report say the run mixes batches)"
            )
        return why

    def plan(self) -> Plan:
        """What the run will do: the cells left, the boots and time they take, and the cells it will skip
        because no host offers their platform (the same reason the run records, found without booting)."""
        skip = self._done()
        why_not = self.platforms_not_offered()
        unrunnable = {
            c.cell_id: f"platform {c.platform} not offered: {why_not[c.platform]}"
            for c in self.matrix.cells
            if c.cell_id not in skip and why_not.get(c.platform)
        }
        estimate_s, boots = estimate(self.matrix, skip | set(unrunnable))
        todo = tuple(c for c in self.matrix.cells if c.cell_id not in skip and c.cell_id not in unrunnable)
        return Plan(todo, skip, boots, estimate_s, unrunnable)

    def _done(self) -> frozenset[str]:
        """The cells a resumed run keeps (none for a new run)."""
        if self.store is None:
            return frozenset()
        return frozenset(self.store.cells_to_skip(retry_failed=self.request.retry_failed))

    def platforms_not_offered(self) -> dict[str, str]:
        """Per platform the matrix names (besides "auto"), why no host of this run offers it ("" if one
        does): this machine's preflight (no boot; whether KVM really boots is the run's probe), or what the
        inventory's hosts list (their own preflight runs when the run starts), or nothing known of a
        scheduler's workers."""
        named = sorted({c.platform for c in self.matrix.cells} - {AUTO})
        if not named or self.request.scheduler:
            return {}
        if self.hosts:
            where = self.request.hosts
            return {
                p: "" if any(p in h.platforms for h in self.hosts.values()) else f"no host in {where} lists it"
                for p in named
            }
        from lab.preflight import HostSettings, local_preflight

        offered = local_preflight(HostSettings.from_environment()).offered
        return {p: offered.get(p, "") for p in named}

    def prepare(self) -> None:
        """Check the host, build or load kernels and the image, probe the platforms, write the manifest."""
        from lab.fanout import DaskPool, SshWorkerPool
        from lab.host import provenance, require_host
        from lab.image import build_image
        from lab.kernel import build_kernel, local_source
        from lab.keys import client_key
        from lab.preflight import HostSettings, local_preflight
        from lab.runner import LabContext, boot_spec
        from lab.util import cache_dir
        from lab.vm import LocalHypervisor

        require_host()
        request, matrix = self.request, self.matrix
        self.jobs = request.jobs or default_jobs(max(c.vcpus for c in matrix.cells))
        if self.hosts:
            self.jobs = sum(h.slots for h in self.hosts.values())
        image = build_image()
        source = local_source(request.kernel_tree) if request.kernel_tree else None
        kernels = {}
        for name in sorted({c.kernel for c in matrix.cells}):
            with self.busy(f"kernel {name}: building or loading from cache"):
                kernels[name] = build_kernel(name, source=source)  # stock ignores the tree
        if not (self.hosts or request.scheduler):  # a worker elsewhere builds the roots its cells need itself
            from lab.toolchain import HOST, build_qemu

            for name in sorted({c.qemu for c in matrix.cells} - {HOST}):
                with self.busy(f"QEMU toolchain {name}: building or loading from cache"):
                    build_qemu(name)
        settings = HostSettings.from_environment()  # this machine's QEMU, firmware and C-bit position
        hypervisor = LocalHypervisor(settings.qemu, dict(settings.firmware), settings.cbitpos)
        cache = cache_dir()
        ctx = LabContext(
            hypervisor,
            image,
            client_key(),
            kernels,
            cache,
            accel=request.accel,
            firmware={k: Path(v) for k, v in settings.firmware.items()},
        )
        ctx.provenance = {**provenance(settings.qemu), **settings.describe(), "host_guest_slots": self.jobs}
        # "auto" cells: KVM where a probe boot works, else TCG; CoCo platforms: what the preflight finds.
        # Remote runs: each host decides "auto" by its own probe and offers what its preflight finds, so
        # the controller boots nothing here.
        remote = bool(self.hosts or request.scheduler)
        accel: str  # the request's choice, or the accelerator the local probe settled on
        if remote:
            accel = request.accel
            hypervisor.probe_note = "decided by each host's worker"
        else:
            first_spec = replace(boot_spec(ctx, matrix.cells[0]), accel=request.accel, firmware=None, cbitpos=None)
            accel = hypervisor.resolve_accel(first_spec, cache / "probe-work")
        ctx.accel = accel  # type: ignore[assignment]
        ctx.provenance["accel"] = accel
        ctx.offered, ctx.cbitpos = hypervisor.capabilities(), local_preflight(settings).cbitpos
        if not remote and hypervisor.probe_note and accel != "kvm":
            ctx.offered["kvm"] = f"a KVM boot probe failed on this host ({hypervisor.probe_note})"
        vcpus = max(c.vcpus for c in matrix.cells)
        self.contention = None if remote else oversubscription(self.jobs, vcpus, os.cpu_count())
        manifest = {
            **ctx.provenance,
            "lab_version": __version__,
            "accel_note": hypervisor.probe_note or f"accelerator forced to {request.accel}",
            "matrix_name": matrix.name,
            "matrix_source": matrix.source,
            "matrix_description": matrix.description,
            "matrix": matrix.raw,
            "cells": [c.cell_id for c in matrix.cells],
            "kernels": {name: k.describe() for name, k in kernels.items()},
            "image_recipe_hash": image.recipe_hash,
            "jobs": self.jobs,
            # Guests that share one host's cores (each host's own for workers elsewhere: rows say it).
            "contention": self.contention,
            "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        if self.hosts:
            self.pool = SshWorkerPool(list(self.hosts.values()))
            manifest["hosts"] = {
                h.name: {"address": h.address, "slots": h.slots, "platforms": list(h.platforms)}
                for h in self.hosts.values()
            }
        elif request.scheduler:
            self.pool = DaskPool(scheduler=request.scheduler)
            manifest["scheduler"] = request.scheduler
        if self.store is None:
            # Every claim's rule, fixed before a cell is measured: the report marks a verdict whose rule
            # changed since as exploratory (lab.claims.check_rules).  A resumed run keeps its first rules.
            from lab.claims import rules as claim_rules

            self.store = RunStore.create(request.results, {**manifest, "rules": claim_rules()})
        else:
            was = self.store.claim()  # refuses a run another process is still running
            mixed = {"mixed_batches": self.mixed_batch, "resumed_lab_revision": manifest["lab_revision"]}
            self.store.update_manifest(
                resumed_utc=manifest["started_utc"], resumed_from=was, **(mixed if self.mixed_batch else {})
            )
        self.ctx = ctx

    def run(self, reporter: Reporter) -> None:
        """Run every cell still to do; the reporter hears each phase and finished cell."""
        from lab.fanout import engine_log, local_executor
        from lab.runner import PhaseRecorder, run_matrix

        if self.store is None or self.ctx is None:
            raise RuntimeError("Session.prepare() first")
        recorder = PhaseRecorder(self.store, reporter)
        skip = set(self._done())  # cells of platforms nobody offers run_matrix records as skipped itself
        with engine_log(self.store.root / ENGINE_LOG):
            if self.pool is None:
                with local_executor(self.jobs) as executor:
                    try:
                        run_matrix(self.matrix, self.store, self.ctx, recorder, skip, executor)
                    finally:
                        self._record_infrastructure(getattr(executor, "account", None))
            else:
                self._run_on_pool(recorder, skip)

    def _run_on_pool(self, recorder: Reporter, skip: set[str]) -> None:
        assert self.pool is not None and self.store is not None and self.ctx is not None
        from lab.runner import run_matrix

        with self.pool:
            self.ctx.offered = self.pool.offered()  # what the workers offer, not this machine
            unreachable = getattr(self.pool, "unreachable", {})
            if unreachable:  # the run went on without them: say which and why, where the results are
                self.store.update_manifest(hosts_unreachable=unreachable)
            try:
                run_matrix(self.matrix, self.store, self.ctx, recorder, skip, self.pool)
            finally:
                self._record_infrastructure(self.pool.account, unreachable)

    def _record_infrastructure(self, account: dict[str, Any] | None, left_out: dict[str, str] | None = None) -> None:
        """The manifest's ``infrastructure``: what the engine did (lab.fanout.DaskPool.account) and the hosts
        left out at the start; a resumed run adds to what its earlier parts recorded."""
        if account is None or self.store is None:  # one boot at a time in this thread: no engine
            return
        with contextlib.suppress(OSError):  # the cells are on disk; a missing account must not lose them
            earlier = self.store.manifest().get("infrastructure") or {}
            merged: dict[str, Any] = {**earlier, **account}
            for key in ("workers_lost", "groups_rerun", "groups_lost"):
                merged[key] = [*earlier.get(key, []), *account.get(key, [])]
            merged["workers"] = sorted({*earlier.get("workers", []), *account.get("workers", [])})
            merged["hosts_left_out"] = {**earlier.get("hosts_left_out", {}), **(left_out or {})}
            merged["engine_log"] = ENGINE_LOG
            self.store.update_manifest(infrastructure=merged)

    def finish(self, status: str, *, report: bool = True) -> Outcome:
        """Rebuild the run tables, mark the manifest, write the summary and (unless interrupted) the report."""
        from lab.report import summary_markdown
        from lab.store import load_cells
        from lab.util import atomic_write_text

        store = self.store
        if store is None:
            raise RuntimeError("nothing to finish: the session was never prepared")
        with interrupt.deferred():  # a second Ctrl-C must not tear the bookkeeping that marks what was kept
            with contextlib.suppress(OSError):  # the per-cell records stay the source of truth
                store.consolidate()
            cells = load_cells(store.root)
            finished = set(cells["cell_id"]) if not cells.empty else set()
            if status == "complete" and not all(c.cell_id in finished for c in self.matrix.cells):
                status = "partial"
            store.update_manifest(status=status, finished_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
            manifest = store.manifest()
            summary = summary_markdown(cells, str(store.root), manifest)
            atomic_write_text(store.root / "summary.md", summary + infrastructure_markdown(manifest))
        outcome = Outcome(store, cells, status, run_exit_code(cells, status, strict=self.request.strict))
        if report and status != "interrupted" and not cells.empty:
            write_report(outcome)
        return outcome


def write_report(outcome: Outcome) -> None:
    """The run's report into its directory; a report that fails leaves its traceback and exit code 1 instead
    of losing the run to it (the cells are safe on disk)."""
    from lab.report import build_report
    from lab.util import atomic_write_text

    try:
        outcome.report = build_report(outcome.store.root)["html"]
    except Exception:
        outcome.report_error = outcome.store.root / "report-error.txt"
        atomic_write_text(outcome.report_error, traceback.format_exc())
        outcome.exit_code = 1
