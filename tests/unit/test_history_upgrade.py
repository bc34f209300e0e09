"""A run stored before today's columns existed (the shipped sample, tests/data/run-small, of 2026-11-27)
still answers every question: each ``history`` subcommand and ``report`` work on a copy of it, and a column
it never recorded reads as null instead of failing the query."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from lab.cli import main
from lab.image import GuestImage
from lab.kernel import KernelBuild
from lab.keys import KeyPair
from lab.matrix import Cell
from lab.runner import LabContext, base_row, build_row
from lab.store import UPGRADE_COLUMNS, RunStore
from lab.workload import Workload

DATA = Path(__file__).resolve().parent.parent / "data"
SAMPLE = DATA / "run-small"


def digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


@pytest.fixture
def history(tmp_path: Path) -> Path:
    """A history whose one night is a copy of the sample run."""
    run_id = json.loads((SAMPLE / "manifest.json").read_text())["run_id"]
    shutil.copytree(SAMPLE, tmp_path / "history" / "runs" / run_id)
    return tmp_path / "history"


def ask(history: Path, capsys: pytest.CaptureFixture[str], *args: str) -> str:
    code = main(["history", *args, "--history", str(history)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out


def test_the_sample_lacks_the_columns_it_is_read_through() -> None:
    """What this file tests is real: the stored sample predates the claims' scope and today's cell columns."""
    assert "scope" not in pq.read_schema(SAMPLE / "claims.parquet").names
    stored = set(pq.read_schema(SAMPLE / "cells.parquet").names)
    assert len(set(UPGRADE_COLUMNS["cells"]) - stored) == len(UPGRADE_COLUMNS["cells"]) == 38


def test_history_claims_on_the_sample_lists_its_stored_verdicts(
    history: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = ask(history, capsys, "claims")
    stored = pd.read_parquet(SAMPLE / "claims.parquet")
    lines = out.splitlines()
    assert lines[0].split() == ["night", "scope", "claim", "verdict"]
    assert len(lines) == 1 + len(stored) == 8
    for claim, verdict in zip(stored["claim"], stored["verdict"], strict=True):
        assert ["20261127T033935-2cdc", "None", claim, verdict] in [line.split() for line in lines[1:]]


def test_history_nights_metric_sql_and_trend_work_on_the_sample(
    history: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    nights = ask(history, capsys, "nights")
    assert nights.splitlines()[1].split()[:3] == ["20261127T033935-2cdc", "run-small", "complete"]
    # The default metric, recorded by the sample: the medians of its own ok cells.
    cells = pd.read_parquet(SAMPLE / "cells.parquet")
    ok = cells[cells["status"] == "ok"]
    metric = ask(history, capsys, "metric").splitlines()
    static_heavy = ok[(ok["kernel"] == "static") & (ok["workload"] == "heavy")]["fio_iops"]
    assert f"{static_heavy.median():.6f}" in next(line for line in metric if "static" in line and "heavy" in line)
    assert len(metric) == 1 + len(ok.groupby(["kernel", "workload"]))
    # A metric the sample never recorded: its groups, with no value, rather than a binder error.
    cpu = ask(history, capsys, "metric", "--metric", "guest_cpu_us_per_io").splitlines()
    assert len(cpu) == len(metric) and all(line.split()[-3:] == ["NaN"] * 3 for line in cpu[1:])
    # Every upgraded column can be named; none holds a value for this night.
    counted = ", ".join(f"count({name}) AS {name}" for name in UPGRADE_COLUMNS["cells"])
    sql = ask(history, capsys, "sql", "--sql", f"SELECT count(*) AS n, {counted} FROM cells").splitlines()
    assert sql[1].split() == [str(len(cells))] + ["0"] * len(UPGRADE_COLUMNS["cells"])
    types = ask(history, capsys, "sql", "--sql", "SELECT typeof(observed) AS o, typeof(guest_cpu_s) AS g FROM cells")
    assert types.splitlines()[1].split() == ["BOOLEAN", "DOUBLE"]
    trend = ask(history, capsys, "trend", "--matrix", "run-small").strip()
    assert trend == str(history / "trend-run-small.html") and Path(trend).is_file()


def test_a_column_a_newer_night_recorded_keeps_its_values_next_to_the_samples_nulls(
    history: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    newer = history / "runs" / "20261202T010000-beef"
    shutil.copytree(SAMPLE, newer)
    claims = pd.read_parquet(SAMPLE / "claims.parquet").assign(scope="host a, platform tcg")
    claims.to_parquet(newer / "claims.parquet", index=False)
    out = ask(history, capsys, "sql", "--sql", "SELECT night, count(scope) AS scoped FROM claims GROUP BY 1 ORDER BY 1")
    assert [line.split() for line in out.splitlines()[1:]] == [
        ["20261127T033935-2cdc", "0"],
        ["20261202T010000-beef", "7"],
    ]


def test_report_on_a_copy_of_the_sample_writes_beside_it_and_leaves_it_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run-small"
    shutil.copytree(SAMPLE, run)
    before = digests(run)
    out = tmp_path / "report"
    assert main(["report", str(run), "--output", str(out)]) == 0, capsys.readouterr().err
    assert (out / "report.md").read_text().startswith("# ") and (out / "report.html").is_file()
    assert digests(run) == before


def test_every_column_a_current_row_has_and_the_sample_lacks_is_upgraded(tmp_path: Path) -> None:
    """The upgrade list keeps up with the rows: a row built today (what a cell asks for, and what it
    measured, from the real artifacts in tests/data/stock-1024-heavy) against the sample's columns."""
    kernel = KernelBuild("static", "6.12.117", tmp_path / "bzImage", tmp_path / "config")
    ctx = LabContext(
        None,  # type: ignore[arg-type]
        GuestImage(tmp_path / "rootfs.cpio", "ssh-ed25519 AAAAhost lab", "recipe"),
        KeyPair(tmp_path / "key", "ssh-ed25519 AAAAkey lab"),
        {"static": kernel},
        tmp_path,
    )
    store = RunStore.create(tmp_path / "results", {}, run_id="r")
    base = base_row(ctx, Cell("static", 1024, "nvme", Workload("heavy"), 2, 1024, 0), store)
    row, _, _ = build_row(base, DATA / "stock-1024-heavy", 0)
    boot_and_host = {
        "boot_retries",
        "boot_retry_reason",
        "swiotlb_areas_logged",
        "host_id",
        "cpu_model",
        "lab_diff_sha256",
    }
    stored = set(pq.read_schema(SAMPLE / "cells.parquet").names)
    assert (set(row) | boot_and_host) - stored - set(UPGRADE_COLUMNS["cells"]) == set()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(["nights"], "no nights here (expected", id="no-nights"),
        pytest.param(["sql", "--sql", "SELECT 1"], "no nights here (expected", id="sql-without-nights"),
    ],
)
def test_a_history_without_nights_exits_2_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert main(["history", *args, "--history", str(tmp_path / "empty")]) == 2
    assert f"{tmp_path / 'empty'}: {message}" in capsys.readouterr().err


def test_a_query_duckdb_refuses_exits_2_with_its_reason(history: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["history", "sql", "--sql", "SELECT no_such_column FROM cells", "--history", str(history)])
    assert code == 2 and "history query failed" in (err := capsys.readouterr().err) and "no_such_column" in err
