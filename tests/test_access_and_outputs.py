"""The one access rule, and the gallery listing only files inside the output folder that the viewer may see."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from app.access import Viewer
from app.service.outputs import list_outputs, output_base
from framepack_core.media.video_io import encode_segment


def test_without_logins_everything_is_visible_and_with_logins_only_ones_own():
    local = Viewer.of(None, logins_on=False)
    assert local.may_see(None) and local.may_see("alice") and local.owner_filter is None and local.submitter is None
    alice = Viewer.of("alice", logins_on=True, admins=("root",))
    assert alice.may_see("alice") and not alice.may_see("bob") and not alice.may_see(None)
    assert alice.owner_filter == "alice" and alice.submitter == "alice"
    root = Viewer.of("root", logins_on=True, admins=("root",))
    assert root.may_see("alice") and root.may_see(None) and root.owner_filter is None
    anonymous = Viewer.of(None, logins_on=True)  # logins on, but no login reached the handler: nothing
    assert not anonymous.may_see(None) and not anonymous.may_see("") and anonymous.owner_filter not in (None, "")


def _video(path: Path) -> Path:
    encode_segment(np.zeros((3, 32, 32, 3), np.uint8), path, fps=30, crf=16)
    return path


def test_the_gallery_lists_only_regular_files_inside_the_output_folder(tmp_path):
    out, elsewhere = tmp_path / "outputs", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    secret = _video(elsewhere / "secret.mp4")
    mine = _video(out / "mine.mp4")
    (out / "mine.json").write_text(json.dumps({"video": "mine.mp4", "prompt": "ok"}))
    # Old-format settings files naming a path elsewhere, a way up, a link out, and a hidden folder's file.
    (out / "absolute.json").write_text(json.dumps({"video": str(secret), "input_image": str(secret)}))
    (out / "upward.json").write_text(json.dumps({"video": "../elsewhere/secret.mp4"}))
    os.symlink(secret, out / "link.mp4")
    (out / "link.json").write_text(json.dumps({"video": "link.mp4"}))
    (out / ".queue").mkdir()
    _video(out / ".queue" / "hidden.mp4")
    (out / "hidden.json").write_text(json.dumps({"video": ".queue/hidden.mp4"}))
    (out / "odd.json").write_text(json.dumps(["not", "an", "object"]))

    records = list_outputs(out, owners={})
    assert [r.video for r in records] == [mine.resolve()]


def test_the_gallery_shows_a_viewer_only_outputs_their_jobs_made(tmp_path):
    for name in ("20261202_1_aaa_seed1", "20261202_2_bbb_seed2", "20261202_3_ccc_seed3"):
        _video(tmp_path / f"{name}.mp4")
        (tmp_path / f"{name}.json").write_text(json.dumps({"video": f"{name}.mp4", "prompt": name}))
    owners = {output_base(Path("20261202_1_aaa_seed1.mp4")): "alice",
              output_base(Path("20261202_2_bbb_seed2.attempt1.partial.mp4")): "bob"}
    seen = {viewer: {r.video.name for r in list_outputs(tmp_path, owners, viewer)}
            for viewer in (Viewer("alice"), Viewer("bob"), Viewer("root", admin=True), Viewer(None))}
    assert seen[Viewer("alice")] == {"20261202_1_aaa_seed1.mp4"}
    assert seen[Viewer("bob")] == {"20261202_2_bbb_seed2.mp4"}
    assert len(seen[Viewer("root", admin=True)]) == len(seen[Viewer(None)]) == 3, "unowned: admins and local only"


def test_login_names_must_be_printable_valid_text_without_spaces():
    import pytest

    from app.settings import parse_credentials

    assert parse_credentials("alice:pa ss:word", "--auth") == ("alice", "pa ss:word")
    for bad in ("\ud800:pw", "al ice:pw", "tab\tname:pw", "x" * 65 + ":pw", "alice:\udfff"):
        with pytest.raises(ValueError, match="--auth"):
            parse_credentials(bad, "--auth")


def test_served_copies_of_a_killed_app_are_swept_and_a_closed_app_leaves_none(tmp_path, monkeypatch):
    import subprocess
    import sys
    import tempfile

    from app.service.outputs import SERVED_DIR_PREFIX, ServedFiles

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    orphan = tmp_path / f"{SERVED_DIR_PREFIX}{dead.stdout.strip()}-abc"
    (orphan / "x").mkdir(parents=True)
    alive = tmp_path / f"{SERVED_DIR_PREFIX}{os.getpid()}-def"
    alive.mkdir()
    served = ServedFiles()
    assert not orphan.exists() and alive.is_dir()
    copy = served.serve(_video(tmp_path / "v.mp4"))
    assert copy is not None and Path(copy).is_file()
    served.close()
    assert not served.root.exists()
