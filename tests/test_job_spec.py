"""The job spec: JSON round trip, refusals that name the field, and what counts as the same job."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from framepack_core.errors import InvalidInputError
from framepack_core.jobs.spec import SETTINGS_FIELDS, SPEC_VERSION, JobSpec, file_sha256
from framepack_core.request import GenerationRequest

SHA = "ab" * 32


def _spec(**settings) -> JobSpec:
    return JobSpec.from_request(GenerationRequest(image=Path("x.png"), **settings), SHA, {"vae": "org/vae@123"})


def test_a_spec_round_trips_through_json_with_every_setting():
    spec = _spec(prompt="a cat", seed=7, fp8=True, gpu_memory_preservation=2.5)
    data = json.loads(spec.to_json())
    assert data["kind"] == "framepack-job" and data["version"] == SPEC_VERSION
    assert list(data["settings"]) == list(SETTINGS_FIELDS)
    assert JobSpec.from_json(spec.to_json()) == spec
    request = spec.request(Path("img.png"), output=Path("out.mp4"))
    assert (request.prompt, request.seed, request.fp8, request.output) == ("a cat", 7, True, Path("out.mp4"))


@pytest.mark.parametrize(("change", "field"), [
    (lambda d: d["settings"].update(steps=0), "settings.steps"),
    (lambda d: d["settings"].update(model="sd15"), "settings.model"),
    (lambda d: d["settings"].update(seconds="long"), "settings.seconds"),
    (lambda d: d["settings"].update(colour="red"), "settings.colour"),
    (lambda d: d.update(version=99), "version"),
    (lambda d: d.update(kind="other"), "kind"),
    (lambda d: d.update(image_sha256="not-a-hash"), "image_sha256"),
    (lambda d: d.update(models=["vae"]), "models"),
    (lambda d: d.update(extra=1), "extra"),
    (lambda d: d.pop("settings"), "settings"),
])
def test_an_invalid_spec_is_refused_naming_the_field(change, field):
    data = json.loads(_spec().to_json())
    change(data)
    with pytest.raises(InvalidInputError) as error:
        JobSpec.from_dict(data)
    assert error.value.field == field


def test_text_that_is_not_json_is_refused():
    with pytest.raises(InvalidInputError, match="spec: is not valid JSON"):
        JobSpec.from_json("{settings:")


def test_memory_settings_do_not_make_another_job_but_everything_else_does():
    base = _spec(seed=1)
    assert base.digest == _spec(seed=1, gpu_memory_preservation=6.0).digest
    assert base.differences(_spec(seed=1, gpu_memory_preservation=6.0)) == []
    assert base.differences(_spec(seed=2, fp8=True)) == ["settings.seed: 1 -> 2", "settings.fp8: None -> True"]
    other_models = JobSpec(base.settings, base.image_sha256, {"vae": "org/vae@456"})
    assert base.differences(other_models) == ["models.vae: org/vae@123 -> org/vae@456"]
    assert base.digest != other_models.digest


def test_the_image_hash_is_checked(tmp_path):
    image = tmp_path / "a.png"
    image.write_bytes(b"one image")
    spec = JobSpec.from_request(GenerationRequest(image=image), file_sha256(image))
    spec.check_image(image)
    image.write_bytes(b"another image")
    with pytest.raises(InvalidInputError, match="is not the spec's input image"):
        spec.check_image(image)


def test_a_version_1_spec_is_read_and_is_the_same_job_as_today(tmp_path):
    """A job folder or video from before the story controls: its spec has fewer settings and no inputs, and it
    must still resume (same digest) and load."""
    spec = _spec(prompt="a cat", seed=7)
    old = spec.to_dict()
    old["version"] = 1
    old["settings"] = {k: v for k, v in old["settings"].items()
                       if k not in ("end_strength", "end_image_embedding_weight", "loop", "prompt_blend_sections",
                                    "context_frames", "extend_output", "rerolls")}
    parsed = JobSpec.from_dict(old)
    assert parsed.digest == spec.digest
    assert parsed.settings == spec.settings and not parsed.differences(spec)


def test_input_files_travel_as_their_sha256_and_come_back_as_paths(tmp_path):
    end, pose = tmp_path / "end.png", tmp_path / "pose.png"
    end.write_bytes(b"end image"), pose.write_bytes(b"pose image")
    request = GenerationRequest(image=Path("x.png"), end_image=end, end_strength=0.5, keyframes=[(3, pose)])
    spec = JobSpec.from_request(request, SHA)
    assert spec.inputs == {"end_image": file_sha256(end),
                           "keyframes": [{"seconds": 3.0, "image_sha256": file_sha256(pose)}]}
    assert "end_image" not in spec.settings and spec.settings["end_strength"] == 0.5
    again = JobSpec.from_json(spec.to_json())
    assert again == spec and again.digest == spec.digest
    assert again.input_sha256s() == [file_sha256(end), file_sha256(pose)]
    assert JobSpec.input_files_of(request.validated()) == {file_sha256(end): end, file_sha256(pose): pose}
    assert spec.files_for(request) == JobSpec.input_files_of(request.validated())
    stored = {file_sha256(end): tmp_path / "e", file_sha256(pose): tmp_path / "p"}
    back = again.request(Path("img.png"), files=stored)
    assert back.end_image == tmp_path / "e" and back.keyframes[0].image == tmp_path / "p"
    with pytest.raises(InvalidInputError) as missing:
        again.request(Path("img.png"))
    assert missing.value.field == "inputs.end_image"


@pytest.mark.parametrize(("inputs", "field"), [
    ({"start": SHA}, "inputs.start"),
    ({"end_image": "nope"}, "inputs.end_image"),
    ({"keyframes": [{"seconds": 1}]}, "inputs.keyframes"),
])
def test_bad_input_files_in_a_spec_are_refused_by_name(inputs, field):
    data = _spec().to_dict()
    data["inputs"] = inputs
    with pytest.raises(InvalidInputError) as error:
        JobSpec.from_dict(data)
    assert error.value.field == field


def test_story_settings_are_checked_with_the_field_named():
    for settings, field in [({"end_strength": 1.5}, "end_strength"), ({"prompt_blend_sections": -1},
                            "prompt_blend_sections"), ({"extend_output": "both"}, "extend_output"),
                            ({"rerolls": [{"from_section": 0, "seed": 1}]}, "reroll_from"),
                            ({"loop": True, "end_image": Path("e.png")}, "end_image")]:
        with pytest.raises(InvalidInputError) as error:
            GenerationRequest(image=Path("x.png"), **settings).validated()
        assert error.value.field == field
