"""QEMU toolchain recipes and the matrix's qemu axis: what is declared, and errors that name file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab.errors import ConfigError
from lab.matrix import load_matrix
from lab.toolchain import names, recipe_hash, recipes


def test_the_shipped_recipe_declares_pinned_roots() -> None:
    declared = recipes()
    assert names() == ("host", "debian13", "sid")
    for spec in declared.values():
        [qemu] = [p for p in spec["packages"] if p.startswith("qemu-system-x86")]
        assert "=" in qemu  # pinned: a root is rebuilt only from the same QEMU
    assert len({recipe_hash(s) for s in declared.values()}) == 2


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[x]\nsuite = "sid"\npackages = ["qemu-system-x86"]\npackage = "ovmf"\n', r"\[x\]: unknown key 'package'"),
        ('[x]\npackages = ["qemu-system-x86"]\n', r"\[x\]: suite must be a Debian suite name"),
        ('[x]\nsuite = "sid"\npackages = []\n', r"\[x\]: packages must be a list of Debian packages"),
        ('[host]\nsuite = "sid"\npackages = ["q"]\n', r"'host' names the host's own QEMU"),
        ("x = 1\n", r"\[x\] must be a table"),
    ],
)
def test_a_bad_recipe_names_the_file_table_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "recipe.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=rf"{path}.*{message}"):
        recipes(path)


MATRIX = """
[matrix]
kernels = ["static"]
pools = ["2MiB"]
workloads = ["a"]
qemu = {qemu}

[workloads.a]
rw = "randread"
"""


def test_qemu_is_an_axis_of_its_own_and_the_hosts_keeps_old_cell_ids(tmp_path: Path) -> None:
    path = tmp_path / "m.toml"
    path.write_text(MATRIX.format(qemu='["host", "sid"]'))
    host, sid = load_matrix(path).cells
    assert (host.qemu, sid.qemu) == ("host", "sid")
    assert host.boot_key != sid.boot_key  # a boot runs on one QEMU
    assert "qemu" not in host.content() and sid.content()["qemu"] == "sid"
    path.write_text(MATRIX.format(qemu='["host"]').replace('qemu = ["host"]\n', ""))
    assert load_matrix(path).cells[0].cell_id == host.cell_id  # no qemu key: the same cell as before


def test_an_unknown_qemu_names_the_declared_ones(tmp_path: Path) -> None:
    path = tmp_path / "m.toml"
    path.write_text(MATRIX.format(qemu='["qemu10"]'))
    with pytest.raises(
        ConfigError, match=r"m\.toml:\d+: matrix\.qemu: unknown QEMU 'qemu10'; valid: host, debian13, sid"
    ):
        load_matrix(path)
