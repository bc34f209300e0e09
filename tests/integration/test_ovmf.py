"""Every lab kernel configuration boots through OVMF (the EFI path SEV-SNP and TDX guests take), here
under TCG.

One variant per distinct set of config fragments: the EFI boot path depends on the kernel's
configuration, not on the swiotlb patches, and variants that share their fragments (throttle,
throttle-nopoll, throttle-v2; throttle-dynamic, throttle-v2-dynamic) get the same configuration.  The
first of each set in variants.toml stands for it, or the one other tests build anyway (PREFERRED), which
keeps a fresh machine from building kernels for this test alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab import probes
from lab.guest import Guest
from lab.image import GuestImage, initrd_for
from lab.kernel import build_kernel, load_variants
from lab.keys import KeyPair
from lab.parse import parse_debugfs
from lab.util import cache_dir
from lab.vm import BootSpec, LocalHypervisor

pytestmark = pytest.mark.integration

OVMF = Path("/usr/share/ovmf/OVMF.fd")  # Debian's ovmf package (make setup installs it)


# test_series_v2 builds it for the growing pool's limit
PREFERRED = frozenset({"throttle-v2-dynamic"})


def one_per_configuration() -> list[str]:
    chosen: dict[tuple[str, ...], str] = {}
    for name, variant in load_variants().items():
        fragments = tuple(f.name for f in variant.fragments)
        if name in PREFERRED:
            chosen[fragments] = name
        else:
            chosen.setdefault(fragments, name)
    return sorted(chosen.values())


def test_the_chosen_variants_cover_every_configuration() -> None:
    variants = load_variants()
    covered = {tuple(f.name for f in variants[name].fragments) for name in one_per_configuration()}
    assert covered == {tuple(f.name for f in v.fragments) for v in variants.values()}
    assert {"static", "dynamic", "throttle", "throttle-v2-dynamic", "throttle-v2-debug"} == set(one_per_configuration())


@pytest.mark.parametrize("variant", [pytest.param(v, marks=pytest.mark.kernels(v)) for v in one_per_configuration()])
def test_a_lab_kernel_boots_through_ovmf(
    variant: str, guest_image: GuestImage, lab_key: KeyPair, hypervisor: LocalHypervisor, tmp_path: Path
) -> None:
    if not OVMF.exists():
        pytest.skip(f"{OVMF} missing: install the Debian package ovmf (make setup does)")
    kernel = build_kernel(variant)
    spec = BootSpec(
        kernel.bzimage,
        initrd_for(guest_image, kernel.modules_dir, kernel.boot_modules, cache_dir()),
        lab_key.public_blob,
        swiotlb_nslabs=1024,
        accel="tcg",
        firmware=OVMF,
        disks=(),
    )
    with hypervisor.boot(spec, tmp_path) as vm:
        assert "-bios" in vm.argv and str(OVMF) in vm.argv
        with Guest(vm.endpoint, lab_key.private_path, guest_image.host_key_blob) as guest:
            guest.connect(alive=vm.check_alive)
            platform = probes.read_platform(guest)
            efi = guest.run("ls /sys/firmware/efi >/dev/null && echo efi; dmesg | grep -m1 'efi: EFI v'", timeout_s=30)
            counters = parse_debugfs(probes.read_debugfs(guest), source="guest debugfs")
        console = vm.console_text()
    assert platform.cpus == spec.vcpus and platform.memory_encryption == "none"
    assert efi.stdout.startswith("efi\n"), "the kernel did not boot as an EFI application"
    assert "efi: EFI v" in efi.stdout  # OVMF's EFI system table, as the kernel saw it
    assert "EFI stub:" in console  # OVMF started the kernel through its EFI stub
    # The requested pool, forced: virtio-net's receive buffers already bounce through it.
    assert counters["io_tlb_nslabs"] == 1024 and (counters["io_tlb_used"] or 0) > 0
