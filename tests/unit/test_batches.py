"""`--resume` keeps one run one batch: it refuses a run another lab revision or other uncommitted changes
started, unless asked to mix them, and then the manifest and report say so."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from lab.errors import ConfigError
from lab.host import lab_diff_digest, lab_revision
from lab.session import RunRequest, Session

DATA = Path(__file__).resolve().parent.parent / "data"


def stored_run(tmp_path: Path, **manifest: str) -> Path:
    run = tmp_path / "run"
    shutil.copytree(DATA / "run-small", run)
    data = json.loads((run / "manifest.json").read_text())
    (run / "manifest.json").write_text(json.dumps({**data, **manifest}))
    return run


def request(run: Path, mix: bool = False) -> RunRequest:
    return RunRequest(matrix=DATA / "run-small.toml", resume=run, mix_batches=mix)


def test_a_run_of_this_checkout_resumes(tmp_path: Path) -> None:
    run = stored_run(tmp_path, lab_revision=lab_revision(), lab_diff_sha256=lab_diff_digest())
    assert Session(request(run)).mixed_batch is None


def test_a_run_of_another_revision_is_refused_unless_batches_may_mix(tmp_path: Path) -> None:
    run = stored_run(tmp_path, lab_revision="0123456789abcdef0123456789abcdef01234567")
    with pytest.raises(ConfigError, match=r"started at lab revision 0123456789abcdef.*--mix-batches"):
        Session(request(run))
    assert "0123456789abcdef" in str(Session(request(run, mix=True)).mixed_batch)


def test_the_same_revision_with_other_uncommitted_changes_is_another_batch(tmp_path: Path) -> None:
    run = stored_run(tmp_path, lab_revision=lab_revision(), lab_diff_sha256="f" * 64)
    with pytest.raises(ConfigError, match="other uncommitted changes"):
        Session(request(run))


def test_a_run_from_before_the_diff_was_recorded_is_judged_by_its_revision(tmp_path: Path) -> None:
    run = stored_run(tmp_path, lab_revision=lab_revision())
    data = json.loads((run / "manifest.json").read_text())
    data.pop("lab_diff_sha256", None)
    (run / "manifest.json").write_text(json.dumps(data))
    assert Session(request(run)).mixed_batch is None
