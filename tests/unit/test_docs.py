"""The README a newcomer reads: short, its links resolve, and what it says about the program (commands,
options, matrix keys, matrix sizes, claims) is what the program says."""

from __future__ import annotations

import argparse
import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import claims
from lab.cli import build_parser, main
from lab.matrix import MATRIX_KEYS, WORKLOAD_KEYS

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
MAX_README_LINES = 400  # issue 22: a README read in ten minutes; the rest lives in docs/


def test_the_readme_fits_in_400_lines() -> None:
    lines = README.read_text().count("\n")
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines; move detail into docs/"


def test_the_readme_links_every_page_in_docs() -> None:
    assert DOCS, "docs/ has no pages"
    readme = README.read_text()
    unlinked = [d.name for d in DOCS if f"(docs/{d.name}" not in readme]
    assert not unlinked, f"README.md does not link {unlinked}"


# --- links -------------------------------------------------------------------------------------------------

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"```.*?```", re.S)


def slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text())
    return {slug(m) for m in re.findall(r"^#{1,6} (.+)$", text, re.M)}


def relative_links(page: Path) -> list[str]:
    text = FENCE.sub("", page.read_text())
    return [t for t in LINK.findall(text) if not re.match(r"[a-z][a-z0-9+.-]*:", t)]


def test_the_slug_is_githubs() -> None:
    assert slug("A five-minute tour (nothing boots)") == "a-five-minute-tour-nothing-boots"
    assert slug("The `thread` suite") == "the-thread-suite"


@pytest.mark.parametrize("page", [README, *DOCS], ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_points_to_an_existing_file_and_heading(page: Path) -> None:
    links = relative_links(page)
    assert page != README or links, "README.md links nothing"
    broken = []
    for link in links:
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        if not target.exists():
            broken.append(f"{link}: no such file {target.relative_to(REPO) if REPO in target.parents else target}")
        elif anchor and target.suffix == ".md" and anchor not in anchors(target):
            broken.append(f"{link}: no heading #{anchor} in {target.relative_to(REPO)}")
    assert not broken, f"{page.relative_to(REPO)}: " + "; ".join(broken)


def test_a_broken_link_is_found(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# Top\n\n[ok](#top) [gone](missing.md) [web](https://example.org) `[no](code.md)`\n")
    assert relative_links(page) == ["#top", "missing.md", "code.md"]
    assert anchors(page) == {"top"}


# --- commands ----------------------------------------------------------------------------------------------


def leaf_commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = (), text: str = ""
) -> Iterator[tuple[str, str, argparse.ArgumentParser]]:
    """Every runnable command of the parser: (its words, its help text, its parser)."""
    subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subparsers:
        yield " ".join(path), text, parser
    for action in subparsers:
        helps = {c.dest: c.help or "" for c in action._choices_actions}
        for name, child in action.choices.items():
            yield from leaf_commands(child, (*path, name), helps[name])


COMMANDS = list(leaf_commands(build_parser()))


def command_rows() -> dict[str, str]:
    """The README's command table (in its Commands section): the command's words -> its row."""
    section = README.read_text().split("\n## Commands\n", 1)[-1].split("\n## ", 1)[0]
    return dict(re.findall(r"^\| `([a-z][a-z ]*)` \|(.*)$", section, re.M))


def test_the_parser_has_the_commands_the_issue_names() -> None:
    names = {name for name, _, _ in COMMANDS}
    assert {"doctor", "run matrix", "report", "compare", "bench doorbells", "bench kernel", "bench matrix"} <= names


def test_the_command_table_lists_exactly_the_programs_commands() -> None:
    rows = command_rows()
    assert set(rows) == {name for name, _, _ in COMMANDS}


@pytest.mark.parametrize(("name", "text", "parser"), COMMANDS, ids=[name for name, _, _ in COMMANDS])
def test_a_commands_row_says_its_help_and_names_every_option(
    name: str, text: str, parser: argparse.ArgumentParser
) -> None:
    row = command_rows()[name]
    assert text and text in row, f"row of `{name}` does not say its --help text {text!r}"
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        for option in action.option_strings:
            if option.startswith("--"):
                assert f"`{option}" in row, f"row of `{name}` does not name {option}"
        if not action.option_strings and action.choices:
            assert all(f"`{c}`" in row for c in action.choices), f"row of `{name}` lacks {list(action.choices)}"


@pytest.mark.parametrize(("name", "text", "parser"), COMMANDS, ids=[name for name, _, _ in COMMANDS])
def test_every_option_has_a_help_text(name: str, text: str, parser: argparse.ArgumentParser) -> None:
    bare = [a.option_strings or [a.dest] for a in parser._actions if not a.help]
    assert not bare, f"`python -m lab {name}`: no help text for {bare}"


def test_the_global_options_are_in_the_readme() -> None:
    readme = README.read_text()
    globals_ = [o for a in build_parser()._actions for o in a.option_strings if o.startswith("--") and o != "--help"]
    assert globals_ and all(f"`{o}" in readme or f"{o}`" in readme for o in globals_ if o != "--verbose")
    assert "-vv" in readme


# --- commands shown in the pages ---------------------------------------------------------------------------


def code_blocks(text: str) -> list[tuple[str, str]]:
    """The fenced blocks of a Markdown text: (info string, body)."""
    blocks: list[tuple[str, str]] = []
    body: list[str] = []
    info, inside = "", False
    for line in text.splitlines():
        if line.startswith("```"):
            if inside:
                blocks.append((info, "\n".join(body)))
            inside, info, body = not inside, line[3:].strip(), []
        elif inside:
            body.append(line)
    return blocks


def shown_commands(page: Path) -> list[str]:
    """Every `python -m lab ...` a page shows, in a shell or plain block (comments cut) or inline."""
    text = page.read_text()
    found = [
        line.split("  #")[0].strip()
        for info, body in code_blocks(text)
        if info in ("", "sh")
        for line in body.splitlines()
        if line.startswith("python -m lab ")
    ]
    return found + [" ".join(c.split()) for c in re.findall(r"`(python -m lab [^`]+)`", FENCE.sub("", text))]


SYNOPSIS = re.compile(r"[\[|]|\.\.\.")  # "[--cold]", "nights|claims": a synopsis, not a command line
SHOWN = [(page, c) for page in (README, *DOCS) for c in shown_commands(page) if not SYNOPSIS.search(c)]


def test_the_pages_show_commands() -> None:
    assert any(page == README and "report tests/data/run-small" in c for page, c in SHOWN)
    assert any(page.name == "coco-hosts.md" and "--hosts hosts.toml" in c for page, c in SHOWN)


@pytest.mark.parametrize(("page", "command"), SHOWN, ids=[f"{p.name}:{c[14:]}" for p, c in SHOWN])
def test_a_command_the_pages_show_is_one_the_program_accepts(page: Path, command: str) -> None:
    try:
        build_parser().parse_args(shlex.split(command)[3:])  # after "python -m lab"
    except SystemExit as exc:
        pytest.fail(f"{page.name}: `{command}` is refused by the parser (exit {exc.code})")


# --- matrix keys -------------------------------------------------------------------------------------------


def annotated_example() -> str:
    """The README's annotated matrix example (the first TOML block with a [matrix] table)."""
    found = re.search(r"```toml\n(\[matrix\].*?)```", README.read_text(), re.S)
    assert found, "README.md has no annotated matrix example"
    return found.group(1)


@pytest.mark.parametrize("key", sorted(MATRIX_KEYS), ids=str)
def test_the_readme_example_shows_every_matrix_key(key: str) -> None:
    matrix_table = annotated_example().split("[workloads.", 1)[0]
    assert re.search(rf"^{key} = ", matrix_table, re.M), f"[matrix] key {key!r} missing from README's example"


@pytest.mark.parametrize("key", sorted(WORKLOAD_KEYS), ids=str)
def test_the_readme_example_shows_every_workload_key(key: str) -> None:
    workloads = "[workloads." + annotated_example().split("[workloads.", 1)[1]
    assert re.search(rf"^(# )?{key} = ", workloads, re.M), f"workload key {key!r} missing from README's example"


# --- numbers from the program ------------------------------------------------------------------------------

# "`lab/matrices/NAME.toml` (N cells in M boots, estimated T min": the size and time a page quotes for a
# shipped matrix, which its dry run must print.
QUOTED_SIZE = re.compile(r"`lab/matrices/([\w-]+)\.toml` \((\d+) cells in (\d+)\s+boots,\s+estimated ([\d.]+) min")
QUOTES = [(page, *m) for page in (README, *DOCS) for m in QUOTED_SIZE.findall(page.read_text())]


def test_the_readme_quotes_the_default_and_stock_matrices_sizes() -> None:
    quoted = {name for page, name, *_ in QUOTES if page == README}
    assert {"default", "stock"} <= quoted


def test_docs_matrices_lists_every_shipped_matrix_with_its_description() -> None:
    from lab.matrix import load_matrix

    page = REPO / "docs" / "matrices.md"
    rows = dict(re.findall(r"^\| `lab/matrices/([\w-]+)\.toml` \([^)]*\) \| (.*) \|$", page.read_text(), re.M))
    quoted = {name for where, name, *_ in QUOTES if where == page}
    shipped = {p.stem for p in (REPO / "lab" / "matrices").glob("*.toml")}
    assert shipped == quoted == set(rows), (shipped ^ quoted) | (shipped ^ set(rows))
    for name, description in rows.items():
        assert description == load_matrix(name).description, name


def test_make_matrix_runs_the_default_matrix() -> None:
    # the README's "make matrix runs lab/matrices/default.toml" holds only while the Makefile passes no matrix
    # and the command's default is "default"
    recipe = re.search(r"^matrix:.*\n\t(.*)$", (REPO / "Makefile").read_text(), re.M)
    assert recipe and recipe.group(1).rstrip().endswith("-m lab run matrix"), recipe
    args = build_parser().parse_args(["run", "matrix"])
    assert args.matrix == "default"
    assert "`make matrix` runs `lab/matrices/default.toml`" in README.read_text()


@pytest.mark.parametrize(
    ("page", "name", "cells", "boots", "minutes"), QUOTES, ids=[f"{p.name}:{q[0]}" for p, *q in QUOTES]
)
def test_a_quoted_matrix_size_is_what_its_dry_run_prints(
    page: Path, name: str, cells: str, boots: str, minutes: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", "matrix", name, "--dry-run"]) == 0, capsys.readouterr().err
    last = capsys.readouterr().out.splitlines()[-1]
    assert last == f"{cells} cells to run in {boots} boots, estimated {minutes} min", (page.name, last)


# --- claims ------------------------------------------------------------------------------------------------

CLAIM_ROW = re.compile(r"^\| (C\d+) \| (.+?) \| (.+?) \| (.+?) \|$", re.M)


def claim_rows() -> dict[str, tuple[str, str, str]]:
    return {cid: (question, rule, verdict) for cid, question, rule, verdict in CLAIM_ROW.findall(README.read_text())}


def test_the_claims_table_has_c1_to_c14_in_order() -> None:
    assert list(claim_rows()) == [f"C{n}" for n in range(1, 15)]


@pytest.mark.parametrize("number", range(1, 15), ids=lambda n: f"C{n}")
def test_a_claim_is_judged_unless_the_readme_says_it_is_not_yet(number: int) -> None:
    _, rule, verdict = claim_rows()[f"C{number}"]
    judged = any(claim.id == f"C{number}" for claim in claims.CLAIMS)
    assert judged != ("not judged yet" in rule and verdict == "not judged yet"), (
        f"C{number}: lab/claims.py's CLAIMS {'has' if judged else 'has no'} it, README says {rule!r}"
    )


def test_the_claims_tables_verdicts_are_the_published_findings() -> None:
    findings = (REPO / "docs" / "findings.md").read_text()
    for cid, (_, _, cell) in claim_rows().items():
        if cell == "not judged yet":
            continue
        first = re.match(r"supported|contradicted|inconclusive|not tested", cell)
        assert first, f"{cid}: {cell!r} does not start with a verdict"
        verdict = first.group(0)
        # "C1 **supported**", or "C8 (100 ms vs none) is **inconclusive**" where findings.md says what was compared
        published = re.search(rf"\b{cid}\b[^*]{{0,40}}\*\*{verdict}\b", findings)
        assert published, f"README says {cid} is {verdict}; docs/findings.md does not"
