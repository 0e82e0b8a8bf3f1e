"""Smoke test of bench/ui_latency.py against the suite's demo server, on a job small enough for the test run."""

from __future__ import annotations

import pytest

from bench import ui_latency

pytestmark = pytest.mark.browser


def test_ui_latency_bench_times_all_three_paths_and_prints_the_table(chromium, demo_server, tiny_models_dir):
    job = {"seconds": 1, "steps": 3, "window": 3, "resolution": 64}
    results = ui_latency.measure(demo_server.url, tiny_models_dir, job, repeats=1, chromium=chromium,
                                 server_pid=demo_server.process.pid)
    (browser,), (client,), (alone,) = results.browser, results.client, results.alone
    assert 0 < browser.first_preview_s < browser.wall_s and 0 < browser.first_section_video_s < browser.wall_s
    assert browser.engine_in_server_s <= browser.wall_s
    assert client.wall_s > 0 and alone.wall_s > 0 and alone.engine_cpu_s > 0
    table = ui_latency.report(results, job, repeats=1)
    assert "| engine alone (in-process, no service, no UI) |" in table
    assert "| server via gradio_client `/generate` (no browser) |" in table
    assert "| page in Chromium (Start button) |" in table
