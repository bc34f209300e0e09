"""Every TOML example in the README and in docs/ loads: a matrix loads and dry-runs, a host inventory validates;
and every dry-run they show prints what they show."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lab.cli import main

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
# The README and the pages it links in docs/ (the host inventory's example lives in docs/coco-hosts.md).
DOCUMENTS = [README, *sorted((REPO / "docs").glob("*.md"))]
TEXT = "\n".join(d.read_text() for d in DOCUMENTS)
EXAMPLES = re.findall(r"```toml\n(.*?)```", TEXT, re.S)


def test_the_readme_has_toml_examples() -> None:
    assert re.search(r"```toml\n\[matrix\]", README.read_text())


MATRICES = [e for e in EXAMPLES if "[hosts." not in e]
INVENTORIES = [e for e in EXAMPLES if "[hosts." in e]


def test_the_readme_shows_a_host_inventory_and_it_is_the_shipped_example() -> None:
    from lab import hosts

    shipped = (Path(hosts.__file__).parent / "hosts.example.toml").read_text()
    assert INVENTORIES and all(line in shipped for e in INVENTORIES for line in e.splitlines())


@pytest.mark.parametrize("example", INVENTORIES, ids=[f"hosts{i}" for i in range(len(INVENTORIES))])
def test_a_readme_host_inventory_validates(example: str, tmp_path: Path) -> None:
    from lab.hosts import load_hosts

    path = tmp_path / "hosts.toml"
    path.write_text(example)
    found = load_hosts(path)
    assert set(found) == {"snp1", "tdx1"} and found["snp1"].settings.firmware == {
        "sev-snp": "/usr/local/share/qemu/OVMF.amdsev.fd"
    }


@pytest.mark.parametrize("example", MATRICES, ids=[f"example{i}" for i in range(len(MATRICES))])
def test_a_readme_matrix_example_dry_runs(example: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "example.toml"
    path.write_text(example)
    assert main(["run", "matrix", str(path), "--dry-run"]) == 0, capsys.readouterr().err
    assert re.search(r"\d+ cells to run in \d+ boots", capsys.readouterr().out)


# A block in the README or docs/ that shows a dry-run command and what it prints: the lab must still print
# exactly that ("(...)" stands for the rest of a line).
DRY_RUNS = re.findall(r"```\n(python -m lab run matrix [^\n]*--dry-run[^\n]*)\n(.*?)```", TEXT, re.S)


def test_the_readme_shows_dry_runs() -> None:
    # the five-minute tour's dry run is in the README itself, not only in docs/
    assert re.search(r"```\npython -m lab run matrix [^\n]*--dry-run", README.read_text())


@pytest.mark.parametrize(("command", "shown"), DRY_RUNS, ids=[f"dry-run{i}" for i in range(len(DRY_RUNS))])
def test_a_readme_dry_run_prints_what_the_readme_shows(
    command: str, shown: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = command.split()[3:]  # after "python -m lab"
    assert main(args) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out.splitlines()
    for line in shown.strip().splitlines():
        prefix = line.removesuffix("(...)")
        assert any(p == line or (prefix != line and p.startswith(prefix)) for p in printed), (line, printed[-3:])
