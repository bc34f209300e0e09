"""Matrix loading: expansion, stable IDs, boot grouping, and errors that name file, key and valid values."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from lab.errors import ConfigError
from lab.matrix import Cell, load_matrix, parse_pool_slabs, queue_fit_share

GOOD = """
[matrix]
kernels = ["stock"]
pools = ["2MiB", 4096]
workloads = ["a", "b"]
repetitions = 2

[workloads.a]
rw = "randread"
bs = "4k"
runtime = "3s"

[workloads.b]
rw = "randwrite"
bs = "256k"
iodepth = 32
"""


def write(tmp_path: Path, text: str, name: str = "m.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_expansion_gives_every_combination(tmp_path: Path) -> None:
    matrix = load_matrix(write(tmp_path, GOOD))
    assert len(matrix.cells) == 2 * 2 * 2  # pools x workloads x repetitions
    assert {c.pool_slabs for c in matrix.cells} == {1024, 4096}
    assert matrix.cells[0].workload.runtime_s == 3


def test_cell_ids_are_stable_and_unique(tmp_path: Path) -> None:
    first = [c.cell_id for c in load_matrix(write(tmp_path, GOOD)).cells]
    second = [c.cell_id for c in load_matrix(write(tmp_path, GOOD, "copy.toml")).cells]
    assert first == second
    assert len(set(first)) == len(first)


def test_cells_sharing_a_boot_are_grouped(tmp_path: Path) -> None:
    groups = load_matrix(write(tmp_path, GOOD)).boot_groups()
    assert len(groups) == 4  # 2 pools x 2 repetitions; the two workloads share each boot
    assert all([c.workload.name for c in g] == ["a", "b"] for g in groups)


def test_stock_matrix_ships_with_the_package() -> None:
    matrix = load_matrix("stock")
    pools = {c.pool_slabs for c in matrix.cells}
    assert pools == {1024, 32768}
    assert {c.workload.name for c in matrix.cells} == {"light", "heavy"}


def test_default_matrix_has_what_the_claims_need() -> None:
    matrix = load_matrix("default")
    assert {c.kernel for c in matrix.cells} == {"static", "throttle", "dynamic", "throttle-v2"}
    # series v2 answers C2 where v1 overshot (2 and 4 MiB), C5 (polled) and C6 (heavy on 2 MiB)
    v2 = {(c.workload.name, c.pool_slabs) for c in matrix.cells if c.kernel == "throttle-v2"}
    assert v2 == {("heavy", 1024), ("heavy", 2048), ("polled", 1024)}
    assert {c.workload.name for c in matrix.cells} == {"heavy", "single-queue", "polled"}
    assert {c.repetition for c in matrix.cells} == set(range(5))
    polled = [c for c in matrix.cells if c.workload.hipri]
    assert polled and all(c.poll_queues > 0 for c in polled)
    # C2 per pool size: static and throttle run the heavy load on 2, 4 and 8 MiB, the rest on 2 MiB only
    larger = {(c.kernel, c.workload.name) for c in matrix.cells if c.pool_slabs > 1024}
    assert larger == {("static", "heavy"), ("throttle", "heavy"), ("throttle-v2", "heavy")}
    assert {c.pool_slabs for c in matrix.cells} == {1024, 2048, 4096}
    # polled cells need NVMe poll queues, so they boot separately from the others; a growing pool's cells
    # each boot alone (static 4, throttle 4, dynamic 3, throttle-v2 3 boots per repetition)
    assert len(matrix.boot_groups()) == 5 * (4 + 4 + 3 + 3)


@pytest.mark.parametrize(
    ("value", "slabs"),
    [("2MiB", 1024), ("64MiB", 32768), (1024, 1024), ("4096 slabs", 4096), ("1 GiB", 524288)],
)
def test_pool_sizes_in_bytes_or_slabs(value: object, slabs: int) -> None:
    assert parse_pool_slabs(value, "here") == slabs


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            "[matrix]\npools = = 1\n",
            r"m\.toml:2: malformed TOML: Invalid value \(at line 2, column 9\)",
            id="malformed",
        ),
        pytest.param(
            '[matrix]\npools = ["2MiB"]\nbogus = 1\n',
            r"m\.toml:3: unknown key 'bogus' in \[matrix\]; valid keys:",
            id="unknown-key",
        ),
        pytest.param('[matrix]\npools = ["2MiB"]\n[extra]\n', r"unknown table 'extra'", id="unknown-table"),
        pytest.param(
            '[matrix]\npools = ["0MiB"]\n',
            r"m\.toml:2: matrix\.pools: pool '0MiB' = 0 slabs is below the kernel minimum of 512",
            id="zero-pool",
        ),
        pytest.param("[matrix]\npools = [-5]\n", r"below the kernel minimum", id="negative-pool"),
        pytest.param(
            '[matrix]\npools = ["512KiB"]\n',
            r"256 slabs is below the kernel minimum of 512 slabs \(1 MiB\)",
            id="below-minimum",
        ),
        pytest.param('[matrix]\npools = ["lots"]\n', r"'lots' is not a pool size", id="not-a-size"),
        pytest.param(
            '[matrix]\nkernels = ["nope"]\npools = [1024]\n',
            r"unknown kernel variant 'nope'; valid: stock",
            id="unknown-kernel",
        ),
        pytest.param(
            '[matrix]\npools = [1024]\ndevices = ["scsi"]\n',
            r"unknown device 'scsi'; valid: nvme, virtio-blk",
            id="unknown-device",
        ),
        pytest.param(
            '[matrix]\npools = [1024]\nvcpus = ["two"]\n', r"matrix\.vcpus: 'two' must be an integer", id="wrong-type"
        ),
        pytest.param('[matrix]\npools = [1024]\nmemory = ["64MiB"]\n', r"below the 256 MiB", id="tiny-memory"),
        pytest.param(
            '[matrix]\npools = [1024]\nworkloads = ["x"]\n', r"workload 'x' is not defined", id="undefined-workload"
        ),
        pytest.param(
            '[matrix]\npools = [1024]\n[workloads.x]\nrw = "sideways"\n', r"rw = 'sideways' is not one of", id="bad-rw"
        ),
        pytest.param(
            "[matrix]\npools = [1024]\n[workloads.x]\niodepth = 0\n",
            r"iodepth = 0 must be an integer in \[1, 4096\]",
            id="zero-iodepth",
        ),
        pytest.param(
            '[matrix]\npools = [1024]\n[workloads.x]\nbs = "0k"\n', r"bs = '0k' must be a positive size", id="zero-bs"
        ),
        pytest.param(
            "[matrix]\npools = [1024]\n[workloads.x]\ncolour = 1\n",
            r"unknown key 'colour' in \[workloads\.x\]",
            id="unknown-workload-key",
        ),
        pytest.param(
            '[matrix]\npools = [1024]\n[workloads.x]\njob_file = "missing.fio"\n',
            r"job_file .*missing\.fio does not exist",
            id="missing-job-file",
        ),
        pytest.param('[matrix]\npools = [1024]\n[workloads."a;b"]\n', r"name must match", id="shell-metachar-name"),
        # a pool must leave the guest the 256 MiB its image needs: 1 GiB - 256 MiB = 768 MiB at most
        pytest.param(
            '[matrix]\npools = ["2GiB"]\n[workloads.w]\n',
            r"matrix\.pools: a pool of 2,048 MiB does not fit a guest of 1,024 MiB .* at most 768 MiB",
            id="pool-above-memory",
        ),
        pytest.param(
            '[matrix]\npools = ["769MiB"]\n[workloads.w]\n',
            r"a pool of 769 MiB does not fit",
            id="pool-one-mib-too-big",
        ),
        pytest.param(
            '[matrix]\npools = ["100TiB"]\n[workloads.w]\n', r"a pool of 104,857,600 MiB does not fit", id="pool-in-tib"
        ),
        pytest.param(
            "[matrix]\npools = [1000000000]\n[workloads.w]\n",
            r"a pool of 1,953,125 MiB does not fit",
            id="pool-in-slabs",
        ),
        pytest.param(
            '[matrix]\npools = ["64MiB"]\nmemory = ["256MiB"]\n[workloads.w]\n',
            r"does not fit a guest of 256 MiB",
            id="small-guest",
        ),
        pytest.param(
            '[matrix]\nkernels = ["static", "static"]\npools = [1024]\n[workloads.w]\n',
            r"matrix\.kernels: 'static' is listed twice",
            id="kernel-twice",
        ),
        pytest.param(
            '[matrix]\npools = ["2MiB", 1024]\n[workloads.w]\n',
            r"matrix\.pools: 1024 is listed twice",
            id="pool-twice-in-two-spellings",
        ),
        pytest.param(
            '[matrix]\npools = [1024]\n[workloads.x]\njob_file = "x.fio"\nbs = "64k"\niodepth = 8\n',
            r"\[workloads\.x\] sets job_file and bs, iodepth: the job file says what fio runs",
            id="job-file-with-bs",
        ),
    ],
)
def test_bad_matrix_input_names_file_key_and_valid_values(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        load_matrix(write(tmp_path, text))


def test_unknown_shipped_matrix_lists_the_shipped_ones() -> None:
    with pytest.raises(ConfigError, match=r"shipped matrices: .*default"):
        load_matrix("no-such-matrix")


RULES = """
[matrix]
kernels = ["static", "throttle"]
pools = ["2MiB"]
workloads = ["a", "b"]
throttle = ["default", "50/45"]
exclude = [{kernel = "static", workload = "b"}]
include = [{kernel = "static", pool = "2MiB", workload = "b", vcpus = 2}]

[workloads.a]
rw = "randread"

[workloads.b]
rw = "randwrite"
"""


def test_throttle_axis_include_and_exclude(tmp_path: Path) -> None:
    cells = load_matrix(write(tmp_path, RULES)).cells
    names = sorted((c.kernel, c.workload.name, dict(c.knobs).get("high_throttle", 0)) for c in cells)
    # threshold overrides only on the throttle kernel; static/b excluded, then included back once
    assert names == [
        ("static", "a", 0),
        ("static", "b", 0),
        ("throttle", "a", 0),
        ("throttle", "a", 512),
        ("throttle", "b", 0),
        ("throttle", "b", 512),
    ]
    knobs = {c.knobs for c in cells if c.knobs}
    assert knobs == {(("high_throttle", 512), ("low_throttle", 460))}
    assert len({c.cell_id for c in cells}) == len(cells)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        pytest.param('throttle = ["70/80"]', "LOW <= HIGH", id="low-above-high"),
        pytest.param('exclude = [{colour = "red"}]', "unknown axis 'colour'", id="unknown-axis"),
        pytest.param('exclude = [{kernel = "dynamic"}]', "not in matrix.kernels", id="value-not-in-axis"),
    ],
)
def test_bad_rules_are_refused(tmp_path: Path, line: str, message: str) -> None:
    text = f'[matrix]\nkernels = ["static", "throttle"]\npools = [1024]\n{line}\n[workloads.a]\nrw = "read"\n'
    with pytest.raises(ConfigError, match=message):
        load_matrix(write(tmp_path, text))


@pytest.mark.parametrize(
    ("job", "message"),
    [
        pytest.param(
            "rw=randread\n[job1]\nbs=4k\n",
            r"bad\.fio:1: fio job file syntax error: 'rw=randread' comes "
            r"before any \[job\] section",
            id="option-before-a-section",
        ),
        pytest.param(
            "[job1]\nfilename=${LAB_DEVICE}\nruntime=5\nthis is no option\n",
            r"fio refuses the job file: Bad option <this is no option>",
            id="no-equals",
        ),
        pytest.param(
            "[job1]\nfilename=/dev/sda\nruntime=5\n",
            r"\[job1\] filename=/dev/sda is not a disk the lab "
            r"gives the job; use filename=\$\{LAB_DEVICE\}",
            id="a-disk-of-its-own",
        ),
        pytest.param("[job1]\nrw=read\nruntime=5\n", r"\[job1\] names no filename", id="no-filename"),
        pytest.param("[job1]\nfilename=${LAB_DEVICE}\n", r"\[job1\] has no runtime", id="no-runtime"),
        pytest.param(
            "[job1]\nfilename=${LAB_DEVICE}\nruntime=5\nbogus_option=3\n",
            r"fio refuses the job file: .*Bad option <bogus_option=3>",
            id="unknown-fio-option",
        ),
        pytest.param("[global]\nruntime=5\n", r"defines no job", id="no-job"),
    ],
)
def test_a_bad_fio_job_file_is_refused_naming_the_file_and_what_is_wrong(
    tmp_path: Path, job: str, message: str
) -> None:
    if "refuses" in message and shutil.which("fio") is None:
        pytest.skip("fio's own parser needs fio on the host (make setup installs the Debian package fio)")
    (tmp_path / "bad.fio").write_text(job)
    text = '[matrix]\npools = [1024]\n[workloads.x]\njob_file = "bad.fio"\n'
    with pytest.raises(ConfigError, match=message):
        load_matrix(write(tmp_path, text))


def test_a_missing_job_file_is_named_by_the_path_it_was_looked_for_at(tmp_path: Path) -> None:
    (tmp_path / "matrices").mkdir()
    text = '[matrix]\npools = [1024]\n[workloads.x]\njob_file = "../jobs/gone.fio"\n'
    with pytest.raises(ConfigError, match=f"job_file {re.escape(str(tmp_path))}/jobs/gone.fio does not exist"):
        load_matrix(write(tmp_path / "matrices", text))


def test_valid_fio_job_file_is_accepted(tmp_path: Path) -> None:
    (tmp_path / "ok.fio").write_text(
        "[global]\nfilename=${LAB_DEVICE}\nrw=randread\ndirect=1\nruntime=5\ntime_based=1\n[job1]\nbs=4k\n"
    )
    text = '[matrix]\npools = [1024]\n[workloads.x]\njob_file = "ok.fio"\n'
    [cell] = load_matrix(write(tmp_path, text)).cells
    assert cell.workload.job_file == tmp_path / "ok.fio"


def test_by_default_only_the_first_repetition_runs_the_sampler(tmp_path: Path) -> None:
    matrix = load_matrix(write(tmp_path, GOOD))
    assert {(c.repetition, c.sample_hz) for c in matrix.cells} == {(0, 50.0), (1, 0.0)}
    assert all(c.observed == (c.repetition == 0) for c in matrix.cells)


@pytest.mark.parametrize(
    ("observe", "rates"), [("all", {(0, 20.0), (1, 20.0)}), ("none", {(0, 0.0), (1, 0.0)})], ids=["all", "none"]
)
def test_observe_all_or_none_at_the_given_rate(tmp_path: Path, observe: str, rates: set[tuple[int, float]]) -> None:
    text = GOOD.replace("repetitions = 2", f'repetitions = 2\nobserve = "{observe}"\nsample_hz = 20')
    assert {(c.repetition, c.sample_hz) for c in load_matrix(write(tmp_path, text)).cells} == rates


def test_observed_and_unobserved_cells_have_different_ids_but_share_a_boot(tmp_path: Path) -> None:
    observed = load_matrix(write(tmp_path, GOOD.replace("repetitions = 2", 'observe = "all"'), "a.toml"))
    unobserved = load_matrix(write(tmp_path, GOOD.replace("repetitions = 2", 'observe = "none"'), "b.toml"))
    assert not {c.cell_id for c in observed.cells} & {c.cell_id for c in unobserved.cells}
    assert [c.boot_key for c in observed.cells] == [c.boot_key for c in unobserved.cells]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('observe = "some"', "'some' must be one of 'first', 'all', 'none'"),
        ("sample_hz = 0", "0 must be a number of samples per second"),
    ],
    ids=["observe", "sample_hz"],
)
def test_bad_observe_settings_name_the_key(tmp_path: Path, line: str, message: str) -> None:
    path = write(tmp_path, GOOD.replace("repetitions = 2", f"repetitions = 2\n{line}"))
    with pytest.raises(ConfigError) as error:
        load_matrix(path)
    assert f"{path}:7: matrix.{line.split()[0]}: {message}" in str(error.value)


TIMEOUTS = """
[matrix]
kernels = ["throttle", "throttle-v2"]
pools = ["2MiB"]
workloads = ["a"]
throttle_timeout = ["default", "0ms", "10ms", "2s", "none"]

[workloads.a]
rw = "randread"
"""


def test_the_timeout_axis_applies_to_series_v2_kernels_only(tmp_path: Path) -> None:
    cells = load_matrix(write(tmp_path, TIMEOUTS)).cells
    timeouts = sorted((c.kernel, dict(c.knobs).get("throttle_timeout_ms", -1)) for c in cells)
    # v1 has no wait bound: only its "default" cell; U32_MAX is the kernel's "no bound"
    assert timeouts == [
        ("throttle", -1),
        ("throttle-v2", -1),
        ("throttle-v2", 0),
        ("throttle-v2", 10),
        ("throttle-v2", 2000),
        ("throttle-v2", 4294967295),
    ]
    assert len({c.cell_id for c in cells}) == len(cells)
    default = next(c for c in cells if c.kernel == "throttle-v2" and not c.knobs)
    assert (
        default.cell_id
        == next(
            c
            for c in load_matrix(
                write(tmp_path, TIMEOUTS.replace('"default", "0ms", "10ms", "2s", "none"', '"default"'), "n.toml")
            ).cells
            if c.kernel == "throttle-v2"
        ).cell_id
    )


@pytest.mark.parametrize(
    ("line", "message"),
    [
        pytest.param('throttle_timeout = ["10"]', 'a time like "0ms"', id="no-unit"),
        pytest.param('throttle_timeout = ["forever"]', '"none"', id="unknown-word"),
        pytest.param('throttle_timeout = ["5000000s"]', 'a time like "0ms"', id="beyond-u32-ms"),
    ],
)
def test_bad_timeouts_are_refused(tmp_path: Path, line: str, message: str) -> None:
    text = f'[matrix]\nkernels = ["throttle-v2"]\npools = [1024]\n{line}\n[workloads.a]\nrw = "read"\n'
    with pytest.raises(ConfigError, match=message):
        load_matrix(write(tmp_path, text))


def test_the_grow_limit_axis_applies_to_growing_series_v2_kernels_only(tmp_path: Path) -> None:
    text = (
        '[matrix]\nkernels = ["throttle-v2", "throttle-v2-dynamic", "dynamic"]\npools = ["2MiB"]\n'
        'grow_limit = ["default", "4MiB", 4096]\n[workloads.a]\nrw = "read"\n'
    )
    cells = load_matrix(write(tmp_path, text)).cells
    limits = sorted((c.kernel, dict(c.knobs).get("io_tlb_max_nslabs", -1)) for c in cells)
    # "default" writes nothing; 4 MiB is 2048 slots of 2 KiB; a fixed pool or v1's dynamic kernel gets no limit
    assert limits == [
        ("dynamic", -1),
        ("throttle-v2", -1),
        ("throttle-v2-dynamic", -1),
        ("throttle-v2-dynamic", 2048),
        ("throttle-v2-dynamic", 4096),
    ]
    assert all(c.solo for c in cells if c.kernel == "throttle-v2-dynamic")  # each grows from its own boot


def test_a_fitted_queue_is_its_own_cell_and_its_own_boot(tmp_path: Path) -> None:
    text = (
        '[matrix]\nkernels = ["static"]\npools = ["2MiB"]\nqueue_limits = ["default", "fit"]\n'
        '[workloads.a]\nrw = "read"\n[workloads.b]\nrw = "randread"\n'
    )
    matrix = load_matrix(write(tmp_path, text))
    fitted = [c for c in matrix.cells if c.queue_limits == "fit"]
    plain = [c for c in matrix.cells if c.queue_limits == "default"]
    assert len(fitted) == len(plain) == 2
    # sysfs limits stay set for the rest of a boot: fitted and default cells never share one
    assert {c.boot_key for c in fitted}.isdisjoint({c.boot_key for c in plain})
    assert len(matrix.boot_groups()) == 2
    # a default cell's ID is what it was before the axis existed
    without_axis = load_matrix(write(tmp_path, text.replace('queue_limits = ["default", "fit"]\n', ""), "n.toml"))
    assert {c.cell_id for c in plain} == {c.cell_id for c in without_axis.cells}
    with pytest.raises(ConfigError, match=r"queue_limits.*'tight' must be \"default\", \"fit\" \(75% of the pool\)"):
        load_matrix(write(tmp_path, text.replace('"fit"', '"tight"'), "bad.toml"))


def test_a_queue_fitted_to_another_share_is_its_own_boot_and_75_percent_is_plain_fit(tmp_path: Path) -> None:
    text = (
        '[matrix]\nkernels = ["static"]\npools = ["2MiB"]\nqueue_limits = ["fit", "fit:50%"]\n'
        '[workloads.a]\nrw = "read"\n'
    )
    matrix = load_matrix(write(tmp_path, text))
    assert sorted(c.queue_limits for c in matrix.cells) == ["fit", "fit:50%"]
    assert len(matrix.boot_groups()) == 2
    assert {c.queue_limits: queue_fit_share(c.queue_limits) for c in matrix.cells} == {"fit": 0.75, "fit:50%": 0.5}
    assert queue_fit_share("default") is None
    # "fit:75%" is the same cell as "fit", under the one name, and rules match it either way
    spelled = load_matrix(write(tmp_path, text.replace('"fit", ', '"fit:75%", '), "spelled.toml"))
    assert {c.cell_id for c in spelled.cells} == {c.cell_id for c in matrix.cells}
    rule = 'queue_limits = ["fit", "fit:50%"]\nexclude = [{queue_limits = "fit:75%"}]\n'
    excluded = load_matrix(write(tmp_path, text.replace('queue_limits = ["fit", "fit:50%"]\n', rule), "x.toml"))
    assert [c.queue_limits for c in excluded.cells] == ["fit:50%"]


@pytest.mark.parametrize("value", ["fit:0%", "fit:101%", "fit:50", "fit:12.5%", "fit: 50%"])
def test_a_queue_share_outside_1_to_100_percent_is_refused(tmp_path: Path, value: str) -> None:
    text = f'[matrix]\nkernels = ["static"]\npools = ["2MiB"]\nqueue_limits = ["{value}"]\n[workloads.a]\nrw = "read"\n'
    with pytest.raises(
        ConfigError,
        match=rf"matrix.queue_limits.*{re.escape(repr(value))} must be .*"
        r"\"fit:N%\" with N a whole number from 1 to 100",
    ):
        load_matrix(write(tmp_path, text))


def test_a_bad_grow_limit_names_the_key(tmp_path: Path) -> None:
    text = (
        '[matrix]\nkernels = ["throttle-v2-dynamic"]\npools = [1024]\ngrow_limit = ["lots"]\n'
        '[workloads.a]\nrw = "read"\n'
    )
    with pytest.raises(ConfigError, match=r"grow_limit.*'lots' is not a pool size"):
        load_matrix(write(tmp_path, text))


FAULTS = """
[matrix]
kernels = ["throttle-v2-debug"]
pools = ["2MiB"]
devices = ["nvme", "virtio-blk"]
workloads = ["plain", "unplug"]

[workloads.plain]
rw = "randread"

[workloads.unplug]
rw = "randread"
runtime = "10s"
fault = "unplug"
fault_after = "4s"
"""


def test_an_unplug_workload_boots_alone_behind_a_root_port(tmp_path: Path) -> None:
    matrix = load_matrix(write(tmp_path, FAULTS))
    unplug = [c for c in matrix.cells if c.workload.fault == "unplug"]
    assert {c.device for c in unplug} == {"nvme", "virtio-blk"} and all(c.hotplug for c in unplug)
    assert all(c.workload.fault_after_s == 4 for c in unplug)
    groups = matrix.boot_groups()
    assert len(groups) == 4 and all(len({c.hotplug for c in group}) == 1 for group in groups)


@pytest.mark.parametrize(
    ("workload", "message"),
    [
        pytest.param('fault = "reset"', "needs device nvme, not 'virtio-blk'", id="reset-on-virtio"),
        pytest.param('fault = "crash"', "fault = 'crash' is not one of reset, io-timeout, unplug", id="unknown"),
        pytest.param('fault = "unplug"\nfault_after = "10s"', r"0 < fault_after < 10", id="after-the-run"),
        pytest.param(
            'fault = "unplug"',
            r"workload 'a' unplugs the device, which kernel 'throttle-v2' cannot take \(no CONFIG_HOTPLUG_PCI_PCIE\); "
            r"kernels that can: stock, throttle-v2-debug",
            id="unplug-without-hotplug",
        ),
    ],
)
def test_bad_faults_are_refused(tmp_path: Path, workload: str, message: str) -> None:
    text = (
        f'[matrix]\nkernels = ["throttle-v2"]\npools = [1024]\ndevices = ["virtio-blk"]\n'
        f'[workloads.a]\nrw = "read"\nruntime = "10s"\n{workload}\n'
    )
    with pytest.raises(ConfigError, match=message):
        load_matrix(write(tmp_path, text))


def test_a_growing_pool_gives_each_cell_its_own_boot(tmp_path: Path) -> None:
    """A dynamic pool keeps what one workload grew it to: the next workload of the same boot would start
    from another pool (the series-v2 sweep of 2026-11-27 showed it: after the 0 ms cell grew the pool to
    19,456 slabs, the later cells of that boot ran on it)."""
    text = GOOD.replace('kernels = ["stock"]', 'kernels = ["static", "dynamic", "throttle-v2-dynamic"]')
    matrix = load_matrix(write(tmp_path, text))
    for group in matrix.boot_groups():
        if group[0].kernel != "static":
            assert len(group) == 1, [c.cell_id for c in group]
    static = [g for g in matrix.boot_groups() if g[0].kernel == "static"]
    assert len(static) == 2 * 2 and all(len(g) == 2 for g in static)  # pools x repetitions, both workloads


def test_excluding_a_device_a_fault_cannot_use_is_the_way_out(tmp_path: Path) -> None:
    text = FAULTS.replace('workloads = ["plain", "unplug"]', 'workloads = ["plain", "reset"]')
    text += '[workloads.reset]\nrw = "randread"\nruntime = "10s"\nfault = "reset"\n'
    with pytest.raises(ConfigError, match="needs device nvme, not 'virtio-blk'"):
        load_matrix(write(tmp_path, text))
    fixed = text.replace(
        'workloads = ["plain", "reset"]',
        'workloads = ["plain", "reset"]\nexclude = [{workload = "reset", device = "virtio-blk"}]',
    )
    matrix = load_matrix(write(tmp_path, fixed, "fixed.toml"))
    assert {(c.workload.name, c.device) for c in matrix.cells if c.workload.fault} == {("reset", "nvme")}


def test_an_ahci_disk_is_a_device_but_cannot_poll(tmp_path: Path) -> None:
    text = '[matrix]\nkernels = ["static"]\npools = [1024]\ndevices = ["ahci"]\n[workloads.a]\nrw = "read"\n'
    [cell] = load_matrix(write(tmp_path, text)).cells
    assert cell.device == "ahci" and cell.poll_queues == 0
    with pytest.raises(ConfigError, match=r"polls \(hipri\), which needs device nvme or virtio-blk, not 'ahci'"):
        load_matrix(write(tmp_path, text + 'hipri = true\nioengine = "io_uring"\n', "polled.toml"))


def test_the_conversion_cost_axis_applies_to_growing_pools_only(tmp_path: Path) -> None:
    text = (
        '[matrix]\nkernels = ["dynamic", "throttle"]\npools = [1024]\n'
        'conversion_cost = [0, "500ns", "5us", "1ms"]\n[workloads.a]\nrw = "read"\n'
    )
    matrix = load_matrix(write(tmp_path, text))
    costs = sorted((c.kernel, c.conversion_ns) for c in matrix.cells)
    # a fixed pool never converts pages: only its zero-cost cell stays
    assert costs == [("dynamic", 0), ("dynamic", 500), ("dynamic", 5000), ("dynamic", 1_000_000), ("throttle", 0)]
    assert len({c.boot_key for c in matrix.cells}) == 5  # the cost is set at boot
    plain = load_matrix(write(tmp_path, text.replace('conversion_cost = [0, "500ns", "5us", "1ms"]\n', ""), "n.toml"))
    assert {c.cell_id for c in matrix.cells if not c.conversion_ns} == {c.cell_id for c in plain.cells}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        pytest.param('"5"', 'must be 0 or a time per page like "500ns"', id="no-unit"),
        pytest.param('"fast"', 'must be 0 or a time per page like "500ns"', id="word"),
        pytest.param('"11ms"', "more than 10 ms per page", id="too-slow"),
    ],
)
def test_bad_conversion_costs_name_the_key(tmp_path: Path, value: str, message: str) -> None:
    text = f'[matrix]\nkernels = ["dynamic"]\npools = [1024]\nconversion_cost = [{value}]\n[workloads.a]\nrw = "read"\n'
    with pytest.raises(ConfigError, match=r"conversion_cost.*" + message):
        load_matrix(write(tmp_path, text))


def test_a_neighbour_job_needs_a_neighbour_disk_next_to_nvme(tmp_path: Path) -> None:
    shipped = Path(__file__).resolve().parents[2] / "lab" / "matrices" / "neighbour.toml"
    matrix = load_matrix(shipped)
    assert {c.neighbour for c in matrix.cells} == {"slow"}
    assert len(matrix.boot_groups()) == len(matrix.cells) // 2  # alone and next to the neighbour, one boot
    text = (
        shipped.read_text()
        .replace('neighbour = ["slow"]\n', "")
        .replace("../jobs/", str(shipped.parent.parent / "jobs") + "/")
    )
    with pytest.raises(ConfigError, match=r"loads \$\{LAB_NEIGHBOUR\}.*needs neighbour = \"slow\""):
        load_matrix(write(tmp_path, text))
    with pytest.raises(ConfigError, match=r"neighbour.*next to an NVMe disk under test, not 'virtio-blk'"):
        load_matrix(
            write(
                tmp_path,
                text.replace('devices = ["nvme"]', 'devices = ["virtio-blk"]\nneighbour = ["slow"]'),
                "virtio.toml",
            )
        )
    with pytest.raises(ConfigError, match=r"neighbour.*'fast' must be one of 'none', 'slow'"):
        load_matrix(
            write(tmp_path, text.replace('devices = ["nvme"]', 'devices = ["nvme"]\nneighbour = ["fast"]'), "fast.toml")
        )


def test_the_thread_suite_is_the_union_of_its_matrices() -> None:
    names = [
        "default",
        "series-v2",
        "neighbour",
        "failing-driver",
        "queue-fit",
        "blocking",
        "pool-search",
        "conversion",
    ]
    suite = load_matrix("thread")
    members = [load_matrix(name) for name in names]
    every = {c.cell_id for m in members for c in m.cells}
    assert {c.cell_id for c in suite.cells} == every and len(suite.cells) == len(every)
    assert sum(len(m.cells) for m in members) > len(every)  # shared cells (e.g. default's in series-v2) run once
    kernels = {c.kernel for c in suite.cells}
    assert {"static", "dynamic", "throttle", "throttle-v2"} <= kernels
    assert {"ahci", "lsi", "nvme"} <= {c.device for c in suite.cells}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param('[suite]\nmatrices = ["default"]\ncolour = 1\n', "unknown key 'colour' in a suite", id="key"),
        pytest.param("[suite]\nmatrices = []\n", "suite.matrices: a non-empty list", id="empty"),
        pytest.param('[suite]\nmatrices = ["nope"]\n', "member 'nope': no matrix named 'nope'", id="unknown-member"),
        pytest.param('[suite]\nmatrices = ["thread"]\n', "member 'thread' is a suite itself", id="nested"),
        pytest.param('[suite]\nmatrices = ["default"]\n[matrix]\n', "unknown key 'matrix' in a suite", id="both"),
    ],
)
def test_bad_suites_name_the_problem(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_matrix(write(tmp_path, text, "s.toml"))


def test_a_default_pool_leaves_the_size_to_the_guest_kernel_and_refuses_what_needs_one(tmp_path: Path) -> None:
    text = '[matrix]\nkernels = ["static", "throttle"]\npools = ["default", "2MiB"]\n[workloads.a]\nrw = "read"\n'
    cells = load_matrix(write(tmp_path, text)).cells
    assert sorted(c.pool_slabs for c in cells) == [0, 0, 1024, 1024]
    assert sorted(c.cell_id.rsplit("-", 1)[0] for c in cells) == [
        "static-1024-nvme-a-r0",
        "static-default-nvme-a-r0",
        "throttle-1024-nvme-a-r0",
        "throttle-default-nvme-a-r0",
    ]
    rule = 'pools = ["default", "2MiB"]\nexclude = [{pool = "default"}]\n'
    excluded = load_matrix(write(tmp_path, text.replace('pools = ["default", "2MiB"]\n', rule), "x.toml"))
    assert [c.pool_slabs for c in excluded.cells] == [1024, 1024]
    # thresholds in percent of a size the lab does not know, and a queue fitted to it, are refused
    throttled = text.replace('pools = ["default", "2MiB"]\n', 'pools = ["default", "2MiB"]\nthrottle = ["50/40"]\n')
    with pytest.raises(ConfigError, match=r'matrix.throttle.*pool = "default" leaves the size to the guest kernel'):
        load_matrix(write(tmp_path, throttled, "t.toml"))
    fitted = text.replace('pools = ["default", "2MiB"]\n', 'pools = ["default", "2MiB"]\nqueue_limits = ["fit"]\n')
    with pytest.raises(ConfigError, match=r"matrix.queue_limits.*a queue fitted to the pool needs a pool size"):
        load_matrix(write(tmp_path, fitted, "q.toml"))
    with pytest.raises(ConfigError, match=r"'defaults' is not a pool size; .* or \"default\""):
        load_matrix(write(tmp_path, text.replace('"default"', '"defaults"'), "d.toml"))


def test_a_pool_that_leaves_the_guest_its_image_memory_is_accepted(tmp_path: Path) -> None:
    matrix = load_matrix(write(tmp_path, '[matrix]\npools = ["768MiB"]\nmemory = ["1GiB"]\n[workloads.w]\n'))
    assert {c.pool_slabs for c in matrix.cells} == {768 * 512}


def test_a_job_file_keeps_its_runtime_as_the_labs_time_limit(tmp_path: Path) -> None:
    (tmp_path / "x.fio").write_text("[x]\nfilename=${LAB_DEVICE}\nrw=randread\nruntime=10\n")
    matrix = load_matrix(
        write(tmp_path, '[matrix]\npools = [1024]\n[workloads.x]\njob_file = "x.fio"\nruntime = "10s"\n')
    )
    assert matrix.cells[0].workload.runtime_s == 10


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('kernal = ["static"]', "unknown key 'kernal' in [matrix]; did you mean 'kernels'? valid keys: description, "),
        ("repetition = 2", "unknown key 'repetition' in [matrix]; did you mean 'repetitions'? valid keys: "),
        ('flavour = "x"', "unknown key 'flavour' in [matrix]; valid keys: description, kernels, pools, "),
    ],
    ids=["typo", "singular", "nothing-close"],
)
def test_an_unknown_key_is_named_with_the_closest_valid_one(tmp_path: Path, line: str, expected: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_matrix(write(tmp_path, f"[matrix]\npools = [1024]\n{line}\n[workloads.w]\n"))
    message = str(error.value)
    assert f"m.toml:3: {expected}" in message
    assert len(message) < 400 + len(str(tmp_path))  # names, not a paragraph per key


AREAS_AND_CMDLINE = """
[matrix]
kernels = ["static"]
pools = ["2MiB"]
areas = ["1", "default"]
cmdline = [[], ["nvme.io_queue_depth=64"]]

[workloads.w]
"""


def test_areas_and_extra_kernel_parameters_are_axes_of_their_own(tmp_path: Path) -> None:
    matrix = load_matrix(write(tmp_path, AREAS_AND_CMDLINE))
    assert sorted((c.areas, c.cmdline) for c in matrix.cells) == [
        (0, ()),
        (0, ("nvme.io_queue_depth=64",)),
        (1, ()),
        (1, ("nvme.io_queue_depth=64",)),
    ]
    assert len({c.cell_id for c in matrix.cells}) == 4 and len(matrix.boot_groups()) == 4  # a boot each
    default = next(c for c in matrix.cells if not c.areas and not c.cmdline)
    plain = Cell("static", 1024, "nvme", default.workload, 2, 1024, sample_hz=default.sample_hz)
    assert default.cell_id == plain.cell_id  # the defaults keep the IDs cells had before the axes


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('cmdline = [["swiotlb=512,force"]]', r"'swiotlb=512,force' is set by pools, areas \(and swiotlb_force\)"),
        ('cmdline = [["console=ttyS1"]]', r"'console=ttyS1' is set by the lab \(the serial console it reads\)"),
        ('cmdline = [["nvme.poll_queues=4"]]', r"'nvme.poll_queues=4' is set by workloads \(hipri = true\)"),
        ('cmdline = [["a=1 b=2"]]', r"'a=1 b=2' is not one kernel parameter"),
        ('cmdline = ["mitigations=off"]', r"'mitigations=off' must be a list of kernel parameters"),
        ('cmdline = [["iommu.strict=1", "iommu.strict=0"]]', r"sets a parameter twice"),
        ('areas = ["0"]', r"matrix\.areas: '0' must be \"default\" or a number of areas from 1 to 1024"),
        ("areas = [2048]", r"2048 must be \"default\" or a number of areas"),
        ('areas = ["many"]', r"'many' must be"),
        ('areas = ["2", 2]', r"matrix\.areas: 2 is listed twice"),
    ],
    ids=["swiotlb", "console", "poll-queues", "two-words", "not-a-list", "twice", "zero", "too-many", "word", "dup"],
)
def test_bad_areas_and_kernel_parameters_name_the_key_that_owns_them(tmp_path: Path, line: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_matrix(write(tmp_path, f"[matrix]\npools = [1024]\n{line}\n[workloads.w]\n"))


def test_exclude_names_an_area_count_and_a_parameter_list(tmp_path: Path) -> None:
    text = AREAS_AND_CMDLINE.replace("[workloads.w]", 'exclude = [{areas = "1", cmdline = []}]\n[workloads.w]')
    matrix = load_matrix(write(tmp_path, text))
    assert (1, ()) not in {(c.areas, c.cmdline) for c in matrix.cells} and len(matrix.cells) == 3


def test_alternate_order_reverses_boots_and_cells_in_odd_repetitions(tmp_path: Path) -> None:
    text = GOOD.replace("repetitions = 2", 'repetitions = 3\norder = "alternate"')
    groups = load_matrix(write(tmp_path, text)).boot_groups()
    order = [(g[0].repetition, g[0].pool_slabs, [c.workload.name for c in g]) for g in groups]
    assert order == [
        (0, 1024, ["a", "b"]),
        (0, 4096, ["a", "b"]),
        (1, 4096, ["b", "a"]),  # odd: the last boot first, and each boot's cells backwards
        (1, 1024, ["b", "a"]),
        (2, 1024, ["a", "b"]),
        (2, 4096, ["a", "b"]),
    ]
    # the same cells as the fixed order, only run in another order
    fixed = load_matrix(write(tmp_path, text.replace('"alternate"', '"fixed"'), "fixed.toml")).cells
    assert sorted(c.cell_id for c in fixed) == sorted(c.cell_id for g in groups for c in g)


def test_an_unknown_order_names_the_valid_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"m\.toml:\d+: matrix\.order: 'random' must be one of 'fixed', 'alternate'"):
        load_matrix(write(tmp_path, GOOD.replace("repetitions = 2", 'order = "random"')))


def test_every_knob_a_matrix_can_set_is_one_the_guest_restores_between_cells(tmp_path: Path) -> None:
    from lab.probes import KNOBS

    text = """
[matrix]
kernels = ["throttle", "throttle-v2-dynamic"]
pools = ["2MiB"]
workloads = ["a"]
throttle = ["default", "50/45"]
throttle_timeout = ["default", "10ms"]
grow_limit = ["default", "4MiB"]

[workloads.a]
rw = "randread"
"""
    set_by_matrices = {name for c in load_matrix(write(tmp_path, text)).cells for name, _ in c.knobs}
    assert set_by_matrices == {"high_throttle", "low_throttle", "throttle_timeout_ms", "io_tlb_max_nslabs"}
    assert set_by_matrices <= set(KNOBS)
