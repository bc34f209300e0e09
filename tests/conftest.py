"""Shared fixtures: the real guest image and stock kernel, and a check that no QEMU outlives the suite."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.image import GuestImage, build_image
from lab.kernel import KernelBuild, stock_kernel
from lab.keys import KeyPair, client_key
from lab.runner import LabContext
from lab.util import cache_dir
from lab.vm import LocalHypervisor


def qemu_pids() -> set[int]:
    """Live QEMU processes (a zombie has exited; whether init has reaped it yet is not the lab's doing)."""
    out = subprocess.run(["pgrep", "-f", "qemu-system"], capture_output=True, text=True, check=False).stdout
    return {pid for pid in map(int, out.split()) if pid != os.getpid() and pid_alive(pid)}


@pytest.fixture(scope="session", autouse=True)
def no_qemu_survives_the_suite() -> Iterator[None]:
    before = qemu_pids()
    yield
    leftover = qemu_pids() - before
    if leftover:
        subprocess.run(["kill", "-9", *map(str, leftover)], check=False)
        pytest.fail(f"QEMU processes survived the test suite: {sorted(leftover)}")


@pytest.fixture(scope="session")
def guest_image() -> GuestImage:
    return build_image()


@pytest.fixture(scope="session")
def stock() -> KernelBuild:
    return stock_kernel()


@pytest.fixture(scope="session")
def lab_key() -> KeyPair:
    return client_key()


@pytest.fixture(scope="session")
def hypervisor() -> LocalHypervisor:
    return LocalHypervisor()


@pytest.fixture
def lab_ctx(guest_image: GuestImage, stock: KernelBuild, lab_key: KeyPair, hypervisor: LocalHypervisor) -> LabContext:
    return LabContext(hypervisor, guest_image, lab_key, {"stock": stock}, cache_dir(),
                      provenance={"lab_revision": "test"})  # fmt: skip


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it has exited all the same.
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"
