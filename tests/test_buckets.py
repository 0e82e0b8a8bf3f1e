"""Aspect-ratio buckets and the resize/centre-crop, against the official app's table and pixels."""

import hashlib

import numpy as np
import pytest

from framepack_core.media.buckets import buckets_for_resolution, find_nearest_bucket, resize_and_center_crop

OFFICIAL_640 = [
    (416, 960), (448, 864), (480, 832), (512, 768), (544, 704), (576, 672), (608, 640),
    (640, 608), (672, 576), (704, 544), (768, 512), (832, 480), (864, 448), (960, 416),
]


def _synthetic_image(height: int, width: int) -> np.ndarray:
    """A deterministic image with detail on every axis, so any crop offset or resampling change shows."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([(x * 7 + y * 3) % 256, (x * y) % 251, ((x ^ y) * 5) % 256], axis=-1).astype(np.uint8)


def test_resolution_640_is_exactly_the_official_table():
    assert buckets_for_resolution(640) == OFFICIAL_640


@pytest.mark.parametrize("resolution", [64, 128, 320, 480, 640, 720])
def test_every_bucket_side_is_a_positive_multiple_of_16(resolution):
    buckets = buckets_for_resolution(resolution)
    assert len(buckets) == 14  # order and duplicates kept, so the tie rule sees the same sequence
    assert all(side >= 16 and side % 16 == 0 for bucket in buckets for side in bucket)


def test_scaled_tables_round_half_up_to_16():
    # 416 * 320 / 640 = 208 exactly; 448 * 320 / 640 = 224; at 720, 416 * 1.125 = 468 -> 29.25 units -> 464.
    assert buckets_for_resolution(320)[:2] == [(208, 480), (224, 432)]
    assert buckets_for_resolution(720)[0] == (464, 1088)
    # 480 * 0.1 = 48 = 3 units; 448 * 0.1 = 44.8 -> 2.8 -> 3 units; 416 * 0.1 = 41.6 -> 3 units.
    assert buckets_for_resolution(64)[:3] == [(48, 96), (48, 80), (48, 80)]


def test_300x420_input_picks_the_expected_small_buckets():
    assert find_nearest_bucket(300, 420, resolution=64) == (48, 64)
    assert find_nearest_bucket(300, 420, resolution=128) == (112, 144)


def test_square_input_ties_go_to_the_later_bucket():
    # 640x640 is equally far from (608, 640) and (640, 608); the official `<=` keeps the later one.
    assert find_nearest_bucket(640, 640) == (640, 608)
    assert find_nearest_bucket(100, 100) == (640, 608)
    # At R=64 several identical (64, 64) buckets tie; any of them is the same answer.
    assert find_nearest_bucket(100, 100, resolution=64) == (64, 64)


def test_extreme_aspect_ratios_pick_the_end_buckets():
    assert find_nearest_bucket(100, 10_000) == (416, 960)
    assert find_nearest_bucket(10_000, 100) == (960, 416)
    # 16:9 (0.5625) is nearest 480:832 (0.577), not the widest 416:960 (0.433).
    assert find_nearest_bucket(1080, 1920) == (480, 832)
    assert find_nearest_bucket(1920, 1080) == (832, 480)


def test_bad_resolution_is_refused():
    with pytest.raises(ValueError):
        buckets_for_resolution(0)


def test_resize_is_a_no_op_at_the_target_size():
    image = _synthetic_image(64, 80)
    assert resize_and_center_crop(image, 64, 80) is image


# SHA-256 prefixes of the official `resize_and_center_crop(image, target_width, target_height)` output for
# `_synthetic_image(h, w)`, computed once by hand with the official function (Pillow 13); ours matched it on
# 300 random sizes. The (101, 99) case crops half a pixel, exercising PIL's rounding of the float crop box.
OFFICIAL_CROP_SHA256 = {
    (300, 420, 112, 144): "d9a5d01687e8ec58",
    (300, 420, 48, 64): "ac7ea54053131749",
    (333, 517, 240, 416): "de3fc2752222dbbe",
    (517, 333, 416, 240): "14ea73d9c16918f1",
    (101, 99, 64, 64): "5060e82cef377c02",
}


@pytest.mark.parametrize("case", list(OFFICIAL_CROP_SHA256))
def test_resize_and_center_crop_matches_the_official_pixels(case):
    height, width, target_h, target_w = case
    out = resize_and_center_crop(_synthetic_image(height, width), target_h, target_w)
    assert out.shape == (target_h, target_w, 3) and out.dtype == np.uint8
    assert hashlib.sha256(out.tobytes()).hexdigest()[:16] == OFFICIAL_CROP_SHA256[case]


def test_crop_keeps_the_centre_of_the_overflowing_axis():
    # A wide image with a marked centre column: after covering 64x64 the mark must still be in the middle.
    image = np.zeros((64, 256, 3), np.uint8)
    image[:, 124:132] = 255
    out = resize_and_center_crop(image, 64, 64)
    bright_columns = np.flatnonzero(out[:, :, 0].mean(axis=0) > 128)
    assert bright_columns.min() > 20 and bright_columns.max() < 44
