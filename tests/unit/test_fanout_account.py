"""A run says what its infrastructure did: a Dask worker process killed mid-group (SIGKILL, as ``kill -9``)
is replaced by its nanny, Dask runs the group again, and the pool's account names the worker lost, when, the
group it held and where that group ran again; the engine's own words go to engine.log, not the terminal.
Real Dask (a scheduler in this process, two nanny-managed worker processes); the groups need no guest."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from lab.fanout import DaskPool, GroupResult, GroupTask, dask_worker_identity, engine_log, stage
from lab.matrix import Cell
from lab.session import Session, infrastructure_markdown
from lab.store import ENGINE_LOG, RunStore
from lab.workload import Workload


def dies_once(task: GroupTask, in_process: bool) -> GroupResult:
    """A group whose first run kills its own worker process mid-group (a marker file says it ran); a group
    without a marker just finishes."""
    marker = task.settings.get("marker")
    me = dask_worker_identity()
    if marker and not Path(marker).exists():
        Path(marker).write_text(json.dumps(me))
        os.kill(os.getpid(), signal.SIGKILL)
    now = time.time()
    rows = [{"cell_id": c.cell_id, "status": "ok"} for c in task.cells]
    return GroupResult(rows, {}, {**me, "task_started": now, "task_ended": now})


def group(tmp_path: Path, rep: int, marker: Path | None) -> GroupTask:
    for name in ("bzImage", "rootfs.cpio", "key"):
        (tmp_path / name).write_bytes(name.encode())
    cell = Cell("static", 1024, "nvme", Workload("w"), 2, 1024, rep, platform="tcg")
    return GroupTask(
        "r",
        (cell,),
        {},
        {"static": stage(tmp_path / "bzImage")},
        {"static": stage(tmp_path / "rootfs.cpio")},
        "ssh-ed25519 AAAAhost lab",
        stage(tmp_path / "key"),
        "ssh-ed25519 AAAAkey lab",
        settings={"marker": str(marker)} if marker else {},
    )


def test_a_worker_killed_mid_group_is_in_the_account_and_its_group_ran_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    from distributed import LocalCluster

    monkeypatch.setenv("SWIOTLB_LAB_CACHE", str(tmp_path / "worker-cache"))  # where the workers stage files
    store = RunStore.create(tmp_path / "results", {"test": "account"}, run_id="r")
    marker = tmp_path / "killed.json"
    tasks = [group(tmp_path, 0, marker), group(tmp_path, 1, None)]
    arrived: list[str] = []
    lost: list[Any] = []
    started = time.time()
    with engine_log(store.root / ENGINE_LOG):
        with LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, resources={"slot": 1, "tcg": 1}
        ) as cluster:
            with DaskPool(scheduler=cluster.scheduler_address, group_function=dies_once) as pool:
                pool.run(tasks, store, lambda cell, row: arrived.append(row["cell_id"]), lambda *a: lost.append(a))
    assert sorted(arrived) == sorted(t.cells[0].cell_id for t in tasks) and lost == []
    killed = json.loads(marker.read_text())  # the worker that ran the first group, as it named itself
    account = pool.account
    assert account["engine"] == f"Dask scheduler {cluster.scheduler_address}"
    [worker_lost] = account["workers_lost"]
    assert {k: worker_lost[k] for k in ("worker", "address", "groups")} == {
        "worker": killed["dask_worker"],
        "address": killed["dask_address"],
        "groups": [tasks[0].cells[0].cell_id],
    }
    when = time.mktime(time.strptime(worker_lost["utc"], "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    assert started - 1 <= when <= time.time() + 1
    [rerun] = account["groups_rerun"]
    assert worker_lost["queued"] in ([], [tasks[1].cells[0].cell_id])  # waiting there for its slot, if at all
    assert rerun["group"] == tasks[0].cells[0].cell_id and rerun["cells"] == 1
    assert rerun["from"] == killed["dask_worker"] and rerun["to"] in account["workers"]
    assert rerun["outcome"] == "1 ok" and account["groups_lost"] == []
    # The engine's words (the nanny restarting the killed worker) are in engine.log, and none reached the
    # terminal: no Dask logger's line, no traceback, although Dask lost a worker and closed two clusters.
    assert "distributed.nanny" in (store.root / ENGINE_LOG).read_text()
    captured = capfd.readouterr()
    assert "distributed." not in captured.err and "Traceback" not in captured.err, captured.err
    # The run's summary tells the user the same, in words.
    text = infrastructure_markdown({"infrastructure": {**account, "engine_log": ENGINE_LOG}})
    assert (
        f"- worker {killed['dask_worker']} ({killed['dask_address']}) lost at {worker_lost['utc']}, "
        f"running {tasks[0].cells[0].cell_id}"
    ) in text
    assert (
        f"- boot group {tasks[0].cells[0].cell_id} (1 cell) ran again on {rerun['to']} after "
        f"{killed['dask_worker']} was lost: 1 ok"
    ) in text


def test_a_run_without_trouble_says_so_and_a_resume_adds_to_what_was_recorded(tmp_path: Path) -> None:
    store = RunStore.create(tmp_path / "results", {"status": "running"}, run_id="r")
    session = Session.__new__(Session)  # only the bookkeeping: no matrix, no kernels
    session.store = store
    first = {
        "engine": "Dask, a worker per host over SSH",
        "workers": ["a", "b"],
        "workers_lost": [
            {"worker": "b", "address": "tcp://10.0.0.2:4000", "utc": "2026-12-03T10:00:00Z", "groups": ["g1"]}
        ],
        "groups_rerun": [{"group": "g1", "cells": 3, "from": "b", "to": "a", "outcome": "3 ok"}],
        "groups_lost": [],
    }
    session._record_infrastructure(first, {"c": "could not start its worker over SSH: connection refused"})
    quiet = {
        "engine": "Dask, a worker per host over SSH",
        "workers": ["a"],
        "workers_lost": [],
        "groups_rerun": [],
        "groups_lost": [],
    }
    assert "- no worker lost, no boot group run again or given up, no host left out" in infrastructure_markdown(
        {"infrastructure": quiet}
    )
    session._record_infrastructure(quiet, {})
    recorded = store.manifest()["infrastructure"]
    assert recorded["workers_lost"] == first["workers_lost"] and recorded["groups_rerun"] == first["groups_rerun"]
    assert recorded["workers"] == ["a", "b"] and recorded["engine_log"] == ENGINE_LOG
    assert recorded["hosts_left_out"] == {"c": "could not start its worker over SSH: connection refused"}
    text = infrastructure_markdown(store.manifest())
    assert text.splitlines()[1:] == [
        "## Infrastructure",
        "",
        "- Dask, a worker per host over SSH; workers: a, b",
        "- worker b (tcp://10.0.0.2:4000) lost at 2026-12-03T10:00:00Z, running g1",
        "- boot group g1 (3 cells) ran again on a after b was lost: 3 ok",
        "- host c left out at the start: could not start its worker over SSH: connection refused",
        "- the engine's own log lines: engine.log",
    ]
    assert infrastructure_markdown({}) == ""  # one boot at a time in this thread: no engine to account for
