"""Benchmarks on real guests (``python -m lab bench ...``): what the lab's instruments cost fio, MMIO doorbells
per NVMe command, the kernel's DMA map benchmark, Dask's dispatch overhead, boot times, kernel builds, report
and trend-page times.  Each returns a result whose ``text()`` the command line prints; BENCHMARKS.md quotes
them with the machine and date."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lab import interrupt
from lab.errors import ConfigError, LabError
from lab.host import require_host
from lab.matrix import Cell, Matrix, load_matrix
from lab.stats import EQUIVALENCE_MARGIN_PCT
from lab.vm import LocalHypervisor

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from lab.guest import Guest
    from lab.runner import LabContext
    from lab.stats import PairedCost
    from lab.vm import BootSpec, Machine

Say = Callable[[str], None]
FREE = f"free if its 95% interval lies within ±{EQUIVALENCE_MARGIN_PCT:g}%"


def quiet(text: str) -> None:
    """A ``say`` that says nothing."""


def abba(pairs: int, first: bool = True) -> list[bool]:
    """The arm of each of ``2 * pairs`` runs in ABBA order (True: with the thing measured): every pair has
    one run of each arm and the order alternates, so a linear drift cancels in the paired differences.
    ``first``: the arm of the first run."""
    return [((index % 4) in (0, 3)) == first for index in range(2 * pairs)]


def lab_context(
    hypervisor: LocalHypervisor,
    kernel_names: Sequence[str],
    accel: str = "auto",
    busy: Callable[[str], AbstractContextManager[Any]] = lambda text: contextlib.nullcontext(),
) -> LabContext:
    """A lab context with the kernels named: Debian's stock kernel is fetched, the lab's variants are built
    (or loaded from the cache), anything else was rejected by the matrix loader."""
    from lab.image import build_image
    from lab.kernel import KernelBuild, build_kernel, stock_kernel
    from lab.keys import client_key
    from lab.runner import LabContext
    from lab.util import cache_dir

    kernels: dict[str, KernelBuild] = {}
    for name in sorted(set(kernel_names)):
        with busy(f"kernel {name}: {'fetching' if name == 'stock' else 'building'} or loading from cache"):
            kernels[name] = stock_kernel() if name == "stock" else build_kernel(name)
    return LabContext(hypervisor, build_image(), client_key(), kernels, cache_dir(), accel=accel)  # type: ignore[arg-type]


@contextlib.contextmanager
def bench_guest(
    ctx: LabContext, hypervisor: LocalHypervisor, spec: BootSpec, workdir: Path, say: Say = quiet
) -> Iterator[tuple[Machine, Guest]]:
    """One bench boot: the accelerator resolved (and kept in ``ctx`` for the rows), the guest booted and
    connected and its platform checked; QEMU is stopped when the block ends.  A boot that panics or times out
    before SSH is tried once more, by the matrix runner's own rule (lab.runner.boot_again)."""
    from lab.guest import Guest
    from lab.runner import boot_again, checked_platform, failure_reason

    ctx.accel = hypervisor.resolve_accel(spec, ctx.cache / "probe-work")  # type: ignore[assignment]
    spec = replace(spec, accel=ctx.accel)
    attempt = 0
    while True:
        attempt += 1
        stack = contextlib.ExitStack()
        try:
            where = workdir if attempt == 1 else workdir.with_name(f"{workdir.name}-try{attempt}")
            vm = stack.enter_context(hypervisor.boot(spec, where))
            guest = stack.enter_context(Guest(vm.endpoint, ctx.client_key.private_path, ctx.image.host_key_blob))
            guest.connect(alive=vm.check_alive)
            checked_platform(guest, vm, spec)  # the vCPUs and memory encryption asked for, as a matrix run checks
        except LabError as exc:
            stack.close()
            reason = failure_reason(exc)
            if not boot_again(reason, attempt):
                raise
            say(f"boot {attempt} failed ({reason}); trying once more")
            continue
        except BaseException:  # Ctrl-C, SIGTERM: QEMU is stopped all the same
            stack.close()
            raise
        with stack:
            yield vm, guest
        return


def bench_row(row: dict[str, Any]) -> dict[str, Any]:
    """A bench cell's row, or the error that stops the bench: a failed cell has no number to give."""
    if row["status"] != "ok":
        raise LabError(f"bench cell failed: {row['failure_reason']}: {row['failure_detail']}")
    return row


class CellPrinter:
    """The runner's reporter for benches: no phases, one line per finished cell."""

    def __init__(self, say: Say, line: Callable[[dict[str, Any]], str]) -> None:
        self.say, self.line = say, line

    def phase(self, cell: Cell | None, text: str) -> None:
        pass

    def cell_done(self, cell: Cell, row: dict[str, Any], estimate_s: float) -> None:
        self.say(self.line(row))


def _stamp() -> str:
    return time.strftime("%Y%m%dT%H%M%S")


def _host() -> str:
    return f"{os.cpu_count()} host CPUs"


def bench_workloads(matrix_name: str, workloads: str, pairs: int) -> tuple[list[str], dict[str, Cell]]:
    """``workloads`` (comma-separated) of the matrix, each as the matrix's repetition-0 cell; ``pairs`` checked."""
    matrix = load_matrix(matrix_name)
    names = [n.strip() for n in workloads.split(",") if n.strip()]
    by_name = {c.workload.name: c for c in reversed(matrix.cells)}  # repetition 0 of each workload
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ConfigError(
            f"--workloads: {', '.join(unknown)} not in matrix {matrix.source}; valid: {', '.join(sorted(by_name))}"
        )
    if pairs < 2:
        raise ConfigError(f"--pairs {pairs}: a confidence interval needs at least 2 pairs")
    return names, by_name


# --- boot ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BootBench:
    accel: str
    kernel: str
    release: str
    boot_s: list[float]
    overheads_s: list[float]  # cell wall time minus fio runtime

    def text(self) -> str:
        t = self.boot_s
        lines = [
            f"\nboot-to-SSH over {len(t)} boots ({self.accel}, kernel {self.kernel} {self.release}):",
            f"  min {min(t):.2f} s, median {statistics.median(t):.2f} s, max {max(t):.2f} s",
        ]
        if self.overheads_s:
            o = self.overheads_s
            lines += [
                f"per-cell overhead (cell wall time minus fio runtime) over {len(o)} cells:",
                f"  min {min(o):.2f} s, median {statistics.median(o):.2f} s, max {max(o):.2f} s",
            ]
        return "\n".join(lines)


def bench_boot(
    matrix_name: str, boots: int, cell_runtime: int, accel: str, results: Path, reporter: Any, say: Say = quiet
) -> BootBench:
    """Boot-to-first-SSH-command times of the matrix's first cell, then its first boot group's cells (fio
    cut to ``cell_runtime`` s) for the per-cell overhead."""
    from lab.guest import Guest
    from lab.runner import boot_spec, run_group
    from lab.store import RunStore
    from lab.vm import Machine

    matrix = load_matrix(matrix_name)
    require_host()
    hypervisor = LocalHypervisor()
    cell = matrix.cells[0]
    ctx = lab_context(hypervisor, (cell.kernel,), accel)
    image, key, cache = ctx.image, ctx.client_key, ctx.cache
    spec = boot_spec(ctx, cell)
    resolved = hypervisor.resolve_accel(spec, cache / "probe-work")
    spec = replace(spec, accel=resolved)  # type: ignore[arg-type]
    work = results / f"bench-boot-{_stamp()}"
    times = []
    for index in range(boots):
        started = time.monotonic()
        with Machine(spec, work / f"boot{index}", accel=resolved) as machine:
            machine.wait_ready()
            with Guest(machine.endpoint, key.private_path, image.host_key_blob) as guest:
                guest.connect(alive=machine.check_alive)
                guest.run("true")
                times.append(time.monotonic() - started)
        say(f"boot {index + 1}/{boots}: {times[-1]:.2f} s to first SSH command")
    ctx.accel = resolved  # type: ignore[assignment]
    ctx.provenance = {"accel": resolved}
    store = RunStore.create(work, {"bench": "boot"}, run_id="cells")
    short = [replace(c, workload=replace(c.workload, runtime_s=cell_runtime)) for c in matrix.boot_groups()[0]]
    rows = run_group(short, store, ctx, reporter)
    overheads = [r["cell_wall_s"] - r["fio_runtime_s"] for r in rows if r["status"] == "ok"]
    return BootBench(resolved, cell.kernel, ctx.kernels[cell.kernel].release, times, overheads)


# --- instrument costs (ABBA pairs) ---------------------------------------------------------------


@dataclass(frozen=True)
class PairedRuns:
    """One workload's runs without and with the thing measured, and its cost with a confidence interval."""

    workload: str
    cost: PairedCost
    without: list[float]
    with_: list[float]
    note: str = ""

    def text(self) -> str:
        c = self.cost
        lines = [
            f"  {self.workload}: {c.mean_pct:+.2f}% (95% CI {c.ci_low_pct:+.2f}% to {c.ci_high_pct:+.2f}%), "
            f"run-to-run spread without it {c.noise_pct:.2f}% SD: {c.verdict}",
            f"    without: {', '.join(f'{v:.0f}' for v in self.without)}",
            f"    with:    {', '.join(f'{v:.0f}' for v in self.with_)}",
        ]
        return "\n".join(lines + ([self.note] if self.note else []))


@dataclass(frozen=True)
class CostBench:
    title: str
    runs: list[PairedRuns]
    results: Path | None = None

    def text(self) -> str:
        tail = [f"results: {self.results}"] if self.results else []
        return "\n".join([self.title, *(r.text() for r in self.runs), *tail])


def bench_observer(
    observer: str,
    hz: float,
    matrix_name: str,
    workloads: str,
    pairs: int,
    runtime: int,
    accel: str,
    results: Path,
    reporter: Any,
    say: Say = quiet,
) -> CostBench:
    """What an instrument (``observer``: the in-guest sampler at ``hz``, or the hist triggers of an
    unobserved cell) costs fio: runs with and without it in ABBA order in one boot per workload, so that
    drifts cancel; the cost gets a confidence interval over the pairs."""
    from lab import probes
    from lab.runner import boot_spec, run_cell
    from lab.stats import paired_cost
    from lab.store import RunStore

    names, by_name = bench_workloads(matrix_name, workloads, pairs)
    require_host()
    hypervisor = LocalHypervisor()
    ctx = lab_context(hypervisor, sorted({by_name[n].kernel for n in names}), accel)
    work = results / f"bench-{observer}-{_stamp()}"
    store = RunStore.create(work, {"bench": observer}, run_id="cells")
    runs = []
    counter = False  # whether the kernel counts failed page maps itself (the lab's instrument patch)
    for name in names:
        base = by_name[name]
        base = replace(base, workload=replace(base.workload, runtime_s=runtime), sample_hz=0.0)
        iops: dict[bool, list[float]] = {True: [], False: []}
        started = time.monotonic()
        with bench_guest(ctx, hypervisor, boot_spec(ctx, base), store.boot_dir(f"boot-{name}"), say) as (vm, guest):
            boot_to_ssh = time.monotonic() - started
            boot_info = {"accel": vm.accelerator}
            counter = guest.run(f"test -d {probes.DMA_FAILURES_DEBUGFS}", timeout_s=30, check=False).exitcode == 0
            for index, on in enumerate(abba(pairs)):
                cell = replace(base, repetition=index, sample_hz=hz if on and observer == "sampler" else 0.0)
                ctx.arm_triggers = not (observer == "triggers" and not on)
                row = bench_row(run_cell(cell, vm, guest, store, ctx, reporter, boot_info))
                iops[on].append(float(row["fio_iops"]))
        ctx.arm_triggers = True
        note = f"    this machine's speed: boot to SSH {boot_to_ssh:.2f} s ({base.kernel} kernel)"
        runs.append(PairedRuns(name, paired_cost(iops[False], iops[True]), iops[False], iops[True], note))
    if observer == "sampler":
        what = f"the sampler at {hz:g} Hz"
    else:
        armed = [t.event for t in probes.armed("failures") if not (counter and t.superseded_by)]
        what = f"the hist triggers of an unobserved cell ({', '.join(armed) or 'none on this kernel'})"
        if counter:
            what += (
                "; failed maps counted by the kernel's own counter, present in both arms "
                "(its cost: python -m lab bench counter)"
            )
    title = (
        f"\ncost of {what} in fio IOPS ({ctx.accel}, {_host()}, {pairs} ABBA pairs of "
        f"{runtime} s per workload; positive = slower with it; {FREE}):"
    )
    return CostBench(title, runs)


def bench_counter(
    kernel: str,
    matrix_name: str,
    workloads: str,
    pairs: int,
    runtime: int,
    accel: str,
    results: Path,
    reporter: Any,
    say: Say = quiet,
) -> CostBench:
    """What the lab's failed-map counter (patches/dma-map-failure-counter, compiled into every lab kernel)
    costs fio: the kernel against the same kernel built without the instruments, one boot each per arm,
    alternating ABBA over the pairs; both arms arm no tracefs trigger and run no sampler, as the cells that
    decide performance claims."""
    from lab.kernel import load_variants
    from lab.runner import boot_spec, run_cell
    from lab.stats import paired_cost
    from lab.store import RunStore

    names, by_name = bench_workloads(matrix_name, workloads, pairs)
    bare = kernel + "-bare"
    twins = sorted(v.removesuffix("-bare") for v in load_variants() if v.endswith("-bare"))
    if kernel not in twins:
        raise ConfigError(
            f"--kernel {kernel!r} has no {bare!r} twin in kernel-configs/variants.toml; valid: {', '.join(twins)}"
        )
    require_host()
    hypervisor = LocalHypervisor()
    ctx = lab_context(hypervisor, (kernel, bare), accel)
    ctx.arm_triggers = False
    work = results / f"bench-counter-{_stamp()}"
    store = RunStore.create(work, {"bench": "counter"}, run_id="cells")
    iops: dict[str, dict[str, list[float]]] = {n: {kernel: [], bare: []} for n in names}
    for index, with_counter in enumerate(abba(pairs, first=False)):  # bare, kernel, kernel, bare, ...
        pair, arm = index // 2, kernel if with_counter else bare
        first = replace(by_name[names[0]], kernel=arm, sample_hz=0.0, repetition=pair)
        where = store.boot_dir(f"{arm}-p{pair}")
        with bench_guest(ctx, hypervisor, boot_spec(ctx, first), where, say) as (vm, guest):
            for name in names:
                cell = replace(
                    by_name[name],
                    kernel=arm,
                    sample_hz=0.0,
                    repetition=pair,
                    workload=replace(by_name[name].workload, runtime_s=runtime),
                )
                row = bench_row(run_cell(cell, vm, guest, store, ctx, reporter, {"accel": vm.accelerator}))
                iops[name][arm].append(float(row["fio_iops"]))
        say(f"pair {pair + 1}/{pairs} {arm}: " + ", ".join(f"{n} {iops[n][arm][-1]:.0f} IOPS" for n in names))
    title = (
        f"\ncost of the failed-map counter in fio IOPS: `{kernel}` vs `{bare}` ({ctx.accel}, {_host()}, "
        f"{pairs} ABBA pairs of boots, {runtime} s per workload; positive = slower with it; {FREE}):"
    )
    runs = [PairedRuns(n, paired_cost(iops[n][bare], iops[n][kernel]), iops[n][bare], iops[n][kernel]) for n in names]
    return CostBench(title, runs, store.root)


# --- doorbells, DMA map benchmark ----------------------------------------------------------------


@dataclass(frozen=True)
class DoorbellBench:
    accel: str
    pool: str
    reps: int
    runs: dict[str, list[tuple[int, int, float]]]  # kernel: (MMIO doorbell writes, commands, IOPS) per run
    results: Path

    def text(self) -> str:
        lines = [
            f"\nMMIO doorbell writes per NVMe command ({self.accel}, {_host()}, pool {self.pool}, "
            "fio lab/jobs/batched.fio: 4 KiB randread, io_uring, QD32, batches of 16, 10 s; "
            f"{self.reps} runs each):"
        ]
        for kernel, runs in self.runs.items():
            ratios = [w / max(ios, 1) for w, ios, _ in runs]
            lines.append(
                f"  {kernel}: {statistics.median(ratios):.3f} per command (runs: "
                + ", ".join(f"{w:,}/{ios:,} = {w / max(ios, 1):.3f} at {iops:,.0f} IOPS" for w, ios, iops in runs)
                + ")"
            )
        return "\n".join([*lines, f"results: {self.results}"])


def bench_doorbells(
    kernels: str, reps: int, pool: str, accel: str, results: Path, reporter: Any, say: Say = quiet
) -> DoorbellBench:
    """MMIO doorbell writes per NVMe command (each one an exit in a CoCo guest) for each kernel, on
    batched submissions to a pool far from full: what the series' flush before a may-block mapping costs.

    QEMU traces each MMIO doorbell write (the same tracing for every kernel: an observer on the doorbell
    path, which is why this is a benchmark and not a cell metric); the guest's fio counts the commands."""
    from lab.doorbells import MMIO_EVENT, io_doorbell_writes, shadow_pages
    from lab.matrix import parse_pool_slabs
    from lab.runner import boot_spec, run_cell
    from lab.store import RunStore
    from lab.workload import Workload

    names = [k.strip() for k in kernels.split(",") if k.strip()]
    if not names or reps < 1:
        raise ConfigError(f"--kernels {kernels!r} --reps {reps}: need at least one kernel and repetition")
    slabs = parse_pool_slabs(pool, "--pool")
    require_host()
    hypervisor = LocalHypervisor()
    ctx = lab_context(hypervisor, names, accel)
    workload = Workload("batched", runtime_s=10, job_file=Path(__file__).parent / "jobs" / "batched.fio")
    store = RunStore.create(results / f"bench-doorbells-{_stamp()}", {"bench": "doorbells"}, run_id="cells")
    runs: dict[str, list[tuple[int, int, float]]] = {}
    for kernel in names:
        base = Cell(kernel, slabs, "nvme", workload, vcpus=2, memory_mib=1024, sample_hz=0.0)
        spec = replace(boot_spec(ctx, base), trace_events=(MMIO_EVENT,))
        with bench_guest(ctx, hypervisor, spec, store.boot_dir(f"boot-{kernel}"), say) as (vm, guest):
            if shadow_pages(vm.qemu_trace_text()) is None:  # proves QEMU traces into the file at all
                raise LabError(
                    f"QEMU wrote no trace to {vm.trace_log}: its build may lack the 'log' trace "
                    "backend, and a count of 0 doorbells would be a lie"
                )
            for rep in range(reps):
                before = io_doorbell_writes(vm.qemu_trace_text())
                cell = replace(base, repetition=rep)
                row = bench_row(run_cell(cell, vm, guest, store, ctx, reporter, {"accel": vm.accelerator}))
                interrupt.sleep(1.0)  # QEMU's trace file is written line by line; let the last lines land
                writes = io_doorbell_writes(vm.qemu_trace_text()) - before
                runs.setdefault(kernel, []).append((writes, int(row["fio_total_ios"]), float(row["fio_iops"])))
    return DoorbellBench(str(ctx.accel), pool, reps, runs, store.root)


@dataclass(frozen=True)
class DmaMapBench:
    title: str
    table: str  # median latency by thread count and kernel
    results: Path

    def text(self) -> str:
        return f"{self.title}\n{self.table}\nresults: {self.results}"


def bench_dmamap(
    kernels: str,
    threads: str,
    rounds: int,
    seconds: int,
    granule: int,
    vcpus: int,
    pool: str,
    accel: str,
    results: Path,
    say: Say = quiet,
) -> DmaMapBench:
    """The kernel's own DMA map benchmark on each kernel: map/unmap latency by thread count, with a pool far
    from full (the throttle never engages), so what differs is the map path itself (claim C12)."""
    import pandas as pd

    from lab import dmabench
    from lab.kernel import debian_source
    from lab.matrix import parse_pool_slabs
    from lab.runner import boot_spec
    from lab.workload import Workload

    names = [k.strip() for k in kernels.split(",") if k.strip()]
    try:
        counts = [int(t) for t in threads.split(",") if t.strip()]
    except ValueError as exc:
        raise ConfigError(f"--threads {threads!r}: a comma-separated list of thread counts, e.g. 1,2,4") from exc
    if not names or not counts or min(counts) < 1 or rounds < 1 or not 1 <= seconds <= 300:
        raise ConfigError(
            f"--kernels {kernels!r} --threads {threads!r} --rounds {rounds} --seconds "
            f"{seconds}: need kernels, thread counts >= 1, rounds >= 1, 1-300 s"
        )
    slabs = parse_pool_slabs(pool, "--pool")
    require_host()
    hypervisor = LocalHypervisor()
    ctx = lab_context(hypervisor, names, accel)
    tool = dmabench.build_tool(debian_source().tree, ctx.cache)
    work = results / f"bench-dmamap-{_stamp()}"
    work.mkdir(parents=True)
    rows = []
    for kernel in names:
        base = Cell(kernel, slabs, "nvme", Workload("idle"), vcpus=vcpus, memory_mib=1024, sample_hz=0.0)
        spec = replace(boot_spec(ctx, base), spare_pci=True)
        with bench_guest(ctx, hypervisor, spec, work / f"boot-{kernel}", say) as (vm, guest):
            bdf = dmabench.install(guest, tool)
            for round_ in range(rounds):
                for count in counts:
                    interrupt.check()
                    result = dmabench.run(guest, count, seconds, granule)
                    with (work / "dma_map_benchmark.log").open("a") as raw:
                        raw.write(f"# {kernel} round {round_}, {count} thread(s)\n{result.output}")
                    rows.append(
                        {
                            "kernel": kernel,
                            "round": round_,
                            "pci": bdf,
                            "accel": vm.accelerator,
                            "host_cpus": os.cpu_count(),
                            "pool_slabs": slabs,
                            **{k: v for k, v in vars(result).items() if k != "output"},
                        }
                    )
                    say(
                        f"{kernel} round {round_ + 1}, {count} thread(s): map {result.map_us:.1f} us, "
                        f"unmap {result.unmap_us:.1f} us"
                    )
    frame = pd.DataFrame(rows)
    frame.to_csv(work / "dmamap.csv", index=False)
    table = frame.groupby(["threads", "kernel"])[["map_us", "unmap_us"]].median().unstack("kernel")
    title = (
        f"\nDMA map benchmark (kernel/dma/map_benchmark.c), median of {rounds} rounds of {seconds} s, "
        f"{granule} page(s) per map, pool {pool}, {ctx.accel}, {vcpus} vCPUs, {_host()}; latency in us:"
    )
    return DmaMapBench(title, table.round(2).to_string(), work)


# --- Dask dispatch, trend page, report, kernel builds --------------------------------------------


@dataclass(frozen=True)
class DispatchBench:
    accel: str
    cells: int
    overheads_s: dict[str, list[float]]  # per pool: Dask's time per boot group beyond the group's own
    walls_s: dict[int, float] = field(default_factory=dict)  # --jobs: wall time of the whole matrix

    def text(self) -> str:
        lines = []
        for label, times in self.overheads_s.items():
            spread = f"median {statistics.median(times):.3f} s, max {max(times):.3f} s"
            lines.append(
                f"\nDask dispatch overhead per boot group ({len(times)} groups, {label}, {self.accel}, "
                f"{_host()}): {spread}"
            )
        for jobs, wall in self.walls_s.items():
            lines.append(
                f"--jobs {jobs}: {self.cells} cells in {wall:.1f} s = {self.cells / wall * 3600:.0f} cells/hour"
                + ("" if jobs == 1 else f" ({self.walls_s[1] / wall:.2f}x the throughput of --jobs 1)")
            )
        return "\n".join(lines)


def bench_dispatch(matrix_name: str, hosts: Path | None, accel: str, results: Path, reporter: Any) -> DispatchBench:
    """What Dask adds per boot group (wall time minus the group's own, one group at a time), and the
    throughput of one local boot at a time against ``--jobs 2`` on an in-process cluster."""
    from lab.fanout import DaskPool, local_executor
    from lab.runner import boot_spec, run_matrix
    from lab.store import RunStore

    matrix = load_matrix(matrix_name)
    require_host()
    hypervisor = LocalHypervisor()
    ctx = lab_context(hypervisor, sorted({c.kernel for c in matrix.cells}), accel)
    ctx.accel = hypervisor.resolve_accel(boot_spec(ctx, matrix.cells[0]), ctx.cache / "probe-work")  # type: ignore[assignment]
    work = results / f"bench-dispatch-{_stamp()}"
    groups = matrix.boot_groups()
    # One group at a time on an in-process cluster; with hosts, on each host's worker over SSH as well
    # (staging by content hash, and every artifact coming home as bytes).
    pools: dict[str, Any] = {"in-process cluster": lambda: DaskPool(jobs=1)}
    if hosts:
        from lab.fanout import SshWorkerPool
        from lab.hosts import load_hosts

        entries = list(load_hosts(hosts).values())
        pools[f"workers over SSH ({', '.join(h.name for h in entries)})"] = lambda: SshWorkerPool(entries)
    overheads: dict[str, list[float]] = {}
    for label, make in pools.items():
        with make() as pool:
            store = RunStore.create(work, {"bench": "dispatch"}, run_id=f"dask-one-by-one-{len(overheads)}")
            for group in groups:
                run_matrix(replace(matrix, cells=tuple(group)), store, ctx, reporter, executor=pool)
            overheads[label] = list(pool.overheads)
    walls = {}
    for jobs in (1, 2):
        store = RunStore.create(work, {"bench": "dispatch"}, run_id=f"jobs{jobs}")
        started = time.monotonic()
        with local_executor(jobs) as executor:
            rows = run_matrix(matrix, store, ctx, reporter, executor=executor)
        walls[jobs] = time.monotonic() - started
        if not all(r["status"] == "ok" for r in rows):
            raise LabError(f"bench dispatch: a cell failed with --jobs {jobs}; see {store.root}")
    return DispatchBench(str(ctx.accel), len(matrix.cells), overheads, walls)


def bench_trend(cells_path: Path, nights: int) -> str:
    """Time to build the trend page for ``nights`` nights (nights made of one stored run's cells and claims)."""
    import pandas as pd

    from lab.claims import judge_all
    from lab.history import History
    from lab.nightly import build_trend
    from lab.report import claims_frame

    cells = pd.read_parquet(cells_path)
    claims = claims_frame(judge_all(cells))
    with tempfile.TemporaryDirectory(prefix="swiotlb-lab-trend-") as tmp:
        history = History(Path(tmp))
        for index in range(nights):
            run_id = f"night{index:04d}"
            root = history.runs / run_id
            root.mkdir(parents=True)
            day = time.strftime("%Y-%m-%dT01:00:00Z", time.gmtime(1_700_000_000 + index * 86400))
            (root / "manifest.json").write_text(
                json.dumps({"run_id": run_id, "matrix_name": "nightly", "status": "complete", "started_utc": day})
            )
            cells.assign(fio_iops=cells["fio_iops"] * (1 + 0.001 * index)).to_parquet(root / "cells.parquet")
            claims.to_parquet(root / "claims.parquet")
        started = time.monotonic()
        page = build_trend(history, "nightly")
        seconds = time.monotonic() - started
        size_mb = page.stat().st_size / 1e6
    return f"trend page for {nights} nights of {len(cells)} cells: {seconds:.2f} s ({size_mb:.1f} MB)"


def bench_matrix(run: Path | None, sample_run: Path, cells_wanted: int) -> str:
    """Throughput of a finished run (cells/hour, boots saved by grouping) and report time for many cells."""
    import pandas as pd

    from lab.report import build_report
    from lab.store import load_cells

    lines = []
    if run is not None:
        manifest = json.loads((run / "manifest.json").read_text())
        cells = load_cells(run)
        matrix: Matrix = load_matrix(manifest["matrix_source"])
        started = time.mktime(time.strptime(manifest["started_utc"], "%Y-%m-%dT%H:%M:%SZ"))
        finished = time.mktime(time.strptime(manifest["finished_utc"], "%Y-%m-%dT%H:%M:%SZ"))
        hours = (finished - started) / 3600.0
        boots = len(matrix.boot_groups())
        lines += [
            f"run {run.name}: {len(cells)} cells in {hours * 60:.1f} min = {len(cells) / hours:.0f} cells/hour "
            f"({manifest.get('accel')}, jobs {manifest.get('jobs', 1)})",
            f"boots: {boots} for {len(matrix.cells)} cells; grouping saved {len(matrix.cells) - boots} boots",
        ]
    with tempfile.TemporaryDirectory(prefix="swiotlb-lab-bench-") as tmp:
        copy = Path(tmp) / sample_run.name
        shutil.copytree(sample_run, copy)
        cells = load_cells(copy)
        copies = [
            cells.assign(cell_id=cells["cell_id"] + f"-x{i}", repetition=cells["repetition"] + 100 * i)
            for i in range(cells_wanted // len(cells) + 1)
        ]
        pd.concat(copies).iloc[:cells_wanted].to_parquet(copy / "cells.parquet", index=False)
        started_s = time.monotonic()
        build_report(copy)
        lines.append(f"report for {cells_wanted} cells: {time.monotonic() - started_s:.2f} s")
    return "\n".join(lines)


# The comment line bench_kernel changes in the throttle series (a one-line change that recompiles what a
# real edit of the series would), and what it becomes.
SERIES_COMMENT = "+ * A request that may block waits"
SERIES_COMMENT_EDITED = "+ * A request that may block always waits"


def bench_kernel(variant: str, cold: bool) -> str:
    """Kernel build times: cache hit, rebuild after a one-line patch change, optionally a cold build."""
    from lab.kernel import Variant, build_kernel, load_variants

    variants = load_variants()
    results: list[tuple[str, float]] = []
    if cold:
        with tempfile.TemporaryDirectory(prefix="swiotlb-lab-cold-") as cold_cache:
            started = time.monotonic()
            build_kernel(variant, cache=Path(cold_cache), variants=variants)
            results.append((f"cold build of {variant} (empty cache and ccache)", time.monotonic() - started))
    build_kernel(variant, variants=variants)  # make sure it is cached
    started = time.monotonic()
    build_kernel(variant, variants=variants)
    results.append((f"cache hit for {variant}", time.monotonic() - started))

    series = variants["throttle"]
    build_kernel("throttle", variants=variants)
    with tempfile.TemporaryDirectory(prefix="swiotlb-lab-patch-") as tmp:
        changed: list[str] = []
        for patch in series.patches:
            copy = Path(tmp) / patch.name
            text = patch.read_text()
            if not changed and SERIES_COMMENT in text:
                text = text.replace(SERIES_COMMENT, SERIES_COMMENT_EDITED, 1)
                changed.append(patch.name)
            copy.write_text(text)
        if not changed:
            raise LabError("bench kernel: could not find the comment line to change in the throttle series")
        edited = Variant(
            "throttle", series.description, series.fragments, tuple(Path(tmp) / p.name for p in series.patches)
        )
        started = time.monotonic()
        rebuilt = build_kernel("throttle", variants={"throttle": edited})
        results.append((f"rebuild of throttle after a one-line change in {changed[0]}", time.monotonic() - started))
        shutil.rmtree(rebuilt.bzimage.parent, ignore_errors=True)  # not a real variant: keep the cache clean
    build_kernel("throttle", variants=variants)  # leave the workspace on the real series
    return "\n".join(f"{label}: {seconds:.1f} s" for label, seconds in results)


# --- what pairing within boots buys (issue 19) ---------------------------------------------------


def bench_pairing(cells_path: Path, effect_pct: float = 10.0) -> str:
    """C8's comparison (series v2's default bound vs none, heavy load, unobserved cells) on stored cells, twice:
    as two independent groups and within the boots that ran both.  For each, the 95% interval of the IOPS
    change and how many repetitions (boots) would detect an ``effect_pct`` drop with 80% power at 0.05."""
    import math

    import pandas as pd
    from scipy import stats as scipy_stats

    from lab.claims import DEFAULT_TIMEOUT_MS, SERIES_V2, _ok, _select, boot_pairs, observed
    from lab.matrix import THROTTLE_FOREVER_MS
    from lab.stats import ALPHA, POWER, n_for_power, ratio_interval_pct, summarize

    cells = pd.read_parquet(cells_path)
    v2 = _select(_ok(cells), SERIES_V2, "heavy")
    if v2.empty or "throttle_timeout_ms" not in v2:
        raise ConfigError(f"{cells_path}: no {SERIES_V2} heavy cells with throttle_timeout_ms (a series-v2.toml run)")
    pool = int(v2["pool_slabs_requested"].min())
    v2 = v2[v2["pool_slabs_requested"] == pool]
    bounded, unbounded = (
        v2[v2["throttle_timeout_ms"] == DEFAULT_TIMEOUT_MS],
        v2[v2["throttle_timeout_ms"] >= THROTTLE_FOREVER_MS],
    )
    b, u = bounded[~observed(bounded)]["fio_iops"], unbounded[~observed(unbounded)]["fio_iops"]
    pairs, label = boot_pairs(unbounded, bounded)
    if len(b) < 2 or len(u) < 2 or len(pairs) < 2:
        raise ConfigError(f"{cells_path}: fewer than 2 unobserved cells (boots) per bound at pool {pool}")

    # Unpaired: Welch's interval of the difference of means, as % of the unbounded mean.
    se = math.sqrt(b.var() / len(b) + u.var() / len(u))
    dof = se**4 / ((b.var() / len(b)) ** 2 / (len(b) - 1) + (u.var() / len(u)) ** 2 / (len(u) - 1))
    half = float(scipy_stats.t.ppf(0.975, dof)) * se / u.mean() * 100
    change = (b.mean() / u.mean() - 1) * 100
    spread = math.sqrt((b.var() + u.var()) / 2) / u.mean()  # relative SD, pooled
    groups = n_for_power(effect_pct / 100 / spread, ALPHA)
    # Paired: the interval of the geometric-mean ratio from per-boot log ratios.
    ratios = [math.log(c / a) for a, c in zip(pairs["fio_iops_base"], pairs["fio_iops_cand"], strict=True)]
    logs = summarize(ratios)
    low, high = ratio_interval_pct(logs)
    boots = n_for_power(abs(math.log(1 - effect_pct / 100)) / logs.sd, ALPHA, paired=True)
    logs_text = ", ".join(f"{math.exp(v):.2f}" for v in ratios)
    return "\n".join(
        [
            f"C8 on {cells_path.name}: {SERIES_V2} {DEFAULT_TIMEOUT_MS} ms vs no bound, heavy, pool {pool}, IOPS",
            f"  unpaired ({len(b)} vs {len(u)} unobserved cells): change {change:+.1f}%, 95% CI "
            f"{change - half:+.1f}% to {change + half:+.1f}% (width {2 * half:.1f} points); relative SD "
            f"{spread * 100:.1f}%: {groups} repetitions per group detect a {effect_pct:g}% drop with "
            f"{POWER:.0%} power",
            f"  paired ({logs.n} {label}; ratios {logs_text}): change "
            f"{(math.exp(logs.mean) - 1) * 100:+.1f}%, 95% CI {low:+.1f}% to {high:+.1f}% (width {high - low:.1f} "
            f"points); SD of the log ratios {logs.sd:.3f}: {boots} boots detect a {effect_pct:g}% drop with "
            f"{POWER:.0%} power",
            "  (with 2 boots the t interval has 1 degree of freedom: its width says little until more boots run)",
        ]
    )
