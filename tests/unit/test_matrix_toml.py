"""A matrix file that is not TOML: the error names the line where the mistake is, not the line after it,
says what is wrong, and the command exits 2 having written nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab.cli import main

HEAD = '[matrix]\ndescription = "a [bracket] in a string, and # not a comment"\nkernels = ["static"]\n'
TAIL = '\n[workloads.heavy]\nrw = "randread"\nbs = "256k"\n'


@pytest.mark.parametrize(
    ("body", "line", "stopped"),
    [
        pytest.param('pools = ["8MiB", "16MiB"\nworkloads = ["heavy"]\n', 4, "line 5, column 1", id="no-bracket"),
        pytest.param('workloads = ["heavy"]\npools = ["8MiB", "16MiB"\n', 5, "line 7, column 1", id="before-table"),
        pytest.param('pools = ["8MiB" "16MiB"]\n', 4, "line 4, column 17", id="no-comma"),
        pytest.param('pools = [8MiB, "16MiB"]\n', 4, "line 4, column 11", id="unquoted"),
        pytest.param(
            'pools = [\n  "8MiB",  # the small one [sic\n  "16MiB"\n\nworkloads = ["heavy"]\n',
            4,
            "line 8, column 1",
            id="multi-line",
        ),
    ],
)
def test_an_array_left_open_is_reported_on_the_line_it_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], body: str, line: int, stopped: str
) -> None:
    matrix = tmp_path / "bad.toml"
    matrix.write_text(HEAD + body + TAIL)
    results = tmp_path / "results"
    assert main(["run", "matrix", str(matrix), "--dry-run", "--results", str(results)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        f"error: {matrix}:{line}: malformed TOML: the array of 'pools' that starts on line {line} is not closed "
        f"(the parser stopped at {stopped}): each value needs a ','"
    ), err
    assert not results.exists()


def test_an_array_open_at_the_end_of_the_file_names_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    matrix = tmp_path / "bad.toml"
    matrix.write_text(HEAD + 'pools = ["8MiB", "16MiB"\n')
    assert main(["run", "matrix", str(matrix), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert f"{matrix}:4: malformed TOML: the array of 'pools' that starts on line 4" in err
    assert "(the parser stopped at the end of the file)" in err


def test_other_toml_mistakes_keep_the_parsers_words_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    matrix = tmp_path / "bad.toml"
    matrix.write_text(HEAD + 'pools = ["8MiB",, "16MiB"]\n')
    assert main(["run", "matrix", str(matrix), "--dry-run"]) == 2
    assert f"error: {matrix}:4: malformed TOML: Invalid value (at line 4, column 17)" in capsys.readouterr().err
