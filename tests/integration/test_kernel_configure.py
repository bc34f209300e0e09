"""The kernel's configuration step from a checkout whose path holds spaces (merge_config.sh splits its
file list on them): Debian's real tree, the real fragments, tinyconfig + merge + olddefconfig (~15 s)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from lab import kernel
from lab.kernel import debian_source, load_variants, parse_config

pytestmark = pytest.mark.integration


def test_fragments_from_a_checkout_with_spaces_in_its_path_are_merged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    configs = tmp_path / "my checkouts" / "swiotlb-lab" / "kernel-configs"
    shutil.copytree(kernel.CONFIG_DIR, configs)
    monkeypatch.setattr(kernel, "CONFIG_DIR", configs)
    variant = load_variants(configs / "variants.toml")["dynamic"]
    assert all(" " in str(f) for f in variant.fragments)
    build = tmp_path / "obj"
    kernel._configure(debian_source().tree, build, variant, tmp_path / "configure.log")
    final = parse_config((build / ".config").read_text())
    assert final["CONFIG_SWIOTLB_DYNAMIC"] == "y"  # dynamic.config, merged after base.config
    assert final["CONFIG_BLK_DEV_NVME"] == "y"  # base.config
