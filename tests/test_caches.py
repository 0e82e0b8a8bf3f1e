"""Step caches (sampling/caches.py): each one runs a tiny job, skips calls when loose and none when strict, keeps
the guidance branches apart, is reset per section and comes off after the job; calibrate-cache feeds MagCache."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from framepack_core.events import CancelToken, JobCancelled, JobFinished, StepProgress
from framepack_core.jobs.output_description import sidecar_path
from framepack_core.models.components import ModelVariant
from framepack_core.models.devices import resolve_device_config
from framepack_core.models.loaders import load_transformer
from framepack_core.models.loading import ModelSource
from framepack_core.models.store import ModelStore
from framepack_core.pipeline.engine import FramePackEngine
from framepack_core.request import GenerationRequest
from framepack_core.sampling.caches import apply_step_cache
from framepack_core.sampling.magcache_ratios import PUBLISHED_ORIGIN

# Steps per method: MagCache's published ratios at 5 steps have no ratio of exactly 1.0 after step 0 (a ratio of
# 1.0 adds no error, so it is skipped at any threshold); TaylorSeer needs two warm-up steps before it predicts.
STEPS = {"none": 3, "teacache": 3, "first-block": 3, "magcache": 5, "taylorseer": 6}
DIFFUSERS_CACHES = ["first-block", "magcache", "taylorseer"]


def _engine(models_dir: Path) -> FramePackEngine:
    return FramePackEngine(ModelStore(ModelSource(models_dir=models_dir), resolve_device_config("cpu")))


@pytest.fixture(scope="module")
def engine(tiny_models_dir):
    return _engine(tiny_models_dir)


def _run(engine, image, out_dir: Path, name: str, cache: str, threshold=None, steps=None, cfg=1.0, cancel=None):
    request = GenerationRequest(
        image=image, prompt="a cat", negative_prompt="blurry", seconds=0.8, latent_window_size=3, resolution=64,
        steps=steps or STEPS[cache], cache=cache, cache_threshold=threshold, cfg=cfg,
        output=out_dir / f"{name}.mp4", save_latents=out_dir / f"{name}.safetensors")
    events = []
    for event in engine.generate(request, cancel=cancel):
        events.append(event)
        if cancel is not None and isinstance(event, StepProgress):
            cancel.cancel()
    return events[-1], request


def _latents(path: Path) -> torch.Tensor:
    return load_file(str(path))["history_latents"]


def _cache_record(finished: JobFinished) -> dict:
    return json.loads(sidecar_path(finished.output_path).read_text())["fingerprint"]["cache"]


def _hooks_left(transformer: torch.nn.Module) -> list[str]:
    return [name for module in transformer.modules() if hasattr(module, "_diffusers_hook")
            for name in module._diffusers_hook.hooks]


@pytest.mark.parametrize("cache", DIFFUSERS_CACHES)
def test_a_diffusers_cache_skips_calls_at_a_loose_threshold_and_the_counts_reach_the_sidecar(
        engine, gradient_image, tmp_path, cache):
    loose = None if cache == "taylorseer" else 10.0
    finished, request = _run(engine, gradient_image, tmp_path, "loose", cache, threshold=loose)
    assert isinstance(finished, JobFinished), finished
    record = _cache_record(finished)
    sections = 2  # 0.8 s at window 3
    assert record["method"] == cache
    assert record["transformer_calls"] == sections * request.steps == finished.transformer_calls
    assert 0 < record["skipped_calls"] == finished.skipped_calls < record["transformer_calls"]
    assert record["computed_calls"] + record["skipped_calls"] == record["transformer_calls"]
    if cache == "magcache":
        assert record["magcache_ratios"] == PUBLISHED_ORIGIN


@pytest.mark.parametrize("cache", ["first-block", "magcache"])
def test_a_tiny_threshold_skips_nothing_and_equals_the_uncached_latents(engine, gradient_image, tmp_path, cache):
    steps = STEPS[cache]
    full, _ = _run(engine, gradient_image, tmp_path, "full", "none", steps=steps)
    assert isinstance(full, JobFinished), full
    strict, _ = _run(engine, gradient_image, tmp_path, "strict", cache, threshold=1e-9, steps=steps)
    assert isinstance(strict, JobFinished), strict
    assert strict.skipped_calls == 0 and _cache_record(strict)["skipped_calls"] == 0
    assert torch.equal(_latents(tmp_path / "strict.safetensors"), _latents(tmp_path / "full.safetensors"))


def test_teacache_counts_its_calls_too(engine, gradient_image, tmp_path):
    finished, request = _run(engine, gradient_image, tmp_path, "tea", "teacache", threshold=10.0)
    record = _cache_record(finished)
    assert record["method"] == "teacache" and record["transformer_calls"] == 2 * request.steps
    assert record["skipped_calls"] > 0  # steps 0 and n-1 always compute; the middle one is skipped


@pytest.mark.parametrize("cache", ["teacache", *DIFFUSERS_CACHES])
def test_after_a_cached_job_an_uncached_one_equals_a_fresh_engines(tiny_models_dir, gradient_image, tmp_path, cache):
    fresh, _ = _run(_engine(tiny_models_dir), gradient_image, tmp_path, "fresh", "none")
    used = _engine(tiny_models_dir)
    cached, _ = _run(used, gradient_image, tmp_path, "cached", cache, threshold=None if cache == "taylorseer" else 10.0)
    assert isinstance(cached, JobFinished) and cached.skipped_calls > 0
    transformer = used.models.transformer(ModelVariant.ORIGINAL)
    assert _hooks_left(transformer) == [] and not transformer.is_cache_enabled
    after, _ = _run(used, gradient_image, tmp_path, "after", "none")
    assert isinstance(after, JobFinished) and isinstance(fresh, JobFinished)
    assert torch.equal(_latents(tmp_path / "after.safetensors"), _latents(tmp_path / "fresh.safetensors"))


def test_a_cancelled_cached_job_takes_its_cache_off(tiny_models_dir, gradient_image, tmp_path):
    used = _engine(tiny_models_dir)
    cancelled, _ = _run(used, gradient_image, tmp_path, "cancelled", "magcache", threshold=10.0,
                        cancel=CancelToken())
    assert isinstance(cancelled, JobCancelled), cancelled
    transformer = used.models.transformer(ModelVariant.ORIGINAL)
    assert _hooks_left(transformer) == [] and not transformer.is_cache_enabled


def test_real_cfg_job_counts_both_branches(engine, gradient_image, tmp_path):
    finished, request = _run(engine, gradient_image, tmp_path, "cfg", "first-block", threshold=10.0, cfg=3.0)
    assert isinstance(finished, JobFinished), finished
    assert finished.transformer_calls == 2 * 2 * request.steps  # two sections, two branches per step
    assert finished.skipped_calls > 0


# CFG separation at the transformer: a cache that reuses whenever it may gives, for each branch, what that branch
# alone would give. Were the state shared, a positive call would reuse the negative call's residual.

@pytest.fixture(scope="module")
def transformer(tiny_models_dir):
    return load_transformer(ModelSource(models_dir=tiny_models_dir), "original", torch.device("cpu"), torch.float32)


def _inputs(transformer, seed: int, step: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    cfg = transformer.config
    h, w = 4, 6
    base = torch.randn(1, 16, 3, h, w, generator=g)
    return {
        "hidden_states": base * (1.0 - 0.1 * step), "timestep": torch.tensor([900.0 - 100.0 * step]),
        "encoder_hidden_states": torch.randn(1, 8, cfg.text_embed_dim, generator=g),
        "encoder_attention_mask": torch.ones(1, 8, dtype=torch.bool),
        "pooled_projections": torch.randn(1, cfg.pooled_projection_dim, generator=g),
        "image_embeds": torch.randn(1, 5, cfg.image_proj_dim, generator=g), "indices_latents": torch.arange(4, 7),
        "guidance": torch.tensor([10000.0]), "latents_clean": torch.randn(1, 16, 2, h, w, generator=g),
        "indices_latents_clean": torch.tensor([0, 7]), "latents_history_2x": torch.randn(1, 16, 2, h, w, generator=g),
        "indices_latents_history_2x": torch.tensor([8, 9]), "latents_history_4x": torch.randn(1, 16, 16, h, w, generator=g),
        "indices_latents_history_4x": torch.arange(10, 26), "return_dict": False}


# First-block compares the first block's residual with the last computed one: 0.5 lets a branch reuse its own
# (its steps differ by less) but not the other branch's (different prompts differ by more).
SEPARATION_THRESHOLDS = {"first-block": 0.5, "magcache": 1e3, "taylorseer": None}


def _cache(transformer, method: str, steps: int):
    threshold = SEPARATION_THRESHOLDS[method]
    return apply_step_cache(transformer, method, threshold, steps, magcache_ratios=[1.0] * steps)


@torch.no_grad()
def _calls(transformer, method: str, steps: int, branches: tuple[str, ...], shared: bool = False) -> tuple[dict, int]:
    cache = _cache(transformer, method, steps)
    outputs = {}
    try:
        cache.section_started()
        for step in range(steps):
            for branch in branches:
                with cache.call(step, "cond" if shared else branch):
                    outputs[branch, step] = transformer(**_inputs(transformer, {"cond": 1, "uncond": 2}[branch],
                                                                  step))[0]
    finally:
        cache.remove()
    return outputs, cache.stats.skipped


@pytest.mark.parametrize("method", DIFFUSERS_CACHES)
def test_the_cond_and_uncond_branches_keep_separate_cache_state(transformer, method):
    steps = 5
    together, skipped = _calls(transformer, method, steps, ("cond", "uncond"))
    assert skipped > 0  # the test means something only if the cache reused something
    cond_alone, _ = _calls(transformer, method, steps, ("cond",))
    uncond_alone, _ = _calls(transformer, method, steps, ("uncond",))
    for step in range(steps):
        assert torch.equal(together["cond", step], cond_alone["cond", step]), step
        assert torch.equal(together["uncond", step], uncond_alone["uncond", step]), step
    # Both branches in one context (what keying by branch prevents) would change the positive branch's outputs.
    shared, _ = _calls(transformer, method, steps, ("cond", "uncond"), shared=True)
    assert any(not torch.equal(shared["cond", step], cond_alone["cond", step]) for step in range(steps))
    assert _hooks_left(transformer) == []


@torch.no_grad()
def test_section_started_forgets_the_previous_sections_state(transformer):
    cache = _cache(transformer, "first-block", 3)
    try:
        first = []
        for _ in range(2):  # two "sections" with the same inputs: the second must start by computing again
            cache.section_started()
            for step in range(3):
                with cache.call(step, "cond"):
                    output = transformer(**_inputs(transformer, 1, step))[0]
                if step == 0:
                    first.append(output)
        assert cache.stats.skipped == 4 and cache.stats.computed == 2
        assert torch.equal(first[0], first[1])
    finally:
        cache.remove()


def test_calibrate_cache_writes_ratios_that_a_later_magcache_job_uses(tiny_models_dir, gradient_image, tmp_path):
    import shutil

    from framepack_core.cli.main import main

    models = tmp_path / "models"  # a copy: the ratios file lands next to the models
    shutil.copytree(tiny_models_dir, models)
    code = main(["calibrate-cache", "--image", str(gradient_image), "--models-dir", str(models), "--offline",
                 "--device", "cpu", "--steps", "5", "--seconds", "0.8", "--window", "3", "--resolution", "64"])
    assert code == 0
    saved = json.loads((models / "magcache_ratios.json").read_text())
    entry = saved["variants"]["original"]
    assert entry["steps"] == 5 and len(entry["ratios"]) == 5 and entry["ratios"][0] == 1.0
    assert entry["transformer"]
    finished, _ = _run(_engine(models), gradient_image, tmp_path, "calibrated", "magcache", threshold=10.0)
    assert isinstance(finished, JobFinished), finished
    assert _cache_record(finished)["magcache_ratios"] == f"calibrated ({models / 'magcache_ratios.json'})"
    assert finished.skipped_calls > 0


def test_choosing_a_cache_on_the_page_sets_its_threshold_or_hides_the_slider():
    from app.ui.generate_tab import cache_threshold_update

    assert cache_threshold_update("magcache") == {"__type__": "update", "visible": True, "value": 0.06}
    assert cache_threshold_update("first-block")["value"] == 0.05
    assert cache_threshold_update("taylorseer")["visible"] is False
    assert cache_threshold_update("none")["visible"] is False
