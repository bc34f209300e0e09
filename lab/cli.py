"""Command line: the only module that knows argparse, prints for humans, or exits."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from lab import __version__, interrupt
from lab.errors import ConfigError, HostError, LabError
from lab.host import require_host
from lab.matrix import Cell, load_matrix
from lab.store import LOST, SKIPPED
from lab.vm import LocalHypervisor

if TYPE_CHECKING:
    from lab.guest import Guest
    from lab.runner import LabContext
    from lab.vm import BootSpec, Machine

log = logging.getLogger("lab")
console = Console(stderr=True, soft_wrap=True)


# --- reporters ----------------------------------------------------------------------------


class RichReporter:
    """Progress bar in seconds of estimated work, with cell, phase and ETA; one line per finished cell."""

    def __init__(self, progress: Progress, total_s: float, cells: int) -> None:
        self.progress = progress
        self.cells = cells
        self.done = 0
        self.task = progress.add_task("starting", total=total_s, cells=f"0/{cells}")

    def phase(self, cell: Cell | None, text: str) -> None:
        label = f"{cell.cell_id}: {text}" if cell else text
        self.progress.update(self.task, description=label)

    def cell_done(self, cell: Cell, row: dict[str, Any], estimate_s: float) -> None:
        self.done += 1
        self.progress.update(self.task, advance=estimate_s, cells=f"{self.done}/{self.cells}")
        self.progress.console.print(one_line(row))


def at_least_one(text: str) -> int:
    """argparse type for counts such as --jobs: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1 or str(value) != text.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return value


def one_line(row: dict[str, Any]) -> str:
    if row["status"] == SKIPPED:
        return f"[yellow]-[/yellow] {row['cell_id']}: skipped: {row['failure_detail']}"
    if row["status"] == LOST:
        return f"[yellow]?[/yellow] {row['cell_id']}: lost to the infrastructure: {row['failure_detail']}"
    if row["status"] != "ok":
        return f"[red]✗[/red] {row['cell_id']}: failed: {row['failure_reason']}"
    frac = row.get("hiwater_frac")
    return (
        f"[green]✓[/green] {row['cell_id']}: nslabs {row['nslabs']}, hiwater {row['hiwater']}"
        f" ({(frac or 0) * 100:.0f}%), map failures {row['map_failures']}, {row['fio_iops']:.0f} IOPS,"
        f" p99 {row['fio_clat_p99_us']:.0f} µs, fio errors {row['fio_errors']}"
    )


# --- commands -----------------------------------------------------------------------------


def cmd_doctor_hosts(path: Path) -> int:
    """Probe every host of an inventory over SSH and print what each offers; 0 only if every host is
    reachable and offers every platform the inventory claims for it."""
    from rich.table import Table

    from lab.hosts import load_hosts, probe_host

    hosts = load_hosts(path)
    table = Table(title=f"hosts in {path}")
    for column in ("host", "SSH", "QEMU", "host kernel", *PLATFORM_COLUMNS, "as claimed"):
        table.add_column(column)
    notes: list[str] = []
    healthy = True
    for host in hosts.values():
        report = probe_host(host)
        if report.result is None:
            healthy = False
            table.add_row(host.name, "[red]unreachable[/red]", *([""] * (len(PLATFORM_COLUMNS) + 3)))
            notes.append(f"{host.name}: {report.reachable}")
            continue
        result = report.result
        missing = report.mismatches()
        healthy &= not missing
        table.add_row(
            host.name,
            f"{host.user}@{host.address}:{host.port}",
            result.qemu_version or "-",
            result.facts.get("host_kernel", ""),
            *("[green]yes[/green]" if result.offers(p) else "[dim]no[/dim]" for p in PLATFORM_COLUMNS),
            "[green]yes[/green]" if not missing else "[red]no[/red]",
        )
        notes += [
            f"{host.name}: {p} not offered: {result.offered[p]}" for p in PLATFORM_COLUMNS if not result.offers(p)
        ]
        notes += [f"{host.name}: claimed in {path.name} but not offered: {m}" for m in missing]
    Console().print(table)  # stdout, with the notes: what a CI log or a pipe keeps
    for note in notes:
        print(note)
    return 0 if healthy else 1


PLATFORM_COLUMNS = ("tcg", "kvm", "sev-snp", "tdx")


def cmd_doctor(args: argparse.Namespace) -> int:
    from lab.host import REQUIREMENTS
    from lab.preflight import HostSettings
    from lab.util import cache_dir

    if args.hosts:
        return cmd_doctor_hosts(Path(args.hosts))

    ok = True
    kvm_probe = ""  # why KVM does not work although its device is there, if a probe boot found out
    for requirement in REQUIREMENTS:
        present = requirement.present()
        ok &= present
        mark = "[green]ok[/green]     " if present else "[red]missing[/red]"
        console.print(f"{mark} {requirement.what:40s} (Debian package {requirement.package})")
    kvm = Path("/dev/kvm")
    if not kvm.exists():
        console.print("KVM: /dev/kvm does not exist → guests will run under TCG")
    elif not os.access(kvm, os.R_OK | os.W_OK):
        console.print("KVM: /dev/kvm is not accessible to this user → guests will run under TCG")
    elif ok:
        from lab.runner import boot_spec

        console.print("KVM: /dev/kvm is present; probing by booting a guest under KVM ...")
        hypervisor = LocalHypervisor()
        ctx = _stock_context(hypervisor)
        cell = load_matrix("stock").cells[0]
        accel = hypervisor.resolve_accel(boot_spec(ctx, cell), cache_dir() / "doctor")
        console.print(f"KVM: guests will run under [bold]{accel}[/bold] ({hypervisor.probe_note})")
        if accel != "kvm":
            kvm_probe = f"a KVM boot probe failed on this host ({hypervisor.probe_note})"
    # What a local run can offer, with this machine's own settings (SWIOTLB_LAB_QEMU, SWIOTLB_LAB_FIRMWARE_*,
    # SWIOTLB_LAB_CBITPOS): the same preflight doctor --hosts runs over SSH.
    settings = HostSettings.from_environment()
    offered = LocalHypervisor(settings.qemu, dict(settings.firmware), settings.cbitpos).capabilities()
    if kvm_probe:
        offered["kvm"] = kvm_probe
    for platform in PLATFORM_COLUMNS:
        why = offered.get(platform, "unknown platform")
        console.print(f"platform {platform:8s} " + ("[green]offered[/green]" if not why else f"not offered: {why}"))
    missing = [r.package for r in REQUIREMENTS if not r.present()]
    if missing:
        console.print(f"[red]missing host packages:[/red] apt-get install {' '.join(sorted(set(missing)))}")
        return 2
    return 0


def _stock_context(hypervisor: LocalHypervisor, accel: str = "auto") -> LabContext:
    """A lab context on Debian's stock kernel (doctor needs no kernel build)."""
    return _bench_context(hypervisor, ("stock",), accel)


def _bench_context(hypervisor: LocalHypervisor, kernel_names: Sequence[str], accel: str = "auto") -> LabContext:
    """A lab context with the kernels a matrix names: Debian's stock kernel is fetched, the lab's
    variants are built (or loaded from the cache), anything else was rejected by the matrix loader."""
    from lab.image import build_image
    from lab.kernel import KernelBuild, build_kernel, stock_kernel
    from lab.keys import client_key
    from lab.runner import LabContext
    from lab.util import cache_dir

    kernels: dict[str, KernelBuild] = {}
    for name in sorted(set(kernel_names)):
        with console.status(f"kernel {name}: {'fetching' if name == 'stock' else 'building'} or loading from cache"):
            kernels[name] = stock_kernel() if name == "stock" else build_kernel(name)
    return LabContext(hypervisor, build_image(), client_key(), kernels, cache_dir(), accel=accel)  # type: ignore[arg-type]


def cmd_run_matrix(args: argparse.Namespace) -> int:
    from lab.session import RunRequest, Session

    request = RunRequest(
        matrix=args.matrix,
        results=Path(args.results),
        resume=Path(args.resume) if args.resume else None,
        retry_failed=args.retry_failed,
        jobs=args.jobs,
        accel=args.accel,
        hosts=Path(args.hosts) if args.hosts else None,
        scheduler=args.scheduler,
        strict=args.strict,
    )
    if args.cores is not None and args.cores < 1:
        raise ConfigError(f"--cores {args.cores}: a host has at least 1 core")
    session = Session(request, busy=lambda text: console.status(text))
    plan = session.plan()
    if args.dry_run:
        for cell in session.matrix.cells:
            if cell.cell_id in plan.unrunnable:
                print(f"skip  {cell.cell_id}  ({plan.unrunnable[cell.cell_id]})")
            else:
                print(("done  " if cell.cell_id in plan.skip else "todo  ") + cell.cell_id)
        if plan.unrunnable:
            print(
                f"{len(plan.unrunnable)} cells will be skipped here (recorded as skipped, not failed; left out of "
                "the estimate)"
            )
        print(f"{len(plan.todo)} cells to run in {plan.boots} boots, estimated {plan.estimate_s / 60:.1f} min")
        if args.cores:
            from lab.runner import default_jobs

            vcpus = max((c.vcpus for c in session.matrix.cells), default=1)
            jobs = max(1, min(default_jobs(vcpus, args.cores), plan.boots))
            print(
                f"on a host with {args.cores} cores: {jobs} boots at a time ({vcpus} vCPUs + 1 each), estimated "
                f"{plan.estimate_s / jobs / 60:.1f} min (this machine's boot and cell times; KVM boots faster)"
            )
        return 0
    session.prepare()
    estimate_s = plan.estimate_s / min(session.jobs, max(plan.boots, 1))
    console.print(
        f"matrix [bold]{session.matrix.name}[/bold]: {len(plan.todo)} cells in {plan.boots} boots, "
        f"{session.jobs} at a time, ~{estimate_s / 60:.0f} min"
    )
    status = "complete"
    try:
        with Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[cells]} cells"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        ) as progress:
            session.run(RichReporter(progress, estimate_s, len(plan.todo)))
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    except BaseException:
        status = "failed"
        raise
    finally:
        outcome = session.finish(status)
        root = outcome.store.root
        print((root / "summary.md").read_text())
        if outcome.status == "interrupted":
            console.print(
                f"interrupted ({interrupt.reason() or 'KeyboardInterrupt'}): no report; finish the run "
                f"with --resume {root}, or build a report of the kept cells with "
                f"python -m lab report --in-place {root}"
            )
        elif outcome.report_error is not None:
            console.print(
                f"[red]the report could not be built[/red] (traceback in {outcome.report_error}); "
                f"every cell is stored, rebuild with: python -m lab report --in-place {root}"
            )
        elif outcome.report is not None:
            console.print(f"report: {outcome.report}")
        console.print(f"results: {root} ({outcome.status})")
    return outcome.exit_code


def cmd_nightly(args: argparse.Namespace) -> int:
    """One night: build the revision under test, run the nightly matrix into the history, gate against the
    baseline, write JUnit XML and the trend page, apply retention.  Exit 0, 1 (regression) or 3 (no result)."""
    from lab.errors import BuildError
    from lab.history import EXIT_NO_RESULT, History
    from lab.nightly import build_trend, judge_night, tree_revision, write_error_junit
    from lab.session import RunRequest, Session

    history = History(Path(args.history))
    tree = Path(args.kernel_tree).resolve() if args.kernel_tree else None
    junit = Path(args.junit) if args.junit else None
    request = RunRequest(
        matrix=args.matrix,
        results=history.runs,
        jobs=args.jobs,
        accel=args.accel,
        hosts=Path(args.hosts) if args.hosts else None,
        scheduler=args.scheduler,
        kernel_tree=tree,
    )
    session = Session(request, busy=lambda text: console.status(text))
    night = f"nightly {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}"
    revision = tree_revision(tree)  # what is built and measured, read before the build (the tree may move)
    # CI's JUnit step always finds a file: a night that never ran a cell says why, red.
    try:
        session.prepare()
    except BuildError as exc:  # the revision under test does not build: its own failure (exit 1)
        if junit:
            write_error_junit(junit, night, str(exc), kind="build")
        raise
    except HostError as exc:  # this host lacks what the lab needs: infrastructure (exit 3)
        if junit:
            write_error_junit(junit, night, str(exc))
        console.print(f"[red]no usable result:[/red] {exc}")
        return EXIT_NO_RESULT
    plan = session.plan()
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[cells]} cells"),
        TimeElapsedColumn(),
    )
    try:
        with Progress(*columns, console=console) as progress:
            session.run(RichReporter(progress, plan.estimate_s, len(plan.todo)))
    except HostError as exc:  # no host could be reached or started: infrastructure, not a regression
        outcome = session.finish("failed", report=False)
        for path in (outcome.store.root / "junit.xml", junit):
            if path is not None:
                write_error_junit(path, outcome.store.run_id, str(exc))
        console.print(f"[red]no usable result:[/red] {exc}")
        return EXIT_NO_RESULT
    except BaseException as exc:
        session.finish("interrupted" if isinstance(exc, KeyboardInterrupt) else "failed", report=False)
        raise
    outcome = session.finish("complete")
    code, summary = judge_night(history, outcome.store, revision, junit)
    trend = build_trend(history, session.matrix.name)
    removed = history.retain(args.keep, session.matrix.name)
    print(f"night {outcome.store.run_id}: {summary}")
    if outcome.report_error is not None:
        console.print(
            f"[red]the report could not be built[/red] (traceback in {outcome.report_error}); the "
            "gate and JUnit used the stored cells; rebuild with: "
            f"python -m lab report --in-place {outcome.store.root}"
        )
    else:
        print(f"report: {outcome.report}")
    print(f"junit: {outcome.store.root / 'junit.xml'}\ntrend: {trend}")
    if removed:
        print(f"retention (keep {args.keep}): removed {', '.join(removed)}")
    return code


def cmd_history(args: argparse.Namespace) -> int:
    """The common questions about the nights, answered with DuckDB over their Parquet tables."""
    from lab.history import History
    from lab.nightly import build_trend

    history = History(Path(args.history))
    if not history.runs.is_dir():
        raise ConfigError(f"{args.history}: no nights here (expected {history.runs}/<run-id>/)")
    queries = {
        "nights": "SELECT run_id, matrix_name, status, controller, started_utc, tree_describe, lab_revision, "
        "baseline, regressions, exit_code, left(matrix_hash, 12) AS matrix FROM nights ORDER BY started_utc",
        "claims": "SELECT night, scope, claim, verdict FROM claims ORDER BY night, scope, claim",
        "metric": f"SELECT night, kernel, workload, count(*) AS cells, median({args.metric}) AS median, "
        f"quantile_cont({args.metric}, 0.25) AS q1, quantile_cont({args.metric}, 0.75) AS q3 "
        "FROM cells WHERE status = 'ok' GROUP BY night, kernel, workload ORDER BY night, kernel, workload",
    }
    if args.question == "trend":
        print(build_trend(history, args.matrix))
        return 0
    sql = args.sql if args.question == "sql" else queries[args.question]
    try:
        frame = history.query(sql)
    except Exception as exc:  # DuckDB's own message names the column or table that is wrong
        raise ConfigError(f"history query failed: {exc}") from exc
    print(frame.to_string(index=False) if not frame.empty else "(no rows)")
    return 0


@contextlib.contextmanager
def _bench_guest(
    ctx: LabContext, hypervisor: LocalHypervisor, spec: BootSpec, workdir: Path
) -> Iterator[tuple[Machine, Guest]]:
    """One bench boot: the accelerator resolved (and kept in ``ctx`` for the rows), the guest booted and
    connected; QEMU is stopped when the block ends.  A boot that panics or times out before SSH is tried
    once more, as in a matrix run (lab.runner.BOOT_TRIES)."""
    from lab.guest import Guest
    from lab.runner import BOOT_TRIES, TRANSIENT_BOOT_FAILURES, failure_reason

    ctx.accel = hypervisor.resolve_accel(spec, ctx.cache / "probe-work")  # type: ignore[assignment]
    for attempt in range(1, BOOT_TRIES + 1):
        stack = contextlib.ExitStack()
        try:
            where = workdir if attempt == 1 else workdir.with_name(f"{workdir.name}-try{attempt}")
            vm = stack.enter_context(hypervisor.boot(replace(spec, accel=ctx.accel), where))
            guest = stack.enter_context(Guest(vm.endpoint, ctx.client_key.private_path, ctx.image.host_key_blob))
            guest.connect(alive=vm.check_alive)
        except LabError as exc:
            stack.close()
            reason = failure_reason(exc)
            if reason not in TRANSIENT_BOOT_FAILURES or attempt == BOOT_TRIES:
                raise
            console.print(f"boot {attempt} failed ({reason}); trying once more")
            continue
        except BaseException:  # Ctrl-C, SIGTERM: QEMU is stopped all the same
            stack.close()
            raise
        with stack:
            yield vm, guest
        return


def _bench_row(row: dict[str, Any]) -> dict[str, Any]:
    """A bench cell's row, or the error that stops the bench: a failed cell has no number to give."""
    if row["status"] != "ok":
        raise LabError(f"bench cell failed: {row['failure_reason']}: {row['failure_detail']}")
    return row


def cmd_bench_boot(args: argparse.Namespace) -> int:
    from lab.guest import Guest
    from lab.runner import boot_spec, run_group
    from lab.store import RunStore
    from lab.vm import Machine

    matrix = load_matrix(args.matrix)
    require_host()
    hypervisor = LocalHypervisor()
    cell = matrix.cells[0]
    ctx = _bench_context(hypervisor, (cell.kernel,), args.accel)
    image, key, cache = ctx.image, ctx.client_key, ctx.cache
    spec = boot_spec(ctx, cell)
    accel = hypervisor.resolve_accel(spec, cache / "probe-work")
    spec = replace(spec, accel=accel)  # type: ignore[arg-type]
    work = Path(args.results) / f"bench-boot-{time.strftime('%Y%m%dT%H%M%S')}"
    times = []
    for index in range(args.boots):
        started = time.monotonic()
        with Machine(spec, work / f"boot{index}", accel=accel) as machine:
            machine.wait_ready()
            with Guest(machine.endpoint, key.private_path, image.host_key_blob) as guest:
                guest.connect(alive=machine.check_alive)
                guest.run("true")
                times.append(time.monotonic() - started)
        console.print(f"boot {index + 1}/{args.boots}: {times[-1]:.2f} s to first SSH command")
    ctx.accel = accel  # type: ignore[assignment]
    ctx.provenance = {"accel": accel}
    store = RunStore.create(work, {"bench": "boot"}, run_id="cells")
    short = [replace(c, workload=replace(c.workload, runtime_s=args.cell_runtime)) for c in matrix.boot_groups()[0]]
    rows = run_group(short, store, ctx, _QuietReporter())
    overheads = [r["cell_wall_s"] - r["fio_runtime_s"] for r in rows if r["status"] == "ok"]
    print(f"\nboot-to-SSH over {len(times)} boots ({accel}, kernel {cell.kernel} {ctx.kernels[cell.kernel].release}):")
    print(f"  min {min(times):.2f} s, median {statistics.median(times):.2f} s, max {max(times):.2f} s")
    if overheads:
        print(f"per-cell overhead (cell wall time minus fio runtime) over {len(overheads)} cells:")
        print(f"  min {min(overheads):.2f} s, median {statistics.median(overheads):.2f} s, max {max(overheads):.2f} s")
    return 0


def _bench_workloads(args: argparse.Namespace) -> tuple[list[str], dict[str, Cell]]:
    """``--workloads`` of ``--matrix``, each as the matrix's repetition-0 cell; ``--pairs`` checked."""
    matrix = load_matrix(args.matrix)
    names = [n.strip() for n in args.workloads.split(",") if n.strip()]
    by_name = {c.workload.name: c for c in reversed(matrix.cells)}  # repetition 0 of each workload
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ConfigError(
            f"--workloads: {', '.join(unknown)} not in matrix {matrix.source}; valid: {', '.join(sorted(by_name))}"
        )
    if args.pairs < 2:
        raise ConfigError(f"--pairs {args.pairs}: a confidence interval needs at least 2 pairs")
    return names, by_name


def add_accel_argument(parser: argparse.ArgumentParser) -> None:
    """--accel, as every command that boots guests takes it."""
    parser.add_argument(
        "--accel",
        choices=("auto", "kvm", "tcg"),
        default="auto",
        help="auto: KVM if a probe boot works, else TCG (default auto)",
    )


def _paired_bench_arguments(parser: argparse.ArgumentParser, pairs: int, pairs_help: str, matrix: str) -> None:
    """The options of a bench that pairs runs with and without an instrument (what _bench_workloads reads)."""
    parser.add_argument("--pairs", type=int, default=pairs, help=pairs_help)
    parser.add_argument("--runtime", type=int, default=10, help="fio runtime per run in seconds (default 10)")
    parser.add_argument("--workloads", default="light,heavy", help="comma-separated workloads of the matrix")
    parser.add_argument(
        "--matrix", default=matrix, help=f"matrix whose workloads are run (name or TOML path; default {matrix})"
    )
    parser.add_argument("--results", default="results", help="results directory (default: ./results)")
    add_accel_argument(parser)


def cmd_bench_sampler(args: argparse.Namespace) -> int:
    """What an instrument costs fio: runs with and without it, in ABBA order in one boot per workload,
    so that drifts cancel; the cost gets a confidence interval over the pairs."""
    from lab import probes
    from lab.runner import boot_spec, run_cell
    from lab.stats import paired_cost
    from lab.store import RunStore

    names, by_name = _bench_workloads(args)
    require_host()
    hypervisor = LocalHypervisor()
    ctx = _bench_context(hypervisor, sorted({by_name[n].kernel for n in names}), args.accel)
    work = Path(args.results) / f"bench-{args.observer}-{time.strftime('%Y%m%dT%H%M%S')}"
    store = RunStore.create(work, {"bench": args.observer}, run_id="cells")
    results = []
    counter = False  # whether the kernel counts failed page maps itself (the lab's instrument patch)
    for name in names:
        base = by_name[name]
        base = replace(base, workload=replace(base.workload, runtime_s=args.runtime), sample_hz=0.0)
        iops: dict[bool, list[float]] = {True: [], False: []}
        started = time.monotonic()
        with _bench_guest(ctx, hypervisor, boot_spec(ctx, base), store.boot_dir(f"boot-{name}")) as (vm, guest):
            boot_to_ssh = time.monotonic() - started
            boot_info = {"accel": vm.accelerator}
            counter = guest.run(f"test -d {probes.DMA_FAILURES_DEBUGFS}", timeout_s=30, check=False).exitcode == 0
            for index in range(2 * args.pairs):
                on = (index % 4) in (0, 3)  # ABBA: each pair has one run of each, and drifts cancel
                cell = replace(base, repetition=index, sample_hz=args.hz if on and args.observer == "sampler" else 0.0)
                ctx.arm_triggers = not (args.observer == "triggers" and not on)
                row = _bench_row(run_cell(cell, vm, guest, store, ctx, _QuietReporter(), boot_info))
                iops[on].append(float(row["fio_iops"]))
        ctx.arm_triggers = True
        cost = paired_cost(iops[False], iops[True])
        results.append((name, cost, iops, boot_to_ssh))
    if args.observer == "sampler":
        what = f"the sampler at {args.hz:g} Hz"
    else:
        armed = [t.event for t in probes.armed("failures") if not (counter and t.superseded_by)]
        what = f"the hist triggers of an unobserved cell ({', '.join(armed) or 'none on this kernel'})"
        if counter:
            what += (
                "; failed maps counted by the kernel's own counter, present in both arms "
                "(its cost: python -m lab bench counter)"
            )
    print(
        f"\ncost of {what} in fio IOPS ({ctx.accel}, {os.cpu_count()} host CPUs, {args.pairs} ABBA pairs of "
        f"{args.runtime} s per workload; positive = slower with it):"
    )
    for name, cost, iops, boot_to_ssh in results:
        print(
            f"  {name}: {cost.mean_pct:+.2f}% (95% CI {cost.ci_low_pct:+.2f}% to {cost.ci_high_pct:+.2f}%), "
            f"run-to-run spread without it {cost.noise_pct:.2f}% SD: {cost.verdict}"
        )
        print(f"    without: {', '.join(f'{v:.0f}' for v in iops[False])}")
        print(f"    with:    {', '.join(f'{v:.0f}' for v in iops[True])}")
        print(f"    this machine's speed: boot to SSH {boot_to_ssh:.2f} s ({by_name[name].kernel} kernel)")
    return 0


def cmd_bench_counter(args: argparse.Namespace) -> int:
    """What the lab's failed-map counter (patches/dma-map-failure-counter, compiled into every lab kernel)
    costs fio: the kernel against the same kernel built without the instruments, one boot each per arm,
    alternating ABBA over the pairs; both arms arm no tracefs trigger and run no sampler, as the cells that
    decide performance claims."""
    from lab.kernel import load_variants
    from lab.runner import boot_spec, run_cell
    from lab.stats import paired_cost
    from lab.store import RunStore

    names, by_name = _bench_workloads(args)
    kernel, bare = args.kernel, args.kernel + "-bare"
    twins = sorted(v.removesuffix("-bare") for v in load_variants() if v.endswith("-bare"))
    if kernel not in twins:
        raise ConfigError(
            f"--kernel {kernel!r} has no {bare!r} twin in kernel-configs/variants.toml; valid: {', '.join(twins)}"
        )
    require_host()
    hypervisor = LocalHypervisor()
    ctx = _bench_context(hypervisor, (kernel, bare), args.accel)
    ctx.arm_triggers = False
    work = Path(args.results) / f"bench-counter-{time.strftime('%Y%m%dT%H%M%S')}"
    store = RunStore.create(work, {"bench": "counter"}, run_id="cells")
    iops: dict[str, dict[str, list[float]]] = {n: {kernel: [], bare: []} for n in names}
    for pair in range(args.pairs):
        for arm in (bare, kernel) if pair % 2 == 0 else (kernel, bare):  # ABBA: drifts cancel
            first = replace(by_name[names[0]], kernel=arm, sample_hz=0.0, repetition=pair)
            with _bench_guest(ctx, hypervisor, boot_spec(ctx, first), store.boot_dir(f"{arm}-p{pair}")) as (vm, guest):
                for name in names:
                    cell = replace(
                        by_name[name],
                        kernel=arm,
                        sample_hz=0.0,
                        repetition=pair,
                        workload=replace(by_name[name].workload, runtime_s=args.runtime),
                    )
                    row = _bench_row(run_cell(cell, vm, guest, store, ctx, _QuietReporter(), {"accel": vm.accelerator}))
                    iops[name][arm].append(float(row["fio_iops"]))
            console.print(
                f"pair {pair + 1}/{args.pairs} {arm}: " + ", ".join(f"{n} {iops[n][arm][-1]:.0f} IOPS" for n in names)
            )
    print(
        f"\ncost of the failed-map counter in fio IOPS: `{kernel}` vs `{bare}` ({ctx.accel}, {os.cpu_count()} host "
        f"CPUs, {args.pairs} ABBA pairs of boots, {args.runtime} s per workload; positive = slower with it):"
    )
    for name in names:
        cost = paired_cost(iops[name][bare], iops[name][kernel])
        print(
            f"  {name}: {cost.mean_pct:+.2f}% (95% CI {cost.ci_low_pct:+.2f}% to {cost.ci_high_pct:+.2f}%), "
            f"run-to-run spread without it {cost.noise_pct:.2f}% SD: {cost.verdict}"
        )
        print(f"    without: {', '.join(f'{v:.0f}' for v in iops[name][bare])}")
        print(f"    with:    {', '.join(f'{v:.0f}' for v in iops[name][kernel])}")
    print(f"results: {store.root}")
    return 0


def cmd_bench_doorbells(args: argparse.Namespace) -> int:
    """MMIO doorbell writes per NVMe command (each one an exit in a CoCo guest) for each kernel, on
    batched submissions to a pool far from full: what the series' flush before a may-block mapping costs.

    QEMU traces each MMIO doorbell write (the same tracing for every kernel: an observer on the doorbell
    path, which is why this is a benchmark and not a cell metric); the guest's fio counts the commands."""
    from lab.doorbells import MMIO_EVENT, io_doorbell_writes, shadow_pages
    from lab.matrix import parse_pool_slabs
    from lab.runner import boot_spec, run_cell
    from lab.store import RunStore
    from lab.workload import Workload

    kernels = [k.strip() for k in args.kernels.split(",") if k.strip()]
    if not kernels or args.reps < 1:
        raise ConfigError(f"--kernels {args.kernels!r} --reps {args.reps}: need at least one kernel and repetition")
    pool = parse_pool_slabs(args.pool, "--pool")
    require_host()
    hypervisor = LocalHypervisor()
    ctx = _bench_context(hypervisor, kernels, args.accel)
    workload = Workload("batched", runtime_s=10, job_file=Path(__file__).parent / "jobs" / "batched.fio")
    work = Path(args.results) / f"bench-doorbells-{time.strftime('%Y%m%dT%H%M%S')}"
    store = RunStore.create(work, {"bench": "doorbells"}, run_id="cells")
    results: dict[str, list[tuple[int, int, float]]] = {}
    for kernel in kernels:
        base = Cell(kernel, pool, "nvme", workload, vcpus=2, memory_mib=1024, sample_hz=0.0)
        spec = replace(boot_spec(ctx, base), trace_events=(MMIO_EVENT,))
        with _bench_guest(ctx, hypervisor, spec, store.boot_dir(f"boot-{kernel}")) as (vm, guest):
            if shadow_pages(vm.qemu_trace_text()) is None:  # proves QEMU traces into the file at all
                raise LabError(
                    f"QEMU wrote no trace to {vm.trace_log}: its build may lack the 'log' trace "
                    "backend, and a count of 0 doorbells would be a lie"
                )
            for rep in range(args.reps):
                before = io_doorbell_writes(vm.qemu_trace_text())
                row = _bench_row(
                    run_cell(
                        replace(base, repetition=rep),
                        vm,
                        guest,
                        store,
                        ctx,
                        _QuietReporter(),
                        {"accel": vm.accelerator},
                    )
                )
                interrupt.sleep(1.0)  # QEMU's trace file is written line by line; let the last lines land
                writes = io_doorbell_writes(vm.qemu_trace_text()) - before
                results.setdefault(kernel, []).append((writes, int(row["fio_total_ios"]), float(row["fio_iops"])))
    print(
        f"\nMMIO doorbell writes per NVMe command ({ctx.accel}, {os.cpu_count()} host CPUs, pool {args.pool}, "
        "fio lab/jobs/batched.fio: 4 KiB randread, io_uring, QD32, batches of 16, 10 s; "
        f"{args.reps} runs each):"
    )
    for kernel, runs in results.items():
        ratios = [w / max(ios, 1) for w, ios, _ in runs]
        print(
            f"  {kernel}: {statistics.median(ratios):.3f} per command (runs: "
            + ", ".join(f"{w:,}/{ios:,} = {w / max(ios, 1):.3f} at {iops:,.0f} IOPS" for w, ios, iops in runs)
            + ")"
        )
    print(f"results: {store.root}")
    return 0


def cmd_bench_dmamap(args: argparse.Namespace) -> int:
    """The kernel's own DMA map benchmark on each kernel: map/unmap latency by thread count, with a pool far
    from full (the throttle never engages), so what differs is the map path itself (claim C12)."""
    import pandas as pd

    from lab import dmabench
    from lab.kernel import debian_source
    from lab.matrix import parse_pool_slabs
    from lab.runner import boot_spec
    from lab.workload import Workload

    kernels = [k.strip() for k in args.kernels.split(",") if k.strip()]
    try:
        threads = [int(t) for t in args.threads.split(",") if t.strip()]
    except ValueError as exc:
        raise ConfigError(f"--threads {args.threads!r}: a comma-separated list of thread counts, e.g. 1,2,4") from exc
    if not kernels or not threads or min(threads) < 1 or args.rounds < 1 or not 1 <= args.seconds <= 300:
        raise ConfigError(
            f"--kernels {args.kernels!r} --threads {args.threads!r} --rounds {args.rounds} --seconds "
            f"{args.seconds}: need kernels, thread counts >= 1, rounds >= 1, 1-300 s"
        )
    pool = parse_pool_slabs(args.pool, "--pool")
    require_host()
    hypervisor = LocalHypervisor()
    ctx = _bench_context(hypervisor, kernels, args.accel)
    tool = dmabench.build_tool(debian_source().tree, ctx.cache)
    work = Path(args.results) / f"bench-dmamap-{time.strftime('%Y%m%dT%H%M%S')}"
    work.mkdir(parents=True)
    rows = []
    for kernel in kernels:
        base = Cell(kernel, pool, "nvme", Workload("idle"), vcpus=args.vcpus, memory_mib=1024, sample_hz=0.0)
        spec = replace(boot_spec(ctx, base), spare_pci=True)
        with _bench_guest(ctx, hypervisor, spec, work / f"boot-{kernel}") as (vm, guest):
            bdf = dmabench.install(guest, tool)
            for round_ in range(args.rounds):
                for count in threads:
                    interrupt.check()
                    result = dmabench.run(guest, count, args.seconds, args.granule)
                    with (work / "dma_map_benchmark.log").open("a") as raw:
                        raw.write(f"# {kernel} round {round_}, {count} thread(s)\n{result.output}")
                    rows.append(
                        {
                            "kernel": kernel,
                            "round": round_,
                            "pci": bdf,
                            "accel": vm.accelerator,
                            "host_cpus": os.cpu_count(),
                            "pool_slabs": pool,
                            **{k: v for k, v in vars(result).items() if k != "output"},
                        }
                    )
                    console.print(
                        f"{kernel} round {round_ + 1}, {count} thread(s): map {result.map_us:.1f} us, "
                        f"unmap {result.unmap_us:.1f} us"
                    )
    frame = pd.DataFrame(rows)
    frame.to_csv(work / "dmamap.csv", index=False)
    table = frame.groupby(["threads", "kernel"])[["map_us", "unmap_us"]].median().unstack("kernel")
    print(
        f"\nDMA map benchmark (kernel/dma/map_benchmark.c), median of {args.rounds} rounds of {args.seconds} s, "
        f"{args.granule} page(s) per map, pool {args.pool}, {ctx.accel}, {args.vcpus} vCPUs, {os.cpu_count()} "
        "host CPUs; latency in us:"
    )
    print(table.round(2).to_string())
    print(f"results: {work}")
    return 0


def cmd_bench_trend(args: argparse.Namespace) -> int:
    """Time to build the trend page for N nights (nights made of one stored run's cells and claims)."""
    import json
    import tempfile

    import pandas as pd

    from lab.claims import judge_all
    from lab.history import History
    from lab.nightly import build_trend
    from lab.report import claims_frame

    cells = pd.read_parquet(args.cells)
    claims = claims_frame(judge_all(cells))
    with tempfile.TemporaryDirectory(prefix="swiotlb-lab-trend-") as tmp:
        history = History(Path(tmp))
        for index in range(args.nights):
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
        print(
            f"trend page for {args.nights} nights of {len(cells)} cells: {seconds:.2f} s "
            f"({page.stat().st_size / 1e6:.1f} MB)"
        )
    return 0


def cmd_bench_dispatch(args: argparse.Namespace) -> int:
    """What Dask adds per boot group (wall time minus the group's own, one group at a time), and the
    throughput of one local boot at a time against ``--jobs 2`` on an in-process cluster."""
    from lab.fanout import DaskPool, local_executor
    from lab.runner import boot_spec, run_matrix
    from lab.store import RunStore

    matrix = load_matrix(args.matrix)
    require_host()
    hypervisor = LocalHypervisor()
    ctx = _bench_context(hypervisor, sorted({c.kernel for c in matrix.cells}), args.accel)
    ctx.accel = hypervisor.resolve_accel(boot_spec(ctx, matrix.cells[0]), ctx.cache / "probe-work")  # type: ignore[assignment]
    work = Path(args.results) / f"bench-dispatch-{time.strftime('%Y%m%dT%H%M%S')}"
    groups = matrix.boot_groups()
    # One group at a time on an in-process cluster; with --hosts, on each host's worker over SSH as well
    # (staging by content hash, and every artifact coming home as bytes).
    pools: dict[str, Any] = {"in-process cluster": lambda: DaskPool(jobs=1)}
    if args.hosts:
        from lab.fanout import SshWorkerPool
        from lab.hosts import load_hosts

        hosts = list(load_hosts(Path(args.hosts)).values())
        pools[f"workers over SSH ({', '.join(h.name for h in hosts)})"] = lambda: SshWorkerPool(hosts)
    overheads: dict[str, list[float]] = {}
    for label, make in pools.items():
        with make() as pool:
            store = RunStore.create(work, {"bench": "dispatch"}, run_id=f"dask-one-by-one-{len(overheads)}")
            for group in groups:
                one = replace(matrix, cells=tuple(group))
                run_matrix(one, store, ctx, _QuietReporter(), executor=pool)
            overheads[label] = list(pool.overheads)
    walls = {}
    for jobs in (1, 2):
        store = RunStore.create(work, {"bench": "dispatch"}, run_id=f"jobs{jobs}")
        started = time.monotonic()
        with local_executor(jobs) as executor:
            rows = run_matrix(matrix, store, ctx, _QuietReporter(), executor=executor)
        walls[jobs] = time.monotonic() - started
        if not all(r["status"] == "ok" for r in rows):
            raise LabError(f"bench dispatch: a cell failed with --jobs {jobs}; see {store.root}")
    cells = len(matrix.cells)
    for label, times in overheads.items():
        spread = f"median {statistics.median(times):.3f} s, max {max(times):.3f} s"
        print(
            f"\nDask dispatch overhead per boot group ({len(times)} groups, {label}, {ctx.accel}, "
            f"{os.cpu_count()} host CPUs): {spread}"
        )
    for jobs, wall in walls.items():
        print(
            f"--jobs {jobs}: {cells} cells in {wall:.1f} s = {cells / wall * 3600:.0f} cells/hour"
            + ("" if jobs == 1 else f" ({walls[1] / wall:.2f}x the throughput of --jobs 1)")
        )
    return 0


class _QuietReporter:
    def phase(self, cell: Cell | None, text: str) -> None:
        pass

    def cell_done(self, cell: Cell, row: dict[str, Any], estimate_s: float) -> None:
        console.print(one_line(row))


def cmd_image_build(args: argparse.Namespace) -> int:
    from lab.image import build_image

    image = build_image()
    print(f"{image.rootfs} (recipe {image.recipe_hash}, {image.rootfs.stat().st_size / 2**20:.0f} MiB)")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from lab.report import build_report
    from lab.store import RunStore

    store = RunStore.open(Path(args.run))
    if args.in_place:
        output = store.root
    else:  # a stored run is the record of what ran: its report is rewritten only when asked
        output = Path(args.output) if args.output else Path(f"report-{store.root.name}")
        if output.resolve() == store.root.resolve():
            raise ConfigError(f"--output {output} is the run directory itself; say --in-place to rewrite its report")
    started = time.monotonic()
    written = build_report(store.root, output)
    print(f"{written['html']}\n{written['md']} ({time.monotonic() - started:.1f} s)")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from lab.compare import compare_runs

    out = compare_runs(Path(args.a), Path(args.b), Path(args.output) if args.output else None)
    print(out.read_text())
    print(f"written to {out}")
    return 0


def cmd_build_kernel(args: argparse.Namespace) -> int:
    from lab.kernel import build_kernel, local_source

    source = local_source(Path(args.kernel_tree)) if args.kernel_tree else None
    started = time.monotonic()
    with console.status(f"building kernel {args.variant} (log under the cache's kernels/ directory)"):
        kernel = build_kernel(args.variant, source=source, jobs=args.jobs)
    print(f"{kernel.name}: {kernel.bzimage} ({kernel.release}) in {time.monotonic() - started:.1f} s")
    for key, value in kernel.identity.items():
        print(f"  {key}: {value}")
    return 0


def cmd_bench_kernel(args: argparse.Namespace) -> int:
    """Kernel build times: cache hit, rebuild after a one-line patch change, optionally a cold build."""
    import shutil
    import tempfile

    from lab.kernel import Variant, build_kernel, load_variants

    variants = load_variants()
    results: list[tuple[str, float]] = []
    if args.cold:
        with tempfile.TemporaryDirectory(prefix="swiotlb-lab-cold-") as cold_cache:
            started = time.monotonic()
            build_kernel(args.variant, cache=Path(cold_cache), variants=variants)
            results.append((f"cold build of {args.variant} (empty cache and ccache)", time.monotonic() - started))
    build_kernel(args.variant, variants=variants)  # make sure it is cached
    started = time.monotonic()
    build_kernel(args.variant, variants=variants)
    results.append((f"cache hit for {args.variant}", time.monotonic() - started))

    series = variants["throttle"]
    build_kernel("throttle", variants=variants)
    with tempfile.TemporaryDirectory(prefix="swiotlb-lab-patch-") as tmp:
        changed: list[str] = []
        for patch in series.patches:
            copy = Path(tmp) / patch.name
            text = patch.read_text()
            if not changed and "+ * A request that may block waits" in text:
                text = text.replace(
                    "+ * A request that may block waits", "+ * A request that may block always waits", 1
                )
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
    for label, seconds in results:
        print(f"{label}: {seconds:.1f} s")
    return 0


def cmd_bench_matrix(args: argparse.Namespace) -> int:
    """Throughput of a finished run (cells/hour, boots saved by grouping) and report time for 10,000 cells."""
    import json
    import shutil
    import tempfile

    import pandas as pd

    from lab.report import build_report
    from lab.store import load_cells

    if args.run:
        run = Path(args.run)
        manifest = json.loads((run / "manifest.json").read_text())
        cells = load_cells(run)
        matrix = load_matrix(manifest["matrix_source"])
        started = time.mktime(time.strptime(manifest["started_utc"], "%Y-%m-%dT%H:%M:%SZ"))
        finished = time.mktime(time.strptime(manifest["finished_utc"], "%Y-%m-%dT%H:%M:%SZ"))
        hours = (finished - started) / 3600.0
        boots = len(matrix.boot_groups())
        print(
            f"run {run.name}: {len(cells)} cells in {hours * 60:.1f} min = {len(cells) / hours:.0f} cells/hour "
            f"({manifest.get('accel')}, jobs {manifest.get('jobs', 1)})"
        )
        print(f"boots: {boots} for {len(matrix.cells)} cells; grouping saved {len(matrix.cells) - boots} boots")
    sample = Path(args.sample_run)
    with tempfile.TemporaryDirectory(prefix="swiotlb-lab-bench-") as tmp:
        copy = Path(tmp) / sample.name
        shutil.copytree(sample, copy)
        cells = load_cells(copy)
        copies = [
            cells.assign(cell_id=cells["cell_id"] + f"-x{i}", repetition=cells["repetition"] + 100 * i)
            for i in range(args.cells // len(cells) + 1)
        ]
        pd.concat(copies).iloc[: args.cells].to_parquet(copy / "cells.parquet", index=False)
        started_s = time.monotonic()
        build_report(copy)
        print(f"report for {args.cells} cells: {time.monotonic() - started_s:.2f} s")
    return 0


def cmd_kernel_stock(args: argparse.Namespace) -> int:
    from lab.kernel import stock_kernel

    kernel = stock_kernel()
    print(f"{kernel.bzimage} ({kernel.release})")
    for key, value in kernel.identity.items():
        print(f"  {key}: {value}")
    return 0


# --- parser ---------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lab", description="swiotlb bounce-buffering lab")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)")
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", required=True)

    doctor = sub.add_parser("doctor", help="check host requirements and whether KVM works")
    doctor.add_argument(
        "--hosts", metavar="HOSTS.toml", help="probe every host of an inventory over SSH (see lab/hosts.example.toml)"
    )
    doctor.set_defaults(func=cmd_doctor)

    run = sub.add_parser("run", help="run experiments")
    run_sub = run.add_subparsers(dest="what", required=True)
    matrix = run_sub.add_parser("matrix", help="run a matrix of cells")
    matrix.add_argument("matrix", nargs="?", default="default", help="shipped matrix name or TOML path")
    matrix.add_argument("--results", default="results", help="results directory (default: ./results)")
    matrix.add_argument("--dry-run", action="store_true", help="list cells, boots and estimated time; run nothing")
    matrix.add_argument("--cores", type=int, metavar="N", help="with --dry-run: also estimate for a host with N cores")
    matrix.add_argument("--resume", metavar="RUN_DIR", help="finish an interrupted run")
    matrix.add_argument("--retry-failed", action="store_true", help="with --resume: also rerun the failed cells")
    matrix.add_argument(
        "--strict",
        action="store_true",
        help="exit 1 if any cell failed (default: failed cells are findings; exit 1 only if the "
        "run did not finish or measured nothing)",
    )
    add_accel_argument(matrix)
    matrix.add_argument(
        "--jobs",
        type=at_least_one,
        default=0,
        help="guests at once (default: host CPUs // (vCPUs + 1), at least 1); more than one "
        "runs boot groups on an in-process Dask cluster",
    )
    where = matrix.add_mutually_exclusive_group()
    where.add_argument(
        "--hosts",
        metavar="HOSTS.toml",
        help="run on the hosts of an inventory: a Dask worker is started on each over SSH",
    )
    where.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="run on a running Dask cluster (e.g. tcp://lab-ctl:8786) whose workers live on the "
        'hosts (`dask worker --resources "slot=4,kvm=4,sev-snp=4"`)',
    )
    matrix.set_defaults(func=cmd_run_matrix)

    nightly = sub.add_parser("nightly", help="one night of hardware-in-the-loop CI: run, gate against the baseline")
    nightly.add_argument("--matrix", default="nightly", help="shipped matrix name or TOML path (default: nightly)")
    nightly.add_argument("--history", default="results/nightly", help="where the nights live (runs/<run-id>/)")
    nightly.add_argument("--kernel-tree", metavar="PATH", help="the revision under test (e.g. the series' checkout)")
    nightly.add_argument("--junit", metavar="FILE", help="also write the JUnit XML here (CI test view)")
    nightly.add_argument("--keep", type=int, default=60, help="nights to keep (never the baseline; default 60)")
    nightly.add_argument(
        "--jobs", type=at_least_one, default=0, help="guests at once (default: host CPUs // (vCPUs + 1), at least 1)"
    )
    add_accel_argument(nightly)
    nightly_where = nightly.add_mutually_exclusive_group()
    nightly_where.add_argument(
        "--hosts", metavar="HOSTS.toml", help="run on the hosts of an inventory, as `run matrix --hosts`"
    )
    nightly_where.add_argument(
        "--scheduler", metavar="ADDRESS", help="run on a running Dask cluster, as `run matrix --scheduler`"
    )
    nightly.set_defaults(func=cmd_nightly)

    history = sub.add_parser("history", help="questions about the nights (DuckDB over their Parquet tables)")
    history.add_argument(
        "question",
        choices=("nights", "claims", "metric", "sql", "trend"),
        help="nights: one row per night; claims: verdicts per night; metric: a column's median per night, "
        "kernel and workload; sql: your own query; trend: write the trend page and print its path",
    )
    history.add_argument(
        "--history", default="results/nightly", help="the directory given to `nightly --history` (default: %(default)s)"
    )
    history.add_argument("--metric", default="fio_iops", help="for `metric`: a cells column, e.g. fio_clat_p99_us")
    history.add_argument("--sql", default="SELECT * FROM nights", help="for `sql`: views nights, cells, claims")
    history.add_argument("--matrix", default="nightly", help="for `trend`: the matrix name")
    history.set_defaults(func=cmd_history)

    bench = sub.add_parser("bench", help="benchmarks")
    bench_sub = bench.add_subparsers(dest="what", required=True)
    boot = bench_sub.add_parser("boot", help="boot-to-SSH time and per-cell overhead")
    boot.add_argument("--boots", type=int, default=5, help="boots to time (default 5)")
    boot.add_argument("--cell-runtime", type=int, default=5, help="fio runtime of the overhead cells (s)")
    boot.add_argument("--matrix", default="stock", help="matrix whose first cell is booted (default stock)")
    boot.add_argument("--results", default="results", help="results directory (default: ./results)")
    add_accel_argument(boot)
    boot.set_defaults(func=cmd_bench_boot)

    sampler = bench_sub.add_parser("sampler", help="what an instrument (the sampler, or the hist triggers) costs fio")
    sampler.add_argument(
        "--observer",
        choices=("sampler", "triggers"),
        default="sampler",
        help="the instrument to measure (default: the in-guest sampler)",
    )
    sampler.add_argument("--hz", type=float, default=50.0, help="the sampler's rate (default 50)")
    _paired_bench_arguments(sampler, 8, "ABBA pairs per workload (default 8)", "stock")
    sampler.set_defaults(func=cmd_bench_sampler)

    counter = bench_sub.add_parser("counter", help="what the lab's failed-map counter costs fio (vs KERNEL-bare)")
    counter.add_argument("--kernel", default="static", help="a variant with a KERNEL-bare twin (default static)")
    _paired_bench_arguments(counter, 6, "ABBA pairs of boots (default 6)", "observer")
    counter.set_defaults(func=cmd_bench_counter)

    dmamap = bench_sub.add_parser("dmamap", help="the kernel's DMA map benchmark: map/unmap latency per kernel")
    dmamap.add_argument("--kernels", default="static,throttle-v2", help="comma-separated kernel variants")
    dmamap.add_argument("--threads", default="1,2,4", help="comma-separated thread counts (default 1,2,4)")
    dmamap.add_argument("--seconds", type=int, default=5, help="seconds per run (1-300)")
    dmamap.add_argument("--rounds", type=int, default=3, help="rounds over the thread counts per kernel")
    dmamap.add_argument("--granule", type=int, default=1, help="pages per map (default 1)")
    dmamap.add_argument("--pool", default="64MiB", help="swiotlb pool (default 64MiB: far from full)")
    dmamap.add_argument("--vcpus", type=int, default=2, help="the guest's vCPUs (default 2)")
    dmamap.add_argument("--results", default="results", help="results directory (default: ./results)")
    add_accel_argument(dmamap)
    dmamap.set_defaults(func=cmd_bench_dmamap)

    report = sub.add_parser("report", help="write report.html/report.md with the claims table for a run")
    report.add_argument("run", help="results/<run-id> directory")
    report_where = report.add_mutually_exclusive_group()
    report_where.add_argument("--output", metavar="DIR", help="where to write it (default: ./report-<run-id>)")
    report_where.add_argument("--in-place", action="store_true", help="rewrite the run's own report in its directory")
    report.set_defaults(func=cmd_report)

    compare_cmd = sub.add_parser("compare", help="two runs side by side (e.g. two revisions of the series)")
    compare_cmd.add_argument("a", help="baseline run directory")
    compare_cmd.add_argument("b", help="candidate run directory")
    compare_cmd.add_argument("--output", help="Markdown file to write (default: ./compare-<A>-vs-<B>.md)")
    compare_cmd.set_defaults(func=cmd_compare)

    build = sub.add_parser("build", help="build things")
    build_sub = build.add_subparsers(dest="what", required=True)
    build_kernel = build_sub.add_parser("kernel", help="build a kernel variant (kernel-configs/variants.toml)")
    build_kernel.add_argument("variant", help="a variant of kernel-configs/variants.toml, e.g. throttle")
    build_kernel.add_argument("--kernel-tree", metavar="PATH", help="build from this tree instead of Debian's source")
    build_kernel.add_argument("--jobs", type=at_least_one, default=None, help="make -j (default: CPUs + 1)")
    build_kernel.set_defaults(func=cmd_build_kernel)

    doorbells = bench_sub.add_parser("doorbells", help="MMIO doorbell writes per NVMe command, per kernel")
    doorbells.add_argument("--kernels", default="static,throttle,throttle-v2", help="comma-separated variants")
    doorbells.add_argument("--reps", type=int, default=3, help="fio runs per kernel, in one boot")
    doorbells.add_argument("--pool", default="64MiB", help="swiotlb pool (far from full: nothing waits)")
    add_accel_argument(doorbells)
    doorbells.add_argument("--results", default="results", help="results directory (default: ./results)")
    doorbells.set_defaults(func=cmd_bench_doorbells)

    bench_kernel = bench_sub.add_parser("kernel", help="kernel build times (cache hit, patch-only rebuild, cold)")
    bench_kernel.add_argument("--variant", default="static", help="the variant to time (default static)")
    bench_kernel.add_argument("--cold", action="store_true", help="also time a cold build into an empty cache")
    bench_kernel.set_defaults(func=cmd_bench_kernel)

    trend = bench_sub.add_parser("trend", help="time to build the nightly trend page for N nights")
    trend.add_argument("--nights", type=int, default=365, help="nights to make up (default 365)")
    trend.add_argument(
        "--cells",
        default=str(Path(__file__).resolve().parent.parent / "tests/data/default-cells.parquet"),
        help="the cells.parquet every made-up night holds (default: the stored default-matrix run in tests/data)",
    )
    trend.set_defaults(func=cmd_bench_trend)

    dispatch = bench_sub.add_parser("dispatch", help="Dask's overhead per boot group; --jobs 1 vs 2 throughput")
    dispatch.add_argument("--matrix", default="stock", help="matrix whose boot groups are run (default stock)")
    dispatch.add_argument("--results", default="results", help="results directory (default: ./results)")
    add_accel_argument(dispatch)
    dispatch.add_argument("--hosts", metavar="FILE", help="also measure through a worker per host of this inventory")
    dispatch.set_defaults(func=cmd_bench_dispatch)

    bench_matrix = bench_sub.add_parser("matrix", help="cells/hour and boots saved of a run; report time at scale")
    bench_matrix.add_argument("--run", help="a finished results/<run-id> to measure")
    bench_matrix.add_argument(
        "--sample-run",
        default=str(Path(__file__).resolve().parent.parent / "tests/data/run-small"),
        help="a run whose cells are copied up to --cells to time the report (default: tests/data/run-small)",
    )
    bench_matrix.add_argument("--cells", type=int, default=10_000, help="cells in the timed report (default 10000)")
    bench_matrix.set_defaults(func=cmd_bench_matrix)

    image = sub.add_parser("image", help="guest image")
    image_sub = image.add_subparsers(dest="what", required=True)
    image_sub.add_parser("build", help="build (or reuse) the guest image").set_defaults(func=cmd_image_build)

    kernel = sub.add_parser("kernel", help="kernels")
    kernel_sub = kernel.add_subparsers(dest="what", required=True)
    kernel_sub.add_parser("stock", help="fetch the stock Debian 6.12 kernel").set_defaults(func=cmd_kernel_stock)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * args.verbose
    logging.basicConfig(level=max(level, logging.DEBUG), format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("paramiko", "qemu.qmp", "invoke", "fabric", "distributed", "tornado"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    try:
        with interrupt.handling_signals():
            code = int(args.func(args))
            interrupt.check()  # a stop request that some library swallowed still ends the command as one
            return code
    except LabError as exc:
        if interrupt.stop_requested():  # an error the stop itself caused (a closed channel, a killed build)
            print(f"interrupted ({interrupt.reason()}): QEMU stopped, partial results kept", file=sys.stderr)
            return 130
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted: QEMU stopped, partial results kept", file=sys.stderr)
        return 130
    except OSError as exc:  # e.g. a full results disk: say where, keep what was written
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"error: {exc.strerror or exc}{where}; finished cells are kept", file=sys.stderr)
        return 1
