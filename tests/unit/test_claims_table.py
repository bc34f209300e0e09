"""Claims as a table (lab.claims.CLAIMS): a claim added in one place, a row of the table, is judged, has its
rule fixed before a run, and shows up in the report with its figure, with nothing else edited."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from lab import claims
from lab.claims import FIGURE_PERFORMANCE, Claim, Verdict, claim_of, judge_all, rules
from lab.report import build_report

DATA = Path(__file__).resolve().parent.parent / "data"


def judge_toy(cells: pd.DataFrame) -> Verdict:
    """A toy claim: supported if every successful cell measured more than 1,000 IOPS."""
    ok = cells[cells["status"] == "ok"]
    verdict = "supported" if (ok["fio_iops"] > 1000).all() else "contradicted"
    text, threshold = "Toy: every cell does more than 1,000 IOPS", "every ok cell > 1,000"
    return Verdict("C99", text, verdict, "fio_iops", threshold, tuple(ok["cell_id"]), f"{ok['fio_iops'].min():.0f}")


@pytest.fixture
def toy(monkeypatch: pytest.MonkeyPatch) -> Claim:
    claim = Claim("C99", judge_toy, FIGURE_PERFORMANCE)
    monkeypatch.setattr(claims, "CLAIMS", (*claims.CLAIMS, claim))
    return claim


def test_a_claim_added_as_a_row_is_judged_planned_and_reported(toy: Claim, tmp_path: Path) -> None:
    run = tmp_path / "run-small"
    shutil.copytree(DATA / "run-small", run)
    cells = pd.read_parquet(run / "cells.parquet")
    lowest = cells.loc[cells["status"] == "ok", "fio_iops"].min()
    [verdict] = [v for v in judge_all(cells) if v.claim == "C99"]
    assert verdict.verdict == ("supported" if lowest > 1000 else "contradicted")
    assert rules()["C99"] == verdict.rule_digest
    assert claim_of("C99") is toy
    page = build_report(run)["md"].read_text()
    [row] = [line for line in page.splitlines() if line.startswith("| **C99** Toy")]
    assert "[performance.png](figures/performance.png)" in row
    assert "C99" in set(pd.read_parquet(run / "claims.parquet")["claim"])


def test_every_verdict_id_belongs_to_a_row_of_the_table() -> None:
    for stored in ("default-counted-cells", "series-v2-counted-cells", "c7e-cells", "c10-cells", "c14-cells"):
        for verdict in judge_all(pd.read_parquet(DATA / f"{stored}.parquet")):
            assert claim_of(verdict.claim) is not None, verdict.claim
    assert claim_of("C10-throttle-v2") is claim_of("C10-throttle")  # a per-kernel row
    assert claim_of("C6-v2") is claim_of("C6") and claim_of("C8-v2") is None  # series v2 answers C6, not C8
