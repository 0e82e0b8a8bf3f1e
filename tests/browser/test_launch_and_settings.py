"""launch.py and app/settings.py in-process (no browser): precedence, demo mode, auth, warnings, the page's parts.

These live beside the browser tests because they pin the same entry point; they are quick and carry no marker.
"""

from __future__ import annotations

import inspect
import os
import shutil
import time
from pathlib import Path

import numpy as np

import pytest

import launch
from app.api.status import JobStatuses
from app.service.generation import GenerationService, JobSnapshot, JobState
from app.service.outputs import ServedFiles
from app.settings import DEMO_JOB_DEFAULTS, Settings, read_auth_file
from app.ui.page import JOB_FIELDS, build_request, render_progress, settings_to_inputs
from framepack_core.errors import InvalidInputError
from framepack_core.request import GenerationRequest


def _settings(argv: list[str], monkeypatch: pytest.MonkeyPatch, env: dict[str, str] | None = None) -> Settings:
    for name in [n for n in os.environ if n.startswith("FRAMEPACK_")]:
        monkeypatch.delenv(name)
    for name, value in (env or {}).items():
        monkeypatch.setenv(name, value)
    return launch.settings_from_args(launch.build_parser().parse_args(argv))


def test_flags_win_over_environment_which_wins_over_defaults(monkeypatch):
    defaults = _settings([], monkeypatch)
    assert (defaults.host, defaults.port, defaults.share, defaults.auth) == ("127.0.0.1", None, False, ())
    assert defaults.output_dir == launch.REPO_ROOT / "outputs" and defaults.max_file_size_mb == 50

    from_env = _settings([], monkeypatch, {"FRAMEPACK_PORT": "7999", "FRAMEPACK_OFFLINE": "yes",
                                           "FRAMEPACK_MAX_FILE_SIZE_MB": "5"})
    assert (from_env.port, from_env.offline, from_env.max_file_size_bytes) == (7999, True, 5 * 1024 * 1024)

    flagged = _settings(["--port", "8001", "--output-dir", "somewhere"], monkeypatch, {"FRAMEPACK_PORT": "7999"})
    assert flagged.port == 8001 and flagged.output_dir == Path("somewhere").resolve()


def test_error_raised_if_an_environment_value_does_not_parse(monkeypatch):
    with pytest.raises(ValueError, match="FRAMEPACK_PORT: expected a number"):
        _settings([], monkeypatch, {"FRAMEPACK_PORT": "eighty"})
    with pytest.raises(ValueError, match="FRAMEPACK_SHARE: expected true or false"):
        _settings([], monkeypatch, {"FRAMEPACK_SHARE": "maybe"})


def test_demo_mode_forces_offline_cpu_tiny_models_and_quick_job_defaults(monkeypatch):
    settings = _settings(["--demo", "--device", "cuda"], monkeypatch)
    assert (settings.device, settings.offline, settings.models_dir) == ("cpu", True, launch.DEFAULT_TINY_MODELS)
    defaults = settings.job_defaults()
    assert {name: defaults[name] for name in DEMO_JOB_DEFAULTS} == dict(DEMO_JOB_DEFAULTS)
    assert _settings([], monkeypatch).job_defaults()["steps"] == GenerationRequest.steps == 25


def test_auth_comes_from_flags_and_files_and_passwords_may_contain_colons(monkeypatch, tmp_path):
    users = tmp_path / "users.txt"
    users.write_text("# comment\n\nbob:pa:ss\n")
    settings = _settings(["--auth", "alice:Xyzzy1", "--auth-file", str(users)], monkeypatch)
    assert settings.auth == (("alice", "Xyzzy1"), ("bob", "pa:ss"))
    assert "Xyzzy1" not in repr(settings)  # credentials stay out of logs
    with pytest.raises(ValueError, match="line 1"):
        (tmp_path / "bad.txt").write_text("no-colon-here\n")
        read_auth_file(tmp_path / "bad.txt")
    with pytest.raises(ValueError, match="--auth: expected USER:PASS"):
        _settings(["--auth", "alice"], monkeypatch)


@pytest.mark.parametrize("argv, exposed", [
    ([], False),
    (["--server", "localhost"], False),
    (["--server", "0.0.0.0"], True),
    (["--share"], True),
    (["--server", "0.0.0.0", "--auth", "a:b"], False),
    (["--share", "--auth", "a:b"], False),
])
def test_reachable_without_login_gives_a_security_warning(monkeypatch, argv, exposed):
    settings = _settings(argv, monkeypatch)
    _, warnings = launch.check_environment(settings)
    security = [w for w in warnings if w.startswith("SECURITY")]
    assert bool(security) == exposed
    if exposed:
        assert "--auth USER:PASS" in security[0]


def test_missing_ffmpeg_is_reported_with_how_to_install_it(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda tool: None if tool == "ffprobe" else f"/usr/bin/{tool}")
    problems, warnings = launch.check_environment(_settings([], monkeypatch))
    assert problems == []
    (message,) = [w for w in warnings if "ffprobe" in w]
    assert "ffmpeg and" not in message and "apt-get install ffmpeg" in message


def test_an_unavailable_device_stops_launch_with_a_readable_message(monkeypatch, capsys):
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")  # main() sets it; keep this process unchanged after
    if _has_cuda():
        pytest.skip("this machine has a CUDA GPU")
    assert launch.main(["--device", "cuda", "--output-dir", "unused"]) == 2
    out = capsys.readouterr().out
    assert "--device: 'cuda'" in out and "no CUDA GPU" in out and "set --device to cpu" in out


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def test_a_request_is_built_from_the_page_inputs_and_saved_settings_load_back(tmp_path):
    values = {"prompt": "hi", "model": "f1", "seconds": 2.0, "seed": 5.0, "steps": 3.0, "distilled_guidance": 10.0,
              "latent_window_size": 3.0, "cfg": 1.0, "cfg_rescale": 0.0, "negative_prompt": "", "cache": "none",
              "cache_threshold": 0.15, "crf": 16.0, "resolution": 64.0}
    request = build_request(str(tmp_path / "in.png"), values).validated()
    assert (request.model.value, request.seed, request.steps, request.latent_window_size) == ("f1", 5, 3, 3)
    saved = request.to_dict()
    assert settings_to_inputs(saved, Settings().job_defaults())[:4] == ["hi", "f1", 2.0, 5]
    with pytest.raises(InvalidInputError, match="Upload a start image"):
        build_request(None, values)


def test_progress_shows_stage_section_step_times_and_escapes_messages(tmp_path):
    snapshot = JobSnapshot(job_id="j1", state=JobState.RUNNING, request=GenerationRequest(image=tmp_path / "x.png"),
                           stage_message="Sampling <b>now</b>", section=2, total_sections=4, step=3, total_steps=8,
                           elapsed_s=75.0, eta_s=12.34, preview=np.zeros((2, 2, 3), np.uint8))
    page = render_progress(snapshot)
    assert 'data-state="running"' in page and "&lt;b&gt;now&lt;/b&gt;" in page
    assert "section 2/4" in page and "step 3/8" in page and "1 min 15 s" in page and "ETA 12.3 s" in page
    assert '<progress value="11" max="32">' in page
    failed = JobSnapshot(job_id="j2", state=JobState.FAILED, request=snapshot.request, error="Out of memory",
                         error_hint="Lower the resolution.")
    assert "Out of memory" in render_progress(failed) and "How to fix: Lower the resolution." in render_progress(failed)
    statuses = JobStatuses(GenerationService(lambda: None, tmp_path), tmp_path)  # never started
    assert statuses.of_snapshot(failed).hint == "Lower the resolution." and statuses.of_snapshot(failed).id == "j2"
    assert "preview" not in statuses.of_snapshot(snapshot).model_dump(mode="json")


def test_a_served_section_video_outlives_the_service_deleting_its_original(tmp_path):
    """The race: the service removes a finished job's snapshot folder while Gradio is still about to copy the last
    section video the page was handed. The served link keeps the data readable; it lies outside the output folder
    (which Gradio never serves), and links older than the age limit are swept."""
    work = tmp_path / "out" / ".snapshots-job.x"
    work.mkdir(parents=True)
    original = work / "job_002.mp4"
    original.write_bytes(b"section two")
    served = ServedFiles(tmp_path / "served", max_age_s=60.0)
    copy = Path(served.serve(original))
    original.unlink()
    work.rmdir()  # what the service does when the job ends
    assert copy.read_bytes() == b"section two" and not copy.is_relative_to(tmp_path / "out")
    assert served.serve(work / "job_003.mp4") is None  # already gone: nothing to show, no error
    stale = time.time() - 120
    os.utime(copy.parent, (stale, stale))
    served._last_sweep = 0.0
    fresh = Path(served.serve(Path(__file__)))
    assert not copy.exists() and fresh.is_file()
    served.close()
    assert not (tmp_path / "served").exists()


def test_keep_intermediates_reaches_the_service(monkeypatch, tmp_path):
    settings = _settings(["--keep-intermediates", "--output-dir", str(tmp_path), "--device", "cpu"], monkeypatch)
    assert launch.build_service(settings).keep_intermediates is True
    plain = _settings(["--output-dir", str(tmp_path), "--device", "cpu"], monkeypatch)
    assert launch.build_service(plain).keep_intermediates is False


def test_build_app_exposes_the_named_api_endpoints(tmp_path, tiny_models_dir):
    from app.ui.page import build_app

    settings = Settings(output_dir=tmp_path, models_dir=tiny_models_dir, demo=True, device="cpu")
    service = launch.build_service(settings)
    demo = build_app(settings, service)
    public = {fn.api_name for fn in demo.fns.values() if fn.api_visibility == "public"}
    assert public == {"generate", "status", "stop", "free_memory"}
    generate = next(fn for fn in demo.fns.values() if fn.api_name == "generate")
    assert [c.label for c in generate.inputs][:2] == ["Start image", "Prompt"]
    # gradio_client passes the settings by these names, and the page's form sends them in this order.
    assert list(inspect.signature(generate.fn).parameters) == ["image", *JOB_FIELDS, "request"]
