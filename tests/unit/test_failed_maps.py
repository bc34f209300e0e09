"""Failed DMA maps in a cell's row: from the lab kernels' own counters, or (elsewhere) from the hist
trigger as a lower bound; and what a driver that fails instead of requeueing leaves in dmesg.  On artifacts
of real cells (tests/data/failing-drivers/README.md, tests/data/README.md)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from lab.parse import parse_dmesg
from lab.runner import build_row

DATA = Path(__file__).resolve().parent.parent / "data"


def row_of(cell: Path, triggers: str = "failures") -> dict[str, Any]:
    base = {
        "kernel": "static",
        "pool_slabs_requested": 1024,
        "workload": "heavy",
        "repetition": 0,
        "triggers_armed": triggers,
    }
    row, _, _ = build_row(base, cell, 0)
    return row


def test_a_lab_kernel_counts_failed_pages_and_scatterlists_itself() -> None:
    row = row_of(DATA / "failing-drivers" / "nvme")
    # dma_failures_after.txt minus _before.txt of the real cell: page 8047, sg 5618
    assert (row["map_page_failures"], row["map_sg_errors"], row["map_failures"]) == (8047, 5618, 13665)
    assert row["map_failures_counted_by"] == "kernel counter"
    assert row["map_failure_bytes"] == 1059688448
    # the counters are exact whatever the cell armed: even with every trigger off
    assert row_of(DATA / "failing-drivers" / "nvme", triggers="none")["map_failures"] == 13665


def test_without_the_counter_the_trigger_gives_a_lower_bound_and_scatterlists_stay_unknown() -> None:
    row = row_of(DATA / "stock-1024-heavy")  # Debian's kernel: no dma_map_failures in debugfs
    assert row["map_failures"] == row["map_page_failures"] == 7388
    assert row["map_sg_errors"] is None  # dma_map_sg_err never fires for a full pool: unknown, not 0
    assert row["map_failures_counted_by"] == "hist trigger: single mappings only (a lower bound)"
    unarmed = row_of(DATA / "stock-1024-heavy", triggers="none")
    assert unarmed["map_failures"] is None and unarmed["map_page_failures"] is None


def test_on_linux_7_2_the_trigger_counts_through_dma_map_phys() -> None:
    # 7.x has no dma_map_page event (dma_map_phys replaced it): the 6.x trigger cannot be armed there, and
    # its empty hist file must not read as "0 failed maps" (the first 7.2 cell's row said 0 while its dmesg
    # had 20 "swiotlb buffer is full" lines)
    cell = DATA / "linux-7.2-static-heavy"
    assert not (cell / "hist_map_page_failures.txt").read_text().strip()
    row = row_of(cell)
    assert row["map_failures"] == row["map_page_failures"] == 8854
    assert row["map_failures_counted_by"] == "hist trigger: single mappings only (a lower bound)"
    assert row_of(cell, triggers="none")["map_failures"] is None


def test_a_kernel_with_neither_map_event_counts_nothing(tmp_path: Path) -> None:
    cell = tmp_path / "cell"
    shutil.copytree(DATA / "linux-7.2-static-heavy", cell)
    (cell / "hist_map_phys_failures.txt").write_text("")  # as collect() leaves it when the event is missing
    assert row_of(cell)["map_failures"] is None  # unknown, not 0


@pytest.mark.parametrize(
    ("driver", "failed", "fio_errors", "io_errors", "ata_rounds"),
    [
        # libata: every failed scatterlist is an error-handler round that drains the port and retries
        pytest.param("ahci", 119, 0, 0, 119, id="ahci-retries-after-draining"),
        # sym53c8xx: DID_ERROR, the midlayer's retries fail too: I/O errors reach the block layer and fio
        pytest.param("lsi", 537, 4, 10, 0, id="lsi-fails"),
        pytest.param("nvme", 13665, 0, 0, 0, id="nvme-requeues"),
    ],
)
def test_what_each_driver_does_with_a_failed_map(
    driver: str, failed: int, fio_errors: int, io_errors: int, ata_rounds: int
) -> None:
    row = row_of(DATA / "failing-drivers" / driver)
    assert (row["map_failures"], row["fio_errors"], row["dmesg_io_errors"]) == (failed, fio_errors, io_errors)
    assert row["dmesg_ata_exceptions"] == ata_rounds


def test_ata_exception_lines_are_counted_once_each() -> None:
    text = (DATA / "failing-drivers" / "ahci" / "dmesg.txt").read_text()
    lines = [line for line in text.splitlines() if "exception Emask" in line]
    assert parse_dmesg(text).ata_exceptions == len(lines) > 0
    assert parse_dmesg("\n".join(lines[:1])).ata_exceptions == 1
    assert parse_dmesg("ata1: SATA link up 1.5 Gbps").ata_exceptions == 0
