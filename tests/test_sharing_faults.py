"""No input can stop the shared app for others: invalid Unicode through every door, then a restart.

A prompt holding a lone surrogate (JSON ``"\\ud800"``) used to be stored, and from then on every listing, and
after a restart the page itself, answered 500 for every user. Each text field is now refused at the door, with
its name, and nothing is stored; the test sends broken text through every door that takes text, then restarts
the app on the same output folder and checks the page and the API still load for everyone.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from urllib.parse import quote

import httpx
import numpy as np
from PIL import Image

from bench.ui_latency import start_demo_server
from tests.gradio_http import GradioSession

ALICE, BOB = ("alice", "pw-alice"), ("bob", "pw-bob")
FAST = {"latent_window_size": 3, "steps": 3, "resolution": 64, "seconds": 0.8, "cache": "none"}
BROKEN_TEXTS = ("\ud800", "ok \udfff then", "nul \x00 inside", "\x1b[31m escape")


def png() -> bytes:
    y, x = np.mgrid[0:96, 0:128]
    buffer = io.BytesIO()
    Image.fromarray(np.stack([x % 256, y % 256, (x + y) % 256], -1).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def everything_loads(url: str, output_dir: Path) -> None:
    for login in (ALICE, BOB):
        session = GradioSession(url, login)
        try:
            for path in ("/", "/config"):
                assert session.http.get(path).status_code == 200, (login, path)
            queue_table = session.component_id("queue-table")
            refresh = next(d for d in session.dependencies("load") if queue_table in d["outputs"])
            (done,) = [m for m in session.call(refresh, []) if m["msg"] == "process_completed"]
            assert done["success"], done
        finally:
            session.close()
        with httpx.Client(base_url=url + "api/v1", auth=login, timeout=60) as api:
            assert api.get("/jobs").status_code == 200
            assert api.get("/health").status_code == 200


def test_invalid_text_in_every_field_is_refused_by_name_and_a_restart_still_serves_everyone(tiny_models_dir,
                                                                                            tmp_path):
    logins = ("--auth", "alice:pw-alice", "--auth", "bob:pw-bob")
    image_file = tmp_path / "in.png"
    image_file.write_bytes(png())
    with start_demo_server(tmp_path, models_dir=tiny_models_dir, extra_args=logins) as server:
        api = httpx.Client(base_url=server.url + "api/v1", auth=ALICE, timeout=60)
        submitted = api.post("/jobs", files={"image": ("in.png", png(), "image/png")},
                             data={"settings": json.dumps({**FAST, "seconds": 30.0})})
        assert submitted.status_code == 201, submitted.text
        good = submitted.json()["id"]
        # REST: the settings JSON, a PATCH and a whole spec, for each text field.
        for text in BROKEN_TEXTS:
            for field in ("prompt", "negative_prompt"):
                response = api.post("/jobs", files={"image": ("in.png", png(), "image/png")},
                                    data={"settings": json.dumps({**FAST, field: text})})
                assert response.status_code == 422 and response.json()["field"] == field, response.text
                patched = api.patch(f"/jobs/{good}", content=json.dumps({field: text}),
                                    headers={"content-type": "application/json"})
                assert patched.status_code in (409, 422), patched.text  # 409 once the job is running
                spec = dict(api.get(f"/jobs/{good}").json()["spec"])
                spec["settings"] = {**spec["settings"], field: text}
                response = api.post("/jobs", files={"image": ("in.png", png(), "image/png")},
                                    data={"spec": json.dumps(spec)})
                assert response.status_code == 422, response.text
        # The Gradio doors: /generate, /status, /stop, the page's Start, the Queue tab's job id box.
        session = GradioSession(server.url, ALICE)
        try:
            upload = session.upload(png())
            start = session.chained(session.dependency("start", "click"))  # after the step that disables Start
            for text in BROKEN_TEXTS:
                for position in (1, 10):  # the prompt, the negative prompt
                    settings = [upload, "", "original", 0.8, 1, 3, 10.0, 3, 1.0, 0.0, "", "none", 0.15, 16, 64,
                                None, "auto"]
                    settings[position] = text
                    (failed,) = [m for m in session.call(session.by_api_name("generate"), settings)
                                 if m["msg"] == "process_completed"]
                    assert not failed["success"] and "prompt" in json.dumps(failed), failed
                    untouched_story = [None] * (len(start["inputs"]) - len(settings))  # the Story panel's inputs
                    shown = json.dumps([m.get("output") for m in session.call(start, settings + untouched_story)])
                    assert "prompt:" in shown and "Unicode" in shown or "control character" in shown, shown[:500]
                (status,) = [m for m in session.call(session.by_api_name("status"), [text])
                             if m["msg"] == "process_completed"]
                assert not status["success"] and "Unknown job id" in json.dumps(status), status
                (stopped,) = [m for m in session.call(session.by_api_name("stop"), [text])
                              if m["msg"] == "process_completed"]
                assert stopped["output"]["data"] == [False], stopped
                note = json.dumps(session.fire("queue-delete", "click", [text, 1])["output"])
                assert "There is no such job" in note, note
        finally:
            session.close()
        # Logins with broken names: refused, and the app stays up.
        for text in BROKEN_TEXTS:
            form = f"username={quote(text, errors='surrogatepass')}&password=x".encode()
            login = httpx.post(server.url + "login", content=form, timeout=30,
                               headers={"content-type": "application/x-www-form-urlencoded"})
            assert login.status_code in (400, 401, 422, 429), login.text
            refused = httpx.get(server.url + "api/v1/jobs", auth=(text.encode("utf-8", "surrogatepass"), b"x"),
                                timeout=30)
            assert refused.status_code in (401, 429), refused.text
        stored = [job["spec"]["settings"]["prompt"] for job in api.get("/jobs").json()["jobs"]]
        assert stored == [""], "nothing broken was stored"
        everything_loads(server.url, server.output_dir)
        api.post(f"/jobs/{good}/cancel")
        api.close()

    with start_demo_server(tmp_path, models_dir=tiny_models_dir, extra_args=logins) as restarted:
        everything_loads(restarted.url, restarted.output_dir)


def test_a_damaged_queue_database_is_moved_aside_and_the_app_starts_and_says_so(tiny_models_dir, tmp_path):
    database = tmp_path / "outputs" / ".queue" / "queue.sqlite3"
    database.parent.mkdir(parents=True)
    database.write_bytes(b"this is not a database" * 100)
    with start_demo_server(tmp_path, models_dir=tiny_models_dir) as server:
        (moved,) = database.parent.glob("queue.sqlite3.damaged-*")
        assert moved.read_bytes() == b"this is not a database" * 100, "kept, never deleted"
        health = httpx.get(server.url + "api/v1/health", timeout=30).json()["worker"]
        assert moved.name in health["queue_note"] and health["alive"] and health["running_here"]
        assert moved.name in server.log()
        session = GradioSession(server.url)
        try:
            health_note = session.component_id("worker-health")
            refresh = next(d for d in session.dependencies("load") if health_note in d["outputs"])
            (done,) = [m for m in session.call(refresh, []) if m["msg"] == "process_completed"]
            assert moved.name in json.dumps(done["output"]), "the page says so too"
        finally:
            session.close()
        assert httpx.get(server.url + "api/v1/jobs", timeout=30).json()["jobs"] == []
