"""Make stored cells machine-neutral before they are committed under tests/data/.

    .venv/bin/python tests/data/scrub_paths.py tests/data/NEW-cells.parquet

Rewrites every string column: the user cache `/root/.cache/` (or any home's) becomes `~/.cache/`,
a results directory (under /tmp, or any path before a run ID) becomes
`results/`, a QMP socket `/tmp/swiotlb-lab.qmp`.  Prints
the columns that still mention /root, /tmp/<run> or /work, which must be none.
"""

from __future__ import annotations

import re
import sys

import pandas as pd

RULES = (
    (re.compile(r"/(?:root|home/[^/\s]+)/\.cache/"), "~/.cache/"),
    (re.compile(r"/tmp/[A-Za-z0-9._-]+/(?=\d{8}T)"), "results/"),
    (re.compile(r"/[A-Za-z0-9._/-]+/(?=\d{8}T\d{6}-[0-9a-f]{4}/)"), "results/"),  # any results directory
    (re.compile(r"/tmp/swiotlb-lab-[0-9]+-[0-9a-f]+\.qmp"), "/tmp/swiotlb-lab.qmp"),
)
LEFT = re.compile(r"/root/|/home/|/tmp/(?!swiotlb-lab\.qmp)|/work/")


def scrub(value: object) -> object:
    if not isinstance(value, str):
        return value
    for pattern, replacement in RULES:
        value = pattern.sub(replacement, value)
    return value


def main(paths: list[str]) -> int:
    status = 0
    for path in paths:
        cells = pd.read_parquet(path)
        for column in cells.columns:
            if cells[column].map(lambda v: isinstance(v, str)).any():
                cells[column] = cells[column].map(scrub)
        cells.to_parquet(path)
        left = [c for c in cells.columns if cells[c].astype(str).str.contains(LEFT).any()]
        print(f"{path}: {'clean' if not left else 'still machine paths in ' + ', '.join(left)}")
        status |= bool(left)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
