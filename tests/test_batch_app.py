"""Batches in the app: ``POST /api/v1/batches`` and its group routes (each user sees and cancels only their own
batches, the pending limit counts every job of a batch), the batch panel's handlers and the Queue tab's groups."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.access import Viewer
from app.api.routes import build_api
from app.api.status import JobStatuses
from app.service.batches import batch_id_of, cancel_batch, visible_batches
from app.service.generation import GenerationService
from app.service.outputs import ServedFiles
from app.settings import Settings
from app.ui.batch_panel import batch_size_text, queue_page_batch
from app.ui.context import PageContext
from app.ui.render import JOB_FIELDS, batches_markdown, queue_table_rows
from framepack_core.errors import InvalidInputError
from framepack_core.jobs.queue import JobQueue, JobState, QueueError
from framepack_core.jobs.spec import file_sha256

FAST = {"latent_window_size": 3, "steps": 1, "resolution": 64, "seconds": 0.8, "cache": "none"}
USERS = (("alice", "wonderland"), ("bob", "builder"), ("root", "toor"))
ALICE, BOB, ROOT = USERS


def png_bytes(seed: int, width: int = 160, height: int = 120) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def make_client(out: Path, **settings) -> tuple[TestClient, GenerationService]:
    """The API over a service that is never started: jobs stay queued."""
    service = GenerationService(lambda: pytest.fail("this test must not run jobs"), out,
                                queue=JobQueue.for_output_dir(out))
    return TestClient(build_api(service, Settings(output_dir=out, **settings))), service


def post_batch(client: TestClient, images: dict[str, bytes], *, auth=None, prompts=None, **fields):
    files = [("images", (name, data, "image/png")) for name, data in images.items()]
    data = {"settings": json.dumps(FAST), **{k: str(v) for k, v in fields.items()}}
    if prompts is not None:
        data["prompts"] = prompts
    return client.post("/batches", files=files, data=data, auth=auth)


def test_rest_batch_queues_one_job_per_image_prompt_and_seed(tmp_path):
    client, service = make_client(tmp_path / "out")
    images = {"cat.png": png_bytes(1), "dog.png": png_bytes(2)}
    response = post_batch(client, images, prompts=["walks", "", "waves"], seeds="3,4")
    assert response.status_code == 201, response.text
    batch = response.json()
    assert batch["total"] == 8 and batch["counts"] == {"queued": 8}
    assert batch["summary"] == f"batch {batch['batch_id']}: 8 jobs, 8 waiting"
    jobs = [service.store.get(status["id"]) for status in batch["jobs"]]
    assert {status["batch_id"] for status in batch["jobs"]} == {batch["batch_id"]}
    sha = {name: hashlib.sha256(data).hexdigest() for name, data in images.items()}
    assert [(job.spec.image_sha256, job.spec.settings["prompt"], job.spec.settings["seed"]) for job in jobs] == [
        (sha[name], prompt, seed) for name in images for prompt in ("walks", "waves") for seed in (3, 4)]
    assert [job.label for job in jobs] == [f"{stem}-p{n}" for stem in ("cat", "dog") for n in (1, 2) for _ in "ab"]
    assert client.get(f"/batches/{batch['batch_id']}").json() == batch
    assert client.get("/batches").json()["batches"] == [{key: batch[key] for key in
                                                         ("batch_id", "total", "counts", "summary")}]
    assert client.get(f"/jobs/{jobs[0].id}").json()["batch_id"] == batch["batch_id"]
    assert not list((tmp_path / "out" / ".queue" / "uploads").iterdir()), "the temporary uploads are gone"

    response = post_batch(client, {"cat.png": png_bytes(1)}, seed_count=3)
    seeds = [status["spec"]["settings"]["seed"] for status in response.json()["jobs"]]
    assert seeds == [31337, 31338, 31339]


def test_rest_batch_with_a_broken_image_queues_nothing_and_names_the_file(tmp_path):
    client, service = make_client(tmp_path / "out")
    response = post_batch(client, {"good.png": png_bytes(1), "broken.png": b"\x89PNG not really"}, seeds="1,2")
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["field"] == "image" and "broken.png" in body["error"] and "uploads" not in body["error"], body
    assert service.store.count() == 0
    response = post_batch(client, {"good.png": png_bytes(1)}, seeds="1,x")
    assert response.status_code == 422 and response.json()["field"] == "seeds"
    response = post_batch(client, {"good.png": png_bytes(1)}, prompts=["fine", "x" * 20_001])
    assert response.status_code == 422 and response.json()["field"] == "prompts"
    assert "prompt 2" in response.json()["error"]
    assert service.store.count() == 0


def test_rest_batch_past_the_pending_limit_is_refused_before_any_job_is_queued(tmp_path):
    client, service = make_client(tmp_path / "out", auth=USERS, max_pending_per_user=5)
    assert post_batch(client, {"a.png": png_bytes(1)}, auth=ALICE, seeds="1,2").status_code == 201
    refused = post_batch(client, {"a.png": png_bytes(1), "b.png": png_bytes(2)}, auth=ALICE, seeds="1,2")
    assert refused.status_code == 429, refused.text
    assert "would queue 4 jobs and you already have 2 waiting" in refused.json()["error"]
    assert service.store.count(owner="alice") == 2
    assert post_batch(client, {"a.png": png_bytes(1)}, auth=BOB, seeds="1,2,3,4,5").status_code == 201, \
        "the limit is per user"


def test_rest_batches_are_seen_and_cancelled_only_by_their_owner(tmp_path):
    client, service = make_client(tmp_path / "out", auth=USERS, admins=("root",))
    batch = post_batch(client, {"a.png": png_bytes(1)}, auth=ALICE, seeds="1,2,3").json()
    batch_id = batch["batch_id"]
    assert client.get("/batches", auth=BOB).json()["batches"] == []
    for method, path in (("get", f"/batches/{batch_id}"), ("post", f"/batches/{batch_id}/cancel")):
        refused = getattr(client, method)(path, auth=BOB)
        assert refused.status_code == 404 and "There is no batch" in refused.json()["error"], refused.text
    assert service.store.count(states=(JobState.QUEUED,)) == 3
    assert client.get(f"/batches/{batch_id}", auth=ROOT).json()["total"] == 3, "an admin sees every batch"

    cancelled = client.post(f"/batches/{batch_id}/cancel", auth=ALICE)
    assert cancelled.status_code == 200 and cancelled.json()["counts"] == {"cancelled": 3}, cancelled.text
    assert {status["state"] for status in cancelled.json()["jobs"]} == {"cancelled"}
    assert client.get("/batches/nobatch", auth=ALICE).status_code == 404


def test_a_batch_body_may_carry_several_uploads_each_held_to_the_upload_limit(tmp_path):
    client, _ = make_client(tmp_path / "out", max_file_size_mb=1.0)
    big = {f"{n}.png": png_bytes(n, 560, 560) for n in range(3)}  # noise does not compress: about 0.9 MB each
    assert sum(map(len, big.values())) > (1 << 20) + (1 << 20), "more than one job's body may be"
    response = post_batch(client, big)
    assert response.status_code == 201, response.text
    assert post_batch(client, {"huge.png": png_bytes(9, 800, 800)}).status_code == 413


@pytest.fixture
def page(tmp_path) -> PageContext:
    out = tmp_path / "out"
    service = GenerationService(lambda: pytest.fail("this test must not run jobs"), out,
                                queue=JobQueue.for_output_dir(out))
    settings = Settings(output_dir=out, auth=USERS, max_pending_per_user=6)
    return PageContext(settings=settings, service=service, served=ServedFiles(), statuses=JobStatuses(service, out))


def _form_values(page: PageContext, **changes) -> dict:
    values = {name: page.defaults.get(name) for name in JOB_FIELDS}
    values.update(FAST, fp8="auto", **changes)
    values["model"] = getattr(values["model"], "value", values["model"])
    return values


def test_the_batch_panel_counts_its_jobs_before_queueing_them(tmp_path):
    files = [str(tmp_path / "a.png"), str(tmp_path / "b.png")]
    assert batch_size_text(None, "", "", None).startswith("Add start images")
    assert "**6 jobs**: 2 images x 3 prompts x 1 seed" in batch_size_text(files, "a\n# no\nb\n\nc", "", None)
    assert "**8 jobs**: 2 images x 1 prompt x 4 seeds" in batch_size_text(files, "", "", 4)
    assert "**4 jobs**" in batch_size_text(files, "", "7, 9", 5), "listed seeds win over a count"
    assert "'x' is not a whole number" in batch_size_text(files, "", "1,x", None)
    assert "at most 500" in batch_size_text(files, "", "", 300)


def test_the_batch_panel_queues_the_batch_with_the_forms_settings(page, tmp_path):
    images = [tmp_path / "cat.png", tmp_path / "dog.png"]
    for seed, image in enumerate(images):
        image.write_bytes(png_bytes(seed))
    alice, bob = Viewer("alice"), Viewer("bob")
    note = queue_page_batch(page, alice, [str(p) for p in images], "walks\nwaves", "", 1,
                            _form_values(page, seed=11, crf=20))
    assert note.startswith("Queued **batch ") and "4 jobs" in note, note
    jobs = page.service.queue_rows(viewer=alice)
    assert len(jobs) == 4 and len({job.batch_id for job in jobs}) == 1 and {job.owner for job in jobs} == {"alice"}
    assert {(job.spec.settings["crf"], job.spec.settings["seed"]) for job in jobs} == {(20, 11)}
    assert sorted(job.spec.settings["prompt"] for job in jobs) == ["walks", "walks", "waves", "waves"]
    assert {job.spec.image_sha256 for job in jobs} == {file_sha256(p) for p in images}

    # The Queue tab: the group, the batch column, and Cancel batch from one picked row, for its owner only.
    (summary,) = visible_batches(page.service, alice)
    assert f"batch {summary.batch_id}: 4 jobs, 4 waiting" in batches_markdown([summary])
    assert {row[-1] for row in queue_table_rows(jobs)} == {summary.batch_id}
    assert visible_batches(page.service, bob) == []
    with pytest.raises(QueueError, match="There is no job"):
        batch_id_of(page.service, jobs[0].id, bob)
    with pytest.raises(InvalidInputError, match="no batch"):
        cancel_batch(page.service, summary.batch_id, bob)
    cancelled = cancel_batch(page.service, batch_id_of(page.service, jobs[2].id, alice), alice)
    assert {job.state for job in cancelled} == {JobState.CANCELLED}

    # Over the limit (6 waiting at most; the 4 are cancelled): 2 images x 4 seeds is refused whole.
    note = queue_page_batch(page, alice, [str(p) for p in images], "", "1,2,3,4", None, _form_values(page))
    assert "would queue 8 jobs" in note and page.service.store.count(states=(JobState.QUEUED,)) == 0, note


def test_the_batch_panel_names_a_broken_image_by_its_file_name_and_queues_nothing(page, tmp_path):
    good, broken = tmp_path / "good.png", tmp_path / "broken.png"
    good.write_bytes(png_bytes(1))
    broken.write_bytes(b"not an image")
    note = queue_page_batch(page, Viewer("alice"), [str(good), str(broken)], "", "", None, _form_values(page))
    assert "'broken.png' is not an image" in note and str(tmp_path) not in note, note
    assert page.service.store.count() == 0
    note = queue_page_batch(page, Viewer("alice"), [], "", "", None, _form_values(page))
    assert "no start image" in note
