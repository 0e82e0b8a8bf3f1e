"""A job's clock: elapsed time, and the time left counted over every stage still to come (setup, sampling, decode
and write of each section, the final video), from this job's measurements as they come in and, until then, from
the speeds this machine learned (``timings``)."""

from __future__ import annotations

import itertools
import time
from dataclasses import replace
from enum import Enum

from framepack_core.events import EngineEvent, JobFinished, SectionFinished, Stage, StageChanged
from framepack_core.pipeline.timings import JobShape, Speeds


class _Phase(Enum):
    SETUP = "setup"  # checking, loading and encoding, before the first section
    SAMPLING = "sampling"
    SECTION_END = "section_end"  # decoding and writing the section just sampled
    FINISHING = "finishing"  # the final video


class ProgressClock:
    """Sees the job's events as the engine yields them (``observe``) and each sampling step (``tick``), and tells
    the time left at any moment (``eta``); ``measured`` is what the job taught about this machine's speed."""

    def __init__(self, shape: JobShape, learned: Speeds, started: float | None = None) -> None:
        self.shape = shape
        self.learned = learned
        self.started = time.perf_counter() if started is None else started
        self._phase = _Phase.SETUP
        self._phase_started = self.started
        self._setup_stages: list[float] = []  # start of each setup stage
        self._setup_done: list[float] = []  # seconds of each setup stage, once sampling began
        self._section = 1  # 1-based, in generation order
        self._steps_done = 0  # in the current section
        self._last_step_at: float | None = None
        self._warmed_up = False  # the job's first step is done
        self._step_seconds: list[float] = []
        self._first_section: tuple[float, int] | None = None  # (seconds, units) of section 1's decode and write
        self._section_seconds: list[tuple[float, int]] = []  # the same for each later section
        self._finish_seconds: float | None = None

    def observe(self, event: EngineEvent) -> EngineEvent:
        """Note where the job is; a stage change comes back with the time left."""
        now = time.perf_counter()
        if isinstance(event, StageChanged):
            self._stage_changed(event, now)
            return replace(event, eta_s=self.eta(now))
        if isinstance(event, SectionFinished):
            if self._phase == _Phase.SECTION_END:
                measured = (now - self._phase_started, self._units(event.section))
                if event.section == 1:
                    self._first_section = measured
                else:
                    self._section_seconds.append(measured)
        elif isinstance(event, JobFinished) and self._phase == _Phase.FINISHING:
            self._finish_seconds = now - self._phase_started
        return event

    def tick(self, section: int, step: int) -> tuple[float, float | None]:
        """After step ``step`` (1-based) of ``section``: seconds elapsed and left (None: nothing to go on yet)."""
        now = time.perf_counter()
        # The first step of a job also warms the model up (kernels, caches): it says little about the others.
        if self._last_step_at is not None:
            self._step_seconds.append(now - self._last_step_at)
        self._last_step_at, self._warmed_up = now, True
        self._section, self._steps_done = section, step
        if step == self.shape.steps:
            self._phase, self._phase_started = _Phase.SECTION_END, now
            self._last_step_at = None  # the next step is timed from its section's start, not across a decode
        return now - self.started, self.eta(now)

    def eta(self, now: float | None = None) -> float | None:
        """Seconds left from ``now``: what remains of the current stage and every stage after it."""
        now = time.perf_counter() if now is None else now
        step_s, finish_s = self._step_time(), self._finish_time()
        if step_s is None:
            return None
        in_phase = now - self._phase_started
        shape = self.shape
        left = 0.0
        if self._phase == _Phase.SETUP:
            setup = self.learned.setup_seconds(shape.warm) or []
            current = len(self._setup_stages) - 1
            if 0 <= current < len(setup):
                left += max(0.0, setup[current] - (now - self._setup_stages[current])) + sum(setup[current + 1:])
        if self._phase == _Phase.FINISHING:
            return max(0.0, finish_s - in_phase)
        first = self._section + (1 if self._phase == _Phase.SECTION_END else 0)
        steps_left = (shape.sections - self._section + 1) * shape.steps - self._steps_done
        if self._phase == _Phase.SAMPLING and self._last_step_at is not None:
            steps_left -= min(1.0, (now - self._last_step_at) / step_s) if step_s > 0 else 0
        elif self._phase == _Phase.SECTION_END:
            steps_left = (shape.sections - self._section) * shape.steps
            left += max(0.0, self._section_end_time(self._section) - in_phase)
        left += steps_left * step_s
        left += sum(self._section_end_time(section) for section in range(first, shape.sections + 1))
        return left + finish_s

    def measured(self) -> Speeds:
        """This job's speeds, for ``StageTimings.learn``; only what it finished measuring."""
        speeds = Speeds()
        if self._setup_done:
            speeds.setup_s["warm" if self.shape.warm else "cold"] = self._setup_done
        if self._step_seconds:
            speeds.step_s[self.shape.tokens] = sum(self._step_seconds) / len(self._step_seconds)
        if self._first_section is not None:
            speeds.first_section_s_per_unit = _per_unit([self._first_section])
        if self._section_seconds:
            speeds.section_s_per_unit = _per_unit(self._section_seconds)
        if self._finish_seconds is not None:
            speeds.finish_s_per_unit = self._finish_seconds / max(1, self.shape.video_units)
        return speeds

    def _stage_changed(self, event: StageChanged, now: float) -> None:
        if self._phase == _Phase.SETUP and event.stage != Stage.SAMPLING:
            self._setup_stages.append(now)
            return
        if self._phase == _Phase.SETUP:  # the first section begins: the setup is over
            starts = [*self._setup_stages, now]
            self._setup_done = [end - start for start, end in itertools.pairwise(starts)]
        if event.stage == Stage.SAMPLING:
            self._phase, self._phase_started = _Phase.SAMPLING, now
            self._section, self._steps_done = event.section or self._section, 0
            self._last_step_at = now if self._warmed_up else None
        elif event.stage == Stage.WRITING:
            self._phase, self._phase_started = _Phase.FINISHING, now

    def _units(self, section: int) -> int:
        units = self.shape.section_units
        return units[min(max(section, 1), len(units)) - 1] if units else 0

    def _step_time(self) -> float | None:
        if self._step_seconds:
            return sum(self._step_seconds) / len(self._step_seconds)
        return self.learned.step_seconds(self.shape.tokens)

    def _section_end_time(self, section: int) -> float:
        """Seconds of ``section``'s decode and write: as measured in this job, else as learned, for a section of
        its kind (the first, or a later one), else as the other kind, per unit; 0 when nothing is known."""
        first = _per_unit([self._first_section]) if self._first_section is not None else None
        later = _per_unit(self._section_seconds) if self._section_seconds else None
        learned_first, learned_later = self.learned.first_section_s_per_unit, self.learned.section_s_per_unit
        if section == 1:
            per_unit = _first_known(first, learned_first, later, learned_later)
        else:
            per_unit = _first_known(later, learned_later, first, learned_first)
        return (per_unit or 0.0) * self._units(section)

    def _finish_time(self) -> float:
        """Seconds of the final video; 0 until a job has measured it (it only remuxes what is written)."""
        return (self.learned.finish_s_per_unit or 0.0) * self.shape.video_units


def _per_unit(measured: list[tuple[float, int]]) -> float:
    return sum(seconds for seconds, _ in measured) / max(1, sum(units for _, units in measured))


def _first_known(*values: float | None) -> float | None:
    return next((value for value in values if value is not None), None)
