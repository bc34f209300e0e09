"""Stop requests: Ctrl-C and SIGTERM set one process-wide flag that every wait in the lab checks.

Raising ``KeyboardInterrupt`` from the signal handler alone is not enough:
third-party code may catch it and go on (invoke's ``Runner._finish`` forwards
it to the remote command and keeps waiting), and worker threads never see it.
So the handler records the request first, then raises in the main thread as
Python would; every loop in the lab that waits (guest commands, SSH connects,
boots, transfers, host commands such as kernel builds) polls ``check()`` and
stops actively, whichever thread it runs in.  A signal is process-wide, so
this one flag is too.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

_requested = threading.Event()
_reason = ""
_deferred = 0  # > 0: the main thread is in a section that must not be torn by an exception (cleanup)

POLL_S = 0.05


class Interrupted(KeyboardInterrupt):
    """The run was asked to stop (Ctrl-C, SIGTERM).  A ``KeyboardInterrupt``, so ``except Exception`` passes it."""


def request_stop(reason: str) -> None:
    global _reason
    if not _requested.is_set():
        _reason = reason
        _requested.set()


def stop_requested() -> bool:
    return _requested.is_set()


def reason() -> str:
    return _reason


def check() -> None:
    """Raise ``Interrupted`` if a stop was requested."""
    if _requested.is_set():
        raise Interrupted(_reason)


def sleep(seconds: float) -> None:
    """``time.sleep`` that ends early (raising ``Interrupted``) when a stop is requested."""
    if _requested.wait(seconds):
        check()


def reset() -> None:
    """Forget an earlier request (a new run in the same process, or a test)."""
    global _reason
    _requested.clear()
    _reason = ""


def _handler(signum: int, frame: FrameType | None) -> None:
    request_stop(signal.Signals(signum).name)
    if _deferred == 0:
        raise Interrupted(signal.Signals(signum).name)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """In the main thread, hold back the exception a signal raises until the block ends (the request is
    still recorded at once).  For cleanup that must run to its end, such as stopping QEMU."""
    global _deferred
    main = threading.current_thread() is threading.main_thread()
    if main:
        _deferred += 1
    try:
        yield
    finally:
        if main:
            _deferred -= 1


@contextlib.contextmanager
def handling_signals() -> Iterator[None]:
    """Install the SIGINT and SIGTERM handlers for the duration of a command (main thread only)."""
    reset()
    previous = {sig: signal.signal(sig, _handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
