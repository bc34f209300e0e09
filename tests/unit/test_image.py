"""Guest image pieces that need no debootstrap: cpio writer, module order, path copying, recipe hash."""

from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from lab import cpio
from lab.errors import ConfigError
from lab.image import copy_from_root, default_recipe, load_recipe, module_load_order, recipe_hash

MODULES_DEP = """\
kernel/drivers/net/virtio_net.ko.xz: kernel/drivers/net/net_failover.ko.xz \
kernel/net/core/failover.ko.xz
kernel/drivers/net/net_failover.ko.xz: kernel/net/core/failover.ko.xz
kernel/net/core/failover.ko.xz:
kernel/drivers/block/virtio_blk.ko.xz:
"""


def test_modules_load_dependencies_first() -> None:
    order = module_load_order(MODULES_DEP, ["virtio_net", "virtio-blk"])
    assert order == [
        "kernel/net/core/failover.ko.xz",
        "kernel/drivers/net/net_failover.ko.xz",
        "kernel/drivers/net/virtio_net.ko.xz",
        "kernel/drivers/block/virtio_blk.ko.xz",
    ]


def test_unknown_module_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"'nope' is not in modules\.dep"):
        module_load_order(MODULES_DEP, ["nope"])


@pytest.mark.skipif(shutil.which("cpio") is None, reason="needs cpio(1) to read the archive back")
def test_cpio_archive_reads_back_with_gnu_cpio(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "tool").write_bytes(b"#!/bin/sh\necho hi\n")
    os.chmod(root / "bin" / "tool", 0o755)
    os.symlink("bin/tool", root / "link")
    buffer = io.BytesIO()
    cpio.write_archive(buffer, [*cpio.tree_entries(root), cpio.console_node()])
    listing = subprocess.run(["cpio", "-itv"], input=buffer.getvalue(), capture_output=True, check=True).stdout.decode()
    assert "bin/tool" in listing and "link -> bin/tool" in listing
    assert "dev/console" in listing and listing.splitlines()[-1].startswith("crw")


def test_cpio_is_reproducible(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    first, second = io.BytesIO(), io.BytesIO()
    cpio.write_archive(first, cpio.tree_entries(tmp_path))
    os.utime(tmp_path / "f", (0, 0))
    cpio.write_archive(second, cpio.tree_entries(tmp_path))
    assert first.getvalue() == second.getvalue()
    assert len(first.getvalue()) % 4 == 0


def test_copy_from_root_follows_absolute_symlinks_inside_the_root(tmp_path: Path) -> None:
    root, stage = tmp_path / "root", tmp_path / "stage"
    (root / "usr/lib").mkdir(parents=True)
    (root / "usr/lib/libx.so.1.2").write_text("lib")
    os.symlink("usr/lib", root / "lib")  # merged /usr
    os.symlink("/usr/lib/libx.so.1.2", root / "usr/lib/libx.so.1")  # absolute: must stay inside root
    real = copy_from_root(root, stage, "/lib/libx.so.1")
    assert real == "/usr/lib/libx.so.1.2"
    assert (stage / "usr/lib/libx.so.1.2").read_text() == "lib"
    assert os.readlink(stage / "lib") == "usr/lib"
    assert stat.S_ISLNK((stage / "usr/lib/libx.so.1").lstat().st_mode)
    # without a stage it only resolves, and writes nothing
    assert copy_from_root(root, None, "/lib/libx.so.1") == "/usr/lib/libx.so.1.2"


def test_recipe_hash_changes_when_any_recipe_file_changes(tmp_path: Path) -> None:
    recipe = tmp_path / "recipe"
    shutil.copytree(default_recipe(), recipe)
    before = recipe_hash(recipe)
    assert recipe_hash(recipe) == before
    (recipe / "rootfs" / "init").write_text((recipe / "rootfs" / "init").read_text() + "\n# changed\n")
    assert recipe_hash(recipe) != before


def test_shipped_recipe_loads_and_bad_recipe_names_the_file(tmp_path: Path) -> None:
    assert "fio" in load_recipe(default_recipe())["debootstrap"]["packages"]  # type: ignore[index]
    (tmp_path / "recipe.toml").write_text("[debootstrap\n")
    with pytest.raises(ConfigError, match=r"recipe\.toml: invalid TOML"):
        load_recipe(tmp_path)
