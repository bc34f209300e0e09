"""One QEMU process: the boot spec, its argv, and a context manager that always stops it.

``Hypervisor`` is how a guest is booted on the machine that runs QEMU: ``LocalHypervisor`` starts QEMU
here.  Which machine runs a boot group is not decided here: a run's executor (``lab.runner.Executor``; the
Dask ones in ``lab.fanout``) sends the group to a worker, and each worker boots with a ``LocalHypervisor``
of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, Protocol

from lab import interrupt
from lab.errors import BootError, ConfigError, HostError, KernelPanic, LabTimeout
from lab.platforms import _opt, profile
from lab.swiotlb import MIN_POOL_SLABS
from lab.util import cache_dir, sha256_bytes, sha256_file, wait_until

log = logging.getLogger(__name__)

READY_MARKER = "LAB-READY"
# QEMU's NVMe device model traces where the guest put its shadow doorbell pages (lab.doorbells reads the
# trace of a hung cell); every NVMe guest's QEMU writes it, and benchmarks add events (BootSpec.trace_events).
NVME_DBBUF_EVENT = "pci_nvme_dbbuf_config"
TRACE_FILE = "qemu-trace.log"
PANIC_RE = re.compile(r"Kernel panic - not syncing|BUG: kernel NULL pointer|Oops: ")
KVM_FAILURE_RE = re.compile(r"KVM internal error|emulation failure|failed to initialize kvm|Could not access KVM")
DiskKind = Literal["nvme", "virtio-blk", "ahci", "lsi"]
SPARE_PCI_ID = "spare"  # qdev id of BootSpec.spare_pci's device (PCI vendor:device 1234:11e8)
GUEST_DISKS = {"nvme": "/dev/nvme0n1", "virtio-blk": "/dev/vda", "ahci": "/dev/sda", "lsi": "/dev/sda"}
Accel = Literal["auto", "kvm", "tcg", "sev-snp", "tdx"]


def console_excerpt(text: str, lines: int = 40) -> str:
    """The serial console's last ``lines`` lines, or, after a panic or oops, the lines from just
    before its first report on (a panic's stack trace and register dump outrun any fixed tail)."""
    all_lines = text.splitlines()
    for index, line in enumerate(all_lines):
        if PANIC_RE.search(line):
            start = max(0, index - 5)
            return "\n".join(all_lines[start : start + max(lines, 80)])
    return "\n".join(all_lines[-lines:])


@dataclass(frozen=True)
class Disk:
    """A scratch disk for the device under test."""

    kind: DiskKind = "nvme"
    size_mib: int = 1024
    nvme_poll_queues: int = 0  # reserved for polled-I/O cells (C5)
    hotplug: bool = False  # behind a PCIe root port, so QMP device_del can unplug it (id: dut<N>dev)
    bps_limit: int = 0  # a QEMU throttle on the drive, bytes/s (0: none): a slow neighbour disk (claim C9)

    @property
    def guest_path(self) -> str:
        return GUEST_DISKS[self.kind]

    @property
    def guest_name(self) -> str:
        return self.guest_path.removeprefix("/dev/")


@dataclass(frozen=True)
class BootSpec:
    """Everything that determines one boot of a guest."""

    kernel: Path
    initrd: Path
    ssh_key_blob: str  # the client's public key, passed to the guest on the command line
    swiotlb_nslabs: int | None = None
    swiotlb_areas: int | None = None  # swiotlb's second field; None: the kernel's default (one per CPU)
    swiotlb_force: bool = True
    vcpus: int = 2
    memory_mib: int = 1024
    disks: tuple[Disk, ...] = (Disk(),)
    extra_cmdline: tuple[str, ...] = ()
    forwards: tuple[int, ...] = ()  # further guest TCP ports reachable from the host (on 127.0.0.1)
    accel: Accel = "auto"  # a platform name (lab.platforms), or "auto": kvm if a probe boot works, else tcg
    firmware: Path | None = None  # OVMF image for -bios (EFI boot; required on sev-snp and tdx); None: SeaBIOS
    cbitpos: int | None = None  # the host's SEV C-bit position (sev-snp only)
    iommu: bool = False  # QEMU's intel-iommu in front of the devices (a kernel with INTEL_IOMMU uses it)
    trace_events: tuple[str, ...] = ()  # more QEMU trace events, into the same file (benchmarks: an observer)
    spare_pci: bool = False  # QEMU's "edu" PCI device, which no driver claims: for the DMA map benchmark
    boot_timeout_s: float = 120.0
    qemu: str | None = None  # the QEMU binary for this boot (a toolchain root's); None: the hypervisor's own

    def __post_init__(self) -> None:
        if self.swiotlb_nslabs is not None and self.swiotlb_nslabs < MIN_POOL_SLABS:
            raise ConfigError(
                f"swiotlb pool of {self.swiotlb_nslabs} slabs is below the kernel minimum of "
                f"{MIN_POOL_SLABS} slabs (1 MiB)"
            )
        if self.vcpus < 1 or self.memory_mib < 256:
            raise ConfigError(f"need at least 1 vCPU and 256 MiB (got {self.vcpus}, {self.memory_mib} MiB)")

    def cmdline(self) -> str:
        args = ["console=ttyS0", "panic=-1", "oops=panic", "loglevel=6"]
        if self.swiotlb_nslabs is not None or self.swiotlb_force or self.swiotlb_areas is not None:
            # Without a size the kernel keeps its default, and only then may an SEV-SNP or TDX guest enlarge
            # it (swiotlb_adjust_size); "0" would be taken as a size, and rounded to no pool at all.  The
            # syntax is swiotlb=[nslabs][,nareas][,force]: an empty size before the areas keeps the default.
            parts = [str(self.swiotlb_nslabs)] if self.swiotlb_nslabs is not None else []
            if self.swiotlb_areas is not None:
                parts = [parts[0] if parts else "", str(self.swiotlb_areas)]
            if self.swiotlb_force:
                parts.append("force")
            args.append("swiotlb=" + ",".join(parts))
        args.append(f"lab.ssh_key={self.ssh_key_blob}")
        if self.iommu:
            args.append("intel_iommu=on")
        args.extend(self.extra_cmdline)
        return " ".join(args)


def qemu_argv(
    spec: BootSpec,
    *,
    accel: str,
    ssh_port: int,
    console: Path,
    qmp: Path,
    disk_images: tuple[Path, ...],
    qemu: str = "qemu-system-x86_64",
    forwards: dict[int, int] | None = None,
    trace: Path | None = None,
) -> tuple[str, ...]:
    """The QEMU command for ``spec`` on platform ``accel`` (tcg, kvm, sev-snp, tdx); pure, so tests
    can check it without booting.  ``trace``: where QEMU logs where an NVMe controller's shadow
    doorbells live (lab.doorbells), for guests with an NVMe disk."""
    launch = profile(accel)
    extra_fwd = "".join(f",hostfwd=tcp:127.0.0.1:{host}-:{guest}" for guest, host in (forwards or {}).items())
    argv: list[str] = [
        qemu,
        "-nodefaults",
        "-no-user-config",
        "-no-reboot",
        *launch.machine_args(spec.memory_mib, spec.firmware, spec.cbitpos),
        "-smp",
        str(spec.vcpus),
        "-display",
        "none",
        "-vga",
        "none",
        # intel-iommu ahead of the PCI devices it translates for; without interrupt remapping,
        # which on q35 would need a split irqchip.
        *(("-device", "intel-iommu,intremap=off") if spec.iommu else ()),
        "-kernel",
        _opt(spec.kernel),
        "-initrd",
        _opt(spec.initrd),
        "-append",
        spec.cmdline(),
        "-serial",
        f"file:{_opt(console)}",
        "-qmp",
        f"unix:{_opt(qmp)},server=on,wait=off",
        # restrict=on: the guest reaches nothing; only the forwarded port reaches it.
        "-netdev",
        f"user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:{ssh_port}-:22{extra_fwd}",
        # iommu_platform=on makes virtio use the DMA API, so it bounces like in a CoCo VM.
        "-device",
        "virtio-net-pci,netdev=net0,iommu_platform=on,disable-legacy=on,romfile=",
    ]
    for index, (disk, image) in enumerate(zip(spec.disks, disk_images, strict=True)):
        drive = f"dut{index}"
        throttle = f",throttling.bps-total={disk.bps_limit}" if disk.bps_limit else ""
        argv += ["-drive", f"file={_opt(image)},if=none,id={drive},format=raw,cache=writeback,aio=threads{throttle}"]
        # qdev id dut<N>dev: QMP names the device by it (device_del, block_set_io_throttle).
        where = f",id={drive}dev"
        if disk.hotplug:  # q35's root bus is not hot-pluggable; a PCIe root port's slot is
            argv += ["-device", f"pcie-root-port,id=rp{index},bus=pcie.0,chassis={index + 1},slot={index + 1}"]
            where += f",bus=rp{index}"
        if disk.kind == "nvme":
            argv += ["-device", f"nvme,drive={drive},serial=labdut{index}{where}"]
        elif disk.kind == "ahci":  # a port of q35's built-in ICH9 AHCI controller (no hotplug)
            argv += ["-device", f"ide-hd,drive={drive},bus=ide.{index}{where}"]
        elif disk.kind == "lsi":  # a SCSI disk on an LSI 53C895A host adapter (the guest's sym53c8xx)
            argv += [
                "-device",
                f"lsi53c895a,id=lsi{index}",
                "-device",
                f"scsi-hd,drive={drive},bus=lsi{index}.0{where}",
            ]
        else:
            argv += ["-device", f"virtio-blk-pci,drive={drive},iommu_platform=on,disable-legacy=on{where}"]
    if spec.spare_pci:
        argv += ["-device", f"edu,id={SPARE_PCI_ID}"]
    if trace is not None and any(disk.kind == "nvme" for disk in spec.disks):
        argv += ["-trace", f"enable={NVME_DBBUF_EVENT},file={_opt(trace)}"]
        for event in spec.trace_events:
            argv += ["-trace", f"enable={_opt(event)},file={_opt(trace)}"]  # each -trace sets the file
    return tuple(argv)


@functools.cache
def qemu_can_trace(qemu: str) -> bool:
    """Whether this QEMU build has the NVMe trace event (a build with the 'nop' trace backend has none)."""
    try:
        out = subprocess.run([qemu, "-trace", "help"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return NVME_DBBUF_EVENT in out.stdout


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def qemu_version(qemu: str = "qemu-system-x86_64") -> str:
    try:
        out = subprocess.run([qemu, "--version"], capture_output=True, text=True, check=True).stdout
    except (FileNotFoundError, subprocess.CalledProcessError) as exc:
        raise HostError(f"{qemu} not found or not working: install the Debian package qemu-system-x86") from exc
    match = re.search(r"version (\S+)", out)
    return match.group(1) if match else out.strip()


def qmp_command(socket_path: Path, command: str, timeout_s: float, **args: object) -> object:
    """One QMP command with a bound on every step: a stopped (SIGSTOPped) QEMU must not hang the lab."""
    from qemu.qmp import QMPClient

    async def go() -> object:
        client = QMPClient("swiotlb-lab")
        try:
            await asyncio.wait_for(client.connect(str(socket_path)), timeout_s)
            return await asyncio.wait_for(client.execute(command, dict(args)), timeout_s)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.disconnect(), timeout_s)

    return asyncio.run(go())


# The kernel SIGKILLs QEMU when the lab dies, even by SIGKILL: no orphans.  util-linux's setpriv
# (Essential in Debian) sets PR_SET_PDEATHSIG and execs QEMU, so no Python runs between fork and
# exec (a preexec_fn is unsafe once paramiko's, invoke's or --jobs threads exist).  The signal
# fires when the *thread* that started QEMU ends; the lab starts QEMU only from threads that
# outlive it (the main thread, or a boot worker that stops its QEMU before it returns).
DIE_WITH_PARENT = ("setpriv", "--pdeathsig", "KILL", "--")


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int


class RunningGuest(Protocol):
    """What the runner needs from a booted guest, wherever it runs."""

    @property
    def endpoint(self) -> Endpoint: ...
    @property
    def accelerator(self) -> str: ...
    @property
    def argv(self) -> tuple[str, ...]: ...
    @property
    def boot_seconds(self) -> float: ...

    def console_text(self) -> str: ...
    def qemu_trace_text(self) -> str: ...
    def check_alive(self) -> None: ...
    def forwarded(self, guest_port: int) -> Endpoint: ...
    def qmp(self, command: str, timeout_s: float | None = None, **args: object) -> object: ...


class Hypervisor(Protocol):
    """Where QEMU runs.  ``boot`` yields a ready guest and stops it on exit, always.

    On a cluster each host's worker holds a local hypervisor of its own: the fan-out (``lab.fanout``) moves
    kernels and initrds to that host by content hash before a group starts, so ``boot`` always gets paths
    on the host that runs QEMU."""

    name: str

    def boot(self, spec: BootSpec, workdir: Path) -> contextlib.AbstractContextManager[RunningGuest]: ...
    def describe(self) -> dict[str, object]: ...
    def capabilities(self) -> dict[str, str]: ...  # per platform: "" if this hypervisor can run it, else why not
    def stop_all(self) -> int: ...  # stop every QEMU it started that still runs; how many there were


@dataclass
class Machine:
    """Owns one local QEMU process.  Creating it starts nothing; ``launch()`` does."""

    spec: BootSpec
    workdir: Path
    accel: str = "tcg"
    qemu: str = "qemu-system-x86_64"
    quit_timeout_s: float = 5.0
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _port: int = field(default=0, init=False)
    _forwards: dict[int, int] = field(default_factory=dict, init=False)
    _argv: tuple[str, ...] = field(default=(), init=False)
    _started: float = field(default=0.0, init=False)
    _boot_seconds: float = field(default=0.0, init=False)
    _images: list[Path] = field(default_factory=list, init=False)  # scratch disks: removed with QEMU

    # -- paths --------------------------------------------------------------------
    @property
    def console_log(self) -> Path:
        return self.workdir / "console.log"

    @property
    def qemu_log(self) -> Path:
        return self.workdir / "qemu.log"

    @property
    def trace_log(self) -> Path:
        return self.workdir / TRACE_FILE

    @property
    def qmp_socket(self) -> Path:
        # Unix socket paths are limited to 107 bytes: keep it short and out of deep trees.
        digest = sha256_bytes(str(self.workdir.resolve()).encode())[:12]
        return Path("/tmp") / f"swiotlb-lab-{os.getpid()}-{digest}.qmp"

    # -- RunningGuest -------------------------------------------------------------
    @property
    def endpoint(self) -> Endpoint:
        return Endpoint("127.0.0.1", self._port)

    @property
    def accelerator(self) -> str:
        return self.accel

    def forwarded(self, guest_port: int) -> Endpoint:
        """Where on the host a forwarded guest port (BootSpec.forwards) is reached."""
        return Endpoint("127.0.0.1", self._forwards[guest_port])

    @property
    def argv(self) -> tuple[str, ...]:
        return self._argv

    @property
    def boot_seconds(self) -> float:
        return self._boot_seconds

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def console_text(self) -> str:
        try:
            return self.console_log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def qemu_trace_text(self) -> str:
        try:
            return self.trace_log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def console_tail(self, lines: int = 30) -> str:
        return console_excerpt(self.console_text(), lines)

    def _error(self, message: str, cls: type[BootError] = BootError, reason: str = "boot failed") -> BootError:
        code = self._proc.poll() if self._proc else None
        qemu_err = self.qemu_log.read_text(errors="replace").strip() if self.qemu_log.exists() else ""
        if qemu_err:
            message += f"\nQEMU said: {qemu_err[-2000:]}"
        return cls(
            message,
            argv=self._argv,
            exitcode=code,
            log_path=self.console_log,
            console_tail=self.console_tail(),
            reason=reason,
        )

    def check_alive(self) -> None:
        """Raise if the guest panicked or QEMU exited."""
        text = self.console_text()
        if PANIC_RE.search(text):
            raise self._error("guest kernel panic", KernelPanic, reason="kernel panic")
        if self._proc is None or self._proc.poll() is not None:
            raise self._error("QEMU exited unexpectedly", reason="qemu exited")

    # -- lifecycle -----------------------------------------------------------------
    def launch(self) -> None:
        if self._proc is not None:
            raise RuntimeError("Machine.launch() called twice")
        self.workdir.mkdir(parents=True, exist_ok=True)
        images = []
        for index, disk in enumerate(self.spec.disks):
            image = self.workdir / f"disk{index}.raw"
            with image.open("wb") as handle:  # sparse: costs no disk until written
                handle.truncate(disk.size_mib << 20)
            images.append(image)
        self._images = images
        for attempt in range(3):
            self._port = free_port()
            self._forwards = {guest_port: free_port() for guest_port in self.spec.forwards}
            self.console_log.unlink(missing_ok=True)
            self.qmp_socket.unlink(missing_ok=True)
            self._argv = qemu_argv(
                self.spec,
                accel=self.accel,
                ssh_port=self._port,
                console=self.console_log,
                qmp=self.qmp_socket,
                disk_images=tuple(images),
                qemu=self.qemu,
                forwards=self._forwards,
                trace=self.trace_log if qemu_can_trace(self.qemu) else None,
            )
            log.debug("QEMU argv: %s", self._argv)
            # No exception may land between QEMU's start and self._proc knowing it (interrupt.deferred);
            # a stop request is honoured right after, and __enter__ then stops this QEMU.
            with self.qemu_log.open("wb") as err, interrupt.deferred():
                self._started = time.monotonic()
                self._proc = subprocess.Popen(
                    DIE_WITH_PARENT + self._argv,
                    stdin=subprocess.DEVNULL,
                    stdout=err,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # Ctrl-C goes to the lab, which then stops QEMU in order
                )
            interrupt.sleep(0.05)
            if self._proc.poll() is None or "hostfwd" not in self.qemu_log.read_text(errors="replace"):
                return
            log.info("port %d was taken before QEMU bound it; retrying (%d)", self._port, attempt + 1)
            self._proc = None
        raise self._error("could not bind a free SSH forwarding port after 3 attempts")

    def wait_ready(self, timeout_s: float | None = None) -> float:
        """Wait for the guest's readiness marker; return seconds since launch."""
        timeout_s = timeout_s or self.spec.boot_timeout_s

        def ready() -> bool:
            self.check_alive()
            return READY_MARKER in self.console_text()

        try:
            wait_until(ready, timeout_s, what="the guest to boot", interval_s=0.05)
        except LabTimeout as exc:
            raise self._error(f"guest did not boot within {timeout_s:.0f} s", reason="timeout") from exc
        self._boot_seconds = time.monotonic() - self._started
        return self._boot_seconds

    def _qmp_quit(self) -> bool:
        if not self.qmp_socket.exists():
            return False
        try:
            qmp_command(self.qmp_socket, "quit", timeout_s=2.0)
            return True
        except Exception as exc:
            log.debug("QMP quit failed: %r", exc)
            return False

    def qmp(self, command: str, timeout_s: float | None = None, **args: object) -> object:
        """Run one QMP command (e.g. for fault injection or status); ``timeout_s`` bounds each step
        (default 5 s)."""
        return qmp_command(self.qmp_socket, command, timeout_s=timeout_s or 5.0, **args)

    def shutdown(self) -> None:
        """Stop QEMU: QMP quit, then SIGTERM, then SIGKILL.  Harmless to call twice; a second Ctrl-C
        meanwhile is held back until QEMU is gone (at most ~15 s, normally well under one)."""
        with interrupt.deferred():
            self._shutdown()

    def _shutdown(self) -> None:
        proc = self._proc
        try:
            if proc is None or proc.poll() is not None:
                return
            if self._qmp_quit():
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(self.quit_timeout_s)
            for sig in (signal.SIGTERM, signal.SIGKILL):
                if proc.poll() is not None:
                    break
                log.debug("sending %s to QEMU %d", sig.name, proc.pid)
                with contextlib.suppress(ProcessLookupError):
                    # A stopped (SIGSTOPped) QEMU cannot act on SIGTERM until continued.
                    os.kill(proc.pid, signal.SIGCONT)
                    proc.send_signal(sig)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(self.quit_timeout_s)
        finally:
            if proc is not None and proc.poll() is None:  # interrupted mid-way: last resort
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait()
            self.qmp_socket.unlink(missing_ok=True)
            for image in self._images:  # scratch, not a result (1 GiB each, sparse)
                image.unlink(missing_ok=True)

    def __enter__(self) -> Machine:
        try:
            self.launch()
        except BaseException:  # interrupted or failed after QEMU started: __exit__ will not run
            self.shutdown()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


class LocalHypervisor:
    """QEMU on this machine.  Resolves ``accel="auto"`` by a real KVM boot probe."""

    name = "local"

    def __init__(
        self, qemu: str = "qemu-system-x86_64", firmware: dict[str, str] | None = None, cbitpos: int | None = None
    ) -> None:
        self.qemu = qemu
        self.firmware = dict(firmware or {})  # platform -> OVMF image on this host (capabilities only)
        self.cbitpos = cbitpos
        self._accel_cache: dict[tuple[Path, Path], str] = {}
        self.probe_note = ""
        self.launched: list[Machine] = []  # every machine this hypervisor started (for audits and tests)

    def capabilities(self) -> dict[str, str]:
        """What this host offers with this QEMU and firmware (the preflight; "kvm" by device and module, the
        boot probe of ``resolve_accel`` decides whether KVM really works)."""
        from lab.preflight import HostSettings, local_preflight

        return dict(local_preflight(HostSettings(self.qemu, self.firmware, self.cbitpos)).offered)

    def stop_all(self) -> int:
        """Stop every QEMU this hypervisor started that is still running (each boot stops its own on exit;
        this is the last line for a worker that must leave nothing behind)."""
        running = [m for m in self.launched if m._proc is not None and m._proc.poll() is None]
        for machine in running:
            machine.shutdown()
        return len(running)

    def describe(self) -> dict[str, object]:
        return {
            "hypervisor": self.name,
            "qemu": self.qemu,
            "qemu_version": qemu_version(self.qemu),
            "host_cpus": os.cpu_count(),
            "kvm_probe": self.probe_note,
        }

    def resolve_accel(self, spec: BootSpec, workdir: Path) -> str:
        if spec.accel != "auto":
            return spec.accel
        key = (spec.kernel, spec.initrd)
        if key not in self._accel_cache:
            accel, self.probe_note = probe_kvm(spec, workdir, self.qemu)
            self._accel_cache[key] = accel
        return self._accel_cache[key]

    @contextlib.contextmanager
    def boot(self, spec: BootSpec, workdir: Path) -> Iterator[Machine]:
        machine = Machine(spec, workdir, accel=self.resolve_accel(spec, workdir), qemu=spec.qemu or self.qemu)
        self.launched.append(machine)
        with machine:
            machine.wait_ready()
            yield machine


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def probe_kvm(spec: BootSpec, workdir: Path, qemu: str = "qemu-system-x86_64") -> tuple[str, str]:
    """Decide kvm or tcg by really booting ``spec`` under KVM.  Returns (accel, note).

    /dev/kvm existing proves nothing (on PVM hosts a normal kernel dies with an
    emulation failure), so only a guest that reaches its readiness marker
    counts.  The verdict is cached per host boot, QEMU version and kernel.
    """
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg", "/dev/kvm missing or not accessible"
    key = sha256_bytes(f"{_boot_id()}|{qemu_version(qemu)}|{sha256_file(spec.kernel)}".encode())[:16]
    cached = cache_dir() / "probes" / f"kvm-{key}.json"
    if cached.exists():
        verdict = json.loads(cached.read_text())
        return str(verdict["accel"]), str(verdict["note"])
    probe_spec = replace(spec, accel="kvm", vcpus=1, memory_mib=512, disks=(), boot_timeout_s=30.0)
    machine = Machine(probe_spec, workdir / "kvm-probe", accel="kvm", qemu=qemu, quit_timeout_s=1.0)
    started = time.monotonic()
    with machine:

        def settled() -> str | None:
            log_text = machine.qemu_log.read_text(errors="replace") if machine.qemu_log.exists() else ""
            if KVM_FAILURE_RE.search(log_text):
                return "kvm failed: " + KVM_FAILURE_RE.search(log_text).group(0)  # type: ignore[union-attr]
            if READY_MARKER in machine.console_text():
                return "ok"
            if machine._proc is not None and machine._proc.poll() is not None:
                last = log_text.strip().splitlines()[-1:] or [""]
                return f"kvm failed: QEMU exited with {machine._proc.poll()} ({last[0][:200]})"
            return None

        try:
            outcome = wait_until(settled, probe_spec.boot_timeout_s, what="the KVM probe boot")
        except LabTimeout:
            outcome = "kvm failed: no readiness marker within 30 s"
    elapsed = time.monotonic() - started
    accel = "kvm" if outcome == "ok" else "tcg"
    note = f"KVM probe boot: {outcome} after {elapsed:.1f} s"
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_text(json.dumps({"accel": accel, "note": note}))
    log.info("accelerator: %s (%s)", accel, note)
    return accel, note
