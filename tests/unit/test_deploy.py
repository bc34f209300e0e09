"""The shipped CI glue: systemd units (a Dask worker, the nightly service and timer) that systemd accepts,
and a GitHub Actions workflow that parses and runs `lab nightly` on self-hosted runners per platform."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "lab" / "systemd" / "swiotlb-lab-worker.service"
UNITS = sorted((REPO / "lab" / "systemd").glob("swiotlb-lab-*"))


def test_the_worker_unit_starts_a_dask_worker_with_slot_and_platform_resources() -> None:
    text = UNIT.read_text()
    [exec_start] = [line for line in text.splitlines() if line.startswith("ExecStart=")]
    assert (
        "-m distributed.cli.dask_worker ${LAB_SCHEDULER}" in exec_start and "--resources ${LAB_RESOURCES}" in exec_start
    )
    assert "Environment=LAB_RESOURCES=slot=" in text and "KillMode=control-group" in text


@pytest.mark.parametrize("unit", UNITS, ids=[u.name for u in UNITS])
def test_systemd_accepts_the_unit(unit: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    proc = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, check=False)
    # The only complaint allowed here: the lab is not installed under /opt on this machine.
    problems = [
        line
        for line in (proc.stdout + proc.stderr).splitlines()
        if line.strip() and "/opt/swiotlb-lab/.venv/bin/python is not executable" not in line
    ]
    assert not problems, problems


def test_the_nightly_timer_starts_the_nightly_service_which_runs_lab_nightly() -> None:
    timer = (REPO / "lab/systemd/swiotlb-lab-nightly.timer").read_text()
    service = (REPO / "lab/systemd/swiotlb-lab-nightly.service").read_text()
    assert "OnCalendar=" in timer and "Persistent=true" in timer
    [exec_start] = [line for line in service.splitlines() if line.startswith("ExecStart=")]
    assert "-m lab nightly" in exec_start and "--kernel-tree" in exec_start and "--history" in exec_start
    assert "SuccessExitStatus=1" in service  # a regression is the night's answer, not a failed unit


def test_the_github_workflow_runs_a_night_per_platform_and_uploads_under_always() -> None:
    workflow = yaml.safe_load((REPO / ".github/workflows/nightly.yml").read_text())
    triggers = workflow[True] if True in workflow else workflow["on"]  # YAML 1.1 reads a bare `on` as true
    assert triggers["schedule"][0]["cron"]
    job = workflow["jobs"]["nightly"]
    assert job["strategy"]["matrix"]["platform"] == ["sev-snp", "tdx", "kvm"]
    assert "self-hosted" in job["runs-on"] and "${{ matrix.platform }}" in job["runs-on"]
    runs = [step.get("run", "") for step in job["steps"]]
    assert any("-m lab nightly" in run and "--junit" in run and "--kernel-tree" in run for run in runs)
    always = [step for step in job["steps"] if step.get("if") == "always()"]
    assert {step.get("uses", "").split("@")[0] for step in always} >= {"actions/upload-artifact"}
    uploaded = next(step for step in always if step.get("uses", "").startswith("actions/upload-artifact"))
    assert "junit-" in uploaded["with"]["path"] and "nightly-out/" in uploaded["with"]["path"]
