"""Kernels the lab boots: Debian's stock cloud kernel, and variants built from a pinned source, cached by content."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab.errors import BuildError, ConfigError, HostError, PatchError
from lab.util import DEBIAN_MIRROR, atomic_write_text, cache_dir, run_host, run_process, sha256_file

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


def _apt_download(package: str, version: str | None, dest: Path, options: Sequence[str] = ()) -> Path:
    spec = f"{package}={version}" if version else package
    try:
        code, _, stderr = run_process(
            ["apt-get", *options, "download", spec], cwd=dest, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
    except FileNotFoundError as exc:
        raise HostError("apt-get not found: the stock kernel comes from Debian's archive") from exc
    if code != 0:
        raise BuildError(f"apt-get download {spec} failed: {stderr.strip()}")
    debs = sorted(dest.glob("*.deb"))
    if len(debs) != 1:
        raise BuildError(f"apt-get download {spec} produced {len(debs)} files in {dest}")
    return debs[0]


def _newest_stock_package() -> tuple[str, str]:
    out = subprocess.run(
        ["apt-cache", "search", "--names-only", r"^linux-image-6\.12\.[0-9]+\+deb12-cloud-amd64-unsigned$"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
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
                log.warning(
                    "pinned %s=%s unavailable (%s); using %s=%s", STOCK_PACKAGE, STOCK_VERSION, exc, package, version
                )
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


# --- kernels built from source -----------------------------------------------------------


@dataclass(frozen=True)
class Base:
    """What a variant is built on: Debian's linux-source package of one version, pinned.  ``suite``: a Debian
    suite the host's apt does not list (its lists are fetched into the cache, apart from the host's); ""
    for the host's own sources."""

    name: str
    package: str
    version: str
    suite: str = ""
    configs: tuple[str, ...] = ()  # files of kernel-configs/ merged after base.config for this base


BASES = {
    "6.12": Base("6.12", "linux-source-6.12", "6.12.117-1~deb12u1"),
    "7.2": Base("7.2", "linux-source-7.2", "7.2.13-1", suite="sid", configs=("base-7.2.config",)),
}
DEFAULT_BASE = "6.12"
SOURCE_PACKAGE, SOURCE_VERSION = BASES[DEFAULT_BASE].package, BASES[DEFAULT_BASE].version
# Bump when the build procedure changes in a way the content hash cannot see.
BUILD_FORMAT = 1
REPO = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO / "kernel-configs"
PATCH_DIR = REPO / "patches"
_CONFIG_LINE = re.compile(r"^(CONFIG_\w+)=(.*)$|^# (CONFIG_\w+) is not set$")


@dataclass(frozen=True)
class KernelSource:
    """A kernel tree to build from, and how to name it in results."""

    tree: Path
    label: str  # e.g. "debian:linux-source-6.12=6.12.117-1~deb12u1" or "tree:/path@<git rev>"
    digest: str  # sha256 of the source package, or the git revision (+ "-dirty") of a local tree
    pinned: bool = True


@dataclass(frozen=True)
class Variant:
    name: str
    description: str
    fragments: tuple[Path, ...]
    patches: tuple[Path, ...]  # patch files, in application order
    problem: str = ""  # why this variant cannot be built (reported only when it is asked for)
    base: str = DEFAULT_BASE  # the kernel source it is built on (BASES)

    @property
    def base_files(self) -> tuple[Path, ...]:
        """The base config, then what its kernel base adds to it."""
        return (CONFIG_DIR / "base.config", *(CONFIG_DIR / f for f in BASES[self.base].configs))

    @property
    def config_files(self) -> tuple[Path, ...]:
        """What its configuration is merged from, in order: the base configs, then its fragments."""
        return (*self.base_files, *self.fragments)


def debian_source(cache: Path | None = None, base: str = DEFAULT_BASE) -> KernelSource:
    """Debian's linux-source package of ``base``, fetched with apt and extracted once into the cache (one
    process at a time: the suite's background builder and a test may both ask for it first)."""
    root = (cache or cache_dir()) / "kernel-src"
    root.mkdir(parents=True, exist_ok=True)
    with (root / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _debian_source(root, BASES[base], cache or cache_dir())


def apt_options(suite: str, cache: Path) -> list[str]:
    """apt-get options that read a suite's package lists from the cache instead of the host's (fetched
    here first: the host's sources stay as they are).  The lab's mirror may be older than the machine's
    clock, so the Release file's Valid-Until is not checked; its signature is."""
    if not suite:
        return []
    where = cache / "apt" / suite
    (where / "lists" / "partial").mkdir(parents=True, exist_ok=True)
    (where / "cache" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
    sources = where / "sources.list"
    keyring = "/usr/share/keyrings/debian-archive-keyring.gpg"
    sources.write_text(f"deb [signed-by={keyring}] {DEBIAN_MIRROR} {suite} main\n")
    options = [
        f"-oDir::Etc::SourceList={sources}",
        "-oDir::Etc::SourceParts=/dev/null",
        f"-oDir::State::Lists={where / 'lists'}",
        f"-oDir::Cache={where / 'cache'}",
        "-oAcquire::Check-Valid-Until=false",
        "-oAcquire::Languages=none",
    ]
    if not list((where / "lists").glob("*_Packages*")):
        run_host(["apt-get", "-q", *options, "update"], what=f"apt-get update of Debian's {suite} (into {where})")
    return options


def _debian_source(root: Path, base: Base, cache: Path) -> KernelSource:
    for marker in sorted(root.glob("*/source.txt")):
        info = dict(line.split("=", 1) for line in marker.read_text().splitlines() if "=" in line)
        if info.get("package", SOURCE_PACKAGE) != base.package:  # markers from before bases are 6.12's
            continue
        if info.get("version") == base.version or info.get("pinned") == "false":
            return KernelSource(marker.parent / "linux", info["label"], info["sha256"], info.get("pinned") == "true")
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".src-", dir=root))
    options = apt_options(base.suite, cache)
    try:
        version, pinned = base.version, True
        try:
            deb = _apt_download(base.package, version, work, options)
        except BuildError as exc:
            policy = subprocess.run(
                ["apt-cache", *options, "policy", base.package], capture_output=True, text=True, check=False
            ).stdout
            match = re.search(r"Candidate:\s*(\S+)", policy)
            if not match or match.group(1) == "(none)":
                raise BuildError(f"{base.package} is not available from apt ({exc}); run apt-get update") from exc
            version, pinned = match.group(1), False
            log.warning("PINNED %s=%s IS NOT SERVED ANY MORE; using %s", base.package, base.version, version)
            deb = _apt_download(base.package, version, work, options)
        digest = sha256_file(deb)
        run_host(["dpkg-deb", "-x", deb, work / "deb"], what=f"unpacking {deb.name}")
        tarballs = list((work / "deb" / "usr" / "src").glob("linux-source-*.tar.*"))
        if len(tarballs) != 1:
            raise BuildError(f"{deb.name}: expected one linux-source tarball, found {len(tarballs)}")
        (work / "x").mkdir()
        run_host(["tar", "-xf", tarballs[0], "-C", work / "x"], what=f"extracting {tarballs[0].name}")
        [top] = list((work / "x").iterdir())
        final = root / version
        final.mkdir(parents=True, exist_ok=True)
        os.rename(top, final / "linux")
        label = f"debian:{base.package}={version}"
        info = {"label": label, "package": base.package, "version": version, "sha256": digest}
        info["pinned"] = str(pinned).lower()
        atomic_write_text(final / "source.txt", "".join(f"{k}={v}\n" for k, v in info.items()))
        return KernelSource(final / "linux", label, digest, pinned)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def local_source(path: Path) -> KernelSource:
    """A developer's kernel tree (e.g. a git checkout).  It must be clean of build output."""
    tree = path.resolve()
    if not (tree / "Makefile").is_file() or not (tree / "kernel" / "dma" / "swiotlb.c").is_file():
        raise BuildError(f"{path} does not look like a Linux source tree (no Makefile or kernel/dma/swiotlb.c)")
    if (tree / ".config").exists():
        raise BuildError(f"{tree} has a .config: run 'make mrproper' there (the lab builds out of tree)")
    rev = subprocess.run(["git", "-C", tree, "rev-parse", "HEAD"], capture_output=True, text=True, check=False)
    if rev.returncode == 0:
        dirty = subprocess.run(
            ["git", "-C", tree, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        digest = rev.stdout.strip() + ("-dirty" if dirty else "")
    else:
        digest = "untracked-" + sha256_file(tree / "Makefile")[:12]
    return KernelSource(tree, f"tree:{tree}@{digest}", digest)


def load_variants(path: Path | None = None) -> dict[str, Variant]:
    import tomllib

    path = path or CONFIG_DIR / "variants.toml"
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: cannot load kernel variants: {exc}") from exc
    unknown_top = set(data) - {"variants", "instruments"}
    if unknown_top:
        raise ConfigError(f"{path}: unknown key {sorted(unknown_top)[0]!r}; valid keys: instruments, variants")
    variants = {}
    for name, spec in dict(data.get("variants", {})).items():
        unknown = set(spec) - {"description", "fragments", "patches", "instruments", "base"}
        if unknown:
            raise ConfigError(
                f"{path}: variants.{name}: unknown key {sorted(unknown)[0]!r}; "
                "valid keys: description, fragments, patches, instruments, base"
            )
        base = str(spec.get("base", DEFAULT_BASE))
        if base not in BASES:
            raise ConfigError(f"{path}: variants.{name}: base = {base!r}; valid: {', '.join(map(repr, BASES))}")
        if not isinstance(spec.get("instruments", True), bool):
            raise ConfigError(f"{path}: variants.{name}: instruments = {spec['instruments']!r} must be true or false")
        fragments = tuple(CONFIG_DIR / f for f in spec.get("fragments", []))
        for fragment in fragments:
            if not fragment.is_file():
                raise ConfigError(f"{path}: variants.{name}: config fragment {fragment} does not exist")
        patches: list[Path] = []
        problem = ""
        # The lab's instruments go on top of every variant's own series: one list for every base, or a
        # table of lists by base (an instrument is written for one kernel's code).
        instruments = _instruments(data.get("instruments", []), base, path) if spec.get("instruments", True) else []
        for series in [*spec.get("patches", []), *instruments]:
            directory = PATCH_DIR / series
            # A cover letter (git format-patch --cover-letter) carries no diff: it is read, not applied.
            files = sorted(f for f in directory.glob("*.patch") if not f.name.startswith("0000-"))
            if not files:
                problem = f"{path}: variants.{name}: patch series {directory} has no *.patch files"
            patches.extend(files)
        variants[name] = Variant(name, str(spec.get("description", "")), fragments, tuple(patches), problem, base)
    return variants


def _instruments(value: object, base: str, path: Path) -> list[str]:
    if isinstance(value, dict):
        unknown = sorted(set(value) - set(BASES))
        if unknown:
            raise ConfigError(f"{path}: instruments.{unknown[0]}: not a base; valid: {', '.join(BASES)}")
        value = value.get(base, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{path}: instruments must be a list of patch series, or a table of such lists by base")
    return list(value)


def requested_options(fragments: Sequence[Path]) -> dict[str, str]:
    """CONFIG_X → value ("n" for "is not set"), later fragments overriding earlier ones."""
    wanted: dict[str, str] = {}
    for fragment in fragments:
        wanted.update(parse_config(fragment.read_text()))
    return wanted


def parse_config(text: str) -> dict[str, str]:
    values = {}
    for line in text.splitlines():
        match = _CONFIG_LINE.match(line.strip())
        if match:
            if match.group(1):
                values[match.group(1)] = match.group(2).strip('"')
            else:
                values[match.group(3)] = "n"
    return values


def dropped_options(wanted: dict[str, str], final: dict[str, str]) -> list[str]:
    """Options whose requested value did not survive olddefconfig."""
    dropped = []
    for option, value in sorted(wanted.items()):
        got = final.get(option, "n")
        if got != value:
            dropped.append(f"{option}: requested {value}, got {got if option in final else 'n (absent)'}")
    return dropped


def compiler_version() -> str:
    try:
        return subprocess.run(["gcc", "--version"], capture_output=True, text=True, check=True).stdout.splitlines()[0]
    except (OSError, subprocess.CalledProcessError) as exc:
        raise HostError("gcc not found: install the Debian package gcc") from exc


def build_key(source: KernelSource, variant: Variant) -> str:
    digest = hashlib.sha256()
    digest.update(f"{BUILD_FORMAT}|{source.label}|{source.digest}|{compiler_version()}".encode())
    _digest_files(digest, (*variant.config_files, *variant.patches))
    return digest.hexdigest()[:16]


def _digest_files(digest: Any, paths: Sequence[Path]) -> None:
    """Each file's name and content into ``digest``, separated so that no two lists give the same bytes."""
    for path in paths:
        digest.update(b"\0" + path.name.encode() + b"\0" + path.read_bytes())


def variants_asking_for(option: str) -> frozenset[str]:
    """The variants whose configuration files ask for ``option`` = y (e.g. CONFIG_SWIOTLB_DYNAMIC)."""
    return frozenset(
        name for name, v in load_variants().items() if requested_options(v.config_files).get(option) == "y"
    )


def _built(final: Path, variant: Variant) -> KernelBuild:
    identity = dict(line.split("=", 1) for line in (final / "identity.txt").read_text().splitlines() if "=" in line)
    return KernelBuild(
        name=variant.name,
        release=identity["kernel_release"],
        bzimage=final / "bzImage",
        config=final / "config",
        identity={k: v for k, v in identity.items() if k != "kernel_release"},
    )


def build_kernel(
    variant_name: str,
    source: KernelSource | None = None,
    cache: Path | None = None,
    jobs: int | None = None,
    variants: dict[str, Variant] | None = None,
) -> KernelBuild:
    """Build ``variant_name`` (or return the cached build with the same content hash)."""
    if variant_name == "stock":
        return stock_kernel(cache)
    variants = variants if variants is not None else load_variants()
    if variant_name not in variants:
        raise ConfigError(f"unknown kernel variant {variant_name!r}; valid: stock, {', '.join(variants)}")
    variant = variants[variant_name]
    if variant.problem:
        raise ConfigError(variant.problem)
    root = (cache or cache_dir()) / "kernels"
    if source is None:
        source = debian_source(cache, variant.base)
    key = build_key(source, variant)
    final = root / f"{variant.name}-{key}"
    if (final / "identity.txt").exists():
        return _built(final, variant)
    root.mkdir(parents=True, exist_ok=True)
    if " " in str(root):
        raise HostError(
            f"kernel build directory {root} holds a space, which the kernel's build system cannot "
            "handle: set SWIOTLB_LAB_CACHE to a path without spaces"
        )
    log_path = root / f"{variant.name}-{key}.build.log"
    # One build per workspace at a time; builds in different workspaces may overlap (a test's build
    # need not wait for the suite's idle-priority background build of another configuration).
    with _workspace_lock(root, source, variant) as workspace:
        if (final / "identity.txt").exists():  # built by another process while we waited
            return _built(final, variant)
        tree = _sync_tree(source, variant, workspace)
        build = workspace / "obj"
        _configure(tree, build, variant, log_path)
        _compile(tree, build, log_path, jobs or (os.cpu_count() or 1) + 1, cache or cache_dir())
        out = Path(tempfile.mkdtemp(prefix=f".out-{variant.name}-", dir=root))
        try:
            shutil.copy2(build / "arch" / "x86" / "boot" / "bzImage", out / "bzImage")
            shutil.copy2(build / ".config", out / "config")
            shutil.copy2(log_path, out / "build.log")
            release = (build / "include" / "config" / "kernel.release").read_text().strip()
            identity = {
                "kernel_release": release,
                "kernel_source": source.label,
                "kernel_source_sha256": source.digest,
                "kernel_pinned": str(source.pinned).lower(),
                "kernel_config_sha256": sha256_file(out / "config"),
                "kernel_patches_sha256": _patches_digest(variant),
                "kernel_patches": ",".join(p.name for p in variant.patches) or "none",
                "kernel_build_key": key,
                "compiler": compiler_version(),
            }
            if not source.pinned:
                pin = BASES[variant.base]
                identity["kernel_warning"] = f"PINNED {pin.package}={pin.version} WAS NOT AVAILABLE"
            atomic_write_text(out / "identity.txt", "".join(f"{k}={v}\n" for k, v in identity.items()))
            os.rename(out, final)
        finally:
            shutil.rmtree(out, ignore_errors=True)
    return _built(final, variant)


def _patches_digest(variant: Variant) -> str:
    if not variant.patches:
        return "none"
    digest = hashlib.sha256()
    for patch in variant.patches:
        digest.update(patch.read_bytes())
    return digest.hexdigest()


def patched_paths(patch: Path) -> set[str]:
    """Files a unified diff creates, changes or deletes (paths without the a/ b/ prefix)."""
    paths = set()
    for line in patch.read_text(errors="replace").splitlines():
        if line.startswith(("--- ", "+++ ")):
            name = line[4:].split("\t")[0].strip()
            if name != "/dev/null" and "/" in name:
                paths.add(name.split("/", 1)[1])
    return paths


def _apply_patches(tree: Path, patches: Sequence[Path], label: str) -> None:
    for patch in patches:
        check = subprocess.run(
            ["patch", "-p1", "-N", "--dry-run", "-i", patch], cwd=tree, capture_output=True, text=True, check=False
        )
        if check.returncode != 0:
            raise PatchError(f"patch {patch} does not apply to {label}:\n{check.stdout[-3000:]}{check.stderr}")
        run_host(
            ["patch", "-p1", "-N", "--no-backup-if-mismatch", "-i", patch], cwd=tree, what=f"applying {patch.name}"
        )


# Workspaces kept (least recently used removed first): one per kernel version and configuration.
WORKSPACES_KEPT = 8
_VERSION_LINE = re.compile(r"^(VERSION|PATCHLEVEL|SUBLEVEL) = (\d+)$", re.M)


def source_version(tree: Path) -> str:
    """The kernel version a tree's top Makefile declares, e.g. "6.12.117"."""
    try:
        fields = dict(_VERSION_LINE.findall((tree / "Makefile").read_text(errors="replace")))
    except OSError as exc:
        raise BuildError(f"{tree}: cannot read the kernel's Makefile: {exc.strerror}") from exc
    if set(fields) != {"VERSION", "PATCHLEVEL", "SUBLEVEL"}:
        raise BuildError(f"{tree}/Makefile names no VERSION, PATCHLEVEL and SUBLEVEL: not a Linux tree")
    return f"{fields['VERSION']}.{fields['PATCHLEVEL']}.{fields['SUBLEVEL']}"


def config_key(variant: Variant) -> str:
    """What a variant's workspace configuration is made of: the base config and its workspace fragments."""
    digest = hashlib.sha256()
    _digest_files(digest, (*variant.base_files, *workspace_fragments(variant)))
    return digest.hexdigest()[:12]


_KCONFIG_ENTRY = re.compile(r"^\+\s*(?:menu)?config\s+([A-Za-z0-9_]+)\s*$")


def introduced_options(patches: Sequence[Path]) -> frozenset[str]:
    """The Kconfig options a series adds (``+config NAME`` in a Kconfig file), as CONFIG_NAME."""
    names: set[str] = set()
    for patch in patches:
        current = ""
        for line in patch.read_text(errors="replace").splitlines():
            if line.startswith("+++ "):
                current = line[4:].split("\t")[0].strip()
            elif Path(current).name.startswith("Kconfig"):
                match = _KCONFIG_ENTRY.match(line)
                if match:
                    names.add(f"CONFIG_{match.group(1)}")
    return frozenset(names)


def workspace_fragments(variant: Variant) -> tuple[Path, ...]:
    """The fragments that decide a variant's build workspace: all but those that set only options its own
    patches introduce (throttle.config's SWIOTLB_THROTTLE), which the pristine tree does not know."""
    own = introduced_options(variant.patches)
    return tuple(f for f in variant.fragments if not set(requested_options([f])) <= own)


def _workspace(root: Path, source: KernelSource, variant: Variant) -> Path:
    """The build workspace (source copy + object tree) of this kernel version and configuration.

    Variants with the same configuration share one (throttle, throttle-nopoll, throttle-v2...), so
    switching between them recompiles only the files their patches touch; a variant of another
    configuration has its own, so building static, dynamic, static again never recompiles a world
    (a Kconfig symbol like SWIOTLB_DYNAMIC sits in struct device: it touches almost every object).
    An option a series brings along does not count as another configuration: throttle builds in
    static's workspace, and Kbuild's per-option dependencies recompile only what the series and
    SWIOTLB_THROTTLE touch (~370 of 1,600 objects) instead of preprocessing every object again in a
    workspace of its own.  Sources of one version share it too (a developer's tree, the nightly's
    revisions): only files whose content differs are recompiled.  Least recently used workspaces
    beyond WORKSPACES_KEPT are removed, unless a build holds them.  The caller holds the cache's
    workspace lock (briefly: to choose and evict, not to build).
    """
    stem = "+".join(f.stem for f in workspace_fragments(variant)) or "base"
    workspaces = root / ".workspaces"
    workspace = workspaces / f"{source_version(source.tree)}-{stem}-{config_key(variant)}"
    workspace.mkdir(parents=True, exist_ok=True)
    (workspace / "used").touch()
    shutil.rmtree(root / ".workspace", ignore_errors=True)  # the one shared workspace of earlier versions
    others = sorted(
        (w for w in workspaces.iterdir() if w.is_dir() and w != workspace),
        key=lambda w: (w / "used").stat().st_mtime if (w / "used").exists() else 0.0,
    )
    for stale in others[: max(0, len(others) + 1 - WORKSPACES_KEPT)]:
        with _workspace_lock_file(stale) as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info("keeping the least recently used build workspace %s: a build is using it", stale.name)
                continue
            log.info("removing the least recently used build workspace %s", stale.name)
            shutil.rmtree(stale, ignore_errors=True)
    return workspace


@contextlib.contextmanager
def _workspace_lock_file(workspace: Path) -> Iterator[Any]:
    """The lock file of a workspace: beside it, so it outlives the workspace's removal."""
    with workspace.with_name(f"{workspace.name}.lock").open("w") as handle:
        yield handle


@contextlib.contextmanager
def _workspace_lock(root: Path, source: KernelSource, variant: Variant) -> Iterator[Path]:
    """This variant's workspace, held for a build: chosen under the cache's lock, then locked on its own."""
    with (root / ".workspace.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        workspace = _workspace(root, source, variant)
    with _workspace_lock_file(workspace) as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        workspace.mkdir(parents=True, exist_ok=True)  # removed while we waited: start it again
        (workspace / "used").touch()
        yield workspace


def _sync_source(source: KernelSource, tree: Path) -> None:
    """Make ``tree`` the content of ``source.tree``, replacing only files whose content differs.

    Replaced files get a new inode and the current time (so make rebuilds what depends on them and the
    other tree's hard-linked files stay intact); files with the same content keep theirs.
    """
    argv = [
        "rsync",
        "--recursive",
        "--links",
        "--perms",
        "--delete",
        "--checksum",
        "--exclude=/.git",
        f"{source.tree}/",
        f"{tree}/",
    ]
    if shutil.which("rsync") is None:
        raise HostError("rsync not found: install the Debian package rsync (make setup does)")
    run_host(argv, what=f"bringing the build tree to {source.label}")


def _sync_tree(source: KernelSource, variant: Variant, workspace: Path) -> Path:
    """Bring ``workspace/src`` to pristine source + the variant's patches, touching only files that change.

    Files are replaced, never written in place, so the hard links shared with
    the pristine tree stay intact; files whose content is unchanged keep their
    timestamps, so make rebuilds only what a patch change really touches.
    """
    tree = workspace / "src"
    origin = workspace / "origin.txt"
    if not tree.exists() or not origin.exists():
        shutil.rmtree(tree, ignore_errors=True)
        shutil.rmtree(workspace / "obj", ignore_errors=True)
        # patch(1) and this function replace files, so hard links keep the pristine tree intact.
        run_host(["cp", "-al", source.tree, tree], what="copying the kernel tree")
        (workspace / "touched.txt").unlink(missing_ok=True)
        atomic_write_text(origin, source.label)
    elif origin.read_text() != source.label:
        # Another tree of the same version (the workspace key holds the version): keep the object tree.
        _sync_source(source, tree)
        atomic_write_text(origin, source.label)
    touched_file = workspace / "touched.txt"
    before = set(touched_file.read_text().split()) if touched_file.exists() else set()
    now: set[str] = set()
    for patch in variant.patches:
        now |= patched_paths(patch)
    incoming = workspace / "incoming"
    shutil.rmtree(incoming, ignore_errors=True)
    incoming.mkdir()
    try:
        for rel in sorted(before | now):
            if (source.tree / rel).exists():
                (incoming / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source.tree / rel, incoming / rel)
        _apply_patches(incoming, variant.patches, source.label)
        for rel in sorted(before | now):
            wanted, current = incoming / rel, tree / rel
            if not wanted.exists():
                current.unlink(missing_ok=True)
            elif not current.exists() or current.read_bytes() != wanted.read_bytes():
                current.parent.mkdir(parents=True, exist_ok=True)
                tmp = current.with_name(f".{current.name}.lab-tmp")
                tmp.write_bytes(wanted.read_bytes())  # new inode, fresh mtime: make sees the change
                os.chmod(tmp, wanted.stat().st_mode)
                os.replace(tmp, current)
        atomic_write_text(touched_file, "\n".join(sorted(now)) + "\n")
    finally:
        shutil.rmtree(incoming, ignore_errors=True)
    return tree


def _make(
    tree: Path, build: Path, targets: Sequence[str], log_path: Path, env: dict[str, str] | None = None, jobs: int = 1
) -> None:
    argv = ["make", "-C", str(tree), f"O={build}", f"-j{jobs}", *targets]
    with log_path.open("a") as handle:
        handle.write(f"$ {' '.join(argv)}\n")
        handle.flush()
        returncode, _, _ = run_process(argv, stdout=handle, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    if returncode != 0:
        raise BuildError(
            f"kernel build step 'make {' '.join(targets)}' failed (log: {log_path}):\n"
            + build_errors(log_path.read_text(errors="replace"))
        )


def build_errors(log_text: str, limit: int = 25) -> str:
    """The compiler's and linker's errors first (each with the line after), then make's, else the log's tail."""
    lines = log_text.splitlines()
    compiler = re.compile(r":\d+(:\d+)?: (fatal )?error:|undefined reference|^ld: |\bError: ")
    picked: list[str] = []
    for index, line in enumerate(lines):
        if compiler.search(line):
            picked.extend(lines[index : index + 2])
    make_errors = [line for line in lines if re.search(r"\*\*\* .*Error \d+", line)]
    chosen = (picked[:limit] + make_errors[:2]) if picked else (make_errors or lines)[-limit:]
    return "\n".join(chosen)


def _configure(tree: Path, build: Path, variant: Variant, log_path: Path) -> None:
    build.mkdir(parents=True, exist_ok=True)
    log_path.write_text("")
    fragments = variant.config_files
    # merge_config.sh splits its file list on spaces: hand it copies in the build tree, whose path has
    # none (checked), wherever the checkout lives.
    staged = build / "lab-fragments"
    shutil.rmtree(staged, ignore_errors=True)
    staged.mkdir()
    copies = []
    for index, fragment in enumerate(fragments):
        copies.append(staged / f"{index:02d}-{fragment.name}")
        shutil.copyfile(fragment, copies[-1])
    _make(tree, build, ["tinyconfig"], log_path)
    run_host(
        [tree / "scripts" / "kconfig" / "merge_config.sh", "-m", "-O", build, build / ".config", *copies],
        what="merge_config.sh",
        cwd=tree,
    )
    _make(tree, build, ["olddefconfig"], log_path)
    dropped = dropped_options(requested_options(fragments), parse_config((build / ".config").read_text()))
    if dropped:
        raise BuildError(f"Kconfig dropped options of {variant.name} (unmet dependencies?):\n  " + "\n  ".join(dropped))


def _compile(tree: Path, build: Path, log_path: Path, jobs: int, cache: Path) -> None:
    env = {
        "KBUILD_BUILD_TIMESTAMP": "2024-08-16",
        "KBUILD_BUILD_USER": "swiotlb-lab",
        "KBUILD_BUILD_HOST": "swiotlb-lab",
        "CCACHE_DIR": str(cache / "ccache"),
        "CCACHE_BASEDIR": str(cache),
        "CCACHE_NOHASHDIR": "1",
        "CCACHE_MAXSIZE": "5G",
        # Compile the output of ccache's own preprocessor run instead of preprocessing a second time:
        # every Kconfig change misses (autoconf.h is in every object), and a miss then costs 12% less
        # (measured; the objects are byte for byte the same, BENCHMARKS.md).
        "CCACHE_NOCPP2": "1",
    }
    cc = "ccache gcc" if shutil.which("ccache") else "gcc"
    _make(tree, build, [f"CC={cc}", "bzImage"], log_path, env=env, jobs=jobs)
