"""Parsers, run on artifacts captured from a real guest (see tests/data/README.md)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from lab.errors import ParseError
from lab.parse import (
    busy_cpu_seconds,
    merged_percentiles,
    parse_debugfs,
    parse_dmesg,
    parse_fio,
    parse_hctx_flags,
    parse_hist,
    parse_proc_stat,
    parse_queue_limits,
    parse_samples,
)

DATA = Path(__file__).resolve().parent.parent / "data" / "stock-1024-heavy"


def read(name: str) -> str:
    return (DATA / name).read_text()


def test_debugfs_after_heavy_fio_shows_the_pool_nearly_exhausted() -> None:
    values = parse_debugfs(read("debugfs_after.txt"))
    assert values == {"io_tlb_used_hiwater": 1023, "io_tlb_used": 240, "io_tlb_nslabs": 1024}


def test_debugfs_before_workload_has_hiwater_reset_to_zero() -> None:
    assert parse_debugfs(read("debugfs_before.txt"))["io_tlb_used_hiwater"] == 0


def test_debugfs_marks_negative_counters_invalid() -> None:
    text = "/sys/kernel/debug/swiotlb/io_tlb_used:18446744073709551615\n"
    assert parse_debugfs(text) == {"io_tlb_used": None}


def test_debugfs_names_restricted_pool_subdirectories() -> None:
    text = "/sys/kernel/debug/swiotlb/restricted@0/io_tlb_nslabs:512\n"
    assert parse_debugfs(text) == {"restricted@0/io_tlb_nslabs": 512}


@pytest.mark.parametrize(
    "text",
    [pytest.param("garbage\n", id="no-colon"), pytest.param("/sys/kernel/debug/swiotlb/io_tlb_used:abc\n", id="nan")],
)
def test_debugfs_rejects_garbage_with_a_parse_error(text: str) -> None:
    with pytest.raises(ParseError, match="swiotlb debugfs"):
        parse_debugfs(text, source="x.txt")


def test_samples_from_the_50hz_sampler() -> None:
    samples = parse_samples(read("samples.csv"))
    frame = samples.frame
    assert samples.complete and samples.hz == 50.0 and samples.late == 9
    assert list(frame.columns) == ["t_s", "io_tlb_nslabs", "io_tlb_used", "io_tlb_used_hiwater"]
    assert len(frame) == 368
    assert (frame["io_tlb_nslabs"] == 1024).all()
    assert frame["io_tlb_used_hiwater"].iloc[-1] == 1023
    assert frame["io_tlb_used"].max() <= 1024
    assert frame["t_s"].is_monotonic_increasing
    # 368 samples at 50 Hz: about 7.4 s of sampling
    assert 6.0 < frame["t_s"].iloc[-1] < 9.0


def test_samples_without_end_line_are_kept_but_marked_incomplete() -> None:
    lines = read("samples.csv").splitlines()
    truncated = "\n".join(lines[:100]) + "\n8123,10"  # cut mid-row, no end marker
    samples = parse_samples(truncated)
    assert not samples.complete
    assert len(samples.frame) == 98  # 98 whole rows kept; the row cut mid-write is dropped


def test_samples_with_garbage_raise_parse_error() -> None:
    lines = read("samples.csv").splitlines()
    lines[5] = "\x00\x01garbage"
    with pytest.raises(ParseError, match="line 6"):
        parse_samples("\n".join(lines))


def test_hist_counts_failed_map_page_calls_of_the_nvme_device() -> None:
    hist = parse_hist(read("hist_map_page_failures.txt"))
    assert hist.hits == 7388 and hist.dropped == 0
    assert hist.entries == ({"device": "0000:00:02.0", "hitcount": 7388, "size": hist.entries[0]["size"]},)
    assert hist.total() == 7388
    # the failed mappings were NVMe transfers of up to 252 KiB (fio's 256 KiB, split by the driver)
    assert 128 * 1024 < hist.total("size") / hist.hits <= 258048


def test_hist_without_entries_is_zero() -> None:
    hist = parse_hist(read("hist_map_sg_errors.txt"))
    assert hist.hits == 0 and hist.entries == ()


def test_hist_of_bounces_per_device() -> None:
    hist = parse_hist(read("hist_bounces.txt"))
    devices = {e["dev_name"] for e in hist.entries}
    assert "0000:00:02.0" in devices
    assert hist.total() == hist.hits


def test_hist_that_is_truncated_raises() -> None:
    with pytest.raises(ParseError, match="Totals"):
        parse_hist(read("hist_bounces.txt").split("Totals")[0])


def test_hctx_flags_of_stock_nvme_are_not_blocking() -> None:
    flags = parse_hctx_flags(read("hctx_flags.txt"))
    assert flags == {"hctx0": frozenset({"SHOULD_MERGE"}), "hctx1": frozenset({"SHOULD_MERGE"})}


def test_hctx_flags_parse_blocking() -> None:
    text = "/sys/kernel/debug/block/nvme0n1/hctx0/flags:alloc_policy=FIFO SHOULD_MERGE|BLOCKING\n"
    assert parse_hctx_flags(text) == {"hctx0": frozenset({"SHOULD_MERGE", "BLOCKING"})}


def test_dmesg_counts_swiotlb_full_but_no_io_errors() -> None:
    summary = parse_dmesg(read("dmesg.txt"))
    assert summary.swiotlb_full > 0
    assert summary.io_errors == 0
    assert all("swiotlb" in line or "nvme" in line or "DMA" in line for line in summary.interesting)


def test_dmesg_of_boot_reports_the_software_io_tlb() -> None:
    summary = parse_dmesg(read("dmesg_before.txt"))
    assert any("software IO TLB" in line for line in summary.interesting)


def test_dmesg_counts_block_io_errors() -> None:
    text = "[ 1.0] I/O error, dev nvme0n1, sector 0 op 0x0:(READ)\n[ 2.0] nvme nvme0: I/O 12 QID 1 timeout, aborting\n"
    assert parse_dmesg(text).io_errors == 2


def test_fio_parses_every_job_not_just_the_first() -> None:
    result = parse_fio(read("fio.json"))
    assert list(result.jobs["job"]) == [0, 1, 2, 3]
    assert set(result.jobs["direction"]) == {"read"}
    assert result.iops == pytest.approx(result.jobs["iops"].sum())
    assert result.iops > 0 and result.errors == 0 and result.short_ios == 0 and result.drop_ios == 0
    assert result.version == "fio-3.33"
    assert 4.0 < result.runtime_s < 8.0


def test_fio_says_what_its_jobs_ran_with() -> None:
    # The lab's own command line (stock-1024-heavy): the options it passed.
    lab_argv = {"rw": "randread", "bs": "256k", "ioengine": "libaio", "iodepth": 128, "numjobs": 4}
    assert parse_fio(read("fio.json")).options == lab_argv
    # A job file (lab/jobs/cheetah.fio, run by a real guest: tests/data/README.md): rw, bs and ioengine from
    # its [global] section, iodepth 32 and numjobs 2 from its job, none of them the matrix's defaults.
    cheetah = parse_fio((DATA.parent / "jobfile-cheetah" / "fio.json").read_text())
    assert cheetah.options == {"rw": "randread", "bs": "64k", "ioengine": "libaio", "iodepth": 32, "numjobs": 2}
    assert len(cheetah.jobs) == 2 and cheetah.bw_bytes == pytest.approx(cheetah.iops * 64 * 1024, rel=0.01)


def test_fio_merged_percentiles_lie_within_the_per_job_range() -> None:
    result = parse_fio(read("fio.json"))
    for p in (50.0, 99.0, 99.9):
        per_job = result.jobs[f"clat_p{p:g}_us"]
        assert per_job.min() * 0.9 <= result.clat_us[p] <= per_job.max() * 1.1
    assert result.clat_us[50.0] <= result.clat_us[99.0] <= result.clat_us[99.9]


def test_fio_notes_before_json_are_skipped() -> None:
    text = "note: both iodepth >= 1 and synchronous I/O engine are selected\n" + read("fio.json")
    assert parse_fio(text).iops > 0


@pytest.mark.parametrize(
    "mangle",
    [
        pytest.param(lambda t: t[: len(t) // 2], id="truncated"),
        pytest.param(lambda t: "", id="empty"),
        pytest.param(lambda t: '{"jobs": []}', id="no-jobs"),
    ],
)
def test_fio_corrupt_json_raises_parse_error(mangle) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ParseError, match="fio JSON"):
        parse_fio(mangle(read("fio.json")), source="cell/fio.json")


def test_merged_percentiles_of_a_known_histogram() -> None:
    bins = {100: 50, 200: 49, 1000: 1}
    assert merged_percentiles(bins) == {50.0: 100.0, 99.0: 200.0, 99.9: 1000.0}
    assert all(math.isnan(v) for v in merged_percentiles({}).values())


SPLATS = Path(__file__).resolve().parent.parent / "data" / "splats"


@pytest.mark.parametrize(
    ("fixture", "kind", "first_line", "count"),
    [
        (
            "atomic-map.dmesg",
            "sleep in atomic",
            "BUG: sleeping function called from invalid context at ../src/kernel/dma/mapping.c:164",
            1,
        ),
        ("hung-task.dmesg", "hung task", "INFO: task dd:71 blocked for more than 10 seconds.", 2),
        (
            "dma-api-segment.dmesg",
            "dma-api",
            "DMA-API: virtio-pci 0000:00:02.0: mapping sg segment longer than "
            "device claims to support [len=131072] [max=65536]",
            1,
        ),
    ],
)
def test_kernel_checker_reports_from_the_debug_kernel(fixture: str, kind: str, first_line: str, count: int) -> None:
    from lab.parse import kernel_splats

    splats = kernel_splats((SPLATS / fixture).read_text())
    assert [s.kind for s in splats] == [kind] * count
    assert splats[0].text.splitlines()[0] == first_line


def test_a_clean_debug_kernel_log_has_no_report() -> None:
    from lab.parse import kernel_splats

    clean = (Path(__file__).resolve().parent.parent / "data" / "stock-1024-heavy" / "console.log").read_text()
    assert kernel_splats(clean) == []
    # the lockdep banner every debug boot prints is not a report
    assert kernel_splats("Lock dependency validator: Copyright (c) 2006 Red Hat, Inc., Ingo Molnar") == []


PROCSTAT = Path(__file__).resolve().parent.parent / "data" / "procstat"


def test_guest_cpu_time_over_fio_comes_from_two_real_proc_stat_lines() -> None:
    before = parse_proc_stat((PROCSTAT / "before.txt").read_text())
    after = parse_proc_stat((PROCSTAT / "after.txt").read_text())
    assert before["user"] == 209 and before["system"] == 288 and before["idle"] == 1824
    # user +86 and system +923 ticks of USER_HZ = 100; idle and iowait are not busy time
    assert busy_cpu_seconds(before, after) == pytest.approx(10.09)


@pytest.mark.parametrize("text", ["", "intr 1 2 3", "cpu  1 2 x 4 5 6 7 8", "cpu 1 2 3"])
def test_a_line_that_is_not_procs_cpu_line_is_refused(text: str) -> None:
    with pytest.raises(ParseError, match="guest CPU time"):
        parse_proc_stat(text, source="stat_before.txt")


def test_queue_limits_the_lab_set_are_read_back() -> None:
    assert parse_queue_limits("hw_queues=2 nr_requests=6 max_sectors_kb=128\n") == {
        "hw_queues": 2,
        "nr_requests": 6,
        "max_sectors_kb": 128,
    }
    assert parse_queue_limits("") == {}
    with pytest.raises(ParseError, match="KEY=NUMBER"):
        parse_queue_limits("nr_requests=lots")


def test_the_platform_line_parser_reads_cpus_encryption_and_areas() -> None:
    from lab.probes import Platform, parse_platform

    assert parse_platform("2\nencryption=AMD SEV SEV-ES SEV-SNP\nareas=4\n") == Platform(2, "AMD SEV SEV-ES SEV-SNP", 4)
    assert parse_platform("1\n") == Platform(1, "none", None)  # an older kernel logs no area count


@pytest.mark.parametrize(
    ("logged", "nslabs", "expected"),
    [(4, 1024, 4), (16, 1024, 8), (8, 1024, 8), (1, 512, 1), (2, None, None), (None, 1024, None)],
)
def test_the_areas_in_use_are_limited_to_one_per_128_slots(
    logged: int | None, nslabs: int | None, expected: int | None
) -> None:
    from lab.probes import areas_in_use

    assert areas_in_use(logged, nslabs) == expected
