"""The QEMU command line, checked without booting."""

from __future__ import annotations

import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from lab.errors import ConfigError
from lab.vm import BootSpec, Disk, LocalHypervisor, Machine, console_excerpt, qemu_argv


def spec(**changes: object) -> BootSpec:
    base: dict[str, object] = {"kernel": Path("/k/bzImage"), "initrd": Path("/k/initrd"), "ssh_key_blob": "AAAAkey"}
    base.update(changes)
    return BootSpec(**base)  # type: ignore[arg-type]


def argv(s: BootSpec, accel: str = "tcg") -> tuple[str, ...]:
    return qemu_argv(
        s,
        accel=accel,
        ssh_port=40022,
        console=Path("/w/console.log"),
        qmp=Path("/w/q.sock"),
        disk_images=tuple(Path(f"/w/disk{i}.raw") for i in range(len(s.disks))),
    )


def value_after(args: tuple[str, ...], flag: str) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args) if a == flag]


def test_cmdline_forces_bounce_buffering_with_the_requested_pool() -> None:
    cmdline = spec(swiotlb_nslabs=1024).cmdline().split()
    assert "swiotlb=1024,force" in cmdline
    assert "console=ttyS0" in cmdline and "panic=-1" in cmdline
    assert "lab.ssh_key=AAAAkey" in cmdline


def test_ssh_is_forwarded_on_loopback_only_and_guest_network_is_restricted() -> None:
    [netdev] = value_after(argv(spec()), "-netdev")
    assert "hostfwd=tcp:127.0.0.1:40022-:22" in netdev
    assert "restrict=on" in netdev


def test_virtio_devices_use_the_dma_api_so_they_bounce() -> None:
    devices = value_after(argv(spec(disks=(Disk("virtio-blk"),))), "-device")
    virtio = [d for d in devices if d.startswith("virtio")]
    assert len(virtio) == 2
    assert all("iommu_platform=on" in d and "disable-legacy=on" in d for d in virtio)


def test_device_under_test_is_emulated_nvme_by_default() -> None:
    args = argv(spec())
    assert any(d.startswith("nvme,drive=dut0") for d in value_after(args, "-device"))
    assert value_after(args, "-drive")[0].startswith("file=/w/disk0.raw,if=none,id=dut0,format=raw")


@pytest.mark.parametrize(("accel", "cpu"), [("tcg", "max"), ("kvm", "host")])
def test_accelerator_profiles(accel: str, cpu: str) -> None:
    args = argv(spec(), accel)
    assert value_after(args, "-accel")[0].startswith(accel)
    assert value_after(args, "-cpu") == [cpu]


def test_qmp_socket_and_serial_file_and_no_reboot() -> None:
    args = argv(spec())
    assert value_after(args, "-qmp") == ["unix:/w/q.sock,server=on,wait=off"]
    assert value_after(args, "-serial") == ["file:/w/console.log"]
    assert "-no-reboot" in args


def test_commas_in_paths_are_escaped_for_qemu() -> None:
    args = qemu_argv(
        spec(kernel=Path("/a,b/bzImage")),
        accel="tcg",
        ssh_port=1,
        console=Path("/c"),
        qmp=Path("/q"),
        disk_images=(Path("/d"),),
    )
    assert value_after(args, "-kernel") == ["/a,,b/bzImage"]


def test_paths_with_spaces_and_quotes_stay_single_arguments_never_shell_words() -> None:
    """The argv goes to exec as it is (no shell): a path holding spaces or quotes is one element, unquoted."""
    odd = Path('/my runs/it\'s "here"/bzImage')
    args = qemu_argv(
        spec(kernel=odd),
        accel="tcg",
        ssh_port=1,
        console=Path("/w/console log"),
        qmp=Path("/q"),
        disk_images=(Path("/d"),),
    )
    assert value_after(args, "-kernel") == [str(odd)]
    assert value_after(args, "-serial") == ["file:/w/console log"]
    assert not any(a.startswith(("'", '"')) for a in args)


def test_pool_below_kernel_minimum_is_refused() -> None:
    with pytest.raises(ConfigError, match="below the kernel minimum of 512 slabs"):
        spec(swiotlb_nslabs=100)


def test_console_excerpt_starts_before_the_panic_of_a_real_console() -> None:
    text = (Path(__file__).resolve().parents[1] / "data" / "console-sysrq-panic.log").read_text()
    lines = text.splitlines()
    assert not any("Kernel panic" in line for line in lines[-40:])  # the tail alone misses it
    excerpt = console_excerpt(text)
    assert "sysrq: Trigger a crash" in excerpt and "Kernel panic - not syncing: sysrq triggered crash" in excerpt
    assert excerpt.splitlines()[-1] == lines[-1]  # and still reaches the end of this short trace


def test_console_excerpt_without_a_panic_is_the_tail() -> None:
    text = "\n".join(f"line {i}" for i in range(100))
    assert console_excerpt(text, 3) == "line 97\nline 98\nline 99"


@pytest.mark.parametrize("kind", ["nvme", "virtio-blk"])
def test_a_hot_pluggable_device_sits_behind_a_pcie_root_port_with_a_qdev_id(kind: str) -> None:
    devices = value_after(argv(spec(disks=(Disk(kind, hotplug=True),))), "-device")  # type: ignore[arg-type]
    [port] = [d for d in devices if d.startswith("pcie-root-port")]
    assert "id=rp0" in port.split(",") and "bus=pcie.0" in port.split(",")
    [dut] = [d for d in devices if "drive=dut0" in d]
    assert {"id=dut0dev", "bus=rp0"} <= set(dut.split(","))  # device_del and block_set_io_throttle name it
    plain = value_after(argv(spec(disks=(Disk(kind),))), "-device")  # type: ignore[arg-type]
    assert not any(d.startswith("pcie-root-port") for d in plain)


def test_nvme_guests_trace_where_their_shadow_doorbells_live() -> None:
    def traced(kind: str) -> list[str]:
        s = spec(disks=(Disk(kind),))  # type: ignore[arg-type]
        return value_after(
            qemu_argv(
                s,
                accel="tcg",
                ssh_port=1,
                console=Path("/w/c"),
                qmp=Path("/w/q"),
                disk_images=(Path("/w/d0"),),
                trace=Path("/w/t,x"),
            ),
            "-trace",
        )

    # QEMU's -trace syntax (docs/devel/tracing.rst): [enable=]PATTERN,file=FILE; commas doubled
    assert traced("nvme") == ["enable=pci_nvme_dbbuf_config,file=/w/t,,x"]
    assert traced("virtio-blk") == []
    assert "-trace" not in argv(spec())  # no trace path: no tracing
    more = spec(trace_events=("pci_nvme_mmio_doorbell_sq",))
    assert value_after(
        qemu_argv(
            more,
            accel="tcg",
            ssh_port=1,
            console=Path("/w/c"),
            qmp=Path("/w/q"),
            disk_images=(Path("/w/d0"),),
            trace=Path("/w/t"),
        ),
        "-trace",
    ) == ["enable=pci_nvme_dbbuf_config,file=/w/t", "enable=pci_nvme_mmio_doorbell_sq,file=/w/t"]


def test_an_iommu_boot_puts_intel_iommu_before_every_other_device_and_turns_it_on() -> None:
    args = argv(spec(iommu=True))
    devices = value_after(args, "-device")
    assert devices[0] == "intel-iommu,intremap=off" and len(devices) > 1
    assert "intel_iommu=on" in spec(iommu=True).cmdline().split()
    assert "intel-iommu,intremap=off" not in argv(spec()) and "intel_iommu" not in spec().cmdline()


def test_an_ahci_disk_sits_on_a_port_of_q35s_built_in_controller() -> None:
    """QEMU's docs (q35): the machine's ICH9 AHCI controller has buses ide.0-ide.5; ide-hd attaches there."""
    args = argv(spec(disks=(Disk("ahci"),)))
    assert "ide-hd,drive=dut0,bus=ide.0,id=dut0dev" in value_after(args, "-device")
    assert Disk("ahci").guest_path == "/dev/sda"


def test_a_slow_neighbour_is_throttled_by_qemu_and_the_disk_under_test_is_not() -> None:
    """-drive throttling.bps-total (QEMU's "I/O throttling" options) on the neighbour's drive only."""
    args = argv(spec(disks=(Disk("nvme"), Disk("virtio-blk", bps_limit=16 << 20))))
    drives = value_after(args, "-drive")
    assert "throttling" not in drives[0]
    assert drives[1].endswith(",throttling.bps-total=16777216") and "id=dut1" in drives[1]
    assert any(d.startswith("virtio-blk-pci,drive=dut1,") for d in value_after(args, "-device"))


def test_an_lsi_disk_hangs_off_its_own_scsi_host_adapter() -> None:
    """QEMU's docs: lsi53c895a is a PCI SCSI HBA whose bus is <id>.0; scsi-hd attaches to it."""
    devices = value_after(argv(spec(disks=(Disk("lsi"),))), "-device")
    assert "lsi53c895a,id=lsi0" in devices and "scsi-hd,drive=dut0,bus=lsi0.0,id=dut0dev" in devices
    assert devices.index("lsi53c895a,id=lsi0") < devices.index("scsi-hd,drive=dut0,bus=lsi0.0,id=dut0dev")


def test_stop_all_stops_what_still_runs_and_only_that(tmp_path: Path) -> None:
    # Stand-ins for QEMU: the machine's own shutdown path (no QMP socket here, so SIGTERM) does the work.
    hypervisor = LocalHypervisor()
    spec = BootSpec(tmp_path / "bzImage", tmp_path / "rootfs.cpio", "ssh-ed25519 AAAAkey lab")
    running, finished = Machine(spec, tmp_path / "a"), Machine(spec, tmp_path / "b")
    running._proc = subprocess.Popen(["sleep", "60"])
    finished._proc = subprocess.Popen(["true"])
    finished._proc.wait()
    hypervisor.launched += [running, finished]
    assert hypervisor.stop_all() == 1
    assert running._proc.poll() is not None
    assert hypervisor.stop_all() == 0  # nothing left: a second call finds nothing to stop


def test_without_a_pool_size_the_command_line_forces_bouncing_and_names_no_size(tmp_path: Path) -> None:
    # "swiotlb=0,force" would be read as a size of 0 (rounded to no pool); the kernel keeps its default,
    # which an SEV-SNP or TDX guest may enlarge, only when no size is given.
    spec = BootSpec(tmp_path / "bzImage", tmp_path / "rootfs.cpio", "ssh-ed25519 AAAAkey lab", swiotlb_nslabs=None)
    assert " swiotlb=force " in f" {spec.cmdline()} "
    assert " swiotlb=1024,force " in f" {replace(spec, swiotlb_nslabs=1024).cmdline()} "


@pytest.mark.parametrize(
    ("nslabs", "areas", "force", "expected"),
    [
        (1024, None, True, "swiotlb=1024,force"),
        (1024, 4, True, "swiotlb=1024,4,force"),
        (None, 4, True, "swiotlb=,4,force"),  # an empty size keeps the kernel's default pool
        (None, 1, False, "swiotlb=,1"),
        (2048, 2, False, "swiotlb=2048,2"),
    ],
)
def test_the_area_count_is_swiotlbs_second_field(
    nslabs: int | None, areas: int | None, force: bool, expected: str
) -> None:
    words = spec(swiotlb_nslabs=nslabs, swiotlb_areas=areas, swiotlb_force=force).cmdline().split()
    assert [w for w in words if w.startswith("swiotlb=")] == [expected]
