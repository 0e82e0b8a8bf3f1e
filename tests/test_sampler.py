"""The flow-matching UniPC sampler: the official sigma table, and accuracy on an ODE with a known solution."""

import math

import pytest
import torch

from framepack_core.sampling.sampler import (
    FlowMatchUniPC,
    GuidanceConfig,
    combine_guidance,
    flux_shift_mu,
    main_token_count,
    shifted_sigmas,
)

OFFICIAL_25_STEP_SIGMAS = [
    1.0, .9941, .9877, .9809, .9735, .9655, .9568, .9474, .9370, .9256, .9130, .8991, .8835, .8660, .8462, .8235,
    .7975, .7671, .7313, .6885, .6364, .5714, .4884, .3784, .2258, 0.0,
]


def test_25_step_sigmas_at_a_640_bucket_match_the_official_list():
    mu = flux_shift_mu(main_token_count(9, 608 // 8, 640 // 8))
    assert mu == pytest.approx(math.log(7.0))
    sigmas = shifted_sigmas(25, mu)
    assert sigmas.dtype == torch.float32
    assert [round(v, 4) for v in sigmas.tolist()] == pytest.approx(OFFICIAL_25_STEP_SIGMAS, abs=1e-4)


def test_shift_is_not_capped_at_small_sizes():
    # 48x64 px -> 6x8 latents, 9 frames -> 108 tokens; the official mu there is about 0.47 (notes §8).
    assert flux_shift_mu(main_token_count(9, 6, 8)) == pytest.approx(0.475, abs=0.01)
    assert flux_shift_mu(8798) == pytest.approx(math.log(7.0), abs=1e-3)


class _GaussianFlow:
    """Data x0 ~ N(mu, s^2) per element, x_sigma = (1 - sigma) x0 + sigma eps: the ideal denoiser is linear,
    and the probability-flow ODE keeps the standardised value z = (x - m(sigma)) / sd(sigma) constant."""

    def __init__(self, mean=0.7, std=0.3):
        self.mean, self.std = mean, std

    def marginal(self, sigma):
        return (1 - sigma) * self.mean, math.sqrt(((1 - sigma) * self.std) ** 2 + sigma**2)

    def denoise(self, x, sigma_vector, _step):
        sigma = float(sigma_vector[0])
        m, sd = self.marginal(sigma)
        return self.mean + (1 - sigma) * self.std**2 / sd**2 * (x - m)

    def exact(self, z, sigma):
        m, sd = self.marginal(sigma)
        return m + sd * z


def _log_uniform_to(end_sigma, steps):
    """Sigmas evenly spaced in log-sigma from 1 to ``end_sigma``, plus the final 0 the sampler never evaluates,
    so its last x lands on ``end_sigma``. (With the real shifted schedule the last gap never shrinks in
    log-sigma as steps grow, which hides the convergence order.)"""
    sigmas = torch.exp(-torch.linspace(0, -math.log(end_sigma), steps + 1, dtype=torch.float64))
    return torch.cat([sigmas, torch.zeros(1, dtype=torch.float64)])


@pytest.mark.parametrize("variant", ["bh1", "bh2"])
def test_sampler_follows_the_exact_ode_solution_with_high_order_convergence(variant):
    flow = _GaussianFlow()
    z = torch.randn(4, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    errors = {}
    for steps in (8, 16, 32):
        last = list(FlowMatchUniPC(variant).steps(flow.denoise, z.clone(), _log_uniform_to(0.2, steps)))[-1]
        errors[steps] = (last.x - flow.exact(z, 0.2)).abs().max().item()
    assert errors[16] < 1e-4
    # Order 3 and up: doubling the steps cuts the error about 8x or more (first order would give 2x).
    assert errors[8] / errors[16] > 6 and errors[16] / errors[32] > 6


def test_first_order_step_is_exact_flow_matching_ddim():
    """One step from sigma=1 with a constant data prediction lands exactly on (1 - s) x0 + s x."""
    x, x0 = torch.randn(2, 3), torch.randn(2, 3)
    sigmas = torch.tensor([1.0, 0.6, 0.0])
    steps = list(FlowMatchUniPC(max_order=1).steps(lambda x_, s_, i: x0, x.clone(), sigmas))
    # order 1 with the UniC corrector: the corrector term vanishes when the prediction does not change
    assert torch.allclose(steps[-1].x, 0.6 * x + 0.4 * x0, atol=1e-6)


def test_result_is_the_last_data_prediction():
    flow = _GaussianFlow()
    z = torch.randn(3, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    sigmas = shifted_sigmas(25, math.log(7.0)).double()
    steps = list(FlowMatchUniPC().steps(flow.denoise, z.clone(), sigmas))
    assert len(steps) == 25
    result = FlowMatchUniPC().sample(flow.denoise, z.clone(), sigmas)
    assert torch.equal(result, steps[-1].denoised)


@pytest.mark.parametrize("steps", [1, 2, 3])
def test_very_few_steps_still_sample(steps):
    calls = []

    def model(x, sigma, step):
        calls.append(step)
        return x * 0.5

    out = FlowMatchUniPC().sample(model, torch.ones(1, 4), shifted_sigmas(steps, 1.0))
    assert out.shape == (1, 4) and torch.isfinite(out).all()
    assert calls == list(range(steps))  # one model call per step


def test_unknown_variant_is_refused():
    with pytest.raises(ValueError, match="bh1"):
        FlowMatchUniPC("bh3")


def test_cfg_combines_and_rescales_like_the_reference():
    pos, neg = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    assert torch.equal(combine_guidance(pos, None, GuidanceConfig()), pos)
    out = combine_guidance(pos, neg, GuidanceConfig(scale=3.0))
    assert torch.allclose(out, neg + 3.0 * (pos - neg))
    rescaled = combine_guidance(pos, neg, GuidanceConfig(scale=3.0, rescale=1.0))
    assert torch.allclose(rescaled.std(dim=(1, 2)), pos.std(dim=(1, 2)), atol=1e-5)
