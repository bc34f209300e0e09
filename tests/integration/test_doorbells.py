"""The lost-doorbell diagnosis on a real, healthy NVMe guest: QEMU names the shadow doorbell pages,
QMP reads them, and a guest that hangs on nothing has lost nothing."""

from __future__ import annotations

from pathlib import Path

from lab.doorbells import find_lost, parse_xp, shadow_pages
from lab.image import GuestImage
from lab.kernel import KernelBuild
from lab.keys import KeyPair
from lab.matrix import Cell
from lab.runner import LabContext, boot_spec
from lab.util import cache_dir
from lab.vm import LocalHypervisor
from lab.workload import Workload


def test_a_healthy_nvme_guest_shows_its_doorbell_pages_and_no_lost_doorbell(
    guest_image: GuestImage, stock: KernelBuild, lab_key: KeyPair, tmp_path: Path
) -> None:
    ctx = LabContext(LocalHypervisor(), guest_image, lab_key, {"stock": stock}, cache_dir())
    spec = boot_spec(ctx, Cell("stock", 1024, "nvme", Workload("w"), vcpus=2, memory_mib=1024))
    with ctx.hypervisor.boot(spec, tmp_path) as machine:
        pages = shadow_pages(machine.qemu_trace_text())
        assert pages is not None, machine.qemu_trace_text()

        def hmp(line: str) -> object:
            return machine.qmp("human-monitor-command", 10, **{"command-line": line})

        lost, dumps = find_lost(hmp, machine.qemu_trace_text(), settle_s=0.5)
        assert lost == []
        # the driver really rings through the pages: the I/O queues' shadow tails (queues 1 and 2, one
        # per vCPU) are past the reads of bring-up (partition scan), and the controller saw all of them
        shadow = parse_xp(str(hmp(f"xp /6wx {pages[0]:#x}")))
        events = parse_xp(str(hmp(f"xp /6wx {pages[1]:#x}")))
        io_tails = [shadow[2], shadow[4]]
        assert sum(io_tails) > 0 and io_tails == [events[2], events[4]], dumps
