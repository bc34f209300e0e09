"""Security properties of a real guest: loopback-only forwards, pinned host keys, literal commands, no secrets."""

from __future__ import annotations

import subprocess
from pathlib import Path

import paramiko
import pytest

from lab.guest import Guest, quote_argv
from lab.image import GuestImage
from lab.kernel import KernelBuild
from lab.keys import KeyPair, new_host_key
from lab.matrix import Cell
from lab.runner import LabContext, boot_spec, run_group
from lab.store import RunStore
from lab.util import cache_dir
from lab.vm import LocalHypervisor, Machine
from lab.workload import Workload

pytestmark = [pytest.mark.faults, pytest.mark.integration]


@pytest.fixture(scope="module")
def booted(guest_image: GuestImage, stock: KernelBuild, lab_key: KeyPair, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    ctx = LabContext(LocalHypervisor(), guest_image, lab_key, {"stock": stock}, cache_dir())
    spec = boot_spec(ctx, Cell("stock", 1024, "nvme", Workload("w"), vcpus=2, memory_mib=1024))
    with ctx.hypervisor.boot(spec, tmp_path_factory.mktemp("security")) as machine:
        yield ctx, machine


def test_host_forwards_listen_on_loopback_only(booted) -> None:  # type: ignore[no-untyped-def]
    _, machine = booted
    assert isinstance(machine, Machine) and machine.pid
    out = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True, check=True).stdout
    mine = [line for line in out.splitlines() if f"pid={machine.pid}," in line]
    assert mine, f"QEMU {machine.pid} listens nowhere?\n{out}"
    for line in mine:
        local = line.split()[3]
        assert local.startswith("127.0.0.1:"), line


def test_a_wrong_host_key_is_refused(booted, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ctx, machine = booted
    impostor = new_host_key(tmp_path / "other_host_key")
    guest = Guest(machine.endpoint, ctx.client_key.private_path, impostor.public_blob)
    with pytest.raises(paramiko.BadHostKeyException):
        guest.connect(timeout_s=30)


def test_password_authentication_is_off(booted) -> None:  # type: ignore[no-untyped-def]
    _, machine = booted
    transport = paramiko.Transport((machine.endpoint.host, machine.endpoint.port))
    try:
        transport.start_client(timeout=15)
        with pytest.raises(paramiko.BadAuthenticationType) as refused:
            transport.auth_password("root", "root")
        assert refused.value.allowed_types == ["publickey"]
    finally:
        transport.close()


def test_shell_metacharacters_in_arguments_run_literally(booted) -> None:  # type: ignore[no-untyped-def]
    ctx, machine = booted
    hostile = "x; touch /tmp/pwned $(touch /tmp/pwned2) `touch /tmp/pwned3` 'q' \"d\""
    with Guest(machine.endpoint, ctx.client_key.private_path, ctx.image.host_key_blob) as guest:
        guest.connect()
        echoed = guest.run(quote_argv(["echo", hostile])).stdout.strip()
        assert echoed == hostile
        leftovers = guest.run("ls /tmp", check=False).stdout.split()
        assert not {"pwned", "pwned2", "pwned3"} & set(leftovers)


def test_results_hold_no_private_key_material(
    guest_image: GuestImage, stock: KernelBuild, lab_key: KeyPair, tmp_path: Path
) -> None:
    ctx = LabContext(LocalHypervisor(), guest_image, lab_key, {"stock": stock}, cache_dir())
    store = RunStore.create(tmp_path, {"test": "secrets"})
    workload = Workload("w", rw="randread", bs="4k", iodepth=4, runtime_s=2, size="64M")
    [row] = run_group([Cell("stock", 1024, "nvme", workload, 2, 1024)], store, ctx, _Quiet())
    assert row["status"] == "ok"
    store.consolidate()
    private = lab_key.private_path.read_text().splitlines()[1]
    for path in store.root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert b"PRIVATE KEY" not in data, path
            assert private.encode() not in data, path


class _Quiet:
    def phase(self, cell: Cell | None, text: str) -> None:
        pass

    def cell_done(self, cell: Cell, row: dict[str, object], estimate_s: float) -> None:
        pass


def test_background_network_load_streams_through_the_bouncing_virtio_net(
    guest_image: GuestImage, stock: KernelBuild, lab_key: KeyPair, tmp_path: Path
) -> None:
    ctx = LabContext(LocalHypervisor(), guest_image, lab_key, {"stock": stock}, cache_dir())
    store = RunStore.create(tmp_path, {"test": "netload"})
    workload = Workload("w", rw="randread", bs="64k", iodepth=16, numjobs=2, runtime_s=3, size="64M")
    [row] = run_group([Cell("stock", 1024, "nvme", workload, 2, 1024, net_load=True)], store, ctx, _Quiet())
    assert row["status"] == "ok", row.get("failure_detail")
    assert row["net_load_bytes"] > 1_000_000 and row["net_load_mbps"] > 1
    assert "hostfwd=tcp:127.0.0.1:" in row["qemu_argv"] and "-:5001" in row["qemu_argv"]
