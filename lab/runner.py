"""Runs cells: boots each boot group once, runs its workloads in turn, hands rows to the store."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pandas as pd

from lab import doorbells, interrupt, netload, probes
from lab.errors import BootError, GuestCommandError, LabError, LabTimeout, ParseError
from lab.guest import Guest
from lab.image import GuestImage, initrd_for
from lab.kernel import KernelBuild
from lab.keys import KeyPair
from lab.matrix import DEFAULT_POOL, NEIGHBOUR_BPS, QUEUE_FIT_MAX_SECTORS_KB, Cell, Matrix, queue_fit_share
from lab.parse import (
    Hist,
    busy_cpu_seconds,
    kernel_splats,
    parse_debugfs,
    parse_dmesg,
    parse_fio,
    parse_hctx_flags,
    parse_hist,
    parse_proc_stat,
    parse_queue_limits,
    parse_samples,
)
from lab.platforms import AUTO, encryption_matches, profile
from lab.recovery import FaultInjector
from lab.store import LOST, SKIPPED, RunStore
from lab.swiotlb import SLAB_BYTES
from lab.toolchain import qemu_binary
from lab.vm import Accel, BootSpec, Disk, Endpoint, Hypervisor, RunningGuest, console_excerpt, qemu_version

log = logging.getLogger(__name__)

# For the ETA only (bench boot measures the real values): boot plus QEMU start and stop under TCG.
# Debian's stock kernel reaches SSH in ~10.6 s, the lab's own kernels in 3.5-5.9 s; a default
# matrix run spent 4.8 s per boot beyond its cells' wall time.
BOOT_ESTIMATE_S = {"stock": 15.0, "built": 7.0}
CELL_OVERHEAD_ESTIMATE_S = 6.0

# A boot that panics or hangs before SSH is tried once more before its cells fail.  Under TCG a
# kernel occasionally dies in early boot for reasons of the emulator, not of the kernel: Debian's
# stock kernel took an "Oops: int3" in sched_clock_cpu (a static key being patched while another
# vCPU ran it) in one CI run out of many.  A failure that comes back on the second boot is the
# kernel's, and fails the group; one that does not is recorded in the rows (boot_retries,
# boot_retry_reason) and the first boot's console stays in its boot directory.  Failures that
# cannot be transient (QEMU refusing its argv, a vCPU count or encryption mismatch) are not retried.
BOOT_TRIES = 2
TRANSIENT_BOOT_FAILURES = frozenset({"kernel panic", "timeout"})


class Reporter(Protocol):
    """Progress sink: the CLI shows a rich display; tests can pass a silent one."""

    def phase(self, cell: Cell | None, text: str) -> None: ...
    def cell_done(self, cell: Cell, row: dict[str, Any], estimate_s: float) -> None: ...


class PhaseRecorder:
    """A reporter that also writes each phase to the run directory (``phase.json``), then passes it on."""

    def __init__(self, store: RunStore, inner: Reporter) -> None:
        self.store, self.inner = store, inner

    def phase(self, cell: Cell | None, text: str) -> None:
        self.store.write_phase(cell.cell_id if cell else "", text)
        self.inner.phase(cell, text)

    def cell_done(self, cell: Cell, row: dict[str, Any], estimate_s: float) -> None:
        # Groups on Dask workers report no phases; their finished cells still show here.
        self.store.write_phase(cell.cell_id, f"finished: {row['status']}")
        self.inner.cell_done(cell, row, estimate_s)


class SilentReporter:
    def phase(self, cell: Cell | None, text: str) -> None:
        log.info("%s: %s", cell.cell_id if cell else "-", text)

    def cell_done(self, cell: Cell, row: dict[str, Any], estimate_s: float) -> None:
        log.info("%s: %s", cell.cell_id, row["status"])


@dataclass
class LabContext:
    """What every cell needs, resolved once per run."""

    hypervisor: Hypervisor
    image: GuestImage
    client_key: KeyPair
    kernels: dict[str, KernelBuild]
    cache: Path
    accel: Accel = "auto"
    provenance: dict[str, Any] = field(default_factory=dict)
    arm_triggers: bool = True  # False only in `bench sampler --observer triggers`, to measure their cost
    offered: dict[str, str] = field(default_factory=dict)  # platform -> "" if this host offers it, else why not
    firmware: dict[str, Path] = field(default_factory=dict)  # platform -> its OVMF image on this host
    cbitpos: int | None = None  # this host's SEV C-bit position (sev-snp)
    initrds: dict[str, Path] = field(default_factory=dict)  # kernel -> its initrd, where already made (workers)
    guest: Callable[[Endpoint, Path, str], Guest] = Guest  # SSH to a booted guest (a fake in unit tests)


def boot_estimate_s(cell: Cell) -> float:
    return BOOT_ESTIMATE_S["stock" if cell.kernel == "stock" else "built"]


def cell_estimate_s(cell: Cell) -> float:
    return cell.workload.runtime_s + CELL_OVERHEAD_ESTIMATE_S


def boot_spec(ctx: LabContext, cell: Cell) -> BootSpec:
    kernel = ctx.kernels[cell.kernel]
    platform = ctx.accel if cell.platform == AUTO else cell.platform
    return BootSpec(
        kernel=kernel.bzimage,
        initrd=ctx.initrds.get(cell.kernel)
        or initrd_for(ctx.image, kernel.modules_dir, kernel.boot_modules, ctx.cache),
        ssh_key_blob=ctx.client_key.public_blob,
        swiotlb_nslabs=None if cell.pool_slabs == DEFAULT_POOL else cell.pool_slabs,
        swiotlb_areas=cell.areas or None,
        swiotlb_force=cell.swiotlb_force,
        vcpus=cell.vcpus,
        memory_mib=cell.memory_mib,
        disks=(Disk(cell.device, hotplug=cell.hotplug), *_neighbour_disks(cell)),  # type: ignore[arg-type]
        extra_cmdline=kernel.boot_args + _poll_args(cell) + _conversion_args(cell) + cell.cmdline,
        forwards=(netload.GUEST_PORT,) if cell.net_load else (),
        accel=platform,  # type: ignore[arg-type]
        firmware=ctx.firmware.get(platform),
        cbitpos=ctx.cbitpos if platform == "sev-snp" else None,
        qemu=qemu_binary(cell.qemu),
    )


def _neighbour_disks(cell: Cell) -> tuple[Disk, ...]:
    """A slow neighbour (claim C9): a virtio-blk disk (its driver throttles too) that QEMU limits to
    NEIGHBOUR_BPS; a different kind from the NVMe under test, so each keeps its guest name."""
    return (Disk("virtio-blk", bps_limit=NEIGHBOUR_BPS),) if cell.neighbour == "slow" else ()


def _conversion_args(cell: Cell) -> tuple[str, ...]:
    """The emulated page-conversion cost (patches/swiotlb-emulate-conversion), set at boot."""
    return (f"swiotlb.emulated_conversion_ns={cell.conversion_ns}",) if cell.conversion_ns else ()


def _poll_args(cell: Cell) -> tuple[str, ...]:
    if not cell.poll_queues:
        return ()
    module = "nvme" if cell.device == "nvme" else "virtio_blk"
    return (f"{module}.poll_queues={cell.poll_queues}",)


def _boot_name(cell: Cell) -> str:
    digest = hashlib.sha256(repr(cell.boot_key).encode()).hexdigest()[:8]
    return f"{cell.kernel}-{cell.pool_slabs}-{cell.device}-r{cell.repetition}-{digest}"


def base_row(ctx: LabContext, cell: Cell, store: RunStore) -> dict[str, Any]:
    kernel = ctx.kernels[cell.kernel]
    return {
        "run_id": store.run_id,
        "cell_id": cell.cell_id,
        "kernel": cell.kernel,
        "pool_slabs_requested": cell.pool_slabs,
        "device": cell.device,
        "vcpus": cell.vcpus,
        "memory_mib": cell.memory_mib,
        "repetition": cell.repetition,
        "swiotlb_force": cell.swiotlb_force,
        "net_load": cell.net_load,
        "queue_limits": cell.queue_limits,
        "conversion_ns": cell.conversion_ns,  # requested; conversion_ns_applied is what the kernel took
        "neighbour": cell.neighbour,
        "swiotlb_areas_requested": cell.areas or None,  # None: the kernel's default (one per vCPU)
        "cmdline_extra": " ".join(cell.cmdline),
        "qemu_toolchain": cell.qemu,  # "host", or the toolchain root whose QEMU ran it (qemu_version says which)
        # Whether the in-guest sampler ran during fio, and at what rate: performance judges compare
        # like with like, and prefer unobserved cells (the sampler competes with fio for the vCPUs).
        "observed": cell.observed,
        "sample_hz_requested": cell.sample_hz,
        # Observed cells count everything; the others only what verdicts need (failed maps), since
        # counting every bounce costs guest CPU; the bench turns them off entirely to measure that.
        "triggers_armed": ("all" if cell.observed else "failures") if ctx.arm_triggers else "none",
        "platform": cell.platform,
        "knobs": json.dumps(dict(cell.knobs), sort_keys=True),
        **cell.workload.describe(),
        **kernel.describe(),
        **ctx.provenance,
        # How many guests the host that ran this cell ran at once, and whether they fit its cores.
        "host_oversubscribed": oversubscription(
            int(ctx.provenance.get("host_guest_slots") or 1), cell.vcpus, ctx.provenance.get("host_cpus")
        )
        is not None,
    }


def skipped_row(base: dict[str, Any], detail: str) -> dict[str, Any]:
    """A cell that could not run here: neither a failure nor a finding (``--resume`` retries it)."""
    return {
        **base,
        "status": SKIPPED,
        "failure_reason": "platform not offered",
        "failure_detail": detail,
        "cell_wall_s": 0.0,
    }


def lost_row(base: dict[str, Any], detail: str) -> dict[str, Any]:
    """A cell whose boot group the infrastructure lost (worker or host gone, a task that failed outside the
    guest): neither a failure nor a finding (``--resume`` runs it again)."""
    return {
        **base,
        "status": LOST,
        "failure_reason": "infrastructure",
        "failure_detail": detail[-4000:],
        "cell_wall_s": 0.0,
    }


def failed_row(base: dict[str, Any], reason: str, detail: str, started: float) -> dict[str, Any]:
    return {
        **base,
        "status": "failed",
        "failure_reason": reason,
        "failure_detail": detail[-4000:],
        "cell_wall_s": time.monotonic() - started,
    }


def default_jobs(vcpus: int, host_cpus: int | None = None) -> int:
    """Guests that can run at once without distorting results.

    Each guest needs a host core per vCPU plus one for QEMU's I/O thread;
    oversubscribing cores turns measurements into measurements of the host
    scheduler.  On a 2-core machine this is 1.
    """
    return max(1, (host_cpus or os.cpu_count() or 1) // (vcpus + 1))


def oversubscription(slots: int, vcpus: int, host_cpus: int | None) -> str | None:
    """What is wrong with running ``slots`` guests of ``vcpus`` at once on ``host_cpus`` cores, or None if
    that is no more than ``default_jobs`` allows (one guest is always allowed: it has the host to itself).
    Such a run's cells are valid, but its performance numbers measure the host's scheduler as much as the
    guests (rows: ``host_oversubscribed``)."""
    if not host_cpus or slots <= default_jobs(vcpus, host_cpus):
        return None
    return (
        f"{slots} guests at once x ({vcpus} vCPUs + 1) = {slots * (vcpus + 1)} > {host_cpus} host CPUs: guests "
        "compete for cores, so this run's IOPS and latencies are lower than one guest at a time would measure "
        f"and not comparable with a run of {default_jobs(vcpus, host_cpus)} at a time"
    )


class Executor(Protocol):
    """Where a run's boot groups run: the only part of the lab that knows.  ``InThread`` runs them here, one
    after another; ``lab.fanout`` has Dask's (an in-process cluster, a scheduler, workers over SSH).
    ``run_groups`` runs every group, writes every row into the store, and returns the rows."""

    def run_groups(
        self, groups: list[list[Cell]], store: RunStore, ctx: LabContext, reporter: Reporter
    ) -> list[dict[str, Any]]: ...


class InThread:
    """One boot at a time in this thread: phases reach the reporter (and phase.json) live."""

    def run_groups(
        self, groups: list[list[Cell]], store: RunStore, ctx: LabContext, reporter: Reporter
    ) -> list[dict[str, Any]]:
        return [row for group in groups for row in run_group(group, store, ctx, reporter)]


def run_matrix(
    matrix: Matrix,
    store: RunStore,
    ctx: LabContext,
    reporter: Reporter,
    skip: set[str] | None = None,
    executor: Executor | None = None,
) -> list[dict[str, Any]]:
    """Run every cell not in ``skip`` through ``executor`` (this thread by default); return the rows written.
    Groups whose platform no host offers are recorded as skipped, not run."""
    groups = [[c for c in group if c.cell_id not in (skip or set())] for group in matrix.boot_groups()]
    groups = [group for group in groups if group]
    runnable, skipped = [], []
    for group in groups:
        reason = ctx.offered.get(group[0].platform, "") if group[0].platform != AUTO else ""
        if not reason:
            runnable.append(group)
            continue
        for cell in group:  # no host here offers the platform: say so, and let a resume elsewhere run it
            row = skipped_row(base_row(ctx, cell, store), f"platform {cell.platform} not offered: {reason}")
            store.write_cell(row, None, None)
            reporter.cell_done(cell, row, 0.0)
            skipped.append(row)
    return skipped + (executor or InThread()).run_groups(runnable, store, ctx, reporter)


def failure_reason(exc: LabError) -> str:
    """A short, stable reason for a failed cell (the report groups failures by it)."""
    if isinstance(exc, BootError):
        return exc.reason
    if isinstance(exc, LabTimeout):
        return "timeout"
    if isinstance(exc, GuestCommandError):
        return "ssh failure" if exc.exitcode is None else "guest command failed"
    if isinstance(exc, ParseError):
        return "parse error"
    return type(exc).__name__


def boot_again(reason: str, failed: int) -> bool:
    """Whether a boot that did not come up (``reason``, the ``failed``-th of its group) is tried once more:
    only for what the emulator, not the kernel, can be at fault for (a panic or hang before SSH under TCG),
    and at most BOOT_TRIES boots in all.  A matrix run and a bench boot alike."""
    return reason in TRANSIENT_BOOT_FAILURES and failed < BOOT_TRIES


def checked_platform(guest: Guest, vm: RunningGuest, spec: BootSpec) -> probes.Platform:
    """What the booted guest says it runs on, or a BootError when it is not what ``spec`` asked for."""
    # Trust nothing about the guest platform: a kernel without ACPI on q35,
    # for one, silently runs with a single CPU whatever -smp says.
    platform = probes.read_platform(guest)
    if platform.cpus != spec.vcpus:
        raise BootError(
            f"the guest sees {platform.cpus} CPU(s) but {spec.vcpus} vCPU(s) were requested",
            argv=vm.argv,
            reason="vcpu mismatch",
            console_tail=console_excerpt(vm.console_text()),
        )
    # A CoCo cell whose guest runs unencrypted would measure the wrong thing silently.
    if not encryption_matches(spec.accel, platform.memory_encryption):
        raise BootError(
            f"the guest on platform {spec.accel} reports memory encryption "
            f"{platform.memory_encryption!r}, not {profile(spec.accel).encryption}",
            argv=vm.argv,
            reason="no memory encryption",
            console_tail=console_excerpt(vm.console_text()),
        )
    return platform


def run_group(cells: list[Cell], store: RunStore, ctx: LabContext, reporter: Reporter) -> list[dict[str, Any]]:
    """Run ``cells`` (same boot key) one after another in as few boots as possible.

    A cell that loses the guest (panic, hang, dead QEMU, broken SSH) fails
    alone: the remaining cells get a fresh boot.  A boot that fails fails the
    remaining cells, since the next boot of the same kernel would fail too.
    """
    rows: list[dict[str, Any]] = []
    remaining = list(cells)
    attempt = 0
    failed_boots: list[str] = []  # reasons of the boots of this group that did not come up
    while remaining:
        interrupt.check()
        attempt += 1
        first = remaining[0]
        started = time.monotonic()
        spec = boot_spec(ctx, first)
        reporter.phase(first, f"booting ({len(remaining)} workload(s) in this boot)")
        workdir = store.boot_dir(_boot_name(first) + (f"-boot{attempt}" if attempt > 1 else ""))
        booted = False
        try:
            with ctx.hypervisor.boot(spec, workdir) as vm:
                guest = ctx.guest(vm.endpoint, ctx.client_key.private_path, ctx.image.host_key_blob)
                try:
                    ssh_s = guest.connect(alive=vm.check_alive)
                    platform = checked_platform(guest, vm, spec)
                    booted = True
                    boot_info = {
                        "accel": vm.accelerator,
                        "boot_s": round(vm.boot_seconds, 3),
                        "ssh_connect_s": round(ssh_s, 3),
                        "qemu_argv": " ".join(vm.argv),
                        "kernel_cmdline": spec.cmdline(),
                        "boot_attempt": attempt,
                        "boot_retries": len(failed_boots),
                        "boot_retry_reason": "; ".join(failed_boots),
                        "guest_cpus": platform.cpus,
                        "memory_encryption": platform.memory_encryption,
                        "swiotlb_areas_logged": platform.swiotlb_areas,
                        "boot_id": workdir.name,  # the boot's directory under boots/
                    }
                    if spec.qemu:  # a toolchain root's QEMU, not the host's the provenance names
                        boot_info.update(qemu=spec.qemu, qemu_version=qemu_version(spec.qemu))
                    position = 0
                    while remaining:
                        interrupt.check()
                        cell = remaining.pop(0)
                        # the cell's place in its boot: what ran before it there (order = "alternate")
                        row = run_cell(cell, vm, guest, store, ctx, reporter, {**boot_info, "boot_position": position})
                        position += 1
                        rows.append(row)
                        reporter.cell_done(cell, row, cell_estimate_s(cell))
                        if row.get("guest_lost") or cell.workload.fault:
                            break  # reboot for the rest (a fault leaves the device reset, stalled or gone)
                finally:
                    guest.close()
        except LabError as exc:
            interrupt.check()  # an error caused by the stop itself is not a finding: leave the rest for --resume
            if booted:
                failed_boots = []
                continue  # the guest died between cells: boot again for the rest
            reason = failure_reason(exc)
            failed_boots.append(f"boot {attempt}: {reason}")
            if boot_again(reason, len(failed_boots)):
                log.warning("boot %d of %s failed (%s); trying once more", attempt, first.cell_id, reason)
                reporter.phase(first, f"boot failed ({reason}); trying once more")
                continue
            for cell in remaining:
                row = failed_row(base_row(ctx, cell, store), reason, str(exc), started)
                row.update(boot_retries=len(failed_boots) - 1, boot_retry_reason="; ".join(failed_boots))
                store.write_cell(row, None, None)
                rows.append(row)
                reporter.cell_done(cell, row, cell_estimate_s(cell))
            remaining = []
    return rows


def run_cell(
    cell: Cell,
    vm: RunningGuest,
    guest: Guest,
    store: RunStore,
    ctx: LabContext,
    reporter: Reporter,
    boot_info: dict[str, Any],
) -> dict[str, Any]:
    """One workload in a booted guest: prepare, sample, fio, collect, fetch, parse, store."""
    started = time.monotonic()
    base = {**base_row(ctx, cell, store), **boot_info}
    local = store.cell_dir(cell.cell_id)
    files = probes.WorkloadFiles(f"{probes.GUEST_RUN_DIR}/{cell.cell_id}")
    disk = Disk(cell.device)  # type: ignore[arg-type]

    def phase(text: str, action: Callable[[], Any]) -> Any:
        reporter.phase(cell, text)
        return action()

    load: netload.NetLoad | None = None
    try:
        triggers = base["triggers_armed"]
        share = queue_fit_share(cell.queue_limits)
        queue_fit = (cell.pool_slabs * SLAB_BYTES, share, QUEUE_FIT_MAX_SECTORS_KB) if share is not None else None
        phase(
            "preparing probes",
            lambda: probes.prepare(guest, files, disk.guest_name, dict(cell.knobs), triggers, queue_fit),
        )
        sampler = None
        if cell.observed:
            sampler = phase("starting sampler", lambda: probes.start_sampler(guest, files, cell.sample_hz))
        job_file = None
        if cell.workload.job_file is not None:
            job_file = files.path("job.fio")
            guest.put(cell.workload.job_file, job_file)
        neighbours = _neighbour_disks(cell)
        argv = cell.workload.fio_argv(
            disk.guest_path,
            files.path("fio.json"),
            job_file,
            neighbour=neighbours[0].guest_path if neighbours else None,
        )
        if cell.net_load:
            phase("starting network load", lambda: probes.start_net_load(guest, files, netload.GUEST_PORT))
            load = netload.NetLoad(vm.forwarded(netload.GUEST_PORT))
            load.start()
        fault = FaultInjector(cell.workload, vm, guest, disk.guest_name)
        fault.prepare()
        fio_started = time.monotonic()
        fault.start()
        try:
            fio_exit = phase(
                f"fio {cell.workload.name} ({cell.workload.runtime_s} s)",
                lambda: probes.run_fio(guest, argv, files, cell.workload.timeout_s),
            )
        finally:
            if cell.workload.fault:
                base.update(fault.finish())
        fio_wall = time.monotonic() - fio_started
        if load is not None:
            net_bytes, net_seconds = load.stop()
            net_error, load = load.error, None
            probes.stop_net_load(guest)
            base.update(
                net_load_bytes=net_bytes,
                net_load_mbps=net_bytes * 8 / 1e6 / max(net_seconds, 1e-9),
                net_load_error=net_error,
            )
        if sampler is not None:
            phase("stopping sampler", lambda: probes.stop_sampler(guest, sampler))
        phase("collecting counters", lambda: probes.collect(guest, files, triggers))
        phase("fetching artifacts", lambda: probes.fetch(guest, files, local))
    except LabError as exc:
        interrupt.check()  # interrupted, not failed: the cell is not recorded
        detail = str(exc)
        reason = failure_reason(exc)
        # Anything but a command that ran and failed leaves the guest in doubt: reboot for the next cell.
        guest_lost = not (isinstance(exc, GuestCommandError) and exc.exitcode is not None)
        try:
            vm.check_alive()
        except BootError as dead:
            reason, detail, guest_lost = dead.reason, str(dead), True
        lost = lost_doorbells(vm, local) if reason == "timeout" else []
        if lost:  # the guest waits on commands its emulated controller never read
            reason = doorbells.FAILURE_REASON
            detail = "\n".join(map(str, lost)) + f"\n{LOST_DOORBELL_NOTE}\n(then: {detail})"
        console = vm.console_text()
        (local / "console.log").write_text(console)
        splats = kernel_splats(console)
        if splats:  # a hang the kernel's checkers explained: their report is the reason
            reason, detail = f"kernel {splats[0].kind}", f"{splats[0].text}\n(then: {detail})"
        row = failed_row(base, reason, detail, started)
        row["guest_lost"] = guest_lost
        row["lost_doorbells"] = "; ".join(map(str, lost))
        row["console_excerpt"] = console_excerpt(console)
        return _store_failed(store, row)
    finally:
        if load is not None:  # the cell failed or was interrupted with the stream still being read
            load.stop()
    (local / "console.log").write_text(vm.console_text())
    try:
        row, samples, jobs = build_row(base, local, fio_exit)
    except LabError as exc:
        return _store_failed(store, failed_row(base, "parse error", str(exc), started))
    row.update(fio_wall_s=fio_wall, cell_wall_s=time.monotonic() - started)
    if row["kernel_splat"]:  # the numbers are kept; the cell is not ok
        row.update(
            status="failed", failure_reason=f"kernel {row['kernel_splat']}", failure_detail=row["kernel_splat_text"]
        )
    elif cell.conversion_ns and row["conversion_ns_applied"] != cell.conversion_ns:
        row.update(
            status="failed",
            failure_reason="no emulated conversion cost",
            failure_detail=f"asked for {cell.conversion_ns} ns per page; {probes.CONVERSION_PARAM} "
            f"reads {row['conversion_ns_applied']} (None: absent; the knob is in lab kernels with "
            "CONFIG_SWIOTLB_DYNAMIC, patches/swiotlb-emulate-conversion)",
        )
    store.write_cell(row, samples, jobs)
    return row


LOST_DOORBELL_NOTE = (
    "The driver rang through the shadow doorbell and skipped the MMIO write, because the controller's event "
    "index said it would look; it did not (seen with QEMU 7.2's NVMe emulation; see lab/doorbells.py)."
)


def lost_doorbells(vm: RunningGuest, local: Path) -> list[doorbells.LostDoorbell]:
    """Ask a hung guest's emulated NVMe controllers whether they stopped reading a queue, keeping the
    pages read in the cell's ``nvme-doorbells.txt`` (best effort: a QEMU that does not answer leaves
    the cell's failure as it was)."""

    def hmp(line: str) -> object:
        return vm.qmp("human-monitor-command", 5, **{"command-line": line})

    try:
        lost, dumps = doorbells.find_lost(hmp, vm.qemu_trace_text())
    except Exception as exc:  # a diagnosis must never replace the failure it diagnoses
        log.info("could not read the NVMe doorbell pages: %s", exc)
        return []
    if dumps:
        (local / "nvme-doorbells.txt").write_text(dumps + "".join(f"lost: {item}\n" for item in lost))
    return lost


def _store_failed(store: RunStore, row: dict[str, Any]) -> dict[str, Any]:
    store.write_cell(row, None, None)
    return row


def _delta(before: dict[str, int | None], after: dict[str, int | None], name: str) -> int | None:
    """A cumulative debugfs counter's increase over the workload (None if absent or invalid)."""
    start, end = before.get(name), after.get(name)
    return end - start if start is not None and end is not None else None


def map_failures_from(
    before: dict[str, int | None], after: dict[str, int | None], page_hist: Hist | None
) -> dict[str, Any]:
    """The failed-map columns.  The lab's kernels count failed single mappings and scatterlists themselves
    (patches/dma-map-failure-counter: debugfs, no cost to a map that succeeds).  Elsewhere only the
    hist trigger's single mappings are known (``page_hist``, None if it was not armed): ``map_failures``
    is then a lower bound (scatterlists unknown), and says so in ``map_failures_counted_by``; with neither,
    every column is unknown (None), not zero."""
    page, sg = _delta(before, after, "page"), _delta(before, after, "sg")
    if page is not None and sg is not None:
        return {
            "map_failures": page + sg,
            "map_page_failures": page,
            "map_failure_bytes": _delta(before, after, "page_bytes"),
            "map_sg_errors": sg,
            "map_failures_counted_by": "kernel counter",
        }
    if page_hist is not None:
        return {
            "map_failures": page_hist.hits,
            "map_page_failures": page_hist.hits,
            "map_failure_bytes": page_hist.total("size"),
            "map_sg_errors": None,
            "map_failures_counted_by": "hist trigger: single mappings only (a lower bound)",
        }
    return {
        "map_failures": None,
        "map_page_failures": None,
        "map_failure_bytes": None,
        "map_sg_errors": None,
        "map_failures_counted_by": "",
    }


SINGLE_MAP_TRIGGERS = ("map_page_failures", "map_phys_failures")  # 6.x's event, 7.x's (lab.probes.TRIGGERS)
NO_HITS = Hist((), 0, 0)  # what an empty hist file parses to (parse.parse_hist)


def _single_map_failures(hists: dict[str, Hist], counted: set[str]) -> Hist | None:
    """The failed single mappings counted by whichever map event this kernel has; None when neither trigger
    was armed (not asked for, or the kernel has neither event), which is unknown, not 0."""
    return next((hists[name] for name in SINGLE_MAP_TRIGGERS if name in counted and name in hists), None)


def build_row(base: dict[str, Any], local: Path, fio_exit: int) -> tuple[dict[str, Any], pd.DataFrame, pd.DataFrame]:
    """Turn a cell's fetched artifacts into one result row (+ sample and per-job tables)."""

    def text(name: str) -> str:
        path = local / name
        return path.read_text(errors="replace") if path.exists() else ""

    fio_text = text("fio.json")
    if not fio_text.strip():
        raise LabError(f"fio produced no JSON (exit {fio_exit}); stderr: {text('fio.stderr')[-1500:]}")
    fio = parse_fio(fio_text, source=str(local / "fio.json"))
    before = parse_debugfs(text("debugfs_before.txt"), source=str(local / "debugfs_before.txt"))
    after = parse_debugfs(text("debugfs_after.txt"), source=str(local / "debugfs_after.txt"))
    samples_text = text("samples.csv")
    samples = parse_samples(samples_text, source=str(local / "samples.csv")) if samples_text else None
    # Only the triggers that were armed: an empty hist file is an event this kernel does not have (or a
    # trigger not asked for, or superseded by the kernel's own counter).
    raw = {t.name: text(f"hist_{t.name}.txt") for t in probes.TRIGGERS}
    hists = {name: parse_hist(body, source=f"hist_{name}.txt") for name, body in raw.items() if body.strip()}
    root = probes.DMA_FAILURES_DEBUGFS
    failed_before = parse_debugfs(text("dma_failures_before.txt"), root, str(local / "dma_failures_before.txt"))
    failed_after = parse_debugfs(text("dma_failures_after.txt"), root, str(local / "dma_failures_after.txt"))
    dmesg = parse_dmesg(text("dmesg.txt"))
    splats = kernel_splats(text("dmesg_before.txt") + "\n" + text("dmesg.txt"))
    hctx = parse_hctx_flags(text("hctx_flags.txt"))
    limits = parse_queue_limits(text("queue_limits.txt"), str(local / "queue_limits.txt"))
    cpu_s = None
    if text("stat_before.txt") and text("stat_after.txt"):
        cpu_s = busy_cpu_seconds(
            parse_proc_stat(text("stat_before.txt"), str(local / "stat_before.txt")),
            parse_proc_stat(text("stat_after.txt"), str(local / "stat_after.txt")),
        )
    nslabs = before.get("io_tlb_nslabs")
    hiwater = after.get("io_tlb_used_hiwater")
    counted = {t.name for t in probes.armed(str(base.get("triggers_armed", "all")))}
    conversion_text = text("conversion_ns.txt").strip()
    conversion = int(conversion_text) if conversion_text.isdigit() else None  # None: the kernel has no knob
    # A job file's workload ran what the file says, not the matrix defaults its Workload carries.
    ran = {k: fio.options[k] for k in ("rw", "bs", "iodepth", "numjobs", "ioengine")} if base.get("job_file") else {}
    row: dict[str, Any] = {
        **base,
        **ran,
        "status": "ok",
        "failure_reason": "",
        "failure_detail": "",
        "nslabs": nslabs,
        # The areas the default pool has: the count the kernel logged at boot, limited to one per 128 slots
        "swiotlb_areas": probes.areas_in_use(base.get("swiotlb_areas_logged"), nslabs),
        "nslabs_after": after.get("io_tlb_nslabs"),
        "transient_nslabs_after": after.get("io_tlb_transient_nslabs"),
        "used_before": before.get("io_tlb_used"),
        "used_after": after.get("io_tlb_used"),
        "hiwater": hiwater,
        # A dynamic pool grows during the run: measure against the largest size it had.
        "hiwater_frac": (hiwater / max(nslabs, after.get("io_tlb_nslabs") or 0))
        if hiwater is not None and nslabs
        else None,
        "high_throttle": after.get("high_throttle"),
        "low_throttle": after.get("low_throttle"),
        "high_throttle_count": _delta(before, after, "high_throttle_count"),
        "low_throttle_count": _delta(before, after, "low_throttle_count"),
        "throttle_wait_ns": _delta(before, after, "throttle_wait_ns"),
        "throttle_waiters_after": after.get("throttle_waiters"),
        "throttle_timeouts": _delta(before, after, "throttle_timeouts"),
        "throttle_timeout_ms": after.get("throttle_timeout_ms"),
        "grow_limit_slabs": after.get("io_tlb_max_nslabs"),  # series v2 patch 9 (0: no limit)
        # Failed mappings at the DMA layer, whichever path the driver used: single mappings
        # (dma_map_page returning DMA_MAPPING_ERROR) plus scatterlists.
        **map_failures_from(failed_before, failed_after, _single_map_failures(hists, counted)),
        # nothing counted bounces in a cell that did not arm their trigger: unknown, not zero
        "bounces": hists.get("bounces", NO_HITS).hits if "bounces" in counted else None,
        "bounce_bytes": hists.get("bounces", NO_HITS).total("size") if "bounces" in counted else None,
        "hist_dropped": sum(h.dropped for h in hists.values()),
        "fio_exit": fio_exit,
        "fio_iops": fio.iops,
        "fio_bw_bytes": fio.bw_bytes,
        "fio_clat_p50_us": fio.clat_us[50.0],
        "fio_clat_p99_us": fio.clat_us[99.0],
        "fio_clat_p999_us": fio.clat_us[99.9],
        "fio_errors": fio.errors,
        "fio_short_ios": fio.short_ios,
        "fio_drop_ios": fio.drop_ios,
        "fio_total_ios": fio.total_ios,
        # guest CPU time (all vCPUs, not idle) over fio's run, per completed I/O (claim C12)
        "guest_cpu_s": cpu_s,
        # what the lab set on the device's block queue for a fitted cell (claim C11); None otherwise
        "queue_nr_requests": limits.get("nr_requests"),
        "queue_max_sectors_kb": limits.get("max_sectors_kb"),
        "guest_cpu_us_per_io": cpu_s * 1e6 / fio.total_ios if cpu_s is not None and fio.total_ios else None,
        "fio_runtime_s": fio.runtime_s,
        # the slow neighbour's own jobs (claim C9), kept out of the device's figures above
        "neighbour_iops": fio.neighbour.iops if fio.neighbour else None,
        "neighbour_clat_p99_us": fio.neighbour.clat_us[99.0] if fio.neighbour else None,
        "conversion_ns_applied": conversion,
        "fio_version": fio.version,
        "hctx_blocking": any("BLOCKING" in flags for flags in hctx.values()),
        "hctx_flags": ";".join(f"{k}={'|'.join(sorted(v))}" for k, v in sorted(hctx.items())),
        "dmesg_swiotlb_full": dmesg.swiotlb_full,
        "dmesg_io_errors": dmesg.io_errors,
        "dmesg_ata_exceptions": dmesg.ata_exceptions,
        "kernel_splat": splats[0].kind if splats else "",
        "kernel_splat_text": splats[0].text if splats else "",
        "kernel_splats": len(splats),
        "hung_tasks": sum(s.kind == "hung task" for s in splats),
        "sampler_hz": samples.hz if samples else 0.0,
        "sampler_samples": len(samples.frame) if samples else 0,
        "sampler_complete": samples.complete if samples else False,
        "sampler_late": samples.late if samples else 0,
        "sampler_max_used": float(samples.frame["io_tlb_used"].max())
        if samples and "io_tlb_used" in samples.frame
        else None,
        "debugfs_after": json.dumps(after, sort_keys=True),
    }
    frame = samples.frame.copy() if samples else pd.DataFrame()
    jobs = fio.jobs.copy()
    for key in ("kernel", "pool_slabs_requested", "workload", "repetition"):
        frame[key] = base[key]
        jobs[key] = base[key]
    return row, frame, jobs
