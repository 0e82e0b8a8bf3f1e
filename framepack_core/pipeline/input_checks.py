"""Every input file of a request checked at once, before a job is queued, so a broken file is refused when it
is submitted and not when the job's turn comes (hours later, in a queue)."""

from __future__ import annotations

from pathlib import Path

from framepack_core.media.image_input import load_input_image
from framepack_core.request import GenerationRequest


def check_input_files(request: GenerationRequest) -> None:
    """Raise ``InvalidInputError`` naming the field of the first unusable file: the start image, the end image,
    a keyframe image or the clip to extend. ``request`` is validated."""
    from framepack_core.pipeline.story_inputs import check_story_images

    check_story_images(request, load_input_image(request.image).pixels)
    if request.extend_video is not None:
        from framepack_core.media.video_input import read_extend_clip

        read_extend_clip(Path(request.extend_video), request.context_frames)
