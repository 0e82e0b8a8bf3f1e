"""Turns the packed transformer into the data-prediction function the sampler integrates.

The transformer predicts a flow velocity ``v``; the data prediction is ``x0 = x - sigma * v``. The timestep
(sigma * 1000) and the distilled guidance (gs * 1000) are fed in the transformer's dtype, as the official app
does: in bf16 935.36 becomes 936, and a bf16 run only matches the official one if it rounds the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from framepack_core.models.text_encoding import PromptEmbeddings
from framepack_core.sampling.caches import StepCache
from framepack_core.sampling.packing import PackedContext, SectionPlan
from framepack_core.sampling.sampler import TIMESTEP_SCALE, GuidanceConfig, combine_guidance


@dataclass(frozen=True)
class SectionConditioning:
    positive: PromptEmbeddings
    negative: PromptEmbeddings | None  # None when real CFG is off
    image_embeddings: torch.Tensor
    context: PackedContext
    plan: SectionPlan


class PackedDenoiser:
    def __init__(
        self,
        transformer: torch.nn.Module,
        conditioning: SectionConditioning,
        distilled_guidance: float,
        guidance: GuidanceConfig,
        dtype: torch.dtype,
        device: torch.device,
        cache: StepCache | None = None,
    ) -> None:
        self.transformer = transformer
        self.guidance = guidance
        self.dtype = dtype
        self.cache = cache if cache is not None else StepCache()
        context, plan = conditioning.context, conditioning.plan
        shared = dict(
            image_embeds=conditioning.image_embeddings.to(device=device, dtype=dtype),
            indices_latents=plan.latent_indices.to(device),
            latents_clean=context.clean_latents.to(device=device, dtype=dtype),
            indices_latents_clean=plan.clean_latent_indices.to(device),
            latents_history_2x=context.clean_latents_2x.to(device=device, dtype=dtype),
            indices_latents_history_2x=plan.clean_latent_2x_indices.to(device),
            latents_history_4x=context.clean_latents_4x.to(device=device, dtype=dtype),
            indices_latents_history_4x=plan.clean_latent_4x_indices.to(device),
            guidance=torch.tensor([distilled_guidance * 1000.0]).to(device=device, dtype=dtype),
        )
        self._branches = {"cond": self._prompt_kwargs(conditioning.positive, device) | shared}
        if guidance.scale != 1.0:
            if conditioning.negative is None:
                raise ValueError("real CFG needs negative prompt embeddings")
            self._branches["uncond"] = self._prompt_kwargs(conditioning.negative, device) | shared

    def _prompt_kwargs(self, prompt: PromptEmbeddings, device: torch.device) -> dict[str, torch.Tensor]:
        prompt = prompt.to(device, self.dtype)
        return dict(
            encoder_hidden_states=prompt.llama_vec,
            encoder_attention_mask=prompt.llama_attention_mask,
            pooled_projections=prompt.clip_l_pooler,
        )

    def _velocity(self, x: torch.Tensor, timestep: torch.Tensor, branch: str, step: int) -> torch.Tensor:
        with self.cache.call(step, branch):
            return self.transformer(hidden_states=x, timestep=timestep, return_dict=False,
                                    **self._branches[branch])[0].float()

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, step: int) -> torch.Tensor:
        original_dtype = x.dtype
        sigma = sigma.float()
        x = x.to(self.dtype)
        timestep = (sigma * TIMESTEP_SCALE).to(self.dtype)
        positive = self._velocity(x, timestep, "cond", step)
        negative = self._velocity(x, timestep, "uncond", step) if "uncond" in self._branches else None
        velocity = combine_guidance(positive, negative, self.guidance)
        x0 = x.float() - velocity.float() * sigma.reshape(-1, *([1] * (x.ndim - 1)))
        return x0.to(original_dtype)
