"""Every TOML example in the README is a matrix that loads and dry-runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lab.cli import main

README = Path(__file__).resolve().parents[2] / "README.md"
EXAMPLES = re.findall(r"```toml\n(.*?)```", README.read_text(), re.S)


def test_the_readme_has_toml_examples() -> None:
    assert EXAMPLES


@pytest.mark.parametrize("example", EXAMPLES, ids=[f"example{i}" for i in range(len(EXAMPLES))])
def test_a_readme_matrix_example_dry_runs(example: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "example.toml"
    path.write_text(example)
    assert main(["run", "matrix", str(path), "--dry-run"]) == 0, capsys.readouterr().err
    assert re.search(r"\d+ cells to run in \d+ boots", capsys.readouterr().out)
