"""Boot groups fanned out over Dask distributed: an existing engine, not a scheduler of the lab's own.

A task is a plain function of values (``GroupTask``: the cells of one boot
group, the kernels and initrds by content hash, the settings) that returns
values (``GroupResult``: the rows and every artifact as bytes).  No task
touches the controller's disk: the worker runs the group in a scratch run
directory of its own, and the controller alone writes the one run directory.
Placement is by worker resources (``slot``, and the platform's name); every
kernel of one comparison unit goes to the same host, picked by a stable hash
among the hosts Dask reports for the platform, so no host name appears in the
code.  Kernels and initrds reach each worker once, by content hash, into its
cache (a worker plugin, so a replacement worker gets them too).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import shlex
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

from lab import interrupt
from lab.errors import HostError, LabError
from lab.image import GuestImage
from lab.kernel import KernelBuild
from lab.keys import KeyPair
from lab.matrix import Cell
from lab.platforms import PLATFORMS
from lab.runner import (
    Executor,
    InThread,
    LabContext,
    Reporter,
    SilentReporter,
    base_row,
    boot_spec,
    cell_estimate_s,
    lost_row,
    run_group,
)
from lab.store import CELL_RECORD, MANIFEST, RunStore
from lab.util import atomic_write_bytes, cache_dir, sha256_file

log = logging.getLogger(__name__)
# Importing distributed sets its loggers to INFO: a lab run shows them only at -vv (debug).
if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
    logging.getLogger("distributed").setLevel(logging.WARNING)

SLOT = "slot"  # the resource every boot group takes one of
STOP_POLL_S = 0.5
RESULT_POLL_S = 0.02  # how often the controller looks for finished groups (it also adds this much latency)
# A group placed on a host waits for that host's worker (a nanny restarts a lost one); a host that has had
# no worker for this long is gone, and its waiting groups' cells are lost (a resume places them again).
HOST_GONE_S = 300.0


@dataclass(frozen=True)
class Staged:
    """A file a worker needs, known by its content."""

    name: str
    sha256: str
    path: Path  # on the controller; the worker's copy lives in its cache under staged/<sha256>/<name>


@dataclass(frozen=True)
class GroupTask:
    run_id: str
    cells: tuple[Cell, ...]
    kernels: dict[str, KernelBuild]  # paths as on the controller
    bzimages: dict[str, Staged]
    initrds: dict[str, Staged]
    host_key: str  # the guest image's pinned host key line
    client_key: Staged  # the lab's private key, for SSH into the guests
    client_public: str
    settings: dict[str, Any] = field(default_factory=dict)  # accel, offered, firmware, cbitpos, provenance


@dataclass(frozen=True)
class GroupResult:
    rows: list[dict[str, Any]]
    files: dict[str, bytes]  # path relative to the run directory -> content
    worker: dict[str, Any]
    interrupted: str = ""  # the worker was asked to stop: its unfinished cells are not recorded


@functools.lru_cache(maxsize=64)
def _digest(path: Path, size: int, mtime_ns: int) -> str:
    return sha256_file(path)


def stage(path: Path) -> Staged:
    """A staged reference to ``path`` (hashed once per file version, not once per boot group)."""
    info = path.stat()
    return Staged(path.name, _digest(path, info.st_size, info.st_mtime_ns), path)


def _materialise(staged: Staged, remote: bool, cache: Path) -> Path:
    """The worker's copy of a staged file: the controller's own path for in-process workers, else the copy
    the staging plugin wrote into the worker's cache."""
    if not remote:
        return staged.path
    target = cache / "staged" / staged.sha256 / staged.name
    if not target.exists():
        raise LabError(f"{staged.name} ({staged.sha256[:12]}) was not staged to this worker's cache {cache}")
    return target


def write_staged(name: str, sha256: str, data: bytes, cache: Path) -> Path:
    """Write one staged file into ``cache`` once, atomically, refusing bytes whose hash does not match."""
    target = cache / "staged" / sha256 / name
    if target.exists():
        return target
    atomic_write_bytes(target, data)
    if sha256_file(target) != sha256:
        target.unlink()
        raise LabError(f"staged {name} arrived corrupt (sha256 mismatch)")
    target.chmod(0o600)
    return target


class StagePlugin(WorkerPlugin):
    """A Dask worker plugin that writes the run's kernels, initrds and key into every worker's cache, by
    content hash; Dask runs it on each worker, including one that replaces a lost worker."""

    def __init__(self, name: str, files: dict[str, tuple[str, bytes]]) -> None:
        self.name = name
        self.files = files  # sha256 -> (file name, content)

    def setup(self, worker: Any) -> None:
        cache = cache_dir()
        for sha256, (name, data) in self.files.items():
            write_staged(name, sha256, data, cache)


def _abandoned(worker: Any, key: Any) -> bool:
    """Nobody waits for this task any more: the controller that submitted it is gone (its client's futures
    were released, so the scheduler cancelled the task) or the scheduler forgot it."""
    task = worker.state.tasks.get(key)
    return task is None or task.state in ("cancelled", "released", "forgotten")


@contextlib.contextmanager
def _stop_watch(run_id: str) -> Iterator[None]:
    """Turn the controller's stop (a Dask Event) into this process's stop request, polled; and stop on our
    own when the controller is gone.  A signal to the controller cannot reach a QEMU on another host, so
    this is a remote group's lifetime bound: its guests stop within STOP_POLL_S of the task being
    abandoned, not when the cells' own timeouts run out."""
    from distributed import Event, get_worker

    try:
        worker = get_worker()
        key = worker.get_current_task()
    except ValueError:  # not in a worker (a direct call in a test)
        yield
        return
    event = Event(f"lab-stop-{run_id}", client=worker.client)
    done = threading.Event()

    def watch() -> None:
        while not done.wait(STOP_POLL_S):
            with contextlib.suppress(Exception):
                if _abandoned(worker, key):
                    interrupt.request_stop("the controller is gone (the task was cancelled)")
                    return
                if event.is_set():
                    interrupt.request_stop("the controller stopped the run")
                    return

    thread = threading.Thread(target=watch, name="lab-stop-watch", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()


def run_group_task(task: GroupTask, in_process: bool) -> GroupResult:
    """On a worker: run one boot group with this host's QEMU; return rows and artifacts.

    ``in_process``: the worker is a thread of the controller, sharing its stop flag; a worker process of
    its own starts each task with a clean flag and follows the controller's stop event instead.
    """
    from distributed import get_worker

    from lab.host import host_facts
    from lab.preflight import HostSettings, local_preflight
    from lab.vm import LocalHypervisor

    settings = task.settings
    if in_process:  # a thread of the controller: this machine's settings, as the controller found them
        host = HostSettings(
            settings.get("qemu", HostSettings.qemu), settings.get("firmware", {}), settings.get("cbitpos")
        )
        hypervisor = LocalHypervisor(host.qemu, dict(host.firmware), host.cbitpos)
        offered, cbitpos = settings.get("offered", {}), settings.get("cbitpos")
    else:  # another host: its own QEMU, firmware and C-bit position, and what it offers with them
        interrupt.reset()
        host = HostSettings.from_environment()
        hypervisor = LocalHypervisor(host.qemu, dict(host.firmware), host.cbitpos)
        offered, cbitpos = hypervisor.capabilities(), local_preflight(host).cbitpos
    cache = cache_dir()
    bzimages = {k: _materialise(s, not in_process, cache) for k, s in task.bzimages.items()}
    initrds = {k: _materialise(s, not in_process, cache) for k, s in task.initrds.items()}
    key_path = _materialise(task.client_key, not in_process, cache)
    kernels = {
        name: replace(k, bzimage=bzimages[name], modules_dir=None, boot_modules=()) for name, k in task.kernels.items()
    }
    image = GuestImage(next(iter(initrds.values())), task.host_key, "staged")
    worker: dict[str, Any] = {**host_facts(host.qemu), **host.describe(), "worker_pid": os.getpid()}
    if not in_process:
        with contextlib.suppress(ValueError):  # a remote worker is named after its hosts.toml entry
            worker["host_id"] = str(get_worker().name)
            worker["host_guest_slots"] = get_worker().state.nthreads  # its hosts.toml slots
    ctx = LabContext(
        hypervisor,
        image,
        KeyPair(key_path, task.client_public),
        kernels,
        cache,
        accel=settings["accel"],
        provenance={**settings.get("provenance", {}), **worker},
        offered=offered,
        firmware={k: Path(v) for k, v in host.firmware.items()},
        cbitpos=cbitpos,
        initrds=initrds,
    )
    worker.update(dask_worker_identity())  # after the context: where the group ran is not a row column
    worker["task_started"] = time.time()
    with tempfile.TemporaryDirectory(prefix="swiotlb-lab-group-") as scratch, _stop_watch(task.run_id):
        store = RunStore.create(Path(scratch), {"worker": worker}, run_id=task.run_id)
        stopped = ""
        try:
            run_group(list(task.cells), store, ctx, SilentReporter())
        except interrupt.Interrupted as exc:  # a KeyboardInterrupt must not reach Dask's worker thread
            stopped = str(exc) or "interrupted"
        finally:
            left = hypervisor.stop_all()  # each boot stops its QEMU; nothing may outlive the group regardless
            if left:
                log.warning("stopped %d QEMU process(es) a boot group left running", left)
        files = {
            str(p.relative_to(store.root)): p.read_bytes()
            for p in sorted(store.root.rglob("*"))
            if p.is_file() and p.name != MANIFEST and p.suffix != ".raw"
        }
        rows = list(store.completed_cells().values())
    worker["task_ended"] = time.time()
    return GroupResult(rows, files, worker, stopped)


STARTED_TOPIC = "swiotlb-lab-group-started"  # a worker's event: this group began here (not only queued)


def start_group(function: Callable[[GroupTask, bool], GroupResult], task: GroupTask, in_process: bool) -> GroupResult:
    """What a worker runs for a group: tell the scheduler the group began on this worker (so a worker lost
    mid-group is told from one that only had it queued), then run it."""
    from distributed import get_worker

    with contextlib.suppress(ValueError):
        worker = get_worker()
        event = {"key": str(worker.get_current_task()), "worker": str(worker.address)}
        # through the worker's client, which waits for the scheduler: the worker's own log_event is batched,
        # and a worker killed within milliseconds of starting the group would never have sent it
        worker.client.log_event(STARTED_TOPIC, event)
    return function(task, in_process)


def dask_worker_identity() -> dict[str, str]:
    """The Dask worker running the current task: its name (a remote host's hosts.toml entry, an index for an
    in-process worker) and address; empty outside a worker."""
    from distributed import get_worker

    try:
        worker = get_worker()
    except ValueError:
        return {}
    return {"dask_worker": str(worker.name), "dask_address": str(worker.address)}


def _utc(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def import_result(store: RunStore, result: GroupResult) -> None:
    """Write a worker's artifacts into the run directory: every file atomically, each cell's record last.
    A name that would land outside the run directory (absolute, or climbing out with "..") is refused
    before anything is written."""
    root = store.root.resolve()
    for name in result.files:
        target = (root / name).resolve()
        if Path(name).is_absolute() or not target.is_relative_to(root) or target == root:
            raise LabError(f"a worker sent an artifact named {name!r}, outside the run directory {root}")
    records = {name: data for name, data in result.files.items() if Path(name).name == CELL_RECORD}
    for name, content in result.files.items():
        if name not in records:
            atomic_write_bytes(store.root / name, content)
    for name, content in records.items():
        atomic_write_bytes(store.root / name, content)


def infrastructure_failure(exc: BaseException) -> bool:
    """Whether a task's exception is the infrastructure's (worker killed or unreachable, connection lost,
    staging, the host's own errors), as opposed to a defect of the lab, which must not pass as either a
    finding or an infrastructure failure."""
    from concurrent.futures import CancelledError

    from distributed import KilledWorker
    from distributed.comm.core import CommClosedError

    return isinstance(exc, (KilledWorker, CommClosedError, CancelledError, OSError, TimeoutError, LabError))


OnRow = Callable[[Cell, dict[str, Any]], None]  # a finished cell's row, as it arrives
# the rows of a group the infrastructure lost, and the host it had been placed on (None: any host)
Lost = Callable[[GroupTask, BaseException, str | None], GroupResult]


@dataclass
class DaskPool:
    """A Dask client for the run: an in-process cluster (``jobs`` slots), or a running scheduler."""

    jobs: int = 1
    scheduler: str | None = None
    stage: bool = False  # send kernels and initrds as bytes (workers without the controller's filesystem)
    in_process: bool = False  # the workers are threads of this process (share its files and stop flag)
    overheads: list[float] = field(default_factory=list)  # per group: wall time minus the task's own
    # What the engine did in the last run (lab.session writes it into the manifest and the summary): the
    # workers it lost, the groups it ran again elsewhere, the groups it gave up.
    account: dict[str, Any] = field(default_factory=dict)
    # The function a worker runs for a group (a test gives one that needs no guest).
    group_function: Callable[[GroupTask, bool], GroupResult] = run_group_task
    client: Any = None
    cluster: Any = None
    _names: dict[str, str] = field(default_factory=dict)  # worker address -> name, as seen during the run
    _ended: dict[str, dict[str, Any]] = field(default_factory=dict)  # group key -> where and how it ended

    def __enter__(self) -> DaskPool:
        from distributed import Client, LocalCluster

        if self.scheduler:
            try:
                self.client = Client(self.scheduler, timeout="30s")
            except Exception as exc:
                raise HostError(f"cannot reach the Dask scheduler {self.scheduler}: {exc}") from exc
            self.stage = True
        else:
            # Workers in this process, one slot each: the same host, files and stop flag; Dask only places
            # the groups.
            self.cluster = LocalCluster(
                n_workers=self.jobs, threads_per_worker=1, processes=False, dashboard_address=None, resources={SLOT: 1}
            )
            self.client = Client(self.cluster)
            self.in_process = True
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            if self.client is not None:
                self.client.close()
        if self.cluster is not None:
            with contextlib.suppress(Exception):
                self.cluster.close()

    def offered(self) -> dict[str, str]:
        """Per platform: "" if some worker offers it (as a resource), else why not."""
        workers = self.client.scheduler_info()["workers"].values()
        have = {name for worker in workers for name in (worker.get("resources") or {})}
        names = ", ".join(sorted(str(w.get("name", w.get("id", "?"))) for w in workers)) or "none"
        return {p: "" if p in have else f"no worker offers it (workers: {names})" for p in PLATFORMS}

    def _workers_by_resource(self) -> dict[str, list[str]]:
        """The hosts of the workers, by the resources they offer.  Placement restricts a task to a host,
        not to a worker's address, which changes when a nanny restarts a lost worker."""
        if self.in_process:
            return {}
        by: dict[str, set[str]] = {}
        for worker in self.client.scheduler_info()["workers"].values():
            for resource in worker.get("resources") or {}:
                by.setdefault(resource, set()).add(str(worker.get("host")))
        return {k: sorted(v) for k, v in by.items()}

    def run_groups(
        self, groups: list[list[Cell]], store: RunStore, ctx: LabContext, reporter: Reporter
    ) -> list[dict[str, Any]]:
        """The executor seam (``lab.runner.Executor``): each group a Dask task, its rows and artifacts
        written here as they arrive; a group lost to the infrastructure becomes lost rows."""

        def lost(task: GroupTask, exc: BaseException, host: str | None) -> GroupResult:
            # Not this machine's cell: the host it was placed on if known (a remote group), else unknown.
            where = {"host_id": host or "unknown", "host": host or "unknown"} if host or not self.in_process else {}
            rows = [lost_row({**base_row(ctx, c, store), **where}, f"{type(exc).__name__}: {exc}") for c in task.cells]
            for row in rows:
                store.write_cell(row, None, None)
            return GroupResult(rows, {}, {})

        def on_row(cell: Cell, row: dict[str, Any]) -> None:
            reporter.cell_done(cell, row, cell_estimate_s(cell))

        return self.run([group_task(store.run_id, group, ctx) for group in groups], store, on_row, lost)

    def run(self, tasks: list[GroupTask], store: RunStore, on_row: OnRow, lost: Lost) -> list[dict[str, Any]]:
        """Run every task, writing each result into ``store`` as it arrives.  A worker lost mid-group is
        retried by Dask on another worker (the scheduler's ``allowed-failures``, 3 by default); beyond
        that, when the task fails outside the guest, or when the host it was placed on has had no worker
        for HOST_GONE_S, ``lost`` turns it into lost rows: never a finding.  Any other exception of a
        task is a defect of the lab and ends the run (finished cells are kept)."""
        plugin = f"swiotlb-lab-stage-{store.run_id}"
        if self.stage:
            files = {
                s.sha256: (s.name, s.path.read_bytes())
                for t in tasks
                for s in (*t.bzimages.values(), *t.initrds.values(), t.client_key)
            }
            self.client.register_plugin(StagePlugin(plugin, files))
        try:
            return self._run(tasks, store, on_row, lost)
        finally:
            if self.stage:  # a long-lived scheduler must not keep (and re-stage) every past run's kernels
                with contextlib.suppress(Exception):
                    self.client.unregister_worker_plugin(plugin)

    def _run(self, tasks: list[GroupTask], store: RunStore, on_row: OnRow, lost: Lost) -> list[dict[str, Any]]:
        from distributed import Event, as_completed

        stop = Event(f"lab-stop-{store.run_id}", client=self.client)
        stop.clear()
        started = time.time()
        self._ended, self.account = {}, {}
        self._note_workers()
        futures = {}
        placed: dict[Any, str] = {}  # future -> the host it must run on
        submitted: dict[Any, float] = {}
        workers = self._workers_by_resource()
        for task in tasks:
            platform = task.cells[0].platform
            resources = {SLOT: 1, **({platform: 1} if not self.in_process and platform != "auto" else {})}
            placement: dict[str, Any] = {}
            if not self.in_process:  # a remote host decides "auto" (KVM or TCG) by its own probe
                eligible = workers.get(platform if platform != "auto" else SLOT, [])
                if eligible:
                    placement = {"workers": [place(task.cells[0], eligible)], "allow_other_workers": False}
            future = self.client.submit(
                start_group,
                self.group_function,
                task,
                self.in_process,
                resources=resources,
                pure=False,
                key=f"group-{task.run_id}-{task.cells[0].cell_id}",
                **placement,
            )
            futures[future] = task
            submitted[future] = time.time()
            if placement:
                placed[future] = placement["workers"][0]
        rows: list[dict[str, Any]] = []
        handled: set[Any] = set()
        gone_since: dict[str, float] = {}
        checked = 0.0  # when the hosts were last looked at (once a second is plenty against HOST_GONE_S)
        try:
            ready = as_completed(list(futures))
            while len(handled) < len(futures):
                batch = [f for f in ready.next_batch(block=False) if f not in handled] if not ready.is_empty() else []
                gone: list[Any] = []
                if not batch:
                    interrupt.sleep(RESULT_POLL_S)
                    if time.monotonic() - checked >= 1.0:
                        checked = time.monotonic()
                        self._note_workers()  # a worker lost later is named by its name, not only its address
                        batch = gone = self._hosts_gone(placed, handled, gone_since)
                for future in batch:
                    handled.add(future)
                    rows += self._collect(
                        future,
                        futures[future],
                        store,
                        on_row,
                        lost,
                        submitted[future],
                        placed.get(future),
                        gone=future in gone,
                    )
        except BaseException:
            stop.set()  # workers stop their guests within STOP_POLL_S + a QEMU shutdown
            deadline = time.monotonic() + 20
            while any(not f.done() for f in futures) and time.monotonic() < deadline:
                time.sleep(0.1)
            for future in futures:
                future.cancel()
            raise
        finally:
            try:
                self.account = self._account(futures, started)
            except Exception as exc:  # the rows are what matters; say why the account is missing
                self.account = {"engine": self._engine(), "error": f"could not read the scheduler's events: {exc!r}"}
        return rows

    def _engine(self) -> str:
        if self.in_process:
            return f"Dask, {self.jobs} workers in this process"
        return f"Dask scheduler {self.scheduler}" if self.scheduler else "Dask, a worker per host over SSH"

    def _note_workers(self) -> None:
        for address, worker in self.client.scheduler_info()["workers"].items():
            self._names[str(address)] = str(worker.get("name", address))

    def _account(self, futures: dict[Any, GroupTask], since: float) -> dict[str, Any]:
        """What the engine did since ``since``: from the scheduler's own events, the workers that left without
        being asked to (killed, unreachable; a nanny may have started another in their place) and the groups
        they held, which Dask ran again on another worker (``to``) or which ended lost; with the groups the
        lab gave up itself (``groups_lost``)."""
        tasks = {str(f.key): t for f, t in futures.items()}
        began = {
            (str(event.get("key")), str(event.get("worker")))
            for when, event in self.client.get_events(STARTED_TOPIC)
            if when >= since and isinstance(event, dict)
        }
        workers_lost: list[dict[str, Any]] = []
        held_by: dict[str, list[str]] = {}  # group key -> the workers lost while running it, in order
        for when, event in self.client.get_events("all"):
            if when < since or not isinstance(event, dict) or event.get("action") != "remove-worker":
                continue
            if event.get("expected"):  # retired at the end of the run, not lost
                continue
            address = str(event.get("worker", "?"))
            name = self._names.get(address, address)
            # Dask hands a worker more groups than it runs at once (they wait there for its slots): the ones
            # that began there are lost mid-group and run again; the others are only placed again.
            held = sorted(str(k) for k in event.get("processing-tasks", ()) if str(k) in tasks)
            running = [k for k in held if (k, address) in began]
            workers_lost.append(
                {
                    "worker": name,
                    "address": address,
                    "utc": _utc(when),
                    "groups": [tasks[k].cells[0].cell_id for k in running],
                    "queued": [tasks[k].cells[0].cell_id for k in held if k not in running],
                }
            )
            for key in running:
                held_by.setdefault(key, []).append(name)
        groups_rerun = []
        for key, losers in held_by.items():
            ended = self._ended.get(key, {})
            final = ended.get("worker") or ""
            for i, loser in enumerate(losers):
                last = i == len(losers) - 1
                groups_rerun.append(
                    {
                        "group": tasks[key].cells[0].cell_id,
                        "cells": len(tasks[key].cells),
                        "from": loser,
                        "to": losers[i + 1] if not last else final,
                        "outcome": "lost again" if not last else ended.get("outcome", "not finished"),
                    }
                )
        groups_lost = [
            {"group": tasks[k].cells[0].cell_id, "cells": len(tasks[k].cells), "host": e.get("host"), "why": e["why"]}
            for k, e in self._ended.items()
            if e.get("outcome") == "lost" and k in tasks
        ]
        workers = sorted(set(self._names.values()))
        return {
            "engine": self._engine(),
            "workers": workers,
            "workers_lost": workers_lost,
            "groups_rerun": groups_rerun,
            "groups_lost": groups_lost,
        }

    def _hosts_gone(self, placed: dict[Any, str], handled: set[Any], gone_since: dict[str, float]) -> list[Any]:
        """Groups waiting for a host that has had no worker for HOST_GONE_S: cancelled, to be recorded lost
        (the caller knows their host from ``placed``)."""
        waiting = {f: h for f, h in placed.items() if f not in handled and not f.done()}
        if not waiting:
            return []
        now = time.monotonic()
        alive = {str(w.get("host")) for w in self.client.scheduler_info()["workers"].values()}
        for host in set(waiting.values()):
            if host in alive:
                gone_since.pop(host, None)
            else:
                gone_since.setdefault(host, now)
        expired = [f for f, h in waiting.items() if h in gone_since and now - gone_since[h] >= HOST_GONE_S]
        for future in expired:
            future.cancel()
        return expired

    def _collect(
        self,
        future: Any,
        task: GroupTask,
        store: RunStore,
        on_row: OnRow,
        lost: Lost,
        submitted: float,
        placed: str | None,
        *,
        gone: bool,
    ) -> list[dict[str, Any]]:
        """One finished group, or one abandoned because its ``placed`` host is ``gone``: its rows and
        artifacts into the store (``placed``: the host the group was restricted to, if any)."""
        interrupt.check()
        try:
            if gone:
                raise HostError(f"host {placed} has had no Dask worker for {HOST_GONE_S:.0f} s")
            result = future.result()
        except Exception as exc:
            if not infrastructure_failure(exc):
                raise
            log.warning("boot group of %s lost: %r", task.cells[0].cell_id, exc)
            self._ended[str(future.key)] = {"outcome": "lost", "host": placed, "why": f"{type(exc).__name__}: {exc}"}
            result = lost(task, exc, placed)
        else:
            statuses = [str(row.get("status")) for row in result.rows]
            self._ended[str(future.key)] = {
                "outcome": ", ".join(f"{statuses.count(s)} {s}" for s in sorted(set(statuses))) or "no rows",
                "worker": result.worker.get("dask_worker", ""),
            }
        if result.interrupted:
            interrupt.request_stop(result.interrupted)
            interrupt.check()
        import_result(store, result)
        if "task_started" in result.worker:  # the time Dask added around the group (queueing included)
            self.overheads.append(
                time.time() - submitted - (result.worker["task_ended"] - result.worker["task_started"])
            )
        by_id = {c.cell_id: c for c in task.cells}
        for row in result.rows:
            on_row(by_id[row["cell_id"]], row)
        return list(result.rows)


# Environment variables a worker started over SSH inherits from its controller (besides the host's settings).
FORWARDED_ENV = ("SWIOTLB_LAB_TEST_SESSION",)


class SshWorkerPool(DaskPool):
    """A scheduler in this process and one Dask worker per host of a hosts.toml, started over SSH (the
    host's own ``python -m distributed.cli.dask_worker``, with a nanny that restarts a lost worker).

    Each worker offers ``slot=<slots>`` and one resource per platform the host claims; it reaches the
    scheduler at the address the host sees this machine at (``$SSH_CONNECTION``), and exits on its own
    when the scheduler is gone for ``death_timeout_s``, so a lost controller leaves no worker (and,
    through the parent-death signal, no QEMU) behind for long.
    """

    def __init__(self, hosts: Sequence[Any], *, bind: str = "0.0.0.0", death_timeout_s: int = 60) -> None:
        super().__init__(stage=True)
        self.hosts = list(hosts)
        self.bind = bind
        self.death_timeout_s = death_timeout_s
        self._connections: list[Any] = []
        self._promises: list[Any] = []
        self.unreachable: dict[str, str] = {}  # host name -> why its worker could not be started

    def _start(self, host: Any, port: int) -> None:
        from lab.hosts import connect

        conn = connect(host)
        self._connections.append(conn)
        seen_as = conn.run("echo $SSH_CONNECTION", hide=True, in_stream=False).stdout.split()[0]
        resources = ",".join([f"{SLOT}={host.slots}", *(f"{p}={host.slots}" for p in host.platforms)])
        argv = [
            host.python,
            "-m",
            "distributed.cli.dask_worker",
            f"tcp://{seen_as}:{port}",
            "--nthreads",
            str(host.slots),
            "--resources",
            resources,
            "--name",
            host.name,
            "--no-dashboard",
            "--death-timeout",
            str(self.death_timeout_s),
        ]
        # the host's own QEMU, firmware and C-bit position: its worker reads them from its environment
        env = {"SWIOTLB_LAB_CACHE": host.cache, **host.settings.environment()}
        # A marker the controller carries (the test suite's session token) reaches the worker and its QEMUs,
        # so a QEMU started over SSH is known as this session's, not as anyone's.
        env.update({k: v for k, v in os.environ.items() if k in FORWARDED_ENV})
        command = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()) + f" exec {shlex.join(argv)}"
        self._promises.append(conn.run(command, hide=True, warn=True, in_stream=False, asynchronous=True))

    def offered(self) -> dict[str, str]:
        """As for any cluster, plus the hosts whose worker could not be started and why."""
        offered = super().offered()
        if self.unreachable:
            gone = "; ".join(f"{name}: {why}" for name, why in sorted(self.unreachable.items()))
            offered = {p: f"{why}; unreachable: {gone}" if why else "" for p, why in offered.items()}
        return offered

    def __enter__(self) -> SshWorkerPool:
        from distributed import Client, LocalCluster

        # A host that cannot be reached or whose worker never joins is left out, with its reason: the run
        # goes on with the others (cells only it offered are skipped, saying why); with none, it cannot.
        try:
            self.cluster = LocalCluster(
                n_workers=0, processes=False, protocol="tcp://", host=self.bind, dashboard_address=None
            )
            self.client = Client(self.cluster)
            port = int(self.cluster.scheduler_address.rsplit(":", 1)[1])
            for host in self.hosts:
                try:
                    self._start(host, port)
                except Exception as exc:  # SSH refused, key mismatch, no route: this host only
                    self.unreachable[host.name] = f"could not start its worker over SSH: {exc}"
                    log.warning("host %s left out: %s", host.name, exc)
            started = [h for h in self.hosts if h.name not in self.unreachable]
            if started:
                with contextlib.suppress(TimeoutError):
                    self.client.wait_for_workers(len(started), timeout=120)
                joined = {str(w.get("name")) for w in self.client.scheduler_info()["workers"].values()}
                for host in started:
                    if host.name not in joined:
                        self.unreachable[host.name] = "its worker did not join the scheduler within 120 s"
            if len(self.unreachable) == len(self.hosts):
                reasons = "; ".join(f"{name}: {why}" for name, why in self.unreachable.items())
                raise HostError(f"no host could run a worker ({reasons}) (try: python -m lab doctor --hosts ...)")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self.client is not None:
            with contextlib.suppress(Exception):
                self.client.retire_workers(close_workers=True)
        super().__exit__()
        for conn in self._connections:
            with contextlib.suppress(Exception):
                conn.close()


def place(cell: Cell, workers: Sequence[str]) -> str:
    """The host for a boot group: every kernel of one comparison unit (pool, device, vCPUs, memory,
    repetition, platform) lands on the same host, so kernels are compared on one machine; units spread
    over the eligible workers by a stable hash, not by anything the scheduler happens to see first."""
    unit = (cell.pool_slabs, cell.device, cell.vcpus, cell.memory_mib, cell.repetition, cell.platform)
    digest = int(hashlib.sha256(repr(unit).encode()).hexdigest()[:8], 16)
    return sorted(workers)[digest % len(workers)]


# The engine's loggers (Dask's, its networking's, asyncssh's): their lines go to the run's engine.log.
ENGINE_LOGGERS = ("distributed", "tornado", "asyncssh", "bokeh")


def _engine_loggers() -> list[logging.Logger]:
    """The engine's top loggers, and those of their children that have handlers of their own: Dask, imported
    before the root logger has a handler (a notebook, a test, any library use), gives ``distributed.client``,
    ``distributed.gc`` and ``tornado.application`` their own stderr handler and stops them propagating, so
    redirecting ``distributed`` alone leaves their lines on the terminal."""
    names = set(ENGINE_LOGGERS)
    for name, logger in list(logging.root.manager.loggerDict.items()):
        top = name.split(".", 1)[0]
        if top in ENGINE_LOGGERS and isinstance(logger, logging.Logger) and logger.handlers:
            names.add(name)
    return [logging.getLogger(name) for name in sorted(names)]


@contextlib.contextmanager
def engine_log(path: Path) -> Iterator[None]:
    """Dask's own log lines (a scheduler's traceback when a worker is lost, a cluster's shutdown) go to
    ``path`` in the run directory instead of the terminal: the run's summary and manifest say what the
    infrastructure did, the log keeps the engine's words.  At -vv they also still reach the terminal."""
    handler = logging.FileHandler(path, delay=True)  # no file for a run that never used the engine
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    debugging = logging.getLogger().getEffectiveLevel() <= logging.DEBUG
    saved = []
    for logger in _engine_loggers():
        saved.append((logger, logger.propagate, list(logger.handlers)))
        logger.handlers = [*logger.handlers, handler] if debugging else [handler]
        logger.propagate = debugging and not logger.handlers[:-1]  # at -vv: Dask's own handler, or the root's
    try:
        yield
    finally:
        for logger, propagate, handlers in saved:
            logger.handlers, logger.propagate = handlers, propagate
        handler.close()


@contextlib.contextmanager
def local_executor(jobs: int) -> Iterator[Executor]:
    """Where a run on this machine runs its boot groups: this thread for one at a time (phases reach the
    reporter live), an in-process Dask cluster of ``jobs`` slots for more."""
    if jobs <= 1:
        yield InThread()
        return
    with DaskPool(jobs=jobs) as pool:
        yield pool


def group_task(run_id: str, cells: list[Cell], ctx: LabContext) -> GroupTask:
    """The task for one boot group, from the controller's context."""
    kernels = {c.kernel: ctx.kernels[c.kernel] for c in cells}
    specs = {c.kernel: boot_spec(ctx, c) for c in cells}
    return GroupTask(
        run_id=run_id,
        cells=tuple(cells),
        kernels=kernels,
        bzimages={k: stage(s.kernel) for k, s in specs.items()},
        initrds={k: stage(s.initrd) for k, s in specs.items()},
        host_key=ctx.image.host_key,
        client_key=stage(ctx.client_key.private_path),
        client_public=ctx.client_key.public_line,
        settings={  # qemu, firmware and cbitpos serve in-process workers only: another host has its own
            "accel": ctx.accel,
            "offered": ctx.offered,
            "qemu": ctx.hypervisor.qemu if hasattr(ctx.hypervisor, "qemu") else "qemu-system-x86_64",
            "firmware": {k: str(v) for k, v in ctx.firmware.items()},
            "cbitpos": ctx.cbitpos,
            "provenance": ctx.provenance,
        },
    )
