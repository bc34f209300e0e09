"""Stop requests: recorded by the signal handlers, honoured by every wait, never torn into cleanup."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import interrupt
from lab.util import run_process, wait_until
from tests.conftest import pid_alive


@pytest.fixture(autouse=True)
def fresh() -> Iterator[None]:
    interrupt.reset()
    yield
    interrupt.reset()


def later(seconds: float, action: object) -> threading.Timer:
    timer = threading.Timer(seconds, action)  # type: ignore[arg-type]
    timer.start()
    return timer


def test_wait_until_ends_soon_after_a_stop_request_from_another_thread() -> None:
    later(0.2, lambda: interrupt.request_stop("test"))
    started = time.monotonic()
    with pytest.raises(interrupt.Interrupted, match="test"):
        wait_until(lambda: None, 30.0, what="nothing")
    assert time.monotonic() - started < 1.0


def test_interrupted_is_a_keyboard_interrupt_so_except_exception_lets_it_through() -> None:
    assert issubclass(interrupt.Interrupted, KeyboardInterrupt)
    assert not issubclass(interrupt.Interrupted, Exception)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_records_the_request_and_raises_in_the_main_thread(sig: signal.Signals) -> None:
    with interrupt.handling_signals(), pytest.raises(interrupt.Interrupted, match=sig.name):
        os.kill(os.getpid(), sig)
        time.sleep(1.0)
    assert interrupt.stop_requested() and interrupt.reason() == sig.name


def test_a_signal_inside_a_deferred_section_is_recorded_but_does_not_tear_it() -> None:
    finished = False
    with interrupt.handling_signals():
        with interrupt.deferred():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.2)  # the handler has run by now
            finished = True
        assert interrupt.stop_requested()
        with pytest.raises(interrupt.Interrupted):
            interrupt.check()
    assert finished


def test_handlers_are_restored_after_the_command() -> None:
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with interrupt.handling_signals():
        assert signal.getsignal(signal.SIGTERM) is not before[0]
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_a_stop_request_stops_a_host_command_and_everything_it_started(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    # A shell that starts a grandchild, like make starting compilers.
    script = f"sleep 60 & echo $! > {pids}; echo $$ >> {pids}; wait"
    later(0.5, lambda: interrupt.request_stop("test"))
    started = time.monotonic()
    with pytest.raises(interrupt.Interrupted):
        run_process(["sh", "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert time.monotonic() - started < 3.0
    grandchild, shell = (int(p) for p in pids.read_text().split())
    deadline = time.monotonic() + 5
    while (pid_alive(grandchild) or pid_alive(shell)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_alive(grandchild), "the command's child survived the stop"
    assert not pid_alive(shell)


def test_run_process_returns_the_exit_code_and_output() -> None:
    code, out, err = run_process(
        ["sh", "-c", "echo out; echo err >&2; exit 3"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert (code, out, err) == (3, "out\n", "err\n")


def test_interruptible_sleep_returns_normally_without_a_request() -> None:
    started = time.monotonic()
    interrupt.sleep(0.1)
    assert time.monotonic() - started >= 0.1


def _wait_for_stop(run_id: str, marker: str) -> None:
    """A stand-in for a boot group on a worker: runs until the stop watch asks it to stop."""
    from lab.fanout import _stop_watch

    with _stop_watch(run_id):
        deadline = time.monotonic() + 60
        while not interrupt.stop_requested() and time.monotonic() < deadline:
            time.sleep(0.05)
        Path(marker).write_text(interrupt.reason() if interrupt.stop_requested() else "never stopped")


def test_a_group_whose_controller_is_gone_stops_on_its_own(tmp_path: Path) -> None:
    # A signal to the controller cannot reach a QEMU on another host: when the controller's client goes
    # away, the scheduler cancels its tasks, and the worker's watch turns that into a stop of the group.
    from distributed import Client, LocalCluster

    marker = tmp_path / "stopped"
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        controller = Client(cluster)
        future = controller.submit(_wait_for_stop, "run-gone", str(marker), pure=False)  # held: still wanted
        deadline = time.monotonic() + 20
        while not cluster.scheduler.tasks and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # the task is executing
        assert not marker.exists() and future.status == "pending", marker.read_text()
        started = time.monotonic()
        controller.close()  # the controller is gone, without a word to the worker
        while not marker.exists() and time.monotonic() - started < 15:
            time.sleep(0.05)
        assert marker.exists(), "the abandoned group never stopped"
        assert marker.read_text() == "the controller is gone (the task was cancelled)"
