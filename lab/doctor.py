"""What `doctor` finds: this host's packages, whether KVM boots a guest, and the platforms it offers; or the
same for every host of an inventory, over SSH.  Returns findings; the command line prints them."""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path

from lab.errors import LabError
from lab.host import REQUIREMENTS
from lab.hosts import load_hosts, probe_host
from lab.preflight import HostSettings
from lab.util import cache_dir
from lab.vm import LocalHypervisor

PLATFORM_COLUMNS = ("tcg", "kvm", "sev-snp", "tdx")


@dataclass(frozen=True)
class Requirement:
    what: str
    package: str
    present: bool


@dataclass
class LocalDoctor:
    """This host: its requirements, what it learnt about KVM (one line per step), and each platform with why it
    is not offered ("" if it is)."""

    requirements: list[Requirement]
    kvm: list[str] = field(default_factory=list)
    platforms: dict[str, str] = field(default_factory=dict)
    qemus: dict[str, str] = field(default_factory=dict)  # "host" and each toolchain root: version and where

    @property
    def missing_packages(self) -> list[str]:
        return sorted({r.package for r in self.requirements if not r.present})


def check_local(busy: Callable[[str], AbstractContextManager[object]]) -> LocalDoctor:
    """Check this host; where /dev/kvm is usable and the packages are there, boot Debian's stock kernel under
    KVM to learn whether it really works (a PVM host's /dev/kvm does not boot normal guests)."""
    found = LocalDoctor([Requirement(r.what, r.package, r.present()) for r in REQUIREMENTS])
    kvm_probe = ""  # why KVM does not work although its device is there, if a probe boot found out
    kvm = Path("/dev/kvm")
    if not kvm.exists():
        found.kvm.append("KVM: /dev/kvm does not exist → guests will run under TCG")
    elif not os.access(kvm, os.R_OK | os.W_OK):
        found.kvm.append("KVM: /dev/kvm is not accessible to this user → guests will run under TCG")
    elif not found.missing_packages:
        from lab.bench import lab_context
        from lab.matrix import load_matrix
        from lab.runner import boot_spec

        found.kvm.append("KVM: /dev/kvm is present; probing by booting a guest under KVM ...")
        hypervisor = LocalHypervisor()
        ctx = lab_context(hypervisor, ("stock",), "auto", busy=busy)
        accel = hypervisor.resolve_accel(boot_spec(ctx, load_matrix("stock").cells[0]), cache_dir() / "doctor")
        found.kvm.append(f"KVM: guests will run under {accel} ({hypervisor.probe_note})")
        if accel != "kvm":
            kvm_probe = f"a KVM boot probe failed on this host ({hypervisor.probe_note})"
    # What a local run can offer, with this machine's own settings (SWIOTLB_LAB_QEMU, SWIOTLB_LAB_FIRMWARE_*,
    # SWIOTLB_LAB_CBITPOS): the same preflight doctor --hosts runs over SSH.
    settings = HostSettings.from_environment()
    offered = LocalHypervisor(settings.qemu, dict(settings.firmware), settings.cbitpos).capabilities()
    if kvm_probe:
        offered["kvm"] = kvm_probe
    found.platforms = {p: offered.get(p, "unknown platform") for p in PLATFORM_COLUMNS}
    found.qemus = qemus(settings.qemu)
    return found


def qemus(host_qemu: str) -> dict[str, str]:
    """Every QEMU a matrix can name (its ``qemu`` axis): the host's, and each toolchain root, built or not."""
    from lab.toolchain import HOST, built, recipes
    from lab.vm import qemu_version

    try:
        found = {HOST: f"{qemu_version(host_qemu)} ({host_qemu})"}
    except LabError as exc:
        found = {HOST: f"not working: {exc}"}
    for name in recipes():
        root = built(name)
        found[name] = (
            f"{root.packages.get('qemu-system-x86', '?')} ({root.qemu})"
            if root
            else f"not built yet (python -m lab build qemu {name}, or the first run that names it)"
        )
    return found


@dataclass(frozen=True)
class HostRow:
    """One host of an inventory: reachable or why not, what it runs, each platform offered or why not, and
    what the inventory claims for it that it does not offer."""

    name: str
    unreachable: str = ""
    ssh: str = ""
    qemu: str = ""
    host_kernel: str = ""
    platforms: dict[str, str] = field(default_factory=dict)
    not_as_claimed: tuple[str, ...] = ()

    @property
    def healthy(self) -> bool:
        return not self.unreachable and not self.not_as_claimed


def check_hosts(path: Path) -> list[HostRow]:
    """Probe every host of an inventory over SSH."""
    rows = []
    for host in load_hosts(path).values():
        report = probe_host(host)
        if report.result is None:
            rows.append(HostRow(host.name, unreachable=report.reachable or "unreachable"))
            continue
        result = report.result
        rows.append(
            HostRow(
                host.name,
                ssh=f"{host.user}@{host.address}:{host.port}",
                qemu=result.qemu_version or "-",
                host_kernel=result.facts.get("host_kernel", ""),
                platforms={p: "" if result.offers(p) else result.offered[p] for p in PLATFORM_COLUMNS},
                not_as_claimed=tuple(report.mismatches()),
            )
        )
    return rows
