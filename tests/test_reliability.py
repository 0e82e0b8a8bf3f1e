"""Stopping at any step and running out of disk: nothing made earlier is lost, and the next job runs."""

from __future__ import annotations

import errno
import hashlib
import random
from pathlib import Path

import pytest

import framepack_core.media.video_io as video_io
from framepack_core.events import CancelToken, JobCancelled, JobFailed, JobFinished, SectionFinished, StepProgress
from framepack_core.media.video_io import probe_video, read_video_frames
from framepack_core.models.devices import resolve_device_config
from framepack_core.models.loading import ModelSource
from framepack_core.models.store import ModelStore
from framepack_core.pipeline.engine import FramePackEngine
from framepack_core.request import GenerationRequest

STEPS, SECTIONS = 3, 4
JOB = dict(latent_window_size=3, steps=STEPS, resolution=64, seconds=1.6, cache="none")
SHORT = dict(JOB, seconds=0.8)
CANCEL_TRIES = 10


@pytest.fixture(scope="module")
def engine(tiny_models_dir) -> FramePackEngine:
    return FramePackEngine(ModelStore(ModelSource(models_dir=tiny_models_dir), resolve_device_config("cpu")))


@pytest.fixture(scope="module")
def image(gradient_image: Path) -> Path:
    return gradient_image


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_cancel_at_ten_random_steps_keeps_a_playable_video_of_the_finished_sections(engine, image, tmp_path):
    total = STEPS * SECTIONS
    steps = sorted(random.Random(20261202).sample(range(1, total + 1), CANCEL_TRIES))
    for stop_at in steps:
        folder = tmp_path / f"stop{stop_at}"
        cancel = CancelToken()
        events = []
        done_steps = 0
        for event in engine.generate(GenerationRequest(image=image, output=folder / "video.mp4", **JOB),
                                     cancel=cancel):
            events.append(event)
            if isinstance(event, StepProgress):
                done_steps += 1
                if done_steps == stop_at:
                    cancel.cancel()
        last = events[-1]
        finished = [e for e in events if isinstance(e, SectionFinished)]
        assert isinstance(last, JobCancelled), (stop_at, last)
        # The step the cancel arrived in completes; the section it belongs to is not decoded.
        assert last.sections_done == len(finished) == (stop_at - 1) // STEPS
        if finished:
            info = probe_video(last.partial_path)
            assert info.frame_count == finished[-1].video_frames > 0
            assert read_video_frames(last.partial_path).shape[0] == info.frame_count
            assert sorted(p.name for p in folder.iterdir()) == ["video.partial.json", "video.partial.mp4"]
        else:
            assert last.partial_path is None and not any(folder.iterdir()), "nothing half-made is left"
        # The next job runs to the end.
        after = list(engine.generate(GenerationRequest(image=image, output=folder / "next.mp4", **SHORT)))[-1]
        assert isinstance(after, JobFinished) and probe_video(after.output_path).frame_count == 25


class DiskFullAfter:
    """Stands in for a drive that fills up: the first ``writes`` video writes succeed, every later one fails
    with ENOSPC, as the real encoder would."""

    def __init__(self, writes: int) -> None:
        self.writes_left = writes
        self.encode, self.join = video_io.encode_segment, video_io.join_segments

    def _spend(self, path: Path) -> None:
        if self.writes_left <= 0:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        self.writes_left -= 1

    def encode_segment(self, frames, path, **kwargs):  # noqa: ANN001, ANN003, ANN201
        self._spend(path)
        return self.encode(frames, path, **kwargs)

    def join_segments(self, segments, output_path, **kwargs):  # noqa: ANN001, ANN003, ANN201
        self._spend(output_path)
        return self.join(segments, output_path, **kwargs)


def test_a_full_disk_fails_the_job_with_a_clear_message_and_earlier_outputs_stay_intact(engine, image, tmp_path,
                                                                                       monkeypatch):
    earlier = list(engine.generate(GenerationRequest(image=image, output=tmp_path / "earlier.mp4", **SHORT)))[-1]
    assert isinstance(earlier, JobFinished)
    before = {p.name: _digest(p) for p in tmp_path.iterdir()}

    disk = DiskFullAfter(writes=1)  # the first section's segment fits, nothing after it
    monkeypatch.setattr(video_io, "encode_segment", disk.encode_segment)
    monkeypatch.setattr(video_io, "join_segments", disk.join_segments)
    failed = list(engine.generate(GenerationRequest(image=image, output=tmp_path / "full.mp4", **JOB)))[-1]
    assert isinstance(failed, JobFailed), failed
    assert "No space left on device" in failed.message and failed.message.startswith("Could not write")
    assert "Free some disk space" in failed.hint
    after = {p.name: _digest(p) for p in tmp_path.iterdir()}
    assert after == before, "earlier outputs untouched, and no half-written file or folder left behind"

    monkeypatch.undo()  # space freed: the next job runs
    again = list(engine.generate(GenerationRequest(image=image, output=tmp_path / "again.mp4", **SHORT)))[-1]
    assert isinstance(again, JobFinished) and probe_video(again.output_path).frame_count == 25
