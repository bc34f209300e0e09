"""The one-vCPU NVMe hang on QEMU 7.2, 10.0 and 11.1 (issue 20: doorbell-qemu.toml, two runs of 2026-12-03,
tests/data/README.md): the counts the README and findings quote, and why QEMU 10.0's stalls are not the lost
doorbell the lab diagnosed on 7.2."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from lab.doorbells import lagging, parse_xp

DATA = Path(__file__).resolve().parent.parent / "data"


def pages(path: Path) -> tuple[list[int], list[int], list[int]]:
    """The shadow page, and the event index page before and after a second, of a stored dump."""
    parts = {
        head: parse_xp(body) for head, body in (chunk.split("\n", 1) for chunk in path.read_text().split("# ")[1:])
    }
    return parts["shadow doorbells"], parts["event indexes"], parts["event indexes, 1 s later"]


def test_the_runs_as_published() -> None:
    cells = pd.read_parquet(DATA / "doorbell-qemu-cells.parquet")
    assert cells["run_id"].nunique() == 2 and len(cells) == 24
    by_qemu = cells.groupby(["qemu_toolchain", "qemu_version"])
    completed = by_qemu["status"].apply(lambda s: int((s == "ok").sum())).to_dict()
    assert completed == {("host", "7.2.22"): 8, ("debian13", "10.0.13"): 0, ("sid", "11.1.3"): 8}
    stalled = cells[cells["qemu_toolchain"] == "debian13"]
    assert set(stalled["failure_reason"]) == {"timeout"}  # never diagnosed as "lost nvme doorbell"
    iops = cells.groupby("qemu_toolchain")["fio_iops"]
    assert (round(iops.median()["host"]), round(iops.median()["sid"])) == (2511, 761)
    assert (round(iops.min()["host"]), round(iops.max()["sid"])) == (2118, 779)


@pytest.mark.parametrize("n", range(1, 9))
def test_qemu_10_stalls_with_every_submission_read(n: int) -> None:
    shadow, before, after = pages(DATA / "doorbells" / "qemu-10.0" / f"stalled-{n}.txt")
    assert shadow[2] == before[2] == after[2] in (1, 2, 3)  # I/O queue 1: tail read up to where it was posted
    assert shadow[3] == after[3] + 1  # its completion queue head one past the controller's event index
    assert lagging(shadow, before, after) == []


def test_the_7_2_hang_is_a_lost_doorbell() -> None:
    shadow, before, after = pages(DATA / "doorbells" / "hung-throttle-v2-1vcpu.txt")
    [lost] = lagging(shadow, before, after)
    assert (lost.qid, lost.shadow_tail, lost.event_index) == (1, 678, 662)
