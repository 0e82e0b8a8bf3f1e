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
