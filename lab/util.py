"""Small shared helpers: waiting, hashing, atomic writes, host commands, cache paths."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import IO, Any, TypeVar

from lab import interrupt
from lab.errors import BuildError, ConfigError, LabTimeout

log = logging.getLogger(__name__)

T = TypeVar("T")
DEBIAN_MIRROR = "http://deb.debian.org/debian"  # where suites other than the host's come from (kernel, toolchain)


def cache_dir() -> Path:
    """The user cache directory for kernels, images, keys and probes."""
    explicit = os.environ.get("SWIOTLB_LAB_CACHE")
    if explicit:
        root = Path(explicit).expanduser()
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        root = (Path(xdg) if xdg else Path.home() / ".cache") / "swiotlb-lab"
    root.mkdir(parents=True, exist_ok=True)
    return root


def wait_until(
    check: Callable[[], T | None],
    timeout_s: float,
    *,
    what: str,
    interval_s: float = 0.05,
    detail: Callable[[], str] | None = None,
) -> T:
    """Call ``check`` until it returns something other than None/False, or time out.

    ``check`` may raise to abort the wait early (e.g. on a kernel panic); a stop request
    (Ctrl-C, SIGTERM) ends the wait with ``Interrupted``.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        interrupt.check()
        result = check()
        if result is not None and result is not False:
            return result
        if time.monotonic() >= deadline:
            raise LabTimeout(what, timeout_s, detail() if detail else "")
        interrupt.sleep(interval_s)


def read_toml(path: Path, kind: str) -> tuple[str, dict[str, Any]]:
    """A TOML file's text (for line numbers in errors) and data; errors name the file and say what it is."""
    import tomllib

    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read {kind} file: {exc.strerror}") from exc
    try:
        return text, tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(malformed_toml(path, text, exc)) from exc


_TOML_AT = re.compile(r"\(at line (\d+), column (\d+)\)|\(at end of document\)")


def _open_array(text: str, end: int) -> tuple[int, str] | None:
    """The line (1-based) and key of the outermost array still open at character ``end`` of a TOML text, if
    one is: a bracket scan of values (not table headers) that skips strings and comments."""
    depth, start, key = 0, 0, ""
    line_start, i = True, 0
    while i < min(end, len(text)):
        char = text[i]
        if char == "\n":
            line_start = True
            i += 1
            continue
        if line_start and char in " \t":
            i += 1
            continue
        if line_start and depth == 0:
            line_start = False
            if char == "[":  # a table header: [matrix], [[x]]
                i = text.find("\n", i)
                i = len(text) if i < 0 else i
                continue
            head = re.match(r"([A-Za-z0-9_.\-\"' ]+?)\s*=", text[i:])
            key = head.group(1).strip() if head else key
        line_start = False
        if char == "#":
            i = text.find("\n", i)
            i = len(text) if i < 0 else i
        elif char in "\"'":
            quote = char * 3 if text.startswith(char * 3, i) else char
            j = i + len(quote)
            while j < len(text) and not text.startswith(quote, j):
                if quote in ('"', '"""') and text[j] == "\\":  # an escape in a basic string
                    j += 1
                elif len(quote) == 1 and text[j] == "\n":
                    break
                j += 1
            i = j + len(quote)
        else:
            if char == "[":
                if depth == 0:
                    start = text.count("\n", 0, i) + 1
                depth += 1
            elif char == "]" and depth:
                depth -= 1
            i += 1
    return (start, key) if depth else None


def malformed_toml(path: Path, text: str, exc: Exception) -> str:
    """What is wrong with a TOML file (a matrix, a hosts inventory) that does not parse, at the line where the
    mistake is.  Python's TOML parser reports an array without its ``]`` where it noticed (the next line, or
    the end of the file): name the line the array starts on and its key instead."""
    message = str(exc)
    found = _TOML_AT.search(message)
    if found and found.group(1):
        line, column = int(found.group(1)), int(found.group(2))
        offset = sum(len(x) + 1 for x in text.split("\n")[: line - 1]) + column - 1
        noticed = f"line {line}, column {column}"
    else:
        line, offset, noticed = 0, len(text), "the end of the file"
    reason = _TOML_AT.sub("", message).strip()
    opened = _open_array(text, offset) if reason == "Unclosed array" else None
    if opened:
        start, key = opened
        what = f"the array of {key!r}" if key else "an array"
        return (
            f"{path}:{start}: malformed TOML: {what} that starts on line {start} is not closed (the parser "
            f"stopped at {noticed}): each value needs a ',' after it and the array a ']' at its end, "
            'e.g. ["8MiB", "16MiB"]; strings need quotes'
        )
    where = f":{line}" if line else ""
    return f"{path}{where}: malformed TOML: {reason} (at {noticed})"


def unknown_key(key: str, valid: Sequence[str], table: str = "") -> str:
    """ "unknown key 'kernal' in [matrix]; did you mean 'kernels'? valid keys: ..." (names only: what each key
    means is in the README and ``--help``, not in a 2,000-character error line)."""
    import difflib

    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ";"
    where = f" in {table}" if table else ""
    return f"unknown key {key!r}{where}{hint} valid keys: {', '.join(valid)}"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_tree(paths: Iterable[Path], root: Path) -> str:
    """Hash file names (relative to ``root``) and contents, in sorted order."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def run_process(
    argv: Sequence[str],
    *,
    stdout: int | IO[Any],
    stderr: int | IO[Any],
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout_s: float | None = None,
) -> tuple[int, str, str]:
    """Run a host command (never through a shell) and wait for it, stopping it on timeout or a stop request.

    The command gets a process group of its own, so that stopping it also stops what it started (make's
    compilers): a SIGTERM sent to the lab alone would otherwise leave them running.  Returns the exit code
    and whatever was captured (``subprocess.PIPE``) as text.
    """
    interrupt.check()
    started = time.monotonic()
    with interrupt.deferred():  # the process must be ours to stop before any interrupt can unwind
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
            text=True,
            errors="replace",
        )
    try:
        while True:
            try:
                out, err = proc.communicate(timeout=interrupt.POLL_S * 4)
                return proc.returncode, out or "", err or ""
            except subprocess.TimeoutExpired:
                pass
            interrupt.check()
            if timeout_s is not None and time.monotonic() - started > timeout_s:
                raise LabTimeout(argv[0], timeout_s, " ".join(argv))
    finally:
        if proc.poll() is None:
            with interrupt.deferred():
                _stop_group(proc)


def _stop_group(proc: subprocess.Popen[str]) -> None:
    """SIGTERM to the command's process group, SIGKILL after 5 s."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(5.0)
            return
        except subprocess.TimeoutExpired:
            continue


def run_host(
    argv: Sequence[str | os.PathLike[str]],
    *,
    what: str,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    log_path: Path | None = None,
    timeout_s: float | None = None,
) -> str:
    """Run a host command (never through a shell); raise BuildError with its output tail."""
    args = [str(a) for a in argv]
    log.debug("running %s: %s", what, args)
    try:
        code, stdout, stderr = run_process(
            args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd, env=env, timeout_s=timeout_s
        )
    except FileNotFoundError as exc:
        raise BuildError(f"{what}: command not found: {args[0]}") from exc
    except LabTimeout as exc:
        raise LabTimeout(what, timeout_s or 0.0, " ".join(args)) from exc
    output = stdout + stderr
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.write_text(output)
    if code != 0:
        tail = "\n".join(output.strip().splitlines()[-25:])
        where = f" (full log: {log_path})" if log_path else ""
        raise BuildError(f"{what} failed with exit code {code}{where}:\n{tail}")
    return stdout
