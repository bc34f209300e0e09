"""Experiment matrices: TOML → validated axes → cells with stable IDs, grouped by boot."""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from lab.errors import ConfigError
from lab.platforms import PLATFORM_NAMES
from lab.swiotlb import MIN_POOL_SLABS, SLAB_BYTES
from lab.util import read_toml, unknown_key
from lab.workload import FAULT_DEVICES, Workload

NEIGHBOURS = ("none", "slow")
NEIGHBOUR_BPS = 16 << 20  # the slow neighbour's bandwidth limit (QEMU's I/O throttling on its drive)
MATRIX_KEYS = {
    "description": "free text",
    "kernels": "list of kernel variant names",
    "pools": 'list of pool sizes: "2MiB", "64MiB", a number of 2 KiB slabs, or "default" (what the guest kernel '
    "chooses: 64 MiB, or 6% of memory in an SEV-SNP/TDX guest)",
    "devices": 'list of "nvme", "virtio-blk", "ahci" or "lsi"',
    "workloads": "list of workload names defined under [workloads.NAME]",
    "vcpus": "list of vCPU counts",
    "memory": 'list of guest memory sizes, e.g. "1GiB"',
    "repetitions": "number of repetitions (each repetition boots afresh)",
    "order": '"fixed" (each repetition runs its boots and a boot\'s cells in the matrix\'s order) or "alternate" '
    "(odd repetitions run both in reverse, so that an arm is not always first in its boot; paired claims)",
    "throttle": 'list of throttle thresholds: "default" or "HIGH/LOW" in percent of the pool (throttle kernels)',
    "throttle_timeout": 'list of throttle wait bounds: "default", "0ms", "10ms", ..., or "none" (series v2 kernels)',
    "queue_limits": 'list of "default", "fit" or "fit:N%" (the device\'s nr_requests and max_sectors_kb sized so '
    'its I/O in flight fits in N% of the pool, 75% for plain "fit"; claim C11)',
    "grow_limit": 'list of limits on a growing pool: "default" (none) or a size like "4MiB" or a slab count '
    "(series v2 kernels with a growing pool)",
    "net_load": "list of true/false: background TCP stream from guest to host over virtio-net during fio",
    "conversion_cost": 'list of emulated page-conversion costs for a growing pool, per 4 KiB page: "0", "5us", '
    '"500ns" (kernels with CONFIG_SWIOTLB_DYNAMIC; claim C7 emulated)',
    "neighbour": 'list of "none" or "slow": a virtio-blk disk next to the NVMe one, throttled by QEMU to '
    f"{NEIGHBOUR_BPS >> 20} MiB/s, which fio jobs named neighbour* load through ${{LAB_NEIGHBOUR}} (claim C9)",
    "platforms": 'list of "auto" (kvm if it works, else tcg), "tcg", "kvm", "sev-snp", "tdx"',
    "areas": 'list of swiotlb area counts: "default" (one per vCPU) or a number (the kernel rounds it up to a '
    "power of two and to at most one per 128 slots of the pool)",
    "cmdline": 'list of lists of extra kernel parameters, e.g. [[], ["nvme.io_queue_depth=64"]]',
    "qemu": 'list of QEMUs: "host" (this host\'s own) or a toolchain root of images/qemu/recipe.toml, e.g. "sid"',
    "observe": '"first" (the in-guest sampler runs in repetition 0 only), "all" or "none"',
    "sample_hz": "the in-guest sampler's rate in observed cells (default 50)",
    "include": 'list of tables of axis values to add, e.g. {kernel = "throttle", pool = "1MiB"}',
    "exclude": 'list of tables of axis values to drop, e.g. {kernel = "static", workload = "polled"}',
}
WORKLOAD_KEYS = {
    "rw": "fio rw mode",
    "bs": "block size",
    "iodepth": "queue depth",
    "numjobs": "fio jobs",
    "ioengine": "fio I/O engine",
    "runtime": 'run time, e.g. "10s" or 10',
    "size": "fio size",
    "hipri": "polled completions (true/false)",
    "job_file": "path to a fio job file (instead of parameters)",
    "fault": '"reset", "io-timeout" (NVMe) or "unplug": an error-recovery event during fio',
    "fault_after": "seconds into fio when the fault is injected (default 3)",
}
# Drivers that fail a request whose map fails instead of requeueing it (claim C10): "ahci", a SATA
# disk on q35's built-in AHCI controller (libata: its error handler drains the port and retries),
# and "lsi", a SCSI disk on an LSI 53C895A (sym53c8xx: DID_ERROR, retried at once by the midlayer).
DEVICES = ("nvme", "virtio-blk", "ahci", "lsi")
POLLED_DEVICES = ("nvme", "virtio-blk")  # drivers with poll queues
POLL_QUEUES = 2  # NVMe poll queues booted for polled (hipri) workloads
OBSERVE = ("first", "all", "none")
ORDERS = ("fixed", "alternate")
DEFAULT_SAMPLE_HZ = 50.0


# Kernel parameters the lab composes itself, and the matrix key (or the lab's part) that sets each: a
# cmdline entry may not set them behind the lab's back (the row would say one thing and the guest another).
COMPOSED_PARAMS = {
    "swiotlb": "pools, areas (and swiotlb_force)",
    "console": "the lab (the serial console it reads)",
    "panic": "the lab (a panic ends the boot at once)",
    "oops": "the lab (an oops panics)",
    "loglevel": "the lab",
    "lab.ssh_key": "the lab (its SSH key)",
    "intel_iommu": "the lab (the platform's IOMMU)",
    "nvme.poll_queues": "workloads (hipri = true)",
    "virtio_blk.poll_queues": "workloads (hipri = true)",
    "swiotlb.emulated_conversion_ns": "conversion_cost",
    "initcall_blacklist": "the lab (the stock kernel's boot arguments)",
}
MAX_AREAS = 1024


def _cmdline(value: object, where: str) -> tuple[str, ...]:
    """One entry of matrix.cmdline: a list of kernel parameters, each one word."""
    if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
        raise ConfigError(f'{where}: {value!r} must be a list of kernel parameters, e.g. ["nvme.io_queue_depth=64"]')
    for param in value:
        if not param or any(c.isspace() or c in "\"'" for c in param):
            raise ConfigError(f"{where}: {param!r} is not one kernel parameter (no spaces or quotes)")
        name = param.split("=", 1)[0]
        if name in COMPOSED_PARAMS:
            raise ConfigError(f"{where}: {param!r} is set by {COMPOSED_PARAMS[name]}, not by cmdline")
    if len({p.split("=", 1)[0] for p in value}) != len(value):
        raise ConfigError(f"{where}: {value!r} sets a parameter twice")
    return tuple(value)


def _areas(value: object, where: str) -> int:
    """ "default" (0: one per vCPU, the kernel's choice) or a count from 1 to MAX_AREAS."""
    if value == "default":
        return 0
    count = int(value) if isinstance(value, str) and value.isdigit() else value
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= MAX_AREAS:
        raise ConfigError(f'{where}: {value!r} must be "default" or a number of areas from 1 to {MAX_AREAS}')
    return count


def known_kernels() -> tuple[str, ...]:
    """ "stock" (Debian's kernel) and every variant in kernel-configs/variants.toml."""
    from lab.kernel import load_variants

    return ("stock", *load_variants())


def growing_kernels() -> frozenset[str]:
    """Variants built with CONFIG_SWIOTLB_DYNAMIC=y: their pool keeps what it grew for the rest of a boot."""
    from lab.kernel import variants_asking_for

    return variants_asking_for("CONFIG_SWIOTLB_DYNAMIC")


def hotplug_kernels() -> frozenset[str]:
    """Kernels that can take a PCIe hot-unplug (CONFIG_HOTPLUG_PCI_PCIE=y): Debian's stock kernel has it; of
    the lab's variants, those whose fragments ask for it.  The unplug fault needs one."""
    from lab.kernel import variants_asking_for

    return frozenset({"stock"}) | variants_asking_for("CONFIG_HOTPLUG_PCI_PCIE")


_SIZE = re.compile(r"^\s*(\d+)\s*(B|KiB|MiB|GiB|TiB|slabs?)?\s*$", re.I)
_UNITS = {"b": 1, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}
# What the guest needs beside its pool: the image unpacks into RAM (matrix.memory's lower bound).
GUEST_IMAGE_MIB = 256


# kernel, pool slabs, device, vCPUs, memory MiB, repetition, swiotlb force, poll queues, net load, platform,
# alone ("", or what makes a cell boot alone: its error-recovery fault, which leaves the device reset,
# stalled or gone; or its own ID on a kernel whose pool grows)
# plus queue limits, emulated conversion cost (ns per page), swiotlb areas, extra kernel parameters and
# neighbour disk
BootKey = tuple[str, int, str, int, int, int, bool, int, bool, str, str, str, int, int, tuple[str, ...], str, str]
# "fit" / "fit:N%": the device's block queue is limited so that what it can have in flight fits in this
# share of the pool (claim C11: can drivers limit what they have in flight, instead of throttling?).  The
# rest is left to virtio-net and to what alignment wastes.  Plain "fit" is 75% (the share of the first
# C11 run); "fit:75%" is normalised to it, so a cell keeps one name and one ID.
QUEUE_FIT_SHARE = 0.75
QUEUE_LIMITS_VALID = '"default", "fit" (75% of the pool) or "fit:N%" with N a whole number from 1 to 100'
QUEUE_FIT_MAX_SECTORS_KB = 128


@dataclass(frozen=True)
class Cell:
    """One measurement: a workload on one booted configuration."""

    kernel: str
    pool_slabs: int
    device: str
    workload: Workload
    vcpus: int
    memory_mib: int
    repetition: int = 0
    knobs: tuple[tuple[str, int], ...] = ()  # swiotlb debugfs knobs written before the workload
    swiotlb_force: bool = True
    net_load: bool = False  # a TCP stream guest -> host over virtio-net during the workload
    sample_hz: float = 0.0  # the in-guest sampler's rate; 0: unobserved (no sampler during fio)
    platform: str = "auto"  # launch profile (lab.platforms); "auto": kvm where it works, else tcg
    queue_limits: str = "default"  # "fit" or "fit:N%" sizes the device's block queue to the pool (C11)
    conversion_ns: int = 0  # emulated cost per page a growing pool converts (swiotlb.emulated_conversion_ns)
    neighbour: str = "none"  # NEIGHBOURS: "slow" boots a throttled virtio-blk disk next to the NVMe one (C9)
    areas: int = 0  # swiotlb areas asked for on the command line; 0: the kernel's default (one per vCPU)
    cmdline: tuple[str, ...] = ()  # further kernel parameters (matrix.cmdline)
    qemu: str = "host"  # the QEMU that runs it: the host's own, or a toolchain root (lab.toolchain)
    # Boots alone: a growing pool (CONFIG_SWIOTLB_DYNAMIC) keeps what an earlier workload of the same
    # boot grew it to, so a later workload would start from another pool.  Not part of the cell's
    # content: it says how the cell is run, not what it measures.
    solo: bool = False

    @property
    def observed(self) -> bool:
        return self.sample_hz > 0

    def content(self) -> dict[str, Any]:
        workload = self.workload.describe()
        if self.workload.job_file is not None:
            workload["job_file"] = hashlib.sha256(self.workload.job_file.read_bytes()).hexdigest()
        content: dict[str, Any] = {
            "kernel": self.kernel,
            "pool_slabs": self.pool_slabs,
            "device": self.device,
            "vcpus": self.vcpus,
            "memory_mib": self.memory_mib,
            "repetition": self.repetition,
            "workload": workload,
        }
        # Only non-default fields join the content, so IDs of older cells stay valid.
        if self.knobs:
            content["knobs"] = dict(self.knobs)
        if not self.swiotlb_force:
            content["swiotlb_force"] = False
        if self.net_load:
            content["net_load"] = True
        if self.sample_hz:
            content["sample_hz"] = self.sample_hz
        if self.platform != "auto":
            content["platform"] = self.platform
        if self.queue_limits != "default":
            content["queue_limits"] = self.queue_limits
        if self.conversion_ns:
            content["conversion_ns"] = self.conversion_ns
        if self.neighbour != "none":
            content["neighbour"] = self.neighbour
        if self.areas:
            content["areas"] = self.areas
        if self.cmdline:
            content["cmdline"] = list(self.cmdline)
        if self.qemu != "host":
            content["qemu"] = self.qemu
        return content

    @property
    def cell_id(self) -> str:
        """Stable: the same inputs always give the same ID (it names the cell's folder)."""
        digest = hashlib.sha256(json.dumps(self.content(), sort_keys=True).encode()).hexdigest()[:8]
        pool = "default" if self.pool_slabs == DEFAULT_POOL else self.pool_slabs
        return f"{self.kernel}-{pool}-{self.device}-{self.workload.name}-r{self.repetition}-{digest}"

    @property
    def poll_queues(self) -> int:
        """Polled workloads (hipri) need poll queues (nvme.poll_queues, virtio_blk.poll_queues), set at boot."""
        return POLL_QUEUES if self.workload.hipri else 0

    @property
    def hotplug(self) -> bool:
        """The unplug fault needs the device behind a PCIe root port (q35's root bus is not hot-pluggable)."""
        return self.workload.fault == "unplug"

    @property
    def boot_key(self) -> BootKey:
        """Cells with equal keys share one boot (workloads run one after another)."""
        return (
            self.kernel,
            self.pool_slabs,
            self.device,
            self.vcpus,
            self.memory_mib,
            self.repetition,
            self.swiotlb_force,
            self.poll_queues,
            self.net_load,
            self.platform,
            self.workload.fault or (self.cell_id if self.solo else ""),
            self.queue_limits,  # sysfs queue limits stay set for the rest of a boot
            self.conversion_ns,
            self.areas,
            self.cmdline,
            self.neighbour,
            self.qemu,
        )


@dataclass(frozen=True)
class Matrix:
    name: str
    source: str
    description: str
    cells: tuple[Cell, ...]
    raw: dict[str, Any] = field(hash=False, compare=False)

    def boot_groups(self) -> list[list[Cell]]:
        groups: dict[BootKey, list[Cell]] = {}
        for cell in self.cells:
            groups.setdefault(cell.boot_key, []).append(cell)
        return list(groups.values())


def _line_of(text: str, key: str) -> str:
    for lineno, line in enumerate(text.splitlines(), 1):
        if re.match(rf"^\s*{re.escape(key)}\s*=", line) or re.match(rf"^\s*\[.*{re.escape(key)}\]", line):
            return f":{lineno}"
    return ""


def parse_size_bytes(value: object, where: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    match = _SIZE.match(str(value))
    if not match or (match.group(2) or "").lower().startswith("slab"):
        raise ConfigError(f'{where}: {value!r} is not a size like "512MiB" or "1GiB"')
    return int(match.group(1)) * _UNITS[(match.group(2) or "b").lower()]


# pools = ["default"]: no size on the kernel command line, so the guest kernel chooses (64 MiB; in an SEV-SNP
# or TDX guest 6% of memory, clamped to [64 MiB, 1 GiB], an adjustment the kernel makes only when no size
# was given).  The row's nslabs says what the guest got.
DEFAULT_POOL = 0


def parse_pool_slabs(value: object, where: str, default_ok: bool = False) -> int:
    """Pool size in slabs: an integer (slabs), "N slabs", or bytes with a unit ("2MiB"); with ``default_ok``
    also "default" (DEFAULT_POOL: the guest kernel chooses)."""
    if default_ok and str(value).strip() == "default":
        return DEFAULT_POOL
    if isinstance(value, bool):
        raise ConfigError(f"{where}: {value!r} is not a pool size")
    if isinstance(value, int):
        slabs = value
    else:
        match = _SIZE.match(str(value))
        if not match:
            also = ', or "default"' if default_ok else ""
            raise ConfigError(
                f'{where}: {value!r} is not a pool size; use "2MiB", "64MiB" or a slab count like 1024{also}'
            )
        unit = (match.group(2) or "slabs").lower()
        amount = int(match.group(1))
        slabs = amount if unit.startswith("slab") else amount * _UNITS[unit] // SLAB_BYTES
    if slabs < MIN_POOL_SLABS:
        raise ConfigError(
            f"{where}: pool {value!r} = {slabs} slabs is below the kernel minimum of {MIN_POOL_SLABS} slabs (1 MiB)"
        )
    return slabs


def _runtime_s(value: object, where: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    match = re.match(r"^\s*(\d+)\s*s?\s*$", str(value))
    if not match:
        raise ConfigError(f'{where}: runtime {value!r} must be seconds, e.g. 10 or "10s"')
    return int(match.group(1))


def _list(section: dict[str, Any], key: str, default: list[Any], where: str) -> list[Any]:
    value = section.get(key, default)
    if not isinstance(value, list):
        value = [value]
    if not value:
        raise ConfigError(f"{where}: {key} must not be empty")
    return value


def _workload(name: str, spec: object, base: Path, where: str) -> Workload:
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: [workloads.{name}] must be a table")
    unknown = sorted(set(spec) - set(WORKLOAD_KEYS))
    if unknown:
        raise ConfigError(f"{where}: {unknown_key(unknown[0], list(WORKLOAD_KEYS), f'[workloads.{name}]')}")
    kwargs: dict[str, Any] = {
        k: spec[k] for k in ("rw", "bs", "iodepth", "numjobs", "ioengine", "size", "hipri", "fault") if k in spec
    }
    if "fault_after" in spec:
        kwargs["fault_after_s"] = _runtime_s(spec["fault_after"], f"{where}: workloads.{name}.fault_after")
    for key in ("bs", "size"):
        if key in kwargs:
            kwargs[key] = str(kwargs[key])
    if "runtime" in spec:
        kwargs["runtime_s"] = _runtime_s(spec["runtime"], f"{where}: workloads.{name}")
    if "job_file" in spec:
        # runtime stays: it is how long the lab lets fio run before it gives up (the job file's own runtime)
        given = [k for k in ("rw", "bs", "iodepth", "numjobs", "ioengine", "size", "hipri") if k in spec]
        if given:
            raise ConfigError(
                f"{where}: [workloads.{name}] sets job_file and {', '.join(given)}: the job file says "
                "what fio runs, so these would be ignored; set them in the job file"
            )
        job = Path(str(spec["job_file"]))
        kwargs["job_file"] = job if job.is_absolute() else base / job
    try:
        return Workload(name=name, **kwargs)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def _throttle_knobs(value: object, where: str) -> tuple[str, tuple[int, int] | None]:
    """ "default" or "HIGH/LOW" in percent of the pool, e.g. "50/45"."""
    text = str(value).strip()
    if text == "default":
        return text, None
    match = re.match(r"^(\d{1,3})/(\d{1,3})$", text)
    if not match or not 0 < int(match.group(2)) <= int(match.group(1)) <= 100:
        raise ConfigError(f'{where}: {value!r} must be "default" or "HIGH/LOW" percentages with LOW <= HIGH <= 100')
    return text, (int(match.group(1)), int(match.group(2)))


def _knobs_for(percent: tuple[int, int] | None, pool_slabs: int) -> tuple[tuple[str, int], ...]:
    if percent is None:
        return ()
    return (("high_throttle", pool_slabs * percent[0] // 100), ("low_throttle", pool_slabs * percent[1] // 100))


THROTTLE_FOREVER_MS = 2**32 - 1  # series v2: throttle_timeout_ms = U32_MAX waits without a bound


def timeout_label(ms: float | None) -> str:
    """A measured throttle_timeout_ms as a matrix spells it ("10 ms", "none"); "-" for kernels without
    a bound (v1), whose rows have none (None, or NaN once a column mixes them with numbers)."""
    if ms is None or ms != ms:
        return "-"
    return "none" if ms >= THROTTLE_FOREVER_MS else f"{int(ms)} ms"


def _timeout_knob(value: object, where: str) -> tuple[str, tuple[tuple[str, int], ...]]:
    """ "default", "none" (no bound) or "Nms" / "Ns": the series v2 throttle's wait bound."""
    text = str(value).strip()
    if text == "default":
        return text, ()
    if text == "none":
        return text, (("throttle_timeout_ms", THROTTLE_FOREVER_MS),)
    match = re.match(r"^(\d+)\s*(ms|s)$", text)
    if not match or (int(match.group(1)) * (1000 if match.group(2) == "s" else 1)) >= THROTTLE_FOREVER_MS:
        raise ConfigError(f'{where}: {value!r} must be "default", "none" or a time like "0ms", "10ms", "1s"')
    ms = int(match.group(1)) * (1000 if match.group(2) == "s" else 1)
    return text, (("throttle_timeout_ms", ms),)


def _grow_limit_knob(value: object, where: str) -> tuple[str, tuple[tuple[str, int], ...]]:
    """ "default" (no limit) or a pool size: series v2's io_tlb_max_nslabs (patch 9)."""
    if str(value).strip() == "default":
        return "default", ()
    return str(value).strip(), (("io_tlb_max_nslabs", parse_pool_slabs(value, where)),)


_COST = re.compile(r"^\s*(\d+)\s*(ns|us|µs|ms)?\s*$")


def _conversion_ns(value: object, where: str) -> int:
    """An emulated conversion cost per page: 0, or a time like "500ns", "5us", "1ms"."""
    match = _COST.match(str(value))
    if match is None or (match.group(2) is None and int(match.group(1)) != 0):
        raise ConfigError(f'{where}: {value!r} must be 0 or a time per page like "500ns", "5us", "1ms"')
    ns = int(match.group(1)) * {None: 1, "ns": 1, "us": 1000, "µs": 1000, "ms": 1_000_000}[match.group(2)]
    if ns > 10_000_000:
        raise ConfigError(f"{where}: {value!r} is more than 10 ms per page; the guest would do nothing else")
    return ns


def _queue_limits_knob(value: object, where: str) -> str:
    """A queue_limits value in its one spelling: "default", "fit" (75%) or "fit:N%"."""
    text = str(value).strip()
    if text in ("default", "fit"):
        return text
    match = re.fullmatch(r"fit:(\d+)%", text)
    if not match or not 1 <= int(match[1]) <= 100:
        raise ConfigError(f"{where}: {value!r} must be {QUEUE_LIMITS_VALID}")
    percent = int(match[1])
    return "fit" if percent == round(QUEUE_FIT_SHARE * 100) else f"fit:{percent}%"


def queue_fit_share(queue_limits: str) -> float | None:
    """The share of the pool a cell's block queue is fitted to, None for the device's own limits."""
    if queue_limits == "default":
        return None
    if queue_limits == "fit":
        return QUEUE_FIT_SHARE
    return int(queue_limits.removeprefix("fit:").removesuffix("%")) / 100


def timeout_capable(kernel: str) -> bool:
    """Kernels whose throttle has a wait bound (the series v2 variants, named throttle-v2*)."""
    return kernel.startswith("throttle-v2")


def _rule(rule: object, where: str, axes: dict[str, list[Any]], kind: str) -> dict[str, Any]:
    """An include/exclude table: axis → value, values normalised like the axes themselves."""
    if not isinstance(rule, dict):
        raise ConfigError(f'{where}: each {kind} entry must be a table like {{kernel = "static", workload = "polled"}}')
    normalised: dict[str, Any] = {}
    for axis, value in rule.items():
        if axis not in axes:
            raise ConfigError(f"{where}: unknown axis {axis!r} in {kind}; valid: {', '.join(axes)}")
        if axis == "pool":
            value = parse_pool_slabs(value, where, default_ok=True)
        elif axis == "conversion_cost":
            value = _conversion_ns(value, where)
        elif axis == "memory":
            value = parse_size_bytes(value, where) >> 20
        elif axis == "queue_limits":
            value = _queue_limits_knob(value, where)
        elif axis == "areas":
            value = _areas(value, where)
        elif axis == "cmdline":
            value = _cmdline(value, where)
        if value not in axes[axis]:
            raise ConfigError(f"{where}: {kind} names {axis} = {rule[axis]!r}, which is not in matrix.{axis}s")
        normalised[axis] = value
    return normalised


def _matches(combo: dict[str, Any], rule: dict[str, Any]) -> bool:
    return all(combo[axis] == value for axis, value in rule.items())


def load_matrix(source: str | Path, kernels: tuple[str, ...] | None = None) -> Matrix:
    """Load a matrix from a TOML file path or the name of one shipped in the package."""
    path = Path(source)
    if path.suffix != ".toml" and not path.exists():
        shipped = resources.files("lab") / "matrices" / f"{source}.toml"
        if not shipped.is_file():
            names = sorted(
                p.name.removesuffix(".toml")
                for p in (resources.files("lab") / "matrices").iterdir()
                if p.name.endswith(".toml")
            )
            raise ConfigError(
                f"no matrix named {source!r}; shipped matrices: {', '.join(names)} (or give a .toml path)"
            )
        path = Path(str(shipped))
    text, data = read_toml(path, "matrix")
    if "suite" in data:
        return parse_suite(data, text, path, kernels)
    return parse_matrix(data, text, path, kernels if kernels is not None else known_kernels(), growing_kernels())


def parse_suite(data: dict[str, Any], text: str, path: Path, kernels: tuple[str, ...] | None = None) -> Matrix:
    """A suite: several matrices run as one (one run directory, one report).  Its cells are the union of
    theirs; a cell two members share (same content, same ID) runs once."""
    unknown = sorted(set(data) - {"suite"}) or sorted(set(data.get("suite", {})) - {"description", "matrices"})
    if unknown:
        raise ConfigError(
            f"{path}{_line_of(text, unknown[0])}: unknown key {unknown[0]!r} in a suite; a suite is "
            "one [suite] table with description and matrices"
        )
    members = data["suite"].get("matrices")
    where = f"{path}{_line_of(text, 'matrices')}: suite.matrices"
    if not isinstance(members, list) or not members or not all(isinstance(m, str) for m in members):
        raise ConfigError(f"{where}: a non-empty list of shipped matrix names or .toml paths")
    cells: dict[str, Cell] = {}
    for member in members:
        source = path.parent / member if member.endswith(".toml") else member
        try:
            matrix = load_matrix(source, kernels)
        except ConfigError as exc:
            raise ConfigError(f"{where}: member {member!r}: {exc}") from exc
        if "suite" in matrix.raw:
            raise ConfigError(f"{where}: member {member!r} is a suite itself; list its matrices instead")
        for cell in matrix.cells:
            cells.setdefault(cell.cell_id, cell)
    return Matrix(path.stem, str(path), str(data["suite"].get("description", "")), tuple(cells.values()), raw=data)


def parse_matrix(
    data: dict[str, Any], text: str, path: Path, known_kernels: tuple[str, ...], growing: frozenset[str] = frozenset()
) -> Matrix:
    unknown_top = sorted(set(data) - {"matrix", "workloads"})
    if unknown_top:
        raise ConfigError(
            f"{path}{_line_of(text, unknown_top[0])}: unknown table {unknown_top[0]!r}; "
            "valid tables: [matrix], [workloads.NAME]"
        )
    section = data.get("matrix")
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: missing [matrix] table")
    for key in section:
        if key not in MATRIX_KEYS:
            raise ConfigError(f"{path}{_line_of(text, key)}: {unknown_key(key, list(MATRIX_KEYS), '[matrix]')}")

    def where(key: str) -> str:
        return f"{path}{_line_of(text, key)}: matrix.{key}"

    kernels = [str(k) for k in _list(section, "kernels", ["stock"], where("kernels"))]
    for kernel in kernels:
        if kernel not in known_kernels:
            raise ConfigError(
                f"{where('kernels')}: unknown kernel variant {kernel!r}; valid: {', '.join(known_kernels)}"
            )
    pools = [parse_pool_slabs(v, where("pools"), default_ok=True) for v in _list(section, "pools", [], where("pools"))]
    devices = [str(d) for d in _list(section, "devices", ["nvme"], where("devices"))]
    for device in devices:
        if device not in DEVICES:
            raise ConfigError(f"{where('devices')}: unknown device {device!r}; valid: {', '.join(DEVICES)}")
    vcpus = _list(section, "vcpus", [2], where("vcpus"))
    for count in vcpus:
        if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= 64:
            raise ConfigError(f"{where('vcpus')}: {count!r} must be an integer from 1 to 64")
    memory = []
    for value in _list(section, "memory", ["1GiB"], where("memory")):
        mib = parse_size_bytes(value, where("memory")) >> 20
        if mib < GUEST_IMAGE_MIB:
            raise ConfigError(f"{where('memory')}: {value!r} is below the {GUEST_IMAGE_MIB} MiB the guest image needs")
        memory.append(mib)
    repetitions = section.get("repetitions", 1)
    if not isinstance(repetitions, int) or isinstance(repetitions, bool) or not 1 <= repetitions <= 100:
        raise ConfigError(f"{where('repetitions')}: {repetitions!r} must be an integer from 1 to 100")
    order = section.get("order", "fixed")
    if order not in ORDERS:
        raise ConfigError(f"{where('order')}: {order!r} must be one of {', '.join(map(repr, ORDERS))}")

    defined = data.get("workloads", {})
    if not isinstance(defined, dict):
        raise ConfigError(f"{path}: [workloads] must contain tables [workloads.NAME]")
    names = [str(n) for n in _list(section, "workloads", list(defined), where("workloads"))]
    workloads = []
    for name in names:
        if name not in defined:
            raise ConfigError(
                f"{where('workloads')}: workload {name!r} is not defined; "
                f"defined: {', '.join(defined) or 'none'} (add [workloads.{name}])"
            )
        workloads.append(_workload(name, defined[name], path.parent, f"{path}{_line_of(text, 'workloads.' + name)}"))

    net_load = _list(section, "net_load", [False], where("net_load"))
    if not all(isinstance(v, bool) for v in net_load):
        raise ConfigError(f"{where('net_load')}: {net_load!r} must be a list of true/false")
    throttles = [
        _throttle_knobs(v, where("throttle")) for v in _list(section, "throttle", ["default"], where("throttle"))
    ]
    timeouts = [
        _timeout_knob(v, where("throttle_timeout"))
        for v in _list(section, "throttle_timeout", ["default"], where("throttle_timeout"))
    ]
    limits = [
        _grow_limit_knob(v, where("grow_limit")) for v in _list(section, "grow_limit", ["default"], where("grow_limit"))
    ]
    queue_limits = [
        _queue_limits_knob(v, where("queue_limits"))
        for v in _list(section, "queue_limits", ["default"], where("queue_limits"))
    ]
    costs = [
        _conversion_ns(v, where("conversion_cost"))
        for v in _list(section, "conversion_cost", [0], where("conversion_cost"))
    ]
    neighbours = [str(v) for v in _list(section, "neighbour", ["none"], where("neighbour"))]
    for value in neighbours:
        if value not in NEIGHBOURS:
            raise ConfigError(f"{where('neighbour')}: {value!r} must be one of {', '.join(map(repr, NEIGHBOURS))}")
    areas = [_areas(v, where("areas")) for v in _list(section, "areas", ["default"], where("areas"))]
    cmdlines = [_cmdline(v, where("cmdline")) for v in _list(section, "cmdline", [[]], where("cmdline"))]
    qemus = [str(q) for q in _list(section, "qemu", ["host"], where("qemu"))]
    if qemus != ["host"]:
        from lab.toolchain import names as qemu_names

        known = qemu_names()  # the recipe file, read once
        for name in qemus:
            if name not in known:
                raise ConfigError(f"{where('qemu')}: unknown QEMU {name!r}; valid: {', '.join(known)}")
    platforms = [str(p) for p in _list(section, "platforms", ["auto"], where("platforms"))]
    for name in platforms:
        if name not in PLATFORM_NAMES:
            raise ConfigError(f"{where('platforms')}: unknown platform {name!r}; valid: {', '.join(PLATFORM_NAMES)}")
    observe = section.get("observe", "first")
    if observe not in OBSERVE:
        raise ConfigError(f"{where('observe')}: {observe!r} must be one of {', '.join(map(repr, OBSERVE))}")
    sample_hz = section.get("sample_hz", DEFAULT_SAMPLE_HZ)
    if not isinstance(sample_hz, int | float) or isinstance(sample_hz, bool) or not 0 < sample_hz <= 1000:
        raise ConfigError(f"{where('sample_hz')}: {sample_hz!r} must be a number of samples per second, 0 < Hz <= 1000")

    def rate(repetition: int) -> float:
        return float(sample_hz) if observe == "all" or (observe == "first" and repetition == 0) else 0.0

    by_name = {w.name: w for w in workloads}
    axes: dict[str, list[Any]] = {
        "kernel": kernels,
        "pool": pools,
        "device": devices,
        "vcpus": vcpus,
        "memory": memory,
        "workload": names,
        "throttle": [t[0] for t in throttles],
        "throttle_timeout": [t[0] for t in timeouts],
        "grow_limit": [g[0] for g in limits],
        "queue_limits": queue_limits,
        "net_load": net_load,
        "platform": platforms,
        "conversion_cost": costs,
        "neighbour": neighbours,
        "areas": areas,
        "cmdline": cmdlines,
        "qemu": qemus,
    }
    for axis, values in axes.items():  # a value listed twice would make two cells with one cell ID
        seen: list[Any] = []
        for value in values:
            if value in seen:
                key = f"{axis}s" if axis in ("kernel", "pool", "device", "workload", "platform") else axis
                raise ConfigError(f"{where(key)}: {value!r} is listed twice (the same cells twice); list it once")
            seen.append(value)
    knobs_of = dict(throttles)
    timeout_knobs = dict(timeouts)
    limit_knobs = dict(limits)
    excludes = [
        _rule(r, where("exclude"), axes, "exclude") for r in _list(section, "exclude", [{}], where("exclude")) if r
    ]
    includes = [
        _rule(r, where("include"), axes, "include") for r in _list(section, "include", [{}], where("include")) if r
    ]

    combos = [dict(zip(axes, values, strict=True)) for values in itertools.product(*axes.values())]
    # Threshold overrides only mean something on kernels with the throttle.
    combos = [c for c in combos if c["throttle"] == "default" or "throttle" in c["kernel"]]
    combos = [c for c in combos if c["throttle_timeout"] == "default" or timeout_capable(c["kernel"])]
    # A growth limit only means something on a series v2 kernel whose pool grows.
    combos = [
        c for c in combos if c["grow_limit"] == "default" or (timeout_capable(c["kernel"]) and c["kernel"] in growing)
    ]
    # An emulated conversion cost is charged only where a pool grows.
    combos = [c for c in combos if c["conversion_cost"] == 0 or c["kernel"] in growing]
    combos = [c for c in combos if not any(_matches(c, rule) for rule in excludes)]
    for rule in includes:
        extra = {axis: values[0] for axis, values in axes.items()} | rule
        if extra not in combos:
            combos.append(extra)
    # read each job file once, not once per combination
    loads_neighbour = {w.name: w.job_file is not None and "LAB_NEIGHBOUR" in w.job_file.read_text() for w in workloads}
    hotplug = hotplug_kernels() if any(w.fault == "unplug" for w in workloads) else frozenset()
    for combo in combos:  # after exclude, so that excluding a pair is the way out
        pool_mib = combo["pool"] * SLAB_BYTES / (1 << 20)
        if pool_mib + GUEST_IMAGE_MIB > combo["memory"]:
            raise ConfigError(
                f"{where('pools')}: a pool of {pool_mib:,.0f} MiB does not fit a guest of "
                f"{combo['memory']:,} MiB with the {GUEST_IMAGE_MIB} MiB its image needs; use a pool of "
                f"at most {(combo['memory'] - GUEST_IMAGE_MIB):,} MiB or more matrix.memory "
                "(or exclude the pair)"
            )
        if combo["pool"] == DEFAULT_POOL and knobs_of[combo["throttle"]] is not None:
            raise ConfigError(
                f"{where('throttle')}: thresholds in percent of the pool need a pool size, and "
                f'pool = "default" leaves the size to the guest kernel; use throttle = "default" '
                "(the kernel's own thresholds) or exclude the pair"
            )
        if combo["pool"] == DEFAULT_POOL and combo["queue_limits"] != "default":
            raise ConfigError(
                f"{where('queue_limits')}: a queue fitted to the pool needs a pool size, and "
                'pool = "default" leaves the size to the guest kernel (exclude the pair)'
            )
        workload = by_name[combo["workload"]]
        if workload.fault == "unplug" and combo["kernel"] not in hotplug:
            raise ConfigError(
                f"{where('workloads')}: workload {workload.name!r} unplugs the device, which kernel "
                f"{combo['kernel']!r} cannot take (no CONFIG_HOTPLUG_PCI_PCIE); kernels that can: "
                f"{', '.join(sorted(hotplug))} (or exclude the pair)"
            )
        if workload.fault and combo["device"] not in FAULT_DEVICES[workload.fault]:
            raise ConfigError(
                f"{where('workloads')}: workload {workload.name!r} injects fault {workload.fault!r}, "
                f"which needs device {' or '.join(FAULT_DEVICES[workload.fault])}, "
                f"not {combo['device']!r} (exclude the pair)"
            )
        if loads_neighbour[workload.name] and combo["neighbour"] == "none":
            raise ConfigError(
                f"{where('workloads')}: workload {workload.name!r} loads ${{LAB_NEIGHBOUR}} "
                f'({workload.job_file}), which needs neighbour = "slow" '
                "(exclude the pair)"
            )
        if combo["neighbour"] != "none" and combo["device"] != "nvme":
            raise ConfigError(
                f"{where('neighbour')}: a neighbour disk (virtio-blk) goes next to an NVMe disk "
                f"under test, not {combo['device']!r} (exclude the pair)"
            )
        if workload.hipri and combo["device"] not in POLLED_DEVICES:
            raise ConfigError(
                f"{where('workloads')}: workload {workload.name!r} polls (hipri), which needs device "
                f"{' or '.join(POLLED_DEVICES)}, not {combo['device']!r} (exclude the pair)"
            )
    cells = tuple(
        Cell(
            c["kernel"],
            c["pool"],
            c["device"],
            by_name[c["workload"]],
            c["vcpus"],
            c["memory"],
            rep,
            knobs=_knobs_for(knobs_of[c["throttle"]], c["pool"])
            + timeout_knobs[c["throttle_timeout"]]
            + limit_knobs[c["grow_limit"]],
            net_load=c["net_load"],
            sample_hz=rate(rep),
            platform=c["platform"],
            queue_limits=c["queue_limits"],
            conversion_ns=c["conversion_cost"],
            neighbour=c["neighbour"],
            areas=c["areas"],
            cmdline=c["cmdline"],
            qemu=c["qemu"],
            solo=c["kernel"] in growing,
        )
        for rep in range(repetitions)
        for c in (combos[::-1] if order == "alternate" and rep % 2 else combos)
    )
    return Matrix(path.stem, str(path), str(section.get("description", "")), cells, raw=data)
