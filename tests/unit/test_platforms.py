"""Launch profiles against QEMU's documentation, and host preflight on fake sysfs trees."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from lab.errors import ConfigError
from lab.hosts import Host
from lab.platforms import encryption_matches, profile
from lab.preflight import CPUID_SEV_COMMAND, HostSettings, LocalView, cbitpos_from_cpuid, preflight
from lab.vm import BootSpec, qemu_argv

DATA = Path(__file__).resolve().parent.parent / "data"
OBJECTS_72 = (DATA / "qemu-7.2-object-help.txt").read_text()
VERSION_72 = (DATA / "qemu-7.2-version.txt").read_text()


def argv(platform: str, **spec: object) -> tuple[str, ...]:
    boot = BootSpec(Path("/k/bzImage"), Path("/k/initrd"), "AAAAkey", memory_mib=2048, **spec)  # type: ignore[arg-type]
    return qemu_argv(
        boot,
        accel=platform,
        ssh_port=40022,
        console=Path("/w/console.log"),
        qmp=Path("/w/q.sock"),
        disk_images=(Path("/w/disk0.raw"),),
    )


def segment(args: tuple[str, ...], start: str, length: int) -> list[str]:
    at = args.index(start)
    return list(args[at : at + length])


def test_sev_snp_argv_follows_qemus_amd_memory_encryption_document() -> None:
    # docs/system/i386/amd-memory-encryption.rst (QEMU >= 9.1): memfd backend shared with the host,
    # the sev-snp-guest object with the host's C-bit, kernel hashes for direct kernel boot, OVMF AmdSev.
    args = argv("sev-snp", firmware=Path("/fw/OVMF.amdsev.fd"), cbitpos=51)
    assert segment(args, "-machine", 14) == [
        "-machine",
        "q35,confidential-guest-support=sev0,memory-backend=ram0,smm=off",
        "-accel",
        "kvm",
        "-cpu",
        "host",
        "-m",
        "2048M",
        "-object",
        "memory-backend-memfd,id=ram0,size=2048M,share=true,reserve=false",
        "-object",
        "sev-snp-guest,id=sev0,cbitpos=51,reduced-phys-bits=1,kernel-hashes=on",
        "-bios",
        "/fw/OVMF.amdsev.fd",
    ]
    assert "-kernel" in args and "-initrd" in args  # direct kernel boot, measured through kernel-hashes


def test_tdx_argv_follows_qemus_tdx_document() -> None:
    # docs/system/i386/tdx.rst (QEMU >= 10.1): -accel kvm -cpu host -object tdx-guest, split irqchip, -bios TDVF.
    args = argv("tdx", firmware=Path("/fw/OVMF.tdx.fd"))
    assert segment(args, "-machine", 12) == [
        "-machine",
        "q35,confidential-guest-support=tdx0,kernel-irqchip=split,smm=off",
        "-accel",
        "kvm",
        "-cpu",
        "host",
        "-m",
        "2048M",
        "-object",
        "tdx-guest,id=tdx0",
        "-bios",
        "/fw/OVMF.tdx.fd",
    ]


def test_plain_guests_boot_through_ovmf_when_given_firmware() -> None:
    args = argv("tcg", firmware=Path("/usr/share/ovmf/OVMF.fd"))
    assert segment(args, "-bios", 2) == ["-bios", "/usr/share/ovmf/OVMF.fd"]
    assert "-bios" not in argv("tcg")  # SeaBIOS by default


@pytest.mark.parametrize(
    ("platform", "spec", "message"),
    [
        pytest.param("sev-snp", {"cbitpos": 51}, "OVMF AmdSev build", id="snp-without-firmware"),
        pytest.param("sev-snp", {"firmware": Path("/fw")}, "C-bit position", id="snp-without-cbitpos"),
        pytest.param("tdx", {}, "TDVF", id="tdx-without-firmware"),
    ],
)
def test_coco_platforms_refuse_to_launch_without_what_they_need(
    platform: str, spec: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        argv(platform, **spec)


def test_unknown_platform_names_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match="valid: auto, tcg, kvm, sev-snp, tdx"):
        profile("sev")


@pytest.mark.parametrize(
    ("platform", "banner", "ok"),
    [
        pytest.param("sev-snp", "AMD SEV SEV-ES SEV-SNP", True, id="snp-guest"),
        pytest.param("sev-snp", "AMD SEV SEV-ES", False, id="sev-es-is-not-snp"),
        pytest.param("sev-snp", "none", False, id="plain-guest-on-snp"),
        pytest.param("tdx", "Intel TDX", True, id="tdx-guest"),
        pytest.param("tdx", "none", False, id="plain-guest-on-tdx"),
        pytest.param("tcg", "none", True, id="plain"),
    ],
)
def test_the_guest_must_report_its_platforms_memory_encryption(platform: str, banner: str, ok: bool) -> None:
    assert encryption_matches(platform, banner) is ok


# --- preflight -------------------------------------------------------------------------------


@dataclass(frozen=True)
class FakeHost(LocalView):
    """Files from a fake tree under ``root``; commands answered from captured outputs."""

    outputs: dict[str, str] = field(default_factory=dict)

    def run(self, argv: Sequence[str]) -> str | None:
        return self.outputs.get(" ".join(argv))

    def accessible(self, path: str) -> bool:
        return self.exists(path)


def fake_host(
    tmp_path: Path,
    *,
    files: dict[str, str],
    version: str = VERSION_72,
    objects: str = OBJECTS_72,
    cpuid: str | None = None,
) -> FakeHost:
    for name, text in files.items():
        path = tmp_path / name.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    outputs = {
        "qemu-system-x86_64 --version": version,
        "qemu-system-x86_64 -object help": objects,
        "uname -r": "6.12.0\n",
    }
    if cpuid is not None:
        outputs["sh -c " + CPUID_SEV_COMMAND] = cpuid
    return FakeHost(tmp_path, outputs)


SNP_HOST = {"/dev/kvm": "", "/sys/module/kvm_amd/parameters/sev_snp": "Y\n", "/fw/OVMF.amdsev.fd": "x"}
# EAX 0x0001b59f: SEV (bit 1), SEV-ES (bit 3), SNP (bit 4) among others; EBX 0x4173: C-bit 51 (0x33) in bits 5:0.
CPUID_SNP = " 0001b59f 00004173 000001fd 00000080\n"


def test_this_machine_offers_tcg_and_names_what_is_missing_for_coco(tmp_path: Path) -> None:
    result = preflight(fake_host(tmp_path, files={"/dev/kvm": ""}))
    assert result.offers("tcg") and result.offers("kvm")
    assert result.offered["sev-snp"] == (
        "needs QEMU >= 9.1, host has 7.2; sev-snp not enabled on the host; QEMU "
        "lacks the sev-snp-guest object; no sev-snp firmware configured (hosts.toml "
        "firmware.sev-snp, or SWIOTLB_LAB_FIRMWARE_SEV_SNP on the host)"
    )
    assert "needs QEMU >= 10.1" in result.offered["tdx"] and "tdx not enabled on the host" in result.offered["tdx"]


def test_an_snp_host_offers_sev_snp_with_the_c_bit_from_cpuid(tmp_path: Path) -> None:
    host = fake_host(
        tmp_path,
        files=SNP_HOST,
        version="QEMU emulator version 9.2.0\n",
        objects=OBJECTS_72 + "  sev-snp-guest\n",
        cpuid=CPUID_SNP,
    )
    result = preflight(host, firmware={"sev-snp": "/fw/OVMF.amdsev.fd"})
    assert result.offered["sev-snp"] == "" and result.cbitpos == 51
    assert not result.offers("tdx")


def test_an_snp_host_without_the_cpuid_driver_needs_cbitpos_configured(tmp_path: Path) -> None:
    host = fake_host(
        tmp_path, files=SNP_HOST, version="QEMU emulator version 9.2.0\n", objects=OBJECTS_72 + "  sev-snp-guest\n"
    )
    assert "C-bit position unknown" in preflight(host, firmware={"sev-snp": "/fw/OVMF.amdsev.fd"}).offered["sev-snp"]
    assert preflight(host, firmware={"sev-snp": "/fw/OVMF.amdsev.fd"}, cbitpos=51).offers("sev-snp")


def test_a_tdx_host_needs_qemu_10_1(tmp_path: Path) -> None:
    files = {"/dev/kvm": "", "/sys/module/kvm_intel/parameters/tdx": "Y\n", "/fw/OVMF.tdx.fd": "x"}
    old = fake_host(
        tmp_path, files=files, version="QEMU emulator version 9.2.0\n", objects=OBJECTS_72 + "  tdx-guest\n"
    )
    assert preflight(old, firmware={"tdx": "/fw/OVMF.tdx.fd"}).offered["tdx"] == "needs QEMU >= 10.1, host has 9.2"
    new = fake_host(
        tmp_path, files=files, version="QEMU emulator version 10.1.0\n", objects=OBJECTS_72 + "  tdx-guest\n"
    )
    assert preflight(new, firmware={"tdx": "/fw/OVMF.tdx.fd"}).offers("tdx")


def test_a_host_without_qemu_offers_nothing(tmp_path: Path) -> None:
    result = preflight(FakeHost(tmp_path, {}))
    assert not any(result.offers(p) for p in ("tcg", "kvm", "sev-snp", "tdx"))
    assert result.offered["tcg"] == "qemu-system-x86_64 not found"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(CPUID_SNP, 51, id="c-bit-51"),
        pytest.param(" 0001b59f 0000416f 000001fd 00000080\n", 47, id="c-bit-47"),
        pytest.param(" 00000000 00000000 00000000 00000000\n", None, id="no-sev"),
        pytest.param("", None, id="no-cpuid-driver"),
    ],
)
def test_cbitpos_from_cpuid(text: str, expected: int | None) -> None:
    assert cbitpos_from_cpuid(text) == expected


def test_every_kernel_of_a_comparison_unit_lands_on_the_same_worker() -> None:
    from lab.fanout import place
    from lab.matrix import Cell
    from lab.workload import Workload

    workers = ["snp1", "snp2", "snp3"]
    unit = [
        Cell(kernel, 1024, "nvme", Workload("w"), 2, 1024, 3, platform="sev-snp")
        for kernel in ("static", "throttle", "dynamic")
    ]
    assert len({place(cell, workers) for cell in unit}) == 1
    assert place(unit[0], workers) == place(unit[0], list(reversed(workers)))  # stable, whatever the order
    spread = {place(Cell("static", 1024, "nvme", Workload("w"), 2, 1024, rep), workers) for rep in range(30)}
    assert spread == set(workers)  # repetitions spread over the hosts


def test_a_hosts_settings_travel_as_its_environment_and_come_back_the_same(tmp_path: Path) -> None:
    firmware = tmp_path / "OVMF.amdsev.fd"
    firmware.write_bytes(b"ovmf")
    settings = HostSettings("/opt/qemu-9.2/bin/qemu-system-x86_64", {"sev-snp": str(firmware), "tdx": "/fw/td.fd"}, 51)
    env = settings.environment()
    assert env == {
        "SWIOTLB_LAB_QEMU": "/opt/qemu-9.2/bin/qemu-system-x86_64",
        "SWIOTLB_LAB_FIRMWARE_SEV_SNP": str(firmware),
        "SWIOTLB_LAB_FIRMWARE_TDX": "/fw/td.fd",
        "SWIOTLB_LAB_CBITPOS": "51",
    }
    assert HostSettings.from_environment({**env, "PATH": "/usr/bin"}) == settings
    # nothing set: Debian's QEMU on the PATH, no firmware, the C-bit from CPUID
    assert HostSettings.from_environment({}) == HostSettings("qemu-system-x86_64", {}, None)
    # provenance names each image by its content (sha256 of b"ovmf"), and says when it cannot be read
    facts = settings.describe()
    assert facts["firmware_sev-snp"] == f"{firmware} (sha256 3609e59e404f9a6d)"
    assert facts["firmware_tdx"] == "/fw/td.fd (unreadable: No such file or directory)"
    with pytest.raises(ConfigError, match=r"SWIOTLB_LAB_CBITPOS='fifty-one' is not a number"):
        HostSettings.from_environment({"SWIOTLB_LAB_CBITPOS": "fifty-one"})


def test_an_inventory_hosts_settings_are_its_own() -> None:
    host = Host("snp1", "10.0.0.5", qemu="/opt/q/qemu", cbitpos=47, firmware={"sev-snp": "/fw/snp.fd"})
    assert host.settings == HostSettings("/opt/q/qemu", {"sev-snp": "/fw/snp.fd"}, 47)
