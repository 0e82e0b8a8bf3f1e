"""The HTTP job API: submit, follow by server-sent events, download; logins, owners, path tricks, big uploads."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.api.routes import build_api
from app.api.status import JobStatus
from app.service.generation import GenerationService
from app.settings import Settings
from framepack_core.jobs.queue import JobQueue
from framepack_core.media.video_io import probe_video
from framepack_core.models.devices import resolve_device_config
from framepack_core.models.loading import ModelSource
from framepack_core.models.store import ModelStore
from framepack_core.pipeline.engine import FramePackEngine

FAST = {"latent_window_size": 3, "steps": 3, "resolution": 64, "seconds": 0.8, "cache": "none"}
USERS = (("alice", "wonderland"), ("bob", "builder"))


def png_bytes(width: int = 160, height: int = 120) -> bytes:
    y, x = np.mgrid[0:height, 0:width]
    buffer = io.BytesIO()
    Image.fromarray(np.stack([x % 256, y % 256, (x + y) % 256], -1).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def make_client(models_dir: Path, out: Path, *, start: bool = True, **settings) -> tuple[TestClient, GenerationService]:
    def factory() -> FramePackEngine:
        return FramePackEngine(ModelStore(ModelSource(models_dir=models_dir), resolve_device_config("cpu")))

    service = GenerationService(factory, out, queue=JobQueue.for_output_dir(out))
    if start:
        service.start()
    return TestClient(build_api(service, Settings(output_dir=out, **settings))), service


@pytest.fixture()
def api(tiny_models_dir, tmp_path):
    client, service = make_client(tiny_models_dir, tmp_path / "outputs")
    yield client
    service.stop()


@pytest.fixture()
def api_with_logins(tiny_models_dir, tmp_path):
    client, service = make_client(tiny_models_dir, tmp_path / "outputs", start=False, auth=USERS)
    yield client
    service.stop()


def submit(client: TestClient, settings: dict | None = None, *, image: bytes | None = None, auth=None,
           name: str = "input.png", **fields):
    data = {"settings": json.dumps({**FAST, **(settings or {})})} if settings is not None or not fields else {}
    data.update(fields)
    return client.post("/jobs", files={"image": (name, image if image is not None else png_bytes(), "image/png")},
                       data=data, auth=auth)


def follow(client: TestClient, job_id: str, auth=None) -> list[dict]:
    """Read the server-sent events of a job until the stream ends."""
    states = []
    with client.stream("GET", f"/jobs/{job_id}/events", auth=auth) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        event = None
        for line in response.iter_lines():
            if line.startswith("event: "):
                event = line[len("event: "):]
            elif line.startswith("data: ") and event == "status":
                states.append(json.loads(line[len("data: "):]))
    return states


def test_submit_follow_with_server_sent_events_and_download_the_video(api, tmp_path):
    response = submit(api, {"prompt": "a cat", "seed": 3})
    assert response.status_code == 201, response.text
    job = response.json()
    assert job["state"] in ("queued", "running") and job["spec"]["settings"]["seed"] == 3
    updates = follow(api, job["id"])
    assert updates[-1]["state"] == "finished", updates[-1]
    assert any(u["state"] == "running" and u["step"] for u in updates), "progress is streamed"
    final = api.get(f"/jobs/{job['id']}").json()
    assert final["state"] == "finished" and final["video"].endswith(".mp4")
    video = api.get(f"/jobs/{job['id']}/video")
    assert video.status_code == 200 and video.headers["content-type"] == "video/mp4"
    saved = tmp_path / "downloaded.mp4"
    saved.write_bytes(video.content)
    assert probe_video(saved).frame_count == 25
    assert [j["id"] for j in api.get("/jobs").json()["jobs"]] == [job["id"]]


def test_a_finished_job_reports_the_transformer_calls_its_step_cache_skipped(api, tiny_models_dir, tmp_path):
    # TeaCache with a threshold nothing stays under past its warm-up: most calls are answered from the cache.
    job = submit(api, {"seed": 5, "cache": "teacache", "cache_threshold": 10.0}).json()
    updates = follow(api, job["id"])
    assert all(u["transformer_calls"] is None for u in updates if u["state"] != "finished")
    final = api.get(f"/jobs/{job['id']}").json()
    assert final["state"] == "finished"
    sidecar = json.loads((tmp_path / "outputs" / final["video"]).with_suffix(".json").read_text())
    counts = sidecar["fingerprint"]["cache"]
    assert final["transformer_calls"] == counts["transformer_calls"] == 3 * final["total_sections"]
    assert final["skipped_calls"] == counts["skipped_calls"] and 0 < final["skipped_calls"] < final["transformer_calls"]
    # A later process, which did not run the job, reads the same counts from what the job left on disk.
    later, service = make_client(tiny_models_dir, tmp_path / "outputs", start=False)
    try:
        stored = later.get(f"/jobs/{job['id']}").json()
    finally:
        service.stop()
    assert (stored["transformer_calls"], stored["skipped_calls"]) == (final["transformer_calls"],
                                                                        final["skipped_calls"])


def test_a_whole_spec_can_be_submitted_and_must_match_the_image(api):
    first = submit(api, {"seed": 8}).json()
    spec = json.dumps(first["spec"])
    assert submit(api, None, spec=spec).status_code == 201
    refused = submit(api, None, spec=spec, image=png_bytes(200, 150))
    assert refused.status_code == 422 and refused.json()["field"] == "image"


@pytest.mark.parametrize(("settings", "field"), [
    ({"steps": 0}, "steps"),
    ({"seconds": "long"}, "seconds"),
    ({"model": "sd15"}, "model"),
    ({"colour": "red"}, "colour"),
    ({"cfg": float("1e400")}, "cfg"),
])
def test_bad_settings_are_refused_naming_the_field(api, settings, field):
    response = submit(api, settings)
    assert response.status_code == 422, response.text
    assert response.json()["field"] == field and response.json()["error"]


def test_broken_input_is_refused_with_a_readable_error_and_the_api_stays_up(api):
    deep = "[" * 100_000 + "]" * 100_000  # deeper than the JSON parser's stack
    for image, settings_text in ((b"not an image", None), (png_bytes(), "{not json"), (png_bytes(), "[1, 2]"),
                                 (png_bytes(), deep)):
        data = {"settings": settings_text} if settings_text else {"settings": json.dumps(FAST)}
        response = api.post("/jobs", files={"image": ("x.png", image, "image/png")}, data=data)
        assert response.status_code == 422, response.text
        assert response.json()["error"]
    nested_spec = api.post("/jobs", files={"image": ("x.png", png_bytes(), "image/png")}, data={"spec": deep})
    assert nested_spec.status_code == 422 and nested_spec.json()["field"] == "spec"
    assert api.get("/jobs").status_code == 200


def test_an_upload_over_the_limit_is_refused_before_it_is_stored(tiny_models_dir, tmp_path):
    client, service = make_client(tiny_models_dir, tmp_path / "outputs", start=False, max_file_size_mb=0.01)
    try:
        noise = np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(noise).save(buffer, format="PNG")  # ~120 KB: noise does not compress
        response = submit(client, {}, image=buffer.getvalue())
        assert response.status_code == 413, response.text
        assert "limit of 0.01 MB" in response.json()["error"]
        assert list(service.store.root.glob("images/*")) == [] and list(service.store.root.glob("uploads/*")) == []
    finally:
        service.stop()


def test_path_tricks_reach_nothing(api, tmp_path):
    job = submit(api, {}, name="../../../etc/passwd.png").json()
    assert job["id"]
    for path in ("/jobs/..%2F..%2Fetc%2Fpasswd", "/jobs/../../etc/passwd/video", "/jobs/%2e%2e/video",
                 "/jobs/" + "a" * 65, "/jobs/abc%00def/video"):
        response = api.get(path)
        assert response.status_code in (404, 422), (path, response.status_code)
    # The upload's name is never used as a path: the queue stores the image by its hash.
    assert not (tmp_path / "etc").exists()


def test_logins_are_required_and_users_see_only_their_own_jobs(api_with_logins):
    client = api_with_logins
    assert client.get("/jobs").status_code == 401
    assert client.get("/jobs", auth=("alice", "wrong")).status_code == 401
    assert client.get("/jobs").headers["www-authenticate"].startswith("Basic")
    mine = submit(client, {}, auth=("alice", "wonderland")).json()["id"]
    theirs = submit(client, {}, auth=("bob", "builder")).json()["id"]
    listed = [j["id"] for j in client.get("/jobs", auth=("alice", "wonderland")).json()["jobs"]]
    assert listed == [mine]
    for path in (f"/jobs/{theirs}", f"/jobs/{theirs}/video", f"/jobs/{theirs}/events"):
        assert client.get(path, auth=("alice", "wonderland")).status_code == 404
    assert client.post(f"/jobs/{theirs}/cancel", auth=("alice", "wonderland")).status_code == 404
    assert client.get(f"/jobs/{theirs}", auth=("bob", "builder")).json()["state"] == "queued"


def test_a_pending_job_can_be_edited_and_a_bad_edit_names_the_setting(api_with_logins):
    client, alice = api_with_logins, ("alice", "wonderland")
    job_id = submit(client, {"seed": 1}, auth=alice).json()["id"]
    edited = client.patch(f"/jobs/{job_id}", json={"seed": 7, "prompt": "edited"}, auth=alice)
    assert edited.status_code == 200, edited.text
    assert edited.json()["spec"]["settings"]["seed"] == 7 and edited.json()["spec"]["settings"]["prompt"] == "edited"
    refused = client.patch(f"/jobs/{job_id}", json={"steps": 0}, auth=alice)
    assert refused.status_code == 422 and refused.json()["field"] == "settings.steps"
    client.post(f"/jobs/{job_id}/cancel", auth=alice)
    ended = client.patch(f"/jobs/{job_id}", json={"seed": 3}, auth=alice)
    assert ended.status_code == 409 and "only a pending job can be edited" in ended.json()["error"]


def test_cancel_retry_and_delete_a_queued_job(api_with_logins):
    client, alice = api_with_logins, ("alice", "wonderland")
    job_id = submit(client, {}, auth=alice).json()["id"]
    assert client.post(f"/jobs/{job_id}/cancel", auth=alice).json()["state"] == "cancelled"
    again = client.post(f"/jobs/{job_id}/cancel", auth=alice)
    assert again.status_code == 409 and "already ended" in again.json()["error"]
    assert client.post(f"/jobs/{job_id}/retry", auth=alice).json()["state"] == "queued"
    assert client.delete(f"/jobs/{job_id}", auth=alice).status_code == 204
    assert client.get(f"/jobs/{job_id}", auth=alice).status_code == 404


def test_the_openapi_description_lists_every_operation(api):
    schema = api.get("/openapi.json").json()
    operations = {(path, method) for path, item in schema["paths"].items() for method in item}
    assert operations == {("/jobs", "post"), ("/jobs", "get"), ("/jobs/{job_id}", "get"),
                          ("/jobs/{job_id}", "delete"), ("/jobs/{job_id}", "patch"), ("/jobs/{job_id}/cancel", "post"),
                          ("/jobs/{job_id}/retry", "post"), ("/jobs/{job_id}/reroll", "post"),
                          ("/jobs/{job_id}/video", "get"),
                          ("/jobs/{job_id}/events", "get"), ("/health", "get"), ("/batches", "post"),
                          ("/batches", "get"), ("/batches/{batch_id}", "get"), ("/batches/{batch_id}/cancel", "post"),
                          ("/loras", "get")}


def test_the_openapi_description_documents_each_field_of_the_one_job_status(api):
    schema = api.get("/openapi.json").json()
    status = schema["components"]["schemas"]["JobStatus"]
    assert set(status["properties"]) == set(JobStatus.model_fields)
    assert all(field.get("description") for field in status["properties"].values()), status
    assert "Gradio" in status["description"]  # the named endpoints' status is this one
    answer = schema["paths"]["/jobs/{job_id}"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert answer == {"$ref": "#/components/schemas/JobStatus"}


def test_eight_concurrent_clients_all_finish_in_queue_order_and_read_only_their_own_files(tiny_models_dir,
                                                                                         tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    client, service = make_client(tiny_models_dir, tmp_path / "outputs", auth=USERS)
    logins = [USERS[i % 2] for i in range(8)]

    def one(index: int) -> dict:
        login = logins[index]
        response = submit(client, {"seed": index}, auth=login)
        assert response.status_code == 201, response.text
        job_id = response.json()["id"]
        updates = follow(client, job_id, auth=login)
        video = client.get(f"/jobs/{job_id}/video", auth=login)
        other = USERS[1] if login == USERS[0] else USERS[0]
        return {"id": job_id, "state": updates[-1]["state"], "video": video.status_code,
                "bytes": len(video.content), "other": client.get(f"/jobs/{job_id}/video", auth=other).status_code,
                "anonymous": client.get(f"/jobs/{job_id}/video").status_code}

    try:
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(one, range(8)))
        assert [r["state"] for r in results] == ["finished"] * 8
        assert all(r["video"] == 200 and r["bytes"] > 0 for r in results)
        assert all(r["other"] == 404 and r["anonymous"] == 401 for r in results)
        rows = {row.id: row for row in service.store.list()}
        by_start = sorted(rows.values(), key=lambda row: row.started_at)
        by_submission = sorted(rows.values(), key=lambda row: row.created_at)
        assert [r.id for r in by_start] == [r.id for r in by_submission], "run in the order they were queued"
        assert all(row.attempts == 1 for row in rows.values())
    finally:
        service.stop()
