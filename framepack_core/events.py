"""Typed events the engine yields while a job runs, and the token that cancels it.

Consumers (CLI progress bar, Gradio page, HTTP server-sent events) switch on the event class; every event is
a frozen dataclass with plain fields, so it can be turned into JSON with ``dataclasses.asdict`` (the preview
array excepted).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import numpy as np

from framepack_core.errors import Cancelled
from framepack_core.sampling.schedule import FPS


class Stage(str, Enum):
    """What a job is doing; the memory planner budgets the five stages that run a model (``memory.plan.STAGES``)."""

    VALIDATING = "validating"
    LOADING_MODELS = "loading_models"
    TEXT_ENCODING = "text_encoding"
    IMAGE_PROCESSING = "image_processing"
    VAE_ENCODING = "vae_encoding"
    IMAGE_ENCODING = "image_encoding"
    SAMPLING = "sampling"
    DECODING = "decoding"
    WRITING = "writing"


@dataclass(frozen=True)
class EngineEvent:
    job_id: str
    time: float = field(default_factory=time.time, kw_only=True)


@dataclass(frozen=True)
class StageChanged(EngineEvent):
    stage: Stage
    message: str
    section: int | None = None  # 1-based, when the stage belongs to a section
    eta_s: float | None = None  # seconds left for the whole job (None: nothing to go on yet)


@dataclass(frozen=True)
class Notice(EngineEvent):
    """Something the user should know that does not stop the job (a truncated prompt, a converted image)."""

    message: str


@dataclass(frozen=True)
class InputPrepared(EngineEvent):
    """The start image as the model sees it: bucketed and centre-cropped (uint8 HxWx3)."""

    image: np.ndarray = field(repr=False)
    width: int
    height: int
    total_sections: int
    video_frames: int  # frames the finished video will have


@dataclass(frozen=True)
class StepProgress(EngineEvent):
    section: int  # 1-based, in generation order
    total_sections: int
    step: int  # 1-based
    total_steps: int
    elapsed_s: float
    eta_s: float | None
    preview: np.ndarray | None = field(default=None, repr=False)  # uint8 (H, T*W, 3)


@dataclass(frozen=True)
class SectionFinished(EngineEvent):
    section: int  # 1-based, in generation order
    total_sections: int
    segment_path: Path  # mp4 of the frames this section made final
    video_frames: int  # frames in the video so far, including the edge that the next section will blend
    latent_frames: int
    dit_s: float
    decode_s: float
    write_s: float
    snapshot_path: Path | None = None  # playable mp4 of the video so far, when the caller asked for snapshots

    @property
    def video_seconds(self) -> float:
        return self.video_frames / FPS


@dataclass(frozen=True)
class JobFinished(EngineEvent):
    output_path: Path
    latents_path: Path | None
    video_frames: int
    width: int
    height: int
    elapsed_s: float
    transformer_calls: int | None = None  # this run's transformer calls, and how many the step cache skipped
    skipped_calls: int | None = None


@dataclass(frozen=True)
class JobCancelled(EngineEvent):
    partial_path: Path | None  # playable mp4 of the finished sections, None if none finished
    sections_done: int


@dataclass(frozen=True)
class JobFailed(EngineEvent):
    message: str
    hint: str
    error_type: str
    partial_path: Path | None
    sections_done: int
    details: str = ""  # second to the message and hint: e.g. each missing component's folder and problem


TerminalEvent = JobFinished | JobCancelled | JobFailed


@dataclass(frozen=True)
class WorkerLost(EngineEvent):
    """Told to the runner's listener, never yielded by an engine: ``worker`` (``framepack_core.workers``) died
    mid-job, and the job is queued again at the front, to resume from its last finished section."""

    worker: str
    message: str


class CancelToken:
    """Set from any thread; the engine checks it before every denoising step."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        """Raise ``Cancelled`` once the token is set: the engine calls it between its stages and steps."""
        if self._event.is_set():
            raise Cancelled()
