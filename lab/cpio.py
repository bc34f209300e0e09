"""A minimal writer for the kernel's initramfs format (cpio "newc").

Written here rather than calling cpio(1) because the archive needs a
/dev/console node (which only root could mknod in a staging directory) and
must be byte-for-byte reproducible (fixed owner and timestamps).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO


@dataclass(frozen=True)
class Entry:
    name: str  # path inside the archive, without leading "/"
    mode: int  # full st_mode, including the file type bits
    data: bytes = b""
    rdev_major: int = 0
    rdev_minor: int = 0


def _header(ino: int, entry: Entry) -> bytes:
    name = entry.name.encode() + b"\0"
    fields = (
        ino,
        entry.mode,
        0,
        0,
        1,
        0,
        len(entry.data),
        0,
        0,
        entry.rdev_major,
        entry.rdev_minor,
        len(name),
        0,
    )
    header = b"070701" + b"".join(b"%08x" % value for value in fields)
    return _pad(header + name)


def _pad(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


def write_archive(out: BinaryIO, entries: Iterator[Entry] | list[Entry]) -> None:
    ino = 1
    for entry in entries:
        out.write(_header(ino, entry))
        out.write(_pad(entry.data))
        ino += 1
    out.write(_header(ino, Entry("TRAILER!!!", 0)))


def tree_entries(root: Path) -> Iterator[Entry]:
    """Entries for every file, directory and symlink below ``root``, sorted, owned by root."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        base = Path(dirpath)
        for name in sorted(dirnames) + sorted(filenames):
            path = base / name
            rel = str(path.relative_to(root))
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                yield Entry(rel, stat.S_IFLNK | 0o777, os.readlink(path).encode())
            elif stat.S_ISDIR(st.st_mode):
                yield Entry(rel, stat.S_IFDIR | stat.S_IMODE(st.st_mode))
            elif stat.S_ISREG(st.st_mode):
                yield Entry(rel, stat.S_IFREG | stat.S_IMODE(st.st_mode), path.read_bytes())


def console_node() -> Entry:
    """/dev/console, so the kernel can give init a console before devtmpfs is mounted."""
    return Entry("dev/console", stat.S_IFCHR | 0o600, rdev_major=5, rdev_minor=1)
