"""The benches' ordering (lab.bench.abba): what makes a paired cost immune to a linear drift."""

from __future__ import annotations

import pytest

from lab.bench import abba


def test_abba_order_of_two_pairs_and_its_mirror() -> None:
    assert abba(2) == [True, False, False, True]
    assert abba(2, first=False) == [False, True, True, False]
    assert abba(3) == [True, False, False, True, True, False]


@pytest.mark.parametrize("pairs", [2, 3, 6, 8])
def test_every_pair_has_one_run_of_each_arm_and_a_linear_drift_cancels(pairs: int) -> None:
    order = abba(pairs)
    assert [sorted(order[i : i + 2]) for i in range(0, len(order), 2)] == [[False, True]] * pairs
    # A drift of one unit per run: the arms' mean positions differ by 0 over every two pairs, and by at most
    # 1/pairs (in units of the drift per run) when the pairs are odd.
    with_, without = [i for i, on in enumerate(order) if on], [i for i, on in enumerate(order) if not on]
    gap = sum(with_) / pairs - sum(without) / pairs
    assert abs(gap) == pytest.approx(0 if pairs % 2 == 0 else 1 / pairs)


def test_the_pairing_bench_reads_a_stored_series_v2_run() -> None:
    from pathlib import Path

    from lab.bench import bench_pairing

    text = bench_pairing(Path(__file__).resolve().parent.parent / "data" / "series-v2-counted-cells.parquet")
    unpaired, paired = (line for line in text.splitlines() if line.startswith(("  unpaired", "  paired")))
    assert "2 vs 2 unobserved cells" in unpaired and "ratios 0.84, 0.89" in paired
    assert "repetitions per group detect a 10% drop" in unpaired and "boots detect a 10% drop" in paired
