"""The lab's exception hierarchy: one root, a few children that carry context."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


class LabError(Exception):
    """Root of every error the lab raises on purpose."""

    exit_code = 1


class ConfigError(LabError):
    """Bad input from the user: a file, key or value that cannot be used."""

    exit_code = 2


class HostError(LabError):
    """The host lacks something the lab needs (a package, a device, disk space)."""

    exit_code = 2


class BuildError(LabError):
    """A kernel or image build failed."""


class PatchError(BuildError):
    """A patch that does not apply: bad input, like a malformed matrix."""

    exit_code = 2


class BootError(LabError):
    """A guest did not come up, or died.  Carries the QEMU argv and console tail."""

    def __init__(
        self,
        message: str,
        *,
        argv: Sequence[str] = (),
        exitcode: int | None = None,
        log_path: Path | None = None,
        console_tail: str = "",
        reason: str = "boot failed",
    ) -> None:
        self.argv = tuple(argv)
        self.exitcode = exitcode
        self.log_path = log_path
        self.console_tail = console_tail
        self.reason = reason
        details = [message]
        if exitcode is not None:
            details.append(f"QEMU exit code: {exitcode}")
        if log_path is not None:
            details.append(f"console log: {log_path}")
        if console_tail:
            details.append("last console lines:\n" + console_tail)
        super().__init__("\n".join(details))


class KernelPanic(BootError):
    """The guest kernel panicked (seen on the serial console)."""


class LabTimeout(LabError):
    """Something did not happen within its time limit."""

    def __init__(self, what: str, timeout_s: float, detail: str = "") -> None:
        self.what = what
        self.timeout_s = timeout_s
        message = f"timed out after {timeout_s:.1f} s waiting for {what}"
        super().__init__(f"{message}: {detail}" if detail else message)


class GuestCommandError(LabError):
    """A command in the guest failed.  Carries the command, exit code and output tail."""

    def __init__(self, command: str, exitcode: int | None, stdout: str, stderr: str) -> None:
        self.command = command
        self.exitcode = exitcode
        self.stdout = stdout
        self.stderr = stderr
        tail = "\n".join((stderr or stdout).strip().splitlines()[-15:])
        super().__init__(
            f"guest command failed (exit {exitcode}): {command}" + (f"\n--- output tail ---\n{tail}" if tail else "")
        )


class ParseError(LabError):
    """An artifact from a guest could not be parsed."""

    def __init__(self, what: str, source: str, detail: str) -> None:
        self.what = what
        self.source = source
        super().__init__(f"cannot parse {what} from {source}: {detail}")
