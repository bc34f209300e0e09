"""Launch profiles: how QEMU runs a guest on each platform (tcg, kvm, sev-snp, tdx), as argv pieces.

One small class per platform, chosen from ``PLATFORMS`` by name; ``vm.qemu_argv``
asks the profile for the machine, accelerator, CPU, memory and firmware
arguments and never asks which platform it has.  Sources for the CoCo
command lines: QEMU's docs/system/i386/amd-memory-encryption.rst (SEV-SNP,
QEMU >= 9.1) and docs/system/i386/tdx.rst (TDX, QEMU >= 10.1).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lab.errors import ConfigError

AUTO = "auto"  # kvm where a KVM boot probe succeeds, else tcg (decided per host)


def _opt(path: Path | str) -> str:
    """QEMU option values escape commas by doubling them."""
    return str(path).replace(",", ",,")


@dataclass(frozen=True)
class LaunchProfile:
    """A plain guest: q35, the given accelerator, direct kernel boot (SeaBIOS, or OVMF if given)."""

    name: str
    accel: str
    cpu: str
    min_qemu: tuple[int, int] = (7, 2)
    needs: tuple[str, ...] = ()  # host capabilities (lab.preflight) this platform requires
    encryption: str = ""  # what the guest's "Memory Encryption Features active" banner must name
    needs_firmware: bool = False  # a CoCo guest cannot boot without its OVMF build

    @property
    def coco(self) -> bool:
        return bool(self.encryption)

    def machine_args(self, memory_mib: int, firmware: Path | None, cbitpos: int | None) -> list[str]:
        args = ["-machine", "q35", "-accel", self.accel, "-cpu", self.cpu, "-m", f"{memory_mib}M"]
        return args + (["-bios", _opt(firmware)] if firmware else [])


@dataclass(frozen=True)
class SevSnpProfile(LaunchProfile):
    """AMD SEV-SNP: guest memory in a shared memfd backend, the sev-snp-guest object with the host's
    C-bit position, kernel hashes measured by OVMF's AmdSev build (direct kernel boot); no SMM."""

    def machine_args(self, memory_mib: int, firmware: Path | None, cbitpos: int | None) -> list[str]:
        if firmware is None or cbitpos is None:
            raise ConfigError(
                "an SEV-SNP guest needs the host's OVMF AmdSev build and its C-bit position "
                "(CPUID 0x8000001f EBX[5:0]); see hosts.toml"
            )
        return [
            "-machine",
            "q35,confidential-guest-support=sev0,memory-backend=ram0,smm=off",
            "-accel",
            self.accel,
            "-cpu",
            self.cpu,
            "-m",
            f"{memory_mib}M",
            "-object",
            f"memory-backend-memfd,id=ram0,size={memory_mib}M,share=true,reserve=false",
            "-object",
            f"sev-snp-guest,id=sev0,cbitpos={cbitpos},reduced-phys-bits=1,kernel-hashes=on",
            "-bios",
            _opt(firmware),
        ]


@dataclass(frozen=True)
class TdxProfile(LaunchProfile):
    """Intel TDX: the tdx-guest object, a split irqchip, TDVF (OVMF) loaded with -bios; no SMM."""

    def machine_args(self, memory_mib: int, firmware: Path | None, cbitpos: int | None) -> list[str]:
        if firmware is None:
            raise ConfigError("a TDX guest needs the host's TDVF/OVMF build; see hosts.toml")
        return [
            "-machine",
            "q35,confidential-guest-support=tdx0,kernel-irqchip=split,smm=off",
            "-accel",
            self.accel,
            "-cpu",
            self.cpu,
            "-m",
            f"{memory_mib}M",
            "-object",
            "tdx-guest,id=tdx0",
            "-bios",
            _opt(firmware),
        ]


PLATFORMS: dict[str, LaunchProfile] = {
    "tcg": LaunchProfile("tcg", "tcg,thread=multi,tb-size=256", "max"),
    "kvm": LaunchProfile("kvm", "kvm", "host", needs=("kvm",)),
    "sev-snp": SevSnpProfile(
        "sev-snp", "kvm", "host", min_qemu=(9, 1), needs=("kvm", "sev-snp"), encryption="SEV-SNP", needs_firmware=True
    ),
    "tdx": TdxProfile(
        "tdx", "kvm", "host", min_qemu=(10, 1), needs=("kvm", "tdx"), encryption="TDX", needs_firmware=True
    ),
}
PLATFORM_NAMES = (AUTO, *PLATFORMS)


def profile(name: str) -> LaunchProfile:
    try:
        return PLATFORMS[name]
    except KeyError:
        raise ConfigError(f"unknown platform {name!r}; valid: {', '.join(PLATFORM_NAMES)}") from None


def encryption_matches(platform: str, banner: str) -> bool:
    """Whether the guest kernel's memory-encryption banner shows the platform's encryption
    ("AMD SEV SEV-ES SEV-SNP" for sev-snp, "Intel TDX" for tdx); plain platforms expect none."""
    expected = PLATFORMS[platform].encryption if platform in PLATFORMS else ""
    if not expected:
        return True
    return expected in banner.split()
