"""The REST submit's extra uploads: an end image and keyframe images with their times (docs/controls.md)."""

import json
from pathlib import Path
from typing import Any

from framepack_core.errors import InvalidInputError
from framepack_core.request import Keyframe


def story_uploads(end_image: Path | None, keyframe_images: list[Path], keyframe_seconds: str | None
                  ) -> dict[str, Any]:
    """The request fields for the stored uploads: ``end_image`` and ``keyframes`` (each image with its time from
    the JSON list ``keyframe_seconds``, in order); ``InvalidInputError`` names ``keyframes`` when they differ."""
    fields: dict[str, Any] = {}
    if end_image is not None:
        fields["end_image"] = end_image
    try:
        seconds = json.loads(keyframe_seconds) if keyframe_seconds else []
    except (ValueError, RecursionError):
        seconds = None
    if not isinstance(seconds, list):
        raise InvalidInputError("keyframes", "keyframe_seconds must be a JSON list of times in seconds",
                                "Send e.g. [1.5, 3], one time for each keyframe image, in their order.")
    if len(seconds) != len(keyframe_images):
        raise InvalidInputError("keyframes", f"{len(keyframe_images)} keyframe image(s) came with {len(seconds)} "
                                             "time(s) in keyframe_seconds",
                                "Send one time for each keyframe image, in their order.")
    if keyframe_images:
        fields["keyframes"] = tuple(Keyframe(time, path) for time, path in zip(seconds, keyframe_images, strict=True))
    return fields
