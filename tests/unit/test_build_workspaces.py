"""Build workspaces: one per kernel version and configuration, and a source switch that replaces only the
files whose content differs (real rsync on small trees; no compiler needed)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lab.errors import BuildError
from lab.kernel import (
    CONFIG_DIR,
    PATCH_DIR,
    KernelSource,
    Variant,
    _sync_tree,
    _workspace,
    _workspace_lock,
    introduced_options,
    load_variants,
    source_version,
    workspace_fragments,
)

MAKEFILE = "# SPDX\nVERSION = 6\nPATCHLEVEL = 12\nSUBLEVEL = 117\nEXTRAVERSION =\nNAME = Baby Opossum Posse\n"


def tree(root: Path, files: dict[str, str]) -> KernelSource:
    for rel, text in {"Makefile": MAKEFILE, **files}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return KernelSource(root, f"tree:{root.name}", root.name)


def variant(name: str, *fragments: str, patches: tuple[Path, ...] = ()) -> Variant:
    return Variant(name, "", tuple(CONFIG_DIR / f for f in fragments), patches)


THROTTLE_V2 = tuple(sorted((PATCH_DIR / "swiotlb-throttle-v2").glob("*.patch")))


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
    debug = _workspace(root, source, variant("debug", "static.config", "throttle.config", "debug.config"))
    assert debug not in (throttle, dynamic)
    (source.tree / "Makefile").write_text(MAKEFILE.replace("SUBLEVEL = 117", "SUBLEVEL = 118"))
    assert _workspace(root, source, variant("dynamic", "dynamic.config")) != dynamic  # another version


def test_an_option_the_series_brings_along_builds_in_the_workspace_of_the_tree_without_it(tmp_path: Path) -> None:
    source = tree(tmp_path / "linux", {})
    root = tmp_path / "kernels"
    static = _workspace(root, source, variant("static", "static.config"))
    throttle = variant("throttle-v2", "static.config", "throttle.config", patches=THROTTLE_V2)
    assert workspace_fragments(throttle) == (CONFIG_DIR / "static.config",)
    assert _workspace(root, source, throttle) == static
    dynamic = _workspace(root, source, variant("dynamic", "dynamic.config"))
    v2_dynamic = variant("throttle-v2-dynamic", "dynamic.config", "throttle.config", patches=THROTTLE_V2)
    assert _workspace(root, source, v2_dynamic) == dynamic
    # Without the series that defines it, SWIOTLB_THROTTLE is just another option: its own workspace.
    assert _workspace(root, source, variant("odd", "static.config", "throttle.config")) != static
    # debug.config sets lockdep (in the pristine tree) beside the selftest's own option: its own workspace.
    selftest = tuple(sorted((PATCH_DIR / "dma-may-block-selftest").glob("*.patch")))
    debug = variant("debug", "static.config", "throttle.config", "debug.config", patches=THROTTLE_V2 + selftest)
    assert workspace_fragments(debug) == (CONFIG_DIR / "static.config", CONFIG_DIR / "debug.config")


def test_only_config_entries_of_kconfig_files_count_as_introduced(tmp_path: Path) -> None:
    assert introduced_options(THROTTLE_V2) == {"CONFIG_SWIOTLB_THROTTLE"}
    patch = tmp_path / "0001-x.patch"
    patch.write_text(
        "--- a/kernel/dma/Kconfig\n+++ b/kernel/dma/Kconfig\n@@ -1,0 +1,3 @@\n+menuconfig LAB_MENU\n"
        '+config LAB_ONE\n+\tbool "one"\n config EXISTING\n'
        "--- a/kernel/dma/notes.c\n+++ b/kernel/dma/notes.c\n@@ -1,0 +1,1 @@\n+config LAB_NOT_KCONFIG\n"
        "--- a/arch/x86/Kconfig.debug\n+++ b/arch/x86/Kconfig.debug\n@@ -1,0 +1,1 @@\n+  config LAB_TWO\n"
    )
    assert introduced_options([patch]) == {"CONFIG_LAB_MENU", "CONFIG_LAB_ONE", "CONFIG_LAB_TWO"}


def test_the_shipped_variants_need_one_workspace_per_configuration_of_the_pristine_tree(tmp_path: Path) -> None:
    source = tree(tmp_path / "linux", {})
    variants = [v for v in load_variants().values() if v.base == "6.12"]
    workspaces = {_workspace(tmp_path / "kernels", source, v) for v in variants}
    # static, dynamic and the debug world: throttle.config's one option comes with the series.
    assert len(workspaces) == len({workspace_fragments(v) for v in variants}) == 3
    # a 7.2 variant's configuration has 7.2's base config in it: never one of 6.12's workspaces, even for
    # a tree that claims 6.12's version
    static_72 = load_variants()["static-7.2"]
    assert _workspace(tmp_path / "kernels", source, static_72) not in workspaces


def test_the_least_recently_used_workspaces_go_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("lab.kernel.WORKSPACES_KEPT", 2)
    source = tree(tmp_path / "linux", {})
    root = tmp_path / "kernels"
    static = _workspace(root, source, variant("static", "static.config"))
    dynamic = _workspace(root, source, variant("dynamic", "dynamic.config"))
    os.utime(static / "used", (1, 1))  # static was used long before dynamic
    os.utime(dynamic / "used", (2, 2))
    debug = _workspace(root, source, variant("debug", "static.config", "debug.config"))
    assert sorted(w for w in (root / ".workspaces").iterdir() if w.is_dir()) == sorted([dynamic, debug])


def test_a_workspace_a_build_holds_is_never_removed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import fcntl

    monkeypatch.setattr("lab.kernel.WORKSPACES_KEPT", 1)
    source = tree(tmp_path / "linux", {})
    root = tmp_path / "kernels"
    static = _workspace(root, source, variant("static", "static.config"))
    with static.with_name(f"{static.name}.lock").open("w") as held:  # another process building in it
        fcntl.flock(held, fcntl.LOCK_EX)
        dynamic = _workspace(root, source, variant("dynamic", "dynamic.config"))
        assert static.is_dir() and dynamic.is_dir()
    _workspace(root, source, variant("dynamic", "dynamic.config"))  # the build is over: now it goes
    assert not static.exists() and dynamic.is_dir()


def test_builds_in_two_workspaces_overlap_and_builds_in_one_wait(tmp_path: Path) -> None:
    import threading

    source = tree(tmp_path / "linux", {})
    root = tmp_path / "kernels"
    root.mkdir()
    static, dynamic = variant("static", "static.config"), variant("dynamic", "dynamic.config")
    with _workspace_lock(root, source, static):
        with _workspace_lock(root, source, dynamic) as other:  # not blocked by the build in static's
            assert other.name.startswith("6.12.117-dynamic-")
        entered = threading.Event()

        def second_static_build() -> None:
            with _workspace_lock(root, source, static):
                entered.set()

        waiter = threading.Thread(target=second_static_build)
        waiter.start()
        assert not entered.wait(0.5)  # the same workspace: it waits for the first build
    waiter.join(5)
    assert entered.is_set()


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
