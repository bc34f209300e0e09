"""The series tables and claim C8 on stored real cells (tests/data/series-v2-cells.parquet: the
`series-v2` matrix, 2026-11-27; see tests/data/README.md).  Expected values are read off those cells'
report by hand, not recomputed here."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from lab.claims import judge_c8
from lab.series import overshoot_table, recovery_table, timeout_table

DATA = Path(__file__).resolve().parent.parent / "data"


@pytest.fixture(scope="module")
def cells() -> pd.DataFrame:
    return pd.read_parquet(DATA / "series-v2-cells.parquet")


def test_the_timeout_sweep_spans_plain_swiotlb_to_v1(cells: pd.DataFrame) -> None:
    table = timeout_table(cells).set_index(["kernel", "timeout"])
    fixed, growing = table.loc["throttle-v2"], table.loc["throttle-v2-dynamic"]
    assert list(fixed.index) == ["0 ms", "1 ms", "10 ms", "100 ms", "none"]
    assert (fixed["cells"] == 3).all() and (growing["cells"] == 3).all()
    # 0 ms never waits: a fixed pool fails maps by the ten thousand, like static ...
    assert fixed.loc["0 ms", "map_failures_median"] == 20950 and fixed.loc["0 ms", "timeouts_median"] == 48437
    # ... a bound of 100 ms or none leaves a few dozen, and nothing times out at 100 ms
    assert fixed.loc["100 ms", "map_failures_median"] == 14 and fixed.loc["none", "map_failures_median"] == 27
    assert fixed.loc["100 ms", "timeouts_median"] == 0
    # a growing pool never fails a map; with 0 ms it grows like plain SWIOTLB_DYNAMIC
    assert (growing["map_failures_median"] == 0).all()
    assert growing.loc["0 ms", "pool_growth_slabs"] == 19456


def test_c8_on_three_repetitions_is_inconclusive_and_says_how_many_would_decide(cells: pd.DataFrame) -> None:
    verdict = judge_c8(cells)
    assert verdict.verdict == "inconclusive"
    # Compared within the boots that ran both bounds; repetition 0 ran the sampler: not compared.  The two
    # unobserved boots' IOPS ratios (bounded / none) are 0.74 and 0.78: a steady cost of about a quarter,
    # which two boots cannot pin down (the paired t-test's 1 degree of freedom: p = 0.06).
    assert "[within 2 unobserved boots; IOPS ratio per boot 0.74, 0.78]" in verdict.detail
    assert "fio_iops -24.4% (too noisy; ~3 boots with both bounds would detect it)" in verdict.detail
    assert len(verdict.evidence) == 6 and all(e.startswith("throttle-v2-1024-nvme-heavy-") for e in verdict.evidence)
    assert "throttle-v2-dynamic 0 ms: IOPS 6707" in verdict.detail


def test_the_overshoot_table_is_per_kernel_and_timeout(cells: pd.DataFrame) -> None:
    table = overshoot_table(cells).set_index(["kernel", "timeout"])
    assert set(table.index.get_level_values("kernel")) == {"throttle", "throttle-v2", "throttle-v2-dynamic"}
    assert table.loc[("throttle", "-"), "cells"] == 3  # v1 has no bound
    assert len(table.loc["throttle-v2"]) == 5 and (table["cells"] == 3).all()


def test_without_faults_there_is_no_recovery_table(cells: pd.DataFrame) -> None:
    assert recovery_table(cells).empty


def test_a_run_of_v1_kernels_only_labels_their_missing_bound() -> None:
    # conversion.toml's run (dynamic and v1 throttle, no v2) left the column all None, and the report died
    from lab.matrix import THROTTLE_FOREVER_MS, timeout_label

    assert timeout_label(None) == timeout_label(float("nan")) == "-"
    assert timeout_label(100) == "100 ms" and timeout_label(THROTTLE_FOREVER_MS) == "none"


def test_c8_rerun_with_the_failure_counters_gives_the_same_verdict() -> None:
    # README: the rerun counts failed scatterlists too; C8 stays inconclusive, the growing pool fails none
    counted = pd.read_parquet(DATA / "series-v2-counted-cells.parquet")
    verdict = judge_c8(counted)
    assert verdict.verdict == "inconclusive" and "fio_iops -13.6% (too noisy" in verdict.detail
    assert "IOPS ratio per boot 0.84, 0.89" in verdict.detail
    assert "throttle-v2 100 ms: IOPS 3184, p99 304 ms, failed maps 4-798" in verdict.detail
    assert "throttle-v2-dynamic none: IOPS 3777, p99 275 ms, failed maps 0" in verdict.detail
