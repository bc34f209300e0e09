"""Kernel config merging checks, build-error extraction and variant loading (no compiler needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab.errors import ConfigError
from lab.kernel import (
    BASES,
    CONFIG_DIR,
    build_errors,
    dropped_options,
    load_variants,
    parse_config,
    requested_options,
)


def test_parse_config_reads_values_and_not_set_lines() -> None:
    text = 'CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C="str"\nCONFIG_D=64\n# comment\n'
    assert parse_config(text) == {"CONFIG_A": "y", "CONFIG_B": "n", "CONFIG_C": "str", "CONFIG_D": "64"}


def test_later_fragments_override_earlier_ones(tmp_path: Path) -> None:
    (tmp_path / "a.config").write_text("CONFIG_X=y\nCONFIG_Y=y\n")
    (tmp_path / "b.config").write_text("# CONFIG_X is not set\n")
    assert requested_options([tmp_path / "a.config", tmp_path / "b.config"]) == {"CONFIG_X": "n", "CONFIG_Y": "y"}


def test_dropped_options_are_listed_with_requested_and_actual_values() -> None:
    wanted = {"CONFIG_HIST_TRIGGERS": "y", "CONFIG_MODULES": "n", "CONFIG_NR_CPUS": "64"}
    final = {"CONFIG_MODULES": "y", "CONFIG_NR_CPUS": "64"}
    assert dropped_options(wanted, final) == [
        "CONFIG_HIST_TRIGGERS: requested y, got n (absent)",
        "CONFIG_MODULES: requested n, got y",
    ]


def test_not_set_is_satisfied_by_absence() -> None:
    assert dropped_options({"CONFIG_SLUB_TINY": "n"}, {}) == []


def test_build_errors_pick_compiler_errors_with_context() -> None:
    log = "\n".join(
        ["  CC      kernel/a.o"] * 50
        + [
            "kernel/dma/swiotlb.c: In function 'swiotlb_throttle':",
            "kernel/dma/swiotlb.c:1400:9: error: 'x' undeclared (first use in this function)",
            " 1400 |         x = 1;",
            "make[4]: *** [scripts/Makefile.build:229: kernel/dma/swiotlb.o] Error 1",
        ]
    )
    errors = build_errors(log)
    assert "swiotlb.c:1400:9: error: 'x' undeclared" in errors
    assert "Error 1" in errors
    assert errors.count("CC      kernel/a.o") <= 1  # a little context, not the whole log


def test_build_errors_keep_the_compiler_error_of_a_real_failed_build() -> None:
    # A real log: make -j3 goes on compiling other files after the error, then unwinds 6 make levels.
    log = (Path(__file__).parents[1] / "data" / "build-error-swiotlb.log").read_text()
    errors = build_errors(log)
    assert "swiotlb.c:24:2: error: #error lab-fault-injection" in errors
    assert errors.splitlines()[-2].endswith("kernel/dma/swiotlb.o] Error 1")  # which object failed
    assert "CC      crypto/algapi.o" not in errors


def test_shipped_variants_cover_the_four_kernels() -> None:
    variants = load_variants()
    assert {"static", "dynamic", "throttle", "throttle-dynamic"} <= set(variants)
    assert requested_options(list(variants["dynamic"].fragments))["CONFIG_SWIOTLB_DYNAMIC"] == "y"
    assert requested_options(list(variants["static"].fragments))["CONFIG_SWIOTLB_DYNAMIC"] == "n"
    throttle = variants["throttle"]
    assert requested_options(list(throttle.fragments))["CONFIG_SWIOTLB_THROTTLE"] == "y"
    # the series, then the lab's instruments (every variant carries them last)
    assert [p.name[:4] for p in throttle.patches] == [f"{i:04d}" for i in range(1, 9)] + ["0001", "0001"]
    assert [p.parent.name for p in variants["static"].patches] == [
        "dma-map-failure-counter",
        "swiotlb-emulate-conversion",
    ]
    # its twin without them, for `bench counter`
    assert variants["static-bare"].patches == () and variants["static-bare"].fragments == variants["static"].fragments
    assert all(not v.problem for v in variants.values())
    # every variant of the stored runs is built on 6.12; static-7.2 on Linux 7.2 (issue 20), pinned
    assert {v.base for n, v in variants.items() if n != "static-7.2"} == {"6.12"}
    assert variants["static-7.2"].base == "7.2"
    assert [p.parent.name for p in variants["static-7.2"].patches] == ["dma-map-failure-counter-7.2"]
    # 7.2's own base config goes between base.config and the fragments: x86 has lazy preemption now
    assert [f.name for f in variants["static-7.2"].config_files] == ["base.config", "base-7.2.config", "static.config"]
    wanted = requested_options(list(variants["static-7.2"].config_files))
    assert (wanted["CONFIG_PREEMPT_VOLUNTARY"], wanted["CONFIG_PREEMPT_LAZY"]) == ("n", "y")
    assert [f.name for f in variants["static"].config_files] == ["base.config", "static.config"]
    assert (BASES["7.2"].package, BASES["7.2"].version, BASES["7.2"].suite) == ("linux-source-7.2", "7.2.13-1", "sid")


def test_base_config_asks_for_what_the_probes_need() -> None:
    base = requested_options([CONFIG_DIR / "base.config"])
    for option in (
        "CONFIG_DEBUG_FS",
        "CONFIG_HIST_TRIGGERS",
        "CONFIG_BLK_DEBUG_FS",
        "CONFIG_SYSVIPC",
        "CONFIG_IO_URING",
        "CONFIG_VIRTIO_PCI",
        "CONFIG_BLK_DEV_NVME",
        "CONFIG_MAGIC_SYSRQ",
        "CONFIG_SATA_AHCI",
        "CONFIG_SCSI_SYM53C8XX_2",
        "CONFIG_DMA_MAP_BENCHMARK",
    ):
        assert base[option] == "y", option


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("[variants.x]\ncolour = 1\n", "unknown key 'colour'", id="unknown-key"),
        pytest.param(
            'instrument = ["x"]\n[variants.x]\n',
            "unknown key 'instrument'; valid keys: instruments",
            id="unknown-top-level-key",
        ),
        pytest.param(
            '[variants.x]\ninstruments = "no"\n', "instruments = 'no' must be true or false", id="instruments-not-bool"
        ),
        pytest.param(
            '[variants.x]\nfragments = ["nope.config"]\n', "nope.config does not exist", id="missing-fragment"
        ),
        pytest.param("[variants.x\n", "cannot load kernel variants", id="malformed"),
        pytest.param('[variants.x]\nbase = "6.1"\n', "variants.x: base = '6.1'; valid: '6.12', '7.2'", id="bad-base"),
        pytest.param(
            '[instruments]\n"6.1" = []\n[variants.x]\n',
            r"instruments\.6\.1: not a base; valid: 6\.12, 7\.2",
            id="bad-instruments-base",
        ),
    ],
)
def test_bad_variants_file_names_the_problem(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "variants.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_variants(path)


def test_variant_with_empty_patch_series_fails_only_when_built(tmp_path: Path) -> None:
    path = tmp_path / "variants.toml"
    path.write_text('[variants.x]\npatches = ["no-such-series"]\n')
    variants = load_variants(path)
    assert "no-such-series has no *.patch files" in variants["x"].problem
