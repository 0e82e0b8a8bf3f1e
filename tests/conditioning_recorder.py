"""Records what the transformer receives on every call of a tiny-model run: the conditioning tensors per section."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch

from framepack_core.events import JobFinished
from framepack_core.models.components import ModelVariant
from framepack_core.pipeline.engine import FramePackEngine
from framepack_core.request import GenerationRequest

# One step a section: one transformer call a section (no CFG, no TeaCache), so call i is section i + 1.
# Window 3 at base resolution 64: 0.4 s is one section, 0.8 s two, 1.2 s three (0.4 s each).
ONE_STEP = {"latent_window_size": 3, "steps": 1, "resolution": 64, "cache": "none"}
CONDITIONING = ("latents_clean", "latents_history_2x", "latents_history_4x", "image_embeds", "encoder_hidden_states",
                "pooled_projections", "hidden_states", "indices_latents", "indices_latents_clean")


@contextlib.contextmanager
def recording(engine: FramePackEngine, model: str = "original") -> Iterator[list[dict[str, torch.Tensor]]]:
    """Yield a list that fills with one dict of cloned tensor kwargs per transformer call."""
    calls: list[dict[str, torch.Tensor]] = []

    def hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        calls.append({k: v.detach().clone() for k, v in kwargs.items() if isinstance(v, torch.Tensor)})

    handle = engine.models.transformer(ModelVariant(model)).register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield calls
    finally:
        handle.remove()


def run_recorded(engine: FramePackEngine, tmp_path: Path, name: str, **settings: object
                 ) -> tuple[list[dict[str, torch.Tensor]], Path]:
    """Run a job; returns the transformer calls and the saved latents file."""
    latents = tmp_path / f"{name}.safetensors"
    request = GenerationRequest(output=tmp_path / f"{name}.mp4", save_latents=latents, **{**ONE_STEP, **settings})
    with recording(engine, ModelVariant(request.model).value) as calls:
        last = list(engine.generate(request))[-1]
    assert isinstance(last, JobFinished), last
    return calls, latents


def assert_same_calls(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], skip: tuple[str, ...] = ()) -> None:
    for name in CONDITIONING:
        if name not in skip:
            assert torch.equal(a[name], b[name]), name
