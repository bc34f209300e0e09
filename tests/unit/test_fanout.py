"""Dask fan-out without guests: a group whose host never comes back is lost (not a finding, not a hang),
a worker's artifact cannot land outside the run directory, and only infrastructure errors count as such."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from lab import fanout
from lab.errors import HostError, LabError
from lab.fanout import DaskPool, GroupResult, GroupTask, import_result, infrastructure_failure, stage
from lab.matrix import Cell
from lab.store import RunStore
from lab.workload import Workload


def task(tmp_path: Path, rep: int) -> GroupTask:
    for name in ("bzImage", "rootfs.cpio", "key"):
        (tmp_path / name).write_bytes(name.encode())
    cell = Cell("static", 1024, "nvme", Workload("w"), 2, 1024, rep, platform="tcg")
    bzimage, initrd = stage(tmp_path / "bzImage"), stage(tmp_path / "rootfs.cpio")
    return GroupTask(
        "r",
        (cell,),
        {},
        {"static": bzimage},
        {"static": initrd},
        "ssh-ed25519 AAAAhost lab",
        stage(tmp_path / "key"),
        "ssh-ed25519 AAAAkey lab",
    )


def test_a_group_placed_on_a_host_that_never_has_a_worker_is_lost_not_waited_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from distributed import LocalCluster

    monkeypatch.setattr(fanout, "HOST_GONE_S", 1.0)
    monkeypatch.setattr(fanout, "place", lambda cell, workers: "203.0.113.9")  # a host with no worker, ever
    store = RunStore.create(tmp_path / "results", {"test": "gone"}, run_id="r")
    lost: list[tuple[str, BaseException]] = []

    def record(t: GroupTask, exc: BaseException, host: str | None) -> GroupResult:
        assert host == "203.0.113.9"
        lost.append((t.cells[0].cell_id, exc))
        return GroupResult([], {}, {})

    with LocalCluster(n_workers=1, processes=False, dashboard_address=None, resources={"slot": 1, "tcg": 1}) as c:
        with DaskPool(scheduler=c.scheduler_address) as pool:
            tasks = [task(tmp_path, rep) for rep in range(2)]
            assert pool.run(tasks, store, lambda cell, row: None, record) == []
    assert sorted(cid for cid, _ in lost) == sorted(t.cells[0].cell_id for t in tasks)
    for _, exc in lost:
        assert isinstance(exc, HostError) and str(exc) == "host 203.0.113.9 has had no Dask worker for 1 s"


@pytest.mark.parametrize("name", ["../escape.txt", "cells/../../escape.txt", "/tmp/escape.txt", "."])
def test_a_worker_cannot_write_outside_the_run_directory(tmp_path: Path, name: str) -> None:
    store = RunStore.create(tmp_path / "results", {"test": "paths"}, run_id="r")
    result = GroupResult([], {"cells/a/fio.json": b"{}", name: b"nope"}, {})
    with pytest.raises(LabError, match="outside the run directory"):
        import_result(store, result)
    assert not (store.root / "cells" / "a" / "fio.json").exists()  # refused before anything was written
    assert not (tmp_path / "results" / "escape.txt").exists() and not (tmp_path / "escape.txt").exists()


def test_only_the_infrastructures_errors_are_infrastructure_failures() -> None:
    from concurrent.futures import CancelledError

    from distributed import KilledWorker

    infra: list[Any] = [
        KilledWorker("group-x", "tcp://10.0.0.7:4242", 3),
        CancelledError(),
        ConnectionResetError(),
        TimeoutError(),
        HostError("host snp1 unreachable"),
        LabError("bzImage was not staged"),
    ]
    for exc in infra:
        assert infrastructure_failure(exc), exc
    for exc in (TypeError("a lab bug"), KeyError("static"), ZeroDivisionError()):
        assert not infrastructure_failure(exc), exc


def test_hosts_that_cannot_be_reached_are_named_with_their_reason_and_none_left_is_an_error(tmp_path: Path) -> None:
    from lab.fanout import SshWorkerPool
    from lab.hosts import Host

    key = tmp_path / "id_ed25519"
    key.write_text("not a key")
    pinned = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA lab"
    hosts = [Host(name, "127.0.0.1", port=1, key=key, host_key=pinned) for name in ("gone-a", "gone-b")]
    with pytest.raises(
        HostError,
        match=r"no host could run a worker \(gone-a: could not start its worker over SSH: "
        r".*; gone-b: could not start its worker over SSH: .*\)",
    ):
        with SshWorkerPool(hosts, bind="127.0.0.1"):
            pass


def test_the_engines_log_lines_go_to_the_run_directory_not_the_terminal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import logging

    from lab.fanout import engine_log
    from lab.store import ENGINE_LOG

    scheduler = logging.getLogger("distributed.scheduler")
    before = (list(logging.getLogger("distributed").handlers), logging.getLogger("distributed").propagate)
    with engine_log(tmp_path / ENGINE_LOG):
        scheduler.error("Error transitioning 'group-1' from 'processing' to 'erred': CancelledError")
    assert "CancelledError" in (tmp_path / ENGINE_LOG).read_text()
    captured = capsys.readouterr()
    assert "CancelledError" not in captured.err + captured.out
    with engine_log(tmp_path / "unused.log"):
        pass
    assert not (tmp_path / "unused.log").exists()  # a run that never used the engine gets no file
    assert (logging.getLogger("distributed").handlers, logging.getLogger("distributed").propagate) == before


def test_dask_loggers_with_handlers_of_their_own_go_to_the_engine_log_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Dask imported before the root logger has a handler (a notebook, any library use) gives some of its
    loggers a stderr handler of their own and stops them propagating, as distributed.config does."""
    import logging
    import sys

    from lab.fanout import engine_log

    own = logging.StreamHandler(sys.stderr)
    client, application = logging.getLogger("distributed.client"), logging.getLogger("tornado.application")
    saved = [(lg, list(lg.handlers), lg.propagate) for lg in (client, application)]
    try:
        for logger in (client, application):
            logger.handlers, logger.propagate = [own], False
        with engine_log(tmp_path / "engine.log"):
            client.warning("Couldn't gather 1 keys, rescheduling ('group-r-static',)")
            application.error("Exception in callback: CancelledError")
        assert client.handlers == [own] and application.handlers == [own]  # as Dask left them
    finally:
        for logger, handlers, propagate in saved:
            logger.handlers, logger.propagate = handlers, propagate
    logged = (tmp_path / "engine.log").read_text()
    assert "WARNING distributed.client: Couldn't gather 1 keys" in logged
    assert "ERROR tornado.application: Exception in callback: CancelledError" in logged
    captured = capsys.readouterr()
    assert captured.err == captured.out == ""
