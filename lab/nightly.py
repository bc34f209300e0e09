"""Nightly hardware-in-the-loop CI: run the nightly matrix, compare with the baseline, gate, publish.

One night: build the kernels of the revision under test, run the matrix into
the history, find the baseline (the newest earlier complete night of the same
matrix content with a usable result), compare within each host and platform,
and write what CI systems read: JUnit XML, the run's report, and the trend
page across nights.

Exit codes: 0 no regression (also the first night, and the first after the
matrix changed, which establish the baseline), 1 regression (a cell that
failed while running its workload counts), 3 no usable result (no host ran a
cell, or every cell failed to boot, was lost with its host or was skipped).
"""

from __future__ import annotations

import hashlib
import html
import math
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from lab.claims import judge_all, like_with_like, observed, scopes
from lab.history import (
    EXIT_NO_RESULT,
    EXIT_OK,
    EXIT_REGRESSION,
    History,
    failure_counts,
    no_usable_result,
)
from lab.report import COMPARED_METRICS
from lab.stats import Metric, compare_family, summarize
from lab.store import RunStore, load_cells
from lab.util import atomic_write_text

GROUP_KEYS = ("kernel", "pool_slabs_requested", "device", "workload")


@dataclass(frozen=True)
class Finding:
    """One testcase of the gate: a claim's verdict, or one metric of one group of cells."""

    scope: str  # "" or "host X, platform Y"
    name: str  # "C4" or "fio_iops static/1024/nvme/heavy"
    kind: str  # "claim" | "metric" | "cells" (cells of a group that failed)
    regressed: bool
    baseline: str
    measured: str
    change_pct: float = math.nan
    p_value: float = math.nan
    evidence: tuple[str, ...] = ()
    detail: str = ""

    @property
    def message(self) -> str:
        text = f"{self.name}: baseline {self.baseline}, measured {self.measured}"
        if not math.isnan(self.change_pct):
            text += f", change {self.change_pct:+.1f}%"
        if not math.isnan(self.p_value):
            text += f", p = {self.p_value:.3g} (Holm-adjusted within its family)"
        return text


@dataclass
class GateResult:
    findings: list[Finding] = field(default_factory=list)
    baseline: str | None = None

    @property
    def regressions(self) -> list[Finding]:
        return [f for f in self.findings if f.regressed]


def _key(row: pd.Series) -> str:
    return "/".join(str(row[k]) for k in GROUP_KEYS)


def gate(baseline_cells: pd.DataFrame, cells: pd.DataFrame) -> list[Finding]:
    """Compare a night with its baseline, within each host and platform present in both.

    A claim whose verdict changed is a regression; so is a metric of a group of cells (kernel, pool,
    device, workload) that regressed significantly, p-values Holm-adjusted across the group's metrics; and
    so is a group in which a larger share of cells failed than in the baseline (lost and skipped cells are
    neither failed nor measured).
    """
    findings: list[Finding] = []
    base_scopes = dict(scopes(baseline_cells))
    for scope, part in scopes(cells):
        base = base_scopes.get(scope)
        if base is None:
            continue  # a host or platform the baseline did not have: nothing to compare with
        before = {(v.claim): v for v in judge_all(base)}
        for verdict in judge_all(part):
            old = before.get(verdict.claim)
            if old is None:
                continue
            findings.append(
                Finding(
                    scope,
                    verdict.claim,
                    "claim",
                    old.verdict != verdict.verdict,
                    old.verdict,
                    verdict.verdict,
                    evidence=verdict.evidence,
                    detail=verdict.detail,
                )
            )
        findings.extend(failed_cells(scope, base, part))
        ok_new, ok_old = _ok(part), _ok(base)
        for key, group in ok_new.groupby(list(GROUP_KEYS)):
            old_group = ok_old[(ok_old[list(GROUP_KEYS)] == pd.Series(key, index=list(GROUP_KEYS))).all(axis=1)]
            if old_group.empty:
                continue
            b, c, _ = like_with_like(old_group, group)
            alike = _counted_alike(b, c)
            family = compare_family(
                [
                    Metric(m, b[m].tolist(), c[m].tolist(), higher)
                    for m, higher in COMPARED_METRICS
                    if m in b and m in c and (m != "map_failures" or alike)
                ]
            )
            name = "/".join(str(k) for k in key)
            for comparison in family:
                findings.append(
                    Finding(
                        scope,
                        f"{comparison.metric} {name}",
                        "metric",
                        comparison.conclusion == "regressed",
                        f"{comparison.baseline.median:.4g}",
                        f"{comparison.candidate.median:.4g}",
                        comparison.change_pct,
                        comparison.p_value,
                        tuple(c["cell_id"]),
                        f"{comparison.conclusion} ({len(b)} vs {len(c)} cells)",
                    )
                )
    return findings


def failed_cells(scope: str, base: pd.DataFrame, cells: pd.DataFrame) -> list[Finding]:
    """A testcase per group of cells with failed cells in either night: a regression when the share of the
    group's cells that failed grew (5 ok of 5, now 1 failed of 5).  Only ok and failed cells count: a lost
    or skipped cell measured nothing and failed nothing."""

    def measured(frame: pd.DataFrame) -> dict[tuple[object, ...], pd.DataFrame]:
        if frame.empty:
            return {}
        frame = frame[frame["status"].isin(["ok", "failed"])]
        return {tuple(key): group for key, group in frame.groupby(list(GROUP_KEYS))}

    def tally(group: pd.DataFrame) -> str:
        failed = group[group["status"] == "failed"]
        if failed.empty:
            return f"{len(group)} ok of {len(group)}"
        return f"{len(failed)} failed of {len(group)} ({failure_counts(failed)})"

    findings = []
    before = measured(base)
    for key, group in measured(cells).items():
        old = before.get(key)
        if old is None:
            continue
        failed, old_failed = (int((g["status"] == "failed").sum()) for g in (group, old))
        if not failed and not old_failed:
            continue
        name = "/".join(str(k) for k in key)
        grew = failed * len(old) > old_failed * len(group)  # failed / n now > failed / n then, without division
        evidence = tuple(group.loc[group["status"] == "failed", "cell_id"])
        detail = "failed cells: " + (" ".join(evidence) or "none")
        findings.append(
            Finding(
                scope, f"cells failed {name}", "cells", grew, tally(old), tally(group), evidence=evidence, detail=detail
            )
        )
    return findings


def _ok(cells: pd.DataFrame) -> pd.DataFrame:
    return cells[cells["status"] == "ok"] if not cells.empty else cells


def _counted_alike(base: pd.DataFrame, cand: pd.DataFrame) -> bool:
    """Whether two groups counted failed maps the same way: a night whose kernels count failed scatterlists
    too (the lab's counter) is not a regression against one that could not see them (rows from before the
    counter have no ``map_failures_counted_by``)."""

    def how(cells: pd.DataFrame) -> set[str]:
        return set(cells.get("map_failures_counted_by", pd.Series("", index=cells.index)).fillna("").astype(str))

    return how(base) == how(cand)


def matrix_hash(cell_ids: Iterable[str]) -> str:
    """The identity of a matrix's content: its cells' IDs are hashes of their content, so a hash of the
    sorted IDs changes with any edit that changes what runs (and with nothing else)."""
    return hashlib.sha256("\n".join(sorted(set(map(str, cell_ids)))).encode()).hexdigest()[:16]


def write_junit(
    path: Path, findings: list[Finding], run: Path, night: str, baseline: str | None, note: str = ""
) -> None:
    """JUnit XML: one testsuite per host/platform, one testcase per claim, per compared metric and per group
    with failed cells; a regression is a failure carrying baseline, measured value, change, p-value and the
    evidence cells."""
    suites = ET.Element("testsuites", name=f"swiotlb-lab nightly {night}")
    by_scope: dict[str, list[Finding]] = {}
    for finding in findings:
        by_scope.setdefault(finding.scope or "this host", []).append(finding)
    if not by_scope:  # the first night, or nothing comparable: say so as a passing testcase
        by_scope["this host"] = []
    for scope, items in by_scope.items():
        suite = _suite(
            suites, scope, night, baseline, tests=max(len(items), 1), failures=sum(f.regressed for f in items)
        )
        if not items:
            case = ET.SubElement(suite, "testcase", classname="nightly", name="baseline")
            ET.SubElement(case, "system-out").text = note or "no baseline yet: this night establishes it"
        for finding in items:
            case = ET.SubElement(suite, "testcase", classname=f"nightly.{finding.kind}", name=finding.name)
            links = " ".join(f"{run}/cells/{cid}/cell.json" for cid in finding.evidence[:12])
            if finding.regressed:
                failure = ET.SubElement(case, "failure", message=finding.message, type="regression")
                failure.text = f"{finding.message}\n{finding.detail}\nevidence: {links}"
            else:
                ET.SubElement(case, "system-out").text = f"{finding.message}; {finding.detail}"
    _write(path, suites)


def write_error_junit(path: Path, night: str, reason: str, kind: str = "infrastructure") -> None:
    """JUnit XML for a night without a usable result, so that CI's test view always has a file and shows it
    red: one testcase.  ``kind`` "infrastructure" (exit 3: no host, or every cell failed to boot, was lost or
    skipped) is an ``<error>``, nobody's regression; "build" (exit 1: the revision under test did not build)
    is a ``<failure>``, the revision's own."""
    suites = ET.Element("testsuites", name=f"swiotlb-lab nightly {night}")
    error = kind != "build"
    suite = _suite(suites, "this host", night, None, tests=1, failures=int(not error), errors=int(error))
    case = ET.SubElement(suite, "testcase", classname="nightly", name="usable result" if error else "build")
    element = ET.SubElement(case, "error" if error else "failure", message=f"{kind}: {reason}", type=kind)
    element.text = reason
    _write(path, suites)


def _suite(
    suites: ET.Element, scope: str, night: str, baseline: str | None, *, tests: int, failures: int, errors: int = 0
) -> ET.Element:
    suite = ET.SubElement(
        suites, "testsuite", name=scope, tests=str(tests), failures=str(failures), errors=str(errors), skipped="0"
    )
    ET.SubElement(suite, "properties").extend(
        [
            ET.Element("property", name="night", value=night),
            ET.Element("property", name="baseline", value=baseline or "none"),
        ]
    )
    return suite


def _write(path: Path, suites: ET.Element) -> None:
    ET.indent(suites)
    atomic_write_text(path, ET.tostring(suites, encoding="unicode", xml_declaration=True) + "\n")


def tree_revision(tree: Path | None) -> dict[str, str]:
    """`git describe` and the commit of the kernel tree under test (empty without one)."""
    if tree is None:
        return {}

    def git(*args: str) -> str:
        proc = subprocess.run(["git", "-C", str(tree), *args], capture_output=True, text=True, check=False)
        return proc.stdout.strip() if proc.returncode == 0 else ""

    return {
        "tree_describe": git("describe", "--always", "--dirty", "--tags"),
        "tree_commit": git("rev-parse", "HEAD"),
        "tree": str(tree),
    }


def judge_night(history: History, store: RunStore, tree: dict[str, str], junit: Path | None = None) -> tuple[int, str]:
    """Gate a finished night against its baseline; record the outcome in its manifest; write JUnit XML.
    Returns the exit code and a sentence saying what happened."""
    manifest = store.manifest()
    cells = load_cells(store.root)
    name = str(manifest.get("matrix_name", ""))
    digest = matrix_hash(manifest.get("cells") or (cells["cell_id"] if not cells.empty else ()))
    nothing = no_usable_result(cells)
    baseline = None if nothing else history.baseline(name, store.run_id, digest)
    findings: list[Finding] = []
    if nothing:
        code, summary = EXIT_NO_RESULT, f"no usable result: {nothing}"
    elif baseline is None:
        code = EXIT_OK
        other = history.baseline(name, store.run_id)  # the last usable night of this name, whatever it ran
        summary = (
            f"the matrix changed since the last night: this night is the new baseline ({other} ran other cells)"
            if other
            else "no earlier complete night of this matrix with a usable result: this night is the baseline"
        )
    else:
        findings = gate(load_cells(history.runs / baseline), cells)
        regressed = [f for f in findings if f.regressed]
        code = EXIT_REGRESSION if regressed else EXIT_OK
        summary = (
            f"{len(regressed)} regression(s) against {baseline}: " + "; ".join(f.message for f in regressed[:5])
            if regressed
            else f"no regression against {baseline} ({len(findings)} comparisons)"
        )
    store.update_manifest(
        nightly={
            **tree,
            "baseline": baseline or "",
            "exit_code": code,
            "summary": summary,
            "regressions": sum(f.regressed for f in findings),
            "matrix_hash": digest,
        }
    )
    for path in (store.root / "junit.xml", *([junit] if junit else [])):
        if nothing:
            write_error_junit(path, store.run_id, nothing)
        else:
            write_junit(path, findings, store.root, store.run_id, baseline, summary)
    atomic_write_text(
        store.root / MAIL_SUMMARY, mail_summary(manifest, store.run_id, tree, baseline, findings, summary)
    )
    return code, summary


MAIL_SUMMARY = "summary.txt"


def mail_summary(
    manifest: dict[str, Any],
    run_id: str,
    tree: dict[str, str],
    baseline: str | None,
    findings: list[Finding],
    summary: str,
) -> str:
    """The night in plain text for a mailing list: what regressed, by how much and with what confidence,
    what ran where, and the commands that reproduce it; wrapped at 72 columns, except the subject and the
    commands (whole, to be copied)."""
    import textwrap

    regressed = [f for f in findings if f.regressed]
    matrix = str(manifest.get("matrix_name", "nightly"))
    verdict = f"{len(regressed)} regression(s)" if regressed else ("no regression" if baseline else summary)
    lines = [f"Subject: [swiotlb-lab] {matrix} night {run_id}: {verdict}", ""]
    what = tree.get("tree_describe") or tree.get("tree_commit") or "Debian's pinned source"
    facts = [
        f"Revision under test: {what}" + (f" ({tree['tree_commit']})" if tree.get("tree_commit") else ""),
        f"Baseline night: {baseline or 'none (this night is the baseline)'}",
        f"Host: {manifest.get('host', '?')}, {manifest.get('host_cpus', '?')} CPUs, "
        f"accelerator {manifest.get('accel', '?')}, QEMU {manifest.get('qemu_version', '?')}",
        f"Lab revision: {manifest.get('lab_revision', '?')}",
    ]
    for fact in facts:
        lines += textwrap.wrap(fact, 72, subsequent_indent="  ")
    lines.append("")
    if regressed:
        lines.append("Regressions (Welch's t-test, Holm-adjusted within each family; not yet")
        lines.append("confirmed by a second run):")
        for f in regressed:
            lines += textwrap.wrap(f"- {f.message}", 72, subsequent_indent="  ")
    else:
        lines += textwrap.wrap(summary, 72)
    lines += ["", "To reproduce:"]
    rerun = f"python -m lab nightly --matrix {matrix}" + (f" --kernel-tree {tree['tree']}" if tree.get("tree") else "")
    lines.append(f"  {rerun}")
    if baseline:
        lines.append(f"  python -m lab compare runs/{baseline} runs/{run_id}")
    return "\n".join(lines) + "\n"


# --- the trend page ------------------------------------------------------------------------------

VERDICT_COLOURS = {
    "supported": "#e3f6e3",
    "contradicted": "#fbe3e3",
    "inconclusive": "#f6f3dc",
    "not tested": "#ececec",
}
TREND_METRICS = (
    ("fio_iops", "IOPS", 1.0),
    ("fio_clat_p99_us", "p99 completion latency (ms)", 1e-3),
    ("map_failures", "failed DMA maps per cell", 1.0),
    ("hiwater_frac", "hiwater / nslabs", 1.0),
)


TREND_NOTE = (
    "Each point is one night's median over the repetitions of a kernel and workload (line); the shade is the "
    "95% confidence interval of the mean (t distribution over the repetitions, as in the reports). A night's "
    "points use only its cells that ran without the in-guest sampler (observed = false) when it has any, since "
    "the sampler takes guest CPU from fio; a night with only observed cells is plotted from those."
)


def trend_points(cells: pd.DataFrame) -> pd.DataFrame:
    """The trend's metric points from the ok cells of the nights (a ``night`` column): per night, kernel and
    workload, each metric's median, n and the 95% confidence interval of its mean (``lab.stats.summarize``),
    over the night's unobserved cells if it has any, else over all of them."""
    cells = cells[cells["status"] == "ok"] if "status" in cells else cells
    seen = observed(cells)  # nights from before the `observed` column are null in the union: by their samples
    unobserved = ~seen
    keep = unobserved | ~unobserved.groupby(cells["night"]).transform("any").astype(bool)
    cells, seen = cells[keep].reset_index(drop=True), seen[keep].to_numpy()
    # positional arrays, not a frame per group: a year of nights is thousands of groups
    values = {m: cells[m].astype("float64").to_numpy() for m, _, _ in TREND_METRICS if m in cells}
    rows = []
    groups = cells.groupby(["night", "kernel", "workload"]).indices if not cells.empty else {}
    for (night, kernel, workload), index in sorted(groups.items()):
        row: dict[str, object] = {
            "night": night,
            "kernel": kernel,
            "workload": workload,
            "n": len(index),
            "observed": bool(seen[index].all()),
        }
        for metric, _, _ in TREND_METRICS:
            summary = summarize(values[metric][index].tolist() if metric in values else [])
            row.update(
                {
                    f"{metric}_median": summary.median,
                    f"{metric}_mean": summary.mean,
                    f"{metric}_low": summary.ci_low,
                    f"{metric}_high": summary.ci_high,
                }
            )
        rows.append(row)
    columns = ["night", "kernel", "workload", "n", "observed"] + [
        f"{m}_{what}" for m, _, _ in TREND_METRICS for what in ("median", "mean", "low", "high")
    ]
    return pd.DataFrame(rows, columns=columns)


def _view(con: Any, table: str, columns: Iterable[str] | None = None) -> pd.DataFrame:
    """A view of the history, or an empty frame when no night wrote the table (e.g. every night's report
    failed, so there is no claims.parquet); only ``columns`` that exist, when given."""
    views = set(con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchdf()["view_name"])
    if table not in views:
        return pd.DataFrame(columns=list(columns or []))
    present = list(con.execute(f"SELECT * FROM {table} LIMIT 0").fetchdf().columns)
    chosen = [c for c in (columns or present) if c in present]
    return con.execute(f"SELECT {', '.join(chosen)} FROM {table}").fetchdf()


def build_trend(history: History, matrix_name: str, out: Path | None = None) -> Path:
    """A self-contained HTML page: each claim's verdict per night, and key metrics per night (median, and a
    95% confidence band of the mean over the repetitions; unobserved cells where a night has them), each
    night annotated with the revision under test."""
    import base64
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lab.report import variant_colour

    nights = history.nights(matrix_name)
    nights = nights[nights["status"].isin(["complete", "partial"])]
    con = history.connect()
    ids = list(nights["run_id"])
    out = out or history.root / f"trend-{matrix_name}.html"
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>swiotlb-lab trend: {html.escape(matrix_name)}"
        "</title><style>body{font-family:system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:"
        "collapse;font-size:12px}td,th{border:1px solid #ccc;padding:2px 5px}img{max-width:100%}</style></head>"
        f"<body><h1>Nightly trend: {html.escape(matrix_name)}</h1><p>{len(ids)} nights.</p>"
    ]
    if ids:
        revision = {r["run_id"]: (r["tree_describe"] or str(r["lab_revision"])[:12]) for _, r in nights.iterrows()}
        claims = _view(con, "claims")  # runs before per-host scopes have no `scope`
        claims = claims[claims["night"].isin(ids)] if "night" in claims else claims.iloc[0:0]
        claims = claims.assign(scope=claims["scope"].fillna("") if "scope" in claims else "")
        table = (
            claims.pivot_table(index="night", columns=["scope", "claim"], values="verdict", aggfunc="first")
            if not claims.empty
            else pd.DataFrame()
        )
        head = "".join(f"<th>{html.escape(' '.join(str(x) for x in c if x))}</th>" for c in table.columns)
        rows = []
        for night in ids[::-1]:
            if night not in table.index:  # its report failed (report-error.txt in the run): say so, keep the row
                rows.append(
                    f"<tr><td>{html.escape(night)}</td><td>{html.escape(revision.get(night, ''))}</td>"
                    f"<td colspan='{max(len(table.columns), 1)}'>no claims recorded</td></tr>"
                )
                continue
            cells = "".join(
                f"<td style='background:{VERDICT_COLOURS.get(str(v), '#fff')}'>{html.escape(str(v))}</td>"
                for v in table.loc[night]
            )
            rows.append(f"<tr><td>{html.escape(night)}</td><td>{html.escape(revision.get(night, ''))}</td>{cells}</tr>")
        parts.append(
            "<h2>Claims per night (newest first)</h2><table><tr><th>night</th><th>revision</th>"
            f"{head or '<th>claims</th>'}</tr>{''.join(rows)}</table>"
        )
        wanted = ["night", "kernel", "workload", "status", "observed", "sampler_samples"]
        ok = _view(con, "cells", wanted + [m for m, _, _ in TREND_METRICS])
        metrics = trend_points(ok[ok["night"].isin(ids)] if "night" in ok else ok)
        order = {night: i for i, night in enumerate(ids)}
        metrics["x"] = metrics["night"].map(order)
        workloads = sorted(set(metrics["workload"]))
        fig, axes = plt.subplots(
            len(TREND_METRICS),
            max(len(workloads), 1),
            squeeze=False,
            figsize=(5 * max(len(workloads), 1), 2.4 * len(TREND_METRICS)),
        )
        for col, workload in enumerate(workloads):
            for row, (metric, label, scale) in enumerate(TREND_METRICS):
                ax = axes[row, col]
                for kernel, group in metrics[metrics["workload"] == workload].groupby("kernel"):
                    group = group.sort_values("x")
                    colour = variant_colour(kernel)
                    ax.plot(
                        group["x"],
                        group[f"{metric}_median"] * scale,
                        marker="." if len(group) < 60 else None,
                        lw=1,
                        color=colour,
                        label=str(kernel),
                    )
                    ax.fill_between(
                        group["x"],
                        group[f"{metric}_low"] * scale,
                        group[f"{metric}_high"] * scale,
                        color=colour,
                        alpha=0.15,
                    )
                ax.set_title(f"{workload}: {label}", fontsize=9, loc="left")
                ticks = list(range(0, len(ids), max(1, len(ids) // 8)))
                ax.set_xticks(ticks, [revision.get(ids[t], "")[:14] for t in ticks], rotation=30, fontsize=7)
        if workloads:
            axes[0, 0].legend(fontsize=7)
        fig.suptitle("Per night: median (line), 95% confidence interval of the mean (shade); x: revision under test")
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=90)
        plt.close(fig)
        only_observed = sorted(set(metrics.loc[metrics["observed"].astype(bool), "night"]))
        note = TREND_NOTE + (f" Plotted from observed cells: {', '.join(only_observed)}." if only_observed else "")
        parts.append(
            f"<h2>Key metrics per night</h2><p>{html.escape(note)}</p><img alt='metrics per night' "
            f"src='data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}'>"
        )
    parts.append("</body></html>")
    atomic_write_text(out, "\n".join(parts))
    return out


@dataclass
class Night:
    """What one night came to: its exit code, the lines the command prints, and a problem to show in red (why
    there is no usable result, or that the report could not be built)."""

    code: int
    lines: list[str] = field(default_factory=list)
    problem: str = ""


def run_night(
    request: Any,
    history: History,
    junit: Path | None,
    keep: int,
    run_cells: Callable[[Any, Any], None],
    busy: Callable[[str], Any],
) -> Night:
    """One night: build the revision under test (``request.kernel_tree``), run the nightly matrix into the
    history, gate against the baseline, write JUnit XML, the report (after the gate, so it shows it) and the
    trend page, and apply retention.  ``run_cells(session, plan)`` runs the cells with whatever progress the
    caller shows.  CI's JUnit step always finds a file: a night that never ran a cell says why, red."""
    import time

    from lab.errors import BuildError, HostError
    from lab.session import Session, write_report

    session = Session(request, busy=busy)
    night = f"nightly {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}"
    revision = tree_revision(request.kernel_tree)  # what is built and measured, read before the build
    try:
        session.prepare()
    except BuildError as exc:  # the revision under test does not build: its own failure (exit 1)
        if junit:
            write_error_junit(junit, night, str(exc), kind="build")
        raise
    except HostError as exc:  # this host lacks what the lab needs: infrastructure (exit 3)
        if junit:
            write_error_junit(junit, night, str(exc))
        return Night(EXIT_NO_RESULT, problem=f"no usable result: {exc}")
    try:
        run_cells(session, session.plan())
    except HostError as exc:  # no host could be reached or started: infrastructure, not a regression
        outcome = session.finish("failed", report=False)
        for path in (outcome.store.root / "junit.xml", junit):
            if path is not None:
                write_error_junit(path, outcome.store.run_id, str(exc))
        return Night(EXIT_NO_RESULT, problem=f"no usable result: {exc}")
    except BaseException as exc:
        session.finish("interrupted" if isinstance(exc, KeyboardInterrupt) else "failed", report=False)
        raise
    outcome = session.finish("complete", report=False)
    code, summary = judge_night(history, outcome.store, revision, junit)
    if not outcome.cells.empty:
        write_report(outcome)
    trend = build_trend(history, session.matrix.name)
    removed = history.retain(keep, session.matrix.name)
    result = Night(code, [f"night {outcome.store.run_id}: {summary}"])
    if outcome.report_error is not None:
        result.problem = (
            f"the report could not be built (traceback in {outcome.report_error}); the gate and JUnit used the "
            f"stored cells; rebuild with: python -m lab report --in-place {outcome.store.root}"
        )
    else:
        result.lines.append(f"report: {outcome.report}")
    result.lines += [
        f"junit: {outcome.store.root / 'junit.xml'}",
        f"mail: {outcome.store.root / MAIL_SUMMARY}",
        f"trend: {trend}",
    ]
    if removed:
        result.lines.append(f"retention (keep {keep}): removed {', '.join(removed)}")
    return result
