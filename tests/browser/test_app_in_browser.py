"""The page in a real Chromium against ``launch.py --demo``: a run streams, Stop keeps work, errors read well.

Every job here uses the tiny models at base resolution 64 with window 3 and 3 steps, so a section takes well
under a second on two CPU cores and the whole module runs in about a minute.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from bench.ui_latency import (
    CACHE_LABELS,
    IMAGE,
    RECORDER_JS,
    page_state,
    recorded_events,
    set_job_inputs,
    set_number,
    start_job,
    wait_for_state,
)
from framepack_core.jobs.output_description import read_output_description
from framepack_core.media.video_io import probe_video, read_video_frames
from framepack_core.sampling.schedule import video_length

pytestmark = pytest.mark.browser

FAST = {"steps": 3, "window": 3, "resolution": 64, "teacache": False}
# Long enough (100 sections, about a minute) that a test can act at leisure while it runs; every test stops its
# long jobs after a few seconds.
LONG_SECONDS = 40

VIDEO_SRC_JS = "() => { const v = document.querySelector('#video video'); return v && v.getAttribute('src'); }"


def _wait_for_section_video(page: Any, timeout_s: float = 30) -> str:
    page.wait_for_function(f"({VIDEO_SRC_JS})() !== null && ({VIDEO_SRC_JS})() !== ''", timeout=timeout_s * 1000)
    return page.evaluate(VIDEO_SRC_JS)


def _run_to_end(page: Any) -> str:
    start_job(page)
    return wait_for_state(page, ("finished", "failed", "cancelled"))


def _download_final_video(page: Any, folder: Path) -> Path:
    link = page.locator("#final-file a").first
    with page.expect_download() as info:
        link.click()
    download = info.value
    path = folder / download.suggested_filename
    download.save_as(path)
    return path


def _progress_text(page: Any) -> str:
    return page.locator("#progress").inner_text()


def test_a_run_streams_previews_and_section_videos_and_the_final_mp4_downloads_with_every_frame(page, tmp_path, shoot):
    assert "demo mode: random tiny weights, the video is noise" in page.locator("#demo-banner").inner_text()
    set_job_inputs(page, image=IMAGE, prompt="The cat turns its head", seconds=1.6, seed=11, **FAST)
    page.evaluate(RECORDER_JS)

    page.click("#start")
    _wait_for_section_video(page)
    shoot(page, "01-run-first-section-video")
    assert wait_for_state(page, ("finished", "failed", "cancelled")) == "finished", _progress_text(page)
    shoot(page, "02-run-finished")

    events = recorded_events(page)
    finished_at = min(e["t"] for e in events if e["kind"] == "state" and e["value"] == "finished")
    previews = {e["value"] for e in events if e["kind"] == "preview" and e["t"] < finished_at}
    section_videos = [e for e in events if e["kind"] == "video" and e["t"] < finished_at]
    assert len(previews) >= 2, f"the preview should change while sampling: {events}"
    assert section_videos, f"a section video should appear before the job ends: {events}"
    # 4 sections: each one is shown as soon as it is written, under its own name.
    assert len({e["value"] for e in section_videos}) >= 2
    text = _progress_text(page)
    assert "Finished" in text and "section 4/4" in text and "step 3/3" in text
    assert "Note: Memory plan on " in text and "everything on the CPU" in text, text

    expected = video_length(1.6, 3).pixel_frames
    video = _download_final_video(page, tmp_path)
    assert video.suffix == ".mp4" and "seed11" in video.name
    assert probe_video(video).frame_count == expected
    frames = read_video_frames(video)
    assert frames.shape[0] == expected and frames.shape[-1] == 3
    assert page.locator("#start").is_enabled() and not page.locator("#stop").is_enabled()


def test_stop_mid_run_keeps_a_playable_partial_video_and_the_next_run_works(page, demo_server, tmp_path, shoot):
    set_job_inputs(page, image=IMAGE, prompt="stop me", seconds=LONG_SECONDS, seed=12, **FAST)
    page.click("#start")
    _wait_for_section_video(page)
    assert page_state(page) == "running" and page.locator("#stop").is_enabled()
    assert not page.locator("#start").is_enabled()

    page.click("#stop")
    stop_clicked = time.monotonic()
    assert wait_for_state(page, ("cancelled", "finished", "failed"), timeout_s=15) == "cancelled"
    # One step plus the section decode in progress; far less than the 20 sections left.
    assert time.monotonic() - stop_clicked < 8
    shoot(page, "03-stopped-with-partial-video")
    assert "partial video was kept" in _progress_text(page)
    assert page.evaluate(VIDEO_SRC_JS), "the partial video should stay in the player"

    partial = _download_final_video(page, tmp_path)
    assert partial.name.endswith(".partial.mp4")
    info = probe_video(partial)
    assert 0 < info.frame_count < video_length(LONG_SECONDS, 3).pixel_frames
    assert read_video_frames(partial).shape[0] == info.frame_count
    # The partial video describes itself (mp4 metadata, and the sidecar next to it in the output folder).
    sidecar = json.loads((demo_server.output_dir / partial.name.replace(".mp4", ".json")).read_text())
    assert sidecar["kind"] == "framepack-output" and sidecar["spec"]["settings"]["seed"] == 12
    assert read_output_description(partial).spec.settings["seed"] == 12

    # Ready again: a second run on the same page finishes.
    assert page.locator("#start").is_enabled()
    set_number(page, "seconds", 1)
    assert _run_to_end(page) == "finished", _progress_text(page)
    second = _download_final_video(page, tmp_path / "second")
    assert probe_video(second).frame_count == video_length(1, 3).pixel_frames


def _dropped_image_note(page: Any, path: Path) -> str:
    page.set_input_files("#start-image input[type=file]", str(path))
    page.wait_for_function(f"() => document.querySelector('#image-check').innerText.includes({path.name!r})")
    return page.locator("#image-check").inner_text()


def test_broken_images_show_a_readable_error_when_dropped_and_the_app_stays_usable(page, tmp_path, shoot):
    not_an_image = tmp_path / "holiday.png"
    not_an_image.write_bytes(b"this is not an image at all")
    note = _dropped_image_note(page, not_an_image)
    assert "not an image file" in note and "How to fix" in note
    assert "Traceback" not in note and "/tmp/" not in note  # the upload's server path stays out of it
    assert page.locator("#start-image img").count() == 0  # taken out of the box, no broken picture left
    shoot(page, "04-broken-image-refused")

    # Start with the box empty: refused in the progress box, and the page is ready again.
    set_job_inputs(page, prompt="nothing", seconds=1, **FAST)
    page.click("#start")
    assert wait_for_state(page, ("refused",), timeout_s=15) == "refused"
    assert "start image" in _progress_text(page) and "How to fix" in _progress_text(page)

    # A JPEG whose header is fine but whose data stops half-way: the job's own image check refuses it on drop.
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(IMAGE.read_bytes()[:2000])
    assert "truncated or corrupt" in _dropped_image_note(page, truncated)
    assert page.locator("#start").is_enabled() and not page.locator("#stop").is_enabled()

    set_job_inputs(page, image=IMAGE)
    assert _run_to_end(page) == "finished", _progress_text(page)


def test_reloading_the_page_reconnects_to_the_running_job(page, shoot):
    set_job_inputs(page, image=IMAGE, prompt="reload me", seconds=LONG_SECONDS, seed=13, **FAST)
    page.click("#start")
    _wait_for_section_video(page)
    job = page.locator("#progress .fp-progress").get_attribute("data-job")

    page.reload()
    page.wait_for_selector("#start")
    assert wait_for_state(page, ("running",), timeout_s=15) == "running"
    assert page.locator("#progress .fp-progress").get_attribute("data-job") == job
    _wait_for_section_video(page)  # the video so far is back, and keeps growing
    assert page.locator("#stop").is_enabled() and not page.locator("#start").is_enabled()
    shoot(page, "05-reconnected-after-reload")

    page.click("#stop")
    assert wait_for_state(page, ("cancelled",), timeout_s=15) == "cancelled"


def test_a_second_tab_sees_its_place_in_the_queue(page, chromium, demo_server, shoot):
    set_job_inputs(page, image=IMAGE, prompt="first", seconds=LONG_SECONDS, seed=14, **FAST)
    page.click("#start")
    wait_for_state(page, ("running",))
    first_job = page.locator("#progress .fp-progress").get_attribute("data-job")

    other = chromium.new_context(viewport={"width": 1400, "height": 1100}).new_page()
    try:
        other.goto(demo_server.url)
        other.wait_for_selector("#start")
        # The new tab shows the job that is running, and may still queue its own.
        assert wait_for_state(other, ("running",), timeout_s=60) == "running"
        assert other.locator("#start").is_enabled()
        set_job_inputs(other, image=IMAGE, prompt="second", seconds=1, seed=15, **FAST)
        second_job = start_job(other, other_than=(first_job,))
        assert second_job != first_job
        assert wait_for_state(other, ("queued",), timeout_s=60) == "queued"
        # A frame of the replaced stream may still be in flight and draw the other job once; the page draws its
        # own job again within PAGE_REDRAW_INTERVAL_S (2 s), which is the promise checked here.
        other.wait_for_function("() => document.querySelector('#progress').innerText.includes('Place in the queue: 1')",
                                timeout=5000)
        # The frames of the stream it replaced (the other tab's job) must not draw over it, even later.
        other.wait_for_timeout(3000)
        assert page_state(other) == "queued"
        assert other.locator("#progress .fp-progress").get_attribute("data-job") == second_job
        shoot(other, "06-second-tab-queued")

        other.click("#stop")  # drops the queued job, not the other tab's
        assert wait_for_state(other, ("cancelled",), timeout_s=60) == "cancelled"
        assert "Stopped before it started" in _progress_text(other)
        assert page_state(page) == "running"
    finally:
        other.context.close()
        page.click("#stop")
        wait_for_state(page, ("cancelled", "finished", "failed"), timeout_s=60)
    assert page_state(page) == "cancelled"


def test_clicking_a_past_generation_loads_its_settings_back(page, shoot):
    set_job_inputs(page, image=IMAGE, prompt="a remembered prompt", seconds=1, seed=4242, **FAST)
    assert _run_to_end(page) == "finished", _progress_text(page)
    page.reload()
    page.wait_for_selector("#gallery button.thumbnail-item")
    assert page.locator("#prompt textarea").input_value() == ""

    page.locator("#gallery button.thumbnail-item").first.click()  # newest first
    page.wait_for_function("() => document.querySelector('#prompt textarea').value === 'a remembered prompt'")
    assert page.locator("#seed input").input_value() == "4242"
    assert float(page.locator("#seconds input[type=number]").input_value()) == 1
    assert float(page.locator("#steps input[type=number]").input_value()) == 3
    page.click("#advanced button.label-wrap")
    assert float(page.locator("#window input[type=number]").input_value()) == 3
    assert float(page.locator("#resolution input[type=number]").input_value()) == 64
    assert page.locator("#cache input").input_value() == CACHE_LABELS[False]
    assert page.locator("#start-image img").count() == 1
    assert "Loaded the settings of" in page.locator("#loaded-note").inner_text()
    shoot(page, "07-settings-loaded-from-gallery")


def test_loading_settings_from_a_video_fills_the_form_and_a_bad_file_reads_well(page, demo_server, tmp_path, shoot):
    made = max(demo_server.output_dir.glob("*_seed4242.mp4"), key=lambda p: p.stat().st_mtime, default=None)
    assert made is not None, "the gallery test should have made a seed 4242 video"
    video = tmp_path / "made_elsewhere.mp4"  # no sidecar next to it: the settings come from the mp4 itself
    video.write_bytes(made.read_bytes())
    page.reload()
    page.wait_for_selector("#load-from-video")
    assert page.locator("#prompt textarea").input_value() == ""

    page.set_input_files("#load-from-video input[type=file]", str(video))
    page.wait_for_function("() => document.querySelector('#prompt textarea').value === 'a remembered prompt'")
    assert page.locator("#seed input").input_value() == "4242"
    assert float(page.locator("#steps input[type=number]").input_value()) == 3
    page.click("#advanced button.label-wrap")
    assert float(page.locator("#resolution input[type=number]").input_value()) == 64
    assert page.locator("#cache input").input_value() == CACHE_LABELS[False]
    assert "Loaded the settings of" in page.locator("#loaded-note").inner_text()
    shoot(page, "09-settings-loaded-from-a-video")

    broken = tmp_path / "holiday.mp4"
    broken.write_bytes(b"this is not a video")
    page.locator("#load-from-video button[aria-label='Clear']").first.click()
    page.set_input_files("#load-from-video input[type=file]", str(broken))
    page.wait_for_function("() => document.querySelector('#loaded-note').innerText.includes('holiday.mp4')")
    note = page.locator("#loaded-note").inner_text()
    assert "is not a video file" in note and "How to fix" in note and "/tmp/" not in note
    assert page.locator("#seed input").input_value() == "4242"  # the form is left as it was
    set_job_inputs(page, image=IMAGE, prompt="still usable", seconds=1)
    assert _run_to_end(page) == "finished", _progress_text(page)


def test_no_folder_of_ours_is_served_by_path_not_even_the_output_folder(demo_server):
    """The page gets each video as a served copy in Gradio's cache; by path, nothing of ours is served (the output
    folder holds every user's videos and the queue: docs/security.md)."""
    outputs = sorted(demo_server.output_dir.glob("*.mp4"))
    assert outputs, "an earlier test should have written a video"

    def status(path: Path) -> int:
        url = demo_server.url + "gradio_api/file=" + urllib.parse.quote(str(path))
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return response.status
        except urllib.error.HTTPError as error:
            return error.code

    private_files = [outputs[0], *demo_server.output_dir.glob(".queue/*.sqlite3"), Path("/etc/passwd"),
                     Path(__file__).resolve(), IMAGE]
    for private in private_files:
        assert status(private) in (403, 404), private


def test_the_generate_api_endpoint_returns_the_final_video_and_the_rest_apis_status_to_gradio_client(demo_server):
    """/generate, /status and /stop for gradio_client; a status is the object GET /api/v1/jobs/{id} returns."""
    from gradio_client import Client, handle_file

    client = Client(demo_server.url, verbose=False)
    assert {"/generate", "/status", "/stop"} <= set(client.view_api(print_info=False,
                                                                     return_format="dict")["named_endpoints"])
    video, status = client.predict(handle_file(str(IMAGE)), "The cat turns its head", seconds=1, steps=3,
                                   latent_window_size=3, resolution=64, seed=7, cache="none",
                                   api_name="/generate")
    assert status["state"] == "finished" and status["video_frames"] == video_length(1, 3).pixel_frames
    assert probe_video(Path(video)).frame_count == status["video_frames"]
    with urllib.request.urlopen(f"{demo_server.url}api/v1/jobs/{status['id']}", timeout=30) as response:
        rest_status = json.loads(response.read())
    assert rest_status["state"] == "finished" and status.keys() == rest_status.keys()
    assert client.predict(status["id"], api_name="/status") == rest_status
    assert client.predict(status["id"], api_name="/stop") is False  # already done
