"""The ETA counts every stage and learns this machine's speeds; a long stage never looks frozen."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.service.job_status import JobSnapshot, JobState
from app.ui.render import render_progress
from framepack_core.events import JobFinished, SectionFinished, StageChanged, StepProgress
from framepack_core.models.devices import resolve_device_config
from framepack_core.models.loading import ModelSource
from framepack_core.models.store import ModelStore
from framepack_core.pipeline.engine import FramePackEngine
from framepack_core.pipeline.timings import Speeds, StageTimings
from framepack_core.request import GenerationRequest

# 7.2 s at window 9 is 6 sections (7.2 * 30 / 36); base resolution 64 puts the gradient in the 48x64 bucket.
SIX_SECTIONS = {"latent_window_size": 9, "seconds": 7.2, "steps": 6, "resolution": 64, "cache": "none"}
TWO_SECTIONS = {"latent_window_size": 3, "seconds": 0.8, "steps": 3, "resolution": 64, "cache": "none"}


def _engine(models_dir: Path, timings: StageTimings) -> FramePackEngine:
    return FramePackEngine(ModelStore(ModelSource(models_dir=models_dir), resolve_device_config("cpu")),
                           timings=timings)


def test_eta_right_after_the_first_section_is_within_30_percent_of_the_time_left(tiny_models_dir, gradient_image,
                                                                                 tmp_path):
    engine = _engine(tiny_models_dir, StageTimings())  # nothing learned: this job's own measurements only
    request = GenerationRequest(image=gradient_image, prompt="waves", output=tmp_path / "six.mp4", **SIX_SECTIONS)
    events = list(engine.generate(request))
    assert isinstance(events[-1], JobFinished), events[-1]
    assert [e.section for e in events if isinstance(e, SectionFinished)] == [1, 2, 3, 4, 5, 6]
    first_done = next(i for i, e in enumerate(events) if isinstance(e, SectionFinished))
    # The next event is the second section's start, which carries the ETA.
    after = next(e for e in events[first_done + 1:] if isinstance(e, StageChanged))
    assert after.eta_s is not None
    actual = events[-1].time - after.time
    assert abs(after.eta_s - actual) <= 0.3 * actual, (after.eta_s, actual)
    # Every stage change and step after the first section says how long is left.
    assert all(e.eta_s is not None for e in events[first_done:] if isinstance(e, (StageChanged, StepProgress)))


def test_a_second_job_starts_with_the_eta_learned_by_the_first(tiny_models_dir, gradient_image, tmp_path):
    path = tmp_path / "queue" / "stage_timings.json"
    request = GenerationRequest(image=gradient_image, prompt="a cat", output=tmp_path / "one.mp4", **TWO_SECTIONS)
    first = list(_engine(tiny_models_dir, StageTimings.load(path)).generate(request))
    assert isinstance(first[-1], JobFinished)
    assert next(e for e in first if isinstance(e, StageChanged)).eta_s is None  # nothing to go on yet
    stored = json.loads(path.read_text())
    speeds = next(iter(stored["speeds"].values()))
    assert speeds["step_s"] and speeds["section_s_per_unit"] > 0 and speeds["finish_s_per_unit"] > 0
    assert len(speeds["setup_s"]["cold"]) == 6  # checking, text, image, VAE, SigLIP, transformer

    # A new process (a new engine, the file read again): the very first event already knows the whole job.
    again = GenerationRequest(image=gradient_image, prompt="a cat", output=tmp_path / "two.mp4", **TWO_SECTIONS)
    second = list(_engine(tiny_models_dir, StageTimings.load(path)).generate(again))
    assert isinstance(second[-1], JobFinished)
    opening = next(e for e in second if isinstance(e, StageChanged))
    assert opening.eta_s is not None and opening.eta_s > 0
    actual = second[-1].time - opening.time
    assert actual / 3 <= opening.eta_s <= actual * 3, (opening.eta_s, actual)


def test_unreadable_timings_are_ignored_and_learned_again(tmp_path):
    path = tmp_path / "stage_timings.json"
    path.write_text("{not json")
    timings = StageTimings.load(path)
    assert timings.speeds("any") == Speeds()
    timings.learn("any", Speeds(step_s={100: 0.5}))
    assert StageTimings.load(path).speeds("any").step_seconds(200) == pytest.approx(1.0)  # scaled by tokens


def test_learned_speeds_lean_towards_the_newest_job():
    learned = Speeds(step_s={100: 1.0}, section_s_per_unit=1.0, setup_s={"cold": [1.0, 2.0]})
    newer = learned.merged(Speeds(step_s={100: 3.0}, setup_s={"cold": [3.0, 4.0], "warm": [0.5, 0.5]}))
    assert newer.step_s[100] == pytest.approx(2.0) and newer.section_s_per_unit == 1.0
    assert newer.setup_seconds(warm=False) == [2.0, 3.0] and newer.setup_seconds(warm=True) == [0.5, 0.5]


def test_a_long_stage_without_events_still_shows_the_job_advancing(tmp_path):
    snapshot = JobSnapshot(job_id="j", state=JobState.RUNNING, request=GenerationRequest(image=tmp_path / "x.png"),
                           stage_message="Decoding section 2/7 ...", section=2, total_sections=7, elapsed_s=10.0,
                           eta_s=20.0, progress_at=1000.0, news_at=1000.0, stage_started_at=999.5)
    assert "in this stage" not in render_progress(snapshot, now=1000.5)
    page = render_progress(snapshot, now=1003.0)
    assert "elapsed 13.0 s" in page and "ETA 17.0 s" in page and "(3.5 s in this stage)" in page
    # The snapshot the service hands out runs on too, and ticking twice counts the time once.
    later = snapshot.ticking(1003.0).ticking(1004.0)
    assert (later.elapsed_s, later.eta_s) == (14.0, 16.0)
    assert snapshot.ticking(1100.0).eta_s == 0.0
    done = JobSnapshot(job_id="j", state=JobState.FINISHED, request=snapshot.request, elapsed_s=30.0,
                       progress_at=1000.0)
    assert done.ticking(2000.0).elapsed_s == 30.0
