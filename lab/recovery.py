"""Error-recovery faults injected while fio runs (workload key ``fault``): a controller reset, command
timeouts against a stalled backend, a hot-unplug.  The question each answers: with mappings asleep on
the throttle, does the driver's recovery finish, or does it wait for a task that waits for it?"""

from __future__ import annotations

import threading
import time
from typing import Any

from lab import interrupt
from lab.errors import LabError
from lab.guest import Guest
from lab.vm import RunningGuest
from lab.workload import FAULT_IO_TIMEOUT_MS, FAULT_STALL_S, Workload

DEVICE_ID = "dut0dev"  # the qdev id lab.vm gives the device under test
# The stall: 8 IOPS.  The guest queues 30-60 requests behind QEMU's throttle, so they wait 4-8 s and
# outlive the 2 s timeout; when the guest's recovery then deletes its queues, QEMU's NVMe controller
# cancels them synchronously, holding its main loop (and QMP) until they drain: at 1 IOPS that took
# 30-60 s, long enough for the guest's hung-task detector to report submitters waiting on the
# controller reset (measured 2026-11-27); at 8 IOPS it is a few seconds.
FAULT_STALL_IOPS = 8
LIFT_TIMEOUT_S = 60.0


class FaultInjector:
    """Runs ``workload.fault`` in a thread, ``workload.fault_after_s`` into fio; ``finish()`` joins it
    and returns what happened as row fields.  Without a fault it does nothing."""

    def __init__(self, workload: Workload, vm: RunningGuest, guest: Guest, disk_name: str) -> None:
        self.workload, self.vm, self.guest, self.disk_name = workload, vm, guest, disk_name
        self.result: dict[str, Any] = {"fault": workload.fault}
        self._thread: threading.Thread | None = None
        self._started = 0.0

    def prepare(self) -> None:
        """Before fio: a short block-layer timeout for io-timeout, so stalled commands time out in seconds."""
        if self.workload.fault == "io-timeout":
            self.guest.run(f"echo {FAULT_IO_TIMEOUT_MS} > /sys/block/{self.disk_name}/queue/io_timeout", timeout_s=15)

    def start(self) -> None:
        if not self.workload.fault:
            return
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="lab-fault", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            interrupt.sleep(self.workload.fault_after_s)
            self.result["fault_at_s"] = round(time.monotonic() - self._started, 3)
            if self.workload.fault == "reset":
                # reset_controller waits for the reset to finish: a recovery that hangs shows here too.
                done = self.guest.run("echo 1 > /sys/class/nvme/nvme0/reset_controller", timeout_s=60, check=False)
                self.result["fault_detail"] = f"reset_controller exit {done.exitcode} {done.stderr.strip()}".strip()
            elif self.workload.fault == "io-timeout":
                self._throttle(iops=FAULT_STALL_IOPS)
                interrupt.sleep(FAULT_STALL_S)
                # QEMU's NVMe controller cancels in-flight I/O synchronously when the guest's recovery
                # deletes its queues, which holds QEMU's main loop (and QMP) until the throttled queue
                # drains: the lift may wait that long.
                self._throttle(iops=0, timeout_s=LIFT_TIMEOUT_S)
                self.result["fault_detail"] = (
                    f"backend at {FAULT_STALL_IOPS} IOPS for {FAULT_STALL_S} s, I/O timeout {FAULT_IO_TIMEOUT_MS} ms"
                )
            elif self.workload.fault == "unplug":
                self.vm.qmp("device_del", id=DEVICE_ID)
                self.result["fault_detail"] = f"device_del {DEVICE_ID}"
            self.result["fault_done_s"] = round(time.monotonic() - self._started, 3)
        except interrupt.Interrupted:
            self.result["fault_error"] = "interrupted"  # the run stops; the main thread reports it
        except LabError as exc:
            self.result["fault_error"] = str(exc)[:2000]
        except Exception as exc:  # QMP errors come in several types; the row says which
            self.result["fault_error"] = f"{type(exc).__name__}: {exc}"[:2000]

    def _throttle(self, iops: int, timeout_s: float | None = None) -> None:
        limits = dict.fromkeys(("bps", "bps_rd", "bps_wr", "iops_rd", "iops_wr"), 0)
        self.vm.qmp("block_set_io_throttle", timeout_s=timeout_s, id=DEVICE_ID, iops=iops, **limits)

    def finish(self, timeout_s: float = 90.0) -> dict[str, Any]:
        """Join the fault's thread; record whether the device under test is still there (an unplug that
        worked removes it)."""
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                self.result.setdefault("fault_error", f"the fault action did not end within {timeout_s:.0f} s")
            try:
                seen = self.guest.run(
                    f"test -e /sys/block/{self.disk_name} && echo present || echo gone", timeout_s=15, check=False
                )
                self.result["device_after"] = seen.stdout.strip()
            except LabError as exc:
                self.result["device_after"] = f"unknown ({exc})"[:200]
        return dict(self.result)
