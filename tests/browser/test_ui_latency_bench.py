"""Smoke test of bench/ui_latency.py against the suite's demo server, on a job small enough for the test run."""

from __future__ import annotations

import pytest

from bench import ui_latency

pytestmark = pytest.mark.browser


def test_ui_latency_bench_runs_all_three_paths_and_prints_the_table(chromium, demo_server, tiny_models_dir, capsys):
    assert ui_latency.main(["--url", demo_server.url, "--models-dir", str(tiny_models_dir), "--repeats", "1",
                            "--seconds", "1", "--steps", "3", "--window", "3", "--resolution", "64"]) == 0
    out = capsys.readouterr().out
    assert "| engine alone (in-process, no service, no UI) |" in out
    assert "| server via gradio_client `/generate` (no browser) |" in out
    browser_row = next(line for line in out.splitlines() if line.startswith("| page in Chromium"))
    first_preview, first_video, done = (float(cell) for cell in browser_row.split("|")[2:5])
    assert 0 < first_preview < done and 0 < first_video < done
