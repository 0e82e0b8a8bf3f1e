"""The inputs every section is conditioned on: the prompt embeddings, the start image's latent and its SigLIP
embeddings, computed once per job in the official app's order (text, bucket and crop, VAE, SigLIP)."""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field

import numpy as np
import torch

from framepack_core.events import CancelToken, EngineEvent, InputPrepared, Notice, Stage, StageChanged
from framepack_core.media.buckets import find_nearest_bucket, resize_and_center_crop
from framepack_core.models.components import Component
from framepack_core.models.store import ModelStore
from framepack_core.models.text_encoding import PromptEmbeddings
from framepack_core.pipeline.story_inputs import SectionAnchors, StoryImages, encode_story_images
from framepack_core.prompts.embeddings import SectionPrompts, encode_section_prompts
from framepack_core.request import GenerationRequest
from framepack_core.sampling.schedule import video_length


@dataclass(frozen=True)
class PreparedInputs:
    """Everything the section loop needs that does not change between sections."""

    positive: SectionPrompts
    negative: PromptEmbeddings | None
    image_embeddings: torch.Tensor
    start_latent: torch.Tensor
    height: int  # of the bucketed start image, in pixels
    width: int
    anchors: SectionAnchors = field(default_factory=SectionAnchors)  # end frame and keyframes (story_inputs)


def prepare_inputs(models: ModelStore, request: GenerationRequest, pixels: np.ndarray, job_id: str,
                   cancel: CancelToken, story: StoryImages | None = None) -> Generator[EngineEvent, None, PreparedInputs]:
    """Encode the prompts and the start image (``pixels``, uint8 HxWx3), yielding a stage event before each step
    and the cropped image as the model sees it; returns the encodings."""
    # 1. Text encoding (the negative prompt only matters with real CFG)
    yield StageChanged(job_id, stage=Stage.TEXT_ENCODING, message="Text encoding ...")
    positive = encode_section_prompts(models, request)  # one per section: a timed prompt changes over time
    negative = models.encode_prompt(request.negative_prompt) if request.cfg != 1.0 else None
    models.finish_text_encoding()
    for name, embeddings in (("prompt", positive), ("negative prompt", negative)):
        if embeddings is not None and embeddings.truncated:
            yield Notice(job_id, message=f"The {name} is longer than 256 tokens; only the first 256 are used.")
    cancel.raise_if_cancelled()

    # 2. The start image, resized and centre-cropped to the nearest bucket
    yield StageChanged(job_id, stage=Stage.IMAGE_PROCESSING, message="Image processing ...")
    source_height, source_width = pixels.shape[:2]
    height, width = find_nearest_bucket(source_height, source_width, resolution=request.resolution)
    cropped = resize_and_center_crop(pixels, target_height=height, target_width=width)
    length = video_length(request.seconds, request.latent_window_size)
    yield InputPrepared(job_id, image=cropped, width=width, height=height,
                        total_sections=length.sections, video_frames=length.pixel_frames)

    # 3. Its latent
    yield StageChanged(job_id, stage=Stage.VAE_ENCODING, message="VAE encoding ...")
    vae = models.vae()
    image_tensor = torch.from_numpy(cropped).float() / 127.5 - 1
    image_tensor = image_tensor.permute(2, 0, 1)[None, :, None]
    with torch.no_grad(), models.stage(Component.VAE):
        posterior = vae.encode(image_tensor.to(device=vae.device, dtype=vae.dtype)).latent_dist
        # The posterior mean, not a sample: the official app samples with the global RNG, which makes its
        # runs unrepeatable; the mean is what that sample scatters around.
        start_latent = (posterior.mode() * vae.config.scaling_factor).float().cpu()
    cancel.raise_if_cancelled()

    # 4. Its SigLIP embeddings
    yield StageChanged(job_id, stage=Stage.IMAGE_ENCODING, message="CLIP Vision encoding ...")
    feature_extractor, image_encoder = models.image_encoder()
    with torch.no_grad(), models.stage(Component.IMAGE_ENCODER):
        inputs = feature_extractor.preprocess(images=cropped, return_tensors="pt")
        inputs = inputs.to(device=image_encoder.device, dtype=image_encoder.dtype)
        image_embeddings = image_encoder(**inputs).last_hidden_state
    cancel.raise_if_cancelled()

    # 5. The end frame and keyframes, bucketed to the start image's size
    anchors = SectionAnchors()
    if story is not None and not story.empty:
        image_embeddings, anchors = encode_story_images(models, request, story, height, width, start_latent,
                                                        image_embeddings)
        cancel.raise_if_cancelled()
    return PreparedInputs(positive, negative, image_embeddings, start_latent, height, width, anchors)
