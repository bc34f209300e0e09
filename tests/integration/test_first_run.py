"""A real guest with Debian's stock 6.12 kernel, swiotlb=force, fio over SSH, real numbers."""

from __future__ import annotations

import pytest

from lab.matrix import Cell
from lab.runner import LabContext, boot_spec, run_group
from lab.store import RunStore, load_cells, load_samples
from lab.workload import Workload
from tests.conftest import pid_alive

pytestmark = pytest.mark.integration


class Recorder:
    def __init__(self) -> None:
        self.phases: list[str] = []

    def phase(self, cell: Cell | None, text: str) -> None:
        self.phases.append(text)

    def cell_done(self, cell: Cell, row: dict[str, object], estimate_s: float) -> None:
        pass


def test_short_fio_on_a_forced_bounce_guest_yields_real_swiotlb_numbers(lab_ctx: LabContext, tmp_path) -> None:  # type: ignore[no-untyped-def]
    workload = Workload("short", rw="randread", bs="64k", iodepth=16, numjobs=2, runtime_s=3, size="128M")
    cells = [Cell("stock", 2048, "nvme", workload, vcpus=2, memory_mib=1024, sample_hz=50.0)]  # observed
    store = RunStore.create(tmp_path, {"test": "first-run"})
    already = len(lab_ctx.hypervisor.launched)  # type: ignore[attr-defined]
    reporter = Recorder()
    [row] = run_group(cells, store, lab_ctx, reporter)

    assert row["status"] == "ok", row.get("failure_detail")
    assert row["hiwater"] > 0, "bounce buffering must have happened"
    assert row["nslabs"] == 2048  # the actual pool, read from debugfs, not the requested size
    assert row["fio_iops"] > 0 and row["fio_errors"] == 0
    assert row["bounces"] > 0 and row["bounce_bytes"] > 0
    assert row["accel"] in ("kvm", "tcg")
    assert "swiotlb=2048,force" in row["kernel_cmdline"]
    assert row["sampler_complete"] and row["sampler_samples"] > 50
    assert "fio short (3 s)" in reporter.phases

    [machine] = lab_ctx.hypervisor.launched[already:]  # type: ignore[attr-defined]
    assert machine.pid is not None and not pid_alive(machine.pid), "QEMU must be gone after the boot"

    store.consolidate()
    cells_table = load_cells(store.root)
    assert list(cells_table["cell_id"]) == [cells[0].cell_id]
    samples = load_samples(store.root)
    assert samples["io_tlb_used"].max() > 0
    for artifact in (
        "fio.json",
        "samples.csv",
        "dmesg.txt",
        "console.log",
        "debugfs_after.txt",
        "hist_map_page_failures.txt",
        "cell.json",
    ):
        assert (store.root / "cells" / cells[0].cell_id / artifact).is_file(), artifact


def test_boot_spec_command_line_forces_bounce_buffering(lab_ctx: LabContext) -> None:
    cell = Cell("stock", 1024, "nvme", Workload("w"), vcpus=2, memory_mib=1024)
    spec = boot_spec(lab_ctx, cell)
    assert "swiotlb=1024,force" in spec.cmdline().split()
