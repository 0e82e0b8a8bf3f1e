"""Fuzzing the HTTP job API from its own OpenAPI description (schemathesis): no input gives a server error.

Every operation gets generated requests: path ids, query strings, multipart bodies with random "images", settings
and specs, with and without the login. The job service is not started, so submitted jobs stay queued and the run
measures the API alone.
"""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from app.api.routes import build_api
from app.logins import FAILURE_WINDOW_S, LoginGuard
from app.service.generation import GenerationService
from app.settings import Settings
from framepack_core.jobs.queue import JobQueue

EXAMPLES_PER_OPERATION = 60


@pytest.fixture(scope="module")
def fuzzed_app(tmp_path_factory):
    out = tmp_path_factory.mktemp("fuzz") / "outputs"

    def no_engine():  # the service is never started: nothing runs
        raise AssertionError("the fuzzed service must not run jobs")

    service = GenerationService(no_engine, out, queue=JobQueue.for_output_dir(out))
    users = (("fuzz", "secret"),)
    return build_api(service, Settings(output_dir=out, auth=users, max_file_size_mb=1.0),
                     guard=LoginGuard(users, clock=ClockPastEveryWindow()))


class ClockPastEveryWindow:
    """The fuzzer sends wrong logins on purpose; on a clock that moves past the failure window at every reading
    they never add up to a back-off, which would answer everything after them with 429 and test nothing."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += FAILURE_WINDOW_S + 1
        return self.now


def test_no_generated_request_gets_a_server_error(fuzzed_app):
    from hypothesis import given

    schema = schemathesis.openapi.from_asgi("/openapi.json", fuzzed_app)
    calls: dict[str, int] = {}
    statuses: dict[int, int] = {}
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def check(case) -> None:
            for auth in (("fuzz", "secret"), None):
                response = case.call(auth=auth)
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                label = operation.label  # noqa: B023 - check() runs at once, within this iteration
                calls[label] = calls.get(label, 0) + 1
                case.validate_response(response, checks=[not_a_server_error])
                assert response.status_code < 500, (case.method, case.path, response.status_code, response.text[:300])

        check()
    assert len(calls) == 16, calls  # the job routes (re-roll among them), the four batch routes, health, loras
    print(f"fuzzed {sum(calls.values())} requests over {len(calls)} operations; status codes: {sorted(statuses.items())}")


BROKEN_TEXTS = ("\ud800", "a cat \udfff", "\udc80\ud800", "x" * 10 + "\udbff")


def _text_settings() -> list[str]:
    """Every generation setting that holds text (a str, or a str enum such as the model)."""
    from dataclasses import fields

    from framepack_core.jobs.spec import SETTINGS_FIELDS
    from framepack_core.request import GenerationRequest

    return [f.name for f in fields(GenerationRequest) if f.name in SETTINGS_FIELDS and isinstance(f.default, str)]


def test_invalid_unicode_in_every_text_field_is_refused_naming_it_and_nothing_is_stored(fuzzed_app):
    import io
    import json

    import numpy as np
    from fastapi.testclient import TestClient
    from PIL import Image

    client, login = TestClient(fuzzed_app), ("fuzz", "secret")
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(buffer, format="PNG")
    image = ("input.png", buffer.getvalue(), "image/png")
    text_fields = _text_settings()
    assert {"prompt", "negative_prompt", "model", "sampler_variant"} <= set(text_fields)
    stored = client.post("/jobs", files={"image": image}, data={"settings": "{}"}, auth=login)
    assert stored.status_code == 201, stored.text
    job = stored.json()
    before = client.get("/jobs", auth=login).json()["total"]
    answers = stored_as_latin1 = 0
    for name in text_fields:
        for text in BROKEN_TEXTS:
            settings_json = json.dumps({name: text})  # ASCII: "\ud800" travels as an escape, as a client sends it
            spec = dict(job["spec"], settings={**job["spec"]["settings"], name: text})
            for data in ({"settings": settings_json}, {"spec": json.dumps(spec)}):
                response = client.post("/jobs", files={"image": image}, data=data, auth=login)
                assert response.status_code == 422, (name, text, data, response.text)
                assert response.json()["field"].endswith(name), response.json()
                answers += 1
            edit = client.patch(f"/jobs/{job['id']}", content=settings_json.encode(), auth=login,
                                headers={"Content-Type": "application/json"})
            assert edit.status_code == 422 and edit.json()["field"].endswith(name), edit.text
            answers += 1
        # Bytes that are not UTF-8 at all. In a JSON body they are refused; in a form field Starlette reads them
        # as Latin-1, which is valid text (mojibake, but nothing that can break a listing), so they may be stored.
        raw = b'{"' + name.encode() + b'": "\xff\xfe"}'
        edit = client.patch(f"/jobs/{job['id']}", content=raw, auth=login, headers={"Content-Type": "application/json"})
        assert edit.status_code == 400 and "UTF-8" in edit.json()["hint"], (name, edit.status_code, edit.text)
        form = client.post("/jobs", files={"image": image, "settings": (None, raw)}, auth=login)
        assert form.status_code in (201, 422), (name, form.status_code, form.text)
        stored_as_latin1 += form.status_code == 201
        answers += 2
    unreadable_login = {"Authorization": "Basic " + __import__("base64").b64encode(b"\xff\xfe:secret").decode()}
    assert client.get("/jobs", headers=unreadable_login).status_code == 401
    listing = client.get("/jobs", auth=login)
    assert listing.status_code == 200 and listing.json()["total"] == before + stored_as_latin1 and listing.json()["damaged"] == []
    assert client.get(f"/jobs/{job['id']}", auth=login).json()["spec"] == job["spec"]
    print(f"refused {answers} requests with broken text in {len(text_fields)} text fields: {text_fields}")
