"""The shipped systemd unit for a lab worker is a valid unit that starts a Dask worker with resources."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "lab" / "systemd" / "swiotlb-lab-worker.service"


def test_the_worker_unit_starts_a_dask_worker_with_slot_and_platform_resources() -> None:
    text = UNIT.read_text()
    [exec_start] = [line for line in text.splitlines() if line.startswith("ExecStart=")]
    assert (
        "-m distributed.cli.dask_worker ${LAB_SCHEDULER}" in exec_start and "--resources ${LAB_RESOURCES}" in exec_start
    )
    assert "Environment=LAB_RESOURCES=slot=" in text and "KillMode=control-group" in text


def test_systemd_accepts_the_worker_unit() -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    proc = subprocess.run(["systemd-analyze", "verify", str(UNIT)], capture_output=True, text=True, check=False)
    # The only complaint allowed here: the lab is not installed under /opt on this machine.
    problems = [line for line in (proc.stdout + proc.stderr).splitlines()
                if line.strip() and "/opt/swiotlb-lab/.venv/bin/python is not executable" not in line]  # fmt: skip
    assert not problems, problems
