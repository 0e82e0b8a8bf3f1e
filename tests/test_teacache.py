"""TeaCache hooks: reversible, identical to no cache when nothing is skipped, and keyed by step and branch."""

import pytest
import torch
from diffusers.hooks import HookRegistry

from framepack_core.models.loaders import load_transformer
from framepack_core.models.loading import ModelSource
from framepack_core.sampling.teacache import TeaCacheConfig, apply_teacache


@pytest.fixture(scope="module")
def transformer(tiny_models_dir):
    return load_transformer(ModelSource(models_dir=tiny_models_dir), "original", torch.device("cpu"), torch.float32)


def _inputs(transformer, seed=0):
    g = torch.Generator().manual_seed(seed)
    cfg = transformer.config
    h, w = 4, 6
    return dict(
        hidden_states=torch.randn(1, 16, 3, h, w, generator=g),
        timestep=torch.tensor([900.0]),
        encoder_hidden_states=torch.randn(1, 8, cfg.text_embed_dim, generator=g),
        encoder_attention_mask=torch.ones(1, 8, dtype=torch.bool),
        pooled_projections=torch.randn(1, cfg.pooled_projection_dim, generator=g),
        image_embeds=torch.randn(1, 5, cfg.image_proj_dim, generator=g),
        indices_latents=torch.arange(4, 7),
        guidance=torch.tensor([10000.0]),
        latents_clean=torch.randn(1, 16, 2, h, w, generator=g),
        indices_latents_clean=torch.tensor([0, 7]),
        latents_history_2x=torch.randn(1, 16, 2, h, w, generator=g),
        indices_latents_history_2x=torch.tensor([8, 9]),
        latents_history_4x=torch.randn(1, 16, 16, h, w, generator=g),
        indices_latents_history_4x=torch.arange(10, 26),
        return_dict=False,
    )


def _hook_names(transformer):
    blocks = list(transformer.transformer_blocks) + list(transformer.single_transformer_blocks)
    return [list(HookRegistry.check_if_exists_or_initialize(b).hooks) for b in blocks]


@torch.no_grad()
def test_hooks_come_off_and_leave_the_forward_unchanged(transformer):
    inputs = _inputs(transformer)
    before = transformer(**inputs)[0]
    cache = apply_teacache(transformer, TeaCacheConfig(threshold=0.15, num_steps=3))
    assert all(names == ["framepack_teacache"] for names in _hook_names(transformer))
    # Outside a step context the hooks pass everything through.
    assert torch.equal(transformer(**inputs)[0], before)
    cache.remove()
    assert all(names == [] for names in _hook_names(transformer))
    assert torch.equal(transformer(**inputs)[0], before)


@torch.no_grad()
def test_skipped_step_reuses_the_residual_and_first_and_last_steps_always_compute(transformer):
    cache = apply_teacache(transformer, TeaCacheConfig(threshold=1e6, num_steps=4))
    try:
        outputs = []
        for step in range(4):
            inputs = _inputs(transformer)
            inputs["timestep"] = torch.tensor([900.0 - step])  # nearly unchanged input: skip-worthy
            with cache.step(step, "cond"):
                outputs.append(transformer(**inputs)[0])
        assert (cache.stats.computed, cache.stats.skipped) == (2, 2)  # steps 0 and 3 computed
        # A skipped step adds the cached residual to its own embedded input instead of running the blocks.
        assert torch.isfinite(outputs[1]).all() and not torch.equal(outputs[1], outputs[0])
    finally:
        cache.remove()


@torch.no_grad()
def test_cond_and_uncond_branches_keep_their_own_state(transformer):
    cache = apply_teacache(transformer, TeaCacheConfig(threshold=1e6, num_steps=3))
    try:
        for step in range(3):
            for branch, seed in (("cond", 0), ("uncond", 1)):
                with cache.step(step, branch):
                    transformer(**_inputs(transformer, seed))
        # Two calls per step (real CFG): still only the middle step of each branch is skipped. A call counter, as
        # in the official app, would have wrapped after 3 calls and mis-scheduled the rest.
        assert (cache.stats.computed, cache.stats.skipped) == (4, 2)
        cache.reset()
        with cache.step(1, "cond"):  # after a reset there is no residual: must compute
            transformer(**_inputs(transformer))
        assert cache.stats.computed == 5
    finally:
        cache.remove()


@torch.no_grad()
def test_zero_threshold_computes_every_step_and_matches_no_cache(transformer):
    reference = [transformer(**_inputs(transformer, seed))[0] for seed in range(3)]
    cache = apply_teacache(transformer, TeaCacheConfig(threshold=1e-12, num_steps=3))
    try:
        for step, seed in enumerate(range(3)):
            with cache.step(step):
                assert torch.equal(transformer(**_inputs(transformer, seed))[0], reference[step])
        assert cache.stats.skipped == 0
    finally:
        cache.remove()


@torch.no_grad()
def test_bf16_transformer_gets_an_fp32_output_projection_that_comes_off_again(tiny_models_dir):
    from framepack_core.models.precision import apply_fp32_output_projection, remove_fp32_output_projection

    model = load_transformer(ModelSource(models_dir=tiny_models_dir), "f1", torch.device("cpu"), torch.bfloat16)
    inputs = {k: (v.to(torch.bfloat16) if torch.is_tensor(v) and v.is_floating_point() else v)
              for k, v in _inputs(model).items()}
    assert model(**inputs)[0].dtype == torch.bfloat16
    assert apply_fp32_output_projection(model)
    out = model(**inputs)[0]
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert model.transformer_blocks[0].attn.to_q.weight.dtype == torch.bfloat16  # only proj_out changed
    remove_fp32_output_projection(model, torch.bfloat16)
    assert model(**inputs)[0].dtype == torch.bfloat16
    fp32 = load_transformer(ModelSource(models_dir=tiny_models_dir), "f1", torch.device("cpu"), torch.float32)
    assert not apply_fp32_output_projection(fp32)
