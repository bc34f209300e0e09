"""The command line: bad input exits 2 with a message that names the problem, and writes nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab.cli import main


def test_dry_run_lists_cells_and_an_estimate(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "matrix", "stock", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "stock-1024-nvme-heavy-r0-" in out
    assert "4 cells to run in 2 boots" in out


def test_unknown_matrix_key_exits_2_naming_file_and_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[matrix]\npools = [1024]\nflavour = "x"\n')
    results = tmp_path / "results"
    assert main(["run", "matrix", str(bad), "--results", str(results)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:3: unknown key 'flavour'" in err
    assert not results.exists()


def test_missing_qemu_exits_2_naming_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing is installed on this PATH
    results = tmp_path / "results"
    assert main(["run", "matrix", "--results", str(results)]) == 2
    err = capsys.readouterr().err
    assert "qemu-system-x86_64" in err and "apt-get install" in err and "qemu-system-x86" in err
    assert not results.exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        pytest.param(["bench", "counter", "--kernel", "throttle"], "no 'throttle-bare' twin", id="no-twin"),
        pytest.param(["bench", "counter", "--pairs", "1"], "--pairs 1: a confidence interval needs", id="one-pair"),
        pytest.param(["bench", "counter", "--workloads", "huge"], "--workloads: huge not in matrix", id="workload"),
        pytest.param(["bench", "dmamap", "--threads", "1,x"], "--threads '1,x': a comma-separated", id="threads"),
        pytest.param(["bench", "dmamap", "--seconds", "0"], "need kernels, thread counts >= 1", id="seconds"),
        pytest.param(["run", "matrix", "thread", "--dry-run", "--cores", "0"], "--cores 0", id="cores"),
    ],
)
def test_bad_bench_and_estimate_options_exit_2_naming_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert main([*argv, "--results", str(tmp_path / "r")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("jobs", ["0", "-3", "two", "1.5"])
@pytest.mark.parametrize(
    "command", [["run", "matrix", "stock", "--dry-run"], ["nightly"]], ids=["run-matrix", "nightly"]
)
def test_a_job_count_below_one_exits_2_naming_the_option(
    command: list[str], jobs: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([*command, "--jobs", jobs])
    assert exit_.value.code == 2
    assert f"argument --jobs: '{jobs}' is not a whole number of at least 1" in capsys.readouterr().err


def test_one_job_is_accepted(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "matrix", "stock", "--dry-run", "--jobs", "1"]) == 0
    assert "4 cells to run" in capsys.readouterr().out


def test_a_dry_run_reads_its_inventory_too(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nonexistent.toml"
    assert main(["run", "matrix", "stock", "--dry-run", "--hosts", str(missing)]) == 2
    assert f"{missing}: cannot read hosts file" in capsys.readouterr().err


SNP_MATRIX = '[matrix]\nkernels = ["static"]\npools = ["2MiB"]\nplatforms = ["sev-snp", "auto"]\n[workloads.w]\n'


def test_a_dry_run_marks_the_cells_this_machine_cannot_run_and_leaves_them_out_of_the_estimate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    matrix = tmp_path / "snp.toml"
    matrix.write_text(SNP_MATRIX)
    monkeypatch.setenv("SWIOTLB_LAB_QEMU", "/nonexistent/qemu-system-x86_64")  # a machine with no usable QEMU
    assert main(["run", "matrix", str(matrix), "--dry-run"]) == 0
    out = capsys.readouterr().out
    [skip] = [line for line in out.splitlines() if line.startswith("skip  ")]
    assert "static-1024-nvme-w-r0-" in skip and "(platform sev-snp not offered: " in skip
    assert "/nonexistent/qemu-system-x86_64 not found" in skip
    assert "1 cells will be skipped here" in out and "1 cells to run in 1 boots" in out  # "auto" always runs


def test_a_dry_run_over_an_inventory_names_the_platform_no_host_lists(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    matrix, hosts = tmp_path / "snp.toml", tmp_path / "hosts.toml"
    matrix.write_text(SNP_MATRIX)
    hosts.write_text('[hosts.a]\naddress = "10.0.0.1"\nplatforms = ["tcg"]\n')
    assert main(["run", "matrix", str(matrix), "--dry-run", "--hosts", str(hosts)]) == 0
    out = capsys.readouterr().out
    assert f"(platform sev-snp not offered: no host in {hosts} lists it)" in out


def test_report_writes_beside_a_stored_run_unless_asked_to_rewrite_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    run = tmp_path / "run-small"
    shutil.copytree(Path(__file__).resolve().parents[1] / "data" / "run-small", run)
    before = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    monkeypatch.chdir(tmp_path)
    assert main(["report", str(run)]) == 0
    assert (tmp_path / "report-run-small" / "report.html").is_file()
    assert {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()} == before  # untouched
    assert main(["report", str(run), "--output", str(run)]) == 2
    assert "say --in-place to rewrite its report" in capsys.readouterr().err
    assert not (run / "report.html").exists()  # the stored sample run has none
    assert main(["report", str(run), "--in-place"]) == 0
    assert (run / "report.html").is_file() and (run / "figures").is_dir()
