"""One report model rendered twice: report.md and report.html of the stored run-small show the same sections
and the same numbers, in human units; figures say what they draw; "not tested" vs "inconclusive"."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

from lab.claims import judge_c1, judge_c4, judge_c5
from lab.figures import draw
from lab.report import build_report, inline_html, report_model
from lab.store import load_cells, load_samples

RUN = Path(__file__).resolve().parent.parent / "data" / "run-small"

# The sections a reader of run-small's report finds, in order (written here, not read from the code).
SECTIONS = [
    "Hosts",
    "Claims",
    "Overshoot past the throttle threshold, by series version",
    "Statistics",
    "Failed cells",
    "Figures",
    "Cells",
]
NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, Path]:
    """run-small's report, written beside a copy of the run (never into tests/data)."""
    root = tmp_path_factory.mktemp("report")
    run = root / RUN.name
    shutil.copytree(RUN, run)
    written = build_report(run, root / "out")
    return written["md"].read_text(), written["html"].read_text(), root / "out"


class _Visible(HTMLParser):
    """The page as a reader sees it: the h1/h2 headings, and the text outside <style> and <script>."""

    def __init__(self) -> None:
        super().__init__()
        self.headings: list[tuple[str, str]] = []
        self.text: list[str] = []
        self._heading: str | None = None
        self._skip = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("h1", "h2"):
            self._heading = tag
            self.headings.append((tag, ""))
        self._skip = tag in ("style", "script", "title")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("h1", "h2"):
            self._heading = None
        self._skip = False
        if tag in ("td", "th", "p", "li", "figcaption", "h1", "h2"):
            self.text.append("\n")

    def handle_data(self, data: str) -> None:
        if self._skip:
            return
        if self._heading:
            tag, text = self.headings[-1]
            self.headings[-1] = (tag, text + data)
        self.text.append(data)


def _markdown_visible(markdown: str) -> str:
    """The Markdown as rendered text: images and link targets out, link labels and cell text in."""
    lines = [line for line in markdown.splitlines() if not line.startswith("![")]
    text = "\n".join(lines)
    text = re.sub(r"\[([^\]]+)\]\([^)\s]+\)", r"\1", text)  # [label](target) -> label
    text = re.sub(r"^\|?(-{3}\|)+$", "", text, flags=re.MULTILINE)  # table rules
    return text


def test_markdown_and_html_show_the_same_sections_and_numbers(report: tuple[str, str, Path]) -> None:
    markdown, page, _ = report
    parsed = _Visible()
    parsed.feed(page)
    md_h2 = [line[3:] for line in markdown.splitlines() if line.startswith("## ")]
    html_h2 = [text for tag, text in parsed.headings if tag == "h2"]
    assert md_h2 == html_h2 == SECTIONS
    md_title = next(line[2:] for line in markdown.splitlines() if line.startswith("# "))
    assert [text for tag, text in parsed.headings if tag == "h1"] == [md_title]
    md_numbers = Counter(NUMBER.findall(_markdown_visible(markdown)))
    html_numbers = Counter(NUMBER.findall("".join(parsed.text)))
    assert md_numbers == html_numbers, (md_numbers - html_numbers, html_numbers - md_numbers)
    assert sum(md_numbers.values()) > 900  # the comparison saw the tables, not only the headings


def test_both_formats_say_the_same_things_in_human_units(report: tuple[str, str, Path]) -> None:
    markdown, page, _ = report
    parsed = _Visible()
    parsed.feed(page)
    visible = "".join(parsed.text)
    for text in (_markdown_visible(markdown), visible):
        assert "18 cells, 2 failed." in text
        assert "1,024 → 8,192" in text  # dynamic's pool: asked for 1,024 slabs, grew to 8,192
        assert "6,391 / 8,192 (78%)" in text
        assert "1,061.2 ms" in text  # dynamic heavy r0's p99: 1,061,158.912 µs
        assert not re.search(r"\d\.\d+e[+-]\d", text), "a number in exponent notation"
        assert "no cell ran" not in text  # run-small's rows predate host_id: the host is named by its column
        assert "4,883" in text  # static's failed maps, with a thousands separator
    # Markdown emphasis and code are rendered in the HTML, not shown
    assert "*too noisy*" in markdown and "<em>too noisy</em>" in page and "*too noisy*" not in visible
    assert "`" not in visible and "**" not in visible
    assert "<code>throttle-v2</code>" in page
    # run-small has no cells of C8-C14's kinds: not tested, shaded as such, and said the same way in both
    assert page.count("<tr class='not-tested'>") == 8
    assert markdown.count("| **not tested** |") == 8


def test_the_hosts_section_names_the_host_of_a_run_from_before_host_ids(report: tuple[str, str, Path]) -> None:
    markdown, _, _ = report
    section = markdown.split("## Hosts", 1)[1].split("## ", 1)[0]
    assert "| vm | tcg |" in section and "| 16 | 2 |" in section  # 16 cells ok, 2 failed


def test_inline_markup_becomes_html_and_text_stays_escaped() -> None:
    assert inline_html("*too noisy* and `static` <b>") == "<em>too noisy</em> and <code>static</code> &lt;b&gt;"
    assert inline_html("**C1** [a-1](cells/a-1/cell.json)") == (
        "<strong>C1</strong> <a href='cells/a-1/cell.json'>a-1</a>"
    )
    assert inline_html("[performance.png](figures/performance.png)") == (
        "<a href='#fig-performance.png'>performance.png</a>"
    )
    assert inline_html("fio_clat_p99_us and hiwater_frac") == "fio_clat_p99_us and hiwater_frac"
    assert inline_html("`a*b*c`") == "<code>a*b*c</code>"


def test_figure_captions_say_what_is_plotted_and_left_out_not_file_names(report: tuple[str, str, Path]) -> None:
    _, page, _ = report
    captions = re.findall(r"<figure id='fig-([^']+)'>.*?<figcaption>(.*?)</figcaption>", page, flags=re.DOTALL)
    assert [name for name, _ in captions] == [
        "usage_over_time.png",
        "hiwater_by_pool.png",
        "performance.png",
        "failures_and_throttle.png",
    ]
    for name, caption in captions:
        assert name not in caption and len(caption) > 150, name
        assert "Left out:" in caption, name
    by_name = dict(captions)
    # run-small has 2 repetitions per group: no interval is drawn, so none is promised
    assert "95%" not in by_name["performance.png"] and "without an interval" in by_name["performance.png"]
    # C5's evidence is the two hung throttle cells: the figure marks them
    assert "X marks 2 failed cells" in by_name["performance.png"]
    assert "symmetric-logarithmic" in by_name["failures_and_throttle.png"]
    assert "against the pool it asked for" in by_name["hiwater_by_pool.png"]


def test_the_performance_figure_promises_an_interval_only_where_it_draws_one() -> None:
    cells = load_cells(RUN)
    ok = cells[cells["status"] == "ok"]
    # a third and fourth repetition of every ok cell: every group has 4 values, so every group has an interval
    more = pd.concat(
        [cells, *(ok.assign(cell_id=ok["cell_id"] + f"-x{i}", repetition=ok["repetition"] + 10 * i) for i in (1, 2))]
    )
    captions = {f.name: f.caption for f in draw(more, load_samples(RUN))}
    assert "with its 95% bootstrap interval, and each repetition" in captions["performance.png"]
    # one group of 4 next to groups of 2
    one = ok[(ok["kernel"] == "static") & (ok["workload"] == "heavy")]
    mixed = pd.concat([cells, *(one.assign(cell_id=one["cell_id"] + f"-y{i}") for i in (1, 2))])
    caption = {f.name: f.caption for f in draw(mixed, pd.DataFrame())}["performance.png"]
    assert "where a group has 3 or more repetitions (1 of 8)" in caption


# --- "not tested" vs "inconclusive", on hand-built cells ------------------------------------------------


def _cells(*rows: tuple[str, str, str]) -> pd.DataFrame:
    """(kernel, workload kind, status) per cell, with the columns the judges read; failed cells have no
    measurements, as a hung cell has none."""
    kinds = {"heavy": (4, 32, False), "single-queue": (1, 64, False), "polled": (1, 32, True)}
    records = []
    for i, (kernel, kind, status) in enumerate([*rows, ("static", "heavy", "ok")]):  # the last: for its columns
        numjobs, iodepth, hipri = kinds[kind]
        ok = status == "ok"
        records.append(
            {
                "cell_id": f"{kernel}-{kind}-{i}",
                "kernel": kernel,
                "status": status,
                "failure_reason": "" if ok else "timeout",
                "workload": kind,
                "device": "nvme",
                "pool_slabs_requested": 1024,
                "numjobs": numjobs,
                "iodepth": iodepth,
                "hipri": hipri,
                "nslabs": 1024.0 if ok else None,
                "hiwater": 1022.0 if ok else None,
                "map_failures": 100.0 + i if ok else None,
                "fio_errors": 0.0 if ok else None,
                "high_throttle": None,
                "high_throttle_count": None,
                "fio_iops": 1000.0 + i if ok else None,
                "fio_clat_p50_us": 100.0 + i if ok else None,
                "fio_clat_p99_us": 900.0 + i if ok else None,
                "fio_clat_p999_us": 1900.0 + i if ok else None,
            }
        )
    return pd.DataFrame(records).iloc[:-1]


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        pytest.param([], "not tested", id="no-cells-at-all"),
        pytest.param([("throttle", "heavy", "ok")], "not tested", id="heavy-cells-of-another-kernel-only"),
        pytest.param([("static", "polled", "ok")], "not tested", id="static-cells-of-another-workload-only"),
        pytest.param([("static", "heavy", "failed")], "inconclusive", id="static-heavy-cells-all-failed"),
        pytest.param([("static", "heavy", "lost")], "inconclusive", id="static-heavy-cells-all-lost"),
        pytest.param([("static", "heavy", "skipped")], "not tested", id="static-heavy-cells-all-skipped"),
        pytest.param([("static", "heavy", "ok")] * 2, "supported", id="static-heavy-cells-that-ran"),
    ],
)
def test_c1_is_not_tested_without_static_heavy_cells_and_inconclusive_when_they_failed(
    rows: list[tuple[str, str, str]], expected: str
) -> None:
    verdict = judge_c1(_cells(*rows))
    assert verdict.verdict == expected
    if expected == "not tested":
        assert verdict.detail == "not tested by this matrix: it has no `static` cells with a heavy workload"
    if expected == "inconclusive":
        assert verdict.detail.startswith("no usable cells: the matrix has `static` cells with a heavy workload")


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        pytest.param([("static", "single-queue", "ok")] * 2, "not tested", id="static-only"),
        pytest.param([("throttle", "single-queue", "ok")] * 2, "not tested", id="throttle-only"),
        pytest.param(
            [("static", "single-queue", "ok")] * 2 + [("throttle", "single-queue", "failed")] * 2,
            "inconclusive",
            id="both-ran-throttle-failed",
        ),
    ],
)
def test_c4_needs_both_kernels_in_the_matrix_to_be_tested(rows: list[tuple[str, str, str]], expected: str) -> None:
    assert judge_c4(_cells(*rows)).verdict == expected


def test_c5_hung_throttle_cells_are_tested_and_decide_it() -> None:
    # static's polled cells ran; throttle's hung: the claim was tested, and the hang is its evidence
    cells = _cells(*[("static", "polled", "ok")] * 2, *[("throttle", "polled", "failed")] * 2)
    assert judge_c5(cells).verdict == "supported"
    assert judge_c5(cells[cells["kernel"] == "static"]).verdict == "not tested"


# --- the page at 1400 pixels --------------------------------------------------------------------------

MEASURE = """<script>
const view = document.documentElement.clientWidth;
const tables = [...document.querySelectorAll('table')].map(t => ({
  id: t.id, right: Math.ceil(t.getBoundingClientRect().right), width: t.scrollWidth,
  box: t.parentElement.clientWidth, boxScroll: t.parentElement.scrollWidth}));
const out = document.createElement('pre');
out.id = 'measured';
out.textContent = JSON.stringify({view, page: document.documentElement.scrollWidth, tables});
document.body.appendChild(out);
</script></body>"""


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium (make setup installs it)")
def test_every_table_fits_a_1400_pixel_page(report: tuple[str, str, Path], tmp_path: Path) -> None:
    _, page, out = report
    measured_page = tmp_path / "measured.html"
    measured_page.write_text(page.replace("</body>", MEASURE))
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1400,3000",
    ]
    dom = subprocess.run(
        ["chromium", *flags, "--dump-dom", measured_page.as_uri()], capture_output=True, text=True, timeout=120
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    found = re.search(r"<pre id=\"measured\">(.*?)</pre>", dom.stdout, flags=re.DOTALL)
    assert found, dom.stdout[-2000:]
    measured = json.loads(found.group(1).replace("&quot;", '"'))
    assert measured["view"] == 1400
    assert {t["id"] for t in measured["tables"]} >= {"hosts", "claims", "statistics", "cells"}
    for table in measured["tables"]:
        assert table["right"] <= measured["view"], table
        assert table["boxScroll"] <= table["box"], table  # nothing hidden behind a scroll bar either
    assert measured["page"] <= measured["view"]
    shot = tmp_path / "report.png"
    subprocess.run(
        ["chromium", *flags, f"--screenshot={shot}", (out / "report.html").as_uri()],
        capture_output=True,
        timeout=120,
        check=True,
    )
    assert shot.stat().st_size > 50_000  # a page with tables and figures, not a blank one


def test_a_run_with_more_guests_than_cores_says_so_at_the_top() -> None:
    """`--jobs 2` of 2-vCPU guests on 2 cores: the rows record it (lab.runner) and the report warns."""
    cells = load_cells(RUN)
    manifest = json.loads((RUN / "manifest.json").read_text())
    quiet = report_model(manifest, cells, [], [], [])
    assert not any("more guests at once" in str(block) for block in quiet.intro)
    crowded = cells.assign(host_oversubscribed=[True, *[False] * (len(cells) - 1)])
    model = report_model(
        {**manifest, "contention": "2 guests at once x (2 vCPUs + 1) = 6 > 2 host CPUs"}, crowded, [], [], []
    )
    [warning] = [block for block in model.intro if "more guests at once" in str(block)]
    assert f"1 of {len(cells)} cells" in warning and "6 > 2 host CPUs" in warning


def test_a_nights_report_opens_with_its_gate() -> None:
    """`lab nightly` writes the report after the gate; the gate's verdict is then the report's first section."""
    cells = load_cells(RUN)
    manifest = json.loads((RUN / "manifest.json").read_text())
    assert not any(s.title == "Nightly gate" for s in report_model(manifest, cells, [], [], []).sections)
    gate = {
        "baseline": "20261101T010000-aaaa",
        "exit_code": 1,
        "summary": "1 regression(s) against it",
        "regressions": 1,
    }
    model = report_model({**manifest, "nightly": gate}, cells, [], [], [])
    first = model.sections[0]
    assert first.title == "Nightly gate" and "**REGRESSION** (exit 1): 1 regression(s)" in str(first.blocks[0])
    assert "`20261101T010000-aaaa`" in str(first.blocks[1])


def test_a_run_that_mixes_batches_says_so_at_the_top() -> None:
    cells = load_cells(RUN)
    manifest = json.loads((RUN / "manifest.json").read_text())
    mixed = {
        **manifest,
        "mixed_batches": "it was started at lab revision aaaa, this checkout is bbbb",
        "resumed_lab_revision": "bbbb",
    }
    [warning] = [b for b in report_model(mixed, cells, [], [], []).intro if "mixes batches" in str(b)]
    assert "started at lab revision aaaa" in warning and "`bbbb`" in warning
    assert not any("mixes batches" in str(b) for b in report_model(manifest, cells, [], [], []).intro)
