"""Host facts: required packages (doctor), provenance of a run, and the lab's own revision."""

from __future__ import annotations

import os
import platform
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
        rev = subprocess.run(["git", "-C", repo, "rev-parse", "HEAD"], capture_output=True, text=True,
                             check=True).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "-C", repo, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
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
    }


def provenance() -> dict[str, Any]:
    return {"lab_revision": lab_revision(), "python": platform.python_version(), **host_facts()}
