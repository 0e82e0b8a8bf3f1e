"""Which section makes which part of the video, in both models' generation orders."""

from __future__ import annotations

import pytest

from framepack_core.sampling.schedule import video_length
from framepack_core.sampling.timeline import section_at, section_spans, video_span_from


@pytest.mark.parametrize("model", ["original", "f1"])
def test_the_sections_cover_the_whole_video_once(model):
    spans = section_spans(model, 5.0, 9)
    ordered = sorted(spans, key=lambda s: s.time_index)
    assert ordered[0].start_s == 0 and ordered[-1].end_s == pytest.approx(video_length(5.0, 9).seconds)
    assert all(a.end_s == pytest.approx(b.start_s) for a, b in zip(ordered, ordered[1:], strict=False))
    assert [s.number for s in spans] == list(range(1, len(spans) + 1))


def test_the_original_model_makes_the_end_of_the_video_first():
    original, f1 = section_spans("original", 5.0, 9), section_spans("f1", 5.0, 9)
    assert original[0].end_s == pytest.approx(video_length(5.0, 9).seconds)  # section 1: the end
    assert f1[0].start_s == 0  # section 1: the start
    assert section_at(original, 0.0).number == len(original) and section_at(f1, 0.0).number == 1
    assert section_at(original, 100.0) is None


def test_a_reroll_changes_the_start_of_an_original_video_and_the_end_of_an_f1_one():
    original, f1 = section_spans("original", 5.0, 9), section_spans("f1", 5.0, 9)
    start, end = video_span_from(original, 2)
    assert start == 0 and end == pytest.approx(original[1].end_s)
    start, end = video_span_from(f1, 2)
    assert start == pytest.approx(f1[1].start_s) and end == pytest.approx(f1[-1].end_s)
    with pytest.raises(ValueError):
        video_span_from(f1, 99)


def test_a_boundary_is_the_time_a_user_types():
    spans = section_spans("f1", 5.0, 3)
    assert spans[3].start_s == 1.2 and section_at(spans, 1.2).number == 4
