"""End frame, loop and section keyframes (original model): images that become a section's nearest clean context.

The original model generates the END of the clip first, and every section sees one latent right after its window
at 1x (``clean_latents_post``), zeros for the first section. Both controls put an image's latent in that slot:

* the end image (or, for a loop, the start image), times ``end_strength``, in the FIRST generated section (the
  end of the video), as lllyasviel/FramePack PR #167 and diffusers' ``last_image`` do;
* a keyframe, in the section that covers its time (``sampling.timeline``), and in that section only.

Images are checked before any model loads (``check_story_images``, raising ``InvalidInputError`` naming the
field), then bucketed to the start image's size and encoded like it (``encode_story_images``). The section loop
asks ``anchored_context`` for each section's context; with no anchors it returns the context unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from framepack_core.errors import InvalidInputError
from framepack_core.media.buckets import resize_and_center_crop
from framepack_core.media.image_input import load_input_image
from framepack_core.models.components import Component, ModelVariant
from framepack_core.models.store import ModelStore
from framepack_core.request import GenerationRequest
from framepack_core.sampling.packing import PackedContext
from framepack_core.sampling.timeline import section_at, section_spans

F1_HAS_NO_SLOT = ("FramePack-F1 generates forward and its sections have no slot after the window, so it has no "
                  "place for ")
ORIGINAL_MODEL_HINT = "Set {model} to original: it generates the end of the video first and conditions on it."


@dataclass(frozen=True)
class StoryImages:
    """The checked images of a request's end frame and keyframes, as decoded pixels (uint8 HxWx3)."""

    end: np.ndarray | None = None  # None: no end frame; for a loop, the start image's pixels
    is_loop: bool = False
    keyframes: dict[int, np.ndarray] = field(default_factory=dict)  # by section number, 0-based, generation order
    notes: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return self.end is None and not self.keyframes


@dataclass(frozen=True)
class SectionAnchors:
    """Latents that replace ``clean_latents_post`` in some sections, by section number (0-based, generation order)."""

    post: dict[int, torch.Tensor] = field(default_factory=dict)


def check_story_images(request: GenerationRequest, start_pixels: np.ndarray) -> StoryImages:
    """Check the end frame and keyframes of a validated ``request`` against its model and length, and load their
    images; ``InvalidInputError`` names ``end_image``, ``loop`` or ``keyframes``."""
    model = ModelVariant(request.model)
    if model == ModelVariant.F1 and request.end_image_path is not None:
        name = "loop" if request.loop else "end_image"
        raise InvalidInputError(name, F1_HAS_NO_SLOT + "an end frame", ORIGINAL_MODEL_HINT)
    if model == ModelVariant.F1 and request.keyframes:
        raise InvalidInputError("keyframes", F1_HAS_NO_SLOT + "a keyframe", ORIGINAL_MODEL_HINT)
    notes: list[str] = []
    end = None
    if request.loop:
        end = start_pixels
    elif request.end_image is not None:
        end = _load("end_image", request.end_image, "End image", notes)
    keyframes = {}
    spans = section_spans(model, request.seconds, request.latent_window_size)
    owner: dict[int, float] = {}
    for keyframe in request.keyframes:
        span = section_at(spans, keyframe.seconds)
        if span is None:
            raise InvalidInputError("keyframes", f"the keyframe at {keyframe.seconds:g} s is past the end of the "
                                                 f"video, which is {max(s.end_s for s in spans):.2f} s long",
                                    "Give a time inside the video, or make the video longer with {seconds}.")
        where = f"section {span.number} ({span.start_s:.2f}-{span.end_s:.2f} s)"
        if span.number in owner:
            raise InvalidInputError("keyframes", f"the keyframes at {owner[span.number]:g} s and "
                                                 f"{keyframe.seconds:g} s both fall in {where}; a section takes one",
                                    "Keep one of them, or move one to another section.")
        if span.number == 1 and end is not None:
            raise InvalidInputError("keyframes", f"the keyframe at {keyframe.seconds:g} s falls in {where}, the "
                                                 "end of the video, which the end frame already anchors",
                                    "Move the keyframe earlier, or leave out the end frame.")
        owner[span.number] = keyframe.seconds
        keyframes[span.number - 1] = _load("keyframes", keyframe.image, f"Keyframe at {keyframe.seconds:g} s", notes)
    return StoryImages(end=end, is_loop=request.loop, keyframes=keyframes, notes=tuple(notes))


def _load(name: str, path: Path, label: str, notes: list[str]) -> np.ndarray:
    """Load and check an image as the start image is, with errors naming the request field ``name``."""
    try:
        loaded = load_input_image(path)
    except InvalidInputError as error:
        raise InvalidInputError(name, error.message.removeprefix(f"{error.field}: "), error.hint) from None
    notes.extend(f"{label}: {note}" for note in loaded.notes)
    return loaded.pixels


def encode_story_images(models: ModelStore, request: GenerationRequest, story: StoryImages, height: int,
                        width: int, start_latent: torch.Tensor, start_embeddings: torch.Tensor
                        ) -> tuple[torch.Tensor, SectionAnchors]:
    """The image embeddings every section gets and the sections' anchor latents. The end image is bucketed to the
    start image's size; its SigLIP embedding is mixed in as ``(1 - W) * start + W * end``."""
    post: dict[int, torch.Tensor] = {}
    embeddings = start_embeddings
    if story.end is not None:
        cropped = resize_and_center_crop(story.end, target_height=height, target_width=width)
        weight = request.end_image_embedding_weight
        # A loop's end is the start image: its latent and embedding are the start's, already computed.
        if request.end_strength > 0:
            latent = start_latent if story.is_loop else vae_latent(models, cropped)
            post[0] = latent * request.end_strength
        if weight > 0 and not story.is_loop:
            embeddings = mixed_embeddings(start_embeddings, siglip_embeddings(models, cropped), weight)
    for number, pixels in story.keyframes.items():
        post[number] = vae_latent(models, resize_and_center_crop(pixels, target_height=height, target_width=width))
    return embeddings, SectionAnchors(post)


def mixed_embeddings(start: torch.Tensor, end: torch.Tensor, weight: float) -> torch.Tensor:
    """``(1 - weight) * start + weight * end``; at 0.5 this is bit for bit diffusers' ``(start + end) / 2``."""
    return (1.0 - weight) * start + weight * end.to(start.dtype)


def vae_latent(models: ModelStore, cropped: np.ndarray) -> torch.Tensor:
    """A bucketed image's latent, as the start image's: the posterior's mode times the scaling factor."""
    vae = models.vae()
    image = (torch.from_numpy(cropped).float() / 127.5 - 1).permute(2, 0, 1)[None, :, None]
    with torch.no_grad(), models.stage(Component.VAE):
        posterior = vae.encode(image.to(device=vae.device, dtype=vae.dtype)).latent_dist
        return (posterior.mode() * vae.config.scaling_factor).float().cpu()


def siglip_embeddings(models: ModelStore, cropped: np.ndarray) -> torch.Tensor:
    feature_extractor, image_encoder = models.image_encoder()
    with torch.no_grad(), models.stage(Component.IMAGE_ENCODER):
        inputs = feature_extractor.preprocess(images=cropped, return_tensors="pt")
        inputs = inputs.to(device=image_encoder.device, dtype=image_encoder.dtype)
        return image_encoder(**inputs).last_hidden_state


def anchored_context(context: PackedContext, section_number: int, anchors: SectionAnchors | None) -> PackedContext:
    """``context`` with section ``section_number``'s anchor (if any) as its ``clean_latents_post``."""
    if anchors is None or section_number not in anchors.post:
        return context
    clean = context.clean_latents
    anchor = anchors.post[section_number].to(device=clean.device, dtype=clean.dtype)
    return PackedContext(clean_latents=torch.cat([clean[:, :, :1], anchor], dim=2),
                         clean_latents_2x=context.clean_latents_2x, clean_latents_4x=context.clean_latents_4x)
