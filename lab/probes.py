"""What the lab reads and writes inside a guest: debugfs, tracefs, blk-mq state, dmesg, the sampler.

Every guest path lives here, so a knob that moves (e.g. debugfs to sysctl)
moves in one place.  Parsing of what is read is in ``lab.parse``.
"""

from __future__ import annotations

import tarfile
from dataclasses import dataclass
from pathlib import Path

from lab.errors import ParseError
from lab.guest import Guest, quote_argv
from lab.swiotlb import MAX_MAPPING_SLABS

SWIOTLB_DEBUGFS = "/sys/kernel/debug/swiotlb"
# The lab's instrument patch (patches/dma-map-failure-counter): failed single mappings (page, and
# their bytes) and failed scatterlists (sg), counted only when a map fails.  Absent from kernels the
# lab did not build.
DMA_FAILURES_DEBUGFS = "/sys/kernel/debug/dma_map_failures"
# The emulated page-conversion cost of a growing pool (patches/swiotlb-emulate-conversion).
CONVERSION_PARAM = "/sys/module/swiotlb/parameters/emulated_conversion_ns"
TRACEFS = "/sys/kernel/tracing"
BLOCK_DEBUGFS = "/sys/kernel/debug/block"
SAMPLER = "/usr/local/bin/swiotlb-sampler"
GUEST_RUN_DIR = "/run/lab"
# The swiotlb debugfs knobs a matrix may set (lab.matrix: throttle, throttle_timeout, grow_limit).  Each cell of
# a boot starts from the value the boot had, so a knob one cell set never leaks into the next (a tmpfs: each
# boot saves its own).
KNOBS = ("high_throttle", "low_throttle", "throttle_timeout_ms", "io_tlb_max_nslabs")
KNOB_DEFAULTS_DIR = f"{GUEST_RUN_DIR}/knob-defaults"
DMA_MAPPING_ERROR = "0xffffffffffffffff"
FAILED_MAPS = f"hist:keys=device:vals=hitcount,size if dma_addr == {DMA_MAPPING_ERROR}"  # a map event's failures


@dataclass(frozen=True)
class HistTrigger:
    """A tracefs hist trigger: counts events in the kernel, so no ring buffer can overrun."""

    name: str
    event: str
    spec: str
    observed_only: bool = False  # fires on every bounce: armed only in cells that run the sampler too
    # a kernel counter that counts the same thing for free: where it exists the trigger is not armed
    superseded_by: str = ""

    @property
    def trigger_file(self) -> str:
        return f"{TRACEFS}/events/{self.event}/trigger"

    @property
    def hist_file(self) -> str:
        return f"{TRACEFS}/events/{self.event}/hist"


TRIGGERS = (
    # NVMe maps with DMA_ATTR_NO_WARN and requeues on failure, so failures leave no log line:
    # on a kernel without the lab's counter, dma_map_page events whose result is
    # DMA_MAPPING_ERROR.  The filter runs on every map (6.3% of a 4k load's IOPS under TCG).
    # Failed scatterlists have no tracepoint that sees them: dma_map_sg_err fires only in a
    # WARN_ON_ONCE branch for unexpected error codes, never for a full pool's -EIO.  Only the
    # lab's counter (DMA_FAILURES_DEBUGFS/sg) counts them.
    HistTrigger("map_page_failures", "dma/dma_map_page", FAILED_MAPS, superseded_by=DMA_FAILURES_DEBUGFS),
    # Linux 7.x maps pages and resources through dma_map_phys(), whose event replaced dma_map_page (the same
    # fields); a kernel has one of the two, and only that one is armed.
    HistTrigger("map_phys_failures", "dma/dma_map_phys", FAILED_MAPS, superseded_by=DMA_FAILURES_DEBUGFS),
    # Counting every bounce costs guest CPU (bench sampler --observer triggers), and no verdict uses it.
    HistTrigger("bounces", "swiotlb/swiotlb_bounced", "hist:keys=dev_name:vals=hitcount,size", observed_only=True),
)
TRIGGER_SETS = ("all", "failures", "none")  # what prepare/collect arm: every trigger, the failure counters, none


def armed(triggers: str) -> tuple[HistTrigger, ...]:
    sets = {"all": TRIGGERS, "failures": tuple(t for t in TRIGGERS if not t.observed_only), "none": ()}
    return sets.get(triggers, TRIGGERS)


@dataclass(frozen=True)
class WorkloadFiles:
    """Where one workload's raw artifacts live in the guest."""

    directory: str

    def path(self, name: str) -> str:
        return f"{self.directory}/{name}"


ARTIFACTS = (
    "fio.json",
    "fio.stderr",
    "stat_before.txt",
    "stat_after.txt",
    "queue_limits.txt",
    "samples.csv",
    "sampler.log",
    "debugfs_before.txt",
    "debugfs_after.txt",
    "dma_failures_before.txt",
    "dma_failures_after.txt",
    "conversion_ns.txt",
    "dmesg_before.txt",
    "dmesg.txt",
    "hctx_flags.txt",
    *(f"hist_{t.name}.txt" for t in TRIGGERS),
)


def _q(text: str) -> str:
    return quote_argv([text])


def _armable(trigger: HistTrigger) -> str:
    """Shell test: the kernel has the trigger's event and no counter that makes it unnecessary."""
    test = f"[ -e {_q(trigger.trigger_file)} ]"
    return f"{test} && [ ! -e {_q(trigger.superseded_by)} ]" if trigger.superseded_by else test


ENCRYPTION_BANNER = "Memory Encryption Features active: "  # arch/x86/mm/mem_encrypt.c, at boot


@dataclass(frozen=True)
class Platform:
    """What the booted guest kernel reports about the machine it runs on."""

    cpus: int
    memory_encryption: str  # e.g. "AMD SEV SEV-ES SEV-SNP" or "Intel TDX"; "none" if the kernel reports none
    swiotlb_areas: int | None = None  # "software IO TLB: area num N." (after rounding to a power of two)


AREAS_LINE = r"software IO TLB: area num \([0-9]*\)\."


def read_platform(guest: Guest) -> Platform:
    """Online CPUs, memory encryption and swiotlb's area count, read right after boot (before any workload
    clears dmesg)."""
    banner = _q(f"s/.*{ENCRYPTION_BANNER}/encryption=/p")
    areas = _q(f"s/.*{AREAS_LINE}.*/areas=\\1/p")
    command = f"nproc; dmesg | sed -n {banner} | head -n 1; dmesg | sed -n {areas} | head -n 1"
    return parse_platform(guest.run(command, timeout_s=30).stdout)


def parse_platform(text: str) -> Platform:
    """The output of read_platform's command: the CPU count, then ``encryption=...`` and ``areas=N`` lines
    when the kernel printed them."""
    lines = text.splitlines()
    try:
        cpus = int(lines[0].strip())
    except (IndexError, ValueError) as exc:
        raise ParseError("the CPU count", "guest nproc", f"printed {lines[:1]!r}") from exc
    fields = dict(line.strip().split("=", 1) for line in lines[1:] if "=" in line)
    encryption = fields.get("encryption", "").strip() or "none"
    areas = fields.get("areas", "").strip()
    return Platform(cpus, encryption, int(areas) if areas.isdigit() else None)


def areas_in_use(logged: int | None, nslabs: int | None) -> int | None:
    """The areas the default pool has: the count the kernel logged, limited as limit_nareas() does to one
    per 128-slot segment of the pool it allocated (kernel/dma/swiotlb.c, 6.12)."""
    if logged is None or nslabs is None:
        return None
    return min(logged, max(1, nslabs // MAX_MAPPING_SLABS))


def fit_queue_lines(disk_name: str, pool_bytes: int, out: str, share: float, max_sectors_kb: int) -> list[str]:
    """Shell lines that limit the device's block queue so that what it can have in flight fits in
    ``share`` of the pool: max_sectors_kb, then nr_requests = share * pool / (hardware queues *
    max_sectors_kb), at least 4 (the block layer's minimum); the values applied go to ``out``."""
    queue = f"/sys/block/{disk_name}/queue"
    budget = int(pool_bytes * share)
    return [
        f"echo {int(max_sectors_kb)} > {_q(queue + '/max_sectors_kb')}",
        f"hwq=$(ls -d /sys/block/{_q(disk_name)}/mq/*/ | wc -l)",
        f"nr=$(( {budget} / (hwq * {int(max_sectors_kb)} * 1024) )); [ $nr -ge 4 ] || nr=4",
        f"echo $nr > {_q(queue + '/nr_requests')}",
        f'echo "hw_queues=$hwq nr_requests=$(cat {_q(queue + "/nr_requests")}) '
        f'max_sectors_kb=$(cat {_q(queue + "/max_sectors_kb")})" > {_q(out)}',
    ]


def prepare(
    guest: Guest,
    files: WorkloadFiles,
    disk_name: str,
    knobs: dict[str, int] | None = None,
    triggers: str = "all",
    queue_fit: tuple[int, float, int] | None = None,
) -> None:
    """Before a workload: reset hiwater, apply throttle knobs, size the block queue to the pool
    (``queue_fit`` = pool bytes, share, max_sectors_kb), arm hist triggers (unless ``triggers`` is False:
    only to measure what they cost), snapshot state."""
    d = files.directory
    lines = [
        "set -e",
        f"mkdir -p {_q(d)}",
        f'for f in $(find {SWIOTLB_DEBUGFS} -name io_tlb_used_hiwater); do echo 0 > "$f"; done',
    ]
    if queue_fit is not None:
        pool_bytes, share, max_sectors_kb = queue_fit
        lines += fit_queue_lines(disk_name, pool_bytes, files.path("queue_limits.txt"), share, max_sectors_kb)
    lines += restore_knob_lines()
    for knob, value in (knobs or {}).items():
        lines.append(f"echo {int(value)} > {_q(SWIOTLB_DEBUGFS + '/' + knob)}")
    for trigger in armed(triggers):
        lines.append(f"if {_armable(trigger)}; then echo {_q(trigger.spec)} > {_q(trigger.trigger_file)}; fi")
    lines += [
        f"dmesg -c > {_q(files.path('dmesg_before.txt'))}",
        f"grep -r . {SWIOTLB_DEBUGFS} > {_q(files.path('debugfs_before.txt'))} || true",
        f"grep -r . {DMA_FAILURES_DEBUGFS} > {_q(files.path('dma_failures_before.txt'))} 2>/dev/null || true",
        f"cat {CONVERSION_PARAM} > {_q(files.path('conversion_ns.txt'))} 2>/dev/null || true",
        f"grep -H . {BLOCK_DEBUGFS}/{_q(disk_name)}/hctx*/flags > {_q(files.path('hctx_flags.txt'))} || true",
    ]
    guest.run("\n".join(lines), timeout_s=30)


def restore_knob_lines() -> list[str]:
    """Shell lines that save each knob's boot-time value the first time a cell runs in a boot and write it
    back before every cell, before that cell's own knobs."""
    return [
        f"mkdir -p {KNOB_DEFAULTS_DIR}",
        f"for k in {' '.join(KNOBS)}; do",
        f'  f={SWIOTLB_DEBUGFS}/$k; s={KNOB_DEFAULTS_DIR}/$k; [ -e "$f" ] || continue',
        '  [ -e "$s" ] || cat "$f" > "$s"',
        '  cat "$s" > "$f"',
        "done",
    ]


def start_sampler(guest: Guest, files: WorkloadFiles, hz: float) -> int:
    argv = [SAMPLER, "-r", f"{hz:g}", "-o", files.path("samples.csv")]
    command = f"setsid {quote_argv(argv)} > {_q(files.path('sampler.log'))} 2>&1 < /dev/null & echo $!"
    return int(guest.run(command, timeout_s=15).stdout.strip())


def stop_sampler(guest: Guest, pid: int) -> None:
    guest.run(
        f"kill -TERM {pid} 2>/dev/null || true; for i in $(seq 100); do kill -0 {pid} 2>/dev/null || exit 0; "
        "sleep 0.05; done; exit 1",
        timeout_s=15,
    )


def collect(guest: Guest, files: WorkloadFiles, triggers: str = "all") -> None:
    """After a workload: counters, hist tables (then disarm), dmesg."""
    lines = [
        f"grep -r . {SWIOTLB_DEBUGFS} > {_q(files.path('debugfs_after.txt'))} || true",
        f"grep -r . {DMA_FAILURES_DEBUGFS} > {_q(files.path('dma_failures_after.txt'))} 2>/dev/null || true",
    ]
    for trigger in armed(triggers):
        out = _q(files.path(f"hist_{trigger.name}.txt"))
        lines.append(
            f"if {_armable(trigger)}; then cat {_q(trigger.hist_file)} > {out}; "
            f"echo {_q('!' + trigger.spec)} > {_q(trigger.trigger_file)}; else : > {out}; fi"
        )
    lines.append(f"dmesg > {_q(files.path('dmesg.txt'))}")
    guest.run("\n".join(lines), timeout_s=30)


def run_fio(guest: Guest, argv: list[str], files: WorkloadFiles, timeout_s: float) -> int:
    """Run fio; its JSON goes to a file (fio may print notes before the JSON on stdout).  The guest's
    CPU time counters (/proc/stat) are read right before and after it, for the CPU time per I/O."""
    stat = "head -n 1 /proc/stat > "
    command = (
        f"{stat}{_q(files.path('stat_before.txt'))}; {quote_argv(argv)} 2> {_q(files.path('fio.stderr'))}; "
        f"rc=$?; {stat}{_q(files.path('stat_after.txt'))}; exit $rc"
    )
    return guest.run(command, timeout_s=timeout_s, check=False).exitcode


def fetch(guest: Guest, files: WorkloadFiles, local_dir: Path) -> list[Path]:
    """Copy the workload's artifacts to the host: one tar file over SFTP (one round trip, not twelve)."""
    archive = files.directory + ".tar"
    guest.run(f"tar -cf {_q(archive)} -C {_q(files.directory)} .", timeout_s=60)
    local_dir.mkdir(parents=True, exist_ok=True)
    local_tar = guest.get(archive, local_dir / "artifacts.tar")
    try:
        with tarfile.open(local_tar) as tar:
            members = [m for m in tar.getmembers() if m.isfile() and Path(m.name).name in ARTIFACTS]
            tar.extractall(local_dir, members=members, filter="data")
    except tarfile.TarError as exc:
        raise ParseError("artifact archive", str(local_tar), str(exc)) from exc
    finally:
        local_tar.unlink(missing_ok=True)
    return [local_dir / m.name for m in members]


def read_debugfs(guest: Guest) -> str:
    return guest.run(f"grep -r . {SWIOTLB_DEBUGFS} || true", timeout_s=15).stdout


def start_net_load(guest: Guest, files: WorkloadFiles, port: int) -> None:
    """The guest side of the background network load: stream zeros to whoever connects."""
    # QEMU's user network accepts the host's connection even before the guest listens (and then
    # drops it), so wait until the guest's socket is in LISTEN state (0A) in /proc/net/tcp{,6}
    # (busybox nc listens on IPv6 where the kernel has it).
    listening = f":{int(port):04X} 0+:0000 0A"
    guest.run(
        f"setsid nc -l -p {int(port)} < /dev/zero > /dev/null 2> {_q(files.path('netload.log'))} &\n"
        f"for i in $(seq 100); do grep -qE {_q(listening)} /proc/net/tcp /proc/net/tcp6 2>/dev/null && exit 0; "
        "sleep 0.1; done; exit 1",
        timeout_s=60,
    )


def stop_net_load(guest: Guest) -> None:
    guest.run("pkill -x nc || true", timeout_s=15)
