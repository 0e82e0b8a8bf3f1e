"""Every input file of a request checked at once, before a job is queued, so a broken file is refused when it
is submitted and not when the job's turn comes (hours later, in a queue)."""

from __future__ import annotations

from pathlib import Path

from framepack_core.media.image_input import load_input_image
from framepack_core.request import GenerationRequest


def check_input_files(request: GenerationRequest, models_dir: Path | None = None) -> None:
    """Raise ``InvalidInputError`` naming the field of the first unusable file: the start image, the end image,
    a keyframe image, the clip to extend or a LoRA. ``request`` is validated. A LoRA is matched against the
    transformer's layers from its config in ``models_dir`` (the built-in config without one): no weights load."""
    from framepack_core.pipeline.story_inputs import check_story_images

    check_story_images(request, load_input_image(request.image).pixels)
    if request.extend_video is not None:
        from framepack_core.media.video_input import read_extend_clip

        read_extend_clip(Path(request.extend_video), request.context_frames)
    check_lora_files(request, models_dir)


def check_lora_files(request: GenerationRequest, models_dir: Path | None = None) -> None:
    """Raise ``InvalidInputError`` (field ``loras``) for the first LoRA file that is missing, unreadable, foreign or
    matches no layer of the transformer (from its config in ``models_dir``, else the built-in one)."""
    if request.loras:
        from framepack_core.lora.adapters import LoraLibrary, transformer_layers_for

        variant = str(getattr(request.model, "value", request.model))
        LoraLibrary().job_loras(request.loras, lambda: transformer_layers_for(models_dir, variant))
