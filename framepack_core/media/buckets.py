"""Aspect-ratio buckets: which (height, width) a start image is resized and cropped to before encoding.

HunyuanVideo/FramePack were trained on a fixed set of sizes around 640x640 pixels (about 0.4 MP) in 14 aspect
ratios, every side a multiple of 16 (8x VAE downscale times the 2x2 transformer patch). Feeding one of those
sizes keeps the model in its training distribution; any other size costs quality. Other resolutions scale the
same table, so a 320 job has the same 14 shapes at a quarter of the pixels.

Selection and cropping follow the official app's behaviour exactly (metric, tie rule, crop box rounding), so a
given input lands on the same pixels as there; the tests pin that.
"""

from __future__ import annotations

import logging

import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

BASE_RESOLUTION = 640
# Side lengths must divide by 16: 8x VAE spatial compression times the 2x2 patchify of the transformer.
SIDE_MULTIPLE = 16

# (height, width), in the official order: landscape first, tallest last. The order matters because ties in
# find_nearest_bucket go to the later entry.
BUCKETS_640: tuple[tuple[int, int], ...] = (
    (416, 960),
    (448, 864),
    (480, 832),
    (512, 768),
    (544, 704),
    (576, 672),
    (608, 640),
    (640, 608),
    (672, 576),
    (704, 544),
    (768, 512),
    (832, 480),
    (864, 448),
    (960, 416),
)


def _scale_side(side: int, resolution: int) -> int:
    """``side * resolution / 640`` rounded half up to a multiple of 16 (at least 16), in exact integer math.

    Float rounding would make e.g. 416 * 720 / 640 / 16 land a hair off .5 on some values; integers cannot.
    """
    numerator = side * resolution  # the scaled side is numerator / 640
    denominator = BASE_RESOLUTION * SIDE_MULTIPLE  # ... and in units of 16 it is numerator / denominator
    units = (2 * numerator + denominator) // (2 * denominator)  # floor(x + 1/2) == round half up for x >= 0
    return max(1, units) * SIDE_MULTIPLE


def buckets_for_resolution(resolution: int) -> list[tuple[int, int]]:
    """The 14 buckets for ``resolution``: the 640 table scaled by ``resolution / 640``, snapped to 16.

    The order is kept and duplicates (which appear at small resolutions) are kept too, so the tie rule of
    :func:`find_nearest_bucket` sees the same sequence at every resolution.
    """
    if not isinstance(resolution, int) or isinstance(resolution, bool) or resolution <= 0:
        raise ValueError(f"resolution must be a positive int, got {resolution!r}")
    if resolution == BASE_RESOLUTION:
        return list(BUCKETS_640)
    return [(_scale_side(h, resolution), _scale_side(w, resolution)) for h, w in BUCKETS_640]


def find_nearest_bucket(height: int, width: int, resolution: int = BASE_RESOLUTION) -> tuple[int, int]:
    """The bucket whose aspect ratio is closest to ``height : width``.

    Compares ``|height * bucket_w - width * bucket_h|`` (cross-multiplied, so no division and no float error).
    On a tie the LATER bucket wins, as in the official app, which matters for square inputs: 640x640 sits
    exactly between (608, 640) and (640, 608) and must pick the taller (640, 608).
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    best: tuple[int, int] | None = None
    best_metric: int | None = None
    for bucket_h, bucket_w in buckets_for_resolution(resolution):
        metric = abs(height * bucket_w - width * bucket_h)
        if best_metric is None or metric <= best_metric:
            best_metric, best = metric, (bucket_h, bucket_w)
    assert best is not None  # the table is never empty
    return best


def resize_and_center_crop(image: np.ndarray, target_height: int, target_width: int) -> np.ndarray:
    """Scale ``image`` (H, W, 3 uint8) to cover ``target_height x target_width``, then crop the centre.

    Pixel-identical to the official ``resize_and_center_crop`` (note: that one takes width before height).
    Scaling by the larger ratio means nothing is letterboxed; the overflow on one axis is cut evenly from both
    ends. The crop box uses half-pixel float coordinates which PIL rounds (half to even) -- kept as is so an odd
    overflow is trimmed on the same side as in the official app.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 array, got shape {image.shape} dtype {image.dtype}")
    if target_height <= 0 or target_width <= 0:
        raise ValueError(f"target size must be positive, got {target_height}x{target_width}")
    height, width = image.shape[:2]
    if (height, width) == (target_height, target_width):
        return image

    scale = max(target_width / width, target_height / height)
    resized_w = int(round(width * scale))
    resized_h = int(round(height * scale))
    resized = Image.fromarray(image).resize((resized_w, resized_h), Image.Resampling.LANCZOS)
    box = (
        (resized_w - target_width) / 2,
        (resized_h - target_height) / 2,
        (resized_w + target_width) / 2,
        (resized_h + target_height) / 2,
    )
    logger.debug("resize %dx%d -> %dx%d, crop box %s", height, width, resized_h, resized_w, box)
    return np.array(resized.crop(box))
