"""On this host (no SEV-SNP), a matrix of sev-snp cells is skipped cell by cell with the reason: the exit
code says nothing could run here (3) and the summary and report say why; nothing boots."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import lab_run_matrix, qemu_pids

pytestmark = [pytest.mark.integration, pytest.mark.kernels("static")]


REPO = Path(__file__).resolve().parents[2]


def test_sev_snp_cells_are_skipped_here_with_their_reason(tmp_path: Path) -> None:
    matrix = tmp_path / "snp.toml"
    matrix.write_text(
        '[matrix]\nkernels = ["static"]\npools = ["2MiB"]\nworkloads = ["w"]\nplatforms = ["sev-snp"]\n'
        'repetitions = 2\n[workloads.w]\nruntime = "2s"\nsize = "64M"\n'
    )
    before = qemu_pids()
    proc = lab_run_matrix(matrix, tmp_path / "r", timeout_s=900)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "2 cells, 0 failed, 2 skipped (platform not offered" in proc.stdout
    assert "skipped: platform sev-snp not offered: needs QEMU >= 9.1" in proc.stdout
    [run] = list((tmp_path / "r").iterdir())
    records = [json.loads(p.read_text()) for p in run.glob("cells/*/cell.json")]
    assert {r["status"] for r in records} == {"skipped"} and not list(run.glob("boots/*"))
    assert "## Skipped cells" in (run / "report.md").read_text()
    assert qemu_pids() - before == set()


def test_bench_boot_builds_the_lab_kernel_its_matrix_names(tmp_path: Path) -> None:
    matrix = tmp_path / "static.toml"
    matrix.write_text(
        '[matrix]\nkernels = ["static"]\npools = ["2MiB"]\nworkloads = ["w"]\n'
        '[workloads.w]\nruntime = "2s"\nsize = "64M"\n'
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "lab",
            "bench",
            "boot",
            "--matrix",
            str(matrix),
            "--boots",
            "1",
            "--cell-runtime",
            "2",
            "--results",
            str(tmp_path / "r"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "kernel static 6.12" in proc.stdout and "boot-to-SSH over 1 boots" in proc.stdout
