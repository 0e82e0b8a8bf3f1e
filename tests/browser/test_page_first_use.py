"""What a new user meets first, in a real Chromium against ``launch.py --demo``: Start, the prompt, the image and the
video in view without scrolling, one job per click however fast the clicks, the form back after a reload, and a bad
file refused as soon as it is dropped.

The layout tests save what the window shows (not the whole page) in test-artifacts/, named by the window size.
"""

from __future__ import annotations

import io
import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from bench.ui_latency import CACHE_LABELS, IMAGE, page_state, set_job_inputs, wait_for_state
from tests.browser.conftest import ARTIFACTS
from tests.gradio_http import GradioSession

pytestmark = pytest.mark.browser

FAST = {"steps": 3, "window": 3, "resolution": 64, "teacache": False}
LONG_SECONDS = 40  # about a minute of sections: long enough to act while it runs; every test stops it
# Why each element must be in view: what a new user looks for first.
FIRST_VIEW = {"#start-image": "the start image", "#prompt": "the prompt", "#start": "Start",
              "#video": "the video", "#progress": "the progress"}


def _window_shot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path))  # the window only: what is seen without scrolling
    return path


def _out_of_view(page: Any, selectors: dict[str, str]) -> list[str]:
    viewport = page.viewport_size
    missing = []
    for selector, what in selectors.items():
        box = page.locator(selector).bounding_box()
        if box is None or box["x"] < 0 or box["y"] < 0 or box["x"] + box["width"] > viewport["width"] + 0.5 \
                or box["y"] + box["height"] > viewport["height"] + 0.5:
            missing.append(f"{what} ({selector}) at {box} in a {viewport['width']}x{viewport['height']} window")
    return missing


def _jobs_with_prompt(server_url: str, prompt: str) -> list[dict[str, Any]]:
    response = httpx.get(server_url + "api/v1/jobs", params={"limit": 200}, timeout=30)
    response.raise_for_status()
    return [job for job in response.json()["jobs"] if job["spec"]["settings"]["prompt"] == prompt]


def _stop_all(server_url: str, jobs: list[dict[str, Any]]) -> None:
    for job in jobs:
        httpx.post(f"{server_url}api/v1/jobs/{job['id']}/cancel", timeout=30)


@pytest.mark.parametrize("width, height", [(1366, 768), (1920, 1080)])
def test_a_new_user_sees_the_image_the_prompt_start_and_the_video_without_scrolling(chromium, demo_server,
                                                                                   width, height):
    context = chromium.new_context(viewport={"width": width, "height": height})
    try:
        page = context.new_page()
        page.goto(demo_server.url)
        page.wait_for_selector("#start")
        page.wait_for_function("() => document.querySelector('#progress .fp-progress') !== null")
        assert page.evaluate("window.scrollY") == 0
        _window_shot(page, f"11-first-view-{width}x{height}")
        assert not _out_of_view(page, FIRST_VIEW)
    finally:
        context.close()


def test_while_a_job_runs_its_preview_and_video_stay_in_view_beside_start(chromium, demo_server):
    context = chromium.new_context(viewport={"width": 1366, "height": 768})
    page = context.new_page()
    try:
        page.goto(demo_server.url)
        page.wait_for_selector("#start")
        set_job_inputs(page, image=IMAGE, prompt="in view while it runs", seconds=LONG_SECONDS, seed=21, **FAST)
        page.locator("#start").scroll_into_view_if_needed()  # where a user who set the settings below Start is
        page.click("#start")
        wait_for_state(page, ("running",))
        page.wait_for_selector("#preview img")
        page.wait_for_function("() => { const v = document.querySelector('#video video');"
                               " return v && v.getAttribute('src'); }", timeout=30_000)
        _window_shot(page, "12-running-1366x768")
        assert not _out_of_view(page, {"#start": "Start", "#stop": "Stop", "#preview": "the preview",
                                       "#video": "the video", "#progress": "the progress"})
    finally:
        page.click("#stop")
        wait_for_state(page, ("cancelled", "finished", "failed"), timeout_s=30)
        context.close()


def test_a_double_click_on_start_makes_one_job(page, demo_server):
    prompt = f"double click {uuid.uuid4().hex[:8]}"
    set_job_inputs(page, image=IMAGE, prompt=prompt, seconds=LONG_SECONDS, seed=22, **FAST)
    try:
        page.dblclick("#start")
        assert wait_for_state(page, ("running", "queued")) in ("running", "queued")
        assert not page.locator("#start").is_enabled()
        page.wait_for_timeout(1500)  # time for a second job to show up, were there one
        jobs = _jobs_with_prompt(demo_server.url, prompt)
        assert len(jobs) == 1, jobs
        assert page.locator("#progress .fp-progress").get_attribute("data-job") == jobs[0]["id"]
    finally:
        _stop_all(demo_server.url, _jobs_with_prompt(demo_server.url, prompt))
        wait_for_state(page, ("cancelled", "finished", "failed"), timeout_s=30)


def test_two_starts_with_the_same_inputs_from_one_page_follow_one_job(demo_server):
    """The Start handler itself, called twice at once as a double click that gets past the disabled button would:
    the second follows the first job. Other settings, or another page, still make a job of their own."""
    prompt = f"same intent {uuid.uuid4().hex[:8]}"
    session, other_page = GradioSession(demo_server.url), GradioSession(demo_server.url)
    try:
        upload = session.upload(IMAGE.read_bytes(), "chelsea.jpg")
        start = session.chained(session.dependency("start", "click"))
        settings = [upload, prompt, "original", 1, 23, 3, 10.0, 3, 1.0, 0.0, "", "none", 0.15, 16, 64, None, "auto"]
        settings += [None] * (len(start["inputs"]) - len(settings))  # the Story panel's inputs, untouched
        shown = session.call_at_once(start, [settings, settings])
        jobs = _jobs_with_prompt(demo_server.url, prompt)
        assert len(jobs) == 1, jobs
        # The Start handled last supersedes the other's stream, and shows the one job.
        assert f'data-job=\\"{jobs[0]["id"]}\\"' in json.dumps(shown)

        other_seed = [*settings[:4], 24, *settings[5:]]
        session.call(start, other_seed)
        other_page.call(other_page.chained(other_page.dependency("start", "click")),
                        [other_page.upload(IMAGE.read_bytes(), "chelsea.jpg"), *settings[1:]])
        assert len(_jobs_with_prompt(demo_server.url, prompt)) == 3
    finally:
        session.close()
        other_page.close()
        _stop_all(demo_server.url, _jobs_with_prompt(demo_server.url, prompt))


def test_reloading_mid_job_brings_back_its_image_prompt_and_settings(page, demo_server):
    set_job_inputs(page, image=IMAGE, prompt="bring me back", seconds=LONG_SECONDS, seed=25, **FAST)
    page.click("#start")
    wait_for_state(page, ("running", "queued"))
    job = page.locator("#progress .fp-progress").get_attribute("data-job")
    try:
        page.reload()
        page.wait_for_selector("#start")
        page.wait_for_function("() => document.querySelector('#prompt textarea').value === 'bring me back'")
        # The form comes back in a quick first step; the job's stream reconnects right after it.
        page.wait_for_function(f"() => document.querySelector('#progress .fp-progress')?.dataset.job === '{job}'",
                               timeout=30_000)
        assert page.locator("#seed input").input_value() == "25"
        assert float(page.locator("#seconds input[type=number]").input_value()) == LONG_SECONDS
        assert float(page.locator("#steps input[type=number]").input_value()) == 3
        page.wait_for_selector("#start-image img")
        page.click("#advanced button.label-wrap")
        assert float(page.locator("#window input[type=number]").input_value()) == 3
        assert float(page.locator("#resolution input[type=number]").input_value()) == 64
        assert page.locator("#cache input").input_value() == CACHE_LABELS[False]
        _window_shot(page, "13-form-restored-after-reload")
    finally:
        page.click("#stop")
        wait_for_state(page, ("cancelled", "finished", "failed"), timeout_s=30)


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((height, width, 3), 128, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("name, data, says", [
    ("holiday.png", b"this is not an image at all", "not an image file"),
    ("icon.png", _png(32, 32), "the minimum is 64 px"),
    ("banner.png", _png(16500, 64), "over the limit"),
])
def test_a_dropped_file_that_cannot_be_used_is_refused_at_once(page, tmp_path, name, data, says):
    dropped = tmp_path / name
    dropped.write_bytes(data)
    page.set_input_files("#start-image input[type=file]", str(dropped))
    page.wait_for_function(f"() => document.querySelector('#image-check').innerText.includes({name!r})")
    note = page.locator("#image-check").inner_text()
    assert says in note and "How to fix" in note and "/tmp/" not in note, note
    page.wait_for_function("() => document.querySelector('#start-image img') === null")  # no broken picture
    _window_shot(page, f"14-dropped-{Path(name).stem}-refused")
    assert page_state(page) != "refused"  # nothing was submitted

    set_job_inputs(page, image=IMAGE)
    page.wait_for_function("() => document.querySelector('#image-check').innerText.trim() === ''")
