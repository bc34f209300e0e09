"""Guest image: a Debian rootfs initramfs built from images/guest, cached by recipe hash."""

from __future__ import annotations

import gzip
import logging
import lzma
import os
import posixpath
import shutil
import tempfile
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from elftools.elf.dynamic import DynamicSection
from elftools.elf.elffile import ELFFile

from lab import cpio
from lab.errors import BuildError, ConfigError
from lab.keys import new_host_key
from lab.util import atomic_write_text, cache_dir, run_host, sha256_bytes, sha256_tree

log = logging.getLogger(__name__)

# Bump when the build procedure changes in a way the recipe hash cannot see.
IMAGE_FORMAT = 1
LIB_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib", "/lib/x86_64-linux-gnu", "/lib")
STAGE_DIRS = ("dev", "proc", "sys", "run", "tmp", "root", "var/empty", "etc/lab", "mnt")


@dataclass(frozen=True)
class GuestImage:
    """A built rootfs initramfs and the host key baked into it."""

    rootfs: Path
    host_key: str  # "ssh-ed25519 AAAA... comment", pinned by the SSH client
    recipe_hash: str

    @property
    def host_key_blob(self) -> str:
        return self.host_key.split()[1]


def default_recipe() -> Path:
    return Path(__file__).resolve().parent.parent / "images" / "guest"


def recipe_hash(recipe: Path) -> str:
    files = [p for p in recipe.rglob("*") if p.is_file()]
    return sha256_bytes(f"{IMAGE_FORMAT}:{sha256_tree(files, recipe)}".encode())[:16]


def load_recipe(recipe: Path) -> dict[str, object]:
    path = recipe / "recipe.toml"
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: image recipe not found") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from exc
    for key in ("debootstrap", "rootfs"):
        if not isinstance(data.get(key), dict):
            raise ConfigError(f"{path}: missing table [{key}]")
    return data


def build_image(recipe: Path | None = None, cache: Path | None = None) -> GuestImage:
    """Return the cached image for ``recipe``, building it first if needed."""
    recipe = recipe or default_recipe()
    key = recipe_hash(recipe)
    final = (cache or cache_dir()) / "images" / key
    if (final / "rootfs.cpio").exists():
        return GuestImage(final / "rootfs.cpio", (final / "host_key.pub").read_text().strip(), key)

    final.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".build-{key}-", dir=final.parent))
    try:
        log.info("building guest image %s (recipe %s)", key, recipe)
        _build(load_recipe(recipe), recipe, work)
        try:
            os.rename(work / "out", final)
        except OSError:
            if not (final / "rootfs.cpio").exists():  # lost a race: fine if the winner finished
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return build_image(recipe, cache)


def _build(spec: dict[str, object], recipe: Path, work: Path) -> None:
    boot = spec["debootstrap"]
    rootfs = spec["rootfs"]
    assert isinstance(boot, dict) and isinstance(rootfs, dict)
    chroot, stage, out = work / "chroot", work / "stage", work / "out"
    out.mkdir()
    run_host(
        [
            "mmdebstrap",
            f"--variant={boot.get('variant', 'minbase')}",
            "--include=" + ",".join(boot.get("packages", [])),
            "--dpkgopt=path-exclude=/usr/share/{doc,man,locale}/*",
            boot.get("suite", "bookworm"),
            chroot,
        ],
        what="mmdebstrap",
        log_path=out / "mmdebstrap.log",
    )
    stage.mkdir()
    # Keep Debian's merged-/usr layout so paths inside the guest match the tree.
    for top in ("bin", "sbin", "lib", "lib64"):
        if (chroot / top).is_symlink():
            os.symlink(os.readlink(chroot / top), stage / top)
    for directory in STAGE_DIRS:
        (stage / directory).mkdir(parents=True, exist_ok=True)

    binaries = list(rootfs.get("binaries", []))
    for path in [*binaries, *rootfs.get("files", [])]:
        copy_from_root(chroot, stage, path)
    for lib in library_closure(chroot, binaries):
        copy_from_root(chroot, stage, lib)
    for link in rootfs.get("kmod_links", []):
        _symlink(stage, link, "/usr/bin/kmod")
    _busybox_links(stage)

    for name, source in dict(rootfs.get("static_programs", {})).items():
        target = stage / name.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        run_host(["gcc", "-static", "-O2", "-Wall", "-o", target, recipe / source], what=f"compiling {source}")

    overlay = recipe / "rootfs"
    shutil.copytree(overlay, stage, symlinks=True, dirs_exist_ok=True)
    (stage / "etc/ld.so.conf").write_text("\n".join(LIB_DIRS) + "\n")
    run_host(["ldconfig", "-r", stage], what="ldconfig for the guest rootfs")

    host_key = new_host_key(stage / "etc/ssh/ssh_host_ed25519_key")
    os.chmod(stage / "root", 0o700)
    with (out / "rootfs.cpio").open("wb") as handle:
        cpio.write_archive(handle, [*cpio.tree_entries(stage), cpio.console_node()])
    atomic_write_text(out / "host_key.pub", host_key.public_line + "\n")
    (stage / "etc/ssh/ssh_host_ed25519_key.pub").unlink()


def _symlink(stage: Path, link: str, target: str) -> None:
    path = stage / link.lstrip("/")
    if path.exists() or path.is_symlink():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, path)


def _busybox_links(stage: Path) -> None:
    """Applet links for everything the Debian tree did not provide itself."""
    loader = stage / "lib64/ld-linux-x86-64.so.2"
    listing = run_host(
        [loader, "--library-path", stage / "usr/lib/x86_64-linux-gnu", stage / "usr/bin/busybox", "--list-full"],
        what="listing busybox applets",
    )
    for applet in listing.split():
        _symlink(stage, "/" + applet, "/bin/busybox")
    _symlink(stage, "/bin/sh", "/bin/busybox")


def copy_from_root(root: Path, stage: Path | None, path: str, _depth: int = 0) -> str:
    """Copy ``root/path`` to ``stage/path``, recreating each symlink met on the way.

    Absolute symlink targets are taken relative to ``root``, as in a chroot.
    Returns the real (symlink-free) path inside ``root``; with ``stage`` None
    it only resolves.
    """
    if _depth > 40:
        raise BuildError(f"too many levels of symbolic links resolving {path} in {root}")
    parts = PurePosixPath(path).parts[1:]
    current = PurePosixPath("/")
    for index, part in enumerate(parts):
        candidate = current / part
        src = root / str(candidate)[1:]
        if src.is_symlink():
            target = os.readlink(src)
            if stage is not None:
                _symlink(stage, str(candidate), target)
            base = PurePosixPath(target) if target.startswith("/") else candidate.parent / target
            rest = parts[index + 1 :]
            resolved = posixpath.normpath(str(base.joinpath(*rest)))
            return copy_from_root(root, stage, resolved, _depth + 1)
        current = candidate
    src = root / str(current)[1:]
    if not src.exists():
        raise BuildError(f"{current} is not in the debootstrap tree {root}; check images/guest/recipe.toml")
    if stage is None:
        return str(current)
    dst = stage / str(current)[1:]
    if src.is_dir():
        dst.mkdir(parents=True, exist_ok=True)
    elif not dst.exists():
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)
    return str(current)


def _dynamic_info(path: Path) -> tuple[list[str], list[str]]:
    with path.open("rb") as handle:
        elf = ELFFile(handle)
        needed: list[str] = []
        runpaths: list[str] = []
        for section in elf.iter_sections():
            if not isinstance(section, DynamicSection):
                continue
            for tag in section.iter_tags():
                if tag.entry.d_tag == "DT_NEEDED":
                    needed.append(str(tag.needed))  # type: ignore[attr-defined]
                elif tag.entry.d_tag in ("DT_RUNPATH", "DT_RPATH"):
                    runpaths.extend(getattr(tag, "runpath", getattr(tag, "rpath", "")).split(":"))
        return needed, runpaths


def _real(root: Path, path: str) -> Path:
    """Resolve ``path`` inside ``root`` as a chroot would."""
    return root / copy_from_root(root, None, path).lstrip("/")


def library_closure(root: Path, binaries: Sequence[str]) -> list[str]:
    """Every shared library (path inside ``root``) the binaries need, transitively (DT_NEEDED)."""
    found: dict[str, str] = {}
    pending: list[tuple[str, str]] = [(b, b) for b in binaries]
    seen_files: set[str] = set()
    while pending:
        name, path = pending.pop()
        real = _real(root, path)
        if str(real) in seen_files:
            continue
        seen_files.add(str(real))
        needed, runpaths = _dynamic_info(real)
        origin = posixpath.dirname(path)
        search = [rp.replace("$ORIGIN", origin) for rp in runpaths if rp] + list(LIB_DIRS)
        for soname in needed:
            if soname in found:
                continue
            lib = _find(root, soname, search)
            if lib is None:
                raise BuildError(f"{name} needs {soname}, which is not in {root} (searched {search})")
            found[soname] = lib
            pending.append((soname, lib))
    # The dynamic loader itself.
    interp = "/lib64/ld-linux-x86-64.so.2"
    return sorted({*found.values(), interp})


def _find(root: Path, soname: str, search: Iterable[str]) -> str | None:
    for directory in search:
        candidate = posixpath.join(directory, soname)
        if (root / candidate.lstrip("/")).exists():
            return candidate
    return None


# --- kernel modules ------------------------------------------------------------------


def _module_name(path: str) -> str:
    base = posixpath.basename(path)
    for suffix in (".ko.xz", ".ko.gz", ".ko.zst", ".ko"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    return base.replace("-", "_")


def module_load_order(modules_dep: str, wanted: Sequence[str]) -> list[str]:
    """Module files (relative paths from modules.dep) to insmod, dependencies first."""
    deps: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    for line in modules_dep.splitlines():
        if ":" not in line:
            continue
        path, _, rest = line.partition(":")
        deps[path] = rest.split()
        by_name[_module_name(path)] = path
    order: list[str] = []

    def visit(path: str) -> None:
        if path in order:
            return
        for dep in reversed(deps.get(path, [])):
            visit(dep)
        order.append(path)

    for name in wanted:
        key = name.replace("-", "_")
        if key not in by_name:
            raise ConfigError(f"kernel module {name!r} is not in modules.dep (neither built in nor a module?)")
        visit(by_name[key])
    return order


def modules_archive(modules_dir: Path, wanted: Sequence[str], out: Path) -> None:
    """An initramfs fragment with ``wanted`` modules (decompressed) and /etc/lab/modules."""
    builtin = modules_dir / "modules.builtin"
    builtin_names = {_module_name(p) for p in builtin.read_text().split()} if builtin.exists() else set()
    to_load = [m for m in wanted if m.replace("-", "_") not in builtin_names]
    order = module_load_order((modules_dir / "modules.dep").read_text(), to_load) if to_load else []
    entries = [
        cpio.Entry("etc", 0o40755),
        cpio.Entry("etc/lab", 0o40755),
        cpio.Entry("lab", 0o40755),
        cpio.Entry("lab/modules", 0o40755),
    ]
    listing = []
    for index, rel in enumerate(order):
        raw = (modules_dir / rel).read_bytes()
        if rel.endswith(".xz"):
            raw = lzma.decompress(raw)
        elif rel.endswith(".gz"):
            raw = gzip.decompress(raw)
        elif rel.endswith(".zst"):
            raise BuildError(f"{modules_dir / rel}: zstd-compressed modules are not supported; build with xz")
        name = f"lab/modules/{index:02d}-{_module_name(rel)}.ko"
        entries.append(cpio.Entry(name, 0o100644, raw))
        listing.append("/" + name)
    entries.append(cpio.Entry("etc/lab/modules", 0o100644, ("\n".join(listing) + "\n").encode()))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    with tmp.open("wb") as handle:
        cpio.write_archive(handle, entries)
    os.replace(tmp, out)


def initrd_for(image: GuestImage, kernel_modules_dir: Path | None, modules: Sequence[str], cache: Path) -> Path:
    """The initrd QEMU loads: rootfs + the kernel's boot modules, concatenated and cached."""
    if kernel_modules_dir is None or not modules:
        return image.rootfs  # everything built in: nothing to append
    key = sha256_bytes(f"{image.recipe_hash}|{kernel_modules_dir}|{','.join(modules)}".encode())[:16]
    out = cache / "initrds" / f"{key}.cpio"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    fragment = out.with_suffix(".modules")
    if kernel_modules_dir is not None and modules:
        modules_archive(kernel_modules_dir, modules, fragment)
    tmp = out.with_suffix(".tmp")
    with tmp.open("wb") as handle:
        with image.rootfs.open("rb") as rootfs:
            shutil.copyfileobj(rootfs, handle, 1 << 20)
        if fragment.exists():
            handle.write(fragment.read_bytes())
    fragment.unlink(missing_ok=True)
    os.replace(tmp, out)
    return out
