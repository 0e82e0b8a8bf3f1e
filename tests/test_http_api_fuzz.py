"""Fuzzing the HTTP job API from its own OpenAPI description (schemathesis): no input gives a server error.

Every operation gets generated requests: path ids, query strings, multipart bodies with random "images", settings
and specs, with and without the login. The job service is not started, so submitted jobs stay queued and the run
measures the API alone.
"""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402

from app.http_api import build_api  # noqa: E402
from app.service import GenerationService  # noqa: E402
from app.settings import Settings  # noqa: E402
from framepack_core.job_queue import JobQueue  # noqa: E402

EXAMPLES_PER_OPERATION = 60


@pytest.fixture(scope="module")
def fuzzed_app(tmp_path_factory):
    out = tmp_path_factory.mktemp("fuzz") / "outputs"

    def no_engine():  # the service is never started: nothing runs
        raise AssertionError("the fuzzed service must not run jobs")

    service = GenerationService(no_engine, out, queue=JobQueue.for_output_dir(out))
    return build_api(service, Settings(output_dir=out, auth=(("fuzz", "secret"),), max_file_size_mb=1.0))


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
        def check(case) -> None:  # noqa: ANN001
            for auth in (("fuzz", "secret"), None):
                response = case.call(auth=auth)
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                calls[operation.label] = calls.get(operation.label, 0) + 1
                case.validate_response(response, checks=[not_a_server_error])
                assert response.status_code < 500, (case.method, case.path, response.status_code, response.text[:300])

        check()
    assert len(calls) == 9, calls
    print(f"fuzzed {sum(calls.values())} requests over {len(calls)} operations; status codes: {sorted(statuses.items())}")
