"""pool = "default": the guest kernel chooses the pool (no size on its command line), and the row says what
it got.  On a plain guest that is the kernel's 64 MiB (IO_TLB_DEFAULT_SIZE); in an SEV-SNP or TDX guest the
kernel would enlarge it, which only a size-less command line allows."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import run_matrix_text

pytestmark = pytest.mark.integration

MATRIX = """
[matrix]
kernels = ["static"]
pools = ["default"]
workloads = ["a"]
observe = "all"

[workloads.a]
rw = "randread"
bs = "64k"
iodepth = 16
numjobs = 2
runtime = "3s"
size = "64M"
"""


@pytest.mark.kernels("static")
def test_a_default_pool_is_what_the_guest_kernel_chose(tmp_path: Path) -> None:
    run, rows = run_matrix_text(MATRIX, tmp_path)
    [row] = rows.to_dict("records")
    assert row["cell_id"].startswith("static-default-nvme-a-r0-")
    assert row["pool_slabs_requested"] == 0
    assert row["nslabs"] == 64 * 1024 * 1024 // 2048  # the kernel's default, 32768 slots of 2 KiB
    assert row["hiwater"] > 0  # forced bouncing all the same
    text = next((run / "boots").glob("*/console.log")).read_text(errors="replace")
    assert "swiotlb=force" in text and "swiotlb=0" not in text  # the command line, as the kernel logged it
    assert re.search(r"default → 32,?768", (run / "summary.md").read_text())
