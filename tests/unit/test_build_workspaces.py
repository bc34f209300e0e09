"""Build workspaces: one per kernel version and configuration, and a source switch that replaces only the
files whose content differs (real rsync on small trees; no compiler needed)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lab.errors import BuildError
from lab.kernel import CONFIG_DIR, KernelSource, Variant, _sync_tree, _workspace, load_variants, source_version

MAKEFILE = "# SPDX\nVERSION = 6\nPATCHLEVEL = 12\nSUBLEVEL = 117\nEXTRAVERSION =\nNAME = Baby Opossum Posse\n"


def tree(root: Path, files: dict[str, str]) -> KernelSource:
    for rel, text in {"Makefile": MAKEFILE, **files}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return KernelSource(root, f"tree:{root.name}", root.name)


def variant(name: str, *fragments: str) -> Variant:
    return Variant(name, "", tuple(CONFIG_DIR / f for f in fragments), ())


def test_the_version_comes_from_the_top_makefile(tmp_path: Path) -> None:
    assert source_version(tree(tmp_path, {}).tree) == "6.12.117"
    (tmp_path / "Makefile").write_text("all:\n")
    with pytest.raises(BuildError, match="names no VERSION"):
        source_version(tmp_path)


def test_variants_of_one_configuration_share_a_workspace_and_others_do_not(tmp_path: Path) -> None:
    source = tree(tmp_path / "linux", {})
    root = tmp_path / "kernels"
    throttle = _workspace(root, source, variant("throttle", "static.config", "throttle.config"))
    assert _workspace(root, source, variant("throttle-v2", "static.config", "throttle.config")) == throttle
    dynamic = _workspace(root, source, variant("dynamic", "dynamic.config"))
    assert dynamic != throttle and dynamic.name.startswith("6.12.117-dynamic-")
    (source.tree / "Makefile").write_text(MAKEFILE.replace("SUBLEVEL = 117", "SUBLEVEL = 118"))
    assert _workspace(root, source, variant("dynamic", "dynamic.config")) != dynamic  # another version


def test_the_shipped_variants_need_one_workspace_per_set_of_fragments(tmp_path: Path) -> None:
    source = tree(tmp_path / "linux", {})
    variants = load_variants().values()
    workspaces = {_workspace(tmp_path / "kernels", source, v) for v in variants}
    assert len(workspaces) == len({v.fragments for v in variants})


def test_the_least_recently_used_workspaces_go_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("lab.kernel.WORKSPACES_KEPT", 2)
    source = tree(tmp_path / "linux", {})
    root = tmp_path / "kernels"
    static = _workspace(root, source, variant("static", "static.config"))
    dynamic = _workspace(root, source, variant("dynamic", "dynamic.config"))
    os.utime(static / "used", (1, 1))  # static was used long before dynamic
    os.utime(dynamic / "used", (2, 2))
    debug = _workspace(root, source, variant("debug", "static.config", "debug.config"))
    assert sorted((root / ".workspaces").iterdir()) == sorted([dynamic, debug])


def test_a_source_switch_replaces_only_what_differs_and_leaves_both_trees_intact(tmp_path: Path) -> None:
    debian = tree(
        tmp_path / "debian",
        {"kernel/dma/swiotlb.c": "a\n", "drivers/nvme/host/pci.c": "depth 1024\n", "old.c": "gone in the other tree\n"},
    )
    workspace = tmp_path / "ws"
    workspace.mkdir()
    built = _sync_tree(debian, variant("static"), workspace)
    assert (built / "drivers/nvme/host/pci.c").stat().st_ino == (debian.tree / "drivers/nvme/host/pci.c").stat().st_ino
    (workspace / "obj").mkdir()
    (workspace / "obj" / "swiotlb.o").write_text("object")
    kept = (built / "kernel/dma/swiotlb.c").stat()

    other = tree(
        tmp_path / "other",
        {"kernel/dma/swiotlb.c": "a\n", "drivers/nvme/host/pci.c": "depth 4\n", "new.c": "only here\n"},
    )
    assert _sync_tree(other, variant("static"), workspace) == built
    assert (built / "drivers/nvme/host/pci.c").read_text() == "depth 4\n"
    assert (built / "new.c").read_text() == "only here\n" and not (built / "old.c").exists()
    same = (built / "kernel/dma/swiotlb.c").stat()
    assert (same.st_ino, same.st_mtime_ns) == (kept.st_ino, kept.st_mtime_ns)  # unchanged: make rebuilds nothing
    assert (debian.tree / "drivers/nvme/host/pci.c").read_text() == "depth 1024\n"  # the other tree is untouched
    assert (workspace / "obj" / "swiotlb.o").exists()  # same version: the objects stay
    assert (workspace / "origin.txt").read_text() == other.label
