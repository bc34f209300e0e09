"""run_group's policies, in milliseconds: a fake hypervisor and a fake guest that answers with the
artifacts of a real cell (tests/data/run-small), so rows are parsed from real fio, debugfs and hist output.

- a cell that loses the guest fails alone, and the rest get a fresh boot;
- a cell whose command fails with an exit code fails alone, and the rest reuse the boot;
- a boot that panics or times out is tried once more, and says so in its rows;
- a boot that fails again, or fails in a way no retry cures, fails the remaining cells of its group;
- a stop request ends the group at once, recording nothing for the cell it interrupted.
"""

from __future__ import annotations

import contextlib
import io
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from lab import interrupt
from lab.errors import BootError, GuestCommandError
from lab.guest import CommandResult
from lab.image import GuestImage
from lab.kernel import KernelBuild
from lab.keys import KeyPair
from lab.matrix import Cell
from lab.runner import LabContext, SilentReporter, oversubscription, run_group
from lab.store import RunStore
from lab.vm import BootSpec, Endpoint
from lab.workload import Workload

REAL_CELL = (
    Path(__file__).resolve().parent.parent / "data" / "run-small" / "cells" / "static-1024-nvme-heavy-r0-cded07f2"
)
ARTIFACTS = (
    "fio.json",
    "debugfs_before.txt",
    "debugfs_after.txt",
    "dmesg.txt",
    "hctx_flags.txt",
    "samples.csv",
    "hist_bounces.txt",
    "hist_map_page_failures.txt",
    "hist_map_sg_errors.txt",
)


@dataclass
class Script:
    """What the fake guests do: per boot, per fio run (in order): "ok", "lost" or "exit"."""

    boots_fail: int = 0  # this many boots fail, then boots come up
    boot_failure: str = "timeout"
    fio: list[str] = field(default_factory=list)
    boots: int = 0
    stop_during_fio: bool = False


@dataclass
class FakeVM:
    script: Script
    endpoint: Endpoint = field(default_factory=lambda: Endpoint("127.0.0.1", 1))
    accelerator: str = "tcg"
    argv: tuple[str, ...] = ("qemu-system-x86_64", "-fake")
    boot_seconds: float = 0.1

    def console_text(self) -> str:
        return "[    0.0] fake console\n"

    def qemu_trace_text(self) -> str:
        return ""

    def check_alive(self) -> None:
        pass

    def forwarded(self, guest_port: int) -> Endpoint:
        return self.endpoint


class FakeHypervisor:
    name = "fake"

    def __init__(self, script: Script) -> None:
        self.script = script

    @contextlib.contextmanager
    def boot(self, spec: BootSpec, workdir: Path) -> Iterator[FakeVM]:
        self.script.boots += 1
        if self.script.boots <= self.script.boots_fail:
            raise BootError("the fake guest did not boot", reason=self.script.boot_failure)
        yield FakeVM(self.script)

    def describe(self) -> dict[str, object]:
        return {}

    def capabilities(self) -> dict[str, str]:
        return {"tcg": ""}

    def stop_all(self) -> int:
        return 0


class FakeGuest:
    def __init__(self, script: Script) -> None:
        self.script = script

    def connect(self, timeout_s: float = 60.0, alive: Any = None) -> float:
        return 0.01

    def run(self, command: str, *, timeout_s: float = 60.0, check: bool = True) -> CommandResult:
        if command.startswith("nproc"):
            return CommandResult(command, 0, "2\n", "", 0.0)
        if command.startswith("setsid /usr/local/bin/swiotlb-sampler"):
            return CommandResult(command, 0, "4242\n", "", 0.0)
        if "fio --output-format" in command:
            outcome = self.script.fio.pop(0)
            if self.script.stop_during_fio:
                interrupt.request_stop("test")
                interrupt.check()
            if outcome == "lost":
                raise GuestCommandError(command, None, "", "SSH session closed before the command exited")
            if outcome == "exit":
                raise GuestCommandError(command, 2, "", "fio: bad job")
        return CommandResult(command, 0, "", "", 0.0)

    def get(self, remote: str, local: Path) -> Path:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            for name in ARTIFACTS:
                tar.add(REAL_CELL / name, arcname=f"./{name}")
        local.write_bytes(buffer.getvalue())
        return local

    def put(self, local: Path, remote: str) -> None:
        pass

    def close(self) -> None:
        pass


def run(tmp_path: Path, script: Script, count: int = 3) -> list[dict[str, Any]]:
    kernel = KernelBuild("static", "6.12.117", tmp_path / "bzImage", tmp_path / "config")
    ctx = LabContext(
        FakeHypervisor(script),
        GuestImage(tmp_path / "rootfs.cpio", "ssh-ed25519 AAAAhost lab", "r"),  # type: ignore[arg-type]
        KeyPair(tmp_path / "key", "ssh-ed25519 AAAAkey lab"),
        {"static": kernel},
        tmp_path,
        guest=lambda *args: FakeGuest(script),
    )  # type: ignore[arg-type,return-value]
    store = RunStore.create(tmp_path / "results", {"test": "run_group"}, run_id="r")
    workloads = [Workload(f"w{i}", runtime_s=1) for i in range(count)]
    return run_group([Cell("static", 1024, "nvme", w, 2, 1024) for w in workloads], store, ctx, SilentReporter())


@pytest.fixture(autouse=True)
def no_stop() -> Iterator[None]:
    interrupt.reset()
    yield
    interrupt.reset()


def test_all_cells_of_a_group_share_one_boot_and_parse_real_artifacts(tmp_path: Path) -> None:
    script = Script(fio=["ok", "ok", "ok"])
    rows = run(tmp_path, script)
    assert [r["status"] for r in rows] == ["ok"] * 3 and script.boots == 1
    assert rows[0]["nslabs"] == 1024 and rows[0]["map_failures"] > 0 and rows[0]["fio_iops"] > 0


def test_a_cell_that_loses_the_guest_fails_alone_and_the_rest_boot_afresh(tmp_path: Path) -> None:
    script = Script(fio=["ok", "lost", "ok"])
    rows = run(tmp_path, script)
    assert [r["status"] for r in rows] == ["ok", "failed", "ok"]
    assert rows[1]["failure_reason"] == "ssh failure" and rows[1]["guest_lost"] is True
    assert script.boots == 2 and rows[2]["boot_attempt"] == 2


def test_a_command_that_fails_with_an_exit_code_keeps_the_boot(tmp_path: Path) -> None:
    script = Script(fio=["exit", "ok", "ok"])
    rows = run(tmp_path, script)
    assert [r["status"] for r in rows] == ["failed", "ok", "ok"]
    assert rows[0]["failure_reason"] == "guest command failed" and script.boots == 1


def test_a_boot_that_panics_once_is_tried_again_and_its_rows_say_so(tmp_path: Path) -> None:
    script = Script(boots_fail=1, boot_failure="kernel panic", fio=["ok", "ok", "ok"])
    rows = run(tmp_path, script)
    assert [r["status"] for r in rows] == ["ok"] * 3 and script.boots == 2
    assert {(r["boot_attempt"], r["boot_retries"], r["boot_retry_reason"]) for r in rows} == {
        (2, 1, "boot 1: kernel panic")
    }


def test_a_boot_that_fails_twice_fails_the_group_without_a_third_boot(tmp_path: Path) -> None:
    script = Script(boots_fail=5)
    rows = run(tmp_path, script)
    assert [(r["status"], r["failure_reason"]) for r in rows] == [("failed", "timeout")] * 3
    assert script.boots == 2 and rows[0]["boot_retry_reason"] == "boot 1: timeout; boot 2: timeout"


@pytest.mark.parametrize("reason", ["qemu exited", "vcpu mismatch", "no memory encryption"])
def test_a_boot_failure_no_retry_cures_fails_the_group_at_once(tmp_path: Path, reason: str) -> None:
    script = Script(boots_fail=5, boot_failure=reason)
    rows = run(tmp_path, script)
    assert [(r["status"], r["failure_reason"]) for r in rows] == [("failed", reason)] * 3
    assert script.boots == 1 and rows[0]["boot_retries"] == 0


def test_a_stop_request_ends_the_group_and_records_nothing_for_the_interrupted_cell(tmp_path: Path) -> None:
    script = Script(fio=["ok", "ok", "ok"], stop_during_fio=True)
    with pytest.raises(interrupt.Interrupted):
        run(tmp_path, script)
    assert not list((tmp_path / "results").glob("*/cells/*/cell.json"))


@pytest.mark.parametrize(
    ("slots", "vcpus", "host_cpus", "crowded"),
    [
        pytest.param(1, 2, 2, False, id="one-guest-has-the-host-to-itself"),  # 3 > 2, but nothing competes
        pytest.param(2, 1, 4, False, id="two-1-vcpu-guests-on-4-cores"),  # 2 x 2 = 4: fits exactly
        pytest.param(2, 2, 2, True, id="two-2-vcpu-guests-on-2-cores"),  # the issue's --jobs 2 here
        pytest.param(2, 2, 6, False, id="two-2-vcpu-guests-on-6-cores"),  # 2 x 3 = 6: fits exactly
        pytest.param(2, 2, 5, True, id="two-2-vcpu-guests-on-5-cores"),
        pytest.param(2, 2, None, False, id="cores-unknown"),
    ],
)
def test_guests_that_share_cores_are_named(slots: int, vcpus: int, host_cpus: int | None, crowded: bool) -> None:
    said = oversubscription(slots, vcpus, host_cpus)
    assert (said is not None) == crowded
    if said:
        assert f"{slots * (vcpus + 1)} > {host_cpus} host CPUs" in said
