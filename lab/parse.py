"""Pure parsers for what the guest produces: debugfs, sampler CSV, hist triggers, fio JSON, dmesg, hctx flags.

Every function takes text and returns values; none does I/O.  Errors are
``ParseError`` naming what was parsed and where it came from.
"""

from __future__ import annotations

import json
import math
import re
from bisect import bisect_left
from dataclasses import dataclass, field, replace
from typing import Any

import pandas as pd

from lab.errors import ParseError

INVALID_COUNTER = 1 << 63  # older kernels could report used/hiwater as a negative (huge) value
PERCENTILES = (50.0, 99.0, 99.9)


# --- debugfs ------------------------------------------------------------------------


def parse_debugfs(text: str, root: str = "/sys/kernel/debug/swiotlb", source: str = "debugfs") -> dict[str, int | None]:
    """Parse ``grep -r . ROOT`` output into {relative name: value}; None marks an invalid value."""
    values: dict[str, int | None] = {}
    prefix = root.rstrip("/") + "/"
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        path, sep, raw = line.partition(":")
        if not sep or not path.startswith(prefix):
            raise ParseError("swiotlb debugfs", source, f"line {lineno} is not 'PATH:VALUE' under {root}: {line!r}")
        name = path[len(prefix) :]
        try:
            value = int(raw.strip(), 0)
        except ValueError as exc:
            raise ParseError("swiotlb debugfs", source, f"line {lineno}: {name} = {raw!r} is not a number") from exc
        values[name] = value if 0 <= value < INVALID_COUNTER else None
    return values


# --- sampler ------------------------------------------------------------------------


@dataclass(frozen=True)
class Samples:
    frame: pd.DataFrame  # t_s (since sampler start) and one column per debugfs file
    hz: float
    complete: bool  # the sampler wrote its end line (it was stopped cleanly)
    late: int  # ticks that missed their deadline
    start_realtime_ns: int


def parse_samples(text: str, source: str = "samples.csv") -> Samples:
    lines = text.splitlines()
    if len(lines) < 2 or not lines[0].startswith("# swiotlb-sampler v1"):
        raise ParseError("sampler output", source, "missing '# swiotlb-sampler v1' header")
    meta = dict(re.findall(r"(\w+)=(\S+)", lines[0]))
    header = lines[1].split(",")
    if header[0] != "t_ns":
        raise ParseError("sampler output", source, f"second line must start with t_ns, got {lines[1]!r}")
    end = re.match(r"# end samples=(\d+) late=(\d+)", lines[-1])
    body = lines[2:-1] if end else lines[2:]
    if not end and body:
        body = body[:-1]  # an unterminated last row may be cut mid-write
    rows: list[list[float]] = []
    for lineno, line in enumerate(body, 3):
        cells = line.split(",")
        if len(cells) != len(header):
            raise ParseError("sampler output", source, f"line {lineno} has {len(cells)} fields, expected {len(header)}")
        try:
            row = [float(int(cells[0]))]
            for cell in cells[1:]:
                value = int(cell) if cell else -1
                row.append(float(value) if 0 <= value < INVALID_COUNTER else math.nan)
        except ValueError as exc:
            raise ParseError("sampler output", source, f"line {lineno}: not a number: {line!r}") from exc
        rows.append(row)
    frame = pd.DataFrame(rows, columns=header)
    start = float(meta.get("start_monotonic_ns", frame["t_ns"].iloc[0] if len(frame) else 0))
    frame.insert(0, "t_s", (frame.pop("t_ns") - start) / 1e9)
    return Samples(
        frame=frame,
        hz=float(meta.get("hz", "nan")),
        complete=bool(end),
        late=int(end.group(2)) if end else -1,
        start_realtime_ns=int(meta.get("start_realtime_ns", "0")),
    )


# --- tracefs hist triggers -------------------------------------------------------------


@dataclass(frozen=True)
class Hist:
    entries: tuple[dict[str, str | int], ...]
    hits: int
    dropped: int

    def total(self, value: str = "hitcount") -> int:
        return sum(int(e.get(value, 0)) for e in self.entries)


_HIST_ENTRY = re.compile(r"^\{(?P<keys>[^}]*)\}(?P<vals>.*)$")


def parse_hist(text: str, source: str = "hist") -> Hist:
    """Parse a tracefs ``hist`` file (one trigger)."""
    if not text.strip():
        return Hist((), 0, 0)  # the event does not exist on this kernel
    entries = []
    totals: dict[str, int] = {}
    for line in text.splitlines():
        line = line.strip()
        match = _HIST_ENTRY.match(line)
        if match:
            entry: dict[str, str | int] = {}
            for part in match.group("keys").split(","):
                key, _, value = part.partition(":")
                entry[key.strip()] = value.strip()
            for key, value in re.findall(r"(\w+):\s*(\d+)", match.group("vals")):
                entry[key] = int(value)
            entries.append(entry)
        elif re.match(r"^(Hits|Entries|Dropped):\s*\d+$", line):
            key, value = line.split(":")
            totals[key] = int(value)
    if "Hits" not in totals:
        raise ParseError("tracefs hist", source, "no 'Totals: Hits:' section")
    return Hist(tuple(entries), totals["Hits"], totals.get("Dropped", 0))


# --- blk-mq ------------------------------------------------------------------------------


# /proc/stat's "cpu" line: time in USER_HZ ticks (100 per second on every Linux ABI), per state.
PROC_STAT_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
USER_HZ = 100


def parse_proc_stat(text: str, source: str = "/proc/stat") -> dict[str, int]:
    """The first line of /proc/stat (all CPUs) → {state: ticks}."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    words = line.split()
    if len(words) < 1 + len(PROC_STAT_FIELDS) or words[0] != "cpu" or not all(w.isdigit() for w in words[1:]):
        raise ParseError("guest CPU time", source, f"not the 'cpu' line of /proc/stat: {line[:200]!r}")
    return dict(zip(PROC_STAT_FIELDS, map(int, words[1 : 1 + len(PROC_STAT_FIELDS)]), strict=True))


def busy_cpu_seconds(before: dict[str, int], after: dict[str, int]) -> float:
    """CPU time the guest spent doing anything but idling or waiting for I/O between two readings (all
    vCPUs together: user, nice, system, irq, softirq; steal is the host's, not the guest's)."""
    busy = ("user", "nice", "system", "irq", "softirq")
    return sum(after[f] - before[f] for f in busy) / USER_HZ


def parse_queue_limits(text: str, source: str = "queue_limits.txt") -> dict[str, int]:
    """``hw_queues=2 nr_requests=6 max_sectors_kb=128`` (what the lab set on a block queue) → dict."""
    values: dict[str, int] = {}
    for word in text.split():
        key, sep, value = word.partition("=")
        if not sep or not value.isdigit():
            raise ParseError("block queue limits", source, f"{word!r} is not KEY=NUMBER")
        values[key] = int(value)
    return values


def parse_hctx_flags(text: str) -> dict[str, frozenset[str]]:
    """``grep -H . .../hctx*/flags`` → {hctx name: flags}, e.g. {"hctx0": {"SHOULD_MERGE", "BLOCKING"}}."""
    result: dict[str, frozenset[str]] = {}
    for line in text.splitlines():
        path, sep, value = line.partition(":")
        match = re.search(r"/(hctx\d+)/flags$", path)
        if not sep or not match:
            continue
        words = value.split()
        flags = {f for w in words if not w.startswith("alloc_policy=") for f in w.split("|") if f}
        result[match.group(1)] = frozenset(flags)
    return result


# --- dmesg ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DmesgSummary:
    swiotlb_full: int  # "swiotlb buffer is full" lines (rate-limited by the kernel)
    io_errors: int  # block-layer I/O error lines
    interesting: tuple[str, ...] = field(default=())
    # libata error-handler rounds ("ata1.00: exception Emask ..."): a failed map of an ATA command is
    # completed with AC_ERR_SYSTEM, and each round drains the port and retries it (claim C10)
    ata_exceptions: int = 0


_SWIOTLB_FULL = re.compile(r"swiotlb buffer is full")
_IO_ERROR = re.compile(r"I/O error|blk_update_request|critical medium error|nvme.*(timeout|abort|reset)", re.I)
_INTERESTING = re.compile(r"swiotlb|software IO TLB|DMA|I/O error|nvme|virtio_blk|throttl|ata\d", re.I)
_ATA_EXCEPTION = re.compile(r"\bata\d+(\.\d+)?: exception Emask")


def parse_dmesg(text: str) -> DmesgSummary:
    lines = text.splitlines()
    return DmesgSummary(
        swiotlb_full=sum(1 for line in lines if _SWIOTLB_FULL.search(line)),
        io_errors=sum(1 for line in lines if _IO_ERROR.search(line)),
        interesting=tuple(line for line in lines if _INTERESTING.search(line))[:200],
        ata_exceptions=sum(1 for line in lines if _ATA_EXCEPTION.search(line)),
    )


# Reports of the kernel's own checkers (lockdep, atomic-sleep, hung-task, DMA-API debugging) and
# warnings: any of them fails the cell, with the report as its reason.  Each pattern matches the first
# line the kernel prints for that report (kernel/locking/lockdep.c, kernel/sched/core.c,
# kernel/hung_task.c, kernel/dma/debug.c, lib/bug.c).
SPLAT_PATTERNS = (
    (
        "lockdep",
        re.compile(
            r"WARNING: (possible (circular|recursive) locking|inconsistent lock state|"
            r"possible irq lock inversion|suspicious RCU usage)|BUG: Invalid wait context"
        ),
    ),
    ("sleep in atomic", re.compile(r"BUG: (sleeping function called from invalid context|scheduling while atomic)")),
    ("hung task", re.compile(r"INFO: task \S+ blocked for more than \d+ seconds")),
    ("dma-api", re.compile(r"DMA-API: \S+ \S+: ")),
    ("warning", re.compile(r"WARNING: CPU: \d+ PID: \d+ at ")),
)


@dataclass(frozen=True)
class Splat:
    kind: str  # "lockdep", "sleep in atomic", "hung task", "dma-api", "warning"
    text: str  # the report: its first line and up to 40 more


def kernel_splats(text: str, context: int = 40) -> list[Splat]:
    """The checker reports and warnings in a kernel log (dmesg or serial console), in order."""
    lines = [re.sub(r"^\[\s*\d+\.\d+\]\s?", "", line) for line in text.splitlines()]
    found: list[Splat] = []
    last = -10  # line of the previous match
    for index, line in enumerate(lines):
        kind = next((k for k, pattern in SPLAT_PATTERNS if pattern.search(line)), None)
        if kind is None:
            continue
        if found and index - last <= 3 and "warning" in (kind, found[-1].kind):
            # A checker that reports through WARN() (DMA-API debugging prints its message next to the
            # WARNING line): one report, named by the checker, its text from the first of the lines.
            if kind != "warning":
                found[-1] = Splat(kind, found[-1].text)
        else:
            found.append(Splat(kind, "\n".join(lines[index : index + 1 + context])))
        last = index
    return found


# --- fio -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FioResult:
    jobs: pd.DataFrame  # one row per job and direction with I/O
    iops: float
    bw_bytes: float
    clat_us: dict[float, float]  # merged over all jobs from the json+ histograms
    errors: int  # jobs whose "error" is non-zero
    short_ios: int
    drop_ios: int
    total_ios: int
    runtime_s: float
    version: str
    # Jobs named "neighbour*" load a second disk (claim C9), not the device under test: they are kept
    # apart from the figures above, here.
    neighbour: FioResult | None = None
    # What the device's jobs ran with, as fio reports it (a job file's options, not the matrix's defaults):
    # rw, bs and ioengine (values that differ between jobs joined by ","), the deepest iodepth, and numjobs,
    # the job processes that ran.
    options: dict[str, str | int] = field(default_factory=dict)


# fio's own defaults for what a job file may leave out (fio(1), 3.x)
FIO_DEFAULTS = {"rw": "read", "bs": "4k", "iodepth": "1", "ioengine": "psync"}


def fio_options(jobs: list[dict[str, Any]], global_options: dict[str, Any]) -> dict[str, str | int]:
    """The options ``jobs`` (fio JSON job entries) ran with: each job's own, else the global section's, else
    fio's default; ``numjobs`` counts the processes (one entry each, or numjobs each with group_reporting)."""
    merged = [{**FIO_DEFAULTS, **global_options, **job.get("job options", {})} for job in jobs]
    options: dict[str, str | int] = {
        key: ",".join(dict.fromkeys(str(opts[key]) for opts in merged)) for key in ("rw", "bs", "ioengine")
    }
    options["iodepth"] = max(int(opts["iodepth"]) for opts in merged)
    options["numjobs"] = sum(
        int(opts.get("numjobs", 1)) if str(opts.get("group_reporting", "0")) != "0" else 1  # a bare flag: ""
        for opts in merged
    )
    return options


NEIGHBOUR_JOB_PREFIX = "neighbour"


def _json_start(text: str) -> int:
    # fio may write notes ("note: both iodepth >= 1 and synchronous ...") before the JSON.
    match = re.search(r"^\{", text, re.M)
    if match is None:
        raise ValueError("no JSON object found")
    return match.start()


def merged_percentiles(bins: dict[int, int], percentiles: tuple[float, ...] = PERCENTILES) -> dict[float, float]:
    """Percentiles (same units as the bin keys) of a merged fio latency histogram."""
    if not bins:
        return {p: math.nan for p in percentiles}
    values = sorted(bins)
    cumulative = []
    running = 0
    for value in values:
        running += bins[value]
        cumulative.append(running)
    result = {}
    for p in percentiles:
        rank = math.ceil(p / 100.0 * running)
        result[p] = float(values[min(bisect_left(cumulative, max(rank, 1)), len(values) - 1)])
    return result


def parse_fio(text: str, source: str = "fio.json") -> FioResult:
    try:
        data = json.loads(text[_json_start(text) :])
        jobs = data["jobs"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ParseError("fio JSON", source, str(exc)) from exc
    if not jobs:
        raise ParseError("fio JSON", source, "no jobs")
    dut = [(i, j) for i, j in enumerate(jobs) if not str(j.get("jobname", "")).startswith(NEIGHBOUR_JOB_PREFIX)]
    others = [(i, j) for i, j in enumerate(jobs) if str(j.get("jobname", "")).startswith(NEIGHBOUR_JOB_PREFIX)]
    if not dut:
        raise ParseError("fio JSON", source, f"every job is a {NEIGHBOUR_JOB_PREFIX}* job: none ran on the device")
    version = str(data.get("fio version", ""))
    neighbour = _fio_jobs(others, source, version) if others else None
    options = fio_options([j for _, j in dut], data.get("global options") or {})
    return replace(_fio_jobs(dut, source, version), neighbour=neighbour, options=options)


def _fio_jobs(jobs: list[tuple[int, dict[str, Any]]], source: str, version: str) -> FioResult:
    """Figures over ``jobs`` (index in fio's output, job): sums, and percentiles of the merged histograms."""
    rows = []
    merged: dict[int, int] = {}
    errors = 0
    for index, job in jobs:
        errors += 1 if job.get("error", 0) else 0
        for direction in ("read", "write", "trim"):
            stats = job.get(direction)
            if not stats or not stats.get("total_ios"):
                continue
            clat = stats.get("clat_ns", {})
            pct = {float(k): v for k, v in clat.get("percentile", {}).items()}
            for key, count in clat.get("bins", {}).items():
                merged[int(key)] = merged.get(int(key), 0) + int(count)
            rows.append(
                {
                    "job": index,
                    "jobname": job.get("jobname", ""),
                    "direction": direction,
                    "error": int(job.get("error", 0)),
                    "iops": float(stats["iops"]),
                    "bw_bytes": float(stats["bw_bytes"]),
                    "io_bytes": int(stats["io_bytes"]),
                    "total_ios": int(stats["total_ios"]),
                    "short_ios": int(stats.get("short_ios", 0)),
                    "drop_ios": int(stats.get("drop_ios", 0)),
                    "runtime_ms": int(stats.get("runtime", 0)),
                    "clat_mean_us": float(clat.get("mean", math.nan)) / 1000.0,
                    **{f"clat_p{p:g}_us": float(pct.get(p, math.nan)) / 1000.0 for p in PERCENTILES},
                }
            )
    frame = pd.DataFrame(rows)
    if frame.empty:
        raise ParseError("fio JSON", source, "no job did any I/O")
    return FioResult(
        jobs=frame,
        iops=float(frame["iops"].sum()),
        bw_bytes=float(frame["bw_bytes"].sum()),
        clat_us={p: v / 1000.0 for p, v in merged_percentiles(merged).items()},
        errors=errors,
        short_ios=int(frame["short_ios"].sum()),
        drop_ios=int(frame["drop_ios"].sum()),
        total_ios=int(frame["total_ios"].sum()),
        runtime_s=float(frame["runtime_ms"].max()) / 1000.0,
        version=version,
    )
