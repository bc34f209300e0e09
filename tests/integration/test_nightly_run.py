"""Two real nights of a tiny matrix, the same matrix both nights: the first built from a kernel tree of its
own (what `lab nightly --kernel-tree` is for) that lets the NVMe driver keep only 4 commands in flight per
queue (io_queue_depth 4: 2 MiB of 256 KiB reads on a 4 MiB pool), the second from the lab's pinned Debian
source as it is (1024; the suite's cached `static`, so one kernel build less), whose deep queues fill the
pool.  That moves hiwater and failed maps, so the gate
exits 1 and the JUnit file names the failing testcases with their numbers.  (A repeat of the same
revision is tested on stored real cells in tests/unit/test_nightly.py, where it is exactly reproducible.)"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from junitparser import Failure, JUnitXml

from lab.history import History
from lab.kernel import debian_source
from lab.util import cache_dir
from tests.conftest import qemu_pids

pytestmark = [pytest.mark.integration, pytest.mark.kernels("static")]


REPO = Path(__file__).resolve().parents[2]
MATRIX = """
[matrix]
kernels = ["static"]
pools = ["4MiB"]
workloads = ["heavy"]
repetitions = 3
observe = "none"

[workloads.heavy]
rw = "randread"
bs = "256k"
iodepth = 128
numjobs = 4
runtime = "5s"
size = "256M"
"""
DEPTH = "static unsigned int io_queue_depth = 1024;"


@pytest.fixture
def own_kernels(tmp_path: Path) -> Iterator[None]:
    """The kernels these nights build from their trees (under tmp_path) are this test's alone: removed from
    the cache after, with their build logs.  Nothing else goes: the suite's background builder may finish
    another kernel meanwhile."""
    yield
    kernels = cache_dir() / "kernels"
    for identity in kernels.glob("*/identity.txt") if kernels.is_dir() else ():
        if f"kernel_source=tree:{tmp_path}/" in identity.read_text():
            shutil.rmtree(identity.parent, ignore_errors=True)
            identity.parent.with_name(f"{identity.parent.name}.build.log").unlink(missing_ok=True)


def kernel_tree(tmp_path: Path, name: str, depth: int) -> Path:
    """Debian's tree, hard-linked (instant), with the NVMe queue depth set; files changed get an inode of
    their own, so the cached pristine tree is untouched.  The Makefile gets a comment naming the tree, so
    that a tree without git is still told apart from another by content."""
    tree = tmp_path / name
    subprocess.run(["cp", "-al", str(debian_source().tree), str(tree)], check=True)
    for rel, old, new in (
        ("drivers/nvme/host/pci.c", DEPTH, DEPTH.replace("1024", str(depth))),
        ("Makefile", "\nEXTRAVERSION =", f"\n# lab test tree {name}\nEXTRAVERSION ="),
    ):
        path = tree / rel
        text = path.read_text()
        assert old in text, f"{rel} no longer has {old!r}"
        path.unlink()
        path.write_text(text.replace(old, new, 1))
    return tree


def nightly(matrix: Path, history: Path, junit: Path, tree: Path | None) -> subprocess.CompletedProcess[str]:
    on_tree = ["--kernel-tree", str(tree)] if tree else []
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "lab",
            "nightly",
            "--matrix",
            str(matrix),
            "--history",
            str(history),
            "--junit",
            str(junit),
            *on_tree,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1800,
    )


def test_a_night_whose_revision_fills_the_pool_is_a_regression(tmp_path: Path, own_kernels: None) -> None:
    matrix, history = tmp_path / "tiny.toml", tmp_path / "history"
    matrix.write_text(MATRIX)
    before = qemu_pids()
    first = nightly(matrix, history, tmp_path / "first.xml", kernel_tree(tmp_path, "shallow", 4))
    assert first.returncode == 0, first.stdout + first.stderr
    assert "this night is the baseline" in first.stdout

    second = nightly(matrix, history, tmp_path / "second.xml", None)
    assert second.returncode == 1, second.stdout + second.stderr
    failures = {
        case.name: case.result[0]
        for suite in JUnitXml.fromfile(str(tmp_path / "second.xml"))
        for case in suite
        if case.result and isinstance(case.result[0], Failure)
    }
    assert "hiwater_frac static/2048/nvme/heavy" in failures, sorted(failures)
    assert "baseline" in failures["hiwater_frac static/2048/nvme/heavy"].message
    nights = History(history).nights()
    assert list(nights["status"]) == ["complete", "complete"] and list(nights["exit_code"]) == [0, 1]
    trees = [
        json.loads((history / "runs" / r / "manifest.json").read_text())["nightly"].get("tree")
        for r in nights["run_id"]
    ]
    assert trees == [str(tmp_path / "shallow"), None]  # a night records the tree it built, if it had one
    # Each night's report is written after its gate and opens with it.
    first_report, second_report = ((history / "runs" / r / "report.md").read_text() for r in nights["run_id"])
    assert "## Nightly gate" in first_report and "**passed** (exit 0)" in first_report
    assert "**REGRESSION** (exit 1)" in second_report.split("## Nightly gate", 1)[1].split("\n## ", 1)[0]
    trend = (history / "trend-tiny.html").read_text()
    assert all(run_id in trend for run_id in nights["run_id"])
    assert qemu_pids() - before == set()
