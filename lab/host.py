"""Host facts: required packages (doctor), provenance of a run, and the lab's own revision."""

from __future__ import annotations

import hashlib
import os
import platform
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab.errors import HostError
from lab.vm import qemu_version


@dataclass(frozen=True)
class Requirement:
    what: str
    package: str  # the Debian package that provides it

    def present(self) -> bool:
        if self.what.startswith("/"):
            return Path(self.what).exists()
        return shutil.which(self.what) is not None


REQUIREMENTS = (
    Requirement("qemu-system-x86_64", "qemu-system-x86"),
    Requirement("qemu-img", "qemu-utils"),
    Requirement("mmdebstrap", "mmdebstrap"),
    Requirement("mkfs.ext4", "e2fsprogs"),
    Requirement("dpkg-deb", "dpkg"),
    Requirement("apt-get", "apt"),
    Requirement("depmod", "kmod"),
    Requirement("gcc", "gcc"),
    Requirement("/usr/lib/x86_64-linux-gnu/libc.a", "libc6-dev"),
    Requirement("ldconfig", "libc-bin"),
)


def missing_requirements() -> list[Requirement]:
    return [r for r in REQUIREMENTS if not r.present()]


def require_host() -> None:
    """Raise HostError naming what this host lacks and the Debian packages that provide it."""
    missing = missing_requirements()
    if missing:
        packages = " ".join(sorted({r.package for r in missing}))
        what = ", ".join(r.what for r in missing)
        raise HostError(f"missing on this host: {what}; install with: apt-get install {packages}")


def lab_revision() -> str:
    """git revision of the lab checkout, with "-dirty" if it has uncommitted changes."""
    repo = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(
            ["git", "-C", repo, "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", repo, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev + ("-dirty" if dirty else "")


def cpu_model(cpuinfo: str) -> str:
    """The first "model name" of /proc/cpuinfo's text."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            return value.strip()
    return "unknown"


_SNP_API = re.compile(r"SEV-SNP API:\s*(\S+)(?:\s+build:\s*(\S+))?")
# Kernels word the TDX module's version differently; both forms seen in public logs are read.
_TDX_MODULE = re.compile(
    r"TDX module[:\s].*?(?:major_version (\d+), minor_version (\d+)|(\d+)\.(\d+)(?:\.\d+)?)"
    r"(?:.*?build_num (\d+))?",
    re.M,
)


def coco_firmware(dmesg: str) -> str:
    """The host's SEV-SNP firmware API version or TDX module version, as its kernel logged them at boot
    (ccp: "SEV-SNP API:1.55 build:21"; virt/tdx: "TDX module: ... major_version 1, minor_version 5, ...")."""
    found = []
    if match := _SNP_API.search(dmesg):
        found.append(f"SEV-SNP API {match.group(1)}" + (f" build {match.group(2)}" if match.group(2) else ""))
    if match := _TDX_MODULE.search(dmesg):
        major, minor = (match.group(1), match.group(2)) if match.group(1) else (match.group(3), match.group(4))
        found.append(f"TDX module {major}.{minor}" + (f" build {match.group(5)}" if match.group(5) else ""))
    return "; ".join(found)


def host_facts(qemu: str = "qemu-system-x86_64") -> dict[str, Any]:
    """The machine a cell ran on: every row carries these (on a Dask worker, the worker's own)."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        cpuinfo = ""
    return {
        "host_id": platform.node(),
        "host": platform.node(),
        "host_kernel": platform.release(),
        "host_cpus": os.cpu_count(),
        "cpu_model": cpu_model(cpuinfo),
        "qemu_version": qemu_version(qemu),
        "coco_firmware": coco_firmware(_dmesg()),
    }


def _dmesg() -> str:
    try:  # root on a lab host; elsewhere the kernel may refuse, and the firmware stays unknown
        return subprocess.run(["dmesg"], capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""


def lab_diff_digest() -> str:
    """sha256 of the checkout's uncommitted changes to tracked files ("" for a clean tree): two runs of one
    dirty revision ran the same code only if this matches too."""
    repo = Path(__file__).resolve().parent.parent
    try:
        diff = subprocess.run(["git", "-C", repo, "diff", "HEAD"], capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return ""
    return hashlib.sha256(diff).hexdigest() if diff else ""


def provenance(qemu: str = "qemu-system-x86_64") -> dict[str, Any]:
    return {
        "lab_revision": lab_revision(),
        "lab_diff_sha256": lab_diff_digest(),
        "python": platform.python_version(),
        **host_facts(qemu),
    }
