"""Section, latent and frame counts against the official app's table (framepack_reference.md §3)."""

import pytest

from framepack_core.sampling.schedule import (
    original_latent_paddings,
    overlap_pixel_frames,
    total_latent_sections,
    video_length,
)


@pytest.mark.parametrize(
    ("seconds", "sections", "latents", "frames"),
    [(1, 1, 10, 37), (2, 2, 19, 73), (3, 2, 19, 73), (5, 4, 37, 145), (10, 8, 73, 289), (60, 50, 451, 1801),
     (120, 100, 901, 3601)],
)
def test_video_length_matches_the_official_table(seconds, sections, latents, frames):
    length = video_length(seconds, 9)
    assert (length.sections, length.latent_frames, length.pixel_frames) == (sections, latents, frames)


def test_real_duration_of_the_default_five_seconds_is_4_83_s():
    assert round(video_length(5, 9).seconds, 2) == 4.83


def test_section_count_uses_pythons_half_to_even_rounding_like_the_official_app():
    # 2.4 s -> 72 frames / 36 = 2.0; 0.6 s -> 0.5 sections, rounds to 0, then at least 1; 5.4 s -> 4.5 -> 4.
    assert total_latent_sections(2.4, 9) == 2
    assert total_latent_sections(0.6, 9) == 1
    assert total_latent_sections(5.4, 9) == 4
    assert total_latent_sections(6.6, 9) == 6  # 5.5 -> 6


@pytest.mark.parametrize(
    ("sections", "paddings"),
    [(1, [0]), (2, [1, 0]), (3, [2, 1, 0]), (4, [3, 2, 1, 0]), (5, [3, 2, 2, 1, 0]), (6, [3, 2, 2, 2, 1, 0])],
)
def test_original_paddings_cap_at_three_beyond_four_sections(sections, paddings):
    assert original_latent_paddings(sections) == paddings


def test_overlap_is_33_frames_for_the_default_window():
    assert overlap_pixel_frames(9) == 33
