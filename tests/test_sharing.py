"""Shared with logins, every route shows a user only their own work: a walk of every route as a second user.

One ``launch.py --demo`` server with three logins: alice and bob, and root as ``--admin``. Alice makes jobs (a
finished one, a running one, a waiting one, one through Gradio's ``/generate``); then bob tries to reach them
through everything a browser or a script can call: the REST API, Gradio's named endpoints, the private events
behind the page's buttons (called over HTTP exactly as the page calls them), the page's config, the gallery, the
Queue tab and Gradio's file routes. Nothing of alice's may show or change. The admin sees it all.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from app.ui.lora import MAX_LORA_ROWS
from bench.ui_latency import DemoServer, start_demo_server
from tests.gradio_http import GradioSession
from tests.lora_fixtures import write_tiny_lora

ALICE, BOB, ROOT = ("alice", "pw-alice"), ("bob", "pw-bob"), ("root", "pw-root")
FAST = {"latent_window_size": 3, "steps": 3, "resolution": 64, "seconds": 0.8, "cache": "none"}
SECRET = f"ALICE-SECRET-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def server(tiny_models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoServer]:
    work = tmp_path_factory.mktemp("shared-server")
    logins = [arg for user, password in (ALICE, BOB, ROOT) for arg in ("--auth", f"{user}:{password}")]
    # The LoRA folder every user shares, and a LoRA file beside it that no request may reach.
    write_tiny_lora(work / "loras" / "shared.safetensors", tiny_models_dir, seed=1)
    write_tiny_lora(work / "private.safetensors", tiny_models_dir, seed=2)
    logins += ["--loras-dir", str(work / "loras")]
    with start_demo_server(work, models_dir=tiny_models_dir, extra_args=(*logins, "--admin", "root")) as running:
        yield running


@pytest.fixture(scope="module")
def image_bytes() -> bytes:
    import io

    y, x = np.mgrid[0:120, 0:160]
    buffer = io.BytesIO()
    Image.fromarray(np.stack([x % 256, y % 256, (x + y) % 256], -1).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def rest(server: DemoServer, login: tuple[str, str] | None) -> httpx.Client:
    return httpx.Client(base_url=server.url + "api/v1", auth=login, timeout=120)


def submit(client: httpx.Client, image: bytes, **settings: object) -> dict:
    response = client.post("/jobs", files={"image": ("in.png", image, "image/png")},
                           data={"settings": json.dumps({**FAST, **settings})})
    assert response.status_code == 201, response.text
    return response.json()


def wait_state(client: httpx.Client, job_id: str, states: set[str], timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status = client.get(f"/jobs/{job_id}").json()
        if status["state"] in states:
            return status
        assert time.monotonic() < deadline, status
        time.sleep(0.2)


def listed_ids(client: httpx.Client) -> set[str]:
    response = client.get("/jobs", params={"limit": 200})
    assert response.status_code == 200, response.text
    return {job["id"] for job in response.json()["jobs"]}


@pytest.fixture(scope="module")
def alices_work(server: DemoServer, image_bytes: bytes, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """Alice's jobs: finished (REST), finished (Gradio /generate), running (long), and pending behind it."""
    from gradio_client import Client, handle_file

    alice = rest(server, ALICE)
    finished = submit(alice, image_bytes, prompt=f"{SECRET} finished", seed=1)["id"]
    wait_state(alice, finished, {"finished"})

    image_file = tmp_path_factory.mktemp("alice") / "alice.png"
    image_file.write_bytes(image_bytes)
    client = Client(server.url, auth=ALICE, verbose=False)
    video, status = client.predict(handle_file(str(image_file)), f"{SECRET} via generate", "original", 0.8, 2, 3,
                                   10.0, 3, 1.0, 0.0, "", "none", 0.15, 16, 64, None, "auto", api_name="/generate")
    generated = status["id"]
    assert status["state"] == "finished" and Path(video).is_file()

    running = submit(alice, image_bytes, prompt=f"{SECRET} running", seed=3, seconds=40.0)["id"]
    wait_state(alice, running, {"running"})
    pending = submit(alice, image_bytes, prompt=f"{SECRET} pending", seed=4)["id"]
    yield {"finished": finished, "generated": generated, "running": running, "pending": pending,
           "all": {finished, generated, running, pending}, "client": alice}
    for job_id in (pending, running):
        alice.post(f"/jobs/{job_id}/cancel")
    alice.close()


def test_jobs_from_gradio_generate_belong_to_their_login(alices_work):
    assert alices_work["generated"] in listed_ids(alices_work["client"])


def test_bob_reaches_none_of_alices_jobs_through_the_rest_api(server, alices_work):
    with rest(server, BOB) as bob:
        assert not listed_ids(bob) & alices_work["all"]
        for job_id in alices_work["all"]:
            for path in (f"/jobs/{job_id}", f"/jobs/{job_id}/video", f"/jobs/{job_id}/events"):
                assert bob.get(path).status_code == 404, path
            assert bob.patch(f"/jobs/{job_id}", json={"seed": 9}).status_code == 404
            for action in ("cancel", "retry"):
                assert bob.post(f"/jobs/{job_id}/{action}").status_code == 404
            assert bob.delete(f"/jobs/{job_id}").status_code == 404
    assert alices_work["client"].get(f"/jobs/{alices_work['running']}").json()["state"] == "running"


def test_bob_reaches_none_of_alices_batches_through_the_rest_api_or_the_queue_tab(server, alices_work, image_bytes):
    alice = alices_work["client"]
    response = alice.post("/batches", files=[("images", ("a.png", image_bytes, "image/png"))],
                          data={"settings": json.dumps({**FAST, "prompt": f"{SECRET} batch"}), "seeds": "5,6"})
    assert response.status_code == 201, response.text
    batch_id, job_ids = response.json()["batch_id"], [job["id"] for job in response.json()["jobs"]]
    try:
        with rest(server, BOB) as bob:
            assert batch_id not in bob.get("/batches").text
            assert bob.get(f"/batches/{batch_id}").status_code == 404
            assert bob.post(f"/batches/{batch_id}/cancel").status_code == 404
        bob_page = GradioSession(server.url, BOB)
        try:
            batches = bob_page.component_id("queue-batches")
            refresh = next(d for d in bob_page.dependencies("load") if batches in d["outputs"])
            (done,) = [m for m in bob_page.call(refresh, []) if m["msg"] == "process_completed"]
            assert batch_id not in json.dumps(done["output"]) and SECRET not in json.dumps(done["output"])
            for job_id in job_ids:
                note = json.dumps(bob_page.fire("queue-cancel-batch", "click", [job_id, 1])["output"])
                assert "There is no job" in note and batch_id not in note, note
        finally:
            bob_page.close()
        assert {job["state"] for job in alice.get(f"/batches/{batch_id}").json()["jobs"]} == {"queued"}
        with rest(server, ROOT) as root:
            assert root.get(f"/batches/{batch_id}").json()["total"] == 2, "the admin sees every batch"
    finally:
        cancelled = alice.post(f"/batches/{batch_id}/cancel")
    assert cancelled.json()["counts"] == {"cancelled": 2}, cancelled.text


def test_bob_cannot_read_or_stop_alices_job_through_gradio_named_endpoints(server, alices_work):
    from gradio_client import Client

    bob = Client(server.url, auth=BOB, verbose=False)
    running = alices_work["running"]
    with pytest.raises(Exception, match="Unknown job id"):
        bob.predict(running, api_name="/status")
    assert bob.predict(running, api_name="/stop") is False
    alice = Client(server.url, auth=ALICE, verbose=False)
    assert alice.predict(running, api_name="/status")["state"] == "running"


def test_bobs_page_config_and_queue_tab_hold_nothing_of_alices(server, alices_work):
    bob = GradioSession(server.url, BOB)
    try:
        for path in ("/", "/config"):
            page = bob.http.get(path)
            assert page.status_code == 200
            assert SECRET not in page.text and not any(job_id in page.text for job_id in alices_work["all"])
        queue_table = bob.component_id("queue-table")
        refresh = next(d for d in bob.dependencies("load") if queue_table in d["outputs"])
        (done,) = [m for m in bob.call(refresh, []) if m["msg"] == "process_completed"]
        rows = json.dumps(done["output"])
        assert SECRET not in rows and not any(job_id in rows for job_id in alices_work["all"])

        for button in ("queue-delete", "queue-retry", "queue-cancel", "queue-move"):
            for job_id in alices_work["all"]:
                result = bob.fire(button, "click", [job_id, 1])
                note = json.dumps(result["output"])
                assert "There is no job" in note or "is not waiting or running" in note, (button, note)
                assert SECRET not in note
        alice = alices_work["client"]
        assert alice.get(f"/jobs/{alices_work['running']}").json()["state"] == "running"
        assert alice.get(f"/jobs/{alices_work['pending']}").json()["state"] == "queued"
        assert alice.get(f"/jobs/{alices_work['finished']}").json()["state"] == "finished"
    finally:
        bob.close()


def test_bobs_page_never_follows_or_stops_alices_running_job(server, alices_work):
    bob = GradioSession(server.url, BOB)
    try:
        on_load = next(d for d in bob.dependencies("load") if d.get("queue", True))
        # A fresh page, and a page whose browser storage names alice's job (a forged or shared local storage).
        for stored_job in (None, alices_work["running"]):
            messages = bob.call(on_load, [stored_job])
            shown = json.dumps([m.get("output") for m in messages])
            assert alices_work["running"] not in shown and SECRET not in shown, shown[:2000]
        # Nor does the form restored after a reload, nor a job picked (or retried) in the Queue tab by its id.
        image = bob.component_id("start-image")
        restore = next(d for d in bob.dependencies("load") if image in d["outputs"])
        follow_pick = bob.chained(bob.dependency("queue-table", "select"))
        running = alices_work["running"]
        for dependency, data in ((restore, [running]), (follow_pick, [running, running])):
            shown = json.dumps([m.get("output") for m in bob.call(dependency, data)])
            assert SECRET not in shown and "data-job" not in shown, shown[:2000]
        bob.fire("stop", "click", [alices_work["running"]])
        time.sleep(1.0)
        assert alices_work["client"].get(f"/jobs/{alices_work['running']}").json()["state"] == "running"
    finally:
        bob.close()


def test_the_gallery_shows_each_user_only_their_own_videos(server, alices_work):
    def gallery_of(login: tuple[str, str]) -> str:
        session = GradioSession(server.url, login)
        try:
            return json.dumps(session.fire("refresh-gallery", "click", [])["output"])
        finally:
            session.close()

    assert SECRET not in gallery_of(BOB)
    assert SECRET in gallery_of(ALICE) and SECRET in gallery_of(ROOT)


def test_no_file_of_the_output_folder_is_served_by_path_to_anyone(server, alices_work):
    files = [path for path in server.output_dir.rglob("*") if path.is_file()]
    names = {path.name for path in files}
    assert "queue.sqlite3" in names and any(n.endswith(".mp4") for n in names) and any(
        n.endswith(".json") for n in names), names
    assert any(".queue/images" in str(path) for path in files) and any(".queue/jobs" in str(path) for path in files)
    for login in (BOB, ALICE):
        session = GradioSession(server.url, login)
        try:
            for path in files:
                for url in (f"/gradio_api/file={path}", f"/gradio_api/file/{path}"):
                    response = session.http.get(url)
                    assert response.status_code == 403, (login[0], url, response.status_code)
        finally:
            session.close()


def test_alice_gets_her_own_video_as_a_served_copy(server, alices_work):
    alice = GradioSession(server.url, ALICE)
    try:
        output = alice.fire("refresh-gallery", "click", [])["output"]["data"][0]
        items = output["value"] if isinstance(output, dict) and "value" in output else output
        urls = [item["image"]["url"] if "image" in item else item["video"]["url"] for item in items]
        assert urls
        response = alice.http.get(urls[0])
        assert response.status_code == 200 and response.content
        assert str(server.output_dir) not in urls[0]
    finally:
        alice.close()


def test_the_admin_sees_and_manages_every_users_jobs(server, alices_work):
    with rest(server, ROOT) as root:
        assert alices_work["all"] <= listed_ids(root)
    admin = GradioSession(server.url, ROOT)
    try:
        queue_table = admin.component_id("queue-table")
        refresh = next(d for d in admin.dependencies("load") if queue_table in d["outputs"])
        (done,) = [m for m in admin.call(refresh, []) if m["msg"] == "process_completed"]
        assert alices_work["running"] in json.dumps(done["output"])
    finally:
        admin.close()


def test_the_lora_folder_is_shared_read_only_and_no_user_names_a_file_outside_it(server, image_bytes):
    loras = server.output_dir.parent / "loras"
    private = server.output_dir.parent / "private.safetensors"
    with rest(server, ALICE) as alice, rest(server, BOB) as bob, rest(server, None) as nobody:
        assert nobody.get("/loras").status_code == 401
        listed = alice.get("/loras").json()
        assert listed == bob.get("/loras").json() and [lora["name"] for lora in listed["loras"]] == ["shared.safetensors"]
        for method in ("post", "put", "delete"):
            assert getattr(bob, method)("/loras").status_code in (401, 404, 405), method
        for name in ("../private.safetensors", str(private), "private.safetensors", "..", "/etc/passwd"):
            answer = bob.post("/jobs", files={"image": ("in.png", image_bytes, "image/png")},
                              data={"settings": json.dumps({**FAST, "loras": [{"name": name, "weight": 1.0}]})})
            assert answer.status_code == 422 and answer.json()["field"] == "loras", (name, answer.text)
            assert str(loras) not in answer.text
        answer = bob.post("/jobs", files={"image": ("in.png", image_bytes, "image/png")},
                          data={"settings": json.dumps({**FAST, "loras": [{"name": "shared.safetensors"}]})})
        assert answer.status_code == 201, answer.text
        bob.post(f"/jobs/{answer.json()['id']}/cancel")
        assert answer.json()["spec"]["inputs"]["loras"][0]["sha256"] == listed["loras"][0]["sha256"]

    # The page: bob's Refresh lists the shared files, and with logins on the page never shows the folder's path.
    bob_page = GradioSession(server.url, BOB)
    try:
        assert str(loras) not in bob_page.http.get("/config").text
        refreshed = json.dumps(bob_page.fire("lora-refresh", "click", [None, *[0.0] * MAX_LORA_ROWS])["output"])
        assert "shared.safetensors" in refreshed and str(loras) not in refreshed
    finally:
        bob_page.close()
