"""A cell whose platform this host does not offer is skipped with its reason: neither a failure nor a
finding, in the store, the summary and the exit code, and a resume tries it again."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import pandas as pd

from lab.fanout import DaskPool
from lab.image import GuestImage
from lab.kernel import KernelBuild
from lab.keys import KeyPair
from lab.matrix import Cell
from lab.report import report_markdown, summary_markdown
from lab.runner import LabContext, SilentReporter, run_matrix
from lab.session import EXIT_NOTHING_RAN, run_exit_code
from lab.store import RunStore, load_cells
from lab.vm import BootSpec
from lab.workload import Workload

REASON = "needs QEMU >= 9.1, host has 7.2; sev-snp not enabled on the host"


class NoBoots:
    """A hypervisor that must not be asked to boot anything."""

    name = "none"

    def boot(self, spec: BootSpec, workdir: Path) -> contextlib.AbstractContextManager[Any]:
        raise AssertionError(f"booted a skipped cell on {spec.accel}")

    def describe(self) -> dict[str, object]:
        return {}

    def capabilities(self) -> dict[str, str]:
        return {"tcg": "", "kvm": "", "sev-snp": REASON}

    def stop_all(self) -> int:
        return 0


def context(tmp_path: Path) -> LabContext:
    kernel = KernelBuild("static", "6.12.117", tmp_path / "bzImage", tmp_path / "config")
    image = GuestImage(tmp_path / "rootfs.cpio", "ssh-ed25519 AAAAhost lab", "recipe")
    return LabContext(
        NoBoots(),
        image,
        KeyPair(tmp_path / "key", "ssh-ed25519 AAAAkey lab"),  # type: ignore[arg-type]
        {"static": kernel},
        tmp_path,
        offered={"tcg": "", "kvm": "", "sev-snp": REASON},
    )


def test_cells_on_a_platform_the_host_lacks_are_skipped_with_the_reason(tmp_path: Path) -> None:
    cells = [Cell("static", 1024, "nvme", Workload("w"), 2, 1024, rep, platform="sev-snp") for rep in range(2)]
    store = RunStore.create(tmp_path / "results", {"test": "skip"}, run_id="r")
    from lab.matrix import Matrix

    rows = run_matrix(Matrix("m", "m.toml", "", tuple(cells), raw={}), store, context(tmp_path), SilentReporter())
    assert [r["status"] for r in rows] == ["skipped", "skipped"]
    assert rows[0]["failure_detail"] == f"platform sev-snp not offered: {REASON}"
    store.consolidate()
    stored = load_cells(store.root)
    assert set(stored["status"]) == {"skipped"} and set(stored["platform"]) == {"sev-snp"}
    # Not a finding and not a failure: the exit code says nothing could run here, the summary says why.
    assert run_exit_code(stored, "complete", strict=True) == EXIT_NOTHING_RAN == 3
    summary = summary_markdown(stored, str(store.root), {})
    assert "2 cells, 0 failed, 2 skipped (platform not offered" in summary
    assert f"skipped: platform sev-snp not offered: {REASON}" in summary
    # A resume on a host that offers the platform runs them.
    assert store.cells_to_skip() == set()


def test_skipped_cells_do_not_fail_a_strict_run_that_measured_something() -> None:
    cells = pd.DataFrame({"cell_id": ["a", "b", "c"], "status": ["ok", "skipped", "failed"]})
    assert run_exit_code(cells.iloc[:2], "complete", strict=True) == 0
    assert run_exit_code(cells, "complete", strict=True) == 1
    assert run_exit_code(cells, "complete", strict=False) == 0


class LosesEveryGroup(DaskPool):
    """A pool of remote workers (never started here) whose worker is lost with every group it is given
    (what Dask reports once its retries are used up)."""

    def run(self, tasks: list[Any], store: RunStore, on_row: Any, lost: Any) -> list[dict[str, Any]]:
        rows = []
        for task in tasks:
            result = lost(task, ConnectionError("worker tcp://10.0.0.7:4242 lost"), "10.0.0.7")
            rows += result.rows
        return rows


def test_cells_lost_with_their_worker_are_neither_failures_nor_findings_and_a_resume_reruns_them(
    tmp_path: Path,
) -> None:
    for name in ("bzImage", "rootfs.cpio", "key"):
        (tmp_path / name).write_bytes(b"x")
    cells = [Cell("static", 1024, "nvme", Workload("w"), 2, 1024, rep, platform="tcg") for rep in range(2)]
    store = RunStore.create(tmp_path / "results", {"test": "lost"}, run_id="r")
    from lab.matrix import Matrix

    matrix = Matrix("m", "m.toml", "", tuple(cells), raw={})
    rows = run_matrix(matrix, store, context(tmp_path), SilentReporter(), executor=LosesEveryGroup())
    assert [r["status"] for r in rows] == ["lost", "lost"]
    assert rows[0]["failure_detail"] == "ConnectionError: worker tcp://10.0.0.7:4242 lost"
    assert rows[0]["host_id"] == "10.0.0.7"  # where it was lost, not the controller
    store.consolidate()
    stored = load_cells(store.root)
    # Not a finding: even --strict does not call it one, but the run is not whole either (exit 3) ...
    assert run_exit_code(stored, "complete", strict=False) == EXIT_NOTHING_RAN
    with_ok = pd.concat([stored, pd.DataFrame({"cell_id": ["c"], "status": ["ok"]})], ignore_index=True)
    assert run_exit_code(with_ok, "complete", strict=True) == EXIT_NOTHING_RAN
    summary = summary_markdown(stored, str(store.root), {})
    assert "2 cells, 0 failed, 2 lost to the infrastructure" in summary
    report = report_markdown({}, stored, [], [], [])
    assert "## Lost cells (infrastructure)" in report and "worker tcp://10.0.0.7:4242 lost" in report
    assert "## Failed cells\n\n_none_" in report
    # ... and a resume runs them again, with or without --retry-failed
    assert store.cells_to_skip() == set() == store.cells_to_skip(retry_failed=True)
