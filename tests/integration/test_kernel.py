"""Built kernels on real guests: the throttling series does what the design says (REFERENCE.md §2-§4).

Builds the static, throttle and dynamic variants (cached by content hash;
cold builds take minutes) and runs the heavy workload on an exhausted pool.
"""

from __future__ import annotations

import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from lab import dmabench, probes
from lab.guest import quote_argv
from lab.image import GuestImage
from lab.kernel import KernelBuild, build_kernel, debian_source, load_variants
from lab.keys import KeyPair
from lab.matrix import Cell
from lab.parse import parse_debugfs, parse_hist
from lab.runner import LabContext, boot_spec, run_group
from lab.store import RunStore
from lab.util import cache_dir
from lab.vm import LocalHypervisor
from lab.workload import Workload

pytestmark = [pytest.mark.integration, pytest.mark.kernels("static", "dynamic", "throttle")]

POOL = 1024  # slabs: the heavy workload exhausts it
MAX_MAPPING_SLABS = 128  # the largest single bounce mapping (256 KiB)
HEAVY = Workload("heavy", rw="randread", bs="256k", iodepth=128, numjobs=4, runtime_s=8, size="512M")


class Quiet:
    def phase(self, cell: Cell | None, text: str) -> None:
        pass

    def cell_done(self, cell: Cell, row: dict[str, Any], estimate_s: float) -> None:
        pass


@pytest.fixture(scope="module")
def kernels() -> dict[str, KernelBuild]:
    # static and dynamic first: they share the unpatched sources, so the shared workspace rebuilds least
    return {name: build_kernel(name) for name in ("static", "dynamic", "throttle")}


@pytest.fixture(scope="module")
def ctx(
    kernels: dict[str, KernelBuild], guest_image: GuestImage, lab_key: KeyPair, hypervisor: LocalHypervisor
) -> LabContext:
    return LabContext(hypervisor, guest_image, lab_key, kernels, cache_dir(), provenance={"lab_revision": "test"})


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> RunStore:
    return RunStore.create(tmp_path_factory.mktemp("kernels"), {"test": "kernels"})


def run(ctx: LabContext, store: RunStore, *cells: Cell) -> list[dict[str, Any]]:
    rows = run_group(list(cells), store, ctx, Quiet())
    for row in rows:
        assert row["status"] == "ok", f"{row['cell_id']}: {row['failure_reason']}: {row['failure_detail']}"
    return rows


@pytest.fixture(scope="module")
def static_row(ctx: LabContext, store: RunStore) -> dict[str, Any]:
    [row] = run(ctx, store, Cell("static", POOL, "nvme", HEAVY, vcpus=2, memory_mib=1024))
    return row


@pytest.fixture(scope="module")
def throttle_rows(ctx: LabContext, store: RunStore) -> tuple[dict[str, Any], dict[str, Any]]:
    """Default thresholds, then thresholds raised to the pool size (so nothing can throttle), one boot."""
    default = Cell("throttle", POOL, "nvme", HEAVY, vcpus=2, memory_mib=1024)
    never = Cell(
        "throttle",
        POOL,
        "nvme",
        HEAVY,
        vcpus=2,
        memory_mib=1024,
        knobs=(("high_throttle", POOL), ("low_throttle", POOL)),
    )
    first, second = run(ctx, store, default, never)
    return first, second


def test_every_patch_passes_checkpatch_strict() -> None:
    tree = debian_source().tree
    patches = sorted({patch for variant in load_variants().values() for patch in variant.patches})
    assert len(patches) >= 9
    for patch in patches:
        result = subprocess.run(
            ["perl", "scripts/checkpatch.pl", "--strict", "--no-summary", "--terse", patch],
            cwd=tree,
            capture_output=True,
            text=True,
            check=False,
        )
        problems = [line for line in result.stdout.splitlines() if ": ERROR:" in line or ": WARNING:" in line]
        assert problems == [], f"{patch.name}:\n" + "\n".join(problems)


def test_built_kernels_record_their_identity(kernels: dict[str, KernelBuild]) -> None:
    throttle = kernels["throttle"].identity
    assert throttle["kernel_source"].startswith("debian:linux-source-6.12=")
    assert throttle["kernel_patches"].startswith("0001-dma-mapping-add-DMA_ATTR_MAY_BLOCK.patch")
    # the static kernel carries only the lab's instruments (kernel-configs/variants.toml)
    assert kernels["static"].identity["kernel_patches"] == (
        "0001-dma-mapping-count-failed-mappings-in-debugfs.patch,"
        "0001-swiotlb-emulate-the-cost-of-converting-a-dynamic-poo.patch"
    )
    assert "CONFIG_SWIOTLB_THROTTLE=y" in Path(kernels["throttle"].config).read_text()


def test_static_kernel_exhausts_the_pool_and_map_calls_fail(static_row: dict[str, Any]) -> None:
    assert static_row["nslabs"] == POOL
    assert static_row["map_failures"] > 0
    assert static_row["hiwater"] >= static_row["nslabs"] - MAX_MAPPING_SLABS
    assert static_row["high_throttle_count"] is None  # no throttle in this kernel
    assert not static_row["hctx_blocking"]


def test_the_kernel_counts_failed_maps_exactly_as_the_tracepoint_sees_them(ctx: LabContext, tmp_path: Path) -> None:
    """The lab's counter (patches/dma-map-failure-counter) replaces a hist trigger on dma_map_page that
    cost every map; on an exhausted pool both must count the same failures, bytes included."""
    trigger = probes.TRIGGERS[0]
    assert trigger.name == "map_page_failures"
    spec = boot_spec(ctx, Cell("static", POOL, "nvme", HEAVY, vcpus=2, memory_mib=1024))
    counters = f"grep -r . {probes.DMA_FAILURES_DEBUGFS}"
    with ctx.hypervisor.boot(spec, tmp_path / "boot") as vm:
        guest = ctx.guest(vm.endpoint, ctx.client_key.private_path, ctx.image.host_key_blob)
        try:
            guest.connect(alive=vm.check_alive)
            guest.run(f"echo '{trigger.spec}' > {trigger.trigger_file}", timeout_s=30)
            before = guest.run(counters, timeout_s=30).stdout
            argv = replace(HEAVY, runtime_s=5).fio_argv("/dev/nvme0n1", "/tmp/fio.json")
            guest.run(quote_argv(argv) + " > /dev/null", timeout_s=120)
            after = guest.run(counters, timeout_s=30).stdout
            hist = parse_hist(guest.run(f"cat {trigger.hist_file}", timeout_s=30).stdout)
        finally:
            guest.close()
    start = parse_debugfs(before, probes.DMA_FAILURES_DEBUGFS)
    end = parse_debugfs(after, probes.DMA_FAILURES_DEBUGFS)
    failed = end["page"] - start["page"]
    assert failed > 0, (before, after)  # the pool was exhausted: maps failed
    assert failed == hist.hits, (before, after, hist)
    assert end["page_bytes"] - start["page_bytes"] == hist.total("size")


def test_the_kernels_own_dma_map_benchmark_bounces_every_map(ctx: LabContext, tmp_path: Path) -> None:
    """Claim C12's cross-check: kernel/dma/map_benchmark.c bound to QEMU's edu device, its user-space tool
    built from the same source; under swiotlb=force its maps must go through the pool."""
    spec = replace(
        boot_spec(ctx, Cell("static", 32768, "nvme", Workload("idle"), vcpus=2, memory_mib=1024)), spare_pci=True
    )
    tool = dmabench.build_tool(debian_source().tree, cache_dir())
    with ctx.hypervisor.boot(spec, tmp_path / "boot") as vm:
        guest = ctx.guest(vm.endpoint, ctx.client_key.private_path, ctx.image.host_key_blob)
        try:
            guest.connect(alive=vm.check_alive)
            bdf = dmabench.install(guest, tool)
            guest.run(f"echo 0 > {probes.SWIOTLB_DEBUGFS}/io_tlb_used_hiwater", timeout_s=30)
            idle = int(guest.run(f"cat {probes.SWIOTLB_DEBUGFS}/io_tlb_used", timeout_s=30).stdout)
            result = dmabench.run(guest, threads=2, seconds=2, granule=32)
            hiwater = int(guest.run(f"cat {probes.SWIOTLB_DEBUGFS}/io_tlb_used_hiwater", timeout_s=30).stdout)
        finally:
            guest.close()
    assert bdf.strip().startswith("0000:"), bdf
    assert result.threads == 2 and result.map_us > 0 and result.unmap_us > 0
    # a thread holds one 32-page (128 KiB, 64-slot) mapping at a time: at least one above what sat there idle
    assert hiwater >= idle + 64, (idle, hiwater)


def test_throttle_kernel_throttles_with_fewer_map_failures_and_no_fio_errors(
    static_row: dict[str, Any], throttle_rows: tuple[dict[str, Any], dict[str, Any]]
) -> None:
    throttled, _ = throttle_rows
    assert throttled["nslabs"] == POOL
    assert throttled["high_throttle"] == POOL * 70 // 100
    assert throttled["high_throttle_count"] > 0
    assert throttled["fio_errors"] == 0
    # The design claims zero failures; the report judges that.  Here: fewer than without throttling.
    assert throttled["map_failures"] < static_row["map_failures"]
    assert throttled["hiwater_frac"] is not None and throttled["throttle_wait_ns"] > 0


def test_nvme_submission_is_blocking_when_bouncing_is_forced(
    throttle_rows: tuple[dict[str, Any], dict[str, Any]],
) -> None:
    throttled, _ = throttle_rows
    assert throttled["hctx_blocking"]


def test_nvme_submission_is_not_blocking_without_swiotlb_force(ctx: LabContext, store: RunStore) -> None:
    light = Workload("light", rw="randread", bs="4k", iodepth=4, runtime_s=3, size="64M")
    [row] = run(ctx, store, Cell("throttle", POOL, "nvme", light, vcpus=2, memory_mib=1024, swiotlb_force=False))
    assert not row["hctx_blocking"]
    assert "swiotlb=1024" in row["kernel_cmdline"] and "force" not in row["kernel_cmdline"]


def test_raising_high_throttle_in_debugfs_stops_throttling(
    throttle_rows: tuple[dict[str, Any], dict[str, Any]],
) -> None:
    throttled, never = throttle_rows
    assert never["high_throttle"] == POOL and never["low_throttle"] == POOL
    assert throttled["high_throttle_count"] > 0
    # A fresh machine's run (2026-11-27, session 5) counted 2 throttled mappings with both thresholds at
    # the pool size, against thousands with the defaults: the kernel's usage count can pass the pool size
    # (a static 1024-slot cell of the same day recorded io_tlb_used_hiwater 1025), so the test asks for
    # throttling all but gone (1%), not for exactly zero.
    counts = {name: (throttled[name], never[name]) for name in ("high_throttle_count", "low_throttle_count")}
    assert never["high_throttle_count"] + never["low_throttle_count"] <= throttled["high_throttle_count"] / 100, counts
    assert never["map_failures"] > throttled["map_failures"]


def test_dynamic_kernel_grows_the_pool_beyond_the_request(ctx: LabContext, store: RunStore) -> None:
    [row] = run(ctx, store, Cell("dynamic", POOL, "nvme", HEAVY, vcpus=2, memory_mib=1024))
    assert row["nslabs"] >= POOL
    assert row["nslabs_after"] > POOL


def test_virtio_blk_opts_in_and_throttles_too(ctx: LabContext, store: RunStore) -> None:
    [row] = run(ctx, store, Cell("throttle", POOL, "virtio-blk", HEAVY, vcpus=2, memory_mib=1024))
    assert row["hctx_blocking"], row["hctx_flags"]
    assert row["high_throttle_count"] > 0
    assert row["fio_errors"] == 0 and row["fio_iops"] > 0


POLLED = Workload(
    "polled", rw="randread", bs="128k", iodepth=32, numjobs=2, ioengine="io_uring", hipri=True, runtime_s=8, size="512M"
)


@pytest.mark.kernels("throttle-nopoll")
def test_polled_requests_exempt_from_the_throttle_complete(ctx: LabContext, store: RunStore) -> None:
    # On `throttle` this load hangs until the fio timeout (claim C5, judged by the report);
    # `throttle-nopoll` maps polled requests without DMA_ATTR_MAY_BLOCK, so none of them sleeps.
    ctx.kernels["throttle-nopoll"] = build_kernel("throttle-nopoll")
    [polled] = run(ctx, store, Cell("throttle-nopoll", POOL, "nvme", POLLED, vcpus=2, memory_mib=1024))
    assert polled["fio_errors"] == 0 and polled["fio_iops"] > 0
    assert polled["hctx_blocking"]
    assert polled["high_throttle_count"] == 0 and polled["low_throttle_count"] == 0
    # Interrupt-driven requests of the same kernel still wait on the throttle.
    [heavy] = run(ctx, store, Cell("throttle-nopoll", POOL, "nvme", HEAVY, vcpus=2, memory_mib=1024))
    assert heavy["high_throttle_count"] > 0
