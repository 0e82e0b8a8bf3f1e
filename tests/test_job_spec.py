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
