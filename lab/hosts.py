"""Host inventory (hosts.toml): the machines the lab may run QEMU on, validated like matrices.

Each ``[hosts.NAME]`` table says how to reach a host over SSH, how many boots
it takes at once, where its cache, QEMU and firmware live, and which
platforms it offers.  ``probe_host`` runs the preflight there over SSH.
"""

from __future__ import annotations

import base64
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab.errors import ConfigError
from lab.platforms import PLATFORMS
from lab.preflight import HostSettings, Preflight, preflight
from lab.util import read_toml, unknown_key

HOST_KEYS = {
    "address": 'SSH address, "host" or "host:port"',
    "user": "SSH user (default root)",
    "key": "private key file for SSH (~ is expanded)",
    "host_key": 'the host\'s public key, "ssh-ed25519 AAAA...", pinned (default: ~/.ssh/known_hosts)',
    "slots": "boots at once (default 1)",
    "cache": "the lab's cache directory on the host (default ~/.cache/swiotlb-lab)",
    "qemu": "QEMU binary on the host (default qemu-system-x86_64)",
    "python": "the host's Python with the lab installed, for its Dask worker (default python3)",
    "platforms": 'list of platforms the host offers: "tcg", "kvm", "sev-snp", "tdx"',
    "cbitpos": "the SEV C-bit position, if the host's cpuid driver cannot tell (sev-snp)",
    "firmware": 'table of OVMF images by platform, e.g. {sev-snp = "/usr/share/ovmf/OVMF.amdsev.fd"}',
}


@dataclass(frozen=True)
class Host:
    name: str
    address: str
    port: int = 22
    user: str = "root"
    key: Path | None = None
    host_key: str = ""
    slots: int = 1
    cache: str = "~/.cache/swiotlb-lab"
    qemu: str = "qemu-system-x86_64"
    python: str = "python3"
    platforms: tuple[str, ...] = ("tcg",)
    cbitpos: int | None = None
    firmware: dict[str, str] = field(default_factory=dict, hash=False, compare=False)

    @property
    def settings(self) -> HostSettings:
        """What the host's worker runs QEMU with (handed to it as its environment)."""
        return HostSettings(self.qemu, dict(self.firmware), self.cbitpos)


def _line_in_table(text: str, table: str, key: str | None = None) -> str:
    """':N' for the table header, or for ``key`` inside that table."""
    inside = False
    for lineno, line in enumerate(text.splitlines(), 1):
        header = re.match(r"^\s*\[\s*([^\]]+?)\s*\]", line)
        if header:
            if inside and key is not None:
                break
            inside = header.group(1) == table
            if inside and key is None:
                return f":{lineno}"
            continue
        if inside and key is not None and re.match(rf"^\s*{re.escape(key)}\s*=", line):
            return f":{lineno}"
    return ""


_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?$")


def _is_public_key(line: str) -> bool:
    """An OpenSSH public key line: its type, then base64 whose decoded blob names the same type."""
    import base64
    import binascii

    parts = line.split()
    if len(parts) < 2:
        return False
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except (binascii.Error, ValueError):
        return False
    length = int.from_bytes(blob[:4], "big") if len(blob) >= 4 else -1
    return length > 0 and blob[4 : 4 + length] == parts[0].encode()


def load_hosts(path: Path) -> dict[str, Host]:
    """Read and validate a hosts file; every error names the file, line, host and key."""
    text, data = read_toml(path, "hosts")
    unknown = sorted(set(data) - {"hosts"})
    if unknown:
        raise ConfigError(f"{path}: unknown table [{unknown[0]}]; valid: [hosts.NAME]")
    tables = data.get("hosts")
    if not isinstance(tables, dict) or not tables:
        raise ConfigError(f"{path}: no hosts; add a [hosts.NAME] table with at least an address")
    hosts = {name: _host(name, spec, text, path) for name, spec in tables.items()}
    seen: dict[tuple[str, int], str] = {}
    for name, host in hosts.items():
        other = seen.setdefault((host.address, host.port), name)
        if other != name:
            raise ConfigError(
                f"{path}{_line_in_table(text, f'hosts.{name}', 'address')}: hosts.{name}.address: "
                f"{host.address}:{host.port} is hosts.{other}'s too; one machine is one host (give it "
                "more slots instead)"
            )
    return hosts


def _host(name: str, spec: object, text: str, path: Path) -> Host:
    table = f"hosts.{name}"

    def where(key: str | None = None) -> str:
        return f"{path}{_line_in_table(text, table, key)}: {table}" + (f".{key}" if key else "")

    if not isinstance(spec, dict):
        raise ConfigError(f"{where()}: must be a table")
    for key in spec:
        if key not in HOST_KEYS:
            raise ConfigError(f"{where(key)}: {unknown_key(key, list(HOST_KEYS))}")
    address = spec.get("address")
    if not isinstance(address, str) or not address.strip():
        loc = where("address") if "address" in spec else where()
        raise ConfigError(f'{loc}: address is required, e.g. "snp1.lab.example"')
    host, _, port_text = address.strip().rpartition(":") if ":" in address else (address.strip(), "", "22")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(f"{where('address')}: {address!r} has no valid port; use host or host:port")
    if not _HOSTNAME.match(host):
        raise ConfigError(
            f"{where('address')}: {address!r} is not a host name or IP address (letters, digits, "
            'dots and dashes, e.g. "snp1.lab.example" or "192.0.2.7:2222")'
        )
    host_key = spec.get("host_key")
    if host_key is not None and not (isinstance(host_key, str) and _is_public_key(host_key)):
        raise ConfigError(
            f"{where('host_key')}: {host_key!r} is not an SSH public key line like "
            '"ssh-ed25519 AAAAC3Nza..." (the host\'s /etc/ssh/ssh_host_ed25519_key.pub)'
        )
    slots = spec.get("slots", 1)
    if not isinstance(slots, int) or isinstance(slots, bool) or not 1 <= slots <= 256:
        raise ConfigError(f"{where('slots')}: {slots!r} must be an integer from 1 to 256")
    platforms = spec.get("platforms", ["tcg"])
    if not isinstance(platforms, list) or not platforms:
        raise ConfigError(f'{where("platforms")}: must be a non-empty list, e.g. ["kvm", "sev-snp"]')
    for platform in platforms:
        if platform not in PLATFORMS:
            raise ConfigError(f"{where('platforms')}: unknown platform {platform!r}; valid: {', '.join(PLATFORMS)}")
    firmware = spec.get("firmware", {})
    if not isinstance(firmware, dict) or not all(isinstance(v, str) for v in firmware.values()):
        raise ConfigError(f"{where('firmware')}: must be a table of paths by platform")
    for platform in firmware:
        if platform not in PLATFORMS:
            raise ConfigError(f"{where('firmware')}: unknown platform {platform!r}; valid: {', '.join(PLATFORMS)}")
    for platform in platforms:
        if PLATFORMS[platform].needs_firmware and platform not in firmware:
            raise ConfigError(
                f"{where('platforms')}: platform {platform!r} needs firmware.{platform} (its OVMF image on the host)"
            )
    cbitpos = spec.get("cbitpos")
    bad_cbit = not isinstance(cbitpos, int) or isinstance(cbitpos, bool) or not 32 <= cbitpos <= 63
    if cbitpos is not None and bad_cbit:
        raise ConfigError(f"{where('cbitpos')}: {cbitpos!r} must be the C-bit position, an integer from 32 to 63")
    key = spec.get("key")
    if key is not None and not isinstance(key, str):
        raise ConfigError(f"{where('key')}: must be a path to a private key")
    key_path = Path(key).expanduser() if key else None  # checked when connecting: it lives on the operator's box
    return Host(
        name,
        host,
        int(port_text),
        str(spec.get("user", "root")),
        key_path,
        str(spec.get("host_key", "")),
        slots,
        str(spec.get("cache", Host.cache)),
        str(spec.get("qemu", Host.qemu)),
        str(spec.get("python", Host.python)),
        tuple(platforms),
        cbitpos,
        dict(firmware),
    )


@dataclass
class RemoteView:
    """A host seen through one SSH connection (lab.preflight.HostView)."""

    connection: Any  # fabric.Connection, opened

    def _run(self, command: str) -> tuple[int, str]:
        result = self.connection.run(command, hide=True, warn=True, timeout=30, in_stream=False)
        return int(result.exited), str(result.stdout)

    def read(self, path: str) -> str | None:
        code, out = self._run(f"cat {shlex.quote(path)}")
        return out if code == 0 else None

    def exists(self, path: str) -> bool:
        return self._run(f"test -e {shlex.quote(path)}")[0] == 0

    def accessible(self, path: str) -> bool:
        return self._run(f"test -r {shlex.quote(path)} && test -w {shlex.quote(path)}")[0] == 0

    def run(self, argv: Sequence[str]) -> str | None:
        code, out = self._run(shlex.join(argv))
        return out if code == 0 else None


def connect(host: Host, timeout_s: float = 10.0) -> Any:
    """An open fabric connection to ``host``; its host key pinned from hosts.toml or known_hosts."""
    import paramiko
    from fabric import Config, Connection

    if host.key is not None and not host.key.is_file():
        raise ConfigError(f"hosts.{host.name}.key: {host.key} does not exist")
    config = Config(lazy=True, overrides={"load_ssh_configs": False})
    kwargs: dict[str, Any] = {
        "look_for_keys": host.key is None,
        "allow_agent": host.key is None,
        "banner_timeout": timeout_s,
        "auth_timeout": timeout_s,
    }
    if host.key is not None:
        kwargs["key_filename"] = str(host.key)
    conn = Connection(
        host.address, port=host.port, user=host.user, config=config, connect_timeout=timeout_s, connect_kwargs=kwargs
    )
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    if host.host_key:
        kind, blob = host.host_key.split()[:2]
        name = host.address if host.port == 22 else f"[{host.address}]:{host.port}"
        client.get_host_keys().add(name, kind, paramiko.PKey.from_type_string(kind, base64.b64decode(blob)))
    else:
        client.load_system_host_keys()
    conn.client = client
    conn.open()
    return conn


@dataclass(frozen=True)
class HostReport:
    host: Host
    reachable: str  # "" if SSH worked, else why not
    result: Preflight | None

    def mismatches(self) -> list[str]:
        """Platforms the inventory claims that the host does not offer, with the reason."""
        if self.result is None:
            return []
        return [f"{p}: {self.result.offered[p]}" for p in self.host.platforms if not self.result.offers(p)]


def probe_host(host: Host) -> HostReport:
    """SSH to ``host`` and run the preflight there."""
    try:
        conn = connect(host)
    except Exception as exc:  # any SSH failure is a finding about the host, not a crash of doctor
        why = str(exc) if isinstance(exc, ConfigError) else repr(exc)
        return HostReport(host, f"SSH to {host.user}@{host.address}:{host.port} failed: {why}", None)
    try:
        view = RemoteView(conn)
        return HostReport(host, "", preflight(view, qemu=host.qemu, firmware=host.firmware, cbitpos=host.cbitpos))
    finally:
        conn.close()
