"""Starting a re-roll (``framepack_core.jobs.reroll``): the writer's pending edge frames, decoded again.

A re-roll's folder holds a checkpoint after K-1 sections without the pending edge (the frames section K blends
into): storing it for every section would cost 3 x (4 x window - 3) x height x width floats each. It is the edge
of the last kept section's decoded chunk, which is a function of the kept history latents, so one VAE decode of
the same latents gives it back, exactly as the section loop decoded it.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from framepack_core.jobs.checkpoint import SectionCheckpoint
from framepack_core.media.video_io import Order, WriterState
from framepack_core.models.components import Component
from framepack_core.models.store import ModelStore
from framepack_core.sampling.packing import LatentHistory, SectionPlan
from framepack_core.sampling.schedule import overlap_pixel_frames


def resumed_writer(checkpoint: SectionCheckpoint | None, history: LatentHistory, sections: list[SectionPlan],
                   window: int, order: Order, models: ModelStore, vae: torch.nn.Module) -> WriterState | None:
    """The writer state to resume from: the checkpoint's, with its pending edge decoded again when a re-roll's
    folder left it out. ``history`` must already hold the checkpoint's latents."""
    if checkpoint is None:
        return None
    state = checkpoint.writer
    if state.pending is not None or state.sections == 0:
        return state
    last = sections[state.sections - 1]
    pixels = decode_latents(models, vae, history.latents_to_decode(last.number, last.is_last, window))
    # Every decoded chunk is at least two overlaps long after the first section (and exactly one for the first),
    # so the edge the writer kept is the chunk's own edge, not yet blended with anything.
    overlap = overlap_pixel_frames(window)
    edge = pixels[:, :, :overlap] if order == "prepend" else pixels[:, :, -overlap:]
    return replace(state, pending=edge.clone())


def decode_latents(models: ModelStore, vae: torch.nn.Module, latents: torch.Tensor) -> torch.Tensor:
    """The section loop's decode (``SectionLoop._decode``), step for step, so the edge is the same numbers."""
    with torch.no_grad(), models.stage(Component.VAE):
        pixels = vae.decode((latents / vae.config.scaling_factor).to(device=vae.device, dtype=vae.dtype))
        return pixels.sample.float().cpu()
