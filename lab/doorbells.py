"""Lost NVMe doorbells: when a guest hangs, did the emulated controller stop reading its queue?

Linux's nvme-pci uses shadow doorbells (Doorbell Buffer Config) when the controller offers them,
as QEMU's does: the driver writes each queue's new tail into a shadow page and rings the MMIO
doorbell only if the controller's *event index* (the tail it last saw, in a second page) lies in
the range it just advanced over.  If the controller's event index stops behind the shadow tail
with the controller idle, the driver will not ring again, and the commands in between wait
forever.  The lab met exactly this with QEMU 7.2 (Debian 12): under the swiotlb throttle with one
vCPU, the heavy load hung with the controller's event index 15-17 entries behind the driver's
shadow tail, the pool held by those commands (see README, "Series v2").

The lab asks QEMU to trace the one event that says where the two pages are
(``pci_nvme_dbbuf_config``, logged once per controller reset), and on a timeout reads both pages
through QMP (HMP ``xp``) twice, a second apart: a queue whose shadow tail differs from an event
index that did not move is a lost doorbell, and the cell says so instead of "timeout".
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from lab import interrupt
from lab.vm import NVME_DBBUF_EVENT as TRACE_EVENT
from lab.vm import TRACE_FILE as TRACE_FILE

FAILURE_REASON = "lost nvme doorbell"  # a cell's failure_reason when this diagnosis found one
MMIO_EVENT = "pci_nvme_mmio_doorbell_sq"  # one per MMIO write of a submission queue doorbell (an exit)
_MMIO_RE = re.compile(rf"{MMIO_EVENT} sqid (\d+) new_tail \d+")
_CONFIG_RE = re.compile(rf"{TRACE_EVENT} dbs_addr=(0x[0-9a-f]+) eis_addr=(0x[0-9a-f]+)")
# Admin queue plus up to 15 I/O queues: more than the lab's guests have (one per vCPU, plus
# virtio's and nvme's poll queues); unused queues read 0 in both pages.
QUEUES = 16


@dataclass(frozen=True)
class LostDoorbell:
    """Submission queue ``qid``: the driver posted up to ``shadow_tail``; the controller saw ``event_index``."""

    qid: int
    shadow_tail: int
    event_index: int

    def __str__(self) -> str:
        return (
            f"NVMe submission queue {self.qid}: driver's shadow tail {self.shadow_tail}, controller's event "
            f"index {self.event_index} and not moving ({(self.shadow_tail - self.event_index) % 65536} "
            f"command(s) posted that the controller never read)"
        )


def io_doorbell_writes(trace_text: str) -> int:
    """MMIO doorbell writes of the I/O submission queues (the admin queue, 0, left out) in a QEMU trace."""
    return sum(1 for qid in _MMIO_RE.findall(trace_text) if int(qid) > 0)


def shadow_pages(trace_text: str) -> tuple[int, int] | None:
    """The guest-physical addresses of the shadow doorbell and event index pages (the latest configuration)."""
    found = _CONFIG_RE.findall(trace_text)
    return (int(found[-1][0], 16), int(found[-1][1], 16)) if found else None


def parse_xp(text: str) -> list[int]:
    """The 32-bit words of an HMP ``xp /Nwx ADDR`` dump (``ADDR: 0x... 0x...`` lines)."""
    words: list[int] = []
    for line in text.splitlines():
        if ":" in line:
            words += [int(word, 16) for word in line.split(":", 1)[1].split()]
    return words


def lagging(shadow: list[int], event_before: list[int], event_after: list[int]) -> list[LostDoorbell]:
    """Submission queues whose shadow tail differs from an event index that stayed put.

    Word 2*qid is submission queue qid's tail (and its event index); 2*qid+1 is its completion queue's head.
    """
    lost = []
    for qid in range(min(len(shadow), len(event_before), len(event_after)) // 2):
        tail, before, after = shadow[2 * qid], event_before[2 * qid], event_after[2 * qid]
        if tail != after and before == after:
            lost.append(LostDoorbell(qid, tail, after))
    return lost


def find_lost(hmp: Callable[[str], object], trace_text: str, settle_s: float = 1.0) -> tuple[list[LostDoorbell], str]:
    """Read the two pages of a running guest twice; ``hmp(command_line)`` is its monitor.

    Returns the lost doorbells and the dumps they were read from (kept with the cell as evidence).
    """
    pages = shadow_pages(trace_text)
    if pages is None:
        return [], ""
    dbs, eis = pages
    dumps: list[str] = []

    def read(what: str, address: int) -> list[int]:
        text = str(hmp(f"xp /{2 * QUEUES}wx {address:#x}"))
        dumps.append(f"# {what}\n{text.strip()}")
        return parse_xp(text)

    before = read("event indexes", eis)
    interrupt.sleep(settle_s)  # a stop request ends the wait
    shadow, after = read("shadow doorbells", dbs), read(f"event indexes, {settle_s:g} s later", eis)
    return lagging(shadow, before, after), "\n".join(dumps) + "\n"
