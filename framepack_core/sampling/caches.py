"""One interface for every step cache a job can run with (``CacheMethod``).

The engine applies a ``StepCache`` to the transformer for one job, calls ``section_started()`` before each
section (the noise is new, so nothing cached from the last section may be reused), runs every transformer call
inside ``call(step, branch)`` and takes the cache off with ``remove()`` (also when the job fails or is
cancelled). ``stats`` counts the transformer calls that ran the blocks and those that a cache skipped.

TeaCache is our own hand-written one (``sampling.teacache``, it matches the official app). First-block cache,
MagCache and TaylorSeer are diffusers' hooks, applied with ``transformer.enable_cache``; diffusers keys their
state by the name of ``transformer.cache_context(name)``, so running each guidance branch's call inside
``cache_context(branch)`` keeps the positive and the negative pass apart. The FramePack transformer's blocks are
diffusers' ``HunyuanVideoTransformerBlock`` and ``HunyuanVideoSingleTransformerBlock``, which diffusers' block
registry already knows: nothing needs registering.

How many calls a diffusers cache skipped is read from its hook's state after each call (the hooks keep no
counters): nothing of diffusers is patched or wrapped.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers.hooks import HookRegistry

from framepack_core.sampling.cache_methods import DEFAULT_CACHE_THRESHOLDS, CacheMethod
from framepack_core.sampling.magcache_ratios import magcache_ratios, ratios_path
from framepack_core.sampling.teacache import TeaCacheConfig, apply_teacache

# TaylorSeer's settings for FramePack (docs/speed.md). The lite variant predicts only the output projection from
# a first-order Taylor series and skips every block on a predicted step: it saves the whole transformer, like
# the other caches here, and keeps a few MB of factors instead of every attention output of 60 blocks.
TAYLORSEER_CACHE_INTERVAL = 3  # one computed step, then two predicted ones
TAYLORSEER_WARMUP_FRACTION = 0.2  # the first fifth of the steps always computed (at least two: order 1 needs two)
TAYLORSEER_MAX_ORDER = 1
# MagCache's settings besides its threshold: diffusers' defaults, which are also MagCache4FramePack's (K=3, R=0.2).
MAGCACHE_MAX_SKIP_STEPS = 3
MAGCACHE_RETENTION_RATIO = 0.2

_FBC_HEAD_HOOK = "fbc_leader_block_hook"
_MAGCACHE_HEAD_HOOK = "mag_cache_leader_block_hook"
_TAYLORSEER_HOOK = "taylorseer_cache"


@dataclass
class CacheStats:
    """Transformer calls of one job: ``computed`` ran the blocks, ``skipped`` were answered from the cache."""

    computed: int = 0
    skipped: int = 0

    @property
    def transformer_calls(self) -> int:
        return self.computed + self.skipped

    def as_dict(self) -> dict[str, int]:
        return {"transformer_calls": self.transformer_calls, "computed_calls": self.computed,
                "skipped_calls": self.skipped}


class StepCache:
    """No cache: every call runs the full model. The base of the others; it only counts the calls."""

    method = CacheMethod.NONE

    def __init__(self) -> None:
        self.stats = CacheStats()

    def section_started(self) -> None:
        """Forget everything cached: a section starts from new noise."""

    @contextlib.contextmanager
    def call(self, step: int, branch: str) -> Iterator[None]:
        """Run one transformer call of denoising step ``step`` for guidance ``branch`` ("cond"/"uncond")."""
        yield
        self.stats.computed += 1

    def remove(self) -> None:
        """Take the cache off the transformer; safe to call twice."""

    def describe(self) -> dict[str, Any]:
        """What the output's fingerprint records besides the method and the threshold."""
        return self.stats.as_dict()


class TeaCacheStepCache(StepCache):
    """The official app's TeaCache, through ``sampling.teacache`` unchanged."""

    method = CacheMethod.TEACACHE

    def __init__(self, transformer: torch.nn.Module, threshold: float, steps: int) -> None:
        super().__init__()
        self._teacache = apply_teacache(transformer, TeaCacheConfig(threshold, steps))

    def section_started(self) -> None:
        self._teacache.reset()

    @contextlib.contextmanager
    def call(self, step: int, branch: str) -> Iterator[None]:
        with self._teacache.step(step, branch):
            yield
        counted = self._teacache.stats  # TeaCache counts its calls itself
        self.stats.computed, self.stats.skipped = counted.computed, counted.skipped

    def remove(self) -> None:
        self._teacache.remove()


class DiffusersStepCache(StepCache):
    """A diffusers cache hook (first-block, MagCache, TaylorSeer) on the transformer for one job."""

    def __init__(self, transformer: torch.nn.Module, method: CacheMethod, config: Any) -> None:
        super().__init__()
        self.method = method
        self.transformer = transformer
        transformer.enable_cache(config)
        self._removed = False
        hook_name = {CacheMethod.FIRST_BLOCK: _FBC_HEAD_HOOK, CacheMethod.MAGCACHE: _MAGCACHE_HEAD_HOOK,
                     CacheMethod.TAYLORSEER: _TAYLORSEER_HOOK}[method]
        try:
            self._probe = _find_hook(transformer, hook_name)
        except RuntimeError:
            transformer.disable_cache()
            raise

    def section_started(self) -> None:
        HookRegistry.check_if_exists_or_initialize(self.transformer).reset_stateful_hooks()

    @contextlib.contextmanager
    def call(self, step: int, branch: str) -> Iterator[None]:
        with self.transformer.cache_context(branch):
            yield
            # Read inside the context: the hook's state is the one of this branch.
            state = self._probe.state_manager.get_state()
            self._count(state)
            self._after_call(state, branch)

    def _count(self, state: Any) -> None:
        if self.method == CacheMethod.TAYLORSEER:
            computed = state.last_update_step == state.current_step  # an update happens only on computed steps
        else:
            computed = state.should_compute
        if computed:
            self.stats.computed += 1
        else:
            self.stats.skipped += 1

    def _after_call(self, state: Any, branch: str) -> None:
        """For subclasses that read more of the state after a call."""

    def remove(self) -> None:
        if not self._removed and getattr(self.transformer, "is_cache_enabled", False):
            self.transformer.disable_cache()
        self._removed = True


class MagCacheStepCache(DiffusersStepCache):
    """MagCache with given per-step magnitude ratios; ``ratios_origin`` says where they came from."""

    def __init__(self, transformer: torch.nn.Module, config: Any, ratios_origin: str) -> None:
        super().__init__(transformer, CacheMethod.MAGCACHE, config)
        self.ratios_origin = ratios_origin

    def describe(self) -> dict[str, Any]:
        return self.stats.as_dict() | {"magcache_ratios": self.ratios_origin}


@dataclass
class MagCacheCalibration:
    """Collects MagCache's per-step magnitude ratios while a job runs uncached (diffusers' calibration mode).

    Each section gives one list (the positive branch's; step 0's ratio is 1.0); ``ratios`` is their mean, step by
    step. ``steps`` is filled in by the job.
    """

    sections: list[list[float]] = field(default_factory=list)
    steps: int = 0

    @property
    def ratios(self) -> list[float]:
        complete = [section for section in self.sections if len(section) == self.steps]
        if not complete:
            return []
        return [sum(values) / len(values) for values in zip(*complete, strict=True)]


class MagCacheCalibrationStepCache(DiffusersStepCache):
    """Diffusers' MagCache in calibration mode: skips nothing, records each step's magnitude ratio."""

    def __init__(self, transformer: torch.nn.Module, steps: int, calibration: MagCacheCalibration) -> None:
        from diffusers.hooks import MagCacheConfig

        # One more step than the job has: diffusers clears (and prints) the ratios when a loop of
        # ``num_inference_steps`` ends, and they are read at the section's end instead.
        config = MagCacheConfig(calibrate=True, num_inference_steps=steps + 1)
        super().__init__(transformer, CacheMethod.MAGCACHE, config)
        self.calibration = calibration
        calibration.steps = steps
        self._section: list[float] = []

    def _after_call(self, state: Any, branch: str) -> None:
        if branch == "cond":
            self._section = list(state.calibration_ratios)

    def section_started(self) -> None:
        self._keep_section()
        super().section_started()

    def remove(self) -> None:
        self._keep_section()
        super().remove()

    def _keep_section(self) -> None:
        if self._section:
            self.calibration.sections.append(self._section)
        self._section = []

    def describe(self) -> dict[str, Any]:
        return self.stats.as_dict() | {"magcache_ratios": "calibrating"}


def taylorseer_config(steps: int) -> Any:
    """TaylorSeer's diffusers config for a job of ``steps`` steps (docs/speed.md says why these values)."""
    from diffusers.hooks import TaylorSeerCacheConfig

    warmup = max(2, round(TAYLORSEER_WARMUP_FRACTION * steps))
    return TaylorSeerCacheConfig(cache_interval=TAYLORSEER_CACHE_INTERVAL, disable_cache_before_step=warmup,
                                 disable_cache_after_step=steps - 1, max_order=TAYLORSEER_MAX_ORDER,
                                 taylor_factors_dtype=torch.float32, use_lite_mode=True)


def apply_step_cache(transformer: torch.nn.Module, method: CacheMethod | str, threshold: float | None, steps: int,
                     magcache_ratios: Sequence[float] | None = None, magcache_ratios_origin: str = "",
                     calibration: MagCacheCalibration | None = None) -> StepCache:
    """Put ``method``'s cache on ``transformer`` for a job of ``steps`` steps per section.

    ``threshold`` None: the method's default. MagCache needs ``magcache_ratios`` (any length: diffusers
    interpolates them to ``steps`` by nearest neighbour); with ``calibration`` it runs in calibration mode instead
    and fills it. The caller must ``remove()`` the returned cache, also when the job fails.
    """
    method = CacheMethod(method)
    if getattr(transformer, "is_cache_enabled", False):
        # Left on by a process that died between a job's start and its cleanup: never let it into this job.
        transformer.disable_cache()
    if threshold is None:
        threshold = DEFAULT_CACHE_THRESHOLDS[method]
    if calibration is not None:
        return MagCacheCalibrationStepCache(transformer, steps, calibration)
    if method == CacheMethod.NONE:
        return StepCache()
    if method == CacheMethod.TEACACHE:
        return TeaCacheStepCache(transformer, threshold, steps)
    from diffusers.hooks import FirstBlockCacheConfig, MagCacheConfig

    if method == CacheMethod.FIRST_BLOCK:
        return DiffusersStepCache(transformer, method, FirstBlockCacheConfig(threshold=threshold))
    if method == CacheMethod.MAGCACHE:
        if not magcache_ratios:
            raise ValueError("MagCache needs magnitude ratios (framepack_core.sampling.magcache_ratios)")
        config = MagCacheConfig(threshold=threshold, max_skip_steps=MAGCACHE_MAX_SKIP_STEPS,
                                retention_ratio=MAGCACHE_RETENTION_RATIO, num_inference_steps=steps,
                                mag_ratios=torch.tensor(list(magcache_ratios), dtype=torch.float32))
        return MagCacheStepCache(transformer, config, magcache_ratios_origin)
    return DiffusersStepCache(transformer, method, taylorseer_config(steps))


def _find_hook(module: torch.nn.Module, name: str) -> Any:
    """The first hook called ``name`` under ``module`` (the head block's, for the block caches)."""
    for submodule in module.modules():
        registry = getattr(submodule, "_diffusers_hook", None)
        if registry is not None and registry.get_hook(name) is not None:
            return registry.get_hook(name)
    raise RuntimeError(f"the cache hook {name!r} is not on the transformer")


def step_cache_for_job(transformer: torch.nn.Module, request: Any, models_dir: Path | None, cache_dir: Path | None,
                       identities: Mapping[str, str], calibration: MagCacheCalibration | None = None) -> StepCache:
    """The cache a validated ``request`` asks for, on ``transformer``; MagCache's ratios are this machine's
    calibration for these transformer files when there is one (``magcache_ratios``), else the published ones."""
    method = CacheMethod(request.cache)
    ratios = None
    if method == CacheMethod.MAGCACHE and calibration is None:
        variant = str(getattr(request.model, "value", request.model))
        ratios = magcache_ratios(ratios_path(models_dir, cache_dir), variant, identities.get(f"transformer:{variant}"))
    return apply_step_cache(transformer, method, request.effective_cache_threshold, request.steps,
                            magcache_ratios=None if ratios is None else ratios.ratios,
                            magcache_ratios_origin="" if ratios is None else ratios.origin, calibration=calibration)
