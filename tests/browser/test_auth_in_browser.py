"""With ``--auth``, the page asks for a login before showing anything, and only the right password opens it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.ui_latency import DemoServer, start_demo_server

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def auth_server(tiny_models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoServer]:
    work = tmp_path_factory.mktemp("auth-server")
    auth_file = work / "users.txt"
    auth_file.write_text("# one USER:PASS per line\nalice:s3cret:with:colons\nbob:hunter2\n")
    with start_demo_server(work, models_dir=tiny_models_dir, extra_args=("--auth-file", str(auth_file))) as server:
        yield server


def test_the_login_page_is_shown_when_auth_is_given_and_only_valid_users_get_in(chromium, auth_server, shoot):
    context = chromium.new_context(viewport={"width": 1280, "height": 720})
    try:
        page = context.new_page()
        page.goto(auth_server.url)
        page.get_by_label("username").wait_for()
        assert page.locator("#start").count() == 0
        assert "FramePack: log in to continue." in page.content()
        shoot(page, "08-login-page")

        page.get_by_label("username").fill("bob")
        page.get_by_label("password").fill("wrong")
        page.get_by_role("button", name="Login").click()
        page.get_by_text("Incorrect Credentials").wait_for()
        assert page.locator("#start").count() == 0

        page.get_by_label("username").fill("alice")
        page.get_by_label("password").fill("s3cret:with:colons")
        page.get_by_role("button", name="Login").click()
        page.wait_for_selector("#start")
        assert page.locator("#demo-banner").is_visible()
    finally:
        context.close()


def test_files_are_not_served_without_logging_in(auth_server):
    import urllib.error
    import urllib.request

    url = auth_server.url + "gradio_api/file=" + str(auth_server.output_dir)
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url, timeout=10)
    assert refused.value.code in (401, 403)


def test_the_readme_api_script_needs_the_login_and_then_makes_the_video(auth_server, tmp_path):
    """examples/api_client.py (the README's script) against the launched app: same logins as the page."""
    import subprocess
    import sys

    from framepack_core.media.video_io import probe_video

    repo = Path(__file__).parents[2]
    command = [sys.executable, str(repo / "examples" / "api_client.py"), str(repo / "assets" / "chelsea_landscape.jpg"),
               "The cat turns its head", "--url", auth_server.url + "api/v1", "--out", str(tmp_path / "result.mp4")]
    refused = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert refused.returncode != 0 and "401" in refused.stderr, refused.stderr
    done = subprocess.run(command + ["--login", "bob:hunter2"], capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "finished" in done.stdout and f"saved {tmp_path / 'result.mp4'}" in done.stdout
    assert probe_video(tmp_path / "result.mp4").frame_count > 0
    openapi = subprocess.run([sys.executable, "-c", f"import httpx; r = httpx.get('{auth_server.url}api/v1/openapi.json');"
                              " print(r.status_code, sorted(r.json()['paths']))"],
                             capture_output=True, text=True, timeout=60, check=False)
    assert openapi.stdout.startswith("200") and "/jobs/{job_id}/events" in openapi.stdout, openapi.stdout
