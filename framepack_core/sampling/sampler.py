"""The official app's sampler: UniPC for flow matching, on a flux-shifted sigma schedule.

No diffusers scheduler reproduces it (integer timesteps, a different lambda, a static shift and a last-step
NaN in bh1; measured in shared/reference/diffusers_notes.md §8), so it is written here from the maths:

* schedule: sigmas = linspace(1, 0, steps + 1) mapped through the flux time shift
  ``s(t) = e^mu / (e^mu + 1/t - 1)``, with mu linear in the number of main tokens and capped at ln 7;
* the model predicts a flow velocity v and the data prediction is ``x0 = x - sigma * v``;
* UniPC (Zhao et al. 2023) in data-prediction form with ``lambda = -log(sigma)``: a multistep predictor of
  order up to 3 (warm-up orders 1 and 2) and the UniC corrector that reuses the model evaluation at the new
  point, so each step costs one model call (two with real CFG).

The loop evaluates the model at sigmas[0 .. n-1] and returns the last data prediction, which equals a final
first-order jump to sigma = 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import torch

FLUX_SHIFT_BASE_TOKENS, FLUX_SHIFT_BASE_MU = 256, 0.5
FLUX_SHIFT_MAX_TOKENS, FLUX_SHIFT_MAX_MU = 4096, 1.15
MAX_SHIFT = 7.0
TIMESTEP_SCALE = 1000.0

# model_fn(x, sigma_vector, step_index) -> data prediction x0, same shape and dtype as x
DataPredictionFn = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]
StepCallback = Callable[[int, torch.Tensor, torch.Tensor], None]


def flux_shift_mu(main_token_count: int) -> float:
    """Flux's resolution-dependent shift, capped at ln 7: only the real 640 buckets reach the cap."""
    slope = (FLUX_SHIFT_MAX_MU - FLUX_SHIFT_BASE_MU) / (FLUX_SHIFT_MAX_TOKENS - FLUX_SHIFT_BASE_TOKENS)
    intercept = FLUX_SHIFT_BASE_MU - slope * FLUX_SHIFT_BASE_TOKENS
    return min(slope * main_token_count + intercept, math.log(MAX_SHIFT))


def main_token_count(latent_frames: int, latent_height: int, latent_width: int) -> int:
    """Tokens of the noisy window after the 1x2x2 patchify."""
    return latent_frames * latent_height * latent_width // 4


def shifted_sigmas(num_inference_steps: int, mu: float) -> torch.Tensor:
    """``num_inference_steps + 1`` float32 sigmas from 1 down to 0."""
    t = torch.linspace(1, 0, steps=num_inference_steps + 1)
    return math.exp(mu) / (math.exp(mu) + (1 / t - 1))


@dataclass(frozen=True)
class GuidanceConfig:
    """Real classifier-free guidance; ``scale == 1`` means a single model call per step."""

    scale: float = 1.0
    rescale: float = 0.0


def combine_guidance(
    positive: torch.Tensor, negative: torch.Tensor | None, guidance: GuidanceConfig
) -> torch.Tensor:
    """``neg + s * (pos - neg)``, then the std-ratio rescale of Lin et al. 2023 when ``rescale > 0``."""
    if guidance.scale == 1.0 or negative is None:
        combined = positive
    else:
        combined = negative + guidance.scale * (positive - negative)
    if guidance.rescale == 0:
        return combined
    dims = list(range(1, positive.ndim))
    rescaled = combined * (positive.std(dim=dims, keepdim=True) / combined.std(dim=dims, keepdim=True))
    return guidance.rescale * rescaled + (1.0 - guidance.rescale) * combined


def _broadcast(values: torch.Tensor, ndim: int) -> torch.Tensor:
    return values.reshape(values.shape + (1,) * (ndim - values.ndim))


@dataclass(frozen=True)
class SamplerStep:
    index: int
    x: torch.Tensor
    denoised: torch.Tensor


class FlowMatchUniPC:
    """Multistep UniPC predictor-corrector on flow-matching data predictions.

    Args:
        variant: ``"bh1"`` (B(h) = h, the official default) or ``"bh2"`` (B(h) = e^h - 1).
        max_order: highest multistep order, 3 in the official app.
    """

    def __init__(self, variant: Literal["bh1", "bh2"] = "bh1", max_order: int = 3) -> None:
        if variant not in ("bh1", "bh2"):
            raise ValueError(f"variant must be 'bh1' or 'bh2', got {variant!r}")
        self.variant = variant
        self.max_order = max_order

    def sample(
        self,
        model_fn: DataPredictionFn,
        x: torch.Tensor,
        sigmas: torch.Tensor,
        callback: StepCallback | None = None,
    ) -> torch.Tensor:
        """Run every step and return the final data prediction."""
        prediction = x
        for step in self.steps(model_fn, x, sigmas):
            prediction = step.denoised
            if callback is not None:
                callback(step.index, step.x, step.denoised)
        return prediction

    def steps(self, model_fn: DataPredictionFn, x: torch.Tensor, sigmas: torch.Tensor) -> Iterator[SamplerStep]:
        """Yield after every model evaluation, so a caller can report progress or stop between steps.

        The last yielded ``denoised`` is the sampler's result.
        """
        order = min(self.max_order, len(sigmas) - 2)
        past_sigmas: list[torch.Tensor] = []
        past_predictions: list[torch.Tensor] = []
        for index in range(len(sigmas) - 1):
            sigma = sigmas[index].expand(x.shape[0])
            if index == 0:
                prediction = model_fn(x, sigma, index)
            else:
                x, prediction = self._step(model_fn, x, past_predictions, past_sigmas, sigma, min(index, order), index)
            # Python slicing with -0 keeps the whole list, which is what one-step sampling needs.
            past_predictions = (past_predictions + [prediction])[-order:]
            past_sigmas = (past_sigmas + [sigma])[-order:]
            yield SamplerStep(index=index, x=x, denoised=prediction)

    def _step(
        self,
        model_fn: DataPredictionFn,
        x: torch.Tensor,
        past_predictions: list[torch.Tensor],
        past_sigmas: list[torch.Tensor],
        sigma: torch.Tensor,
        order: int,
        step: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        sigma_prev, prediction_prev = past_sigmas[-1], past_predictions[-1]
        lambda_prev = -torch.log(sigma_prev)
        h = -torch.log(sigma) - lambda_prev

        # Scaled differences to the older predictions, newest first.
        ratios, differences = [], []
        for back in range(2, order + 1):
            ratio = ((-torch.log(past_sigmas[-back]) - lambda_prev) / h)[0]
            ratios.append(ratio)
            differences.append((past_predictions[-back] - prediction_prev) / ratio)
        ratios.append(torch.tensor(1.0, dtype=sigma.dtype, device=sigma.device))
        ratios_t = torch.stack(ratios).to(x.device)

        neg_h = -h[0]
        phi_1 = torch.expm1(neg_h)
        b_h = neg_h if self.variant == "bh1" else torch.expm1(neg_h)

        # Order conditions R @ rho = b of the UniPC paper (eq. 8), phi_k recursively.
        rows, rhs = [], []
        phi_k = phi_1 / neg_h - 1
        factorial = 1
        for k in range(1, order + 1):
            rows.append(torch.pow(ratios_t, k - 1))
            rhs.append(phi_k * factorial / b_h)
            factorial *= k + 1
            phi_k = phi_k / neg_h - 1 / factorial
        r_matrix = torch.stack(rows)
        b_vector = torch.stack(rhs).to(x.device)

        stacked = torch.stack(differences, dim=1) if differences else None
        x_first_order = _broadcast(sigma / sigma_prev, x.ndim) * x - _broadcast(phi_1, x.ndim) * prediction_prev

        if stacked is None:
            x_pred = x_first_order
        else:
            rhos_p = b_vector.new_tensor([0.5]) if order == 2 else torch.linalg.solve(
                r_matrix[:-1, :-1], b_vector[:-1]
            )
            x_pred = x_first_order - _broadcast(b_h, x.ndim) * torch.tensordot(stacked, rhos_p, dims=([1], [0]))

        prediction = model_fn(x_pred, sigma, step)

        rhos_c = b_vector.new_tensor([0.5]) if order == 1 else torch.linalg.solve(r_matrix, b_vector)
        correction = rhos_c[-1] * (prediction - prediction_prev)
        if stacked is not None:
            correction = torch.tensordot(stacked, rhos_c[:-1], dims=([1], [0])) + correction
        return x_first_order - _broadcast(b_h, x.ndim) * correction, prediction
