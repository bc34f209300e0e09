"""A knob one cell writes never leaks into the next cell of its boot: each cell starts from the value the boot
had (lab.probes.restore_knob_lines).  Found by the first areas.toml run, whose odd repetitions ran the
"100/100" cell first and then measured its "default" cell with the throttle still switched off."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import SHORT_LOAD, run_matrix_text

pytestmark = [pytest.mark.integration, pytest.mark.kernels("throttle")]

MATRIX = (
    """
[matrix]
kernels = ["throttle"]
pools = ["2MiB"]
workloads = ["a"]
throttle = ["100/100", "default"]
vcpus = [2]
observe = "none"
"""
    + SHORT_LOAD
)


def test_a_cell_without_knobs_gets_the_kernels_own_thresholds_after_one_with(tmp_path: Path) -> None:
    _, rows = run_matrix_text(MATRIX, tmp_path)
    rows = rows.sort_values("boot_position")
    assert rows["boot_id"].nunique() == 1 and list(rows["boot_position"]) == [0, 1]  # one boot, "100/100" first
    off, default = rows.iloc[0], rows.iloc[1]
    assert (off["high_throttle"], off["low_throttle"]) == (1024, 1024)
    # the patch's own defaults, SWIOTLB_HIGH_THROTTLE_PCT 70 and SWIOTLB_LOW_THROTTLE_PCT 65 of 1024 slots
    assert (default["high_throttle"], default["low_throttle"]) == (716, 665)
