"""Lost NVMe doorbells, read from the pages of a guest that really hung (tests/data/doorbells)."""

from __future__ import annotations

from pathlib import Path

from lab.doorbells import LostDoorbell, find_lost, io_doorbell_writes, lagging, parse_xp, shadow_pages

HUNG = Path(__file__).resolve().parent.parent / "data" / "doorbells" / "hung-throttle-v2-1vcpu.txt"
TRACE = "pci_nvme_dbbuf_config dbs_addr=0xb07000 eis_addr=0xb08000\n"


def dumps() -> dict[str, str]:
    sections: dict[str, str] = {}
    for block in HUNG.read_text().split("# ")[1:]:
        title, _, body = block.partition("\n")
        sections[title] = body
    return sections


def test_the_hung_guest_lost_the_doorbell_of_its_io_queue() -> None:
    pages = dumps()
    shadow = parse_xp(pages["shadow doorbells"])
    before, after = parse_xp(pages["event indexes"]), parse_xp(pages["event indexes, 1 s later"])
    assert len(shadow) == len(before) == len(after) == 32
    assert lagging(shadow, before, after) == [LostDoorbell(qid=1, shadow_tail=678, event_index=662)]
    assert "16 command(s)" in str(lagging(shadow, before, after)[0])


def test_find_lost_reads_the_pages_the_trace_names() -> None:
    pages = dumps()
    asked: list[str] = []
    answers = {
        "0xb08000": [pages["event indexes"], pages["event indexes, 1 s later"]],
        "0xb07000": [pages["shadow doorbells"]],
    }

    def hmp(line: str) -> str:
        asked.append(line)
        return answers[line.split()[-1]].pop(0)

    lost, text = find_lost(hmp, TRACE, settle_s=0)
    assert asked == ["xp /32wx 0xb08000", "xp /32wx 0xb07000", "xp /32wx 0xb08000"]
    assert [item.qid for item in lost] == [1] and text.count("0000000000b07000:") == 1


def test_a_queue_is_lost_only_if_its_event_index_stood_still_behind_the_tail() -> None:
    # admin queue caught up; queue 1 behind but its controller still reading; queue 2 behind and idle
    shadow = [5, 4, 100, 90, 40, 30]
    before = [5, 4, 95, 89, 38, 29]
    after = [5, 4, 99, 89, 38, 29]
    assert lagging(shadow, before, after) == [LostDoorbell(2, 40, 38)]
    assert lagging(shadow, before, shadow) == []  # everything read: nothing lost


def test_the_latest_configuration_counts_and_no_trace_means_no_diagnosis() -> None:
    trace = TRACE + "pci_nvme_dbbuf_config dbs_addr=0xc00000 eis_addr=0xc01000\n"
    assert shadow_pages(trace) == (0xC00000, 0xC01000)
    assert shadow_pages("") is None
    assert find_lost(lambda line: "", "", settle_s=0) == ([], "")


def test_io_doorbell_writes_are_counted_from_a_real_trace() -> None:
    excerpt = (HUNG.parent / "trace-excerpt.log").read_text()
    assert io_doorbell_writes(excerpt) == 4  # the admin queue's 14 are not I/O doorbells
    assert io_doorbell_writes("") == 0
