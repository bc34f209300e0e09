"""The kernel's own DMA map benchmark (CONFIG_DMA_MAP_BENCHMARK), a tool the lab did not write: map and
unmap latency by thread count, bound to a spare PCI device in the guest (claim C12's cross-check).

The tool is ``tools/testing/selftests/dma/dma_map_benchmark.c`` of the pinned kernel source, built
statically on the host (cached by the hash of its source and header) and copied into the guest.  The
kernel side is ``kernel/dma/map_benchmark.c``: a PCI driver with no ID table, bound to QEMU's ``edu``
device through ``driver_override``; under ``swiotlb=force`` every map it makes bounces.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from lab.errors import BuildError, ParseError
from lab.guest import Guest, quote_argv

TOOL_SOURCE = "tools/testing/selftests/dma/dma_map_benchmark.c"
TOOL_HEADER = "include/linux/map_benchmark.h"
GUEST_TOOL = "/run/lab/dma_map_benchmark"
EDU_PCI_ID = ("0x1234", "0x11e8")  # QEMU's edu device: vendor, device
DRIVER = "dma_map_benchmark"


def build_tool(tree: Path, cache: Path) -> Path:
    """The benchmark's user-space tool, static, from the kernel tree; cached by content."""
    source, header = tree / TOOL_SOURCE, tree / TOOL_HEADER
    for path in (source, header):
        if not path.is_file():
            raise BuildError(f"{path} is missing: the kernel tree has no DMA map benchmark tool")
    digest = hashlib.sha256(source.read_bytes() + header.read_bytes()).hexdigest()[:16]
    out = cache / "tools" / f"dma_map_benchmark-{digest}"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="dmabench-", dir=out.parent) as work:
        include = Path(work) / "include" / "linux"
        include.mkdir(parents=True)
        shutil.copy(header, include / "map_benchmark.h")  # the tool's only kernel header
        built = Path(work) / "dma_map_benchmark"
        result = subprocess.run(
            ["gcc", "-static", "-O2", "-I", str(Path(work) / "include"), "-o", str(built), str(source)],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise BuildError(f"building {source} failed:\n{result.stderr[-3000:]}")
        built.replace(out)
    return out


def bind_lines() -> str:
    """Shell: find the edu device, hand it to the benchmark driver; prints its PCI address."""
    vendor, device = EDU_PCI_ID
    return (
        "for d in /sys/bus/pci/devices/*; do "
        f'[ "$(cat $d/vendor)" = {vendor} ] && [ "$(cat $d/device)" = {device} ] || continue; '
        f"bdf=$(basename $d); echo {DRIVER} > $d/driver_override; "
        f"[ -e $d/driver ] || echo $bdf > /sys/bus/pci/drivers_probe; "
        f'[ "$(basename $(readlink $d/driver))" = {DRIVER} ] && echo $bdf && exit 0; done; '
        "echo 'no edu PCI device bound to the benchmark driver' >&2; exit 1"
    )


def install(guest: Guest, tool: Path) -> str:
    """Copy the tool into the guest and hand the edu device to the benchmark driver; its PCI address."""
    guest.put(tool, GUEST_TOOL)
    return guest.run(f"chmod +x {GUEST_TOOL}; " + bind_lines(), timeout_s=30).stdout.strip()


@dataclass(frozen=True)
class MapLatency:
    threads: int
    granule: int  # pages per map
    map_us: float
    map_sd_us: float
    unmap_us: float
    unmap_sd_us: float
    output: str = ""  # the tool's own words, kept with the results


# dma_map_benchmark.c prints, after its settings line:
#   average map latency(us):0.8 standard deviation:0.5
#   average unmap latency(us):0.6 standard deviation:0.3
_LATENCY = re.compile(r"average (map|unmap) latency\(us\):([\d.]+) standard deviation:([\d.]+)")


def parse_output(text: str, threads: int, granule: int, source: str = "dma_map_benchmark") -> MapLatency:
    found = {m.group(1): (float(m.group(2)), float(m.group(3))) for m in _LATENCY.finditer(text)}
    if set(found) != {"map", "unmap"}:
        raise ParseError("DMA map benchmark output", source, f"no map and unmap latency lines in {text[-500:]!r}")
    return MapLatency(threads, granule, *found["map"], *found["unmap"], output=text)


def run(guest: Guest, threads: int, seconds: int, granule: int) -> MapLatency:
    """One run of the tool in the guest (64-bit DMA mask: swiotlb=force bounces it all the same)."""
    argv = [GUEST_TOOL, "-t", str(threads), "-s", str(seconds), "-g", str(granule), "-b", "64"]
    out = guest.run(quote_argv(argv), timeout_s=seconds + 60).stdout
    return parse_output(out, threads, granule)
