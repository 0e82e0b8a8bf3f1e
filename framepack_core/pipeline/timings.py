"""This machine's speed at each stage of a job, learned from the jobs it ran and kept in a small JSON file, so that
a job's ETA is right from its first event.

Speeds are kept per machine, device, dtype, model set and the settings that change the cost of a step (model,
CFG, TeaCache): seconds per sampling step at a token count, seconds per unit of decoding and writing a section
(one latent frame of one latent pixel), the same for writing the final video, and the seconds of each setup stage
(loading, encoding), apart for a cold start and for models already loaded. They are only ever read to estimate
time: nothing here reaches the generator or the video.
"""

from __future__ import annotations

import json
import logging
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from framepack_core.files import write_text_atomically
from framepack_core.jobs.output_naming import DEFAULT_OUTPUT_DIR
from framepack_core.jobs.queue import QUEUE_FOLDER
from framepack_core.media.buckets import find_nearest_bucket
from framepack_core.models.components import ModelVariant
from framepack_core.models.store import ModelStore
from framepack_core.request import GenerationRequest
from framepack_core.sampling.cache_methods import CacheMethod
from framepack_core.sampling.sampler import main_token_count
from framepack_core.sampling.schedule import total_latent_sections

logger = logging.getLogger(__name__)

# Beside the default queue: one file per machine, shared by the app, ``generate`` and ``jobs run``.
TIMINGS_FILE_NAME = "stage_timings.json"
DEFAULT_TIMINGS_PATH = DEFAULT_OUTPUT_DIR / QUEUE_FOLDER / TIMINGS_FILE_NAME
TIMINGS_VERSION = 1
# The newest job's weight in what is learned: the machine as it is now (its load, its drivers) counts most.
NEWEST_WEIGHT = 0.5
# HunyuanVideo's VAE (and the tiny one) halve the image three times; only the estimate assumes it, before the VAE
# is loaded.
ASSUMED_VAE_SCALE = 8


@dataclass(frozen=True)
class JobShape:
    """What a job's duration depends on, known before it starts."""

    key: str  # the machine and the settings that change a step's cost: which learned speeds apply
    sections: int
    steps: int  # per section
    tokens: int  # of the noisy window, per step
    section_units: tuple[int, ...]  # per section in generation order: latent frames decoded x latent pixels
    video_units: int  # the whole video's latent frames x latent pixels
    warm: bool  # models were already loaded when the job began


def job_shape(request: GenerationRequest, image_size: tuple[int, int], models: ModelStore) -> JobShape:
    """The shape of ``request`` on a start image of ``image_size`` (height, width), run by ``models``."""
    height, width = find_nearest_bucket(*image_size, resolution=request.resolution)
    latent_height, latent_width = height // ASSUMED_VAE_SCALE, width // ASSUMED_VAE_SCALE
    window, model = request.latent_window_size, ModelVariant(request.model)
    sections = total_latent_sections(request.seconds, window)
    # What the section loop decodes (LatentHistory.latents_to_decode): the first section with the start latent
    # where it is already in the history, each later one with a window of context.
    decoded = [window + (1 if model == ModelVariant.F1 or sections == 1 else 0)]
    decoded += [2 * window] * max(0, sections - 2)
    if sections > 1:
        decoded.append(2 * window + (1 if model == ModelVariant.ORIGINAL else 0))
    area = latent_height * latent_width
    config = models.config
    key = "|".join((platform.node(), str(config.device), str(config.transformer_dtype).removeprefix("torch."),
                    str(models.source.models_dir or "huggingface cache"), model.value,
                    "cfg" if request.cfg != 1.0 else "distilled",
                    _cache_key(request)))
    return JobShape(key=key, sections=sections, steps=request.steps,
                    tokens=main_token_count(window, latent_height, latent_width),
                    section_units=tuple(frames * area for frames in decoded),
                    video_units=(sections * window + 1) * area, warm=sum(models.held_bytes()) > 0)


@dataclass
class Speeds:
    """What one job measured, or what the machine learned from its jobs (None or empty: not known)."""

    setup_s: dict[str, list[float]] = field(default_factory=dict)  # "cold"/"warm": seconds of each setup stage
    step_s: dict[int, float] = field(default_factory=dict)  # tokens -> seconds per sampling step
    # Decode, write and checkpoint of a section, per unit: the first section apart, as it decodes fewer frames and
    # warms the VAE up, and a decode's cost grows faster than its frames (the VAE's attention sees them all).
    first_section_s_per_unit: float | None = None
    section_s_per_unit: float | None = None
    finish_s_per_unit: float | None = None  # the final video and its sidecar, per unit of the whole video

    def step_seconds(self, tokens: int) -> float | None:
        """Seconds per step at ``tokens``: measured there, else scaled from the nearest token count measured."""
        if tokens in self.step_s:
            return self.step_s[tokens]
        if not self.step_s:
            return None
        nearest = min(self.step_s, key=lambda known: abs(known - tokens))
        return self.step_s[nearest] * tokens / nearest

    def setup_seconds(self, warm: bool) -> list[float] | None:
        """Each setup stage's seconds for a warm or a cold start; the other kind when only that one is known."""
        first, second = ("warm", "cold") if warm else ("cold", "warm")
        return self.setup_s.get(first) or self.setup_s.get(second)

    def merged(self, newer: Speeds) -> Speeds:
        """These speeds updated with ``newer``'s measurements."""
        setup = dict(self.setup_s)
        for kind, seconds in newer.setup_s.items():
            known = setup.get(kind)
            setup[kind] = ([_blend(old, new) for old, new in zip(known, seconds)]
                           if known is not None and len(known) == len(seconds) else list(seconds))
        steps = dict(self.step_s)
        for tokens, seconds in newer.step_s.items():
            steps[tokens] = _blend(steps.get(tokens), seconds)
        return Speeds(setup, steps, _blend(self.first_section_s_per_unit, newer.first_section_s_per_unit),
                      _blend(self.section_s_per_unit, newer.section_s_per_unit),
                      _blend(self.finish_s_per_unit, newer.finish_s_per_unit))

    def to_json(self) -> dict[str, Any]:
        return {"setup_s": self.setup_s, "step_s": {str(tokens): s for tokens, s in sorted(self.step_s.items())},
                "first_section_s_per_unit": self.first_section_s_per_unit,
                "section_s_per_unit": self.section_s_per_unit, "finish_s_per_unit": self.finish_s_per_unit}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Speeds:
        return cls(setup_s={kind: [float(s) for s in seconds] for kind, seconds in data.get("setup_s", {}).items()},
                   step_s={int(tokens): float(s) for tokens, s in data.get("step_s", {}).items()},
                   first_section_s_per_unit=_number(data.get("first_section_s_per_unit")),
                   section_s_per_unit=_number(data.get("section_s_per_unit")),
                   finish_s_per_unit=_number(data.get("finish_s_per_unit")))


class StageTimings:
    """The learned speeds of every key, kept in ``path`` (None: in memory only, for this process's jobs)."""

    def __init__(self, path: Path | None = None, speeds: dict[str, Speeds] | None = None) -> None:
        self.path = path
        self._speeds = speeds or {}

    @classmethod
    def load(cls, path: Path) -> StageTimings:
        """The timings in ``path``; none learned yet when the file is missing, unreadable or from another version
        (it only ever makes an estimate, so it is never worth failing a job for)."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            if data.get("version") != TIMINGS_VERSION:
                return cls(path)
            return cls(path, {key: Speeds.from_json(value) for key, value in data["speeds"].items()})
        except FileNotFoundError:
            return cls(path)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            logger.warning("Ignoring the stage timings in %s (%s); they are learned again", path, error)
            return cls(path)

    def speeds(self, key: str) -> Speeds:
        return self._speeds.get(key) or Speeds()

    def learn(self, key: str, measured: Speeds) -> None:
        """Add one job's measurements and save the file (a failed save is logged: the job is not at stake)."""
        if measured == Speeds():
            return
        self._speeds[key] = self.speeds(key).merged(measured)
        if self.path is None:
            return
        data = {"version": TIMINGS_VERSION, "speeds": {k: v.to_json() for k, v in sorted(self._speeds.items())}}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomically(self.path, json.dumps(data, indent=1) + "\n")
        except OSError as error:
            logger.warning("Could not save the stage timings to %s: %s", self.path, error)


def _blend(old: float | None, new: float | None) -> float | None:
    if old is None or new is None:
        return new if old is None else old
    return (1 - NEWEST_WEIGHT) * old + NEWEST_WEIGHT * new


def _number(value: Any) -> float | None:
    return None if value is None else float(value)


def _cache_key(request: GenerationRequest) -> str:
    """A cache's speed is learned apart from the full model's ("full" and "teacache" as before there were others)."""
    method = CacheMethod(request.cache)
    return "full" if method == CacheMethod.NONE else method.value
