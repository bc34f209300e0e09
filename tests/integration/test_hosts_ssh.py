"""`doctor --hosts` against a real sshd on 127.0.0.1 with throwaway keys: the preflight runs over SSH."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import LocalSshd

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def doctor(hosts: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lab", "doctor", "--hosts", str(hosts)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_doctor_probes_a_host_over_real_ssh(local_sshd: LocalSshd, tmp_path: Path) -> None:
    hosts = tmp_path / "hosts.toml"
    hosts.write_text(
        f'[hosts.loopback]\naddress = "127.0.0.1:{local_sshd.port}"\nuser = "root"\n'
        f'key = "{local_sshd.client_key}"\nhost_key = "{local_sshd.host_key_line}"\n'
        'platforms = ["tcg"]\n'
    )
    proc = doctor(hosts)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "loopback: sev-snp not offered: needs QEMU >= 9.1, host has 7.2" in proc.stdout  # read over SSH


def test_doctor_names_a_platform_the_inventory_claims_but_the_host_lacks(local_sshd: LocalSshd, tmp_path: Path) -> None:
    hosts = tmp_path / "hosts.toml"
    hosts.write_text(
        f'[hosts.loopback]\naddress = "127.0.0.1:{local_sshd.port}"\nkey = "{local_sshd.client_key}"\n'
        f'host_key = "{local_sshd.host_key_line}"\nplatforms = ["tcg", "sev-snp"]\n'
        'firmware = {{ sev-snp = "/nonexistent/OVMF.amdsev.fd" }}\n'.replace("{{", "{").replace("}}", "}")
    )
    proc = doctor(hosts)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    [claimed] = [line for line in proc.stdout.splitlines() if "claimed in hosts.toml but not offered" in line]
    assert claimed.startswith("loopback: claimed in hosts.toml but not offered: sev-snp: needs QEMU >= 9.1")
    assert "firmware /nonexistent/OVMF.amdsev.fd not found" in claimed


def test_doctor_refuses_a_host_whose_key_does_not_match_the_pinned_one(local_sshd: LocalSshd, tmp_path: Path) -> None:
    other = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    hosts = tmp_path / "hosts.toml"
    hosts.write_text(
        f'[hosts.impostor]\naddress = "127.0.0.1:{local_sshd.port}"\nkey = "{local_sshd.client_key}"\n'
        f'host_key = "{(tmp_path / "other.pub").read_text().strip()}"\n'
    )
    proc = doctor(hosts)
    [note] = [line for line in proc.stdout.splitlines() if line.startswith("impostor:")]
    assert proc.returncode == 1 and f"SSH to root@127.0.0.1:{local_sshd.port} failed" in note
