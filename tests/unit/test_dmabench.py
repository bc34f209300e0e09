"""The DMA map benchmark's output, parsed from a real run (tests/data/dmabench/README.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab.dmabench import bind_lines, parse_output
from lab.errors import ParseError

LOG = (Path(__file__).resolve().parent.parent / "data" / "dmabench" / "static-tcg.log").read_text()


def test_each_run_gives_map_and_unmap_latency() -> None:
    runs = [part for part in LOG.split("# ")[1:]]
    one, two = (parse_output(part, threads, 1) for part, threads in zip(runs, (1, 2), strict=True))
    assert (one.map_us, one.map_sd_us, one.unmap_us, one.unmap_sd_us) == (1.9, 32.5, 1.3, 26.7)
    assert (two.threads, two.map_us, two.unmap_us) == (2, 3.3, 2.3)


def test_output_without_both_latencies_is_an_error_naming_the_source() -> None:
    first_lines = LOG.split("# ")[1].splitlines()[:3]  # the header, the settings and the map line only
    with pytest.raises(ParseError, match=r"DMA map benchmark output.*no map and unmap latency"):
        parse_output("\n".join(first_lines), 1, 1)


def test_binding_goes_through_driver_override_for_the_edu_device() -> None:
    shell = bind_lines()
    assert "0x1234" in shell and "0x11e8" in shell  # QEMU's edu: vendor 1234, device 11e8
    assert "echo dma_map_benchmark > $d/driver_override" in shell and "/sys/bus/pci/drivers_probe" in shell
