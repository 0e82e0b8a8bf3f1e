"""LoRAs in the app: the LoRA folder's listing, the REST listing and submission by name (only ever inside the
folder), the page's panel values as the request's LoRAs, and a video's LoRAs found again by SHA-256.

What is checked is what reaches the job: its spec (``inputs.loras`` by SHA-256 and weight, ``lora_fuse``). The
service is not started, so no job runs; what the engine does with the LoRAs is tested in the engine's tests.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.api.routes import build_api
from app.service.generation import GenerationService
from app.settings import REPO_ROOT, Settings
from app.ui.lora import MAX_LORA_ROWS, lora_request_values, panel_note, panel_rows, weights_from_spec
from app.ui.lora_panel import video_lora_updates
from app.ui.render import build_request
from framepack_core.errors import InvalidInputError
from framepack_core.jobs.queue import JobQueue
from framepack_core.jobs.spec import JobSpec, file_sha256
from framepack_core.lora import library
from framepack_core.lora.library import LoraFolder
from framepack_core.request import GenerationRequest, LoraChoice
from tests.lora_fixtures import write_tiny_lora

FAST = {"latent_window_size": 3, "steps": 1, "resolution": 64, "seconds": 0.8, "cache": "none"}
USERS = (("alice", "wonderland"), ("bob", "builder"))
PATH_NAMES = ["../style.safetensors", "/etc/passwd", "sub/inner.safetensors", "..", "a\\style.safetensors", ""]


@pytest.fixture(scope="module")
def lora_dir(tiny_models_dir, tmp_path_factory) -> Path:
    """A LoRA folder with two LoRAs, a hidden one, a subfolder's one, a file of another kind; a LoRA outside."""
    folder = tmp_path_factory.mktemp("app") / "loras"
    write_tiny_lora(folder / "style.safetensors", tiny_models_dir, seed=1)
    write_tiny_lora(folder / "Motion.safetensors", tiny_models_dir, seed=2)
    write_tiny_lora(folder / ".hidden.safetensors", tiny_models_dir, seed=3)
    write_tiny_lora(folder / "sub" / "inner.safetensors", tiny_models_dir, seed=4)
    (folder / "notes.txt").write_text("not a LoRA")
    write_tiny_lora(folder.parent / "outside.safetensors", tiny_models_dir, seed=5)
    return folder


@pytest.fixture()
def image(tmp_path) -> Path:
    from PIL import Image

    path = tmp_path / "in.png"
    y, x = np.mgrid[0:120, 0:160]
    Image.fromarray(np.stack([x % 256, y % 256, (x + y) % 256], -1).astype(np.uint8)).save(path)
    return path


def make_api(out: Path, lora_dir: Path, **settings) -> tuple[TestClient, GenerationService]:
    service = GenerationService(lambda: None, out, queue=JobQueue.for_output_dir(out))  # never started: no job runs
    return TestClient(build_api(service, Settings(output_dir=out, loras_dir=lora_dir, **settings))), service


@pytest.fixture()
def api(tmp_path, lora_dir):
    client, service = make_api(tmp_path / "outputs", lora_dir)
    yield client
    service.stop()


def submit(client: TestClient, image: Path, settings: dict, auth=None, **fields):
    return client.post("/jobs", files={"image": ("in.png", image.read_bytes(), "image/png")},
                       data={"settings": json.dumps({**FAST, **settings}), **fields}, auth=auth)


# The folder ------------------------------------------------------------------------------------------------------

def test_the_folder_lists_its_own_top_level_safetensors_files_with_size_and_sha256(lora_dir):
    files = LoraFolder(lora_dir).files()
    assert [lora.name for lora in files] == ["Motion.safetensors", "style.safetensors"]
    for lora in files:
        assert lora.size == (lora_dir / lora.name).stat().st_size
        assert lora.sha256 == file_sha256(lora_dir / lora.name)
    assert LoraFolder(lora_dir / "missing").files() == []


def test_a_file_is_hashed_once_until_its_size_or_time_changes(tmp_path, tiny_models_dir, monkeypatch):
    path = write_tiny_lora(tmp_path / "a.safetensors", tiny_models_dir, seed=1)
    hashed = []
    monkeypatch.setattr(library, "file_sha256", lambda p: hashed.append(p.name) or file_sha256(p))
    folder = LoraFolder(tmp_path)
    first = folder.files()[0].sha256
    assert folder.files()[0].sha256 == first and hashed == ["a.safetensors"]
    assert folder.files(with_sha256=False)[0].sha256 is None and len(hashed) == 1
    write_tiny_lora(path, tiny_models_dir, seed=9)
    os.utime(path, ns=(1, 1))  # a new modification time, whatever the clock's resolution
    assert folder.files()[0].sha256 == file_sha256(path) != first and len(hashed) == 2


@pytest.mark.parametrize("name", [*PATH_NAMES, "outside.safetensors", ".hidden.safetensors", "notes.txt", 7])
def test_only_a_listed_file_name_resolves_and_anything_else_is_refused_naming_loras(lora_dir, name):
    folder = LoraFolder(lora_dir)
    assert folder.resolve("style.safetensors").path == lora_dir / "style.safetensors"
    with pytest.raises(InvalidInputError) as refused:
        folder.resolve(name)
    assert refused.value.field == "loras"
    assert "Motion.safetensors, style.safetensors" in refused.value.hint


# REST ------------------------------------------------------------------------------------------------------------

def test_get_loras_lists_name_size_and_sha256_and_needs_a_login_when_logins_are_on(tmp_path, lora_dir):
    client, service = make_api(tmp_path / "outputs", lora_dir, auth=USERS)
    try:
        assert client.get("/loras").status_code == 401
        for user in USERS:  # shared read-only: every user sees the same list
            answer = client.get("/loras", auth=user)
            assert answer.status_code == 200
            assert answer.json() == {"loras": [
                {"name": name, "size": (lora_dir / name).stat().st_size, "sha256": file_sha256(lora_dir / name)}
                for name in ("Motion.safetensors", "style.safetensors")]}
    finally:
        service.stop()


def test_a_submission_names_loras_from_the_folder_and_the_spec_holds_their_sha256_and_weight(api, lora_dir, image):
    answer = submit(api, image, {"loras": [{"name": "style.safetensors", "weight": 0.8},
                                           {"name": "Motion.safetensors"}], "lora_fuse": True})
    assert answer.status_code == 201, answer.text
    spec = api.get(f"/jobs/{answer.json()['id']}").json()["spec"]
    assert spec["inputs"]["loras"] == [{"sha256": file_sha256(lora_dir / "style.safetensors"), "weight": 0.8},
                                       {"sha256": file_sha256(lora_dir / "Motion.safetensors"), "weight": 1.0}]
    assert spec["settings"]["lora_fuse"] is True


@pytest.mark.parametrize("loras", [
    *([{"name": name, "weight": 1.0}] for name in PATH_NAMES),
    [{"name": "outside.safetensors"}], [{"name": "missing.safetensors"}],
    [{"path": "/etc/passwd", "weight": 1.0}], [{"name": "style.safetensors", "path": "../outside.safetensors"}],
    ["style.safetensors"], "style.safetensors", [{"name": "style.safetensors", "weight": "strong"}]])
def test_paths_traversal_and_unknown_names_are_refused_with_422_naming_loras(api, image, loras, lora_dir):
    answer = submit(api, image, {"loras": loras})
    assert answer.status_code == 422, answer.text
    assert answer.json()["field"] == "loras"
    assert str(lora_dir) not in answer.text and "/etc" not in answer.json()["hint"]
    assert api.get("/jobs").json()["total"] == 0


def test_a_spec_names_its_loras_by_sha256_and_they_are_found_in_the_folder_only(api, lora_dir, image, tmp_path):
    inside = JobSpec.from_request(GenerationRequest(image=image, loras=(LoraChoice(lora_dir / "style.safetensors",
                                                                                     0.5),), **FAST),
                                  file_sha256(image))
    answer = api.post("/jobs", files={"image": ("in.png", image.read_bytes(), "image/png")},
                      data={"spec": inside.to_json()})
    assert answer.status_code == 201, answer.text
    assert api.get(f"/jobs/{answer.json()['id']}").json()["spec"]["inputs"]["loras"] == list(inside.inputs["loras"])

    outside = JobSpec.from_request(GenerationRequest(
        image=image, loras=(LoraChoice(lora_dir.parent / "outside.safetensors", 1.0),), **FAST), file_sha256(image))
    answer = api.post("/jobs", files={"image": ("in.png", image.read_bytes(), "image/png")},
                      data={"spec": outside.to_json()})
    assert answer.status_code == 422 and answer.json()["field"] == "loras", answer.text


def test_a_rest_batch_gives_every_job_the_named_loras(api, lora_dir, image):
    answer = api.post("/batches", files=[("images", ("a.png", image.read_bytes(), "image/png"))],
                      data={"settings": json.dumps({**FAST, "loras": [{"name": "Motion.safetensors", "weight": 0.3}]}),
                            "seeds": "1,2"})
    assert answer.status_code == 201, answer.text
    for job in answer.json()["jobs"]:
        assert job["spec"]["inputs"]["loras"] == [{"sha256": file_sha256(lora_dir / "Motion.safetensors"),
                                                   "weight": 0.3}]
    refused = api.post("/batches", files=[("images", ("a.png", image.read_bytes(), "image/png"))],
                       data={"settings": json.dumps({**FAST, "loras": [{"name": "../outside.safetensors"}]})})
    assert refused.status_code == 422 and refused.json()["field"] == "loras"


# The page --------------------------------------------------------------------------------------------------------

def test_the_panels_weights_become_the_requests_loras_and_a_zero_weight_is_off(lora_dir, image):
    folder = LoraFolder(lora_dir)
    values = lora_request_values(folder, ["Motion.safetensors", "style.safetensors"], [0.0, 0.75], True)
    assert values == {"loras": (LoraChoice(lora_dir / "style.safetensors", 0.75),), "lora_fuse": True}
    request = build_request(str(image), {**FAST, **values})
    assert request.loras == values["loras"] and request.lora_fuse is True
    spec = JobSpec.from_request(request, file_sha256(image))
    assert spec.inputs["loras"] == [{"sha256": file_sha256(lora_dir / "style.safetensors"), "weight": 0.75}]
    with pytest.raises(InvalidInputError) as gone:  # a row drawn before its file was removed, or a forged name
        lora_request_values(folder, ["../outside.safetensors"], [1.0], False)
    assert gone.value.field == "loras"
    assert build_request(str(image), dict(FAST)).loras == ()  # no LoRA panel values: as before
    assert lora_request_values(folder, ["style.safetensors"], [0.0], True) == {"loras": (), "lora_fuse": False}


def test_the_panel_rows_and_note_follow_the_folder(lora_dir, tmp_path):
    files = LoraFolder(lora_dir).files(with_sha256=False)
    rows = panel_rows(files, {"style.safetensors": 5.0})
    assert [(row.name, row.weight) for row in rows] == [("Motion.safetensors", 0.0), ("style.safetensors", 2.0)]
    assert "2 LoRA files in `here`" in panel_note(files, "`here`")
    empty = panel_note([], "`/srv/loras`")
    assert "No LoRA files yet" in empty and "`/srv/loras`" in empty and "Refresh" in empty
    many = [files[0]] * (MAX_LORA_ROWS + 3)
    assert len(panel_rows(many)) == MAX_LORA_ROWS and f"first {MAX_LORA_ROWS}" in panel_note(many, "x")


def _described_video(tmp_path: Path, spec: JobSpec) -> Path:
    from framepack_core.jobs.output_description import OutputDescription, write_sidecar
    from framepack_core.media.video_io import encode_segment

    video = tmp_path / "made.mp4"
    encode_segment(np.zeros((3, 32, 32, 3), np.uint8), video, fps=30, crf=16)
    write_sidecar(video, OutputDescription(spec, {}))
    return video


def test_loading_a_video_restores_its_loras_by_sha256_and_names_those_the_folder_lacks(lora_dir, image, tmp_path):
    loras = (LoraChoice(lora_dir / "style.safetensors", 0.6), LoraChoice(lora_dir.parent / "outside.safetensors", 1.1))
    spec = JobSpec.from_request(GenerationRequest(image=image, loras=loras, lora_fuse=True, **FAST),
                                file_sha256(image))
    video = _described_video(tmp_path, spec)
    updates, note = video_lora_updates(LoraFolder(lora_dir), video, show_path=True)
    names, _panel_note, *sliders, fuse = updates
    assert names == ["Motion.safetensors", "style.safetensors"] and fuse is True
    assert [slider["value"] for slider in sliders[:2]] == [0.0, 0.6]
    assert all(slider["visible"] is False for slider in sliders[2:])
    outside = file_sha256(lora_dir.parent / "outside.safetensors")
    assert f"lacks 1 LoRA the job used (SHA-256 `{outside[:12]}…` at weight 1.1)" in note

    weights, note = weights_from_spec(spec.inputs, LoraFolder(lora_dir).files())
    assert weights == {"style.safetensors": 0.6} and "lacks 1" in note


def test_the_lora_folder_defaults_beside_the_models_folder_else_beside_the_code(tmp_path, monkeypatch):
    assert Settings(output_dir=tmp_path).lora_folder == REPO_ROOT / "loras"
    assert Settings(output_dir=tmp_path, models_dir=tmp_path / "models").lora_folder == tmp_path / "loras"
    assert Settings(output_dir=tmp_path, loras_dir=tmp_path / "mine").lora_folder == tmp_path / "mine"
    from_env = Settings.from_env({"FRAMEPACK_LORAS_DIR": str(tmp_path / "env")}, output_dir=tmp_path)
    assert from_env.lora_folder == tmp_path / "env"
    import launch

    args = launch.build_parser().parse_args(["--loras-dir", str(tmp_path / "flag")])
    monkeypatch.delenv("FRAMEPACK_LORAS_DIR", raising=False)
    assert launch.settings_from_args(args).lora_folder == tmp_path / "flag"


def test_the_page_batch_gives_every_job_the_lora_panels_loras(tmp_path, lora_dir, image):
    from app.access import Viewer
    from app.api.status import JobStatuses
    from app.service.outputs import ServedFiles
    from app.ui.batch_panel import queue_page_batch
    from app.ui.context import PageContext
    from app.ui.render import JOB_FIELDS

    out = tmp_path / "outputs"
    service = GenerationService(lambda: None, out, queue=JobQueue.for_output_dir(out))
    page = PageContext(settings=Settings(output_dir=out, loras_dir=lora_dir), service=service, served=ServedFiles(),
                       statuses=JobStatuses(service, out))
    values = {**{name: page.defaults.get(name) for name in JOB_FIELDS}, **FAST, "fp8": "auto", "model": "original"}
    panel = [["Motion.safetensors", "style.safetensors"], True, 0.4, 0.0]  # LoraPanel.inputs(): names, fuse, weights
    note = queue_page_batch(page, Viewer.of(None, logins_on=False), [str(image)], "", "1,2", None, values, lora_values=panel)
    assert note.startswith("Queued **batch "), note
    jobs = service.queue_rows()
    assert len(jobs) == 2
    for job in jobs:
        assert job.spec.inputs["loras"] == [{"sha256": file_sha256(lora_dir / "Motion.safetensors"), "weight": 0.4}]
        assert job.spec.settings["lora_fuse"] is True
    refused = queue_page_batch(page, Viewer.of(None, logins_on=False), [str(image)], "", "", None, values,
                               lora_values=[["../outside.safetensors"], False, 1.0])
    assert "is a path" in refused and len(service.queue_rows()) == 2
