"""Shared fixtures: the real guest image and stock kernel, and a check that no QEMU outlives the suite."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lab.image import GuestImage, build_image
from lab.kernel import KernelBuild, stock_kernel
from lab.keys import KeyPair, client_key
from lab.runner import LabContext
from lab.util import cache_dir
from lab.vm import LocalHypervisor

# Every process this session starts inherits the token, QEMU included (the lab passes its environment on),
# so a second test session on the machine (another checkout's suite) neither counts nor kills ours.
SESSION_TOKEN = "SWIOTLB_LAB_TEST_SESSION"
os.environ.setdefault(SESSION_TOKEN, f"{os.getpid()}-{time.time_ns()}")


def _session_of(pid: int) -> str | None:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    prefix = f"{SESSION_TOKEN}=".encode()
    return next((item[len(prefix) :].decode() for item in environ if item.startswith(prefix)), None)


def qemu_pids() -> set[int]:
    """Live QEMU processes of this session (workers over SSH get the token too: lab.fanout.FORWARDED_ENV);
    a QEMU without the token is another suite's SSH worker's or a user's run, and never ours to kill.  A
    zombie has exited, and whether init has reaped it is not the lab's doing."""
    out = subprocess.run(["pgrep", "-f", "qemu-system"], capture_output=True, text=True, check=False).stdout
    token = os.environ[SESSION_TOKEN]
    return {pid for pid in map(int, out.split()) if pid != os.getpid() and pid_alive(pid) and _session_of(pid) == token}


def boots_guests(item: pytest.Item) -> bool:
    return "tests/unit/" not in item.path.as_posix()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Unit tests first (stable otherwise): they need no kernel, so the background builder has their time."""
    items.sort(key=boots_guests)


@pytest.fixture(scope="session", autouse=True)
def kernels_built_in_the_background(request: pytest.FixtureRequest) -> Iterator[None]:
    """``tests/prebuild.py`` at idle priority while the session runs, if it runs tests that boot guests;
    stopped (with its make and compilers: its own process group) when the session ends.  Off with
    SWIOTLB_LAB_PREBUILD=0."""
    if os.environ.get("SWIOTLB_LAB_PREBUILD") == "0" or not any(map(boots_guests, request.session.items)):
        yield
        return
    log = cache_dir() / "prebuild.log"
    with log.open("w") as handle:
        builder = subprocess.Popen(
            [sys.executable, "-m", "tests.prebuild"],
            cwd=Path(__file__).parent.parent,
            stdin=subprocess.DEVNULL,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield
    finally:
        if builder.poll() is None:
            os.killpg(builder.pid, signal.SIGTERM)
            try:
                builder.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(builder.pid, signal.SIGKILL)
                builder.wait()


@pytest.fixture(scope="session", autouse=True)
def no_qemu_survives_the_suite() -> Iterator[None]:
    before = qemu_pids()
    yield
    leftover = qemu_pids() - before
    if leftover:
        subprocess.run(["kill", "-9", *map(str, leftover)], check=False)
        pytest.fail(f"QEMU processes survived the test suite: {sorted(leftover)}")


@pytest.fixture(scope="session")
def guest_image() -> GuestImage:
    return build_image()


@pytest.fixture(scope="session")
def stock() -> KernelBuild:
    return stock_kernel()


@pytest.fixture(scope="session")
def lab_key() -> KeyPair:
    return client_key()


@pytest.fixture(scope="session")
def hypervisor() -> LocalHypervisor:
    return LocalHypervisor()


@pytest.fixture
def lab_ctx(guest_image: GuestImage, stock: KernelBuild, lab_key: KeyPair, hypervisor: LocalHypervisor) -> LabContext:
    return LabContext(
        hypervisor, guest_image, lab_key, {"stock": stock}, cache_dir(), provenance={"lab_revision": "test"}
    )


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it has exited all the same.
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


SSHD = Path("/usr/sbin/sshd")


@dataclass(frozen=True)
class LocalSshd:
    port: int
    client_key: Path
    host_key_line: str


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def local_sshd(tmp_path: Path) -> Iterator[LocalSshd]:
    if not SSHD.exists():
        pytest.skip("needs the Debian package openssh-server (make setup installs it)")
    if os.geteuid() != 0:
        pytest.skip("sshd with its own config needs root")
    for name in ("host", "client"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "lab-test", "-f", str(tmp_path / name)], check=True
        )
    authorized = tmp_path / "authorized_keys"
    shutil.copy(tmp_path / "client.pub", authorized)
    authorized.chmod(0o600)
    port = _free_port()
    config = tmp_path / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {tmp_path / 'host'}\n"
        f"AuthorizedKeysFile {authorized}\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "PermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\nPidFile none\n"
    )
    Path("/run/sshd").mkdir(exist_ok=True)  # its privilege-separation directory
    proc = subprocess.Popen(
        [str(SSHD), "-D", "-e", "-f", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None, f"sshd exited: {proc.stderr.read() if proc.stderr else ''}"
                assert time.monotonic() < deadline, "sshd did not listen within 10 s"
                time.sleep(0.05)
        yield LocalSshd(port, tmp_path / "client", (tmp_path / "host.pub").read_text().strip())
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="session")
def built_kernels() -> Callable[..., dict[str, KernelBuild]]:
    """Build (or load) lab kernels before a test starts its clock: on a fresh machine a cold build takes
    minutes, which must not count against a bound the test puts on the lab's own behaviour."""
    from lab.kernel import build_kernel

    def build(*names: str) -> dict[str, KernelBuild]:
        return {name: build_kernel(name) for name in names}

    return build
