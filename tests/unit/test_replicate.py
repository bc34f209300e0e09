"""`lab replicate`: a verdict only one run reaches is not replicated; failed maps compared as rates."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from lab.cli import main
from lab.replicate import failure_rates, replicate, replication

DATA = Path(__file__).resolve().parent.parent / "data"


@pytest.mark.parametrize(
    ("a", "b", "outcome"),
    [
        ("supported", "supported", "replicated"),
        ("contradicted", "contradicted", "replicated"),
        ("supported", "contradicted", "not replicated"),  # flipped
        ("supported", "inconclusive", "not replicated"),  # decided on one machine only (issue: C6, C7-plain)
        ("inconclusive", "contradicted", "not replicated"),
        ("contradicted", "not tested", "not replicated"),
        ("inconclusive", "inconclusive", "undecided in both"),
        ("inconclusive", "not tested", "undecided in both"),
        ("not tested", "not tested", "not tested"),
    ],
)
def test_replication_of_one_claim(a: str, b: str, outcome: str) -> None:
    assert replication(a, b) == outcome


def test_failed_maps_become_shares_and_rates() -> None:
    cells = pd.DataFrame(
        {
            "kernel": "static",
            "pool_slabs_requested": 1024,
            "workload": "heavy",
            "status": ["ok", "ok", "ok", "failed"],
            "map_failures": [10, 0, 30, 99],
            "fio_total_ios": [1000, 1000, 2000, 0],
        }
    )
    [row] = failure_rates(cells).to_dict("records")
    # the failed cell is left out: 2 of 3 finished cells failed a map; per I/O 0.01, 0, 0.015 -> median 0.01
    assert row["cells"] == 3 and row["failing"] == pytest.approx(2 / 3) and row["per_io"] == pytest.approx(0.01)


def test_a_run_replicates_itself_and_a_changed_premise_does_not() -> None:
    cells = pd.read_parquet(DATA / "default-cells.parquet")
    itself = replicate(cells, cells)
    assert "not replicated" not in set(itself.claims["outcome"])
    assert (itself.claims["outcome"] == "replicated").sum() >= 5
    # On another machine one deep-queue job no longer fills the pool: C4 (contradicted on the stored cells,
    # tests/unit/test_claims.py) cannot be judged there, so its verdict did not replicate.
    quiet = cells.copy()
    single = (quiet["kernel"] == "static") & (quiet["workload"] == "single-queue")
    quiet.loc[single, ["map_failures", "hiwater"]] = [0, 100]
    c4 = replicate(cells, quiet).claims.set_index("claim").loc["C4"]
    assert (c4["A"], c4["B"], c4["outcome"]) == ("contradicted", "inconclusive", "not replicated")


def test_the_command_writes_its_table_beside_neither_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(DATA / "run-small", a)
    shutil.copytree(DATA / "run-small", b)
    manifest = json.loads((b / "manifest.json").read_text())
    (b / "manifest.json").write_text(json.dumps({**manifest, "host": "another-machine"}))
    out = tmp_path / "replication.md"
    assert main(["replicate", str(a), str(b), "--output", str(out)]) == 0
    text = out.read_text()
    assert text in capsys.readouterr().out  # printed as written
    assert "## Claims" in text and "## Failed maps as rates" in text and "host: A " in text
    assert "not replicated" not in text.split("## Claims")[1].split("## Failed")[0]  # the same cells twice
    assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in (DATA / "run-small").iterdir())


def test_compare_lines_up_runs_that_judge_different_claims(tmp_path: Path) -> None:
    """A run with series v2's cells judges C6-v2, one without does not: `lab compare` once stopped there
    (its verdicts were zipped in order)."""
    from lab.compare import compare_runs

    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(DATA / "run-small", a)
    shutil.copytree(DATA / "run-small", b)
    shutil.copyfile(DATA / "default-counted-cells.parquet", b / "cells.parquet")
    text = compare_runs(a, b, tmp_path / "compare.md").read_text()
    [row] = [line for line in text.splitlines() if line.startswith("| C6-v2 ")]
    assert "not tested" in row and "supported" in row
