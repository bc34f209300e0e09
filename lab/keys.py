"""SSH key material: the per-lab client key and guest host keys (OpenSSH ed25519)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lab.util import atomic_write_bytes, cache_dir


@dataclass(frozen=True)
class KeyPair:
    private_path: Path
    public_line: str  # "ssh-ed25519 AAAA... comment"

    @property
    def public_blob(self) -> str:
        return self.public_line.split()[1]


def _write_keypair(private_path: Path, comment: str) -> KeyPair:
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    public_line = f"{public.decode()} {comment}"
    # Create the private key 0600 from the start: never world-readable, not even briefly.
    private_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = private_path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(private)
    os.replace(tmp, private_path)
    atomic_write_bytes(private_path.with_name(private_path.name + ".pub"), (public_line + "\n").encode())
    return KeyPair(private_path, public_line)


def _load(private_path: Path) -> KeyPair:
    public_line = private_path.with_name(private_path.name + ".pub").read_text().strip()
    return KeyPair(private_path, public_line)


def client_key(root: Path | None = None) -> KeyPair:
    """The lab's SSH client key, generated on first use (0600 in the cache directory)."""
    private_path = (root or cache_dir()) / "ssh" / "id_ed25519"
    if private_path.exists() and private_path.with_name("id_ed25519.pub").exists():
        os.chmod(private_path, 0o600)
        return _load(private_path)
    return _write_keypair(private_path, "swiotlb-lab-client")


def new_host_key(private_path: Path) -> KeyPair:
    """A fresh guest host key, written at image build and pinned by the client."""
    return _write_keypair(private_path, "swiotlb-lab-guest")
