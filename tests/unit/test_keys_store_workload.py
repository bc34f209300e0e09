"""Keys, the results store, and fio command lines."""

from __future__ import annotations

import json
import shlex
import stat
from pathlib import Path

import pandas as pd
import pytest

from lab.errors import ConfigError
from lab.guest import quote_argv
from lab.keys import client_key
from lab.store import RunStore, load_cells
from lab.workload import Workload


def test_client_key_is_created_once_with_mode_0600(tmp_path: Path) -> None:
    first = client_key(tmp_path)
    assert stat.S_IMODE(first.private_path.stat().st_mode) == 0o600
    assert first.public_line.startswith("ssh-ed25519 ")
    assert client_key(tmp_path) == first


def test_store_writes_cells_atomically_and_consolidates(tmp_path: Path) -> None:
    store = RunStore.create(tmp_path, {"matrix": "x"}, run_id="r1")
    assert store.manifest()["status"] == "running"
    store.write_cell({"cell_id": "a", "status": "ok", "x": 1.0}, pd.DataFrame({"t_s": [0.0, 0.02]}), None)
    store.write_cell({"cell_id": "b", "status": "failed", "x": float("nan")}, None, None)
    assert not list(tmp_path.rglob("*.tmp"))
    store.consolidate()
    cells = load_cells(store.root)
    assert sorted(cells["cell_id"]) == ["a", "b"]
    assert len(pd.read_parquet(store.root / "samples.parquet")) == 2
    assert json.loads((store.root / "cells/b/cell.json").read_text())["x"] is None


def test_store_refuses_to_overwrite_an_existing_run(tmp_path: Path) -> None:
    RunStore.create(tmp_path, {}, run_id="same")
    with pytest.raises(ConfigError, match="already exists"):
        RunStore.create(tmp_path, {}, run_id="same")


def test_fio_argv_targets_the_device_with_json_plus_output() -> None:
    argv = Workload("w", rw="randread", bs="256k", iodepth=128, numjobs=4, runtime_s=5).fio_argv(
        "/dev/nvme0n1", "/o.json"
    )
    assert argv[:3] == ["fio", "--output-format=json+", "--output=/o.json"]
    for option in ("--filename=/dev/nvme0n1", "--iodepth=128", "--numjobs=4", "--runtime=5", "--time_based=1"):
        assert option in argv


def test_shell_metacharacters_are_quoted_literally() -> None:
    hostile = "x; rm -rf / $(reboot) 'quote'"
    assert shlex.split(quote_argv(["echo", hostile])) == ["echo", hostile]


def test_hipri_needs_a_polling_engine() -> None:
    with pytest.raises(ConfigError, match="hipri needs ioengine io_uring"):
        Workload("w", hipri=True, ioengine="libaio")


def test_resume_skips_finished_cells_and_retry_failed_reruns_only_failures(tmp_path: Path) -> None:
    store = RunStore.create(tmp_path, {}, run_id="r")
    store.write_cell({"cell_id": "good", "status": "ok"}, None, None)
    store.write_cell({"cell_id": "bad", "status": "failed", "failure_reason": "timeout"}, None, None)
    assert store.cells_to_skip() == {"good", "bad"}
    assert store.cells_to_skip(retry_failed=True) == {"good"}


def test_cpu_model_is_read_from_cpuinfo() -> None:
    from lab.host import cpu_model

    text = (
        "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9654 96-Core Processor\n\nprocessor\t: 1\n"
    )
    assert cpu_model(text) == "AMD EPYC 9654 96-Core Processor"
    assert cpu_model("") == "unknown"


@pytest.mark.parametrize(
    ("dmesg", "expected"),
    [
        pytest.param("[    7.1] ccp 0000:22:00.1: SEV-SNP API:1.55 build:21\n", "SEV-SNP API 1.55 build 21", id="snp"),
        pytest.param(
            "[    2.0] virt/tdx: TDX module: attributes 0x0, vendor_id 0x8086, major_version 1, minor_version 5, "
            "build_date 20240129, build_num 698\n",
            "TDX module 1.5 build 698",
            id="tdx",
        ),
        pytest.param("[    0.0] Linux version 6.12\n", "", id="neither"),
    ],
)
def test_coco_firmware_versions_are_read_from_the_host_kernel_log(dmesg: str, expected: str) -> None:
    # Line formats of drivers/crypto/ccp/sev-dev.c and arch/x86/virt/vmx/tdx/tdx.c (versions made up).
    from lab.host import coco_firmware

    assert coco_firmware(dmesg) == expected


def test_the_dotted_tdx_module_version_is_read_too() -> None:
    from lab.host import coco_firmware

    assert coco_firmware("[    3.1] virt/tdx: TDX module 1.5.06 (build_date 20240129, build_num 698)\n") == (
        "TDX module 1.5 build 698"
    )


def test_a_run_whose_process_died_is_recognised_and_a_live_one_is_refused(tmp_path: Path) -> None:
    import subprocess
    import sys

    from lab.errors import ConfigError
    from lab.store import RunStore, liveness, stat_start_time

    store = RunStore.create(tmp_path, {"matrix_name": "m"}, run_id="r")
    # A process standing in for the one that still runs the run, recorded as the run records its owner
    # (pid and start time; the start time is set at fork, so it can be read at once).
    runner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "lab", "run", "matrix"])
    try:
        ticks = stat_start_time(Path(f"/proc/{runner.pid}/stat").read_text())
        store.update_manifest(pid=runner.pid, process_start={"pid": runner.pid, "ticks": ticks})
        assert liveness(store.manifest()) == "alive"
        with pytest.raises(ConfigError, match="still being run by process"):
            store.claim()
    finally:
        runner.kill()
        runner.wait()
    # kill -9: the manifest still says running, but nothing runs it any more.
    assert store.manifest()["status"] == "running" and liveness(store.manifest()) == "dead"
    assert store.claim() == "dead"
    assert "ended without marking the run" in store.manifest()["died"]
    assert liveness({"status": "running", "controller": "another-box", "pid": 1}) == "unknown"
    assert liveness({"status": "complete"}) == "complete"
