"""The page's Models tab: the status table, and a download that reports its bytes as they arrive; only an admin
may start one when logins are on. No network: ``tests.fake_hub.FakeHub`` serves the tiny set."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path
from types import SimpleNamespace

from app.access import Viewer
from app.ui.models_tab import download_button, download_updates, status_rows
from framepack_core.models.inventory import inspect_models
from framepack_core.models.loading import BASE_REPO, ModelSource
from framepack_core.models.missing_weights import check_weights
from tests.fake_hub import FakeHub

ADMIN, USER = Viewer("root", admin=True), Viewer("guest")


def _context(models_dir: Path, offline: bool = False) -> SimpleNamespace:
    return SimpleNamespace(settings=SimpleNamespace(models_dir=models_dir, offline=offline))


def _without_the_text_encoder(tiny_models_dir: Path, tmp_path: Path) -> Path:
    models = Path(shutil.copytree(tiny_models_dir, tmp_path / "models"))
    shutil.rmtree(models / BASE_REPO / "text_encoder")
    return models


def test_the_table_shows_each_component_as_models_status_does(tiny_models_dir, tmp_path):
    rows = status_rows(inspect_models("original", models_dir=_without_the_text_encoder(tiny_models_dir, tmp_path)))
    states = {row[0]: row[1] for row in rows}
    assert states["text_encoder"] == "missing" and states["vae"] == "ok" and len(rows) == 8
    text_encoder = next(row for row in rows if row[0] == "text_encoder")
    assert text_encoder[2] == "-" and text_encoder[4] == "the folder does not exist"


def test_an_admin_downloads_the_missing_component_with_byte_progress(tiny_models_dir, tmp_path, monkeypatch):
    hub = FakeHub.installed(tiny_models_dir, monkeypatch)
    hub.chunk_bytes, hub.chunk_delay_s = 8 * 1024, 0.05  # about 1.3 s for the text encoder's 200 kB
    models = _without_the_text_encoder(tiny_models_dir, tmp_path)
    updates = list(download_updates("original", ADMIN, _context(models), threading.Lock()))
    notes = [note for _, _, note in updates]
    assert notes[-1].startswith("Downloaded ") and all(name.startswith(f"{BASE_REPO}/text_encoder/")
                                                      for name in hub.fetched)
    assert len(notes) > 2 and all(note.startswith("Downloading text_encoder: ") for note in notes[:-1])
    assert notes[-2] != notes[0], "the bytes are reported as they arrive"
    rows, summary, _ = updates[-1]
    assert all(row[1] == "ok" for row in rows) and "Every component is on disk and whole" in summary
    check_weights(ModelSource(models_dir=models), "original")


def test_with_logins_on_only_an_admin_may_start_a_download(tiny_models_dir, tmp_path, monkeypatch):
    hub = FakeHub.installed(tiny_models_dir, monkeypatch)
    models = _without_the_text_encoder(tiny_models_dir, tmp_path)
    (_, _, note), = download_updates("original", USER, _context(models), threading.Lock())
    assert note == "Only an admin may download models." and not hub.fetched
    (_, _, note), = download_updates("original", ADMIN, _context(models, offline=True), threading.Lock())
    assert "offline mode" in note and not hub.fetched


def test_the_download_button_stands_out_only_when_something_is_missing(tiny_models_dir, tmp_path):
    missing = inspect_models("original", models_dir=_without_the_text_encoder(tiny_models_dir, tmp_path))
    assert download_button(missing)["variant"] == "primary"
    assert download_button(inspect_models("original", models_dir=tiny_models_dir))["variant"] == "secondary"
