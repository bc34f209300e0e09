"""SSH access to a booted guest through fabric, with a pinned host key and per-command timeouts."""

from __future__ import annotations

import base64
import contextlib
import logging
import shlex
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import paramiko
from fabric import Config, Connection
from invoke.exceptions import CommandTimedOut
from invoke.runners import Result

from lab import interrupt
from lab.errors import GuestCommandError, LabTimeout
from lab.vm import Endpoint

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CommandResult:
    command: str
    exitcode: int
    stdout: str
    stderr: str
    seconds: float


def quote_argv(argv: Sequence[str]) -> str:
    """A shell command line that runs ``argv`` literally, metacharacters and all."""
    return " ".join(shlex.quote(str(arg)) for arg in argv)


class Guest:
    """One SSH connection to a guest.  Creating it connects nothing; ``connect()`` does."""

    def __init__(self, endpoint: Endpoint, client_key: Path, host_key_blob: str) -> None:
        self.endpoint = endpoint
        self._client_key = client_key
        self._host_key = paramiko.Ed25519Key(data=base64.b64decode(host_key_blob))
        self._conn: Connection | None = None

    def _new_connection(self) -> Connection:
        # lazy=True: no ~/.ssh/config, no user fabric config; the lab decides everything.
        config = Config(lazy=True, overrides={"load_ssh_configs": False})
        conn = Connection(
            self.endpoint.host,
            port=self.endpoint.port,
            user="root",
            config=config,
            connect_timeout=10,
            connect_kwargs={
                "key_filename": str(self._client_key),
                "look_for_keys": False,
                "allow_agent": False,
                "banner_timeout": 15,
                "auth_timeout": 15,
            },
        )
        # Pin the guest's host key and refuse anything else (fabric defaults to AutoAdd).
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        name = self.endpoint.host if self.endpoint.port == 22 else f"[{self.endpoint.host}]:{self.endpoint.port}"
        client.get_host_keys().add(name, self._host_key.get_name(), self._host_key)
        conn.client = client
        return conn

    def connect(self, timeout_s: float = 60.0, alive: Callable[[], None] | None = None) -> float:
        """Connect, retrying while sshd comes up.  ``alive`` raises if the VM died meanwhile."""
        started = time.monotonic()
        last: Exception | None = None
        while time.monotonic() - started < timeout_s:
            interrupt.check()
            if alive is not None:
                alive()
            conn = self._new_connection()
            try:
                conn.open()
                self._conn = conn
                transport = conn.client.get_transport()
                if transport is not None:
                    transport.set_keepalive(5)
                return time.monotonic() - started
            except paramiko.BadHostKeyException:
                conn.close()
                raise
            except paramiko.SSHException as exc:
                if "not found in known_hosts" in str(exc):
                    conn.close()
                    raise
                last = exc
            except (TimeoutError, OSError, EOFError) as exc:
                last = exc
            conn.close()
            interrupt.sleep(0.2)
        raise LabTimeout(f"SSH to {self.endpoint.host}:{self.endpoint.port}", timeout_s, repr(last))

    @property
    def connection(self) -> Connection:
        if self._conn is None:
            raise RuntimeError("Guest.connect() first")
        return self._conn

    def run(self, command: str, *, timeout_s: float = 60.0, check: bool = True) -> CommandResult:
        """Run ``command`` with the guest's /bin/sh.  Callers quote arguments (see quote_argv)."""
        log.debug("guest$ %s", command)
        started = time.monotonic()
        try:
            result = self._run_stoppable(command, timeout_s)
        except CommandTimedOut as exc:
            raise LabTimeout(f"guest command {command!r}", timeout_s) from exc
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise GuestCommandError(command, None, "", f"SSH failure: {exc!r}") from exc
        if result.exited == -1:
            if time.monotonic() - started >= timeout_s:
                # invoke's timer closed the channel, but its thread had not finished when the
                # command returned, so invoke did not call it a timeout: it was one.
                raise LabTimeout(f"guest command {command!r}", timeout_s)
            # paramiko's "no exit status": the channel closed under the command (sshd or the
            # network died).  That is a lost session, not a command that failed.
            raise GuestCommandError(command, None, result.stdout, "SSH session closed before the command exited")
        outcome = CommandResult(command, result.exited, result.stdout, result.stderr, time.monotonic() - started)
        if check and result.exited != 0:
            raise GuestCommandError(command, result.exited, result.stdout, result.stderr)
        return outcome

    def _run_stoppable(self, command: str, timeout_s: float) -> Result:
        """``Connection.run`` that a stop request ends within ``interrupt.POLL_S``, in any thread.

        A blocking ``run`` waits in invoke's ``Runner._finish``, which catches ``KeyboardInterrupt``,
        forwards it to the remote command (a no-op without a pty) and keeps waiting: an operator's
        Ctrl-C during fio would be lost.  So the command runs asynchronously and this thread polls;
        on a stop request the channel is closed (invoke's ``kill`` for a remote command) and the
        stop is raised here.
        """
        interrupt.check()
        promise = self.connection.run(
            command, hide=True, warn=True, timeout=timeout_s, in_stream=False, asynchronous=True
        )
        runner = promise.runner
        try:
            while not runner.process_is_finished:
                interrupt.check()
                time.sleep(interrupt.POLL_S)
        except BaseException:
            runner.kill()
            with contextlib.suppress(Exception):
                promise.join()
            raise
        result: Result = promise.join()
        interrupt.check()  # a signal that landed in join() was swallowed by invoke: honour it here
        return result

    def get(self, remote: str, local: Path) -> Path:
        """Fetch a file over SFTP; a stop request aborts the transfer between blocks."""
        local.parent.mkdir(parents=True, exist_ok=True)

        def progress(done: int, total: int) -> None:
            interrupt.check()

        interrupt.check()
        try:
            self.connection.sftp().get(remote, str(local), callback=progress)
        except (OSError, paramiko.SSHException) as exc:
            raise GuestCommandError(f"sftp get {remote}", None, "", repr(exc)) from exc
        except BaseException:
            local.unlink(missing_ok=True)  # never leave half a file behind
            raise
        return local

    def put(self, local: Path, remote: str) -> None:
        """Send a file over SFTP; a stop request aborts the transfer between blocks."""

        def progress(done: int, total: int) -> None:
            interrupt.check()

        interrupt.check()
        try:
            self.connection.sftp().put(str(local), remote, callback=progress)
        except (OSError, paramiko.SSHException) as exc:
            raise GuestCommandError(f"sftp put {remote}", None, "", repr(exc)) from exc

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> Guest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
