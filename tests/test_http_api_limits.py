"""The job API when shared: limits before the body is read (a real server, a raw socket), login back-off, pages,
damaged rows, pending limit, admins, full disks, no server paths, text at the door, health, offline docs, videos."""

from __future__ import annotations

import base64
import io
import json
import socket
import sqlite3
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from app.api.routes import API_PREFIX, build_api
from app.logins import LoginGuard
from app.service.generation import GenerationService
from app.settings import Settings
from framepack_core.errors import DiskFullError
from framepack_core.jobs.queue import JobQueue, JobState
from framepack_core.jobs.spec import JobSpec, file_sha256
from framepack_core.request import GenerationRequest

FAST = {"latent_window_size": 3, "steps": 3, "resolution": 64, "seconds": 0.8, "cache": "none"}
USERS = (("alice", "wonderland"), ("bob", "builder"))
ALICE, BOB = USERS
BOUNDARY = "framepackboundary"


def png_bytes(width: int = 160, height: int = 120) -> bytes:
    y, x = np.mgrid[0:height, 0:width]
    buffer = io.BytesIO()
    Image.fromarray(np.stack([x % 256, y % 256, (x + y) % 256], -1).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def make_service(out: Path) -> GenerationService:
    """A service that is not started unless a test says so, and never runs a job."""
    return GenerationService(lambda: pytest.fail("this test must not run jobs"), out,
                             queue=JobQueue.for_output_dir(out))


def make_client(out: Path, *, guard: LoginGuard | None = None, **settings) -> tuple[TestClient, GenerationService]:
    service = make_service(out)
    return TestClient(build_api(service, Settings(output_dir=out, **settings), guard=guard)), service


def submit(client: TestClient, settings: dict | None = None, *, auth=None, image: bytes | None = None,
           name: str = "input.png"):
    return client.post("/jobs", files={"image": (name, image if image is not None else png_bytes(), "image/png")},
                       data={"settings": json.dumps({**FAST, **(settings or {})})}, auth=auth)


def store_jobs(store: JobQueue, folder: Path, count: int, owner: str | None = None) -> list[str]:
    """Jobs put straight into the queue (faster than submitting each through the API)."""
    image = folder / "input.png"
    image.write_bytes(png_bytes())
    spec = JobSpec.from_request(GenerationRequest(image=image, **FAST).validated(), file_sha256(image))
    return [store.submit(spec, image, owner=owner).id for _ in range(count)]


class FakeClock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


# A real server, a raw socket: the body is sent (or not) byte by byte ----------------------------------------------


class BodyBytesRead:
    """ASGI wrapper counting the request body bytes its app took from the server."""

    def __init__(self, app) -> None:
        self.app = app
        self.bytes_read = 0

    async def __call__(self, scope, receive, send) -> None:
        async def counted():
            message = await receive()
            if message["type"] == "http.request":
                self.bytes_read += len(message.get("body", b""))
            return message

        await self.app(scope, counted, send)


class LiveServer:
    """uvicorn in a thread on a free localhost port, the API mounted under /api/v1 as launch.py mounts it."""

    def __init__(self, app) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 0))
        self.port = listener.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [listener]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.02)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)

    def send_head(self, method: str, path: str, headers: dict[str, str]) -> socket.socket:
        connection = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        lines = [f"{method} {API_PREFIX}{path} HTTP/1.1", "Host: 127.0.0.1"] + [f"{k}: {v}" for k, v in headers.items()]
        connection.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        return connection


def read_response(connection: socket.socket, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of the response; fails when none comes within ``timeout``."""
    connection.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        try:
            received = connection.recv(65536)
        except TimeoutError:
            pytest.fail(f"no response within {timeout} s: the server waits for the body")
        if not received:
            break
        data += received
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in header_lines)}
    while len(body) < int(headers.get("content-length", "0")) and (received := connection.recv(65536)):
        body += received
    return int(status_line.split()[1]), headers, body


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# A multipart body's beginning: the image part's headers; the image's bytes follow.
MULTIPART_START = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"big.png\"\r\n"
                   "Content-Type: image/png\r\n\r\n").encode()


def as_chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


@pytest.fixture()
def live(tmp_path, monkeypatch):
    """A live server with logins and a 0.01 MB upload limit; yields (server, counter, service, spooled files)."""
    import starlette.formparsers

    spooled: list[object] = []
    real_spool = starlette.formparsers.SpooledTemporaryFile

    def counting_spool(*args, **kwargs):
        spooled.append(args)
        return real_spool(*args, **kwargs)

    monkeypatch.setattr(starlette.formparsers, "SpooledTemporaryFile", counting_spool)
    service = make_service(tmp_path / "outputs")
    counter = BodyBytesRead(build_api(service, Settings(output_dir=tmp_path / "outputs", auth=USERS,
                                                        max_file_size_mb=0.01)))
    parent = FastAPI()  # stands in for Gradio's app, which launch.py mounts the API into
    parent.mount(API_PREFIX, counter)
    server = LiveServer(parent)
    yield server, counter, service, spooled
    server.close()
    service.stop()


def test_an_unauthenticated_upload_declaring_a_gigabyte_is_refused_before_its_body_is_read(live):
    server, counter, service, spooled = live
    connection = server.send_head("POST", "/jobs", {
        "Content-Type": f"multipart/form-data; boundary={BOUNDARY}", "Content-Length": str(1 << 30)})
    connection.sendall(MULTIPART_START + b"\0" * 1024)  # a first KB of the gigabyte, then nothing more
    status, headers, body = read_response(connection)
    connection.close()
    assert status == 401 and headers["www-authenticate"].startswith("Basic"), body
    assert json.loads(body)["error"] and json.loads(body)["hint"]
    assert counter.bytes_read == 0 and spooled == [], "the body was read before the login was checked"
    assert not any((service.store.root / "uploads").glob("*"))


def test_an_unauthenticated_chunked_upload_is_refused_before_its_body_is_read(live):
    server, counter, _, spooled = live
    connection = server.send_head("POST", "/jobs", {
        "Content-Type": f"multipart/form-data; boundary={BOUNDARY}", "Transfer-Encoding": "chunked"})
    connection.sendall(as_chunk(MULTIPART_START + b"\0" * 1024))  # the chunked body never ends
    status, _, body = read_response(connection)
    connection.close()
    assert status == 401, body
    assert counter.bytes_read == 0 and spooled == []


def test_a_declared_length_over_the_limit_is_refused_before_its_body_is_read(live):
    server, counter, _, spooled = live
    connection = server.send_head("POST", "/jobs", {
        "Authorization": basic(*ALICE), "Content-Type": f"multipart/form-data; boundary={BOUNDARY}",
        "Content-Length": str(1 << 30)})
    status, _, body = read_response(connection)
    connection.close()
    assert status == 413 and "0.01 MB" in json.loads(body)["error"], body
    assert counter.bytes_read == 0 and spooled == []


def test_a_chunked_upload_over_the_limit_is_cut_off_with_413_right_after_the_limit(live):
    server, counter, service, _ = live
    limit = Settings(max_file_size_mb=0.01).max_file_size_bytes + (1 << 20)  # the image plus the form's room
    connection = server.send_head("POST", "/jobs", {
        "Authorization": basic(*ALICE), "Content-Type": f"multipart/form-data; boundary={BOUNDARY}",
        "Transfer-Encoding": "chunked"})
    piece = 64 * 1024
    connection.sendall(as_chunk(MULTIPART_START))
    sent = 0
    while sent <= limit:  # just past the limit, then the client stops sending without ending the body
        connection.sendall(as_chunk(b"\0" * piece))
        sent += piece
    status, _, body = read_response(connection)
    connection.close()
    assert status == 413 and json.loads(body)["hint"], body
    assert limit < counter.bytes_read <= limit + piece + 1024, "read no further than the chunk that passed it"
    assert not any((service.store.root / "uploads").glob("*")) and service.store.count() == 0
    # The server goes on serving.
    after = server.send_head("GET", "/jobs", {"Authorization": basic(*ALICE)})
    assert read_response(after)[0] == 200
    after.close()


# Failed logins back off ------------------------------------------------------------------------------------------


def test_failed_logins_get_429_with_retry_after_and_the_password_is_not_checked(tmp_path):
    clock = FakeClock()
    client, _ = make_client(tmp_path / "outputs", guard=LoginGuard(USERS, clock=clock), auth=USERS)
    for _ in range(3):
        assert client.get("/jobs", auth=("alice", "guess")).status_code == 401
    refused = client.get("/jobs", auth=ALICE)
    assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
    assert "Wait 1 s" in refused.json()["hint"]
    clock.now += 1
    assert client.get("/jobs", auth=ALICE).status_code == 200
    accented, _ = make_client(tmp_path / "other", auth=(("jörg", "pässwörd"),))
    assert accented.get("/jobs", auth=("jörg", "pässwörd")).status_code == 200, "UTF-8 logins work too"


# Pages of jobs, damaged rows, the pending limit, admins --------------------------------------------------------


def test_get_jobs_comes_in_pages_with_a_total_and_the_next_offset(tmp_path):
    client, service = make_client(tmp_path / "outputs")
    ids = store_jobs(service.store, tmp_path, 53)
    first = client.get("/jobs").json()
    assert len(first["jobs"]) == 50 and first["total"] == 53 and first["next_offset"] == 50
    assert first["damaged"] == []
    last = client.get("/jobs", params={"offset": 50}).json()
    assert [j["id"] for j in first["jobs"] + last["jobs"]] == ids and last["next_offset"] is None
    small = client.get("/jobs", params={"limit": 2, "offset": 1}).json()
    assert [j["id"] for j in small["jobs"]] == ids[1:3] and small["next_offset"] == 3
    too_many = client.get("/jobs", params={"limit": 201})
    assert too_many.status_code == 422 and too_many.json()["field"] == "limit" and too_many.json()["hint"]


def test_a_damaged_row_is_listed_as_damaged_to_its_owner_and_can_be_deleted(tmp_path):
    client, service = make_client(tmp_path / "outputs", auth=USERS)
    good, broken = store_jobs(service.store, tmp_path, 2, owner="alice")
    with sqlite3.connect(service.store.database) as connection:
        connection.execute("UPDATE jobs SET spec = '{not json' WHERE id = ?", (broken,))
    listing = client.get("/jobs", auth=ALICE)
    assert listing.status_code == 200, listing.text
    assert [j["id"] for j in listing.json()["jobs"]] == [good] and listing.json()["total"] == 1
    assert [row["id"] for row in listing.json()["damaged"]] == [broken] and listing.json()["damaged"][0]["reason"]
    assert client.get("/jobs", auth=BOB).json()["damaged"] == [], "another user does not see it"
    opened = client.get(f"/jobs/{broken}", auth=ALICE)
    assert opened.status_code == 409 and "delete" in opened.json()["hint"].lower()
    assert client.delete(f"/jobs/{broken}", auth=BOB).status_code == 404
    assert client.delete(f"/jobs/{broken}", auth=ALICE).status_code == 204
    assert client.get("/jobs", auth=ALICE).json()["damaged"] == []


def test_a_user_over_the_pending_limit_gets_429_and_others_can_still_submit(tmp_path):
    client, service = make_client(tmp_path / "outputs", auth=USERS, max_pending_per_user=2)
    assert [submit(client, {}, auth=ALICE).status_code for _ in range(2)] == [201, 201]
    refused = submit(client, {}, auth=ALICE)
    assert refused.status_code == 429 and refused.json()["error"] and refused.json()["hint"]
    assert submit(client, {}, auth=BOB).status_code == 201
    assert service.store.count(owner="alice") == 2


def test_an_admin_sees_and_manages_every_job_and_users_only_their_own(tmp_path):
    client, _ = make_client(tmp_path / "outputs", auth=USERS, admins=("alice",))
    hers = submit(client, {}, auth=ALICE).json()["id"]
    his = submit(client, {}, auth=BOB).json()["id"]
    assert {j["id"] for j in client.get("/jobs", auth=ALICE).json()["jobs"]} == {hers, his}
    assert [j["id"] for j in client.get("/jobs", auth=BOB).json()["jobs"]] == [his]
    assert (hidden := client.get(f"/jobs/{hers}", auth=BOB)).status_code == 404 and hidden.json()["hint"]
    assert client.post(f"/jobs/{his}/cancel", auth=ALICE).json()["state"] == "cancelled"


# Faults get clear answers, without server paths ----------------------------------------------------------------


def test_a_full_disk_gets_507_with_a_hint_and_no_server_path(tmp_path, monkeypatch):
    client, service = make_client(tmp_path / "outputs")

    def full(*args, **kwargs):
        raise DiskFullError("the job queue", str(service.store.database))

    monkeypatch.setattr(service, "submit", full)
    response = submit(client, {})
    assert response.status_code == 507 and "disk space" in response.json()["hint"]
    assert "queue.sqlite3" in response.json()["error"] and str(tmp_path) not in response.text


def test_a_full_disk_while_the_upload_is_spooled_gets_507(tmp_path, monkeypatch):
    import errno
    import tempfile

    client, _ = make_client(tmp_path / "outputs")
    real = tempfile.NamedTemporaryFile

    class FullDisk:
        def __init__(self, **kwargs) -> None:
            self.file = real(**kwargs)
            self.name = self.file.name

        def write(self, data: bytes) -> int:
            raise OSError(errno.ENOSPC, "No space left on device", self.name)

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            self.file.close()

    monkeypatch.setattr(tempfile, "NamedTemporaryFile", FullDisk)
    response = submit(client, {})
    assert response.status_code == 507 and response.json()["hint"], response.text
    assert str(tmp_path) not in response.text


def test_errors_about_the_upload_name_the_clients_file_not_a_server_path(tmp_path):
    client, _ = make_client(tmp_path / "outputs")
    response = submit(client, {}, image=b"not an image at all", name="holiday.png")
    assert response.status_code == 422 and response.json()["field"] == "image"
    assert "holiday.png" in response.json()["error"], response.text
    assert str(tmp_path) not in response.text and "uploads" not in response.text


def test_a_jobs_stored_error_shows_file_names_not_server_paths(tmp_path):
    out = tmp_path / "outputs"
    client, service = make_client(out)
    job_id = store_jobs(service.store, tmp_path, 1)[0]
    service.store.claim_next()
    service.store.end(job_id, JobState.FAILED, error=f"Could not write {out / 'clip.mp4'}: disk I/O error",
                      hint=f"Check {service.store.root / 'jobs' / job_id}.")
    shown = client.get(f"/jobs/{job_id}").json()
    assert shown["error"] == "Could not write clip.mp4: disk I/O error" and shown["hint"] == f"Check {job_id}."
    assert str(tmp_path) not in client.get("/jobs").text


# Text at the door ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("settings", "field"), [
    ({"prompt": "\ud800"}, "prompt"),
    ({"negative_prompt": "a \udfff b"}, "negative_prompt"),
    ({"use_teacache": "no"}, "settings.use_teacache"),
    ({"lora_fuse": "no"}, "lora_fuse"),
])
def test_text_that_is_not_valid_unicode_and_quoted_booleans_are_refused_and_nothing_is_stored(tmp_path, settings,
                                                                                              field):
    client, service = make_client(tmp_path / "outputs")
    response = submit(client, settings)
    assert response.status_code == 422, response.text
    assert response.json()["field"] == field
    assert service.store.count() == 0 and not any((service.store.root / "images").glob("*"))
    assert client.get("/jobs").status_code == 200


def test_an_edit_with_a_lone_surrogate_is_refused_and_the_job_keeps_its_settings(tmp_path):
    client, _ = make_client(tmp_path / "outputs")
    job_id = submit(client, {"prompt": "a cat"}).json()["id"]
    for body in (b'{"prompt": "\\ud800"}', b'{"use_teacache": "no"}'):
        refused = client.patch(f"/jobs/{job_id}", content=body, headers={"Content-Type": "application/json"})
        assert refused.status_code == 422, refused.text
    assert client.get(f"/jobs/{job_id}").json()["spec"]["settings"]["prompt"] == "a cat"
    assert client.get("/jobs").status_code == 200


# The worker's health, offline docs -----------------------------------------------------------------------------


def test_health_says_whether_the_worker_is_alive_and_needs_a_login(tmp_path):
    client, service = make_client(tmp_path / "outputs", auth=USERS)
    assert client.get("/health").status_code == 401
    before = client.get("/health", auth=ALICE).json()["worker"]
    assert before["alive"] is False and set(before) >= {"alive", "running_here", "last_error", "last_error_at",
                                                         "queue_owner", "queue_note"}
    service.start()
    try:
        assert client.get("/health", auth=ALICE).json()["worker"]["alive"] is True
    finally:
        service.stop()


def test_the_docs_page_loads_everything_from_the_app_itself_without_a_login(tmp_path):
    import re

    service = make_service(tmp_path / "outputs")
    parent = FastAPI()
    parent.mount(API_PREFIX, build_api(service, Settings(output_dir=tmp_path / "outputs", auth=USERS)))
    client = TestClient(parent)
    assert client.get(f"{API_PREFIX}/jobs").status_code == 401, "the docs are open, the jobs are not"
    html = client.get(f"{API_PREFIX}/docs")
    assert html.status_code == 200 and "html" in html.headers["content-type"]
    assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", html.text), "the page loads from another host"
    assets = re.findall(r'(?:src|href)="([^"]+)"', html.text) + re.findall(r"url: '([^']+)'", html.text)
    assert len(assets) == 4, html.text  # the script, the style sheet, the icon and the API's description
    for asset in assets:
        assert asset.startswith(API_PREFIX + "/"), asset
        loaded = client.get(asset)
        assert loaded.status_code == 200 and loaded.content, asset
    assert client.get(f"{API_PREFIX}/redoc").status_code == 401, "no ReDoc page (its bundle fetches a logo)"
    schema = client.get(f"{API_PREFIX}/openapi.json").json()
    assert schema["components"]["securitySchemes"]["login"]["scheme"] == "basic", "the docs offer the login"


# The video of a retried job ------------------------------------------------------------------------------------


def test_the_video_is_the_finished_one_else_the_partial_one_kept_from_an_earlier_attempt(tmp_path):
    out = tmp_path / "outputs"
    client, service = make_client(out)
    store = service.store
    job_id = store_jobs(store, tmp_path, 1)[0]
    final = out / f"{job_id}.mp4"
    partial = out / f"{job_id}.partial.mp4"
    store.claim_next()
    store.set_output(job_id, final)
    partial.write_bytes(b"two sections")
    store.end(job_id, JobState.CANCELLED, partial=partial)
    assert client.get(f"/jobs/{job_id}/video").content == b"two sections"
    assert client.get(f"/jobs/{job_id}").json()["video"] == partial.name
    assert client.post(f"/jobs/{job_id}/retry").json()["state"] == "queued"
    kept = client.get(f"/jobs/{job_id}/video")
    assert kept.status_code == 200 and kept.content == b"two sections", "the retry keeps the earlier partial"
    store.claim_next()
    final.write_bytes(b"all sections")
    store.end(job_id, JobState.FINISHED)
    assert client.get(f"/jobs/{job_id}/video").content == b"all sections"
