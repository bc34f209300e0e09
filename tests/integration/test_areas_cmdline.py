"""Issue 24 end to end: a matrix with `areas = ["1", "default"]` and a `cmdline` value runs, and each row says
what its guest got (the areas requested, logged at boot and in use; the extra parameters, as the kernel
logged its command line)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lab.claims import rules
from tests.conftest import SHORT_LOAD, run_matrix_text

pytestmark = [pytest.mark.integration, pytest.mark.kernels("static")]

MATRIX = (
    """
[matrix]
kernels = ["static"]
pools = ["2MiB"]
workloads = ["a"]
areas = ["1", "default"]
cmdline = [["nvme.io_queue_depth=64"]]
vcpus = [2]
observe = "none"
"""
    + SHORT_LOAD
)


def test_one_area_and_the_default_run_with_an_extra_parameter(tmp_path: Path) -> None:
    run, rows = run_matrix_text(MATRIX, tmp_path)
    # the run fixed every claim's rule when it started (lab.claims.rules), C14's among them
    assert json.loads((run / "manifest.json").read_text())["rules"]["C14"] == rules()["C14"]
    rows = rows.set_index("swiotlb_areas_requested", drop=False)
    assert len(rows) == 2 and (rows["status"] == "ok").all() and (rows["hiwater"] > 0).all()
    one, default = rows.loc[1.0], rows[rows["swiotlb_areas_requested"].isna()].iloc[0]
    # One area asked for and got; the default is one per vCPU (2 here), as the kernel logged at boot.
    assert (one["swiotlb_areas_logged"], one["swiotlb_areas"]) == (1, 1)
    assert (default["swiotlb_areas_logged"], default["swiotlb_areas"]) == (2, 2)
    assert "swiotlb=1024,1,force" in one["kernel_cmdline"] and "swiotlb=1024,force" in default["kernel_cmdline"]
    for row in (one, default):
        assert row["cmdline_extra"] == "nvme.io_queue_depth=64"
    consoles = [p.read_text(errors="replace") for p in (run / "boots").glob("*/console.log")]
    assert len(consoles) == 2  # one boot per area count: the pool's layout is fixed at boot
    for text in consoles:
        [logged] = [line for line in text.splitlines() if "Kernel command line:" in line]
        assert logged.endswith(" nvme.io_queue_depth=64")
