"""Command line: the only module that knows argparse, prints for humans (with lab.terminal's reporters), or
exits."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

from lab import __version__, interrupt
from lab.errors import ConfigError, LabError
from lab.terminal import RichReporter, cells_progress, console, one_line

log = logging.getLogger("lab")


def at_least_one(text: str) -> int:
    """argparse type for counts such as --jobs: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1 or str(value) != text.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return value


# --- commands -----------------------------------------------------------------------------


def cmd_doctor(args: argparse.Namespace) -> int:
    """Exit 0 if this host (or every host of --hosts) has what the lab needs; 2 for missing packages here, 1
    for an inventory's host that is unreachable or does not offer what the inventory claims."""
    from rich.table import Table

    from lab.doctor import PLATFORM_COLUMNS, check_hosts, check_local

    def offered(why: str) -> str:
        return "[green]yes[/green]" if not why else "[dim]no[/dim]"

    if args.hosts:
        path = Path(args.hosts)
        rows = check_hosts(path)
        table = Table(title=f"hosts in {path}")
        for column in ("host", "SSH", "QEMU", "host kernel", *PLATFORM_COLUMNS, "as claimed"):
            table.add_column(column)
        notes: list[str] = []
        for row in rows:
            if row.unreachable:
                table.add_row(row.name, "[red]unreachable[/red]", *([""] * (len(PLATFORM_COLUMNS) + 3)))
                notes.append(f"{row.name}: {row.unreachable}")
                continue
            claimed = "[green]yes[/green]" if not row.not_as_claimed else "[red]no[/red]"
            platforms = (offered(row.platforms[p]) for p in PLATFORM_COLUMNS)
            table.add_row(row.name, row.ssh, row.qemu, row.host_kernel, *platforms, claimed)
            notes += [f"{row.name}: {p} not offered: {why}" for p, why in row.platforms.items() if why]
            notes += [f"{row.name}: claimed in {path.name} but not offered: {m}" for m in row.not_as_claimed]
        Console().print(table)  # stdout, with the notes: what a CI log or a pipe keeps
        for note in notes:
            print(note)
        return 0 if all(row.healthy for row in rows) else 1
    found = check_local(busy=console.status)
    for r in found.requirements:
        mark = "[green]ok[/green]     " if r.present else "[red]missing[/red]"
        console.print(f"{mark} {r.what:40s} (Debian package {r.package})")
    for line in found.kvm:
        console.print(line)
    for name, what in found.qemus.items():
        console.print(f"QEMU {name:9s} {what}")
    for platform, why in found.platforms.items():
        console.print(f"platform {platform:8s} " + ("[green]offered[/green]" if not why else f"not offered: {why}"))
    if found.missing_packages:
        console.print(f"[red]missing host packages:[/red] apt-get install {' '.join(found.missing_packages)}")
        return 2
    return 0


def cmd_run_matrix(args: argparse.Namespace) -> int:
    from lab.session import RunRequest, Session

    request = RunRequest(
        matrix=args.matrix,
        results=Path(args.results),
        resume=Path(args.resume) if args.resume else None,
        retry_failed=args.retry_failed,
        mix_batches=args.mix_batches,
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
        print("\n".join(plan.dry_run(session.matrix.cells, args.cores)))
        return 0
    session.prepare()
    if session.contention:
        console.print(f"[yellow]warning[/yellow]: {session.contention} (the manifest and every row say so)")
    estimate_s = plan.estimate_s / min(session.jobs, max(plan.boots, 1))
    console.print(
        f"matrix [bold]{session.matrix.name}[/bold]: {len(plan.todo)} cells in {plan.boots} boots, "
        f"{session.jobs} at a time, ~{estimate_s / 60:.0f} min"
    )
    status = "complete"
    try:
        with cells_progress(eta=True) as progress:
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
    """One night (lab.nightly.run_night).  Exit 0, 1 (regression) or 3 (no usable result)."""
    from lab.history import History
    from lab.nightly import run_night
    from lab.session import RunRequest

    history = History(Path(args.history))
    request = RunRequest(
        matrix=args.matrix,
        results=history.runs,
        jobs=args.jobs,
        accel=args.accel,
        hosts=Path(args.hosts) if args.hosts else None,
        scheduler=args.scheduler,
        kernel_tree=Path(args.kernel_tree).resolve() if args.kernel_tree else None,
    )

    def run_cells(session: Any, plan: Any) -> None:
        with cells_progress(eta=False) as progress:
            session.run(RichReporter(progress, plan.estimate_s, len(plan.todo)))

    junit = Path(args.junit) if args.junit else None
    night = run_night(request, history, junit, args.keep, run_cells, console.status)
    for line in night.lines:
        print(line)
    if night.problem:
        console.print(f"[red]{night.problem}[/red]")
    return night.code


def cmd_history(args: argparse.Namespace) -> int:
    """The common questions about the nights, answered with DuckDB over their Parquet tables."""
    from lab.history import History
    from lab.nightly import build_trend

    history = History(Path(args.history))
    if args.question == "trend":
        print(build_trend(history, args.matrix))
        return 0
    frame = history.query(args.sql) if args.question == "sql" else history.ask(args.question, args.metric)
    print(frame.to_string(index=False) if not frame.empty else "(no rows)")
    return 0


def add_accel_argument(parser: argparse.ArgumentParser) -> None:
    """--accel, as every command that boots guests takes it."""
    parser.add_argument(
        "--accel",
        choices=("auto", "kvm", "tcg"),
        default="auto",
        help="auto: KVM if a probe boot works, else TCG (default auto)",
    )


def _paired_bench_arguments(parser: argparse.ArgumentParser, pairs: int, pairs_help: str, matrix: str) -> None:
    """The options of a bench that pairs runs with and without an instrument (what lab.bench.bench_workloads reads)."""
    parser.add_argument("--pairs", type=int, default=pairs, help=pairs_help)
    parser.add_argument("--runtime", type=int, default=10, help="fio runtime per run in seconds (default 10)")
    parser.add_argument("--workloads", default="light,heavy", help="comma-separated workloads of the matrix")
    parser.add_argument(
        "--matrix", default=matrix, help=f"matrix whose workloads are run (name or TOML path; default {matrix})"
    )
    parser.add_argument("--results", default="results", help="results directory (default: ./results)")
    add_accel_argument(parser)


def _bench_reporter() -> Any:
    from lab.bench import CellPrinter

    return CellPrinter(console.print, one_line)


def cmd_bench_boot(args: argparse.Namespace) -> int:
    from lab.bench import bench_boot

    result = bench_boot(
        args.matrix, args.boots, args.cell_runtime, args.accel, Path(args.results), _bench_reporter(), console.print
    )
    print(result.text())
    return 0


def _paired_bench(args: argparse.Namespace) -> dict[str, Any]:
    """What a paired bench gets from the options _paired_bench_arguments declares."""
    return {
        "matrix_name": args.matrix,
        "workloads": args.workloads,
        "pairs": args.pairs,
        "runtime": args.runtime,
        "accel": args.accel,
        "results": Path(args.results),
        "reporter": _bench_reporter(),
        "say": console.print,
    }


def cmd_bench_sampler(args: argparse.Namespace) -> int:
    from lab.bench import bench_observer

    print(bench_observer(args.observer, args.hz, **_paired_bench(args)).text())
    return 0


def cmd_bench_counter(args: argparse.Namespace) -> int:
    from lab.bench import bench_counter

    print(bench_counter(args.kernel, **_paired_bench(args)).text())
    return 0


def cmd_bench_doorbells(args: argparse.Namespace) -> int:
    from lab.bench import bench_doorbells

    result = bench_doorbells(
        args.kernels, args.reps, args.pool, args.accel, Path(args.results), _bench_reporter(), console.print
    )
    print(result.text())
    return 0


def cmd_bench_dmamap(args: argparse.Namespace) -> int:
    from lab.bench import bench_dmamap

    result = bench_dmamap(
        args.kernels,
        args.threads,
        args.rounds,
        args.seconds,
        args.granule,
        args.vcpus,
        args.pool,
        args.accel,
        Path(args.results),
        console.print,
    )
    print(result.text())
    return 0


def cmd_bench_trend(args: argparse.Namespace) -> int:
    from lab.bench import bench_trend

    print(bench_trend(Path(args.cells), args.nights))
    return 0


def cmd_bench_dispatch(args: argparse.Namespace) -> int:
    from lab.bench import bench_dispatch

    hosts = Path(args.hosts) if args.hosts else None
    print(bench_dispatch(args.matrix, hosts, args.accel, Path(args.results), _bench_reporter()).text())
    return 0


def cmd_bench_pairing(args: argparse.Namespace) -> int:
    from lab.bench import bench_pairing

    print(bench_pairing(Path(args.cells), args.effect))
    return 0


def cmd_bench_kernel(args: argparse.Namespace) -> int:
    from lab.bench import bench_kernel

    print(bench_kernel(args.variant, args.cold))
    return 0


def cmd_bench_matrix(args: argparse.Namespace) -> int:
    from lab.bench import bench_matrix

    print(bench_matrix(Path(args.run) if args.run else None, Path(args.sample_run), args.cells))
    return 0


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


def cmd_replicate(args: argparse.Namespace) -> int:
    from lab.replicate import replicate_runs

    _, out = replicate_runs(Path(args.a), Path(args.b), Path(args.output) if args.output else None)
    print(out.read_text())
    print(f"written to {out}")
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


def cmd_build_qemu(args: argparse.Namespace) -> int:
    from lab.toolchain import build_qemu

    started = time.monotonic()
    with console.status(f"QEMU toolchain {args.name}: mmdebstrap (log in the cache's toolchains/ directory)"):
        root = build_qemu(args.name)
    print(
        f"{root.name}: {root.qemu} (QEMU {root.packages.get('qemu-system-x86', '?')}, recipe {root.recipe_hash}) in "
        f"{time.monotonic() - started:.1f} s"
    )
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
        "--mix-batches",
        action="store_true",
        help="with --resume: resume a run another lab revision (or other uncommitted changes) started",
    )
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

    replicate = sub.add_parser("replicate", help="did a run's verdicts replicate in another (two machines or days)?")
    replicate.add_argument("a", help="one run directory")
    replicate.add_argument("b", help="the other run directory, of the same matrix")
    replicate.add_argument("--output", help="Markdown file to write (default: ./replicate-<A>-vs-<B>.md)")
    replicate.set_defaults(func=cmd_replicate)

    build = sub.add_parser("build", help="build things")
    build_sub = build.add_subparsers(dest="what", required=True)
    build_kernel = build_sub.add_parser("kernel", help="build a kernel variant (kernel-configs/variants.toml)")
    build_kernel.add_argument("variant", help="a variant of kernel-configs/variants.toml, e.g. throttle")
    build_kernel.add_argument("--kernel-tree", metavar="PATH", help="build from this tree instead of Debian's source")
    build_kernel.add_argument("--jobs", type=at_least_one, default=None, help="make -j (default: CPUs + 1)")
    build_kernel.set_defaults(func=cmd_build_kernel)
    build_qemu = build_sub.add_parser("qemu", help="build (or reuse) a QEMU toolchain root (images/qemu/recipe.toml)")
    build_qemu.add_argument("name", help="a root of images/qemu/recipe.toml, e.g. sid")
    build_qemu.set_defaults(func=cmd_build_qemu)

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

    pairing = bench_sub.add_parser("pairing", help="C8 unpaired vs within boots: interval widths, repetitions needed")
    pairing.add_argument(
        "--cells",
        default=str(Path(__file__).resolve().parent.parent / "tests/data/series-v2-counted-cells.parquet"),
        help="a series-v2.toml run's cells.parquet (default: the stored counted run in tests/data)",
    )
    pairing.add_argument("--effect", type=float, default=10.0, help="the IOPS drop to detect, in %% (default 10)")
    pairing.set_defaults(func=cmd_bench_pairing)

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
