"""A current QEMU from a toolchain root (issue 20): it boots the lab's guests as a matrix axis, and it parses
the lab's SEV-SNP and TDX command lines up to where the hardware is missing.

The root is Debian unstable's QEMU 11.1 (images/qemu/recipe.toml "sid"), built with mmdebstrap into the
cache on first use (about 15 s and 260 MB here)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from lab.toolchain import build_qemu
from lab.vm import BootSpec, qemu_argv, qemu_version
from tests.conftest import SHORT_LOAD, run_matrix_text

pytestmark = [pytest.mark.integration]

CURRENT = "sid"
# What QEMU says when it has parsed everything and the host lacks the hardware: KVM, or the VM type.
HARDWARE_MISSING = re.compile(
    r"vm-type (SEV-SNP|TDX) not supported by KVM|Could not access KVM kernel module|failed to initialize kvm"
)
# What it says about a command line it cannot take.
ARGV_REJECTED = re.compile(r"Invalid parameter|Parameter '.*' (is missing|does not accept)|not found|unknown")


def coco_argv(platform: str, tmp_path: Path) -> list[str]:
    root = build_qemu(CURRENT)
    firmware = {"sev-snp": "OVMF.amdsev.fd", "tdx": "OVMF.inteltdx.ms.fd"}[platform]
    for name in ("bzImage", "initrd", "disk"):
        (tmp_path / name).write_bytes(b"\0" * 4096)
    spec = BootSpec(
        tmp_path / "bzImage",
        tmp_path / "initrd",
        "AAAA",
        swiotlb_nslabs=1024,
        accel=platform,  # type: ignore[arg-type]
        firmware=root.firmware(firmware),
        cbitpos=51 if platform == "sev-snp" else None,
    )
    console, qmp, disk = tmp_path / "console.log", tmp_path / "qmp.sock", tmp_path / "disk"
    argv = qemu_argv(
        spec, accel=platform, ssh_port=2222, console=console, qmp=qmp, disk_images=(disk,), qemu=str(root.qemu)
    )
    return list(argv)


@pytest.mark.parametrize(
    ("platform", "misspelt"),
    [
        ("sev-snp", ("kernel-hashes=on", "kernel-hashes=on,kernel-hashez=on")),
        ("tdx", ("tdx-guest,id=tdx0", "tdx-guest,id=tdx0,sept-ve-disablez=on")),
    ],
)
def test_the_coco_argv_is_refused_only_for_the_missing_hardware(
    platform: str, misspelt: tuple[str, str], tmp_path: Path
) -> None:
    argv = coco_argv(platform, tmp_path)
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode != 0  # nothing here runs an SEV-SNP or TDX guest
    assert HARDWARE_MISSING.search(proc.stderr), proc.stderr
    assert not ARGV_REJECTED.search(proc.stderr), proc.stderr
    # The control: the same QEMU names a property it does not know before it looks for hardware, so the
    # message above means every property and object of the lab's command line was taken.
    wrong = [a.replace(*misspelt) for a in argv]
    proc = subprocess.run(wrong, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode != 0 and ARGV_REJECTED.search(proc.stderr), proc.stderr
    assert not HARDWARE_MISSING.search(proc.stderr), proc.stderr


MATRIX = (
    """
[matrix]
kernels = ["static"]
pools = ["2MiB"]
workloads = ["a"]
qemu = ["host", "sid"]
vcpus = [2]
observe = "none"
"""
    + SHORT_LOAD
)


@pytest.mark.kernels("static")
def test_a_matrix_runs_the_same_cell_on_the_hosts_qemu_and_a_current_one(tmp_path: Path) -> None:
    _, rows = run_matrix_text(MATRIX, tmp_path)
    rows = rows.set_index("qemu_toolchain")
    assert sorted(rows.index) == ["host", "sid"] and (rows["status"] == "ok").all() and (rows["hiwater"] > 0).all()
    assert rows.loc["host", "qemu_version"] == qemu_version()  # the host's own (Debian 12: 7.2)
    assert rows.loc["sid", "qemu_version"] == "11.1.3"  # the root's, pinned in images/qemu/recipe.toml
    assert rows["boot_id"].nunique() == 2  # a QEMU per boot
    assert "toolchains/qemu-sid-" in rows.loc["sid", "qemu"]
