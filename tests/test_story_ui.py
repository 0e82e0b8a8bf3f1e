"""The Story panel's handlers, without a browser: the request the page builds from the widgets, the section
timeline for both models, per-section prompts as timed-prompt text, loading a video's story settings, and the
re-roll handlers against a fake service (the real ``GenerationService.reroll`` is another part of issue 12)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr
import pytest

from app.service.generation import JobSnapshot, JobState
from app.service.outputs import ServedFiles
from app.settings import Settings
from app.ui.context import PageContext
from app.ui.render import FIELD_LABELS, STORY_FIELDS, build_request, page_field_name
from app.ui.reroll_panel import reroll_preview, reroll_view, start_reroll
from app.ui.story import (
    MAX_TIMELINE_ROWS,
    STORY_SETTINGS,
    files_to_add_again,
    reroll_plan,
    reroll_seed,
    spans_in_video_order,
    story_request_values,
    story_settings_to_inputs,
    timed_prompt,
    timeline_note,
    timeline_rows,
)
from app.ui.story_panel import end_note, loop_updates, section_updates, story_inputs
from framepack_core.errors import InvalidInputError
from framepack_core.request import GenerationRequest, Keyframe
from framepack_core.sampling.timeline import section_at, section_spans
from tests.test_extend_video import write_clip

FORM = {"prompt": "a cat", "model": "original", "seconds": 5.0, "latent_window_size": 9}


def _raw_story(rows: int = MAX_TIMELINE_ROWS, *, end_image: Any = None, loop: bool = False,
               images: dict[int, str] | None = None, prompts: dict[int, str] | None = None,
               extend_video: Any = None, context_frames: Any = None, extend_output: str = "new",
               blend: Any = 0) -> list[Any]:
    """The Story panel's values as Start receives them (uploads as Gradio's unopened FileData dicts)."""
    images, prompts = images or {}, prompts or {}
    return [end_image, 0.6, 0.25, loop, blend, extend_video, context_frames, extend_output,
            *({"path": images[i]} if i in images else None for i in range(rows)),
            *(prompts.get(i, "") for i in range(rows))]


def test_the_request_built_from_the_story_widgets_has_every_story_field(tmp_path):
    start = str(tmp_path / "start.png")
    story = story_inputs(_raw_story(end_image={"path": "/up/end.png"}, images={2: "/up/pose.png"},
                                    prompts={1: "he turns"}, extend_video={"path": "/up/clip.mp4"},
                                    context_frames=12.0, extend_output="joined", blend=2.0))
    values = {**FORM, **story_request_values(story, FORM)}
    request = build_request(start, values)

    assert request.end_image == Path("/up/end.png") and request.loop is False
    assert (request.end_strength, request.end_image_embedding_weight) == (0.6, 0.25)
    # The image on the third row (video order) is a keyframe at that section's start: 2.4 s with window 9.
    assert request.keyframes == (Keyframe(2.4, Path("/up/pose.png")),)
    assert request.prompt == "[0s: a cat] [1.2s: he turns]"
    assert request.prompt_blend_sections == 2 and request.context_frames == 12
    assert request.extend_video == Path("/up/clip.mp4") and request.extend_output == "joined"
    assert set(STORY_FIELDS) <= set(GenerationRequest.__dataclass_fields__)
    validated = request.validated()
    assert validated.prompt_blend_sections == 2 and validated.context_frames == 12


def test_untouched_story_widgets_leave_the_request_at_its_defaults(tmp_path):
    start = str(tmp_path / "start.png")
    # Context frames 0 is how the page shows "automatic": Gradio draws an empty number box as 0.
    values = {**FORM, **story_request_values(story_inputs(_raw_story(context_frames=0)), FORM)}
    # Only the page's own defaults differ from the request's (end strength 0.6 in _raw_story): put them back.
    values.update(end_strength=1.0, end_image_embedding_weight=0.0)
    assert build_request(start, values) == GenerationRequest(image=Path(start), **FORM)


def test_loop_takes_the_end_image_out_of_the_request_and_clears_its_box():
    story = story_inputs(_raw_story(end_image={"path": "/up/end.png"}, loop=True))
    fields = story_request_values(story, FORM)
    assert fields["loop"] is True and "end_image" not in fields
    assert loop_updates(True) == gr.update(value=None, interactive=False)
    assert loop_updates(False) == gr.update(interactive=True)
    assert "F1 is chosen" in end_note("f1") and "F1 is chosen" not in end_note("original")


def test_an_image_dropped_on_a_row_past_the_video_is_not_a_keyframe():
    # 2 s with window 9 makes 2 sections: a picture left on row 5 from a longer setting is ignored.
    story = story_inputs(_raw_story(images={0: "/a.png", 5: "/stale.png"}))
    fields = story_request_values(story, {**FORM, "seconds": 2.0})
    assert fields["keyframes"] == (Keyframe(0.0, Path("/a.png")),)


def test_the_timeline_lists_sections_in_video_order_with_their_generation_order_for_both_models():
    original = timeline_rows("original", 5.0, 9)
    f1 = timeline_rows("f1", 5.0, 9)
    assert [row.span.time_index for row in original] == [0, 1, 2, 3] == [row.span.time_index for row in f1]
    # The original model makes the end first: the last row is "made 1st"; F1 goes forward.
    assert [row.span.number for row in original] == [4, 3, 2, 1]
    assert [row.span.number for row in f1] == [1, 2, 3, 4]
    assert original[0].label.startswith("**0.0 – 1.2 s**") and original[0].label.endswith("made 4th")
    assert original[-1].label.endswith("made 1st") and f1[0].label.endswith("made 1st")
    assert "end of the video first" in timeline_note("original", 5.0, 9)
    assert "in order" in timeline_note("f1", 5.0, 9)
    long_note = timeline_note("original", 60.0, 9)
    assert f"first {MAX_TIMELINE_ROWS}" in long_note


def test_the_rows_follow_the_form_s_length_window_and_model():
    updates = section_updates("f1", 2.0, 9.0)
    visible, labels, note = (updates[:MAX_TIMELINE_ROWS], updates[MAX_TIMELINE_ROWS:2 * MAX_TIMELINE_ROWS],
                             updates[-1])
    assert [u["visible"] for u in visible] == [True, True] + [False] * (MAX_TIMELINE_ROWS - 2)
    assert labels[0].endswith("made 1st") and labels[1].endswith("made 2nd")
    assert "2 sections" in note
    # Settings that make no video show no rows and say why, rather than failing.
    assert [u["visible"] for u in section_updates("original", 0, 0)[:MAX_TIMELINE_ROWS]] == [False] * 16


def test_per_section_prompts_become_the_timed_prompt_syntax_at_each_section_s_start():
    spans = spans_in_video_order("original", 5.0, 9)
    assert timed_prompt("a cat", ["", "", "", ""], spans) == "a cat"  # no row text: the prompt box as it is
    assert timed_prompt("", ["walks", "", "turns", "waves"], spans) == "[0s: walks] [2.4s: turns] [3.6s: waves]"
    assert timed_prompt("a cat", ["", "a cat", "", "a dog"], spans) == "[0s: a cat] [3.6s: a dog]"
    assert timed_prompt("", ["", "jumps", "", ""], spans) == "[1.2s: jumps]"


@pytest.mark.parametrize("window", [1, 5, 7, 9, 11, 33])
def test_every_time_written_in_a_timed_prompt_falls_in_its_own_section(window):
    spans = spans_in_video_order("f1", 60.0, window)[:MAX_TIMELINE_ROWS]
    text = timed_prompt("", [f"p{span.time_index}" for span in spans], spans)
    times = [float(part.split("s:")[0]) for part in text.strip("[]").split("] [")]
    every = section_spans("f1", 60.0, window)
    assert [section_at(every, t).time_index for t in times] == [span.time_index for span in spans]


def test_no_start_image_is_refused_unless_a_clip_to_extend_is_given(tmp_path):
    with pytest.raises(InvalidInputError) as refused:
        build_request(None, dict(FORM))
    assert refused.value.field == "image"
    # With a clip, the start image is the clip's last frame, as on the command line and over REST.
    clip = write_clip(tmp_path / "clip.mp4")
    request = build_request(None, {**FORM, "extend_video": str(clip)})
    assert Path(request.extend_video) == clip and request.image.parent == tmp_path and request.image.suffix == ".png"
    assert build_request(None, {**FORM, "extend_video": str(clip)}).image.read_bytes() == request.image.read_bytes()
    with pytest.raises(InvalidInputError) as broken:
        (tmp_path / "broken.mp4").write_bytes(b"not a video")
        build_request(None, {**FORM, "extend_video": str(tmp_path / "broken.mp4")})
    assert broken.value.field == "extend_video"


def test_every_story_field_has_a_label_for_the_page_s_errors():
    for name in (*STORY_FIELDS, "reroll_from"):
        assert name in FIELD_LABELS
    assert page_field_name("end_image") == "'End image'" and page_field_name("extend_output") is not None


def test_loading_a_video_restores_the_story_settings_and_names_the_files_to_add_again():
    settings = {"end_strength": 0.4, "loop": True, "prompt_blend_sections": 3, "extend_output": "joined"}
    assert story_settings_to_inputs(settings) == [0.4, 0.0, True, 3, 0, "joined"]
    assert story_settings_to_inputs({"context_frames": None})[4] == 0  # automatic: the box's 0
    assert len(STORY_SETTINGS) == len(story_settings_to_inputs({}))
    inputs = {"end_image": "a" * 64, "extend_video": "b" * 64,
              "keyframes": [{"seconds": 1.2, "image_sha256": "c" * 64}, {"seconds": 3.6, "image_sha256": "d" * 64}]}
    note = files_to_add_again(inputs, settings)
    assert "the end image" in note and "the clip to extend" in note and "keyframe images at 1.2 s, 3.6 s" in note
    assert files_to_add_again({}, settings) == ""


# Re-roll --------------------------------------------------------------------------------------------------------

def test_the_re_roll_plan_says_which_part_of_the_video_changes_in_either_order():
    original = reroll_plan("original", 5.0, 9, 3)
    assert original.text == ("Sections 3-4 change: 0.0 s – 2.4 s of the video (the original model makes the end "
                             "first); 2.4 s – 4.8 s is kept.")
    f1 = reroll_plan("f1", 5.0, 9, 3)
    assert f1.changed_s == pytest.approx((2.4, 4.8333), abs=1e-3) and f1.kept_s == (0.0, pytest.approx(2.4))
    assert reroll_plan("original", 5.0, 9, 1).kept_s is None
    assert reroll_plan("f1", 5.0, 9, 4).text.startswith("Section 4 changes:")
    with pytest.raises(InvalidInputError) as refused:
        reroll_plan("f1", 5.0, 9, 5)
    assert refused.value.field == "reroll_from"
    assert reroll_seed(None, 77) == 77 and reroll_seed(" ", 77) == 77 and reroll_seed(" 12 ", 77) == 12
    with pytest.raises(InvalidInputError):
        reroll_seed(-1, 77)


@dataclass
class FakeService:
    """Just what the re-roll handlers use: snapshots, and ``reroll`` by the signature the re-roll part adds."""

    jobs: dict[str, JobSnapshot]
    calls: list[tuple[Any, ...]] = field(default_factory=list)

    def snapshot(self, job_id: str, viewer: Any = None) -> JobSnapshot:
        return self.jobs[job_id]

    def reroll(self, job_id: str, from_section: int, *, seed: int, prompt: str | None, viewer: Any,
               max_pending: int | None = None) -> str:
        self.calls.append((job_id, from_section, seed, prompt, viewer))
        return "new-job"


@pytest.fixture
def fake_context(tmp_path):
    request = GenerationRequest(image=tmp_path / "i.png", prompt="a cat", seconds=5.0)
    service = FakeService({"done": JobSnapshot("done", JobState.FINISHED, request),
                           "busy": JobSnapshot("busy", JobState.RUNNING, request)})
    context = PageContext(settings=Settings(output_dir=tmp_path), service=service,  # type: ignore[arg-type]
                          served=ServedFiles(), statuses=None)  # type: ignore[arg-type]
    return context, service


def test_the_re_roll_part_offers_the_sections_of_a_finished_job_only(fake_context):
    context, _ = fake_context
    job, note, choices, _seed, _prompt, _plan, start = reroll_view(context, "done", None)
    assert job == "done" and "`done` has finished" in note and choices["visible"] is True
    assert choices["choices"] == [("0.0 – 1.2 s (made 4th)", 4), ("1.2 – 2.4 s (made 3rd)", 3),
                                  ("2.4 – 3.6 s (made 2nd)", 2), ("3.6 – 4.8 s (made 1st)", 1)]
    assert start["interactive"] is False  # nothing is re-rolled before a section is picked
    for unfinished in ("busy", "unknown", None):
        job, _, choices, *_ = reroll_view(context, unfinished, None)
        assert job is None and choices["visible"] is False


def test_the_re_roll_handler_calls_the_service_with_the_section_seed_and_prompt(fake_context):
    context, service = fake_context
    text, start = reroll_preview(context, "done", 3, None)
    assert text.startswith("**What changes:** Sections 3-4 change: 0.0 s – 2.4 s") and start["interactive"] is True

    assert start_reroll(context, "done", 3, 1234.0, "  he waves  ", None) == "new-job"
    assert start_reroll(context, "done", 2, None, "", None) == "new-job"
    (job, section, seed, prompt, viewer), (_, section2, random_seed, no_prompt, _) = service.calls
    assert (job, section, seed, prompt) == ("done", 3, 1234, "he waves")
    assert section2 == 2 and isinstance(random_seed, int) and no_prompt is None
    assert viewer is not None

    with pytest.raises(gr.Error):
        start_reroll(context, "done", None, None, "", None)
