"""QEMU toolchain roots: a newer QEMU than the host's, in a Debian root made with mmdebstrap, cached by the
hash of its recipe (images/qemu/recipe.toml) and run through the root's own dynamic loader.

A root is built where its QEMU runs (a worker on another host builds its own), once per recipe: the build
goes into a scratch directory and is renamed into place, so a reader never sees half a root.  Its
``bin/qemu-system-x86_64`` is a wrapper that any code taking a QEMU binary can use, as it would
``SWIOTLB_LAB_QEMU``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab.errors import BuildError, ConfigError
from lab.util import DEBIAN_MIRROR, cache_dir, read_toml, run_host, sha256_bytes, unknown_key

log = logging.getLogger(__name__)

HOST = "host"  # the host's own QEMU (SWIOTLB_LAB_QEMU, else qemu-system-x86_64 on PATH)
RECIPE = Path(__file__).resolve().parent.parent / "images" / "qemu" / "recipe.toml"
RECIPE_KEYS = {"description": "free text", "suite": "a Debian suite, e.g. trixie", "packages": "Debian packages"}
# Bump when the build or the wrapper changes in a way the recipe hash cannot see.
TOOLCHAIN_FORMAT = 1
# The root's QEMU, with its own loader, libraries, modules and firmware directories; R is the root,
# found from the wrapper's own place so that a cache can move.
WRAPPER = """#!/bin/sh
# QEMU from a toolchain root made by lab/toolchain.py: {description}
R="$(cd "$(dirname "$0")/.." && pwd)/root"
export QEMU_MODULE_DIR="$R/usr/lib/x86_64-linux-gnu/qemu"
exec "$R/lib64/ld-linux-x86-64.so.2" --library-path "$R/lib/x86_64-linux-gnu:$R/usr/lib/x86_64-linux-gnu" \\
    "$R/usr/bin/qemu-system-x86_64" -L "$R/usr/share/qemu" -L "$R/usr/share/seabios" "$@"
"""


@dataclass(frozen=True)
class QemuRoot:
    name: str
    qemu: Path  # the wrapper: use it as a QEMU binary
    root: Path
    recipe_hash: str
    packages: dict[str, str]  # every package in the root and its version (provenance)

    def firmware(self, name: str) -> Path:
        """An OVMF image of the root, e.g. "OVMF.amdsev.fd" (Debian's ovmf package)."""
        return self.root / "usr" / "share" / "ovmf" / name


def recipes(path: Path = RECIPE) -> dict[str, dict[str, Any]]:
    """The declared roots by name, each checked: a suite, packages, nothing else."""
    _, data = read_toml(path, "QEMU toolchain recipe")
    for name, spec in data.items():
        where = f"{path}: [{name}]"
        if name == HOST:
            raise ConfigError(f"{where}: {HOST!r} names the host's own QEMU; call the root something else")
        if not isinstance(spec, dict):
            raise ConfigError(f"{where} must be a table with suite and packages")
        for key in spec:
            if key not in RECIPE_KEYS:
                raise ConfigError(f"{where}: {unknown_key(key, list(RECIPE_KEYS), f'[{name}]')}")
        if not isinstance(spec.get("suite"), str) or not spec["suite"]:
            raise ConfigError(f'{where}: suite must be a Debian suite name, e.g. "trixie"')
        packages = spec.get("packages")
        if not isinstance(packages, list) or not all(isinstance(p, str) and p for p in packages) or not packages:
            raise ConfigError(f'{where}: packages must be a list of Debian packages, e.g. ["qemu-system-x86"]')
    return data


def names(path: Path = RECIPE) -> tuple[str, ...]:
    """What a matrix's ``qemu`` axis may name: the host's QEMU and every declared root."""
    return (HOST, *recipes(path))


def recipe_hash(spec: dict[str, Any]) -> str:
    content = json.dumps({"format": TOOLCHAIN_FORMAT, "spec": spec, "wrapper": WRAPPER}, sort_keys=True)
    return sha256_bytes(content.encode())[:16]


def _place(name: str, path: Path, cache: Path | None) -> tuple[dict[str, Any], str, Path]:
    """The recipe of ``name``, its hash, and where its root lives in the cache (built or not)."""
    known = recipes(path)
    if name not in known:
        raise ConfigError(f"QEMU toolchain {name!r} is not declared in {path}; declared: {', '.join(known) or 'none'}")
    key = recipe_hash(known[name])
    return known[name], key, (cache or cache_dir()) / "toolchains" / f"qemu-{name}-{key}"


def _loaded(name: str, final: Path, key: str) -> QemuRoot:
    packages = json.loads((final / "packages.json").read_text())
    return QemuRoot(name, final / "bin" / "qemu-system-x86_64", final / "root", key, packages)


def build_qemu(name: str, path: Path = RECIPE, cache: Path | None = None) -> QemuRoot:
    """The root called ``name``, built first if its recipe has no root in the cache yet."""
    spec, key, final = _place(name, path, cache)
    if not (final / "packages.json").exists():
        final.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".build-qemu-{name}-", dir=final.parent))
        try:
            log.info("building QEMU toolchain %s (%s, recipe %s)", name, spec["suite"], key)
            _build(name, spec, work)
            try:
                os.rename(work, final)
            except OSError:
                if not (final / "packages.json").exists():  # lost a race: fine if the winner finished
                    raise
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return _loaded(name, final, key)


def _build(name: str, spec: dict[str, Any], work: Path) -> None:
    root = work / "root"
    try:
        run_host(
            [
                "mmdebstrap",
                "--variant=essential",
                "--include=" + ",".join(spec["packages"]),
                '--aptopt=APT::Install-Recommends "false"',
                '--aptopt=Acquire::Check-Valid-Until "false"',
                "--dpkgopt=path-exclude=/usr/share/{doc,man,locale}/*",
                spec["suite"],
                root,
                DEBIAN_MIRROR,
            ],
            what=f"mmdebstrap of QEMU toolchain {name!r}",
            log_path=work / "mmdebstrap.log",
        )
    except BuildError as exc:
        pinned = [p for p in spec["packages"] if "=" in p]
        if pinned and ("has no installation candidate" in str(exc) or "not found" in str(exc)):
            raise BuildError(
                f"QEMU toolchain {name!r}: Debian's {spec['suite']} no longer has {', '.join(pinned)}; update "
                f"the pin in {RECIPE} (and say so in BENCHMARKS.md: runs on the old QEMU stay reproducible only "
                f"from a cache that has its root)\n{exc}"
            ) from exc
        raise
    listing = run_host(
        ["dpkg-query", f"--admindir={root}/var/lib/dpkg", "-W", "-f", "${Package}\t${Version}\n"],
        what=f"listing the packages of QEMU toolchain {name!r}",
    )
    packages = dict(line.split("\t", 1) for line in listing.splitlines() if "\t" in line)
    wrapper = work / "bin" / "qemu-system-x86_64"
    wrapper.parent.mkdir()
    wrapper.write_text(WRAPPER.format(description=spec.get("description", name)))
    wrapper.chmod(0o755)
    (work / "packages.json").write_text(json.dumps(packages, indent=1, sort_keys=True))  # last: marks it built


def built(name: str, path: Path = RECIPE, cache: Path | None = None) -> QemuRoot | None:
    """The root called ``name`` if its recipe's root is in the cache; None if it was never built here."""
    _, key, final = _place(name, path, cache)
    return _loaded(name, final, key) if (final / "packages.json").exists() else None


def qemu_binary(name: str) -> str | None:
    """The QEMU a cell's ``qemu`` value names: None for the host's own (the hypervisor's), else the root's
    wrapper (built here first if needed)."""
    return None if name == HOST else str(build_qemu(name).qemu)
