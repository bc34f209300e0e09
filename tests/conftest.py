"""Shared fixtures: the real guest image and stock kernel, and a check that no QEMU outlives the suite."""

from __future__ import annotations

import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from lab.image import GuestImage, build_image
from lab.kernel import KernelBuild, stock_kernel
from lab.keys import KeyPair, client_key
from lab.runner import LabContext
from lab.util import cache_dir
from lab.vm import LocalHypervisor
from tests.prebuild import SUITE_KERNELS

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


CPU_LEDGER = "SWIOTLB_LAB_TEST_CPU"


def _cpu_s() -> float:
    """CPU seconds of this process and of every descendant it has reaped: the lab's QEMUs, `python -m lab`
    runs and local Dask workers; not the background builder (reaped at the session's end) nor workers
    started over SSH (sshd's children)."""
    own, reaped = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + reaped.ru_utime + reaped.ru_stime


def _machine_busy_s() -> float:
    """CPU seconds the whole machine has been busy (/proc/stat: all but idle and iowait)."""
    ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Iterator[None]:
    """With SWIOTLB_LAB_TEST_CPU=<file>: one line per test appended to it (CPU s of the session and what it
    reaped, CPU s the whole machine was busy, wall s, node id): the split BENCHMARKS.md quotes.  On 2 cores
    a fresh clone's suite is bound by the CPU work of its tests and builds (issue 18); run it with
    SWIOTLB_LAB_PREBUILD=0 on a warm cache and an otherwise idle machine for the machine column to be the
    test's own (workers over SSH included)."""
    ledger = os.environ.get(CPU_LEDGER)
    cpu, busy, wall = _cpu_s(), _machine_busy_s(), time.monotonic()
    yield
    if ledger:
        with open(ledger, "a") as handle:
            handle.write(
                f"{_cpu_s() - cpu:.1f}\t{_machine_busy_s() - busy:.1f}\t{time.monotonic() - wall:.1f}\t{item.nodeid}\n"
            )


def marked_kernels(item: pytest.Item) -> tuple[str, ...]:
    """The lab kernels a test declares with ``@pytest.mark.kernels(...)`` (module, class and test marks)."""
    return tuple(dict.fromkeys(name for mark in item.iter_markers("kernels") for name in mark.args))


def ready_order(item: pytest.Item) -> int:
    """When tests/prebuild.py has this test's kernels: the place of the last of them in its build order."""
    return max((SUITE_KERNELS.index(name) for name in marked_kernels(item) if name in SUITE_KERNELS), default=0)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Unit tests first: they need no kernel, so the background builder has their time.  Then the tests that
    boot guests in the order the builder finishes their kernels (stable otherwise): on 2 cores a fresh
    clone's suite is bound by CPU work, and the builder at idle priority takes what the tests leave, so the
    only time lost is the tail after its last build, which is then the few tests of that last kernel."""
    items.sort(key=lambda item: (boots_guests(item), ready_order(item)))


@pytest.fixture(autouse=True)
def declared_kernels_built_first(request: pytest.FixtureRequest) -> None:
    """Build (or load) the kernels a test declares before it starts its clock: on a fresh machine a cold
    build takes minutes, which must not count against a bound the test puts on the lab's own behaviour."""
    if isinstance(request.node, pytest.Item) and marked_kernels(request.node):
        from lab.kernel import build_kernel

        for name in marked_kernels(request.node):
            build_kernel(name)


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


REPO = Path(__file__).resolve().parent.parent


def lab_run_matrix(matrix: Path, results: Path, timeout_s: float = 600) -> subprocess.CompletedProcess[str]:
    """`python -m lab run matrix MATRIX --results RESULTS` from the checkout, as a user runs it, its output
    captured (the caller asserts on the exit code)."""
    argv = [sys.executable, "-m", "lab", "run", "matrix", str(matrix), "--results", str(results)]
    return subprocess.run(argv, cwd=REPO, text=True, capture_output=True, timeout=timeout_s, check=False)


# A short load on the disk under test, 2 s of 64 KiB reads from 2 jobs: enough to bounce, little to wait for.
SHORT_LOAD = """
[workloads.a]
rw = "randread"
bs = "64k"
iodepth = 16
numjobs = 2
runtime = "2s"
size = "64M"
"""


def run_matrix_text(text: str, tmp_path: Path) -> tuple[Path, pd.DataFrame]:
    """Run a matrix given as TOML text (tmp_path/m.toml, results in tmp_path/results) as a user does: it must
    exit 0 and leave no QEMU behind.  The run's directory and its rows."""
    matrix = tmp_path / "m.toml"
    matrix.write_text(text)
    before = qemu_pids()
    proc = lab_run_matrix(matrix, tmp_path / "results")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert qemu_pids() - before == set()
    [run] = list((tmp_path / "results").iterdir())
    return run, pd.read_parquet(run / "cells.parquet")


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
