"""Host preflight: which platforms (tcg, kvm, sev-snp, tdx) a host can offer, and why not.

The checks read a host through a small ``HostView`` (files, device access,
commands), so the same code runs on this machine, on a remote host over SSH,
and on a fake sysfs tree in the tests.  Parsers are pure functions of text.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from lab.errors import ConfigError
from lab.platforms import PLATFORMS

SNP_PARAM = "/sys/module/kvm_amd/parameters/sev_snp"
TDX_PARAM = "/sys/module/kvm_intel/parameters/tdx"
KVM_DEVICE = "/dev/kvm"
# CPUID leaf 0x8000001f through the cpuid driver (the file offset is the leaf): EAX EBX ECX EDX.
CPUID_SEV_COMMAND = "dd if=/dev/cpu/0/cpuid bs=16 count=1 skip=2147483679 iflag=skip_bytes 2>/dev/null | od -An -tx4"


ENV_QEMU = "SWIOTLB_LAB_QEMU"
ENV_CBITPOS = "SWIOTLB_LAB_CBITPOS"
ENV_FIRMWARE_PREFIX = "SWIOTLB_LAB_FIRMWARE_"  # + the platform's name in capitals, "-" as "_"


def firmware_env(platform: str) -> str:
    """The environment variable naming a platform's OVMF image on a host: SWIOTLB_LAB_FIRMWARE_SEV_SNP."""
    return ENV_FIRMWARE_PREFIX + platform.upper().replace("-", "_")


@dataclass(frozen=True)
class HostSettings:
    """What only the host that runs QEMU knows: its QEMU, its firmware per platform, its C-bit position.

    A host's own settings travel as its environment (``SWIOTLB_LAB_QEMU``, ``SWIOTLB_LAB_FIRMWARE_<PLATFORM>``,
    ``SWIOTLB_LAB_CBITPOS``): set by the controller when it starts a worker over SSH from hosts.toml, by a
    worker's systemd unit, or by the user of a local run.  A worker reads them on its own host; the
    controller's values never reach another host."""

    qemu: str = "qemu-system-x86_64"
    firmware: Mapping[str, str] = field(default_factory=dict, hash=False)
    cbitpos: int | None = None

    @classmethod
    def from_environment(cls, env: Mapping[str, str] | None = None) -> HostSettings:
        env = os.environ if env is None else env
        firmware = {name: env[firmware_env(name)] for name in PLATFORMS if env.get(firmware_env(name))}
        cbitpos = None
        if env.get(ENV_CBITPOS):
            try:
                cbitpos = int(env[ENV_CBITPOS], 0)
            except ValueError:
                raise ConfigError(
                    f"{ENV_CBITPOS}={env[ENV_CBITPOS]!r} is not a number: give the SEV C-bit position, e.g. 51"
                ) from None
        return cls(env.get(ENV_QEMU) or cls.qemu, firmware, cbitpos)

    def environment(self) -> dict[str, str]:
        """These settings as the environment a worker on that host is started with."""
        env = {ENV_QEMU: self.qemu}
        env.update({firmware_env(name): path for name, path in sorted(self.firmware.items())})
        if self.cbitpos is not None:
            env[ENV_CBITPOS] = str(self.cbitpos)
        return env

    def describe(self) -> dict[str, str]:
        """Provenance: each firmware image by path and content hash (an OVMF build has no version string)."""
        from lab.util import sha256_file

        facts = {}
        for name, path in sorted(self.firmware.items()):
            try:
                facts[f"firmware_{name}"] = f"{path} (sha256 {sha256_file(Path(path))[:16]})"
            except OSError as exc:
                facts[f"firmware_{name}"] = f"{path} (unreadable: {exc.strerror})"
        return facts


@functools.lru_cache(maxsize=8)
def local_preflight(settings: HostSettings) -> Preflight:
    """This machine's preflight with its own settings (once per process and settings: a worker runs many
    groups)."""
    return preflight(LocalView(), qemu=settings.qemu, firmware=dict(settings.firmware), cbitpos=settings.cbitpos)


class HostView(Protocol):
    """How preflight reads a host."""

    def read(self, path: str) -> str | None: ...  # a file's text, or None if it cannot be read
    def exists(self, path: str) -> bool: ...
    def accessible(self, path: str) -> bool: ...  # readable and writable by the lab's user
    def run(self, argv: Sequence[str]) -> str | None: ...  # stdout of a command, None if it failed


@dataclass(frozen=True)
class LocalView:
    """This machine, with every absolute path taken under ``root`` (a fake tree in tests)."""

    root: Path = Path("/")

    def _path(self, path: str) -> Path:
        return self.root / path.lstrip("/")

    def read(self, path: str) -> str | None:
        try:
            return self._path(path).read_text(errors="replace")
        except OSError:
            return None

    def exists(self, path: str) -> bool:
        return self._path(path).exists()

    def accessible(self, path: str) -> bool:
        return os.access(self._path(path), os.R_OK | os.W_OK)

    def run(self, argv: Sequence[str]) -> str | None:
        try:
            proc = subprocess.run(
                list(argv), capture_output=True, text=True, timeout=30, check=False, stdin=subprocess.DEVNULL
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return proc.stdout if proc.returncode == 0 else None


def param_enabled(text: str | None) -> bool:
    """A kvm module parameter file ("Y"/"N", or "1"/"0")."""
    return text is not None and text.strip() in ("Y", "y", "1")


def qemu_version(text: str | None) -> tuple[int, int] | None:
    """(major, minor) from `qemu-system-x86_64 --version`."""
    match = re.search(r"version (\d+)\.(\d+)", text or "")
    return (int(match.group(1)), int(match.group(2))) if match else None


def qemu_objects(text: str | None) -> set[str]:
    """Object types from `qemu-system-x86_64 -object help` (one per line after the header)."""
    return {line.strip() for line in (text or "").splitlines()[1:] if line.strip()}


def cbitpos_from_cpuid(text: str | None) -> int | None:
    """The SEV C-bit position, CPUID 0x8000001f EBX[5:0], from `od -An -tx4` of the leaf's 16 bytes."""
    words = (text or "").split()
    if len(words) != 4:
        return None
    eax, ebx = int(words[0], 16), int(words[1], 16)
    if not eax & 0b10:  # EAX bit 1: SEV supported; without it EBX means nothing
        return None
    return ebx & 0x3F


@dataclass(frozen=True)
class Check:
    what: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class Preflight:
    """What a host offers: every check, and per platform "" (offered) or the reason it is not."""

    checks: tuple[Check, ...]
    offered: dict[str, str]
    qemu_version: str = ""
    cbitpos: int | None = None
    facts: dict[str, str] = field(default_factory=dict)

    def offers(self, platform: str) -> bool:
        return self.offered.get(platform) == ""


def preflight(
    view: HostView,
    *,
    qemu: str = "qemu-system-x86_64",
    firmware: dict[str, str] | None = None,
    cbitpos: int | None = None,
) -> Preflight:
    """Check a host.  ``firmware`` maps a platform to its OVMF image path on that host; ``cbitpos``
    overrides the C-bit position read from CPUID (e.g. where the cpuid driver is not loaded)."""
    firmware = firmware or {}
    checks: list[Check] = []

    def check(what: str, ok: bool, detail: str) -> bool:
        checks.append(Check(what, ok, detail))
        return ok

    version_text = view.run([qemu, "--version"])
    version = qemu_version(version_text)
    found = f"{qemu} {version[0]}.{version[1]}" if version else f"{qemu} not found or not working"
    has_qemu = check("QEMU", version is not None, found)
    objects = qemu_objects(view.run([qemu, "-object", "help"])) if has_qemu else set()
    kvm = check(
        "KVM device",
        view.accessible(KVM_DEVICE),
        f"{KVM_DEVICE} " + ("readable and writable" if view.accessible(KVM_DEVICE) else "missing or not accessible"),
    )
    snp = check(
        "SEV-SNP in KVM",
        param_enabled(view.read(SNP_PARAM)),
        f"{SNP_PARAM} = {(view.read(SNP_PARAM) or 'absent').strip()}",
    )
    tdx = check(
        "TDX in KVM", param_enabled(view.read(TDX_PARAM)), f"{TDX_PARAM} = {(view.read(TDX_PARAM) or 'absent').strip()}"
    )
    if cbitpos is None and snp:
        cbitpos = cbitpos_from_cpuid(view.run(["sh", "-c", CPUID_SEV_COMMAND]))
    enabled = {"kvm": kvm, "sev-snp": snp, "tdx": tdx}

    offered: dict[str, str] = {}
    for name, launch in PLATFORMS.items():
        reasons = []
        if not has_qemu:
            reasons.append(f"{qemu} not found")
        elif version is not None and version < launch.min_qemu:
            reasons.append(
                f"needs QEMU >= {launch.min_qemu[0]}.{launch.min_qemu[1]}, host has {version[0]}.{version[1]}"
            )
        reasons += [f"{need} not enabled on the host" for need in launch.needs if not enabled[need]]
        if name == "sev-snp" and has_qemu and "sev-snp-guest" not in objects:
            reasons.append("QEMU lacks the sev-snp-guest object")
        if name == "tdx" and has_qemu and "tdx-guest" not in objects:
            reasons.append("QEMU lacks the tdx-guest object")
        if launch.needs_firmware:
            path = firmware.get(name)
            if not path:
                reasons.append(
                    f"no {name} firmware configured (hosts.toml firmware.{name}, or {firmware_env(name)} on the host)"
                )
            elif not view.exists(path):
                reasons.append(f"firmware {path} not found")
        if name == "sev-snp" and cbitpos is None and snp:
            reasons.append("C-bit position unknown (load the cpuid module, or set cbitpos in hosts.toml)")
        offered[name] = "; ".join(reasons)
    for name, path in sorted(firmware.items()):
        check(f"firmware {name}", view.exists(path), path)
    facts = {
        "qemu_version": f"{version[0]}.{version[1]}" if version else "",
        "host_kernel": (view.run(["uname", "-r"]) or "").strip(),
    }
    return Preflight(tuple(checks), offered, facts["qemu_version"], cbitpos, facts)
