"""Kernels the lab boots: Debian's stock 6.12 cloud kernel (and, later, kernels it builds)."""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from lab.errors import BuildError, HostError
from lab.util import atomic_write_text, cache_dir, run_host, sha256_file

log = logging.getLogger(__name__)

STOCK_PACKAGE = "linux-image-6.12.117+deb12-cloud-amd64-unsigned"
STOCK_VERSION = "6.12.117-1~deb12u1"
STOCK_PACKAGE_RE = re.compile(r"^linux-image-(6\.12\.\d+\+deb12-cloud-amd64)-unsigned$")
# Debian's cloud kernel builds these as modules; SSH needs virtio_net.
STOCK_MODULES = ("virtio_net", "virtio_blk")
# Initcalls of the distribution kernel that the lab's guests never use and that
# cost ~2.5 s of boot under TCG (self-tests of crypto and keyring types, BPF
# struct_ops registration).  Recorded in every result via the command line.
STOCK_BOOT_ARGS = (
    "initcall_blacklist=crypto_kdf108_init,init_encrypted,bpf_tcp_ca_kfunc_init,bpf_dummy_struct_ops_init",
)


@dataclass(frozen=True)
class KernelBuild:
    """A bootable kernel and where it came from."""

    name: str  # variant name in the matrix, e.g. "stock"
    release: str  # uname -r
    bzimage: Path
    config: Path
    modules_dir: Path | None = None
    boot_modules: tuple[str, ...] = ()
    boot_args: tuple[str, ...] = ()
    identity: dict[str, str] = field(default_factory=dict, hash=False, compare=False)

    def describe(self) -> dict[str, str]:
        return {"kernel": self.name, "kernel_release": self.release, **self.identity}


def _apt_download(package: str, version: str | None, dest: Path) -> Path:
    spec = f"{package}={version}" if version else package
    try:
        subprocess.run(["apt-get", "download", spec], cwd=dest, check=True, capture_output=True, text=True)
    except FileNotFoundError as exc:
        raise HostError("apt-get not found: the stock kernel comes from Debian's archive") from exc
    except subprocess.CalledProcessError as exc:
        raise BuildError(f"apt-get download {spec} failed: {exc.stderr.strip()}") from exc
    debs = sorted(dest.glob("*.deb"))
    if len(debs) != 1:
        raise BuildError(f"apt-get download {spec} produced {len(debs)} files in {dest}")
    return debs[0]


def _newest_stock_package() -> tuple[str, str]:
    out = subprocess.run(
        ["apt-cache", "search", "--names-only", r"^linux-image-6\.12\.[0-9]+\+deb12-cloud-amd64-unsigned$"],
        capture_output=True, text=True, check=False,
    ).stdout  # fmt: skip
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    if not names:
        raise BuildError("no linux-image-6.12.*-cloud-amd64-unsigned package is served by apt; run apt-get update")
    newest = max(names, key=lambda n: tuple(int(x) for x in re.findall(r"\d+", n)[:3]))
    policy = subprocess.run(["apt-cache", "policy", newest], capture_output=True, text=True, check=False).stdout
    match = re.search(r"Candidate:\s*(\S+)", policy)
    return newest, match.group(1) if match else ""


def stock_kernel(cache: Path | None = None) -> KernelBuild:
    """Debian's 6.12 cloud kernel, pinned, fetched with apt and unpacked into the cache."""
    root = (cache or cache_dir()) / "kernels"
    pinned = True
    package, version = STOCK_PACKAGE, STOCK_VERSION
    final = root / f"stock-{version}"
    if not (final / "identity.txt").exists():
        root.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=".stock-", dir=root))
        try:
            try:
                deb = _apt_download(package, version, work)
            except BuildError as exc:
                package, version = _newest_stock_package()
                pinned = False
                log.warning("pinned %s=%s unavailable (%s); using %s=%s", STOCK_PACKAGE, STOCK_VERSION, exc,
                            package, version)  # fmt: skip
                final = root / f"stock-{version}"
                deb = _apt_download(package, version, work)
            run_host(["dpkg-deb", "-x", deb, work / "tree"], what=f"unpacking {deb.name}")
            release = next((work / "tree" / "lib" / "modules").iterdir()).name
            # Debian ships no modules.dep (depmod runs at install); make it here.
            run_host(["depmod", "-b", work / "tree", release], what="depmod for the stock kernel")
            identity = {
                "kernel_source": f"debian:{package}={version}",
                "kernel_pinned": str(pinned).lower(),
                "kernel_package_sha256": sha256_file(deb),
            }
            atomic_write_text(work / "tree" / "identity.txt", "".join(f"{k}={v}\n" for k, v in identity.items()))
            if final.exists():
                shutil.rmtree(final)
            os.rename(work / "tree", final)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return _load_stock(final)


def _load_stock(tree: Path) -> KernelBuild:
    identity = dict(line.split("=", 1) for line in (tree / "identity.txt").read_text().splitlines() if "=" in line)
    images = sorted((tree / "boot").glob("vmlinuz-*"))
    if not images:
        raise BuildError(f"{tree}: no vmlinuz in the unpacked kernel package")
    release = images[0].name.removeprefix("vmlinuz-")
    config = tree / "boot" / f"config-{release}"
    identity["kernel_config_sha256"] = sha256_file(config)
    identity["kernel_patches_sha256"] = "none"
    if identity.get("kernel_pinned") == "false":
        identity["kernel_warning"] = f"PINNED {STOCK_PACKAGE}={STOCK_VERSION} WAS NOT AVAILABLE"
    return KernelBuild(
        name="stock",
        release=release,
        bzimage=images[0],
        config=config,
        modules_dir=tree / "lib" / "modules" / release,
        boot_modules=STOCK_MODULES,
        boot_args=STOCK_BOOT_ARGS,
        identity=identity,
    )
