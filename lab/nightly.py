"""Nightly hardware-in-the-loop CI: run the nightly matrix, compare with the baseline, gate, publish.

One night: build the kernels of the revision under test, run the matrix into
the history, find the baseline (the newest earlier complete night of the same
matrix), compare within each host and platform, and write what CI systems
read: JUnit XML, the run's report, and the trend page across nights.

Exit codes: 0 no regression (also the first night, which establishes the
baseline), 1 regression, 3 no usable result (no host ran a cell, or every
cell failed to boot).
"""

from __future__ import annotations

import html
import math
import subprocess
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from lab.claims import judge_all, like_with_like, scopes
from lab.history import History
from lab.report import COMPARED_METRICS
from lab.stats import Metric, compare_family
from lab.store import RunStore, load_cells
from lab.util import atomic_write_text

EXIT_OK, EXIT_REGRESSION, EXIT_NO_RESULT = 0, 1, 3
GROUP_KEYS = ("kernel", "pool_slabs_requested", "device", "workload")
BOOT_FAILURES = frozenset({"timeout", "boot failed", "kernel panic", "qemu exited", "vcpu mismatch",
                           "no memory encryption", "infrastructure"})  # fmt: skip


@dataclass(frozen=True)
class Finding:
    """One testcase of the gate: a claim's verdict, or one metric of one group of cells."""

    scope: str  # "" or "host X, platform Y"
    name: str  # "C4" or "fio_iops static/1024/nvme/heavy"
    kind: str  # "claim" | "metric"
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
    device, workload) that regressed significantly, p-values Holm-adjusted across the group's metrics.
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
            findings.append(Finding(scope, verdict.claim, "claim", old.verdict != verdict.verdict, old.verdict,
                                    verdict.verdict, evidence=verdict.evidence, detail=verdict.detail))  # fmt: skip
        ok_new, ok_old = _ok(part), _ok(base)
        for key, group in ok_new.groupby(list(GROUP_KEYS)):
            old_group = ok_old[(ok_old[list(GROUP_KEYS)] == pd.Series(key, index=list(GROUP_KEYS))).all(axis=1)]
            if old_group.empty:
                continue
            b, c, _ = like_with_like(old_group, group)
            alike = _counted_alike(b, c)
            family = compare_family([Metric(m, b[m].tolist(), c[m].tolist(), higher)
                                     for m, higher in COMPARED_METRICS
                                     if m in b and m in c and (m != "map_failures" or alike)])  # fmt: skip
            name = "/".join(str(k) for k in key)
            for comparison in family:
                findings.append(Finding(
                    scope, f"{comparison.metric} {name}", "metric", comparison.conclusion == "regressed",
                    f"{comparison.baseline.median:.4g}", f"{comparison.candidate.median:.4g}",
                    comparison.change_pct, comparison.p_value, tuple(c["cell_id"]),
                    f"{comparison.conclusion} ({len(b)} vs {len(c)} cells)",
                ))  # fmt: skip
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


def no_usable_result(cells: pd.DataFrame) -> str:
    """Why a night measured nothing (infrastructure), or "" if it did."""
    if cells.empty:
        return "no cell ran (no host, or every platform missing)"
    if not (cells["status"] == "ok").any():
        reasons = set(cells.get("failure_reason", pd.Series(dtype=str)).dropna())
        if cells["status"].eq("skipped").all():
            return "every cell was skipped: no host offers the matrix's platforms"
        if reasons and reasons <= BOOT_FAILURES:
            return f"every cell failed to boot or lost its host ({', '.join(sorted(reasons))})"
    return ""


def write_junit(path: Path, findings: list[Finding], run: Path, night: str, baseline: str | None,
                note: str = "") -> None:  # fmt: skip
    """JUnit XML: one testsuite per host/platform, one testcase per claim and per compared metric; a
    regression is a failure carrying baseline, measured value, change, p-value and the evidence cells."""
    suites = ET.Element("testsuites", name=f"swiotlb-lab nightly {night}")
    by_scope: dict[str, list[Finding]] = {}
    for finding in findings:
        by_scope.setdefault(finding.scope or "this host", []).append(finding)
    if not by_scope:  # the first night, or nothing comparable: say so as a passing testcase
        by_scope["this host"] = []
    for scope, items in by_scope.items():
        suite = ET.SubElement(suites, "testsuite", name=f"{scope}", tests=str(max(len(items), 1)),
                              failures=str(sum(f.regressed for f in items)), errors="0", skipped="0")  # fmt: skip
        ET.SubElement(suite, "properties").extend([
            ET.Element("property", name="night", value=night),
            ET.Element("property", name="baseline", value=baseline or "none (this night establishes it)"),
        ])  # fmt: skip
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
    ET.indent(suites)
    atomic_write_text(path, ET.tostring(suites, encoding="unicode", xml_declaration=True) + "\n")


def tree_revision(tree: Path | None) -> dict[str, str]:
    """`git describe` and the commit of the kernel tree under test (empty without one)."""
    if tree is None:
        return {}

    def git(*args: str) -> str:
        proc = subprocess.run(["git", "-C", str(tree), *args], capture_output=True, text=True, check=False)
        return proc.stdout.strip() if proc.returncode == 0 else ""

    return {"tree_describe": git("describe", "--always", "--dirty", "--tags"), "tree_commit": git("rev-parse", "HEAD"),
            "tree": str(tree)}  # fmt: skip


def judge_night(history: History, store: RunStore, tree: dict[str, str], junit: Path | None = None) -> tuple[int, str]:
    """Gate a finished night against its baseline; record the outcome in its manifest; write JUnit XML.
    Returns the exit code and a sentence saying what happened."""
    manifest = store.manifest()
    cells = load_cells(store.root)
    baseline = history.baseline(str(manifest.get("matrix_name", "")), store.run_id)
    nothing = no_usable_result(cells)
    findings: list[Finding] = []
    if nothing:
        code, summary = EXIT_NO_RESULT, f"no usable result: {nothing}"
    elif baseline is None:
        code, summary = EXIT_OK, "no earlier complete night of this matrix: this night is the baseline"
    else:
        findings = gate(load_cells(history.runs / baseline), cells)
        regressed = [f for f in findings if f.regressed]
        code = EXIT_REGRESSION if regressed else EXIT_OK
        summary = (f"{len(regressed)} regression(s) against {baseline}: " + "; ".join(f.message for f in regressed[:5])
                   if regressed else f"no regression against {baseline} ({len(findings)} comparisons)")  # fmt: skip
    store.update_manifest(nightly={**tree, "baseline": baseline or "", "exit_code": code, "summary": summary,
                                   "regressions": sum(f.regressed for f in findings)})  # fmt: skip
    for path in (store.root / "junit.xml", *([junit] if junit else [])):
        write_junit(path, findings, store.root, store.run_id, baseline, summary)
    return code, summary


# --- the trend page ------------------------------------------------------------------------------

VERDICT_COLOURS = {"supported": "#e3f6e3", "contradicted": "#fbe3e3", "inconclusive": "#f6f3dc"}
TREND_METRICS = (
    ("fio_iops", "IOPS", 1.0), ("fio_clat_p99_us", "p99 completion latency (ms)", 1e-3),
    ("map_failures", "failed DMA maps per cell", 1.0), ("hiwater_frac", "hiwater / nslabs", 1.0),
)  # fmt: skip


def build_trend(history: History, matrix_name: str, out: Path | None = None) -> Path:
    """A self-contained HTML page: each claim's verdict per night, and key metrics per night (median with
    a 95% confidence band over the repetitions), each night annotated with the revision under test."""
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
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>swiotlb-lab trend: {html.escape(matrix_name)}"
             "</title><style>body{font-family:system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:"
             "collapse;font-size:12px}td,th{border:1px solid #ccc;padding:2px 5px}img{max-width:100%}</style></head>"
             f"<body><h1>Nightly trend: {html.escape(matrix_name)}</h1><p>{len(ids)} nights.</p>"]  # fmt: skip
    if ids:
        revision = {r["run_id"]: (r["tree_describe"] or str(r["lab_revision"])[:12]) for _, r in nights.iterrows()}
        claims = con.execute("SELECT * FROM claims").fetchdf()  # runs before per-host scopes have no `scope`
        claims = claims[claims["night"].isin(ids)].assign(scope=claims.get("scope", pd.Series("", index=claims.index)))
        claims["scope"] = claims["scope"].fillna("")
        table = claims.pivot_table(index="night", columns=["scope", "claim"], values="verdict", aggfunc="first")
        head = "".join(f"<th>{html.escape(' '.join(str(x) for x in c if x))}</th>" for c in table.columns)
        rows = []
        for night in ids[::-1]:
            if night not in table.index:  # its report failed (report-error.txt in the run): say so, keep the row
                rows.append(f"<tr><td>{html.escape(night)}</td><td>{html.escape(revision.get(night, ''))}</td>"
                            f"<td colspan='{max(len(table.columns), 1)}'>no claims recorded</td></tr>")  # fmt: skip
                continue
            cells = "".join(f"<td style='background:{VERDICT_COLOURS.get(str(v), '#fff')}'>{html.escape(str(v))}</td>"
                            for v in table.loc[night])  # fmt: skip
            rows.append(f"<tr><td>{html.escape(night)}</td><td>{html.escape(revision.get(night, ''))}</td>{cells}</tr>")
        parts.append("<h2>Claims per night (newest first)</h2><table><tr><th>night</th><th>revision</th>"
                     f"{head}</tr>{''.join(rows)}</table>")  # fmt: skip
        aggregates = ", ".join(f"median({m}) AS {m}_median, avg({m}) AS {m}_mean, stddev_samp({m}) AS {m}_sd"
                               for m, _, _ in TREND_METRICS)  # fmt: skip
        metrics = con.execute(f"SELECT night, kernel, workload, {aggregates}, count(*) AS n FROM cells "
                              "WHERE status = 'ok' GROUP BY night, kernel, workload").fetchdf()  # fmt: skip
        metrics = metrics[metrics["night"].isin(ids)]
        order = {night: i for i, night in enumerate(ids)}
        metrics["x"] = metrics["night"].map(order)
        workloads = sorted(set(metrics["workload"]))
        fig, axes = plt.subplots(len(TREND_METRICS), max(len(workloads), 1), squeeze=False,
                                 figsize=(5 * max(len(workloads), 1), 2.4 * len(TREND_METRICS)))  # fmt: skip
        for col, workload in enumerate(workloads):
            for row, (metric, label, scale) in enumerate(TREND_METRICS):
                ax = axes[row, col]
                for kernel, group in metrics[metrics["workload"] == workload].groupby("kernel"):
                    group = group.sort_values("x")
                    median = group[f"{metric}_median"] * scale
                    half = 1.96 * group[f"{metric}_sd"].fillna(0) / group["n"].clip(lower=1) ** 0.5 * scale
                    ax.plot(group["x"], median, marker="." if len(group) < 60 else None, lw=1,
                            color=variant_colour(kernel), label=str(kernel))  # fmt: skip
                    mean = group[f"{metric}_mean"] * scale
                    ax.fill_between(group["x"], mean - half, mean + half, color=variant_colour(kernel), alpha=0.15)
                ax.set_title(f"{workload}: {label}", fontsize=9, loc="left")
                ticks = list(range(0, len(ids), max(1, len(ids) // 8)))
                ax.set_xticks(ticks, [revision.get(ids[t], "")[:14] for t in ticks], rotation=30, fontsize=7)
        axes[0, 0].legend(fontsize=7)
        fig.suptitle("Per night: median (line), mean with its 95% confidence band (shade); x: revision under test")
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=90)
        plt.close(fig)
        parts.append(f"<h2>Key metrics per night</h2><img alt='metrics per night' "
                     f"src='data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}'>")  # fmt: skip
    parts.append("</body></html>")
    atomic_write_text(out, "\n".join(parts))
    return out
