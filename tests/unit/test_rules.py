"""Rules fixed before a run: a run stores every claim's printed rule when it starts, and its report marks a
verdict whose rule changed since as exploratory (issue 19, "forking paths")."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from lab.claims import RULE_CHANGED, RULE_FIXED, RULE_UNPLANNED, check_rules, judge_all, rules
from lab.report import build_report

DATA = Path(__file__).resolve().parent.parent / "data"


def test_every_claim_has_a_rule_before_any_cell_exists() -> None:
    planned = rules()
    expected = [f"C{n}" for n in range(1, 15)] + ["C14-areas", "C2-v2", "C5-v2", "C6-v2", "C9-v2"]
    assert list(planned) == expected
    assert len(set(planned.values())) == len(planned)  # each claim's rule is its own


@pytest.mark.parametrize("stored", ["default-counted-cells", "series-v2-counted-cells", "c11-cells", "c13-cells"])
def test_a_printed_rule_does_not_depend_on_the_cells(stored: str) -> None:
    # Judged on a stored run's cells, each claim prints the rule it printed before any cell existed: else
    # every run would read as "rule changed" and the mark would mean nothing.
    planned = rules()
    judged = [v for v in judge_all(pd.read_parquet(DATA / f"{stored}.parquet")) if v.claim in planned]
    assert judged
    assert {v.claim: v.rule_digest for v in judged} == {v.claim: planned[v.claim] for v in judged}


def test_a_changed_threshold_text_is_a_changed_rule() -> None:
    [c1] = [v for v in judge_all(pd.read_parquet(DATA / "default-cells.parquet")) if v.claim == "C1"]
    planned = {"C1": c1.rule_digest}
    assert check_rules([c1], planned)[0].rule == RULE_FIXED
    looser = replace(c1, threshold=c1.threshold.replace(">=", ">"))
    assert check_rules([looser], planned)[0].rule == RULE_CHANGED
    assert check_rules([c1], {})[0].rule == RULE_UNPLANNED
    assert check_rules([c1], None)[0].rule == ""  # a run from before stored rules: not marked at all


def test_the_report_marks_only_the_claim_whose_rule_changed(tmp_path: Path) -> None:
    run = tmp_path / "run-small"
    shutil.copytree(DATA / "run-small", run)
    manifest = json.loads((run / "manifest.json").read_text())
    planned = rules()
    planned["C4"] = "0" * 16  # as if C4's rule had read differently when this run started
    del planned["C3"]  # and C3 had had none
    manifest["rules"] = planned
    (run / "manifest.json").write_text(json.dumps(manifest))
    build_report(run)
    claims = pd.read_parquet(run / "claims.parquet").set_index("claim")["rule"]
    assert claims["C4"] == RULE_CHANGED and claims["C3"] == RULE_UNPLANNED
    assert (claims.drop(["C4", "C3", "C7-plain"]) == RULE_FIXED).all()
    assert claims["C7-plain"] == RULE_UNPLANNED  # per-kernel rows are not planned
    page = (run / "report.md").read_text()
    assert page.count(RULE_CHANGED) == 1 and "Each claim's rule (its text, metric and threshold) was stored" in page
    assert "by two one-sided tests at 5% each (TOST)" in page  # the equivalence rule C12 applies, printed


def test_a_run_from_before_stored_rules_says_so(tmp_path: Path) -> None:
    run = tmp_path / "run-small"
    shutil.copytree(DATA / "run-small", run)
    assert "rules" not in json.loads((run / "manifest.json").read_text())
    build_report(run)
    page = (run / "report.md").read_text()
    assert "This run predates stored rules" in page and RULE_CHANGED not in page
