"""Series v2 on real guests (issue: bounded waits, no hangs), on its debug kernel: lockdep, atomic-sleep
checking, a 10 s hung-task detector and DMA-API debugging watch every cell, and any report of theirs
fails the cell (lab.parse.kernel_splats).

Each fault is injected while the heavy load keeps the 2 MiB pool throttled, so mappings are asleep on
the throttle when the driver's recovery starts: a controller reset through sysfs, command timeouts
against a backend stalled by a QEMU throttle (2 s block-layer timeout), and a hot-unplug through QMP
device_del.  Polled I/O on virtio-blk (claim C5 on the other driver) must complete too."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from lab.image import GuestImage
from lab.kernel import KernelBuild
from lab.keys import KeyPair
from lab.matrix import Cell
from lab.parse import kernel_splats, parse_hctx_flags
from lab.runner import LabContext, boot_spec, run_group
from lab.store import RunStore
from lab.util import cache_dir
from lab.vm import Disk, LocalHypervisor
from lab.workload import Workload
from tests.integration.test_kernel import Quiet

pytestmark = [pytest.mark.integration, pytest.mark.kernels("throttle-v2-debug")]

POOL = 1024  # 2 MiB: the heavy load keeps it at the throttle's threshold
KERNEL = "throttle-v2-debug"


def heavy(name: str, **fault: Any) -> Workload:
    return Workload(name, rw="randread", bs="256k", iodepth=128, numjobs=4, runtime_s=10, size="512M", **fault)


POLLED = Workload(
    "polled", rw="randread", bs="128k", iodepth=32, numjobs=2, ioengine="io_uring", hipri=True, runtime_s=8, size="512M"
)


@pytest.fixture(scope="module")
def ctx(
    built_kernels: Callable[..., dict[str, KernelBuild]],
    guest_image: GuestImage,
    lab_key: KeyPair,
    hypervisor: LocalHypervisor,
) -> LabContext:
    return LabContext(
        hypervisor, guest_image, lab_key, built_kernels(KERNEL), cache_dir(), provenance={"lab_revision": "test"}
    )


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> RunStore:
    return RunStore.create(tmp_path_factory.mktemp("series-v2"), {"test": "series-v2"})


def one(ctx: LabContext, store: RunStore, cell: Cell) -> dict[str, Any]:
    [row] = run_group([cell], store, ctx, Quiet())
    detail = f"{row['cell_id']}: {row.get('failure_reason')}: {str(row.get('failure_detail'))[:3000]}"
    assert row["status"] == "ok", detail
    assert row["kernel_splats"] == 0 and row["hung_tasks"] == 0, detail
    return row


def test_the_debug_kernel_throttles_without_a_checker_report(ctx: LabContext, store: RunStore) -> None:
    row = one(ctx, store, Cell(KERNEL, POOL, "nvme", heavy("heavy"), vcpus=2, memory_mib=1024))
    assert row["high_throttle_count"] > 0 and row["throttle_wait_ns"] > 0  # mappings did sleep on it
    assert row["throttle_timeout_ms"] == 100 and row["fio_errors"] == 0
    assert row["hctx_blocking"] is True  # without an IOMMU the driver opted in to blocking submission
    assert "PROVE_LOCKING=y" in ctx.kernels[KERNEL].config.read_text()


def test_devices_behind_an_iommu_keep_non_blocking_submission(ctx: LabContext, tmp_path: Path) -> None:
    """dma_recommend_may_block() holds only for direct mapping: behind QEMU's intel-iommu, nvme and
    virtio-blk must not switch to blocking submission, and I/O through the IOMMU must still work (with
    DMA-API debugging watching)."""
    spec = boot_spec(ctx, Cell(KERNEL, POOL, "nvme", Workload("idle"), vcpus=2, memory_mib=1024))
    spec = replace(spec, iommu=True, disks=(Disk("nvme"), Disk("virtio-blk")))
    with ctx.hypervisor.boot(spec, tmp_path / "boot") as vm:
        guest = ctx.guest(vm.endpoint, ctx.client_key.private_path, ctx.image.host_key_blob)
        try:
            guest.connect(alive=vm.check_alive)

            def sh(command: str) -> str:
                return guest.run(command, timeout_s=60).stdout

            iommus = sh("ls /sys/class/iommu").split()
            groups = sh(
                "for f in /sys/class/nvme/nvme0/device /sys/block/vda/device/..; do readlink $f/iommu_group; done"
            )
            flags = sh("grep -H . /sys/kernel/debug/block/nvme0n1/hctx*/flags /sys/kernel/debug/block/vda/hctx*/flags")
            io = sh(
                "for d in nvme0n1 vda; do dd if=/dev/$d of=/dev/null bs=1M count=32 iflag=direct 2>&1 | tail -1; done"
            )
            log = sh("dmesg")
        finally:
            guest.close()
    assert iommus and all(name.startswith("dmar") for name in iommus), iommus
    assert len(groups.split()) == 2, groups  # both devices sit in an IOMMU group
    hctx = parse_hctx_flags(flags)
    assert len(hctx) >= 2 and not any("BLOCKING" in f for f in hctx.values()), flags
    assert io.count("32+0 records out") == 2, io  # busybox dd: every 1 MiB read through the IOMMU
    assert kernel_splats(log) == [], log[-3000:]


def test_polled_io_on_virtio_blk_completes(ctx: LabContext, store: RunStore) -> None:
    row = one(ctx, store, Cell(KERNEL, POOL, "virtio-blk", POLLED, vcpus=2, memory_mib=1024))
    assert row["fio_total_ios"] > 0 and row["fio_errors"] == 0
    assert "virtio_blk.poll_queues=2" in row["kernel_cmdline"]


@pytest.mark.parametrize("fault", ["reset", "io-timeout", "unplug"])
def test_error_recovery_with_mappings_asleep_on_the_throttle_finishes(
    ctx: LabContext, store: RunStore, fault: str
) -> None:
    row = one(ctx, store, Cell(KERNEL, POOL, "nvme", heavy(f"heavy-{fault}", fault=fault), vcpus=2, memory_mib=1024))
    assert row["fault"] == fault and not row.get("fault_error"), row.get("fault_error")
    assert row["fault_at_s"] >= 3
    assert row["high_throttle_count"] > 0  # the throttle was engaged when the fault came
    if fault == "reset":
        assert "exit 0" in row["fault_detail"]  # reset_controller returned: the reset finished
    if fault == "io-timeout":
        assert row["dmesg_io_errors"] > 0  # commands timed out (the driver logged its timeouts and recovery)
    assert row["device_after"] == ("gone" if fault == "unplug" else "present")


def test_a_may_block_mapping_from_atomic_context_is_reported_at_once(ctx: LabContext, tmp_path: Path) -> None:
    """The lab's self-test patch maps one page with DMA_ATTR_MAY_BLOCK under a spinlock, on an idle pool
    (the mapping never waits): might_sleep_if() at the API entry point must still report it."""
    spec = boot_spec(ctx, Cell(KERNEL, POOL, "nvme", Workload("idle"), vcpus=2, memory_mib=1024))
    with ctx.hypervisor.boot(spec, tmp_path / "boot") as vm:
        guest = ctx.guest(vm.endpoint, ctx.client_key.private_path, ctx.image.host_key_blob)
        try:
            guest.connect(alive=vm.check_alive)
            guest.run("dmesg -c > /dev/null", timeout_s=30)
            used = guest.run("cat /sys/kernel/debug/swiotlb/io_tlb_used", timeout_s=30).stdout.strip()
            log = guest.run(
                "echo 1 > /sys/kernel/debug/dma_may_block_selftest/atomic_map; dmesg -c", timeout_s=60
            ).stdout
        finally:
            guest.close()
    splats = kernel_splats(log)
    assert [s.kind for s in splats] == ["sleep in atomic"], log[-3000:]
    assert "dma_map_page_attrs" in splats[0].text and int(used) < POOL * 70 // 100  # far below the threshold


@pytest.mark.kernels("throttle-v2-dynamic")
def test_a_growing_pool_stops_at_its_limit(
    built_kernels: Callable[..., dict[str, KernelBuild]],
    guest_image: GuestImage,
    lab_key: KeyPair,
    hypervisor: LocalHypervisor,
    store: RunStore,
) -> None:
    """Patch 9: with waits that time out at once (timeout 0), the heavy load grows a dynamic pool; with
    io_tlb_max_nslabs = 2048 it stops growing at 2048 slots (the 1024-slot pool plus one step) and maps
    that find no slot fail and are requeued, as in a fixed pool."""
    kernel = "throttle-v2-dynamic"
    ctx = LabContext(
        hypervisor, guest_image, lab_key, built_kernels(kernel), cache_dir(), provenance={"lab_revision": "test"}
    )

    def cell(name: str, *knobs: tuple[str, int]) -> Cell:
        knobs = (("throttle_timeout_ms", 0), *knobs)
        return Cell(kernel, POOL, "nvme", heavy(name), vcpus=2, memory_mib=1024, knobs=knobs, solo=True)

    free = one(ctx, store, cell("heavy-unlimited"))
    capped = one(ctx, store, cell("heavy-capped", ("io_tlb_max_nslabs", 2 * POOL)))
    assert free["nslabs"] == capped["nslabs"] == POOL
    assert free["nslabs_after"] > 2 * POOL, free["nslabs_after"]  # without a limit it grows past it
    assert capped["nslabs_after"] == 2 * POOL
    assert capped["map_failures"] > 0 and capped["fio_errors"] == 0  # failed maps were requeued
