"""The LoRA accordion in a real Chromium against ``launch.py --demo --loras-dir``: pick a LoRA, set its weight and
Fuse, Start, and check the spec the page submitted; Refresh follows the folder (down to its empty state); loading
the video back sets the weights again.

What is checked is what the page submitted: the job's spec as ``GET /api/v1/jobs/{id}`` returns it (``inputs.loras``
by SHA-256 and weight, ``lora_fuse``). Screenshots of the open accordion at 1366x768 and 1920x1080 go to
``test-artifacts/`` (and to ``$FRAMEPACK_SHOTS_DIR`` when it is set).
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.ui_latency import (
    IMAGE,
    DemoServer,
    set_job_inputs,
    set_number,
    start_demo_server,
    start_job,
    wait_for_state,
)
from framepack_core.jobs.spec import file_sha256
from tests.browser.conftest import ARTIFACTS, open_page
from tests.lora_fixtures import write_tiny_lora

pytestmark = pytest.mark.browser

FAST = {"steps": 2, "window": 3, "resolution": 64, "teacache": False}
DONE = ("finished", "failed", "cancelled")
NAMES = ("Motion.safetensors", "style.safetensors")  # the panel's rows, in this order


@pytest.fixture(scope="module")
def lora_dir(tiny_models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("lora-server") / "loras"
    for seed, name in enumerate(NAMES, start=1):
        write_tiny_lora(folder / name, tiny_models_dir, seed=seed)
    return folder


@pytest.fixture(scope="module")
def lora_server(tiny_models_dir: Path, lora_dir: Path, tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[DemoServer]:
    work = tmp_path_factory.mktemp("lora-demo-server")
    with start_demo_server(work, models_dir=tiny_models_dir, extra_args=("--loras-dir", str(lora_dir))) as server:
        yield server


@pytest.fixture
def lora_page(chromium: Any, lora_server: DemoServer) -> Iterator[Any]:
    with open_page(chromium, lora_server.url) as page:
        yield page


def _job(server: DemoServer, job_id: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{server.url.rstrip('/')}/api/v1/jobs/{job_id}", timeout=10) as answer:
        return json.load(answer)


def _open_lora(page: Any) -> None:
    if not page.locator("#lora-note").is_visible():
        page.click("#lora > button.label-wrap")
        page.locator("#lora-note").wait_for(state="visible")


def _row_labels(page: Any) -> list[str]:
    return [page.locator(f"#lora-weight-{index}").inner_text().split("\n")[0].strip()
            for index in range(8) if page.locator(f"#lora-weight-{index}").is_visible()]


def _shots(chromium: Any, server: DemoServer, name: str) -> None:
    """The open accordion at the two window sizes the page is made for (viewport shots, as a user sees it)."""
    folders = [ARTIFACTS] + ([Path(os.environ["FRAMEPACK_SHOTS_DIR"])] if os.environ.get("FRAMEPACK_SHOTS_DIR") else [])
    for width, height in ((1366, 768), (1920, 1080)):
        context = chromium.new_context(viewport={"width": width, "height": height})
        page = context.new_page()
        page.goto(server.url)
        page.wait_for_selector("#start")
        _open_lora(page)
        set_number(page, "lora-weight-1", 0.8)
        page.locator("#lora").scroll_into_view_if_needed()
        page.evaluate("document.querySelector('#lora').scrollIntoView({block: 'start'})")
        for folder in folders:
            folder.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(folder / f"{name}-{width}x{height}.png"))
        context.close()


def test_a_weight_set_in_the_lora_panel_reaches_the_spec_and_loading_the_video_sets_it_again(
        lora_page, lora_server, lora_dir, chromium, tmp_path):
    page = lora_page
    set_job_inputs(page, image=IMAGE, prompt="with a style", seconds=0.8, seed=71, **FAST)
    _open_lora(page)
    assert _row_labels(page) == list(NAMES)
    assert "2 LoRA files in" in page.locator("#lora-note").inner_text()
    set_number(page, "lora-weight-1", 0.8)
    page.locator("#lora-fuse input[type=checkbox]").check()
    # The estimate is made again with the LoRA (its adapters count in the plan), and still reads as one.
    page.wait_for_function("() => { const e = document.querySelector('#estimate .fp-estimate');"
                           " return e && !['invalid', 'error'].includes(e.dataset.source); }")
    assert "Could not estimate" not in lora_server.log_path.read_text(encoding="utf-8", errors="replace")
    _shots(chromium, lora_server, "lora-panel")
    job_id = start_job(page)
    job = _job(lora_server, job_id)
    assert job["spec"]["inputs"]["loras"] == [{"sha256": file_sha256(lora_dir / "style.safetensors"), "weight": 0.8}]
    assert job["spec"]["settings"]["lora_fuse"] is True
    assert wait_for_state(page, DONE, timeout_s=120) == "finished", page.locator("#progress").inner_text()

    # A fresh page (every weight 0) loads the video back: the style row at 0.8, Fuse on.
    video = tmp_path / "made_with_a_lora.mp4"
    with urllib.request.urlopen(f"{lora_server.url.rstrip('/')}/api/v1/jobs/{job_id}/video", timeout=30) as answer:
        video.write_bytes(answer.read())
    page.reload()
    page.wait_for_selector("#start")
    page.set_input_files("#load-from-video input[type=file]", str(video))
    page.wait_for_function("() => document.querySelector('#loaded-note').innerText.includes('Loaded')")
    _open_lora(page)
    page.wait_for_function("() => document.querySelector('#lora-weight-1 input[type=number]').value == '0.8'")
    assert float(page.locator("#lora-weight-0 input[type=number]").input_value()) == 0.0
    assert page.locator("#lora-fuse input[type=checkbox]").is_checked()


def test_refresh_follows_the_folder_and_an_empty_folder_says_where_to_put_files(lora_page, lora_dir, tmp_path,
                                                                                tiny_models_dir, shoot):
    page = lora_page
    _open_lora(page)
    set_number(page, "lora-weight-1", 0.5)
    write_tiny_lora(lora_dir / "added.safetensors", tiny_models_dir, seed=7)
    aside = tmp_path / "aside"
    try:
        page.click("#lora-refresh")
        page.wait_for_function("() => document.querySelector('#lora-note').innerText.includes('3 LoRA files')")
        assert _row_labels(page) == ["added.safetensors", *NAMES]
        # style.safetensors kept its weight though it moved down a row
        assert float(page.locator("#lora-weight-2 input[type=number]").input_value()) == 0.5

        shutil.move(str(lora_dir), str(aside))
        page.click("#lora-refresh")
        page.wait_for_function("() => document.querySelector('#lora-note').innerText.includes('No LoRA files')")
        assert str(lora_dir) in page.locator("#lora-note").inner_text() and _row_labels(page) == []
        shoot(page, "lora-empty-folder")
    finally:
        if aside.exists():
            shutil.move(str(aside), str(lora_dir))
        (lora_dir / "added.safetensors").unlink(missing_ok=True)
