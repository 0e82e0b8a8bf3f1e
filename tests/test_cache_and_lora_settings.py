"""The cache and LoRA settings: how the request, the spec, the CLI and older specs say them."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from framepack_core.cli.options import add_setting_options, cache_from_args, lora_argument, request_from_args
from framepack_core.errors import InvalidInputError
from framepack_core.jobs.spec import JobSpec, file_sha256
from framepack_core.request import GenerationRequest, LoraChoice
from framepack_core.sampling.cache_methods import CacheMethod

SHA = "ab" * 32
MODELS = {"transformer:original": "lllyasviel/FramePackI2V_HY@abc"}
# Digests of these jobs as the version before ``cache`` existed computed them (commit e86f6c7): job folders and
# videos it made must still resume and compare equal.
DIGESTS_BEFORE_CACHE = {
    (): "f2e19635215e27938c87b9c335cd29632ca07f73d883ab42585d7f2950dbcc9c",
    (("cache", "none"),): "49dab780118dc24ff9a547e5adab69c15d59c84b3112b0d2770c505ce391daf9",
    (("cache", "teacache"), ("cache_threshold", 0.2)):
        "25c6c829facc224b6405effdc5d837d38a6b6b2ae4c5ee35ad42aba6ebe1b457",
}


@pytest.mark.parametrize("settings", list(DIGESTS_BEFORE_CACHE))
def test_teacache_on_or_off_keeps_the_digest_it_had_before_the_cache_setting(settings):
    request = GenerationRequest(image=Path("x.png"), prompt="a cat", seed=7, **dict(settings))
    assert JobSpec.from_request(request, SHA, MODELS).digest == DIGESTS_BEFORE_CACHE[settings]


def test_a_spec_saying_use_teacache_reads_as_the_cache_setting():
    spec = JobSpec.from_request(GenerationRequest(image=Path("x.png"), prompt="a cat", seed=7), SHA, MODELS)
    old = spec.to_dict()
    settings = {k: v for k, v in old["settings"].items() if k not in ("cache", "cache_threshold", "loras",
                                                                       "lora_fuse")}
    for use_teacache, threshold, method, given in ((True, 0.15, "teacache", None), (False, 0.15, "none", None),
                                                   (True, 0.2, "teacache", 0.2)):
        parsed = JobSpec.from_dict(old | {"version": 2, "settings": settings | {"use_teacache": use_teacache,
                                                                                "teacache_threshold": threshold}})
        assert parsed.settings["cache"] == method and parsed.settings["cache_threshold"] == given
    with pytest.raises(InvalidInputError) as both:
        JobSpec.from_dict(old | {"settings": old["settings"] | {"use_teacache": True}})
    assert both.value.field == "settings.use_teacache"


def test_another_cache_or_a_lora_changes_the_digest():
    base = JobSpec.from_request(GenerationRequest(image=Path("x.png")), SHA).digest
    assert JobSpec.from_request(GenerationRequest(image=Path("x.png"), cache="magcache"), SHA).digest != base


@pytest.mark.parametrize(("settings", "field"), [
    ({"cache": "deepcache"}, "cache"),
    ({"cache": "taylorseer", "cache_threshold": 0.1}, "cache_threshold"),
    ({"cache": "none", "cache_threshold": 0.1}, "cache_threshold"),
    ({"cache_threshold": -1}, "cache_threshold"),
    ({"loras": [("style.safetensors", 11)]}, "loras"),
    ({"loras": [("style.safetensors", float("nan"))]}, "loras"),
    ({"loras": [("a.safetensors", 1), ("a.safetensors", 0.5)]}, "loras"),
    ({"loras": [("", 1)]}, "loras"),
    ({"loras": "style.safetensors"}, "loras"),
    ({"lora_fuse": "yes"}, "lora_fuse"),
])
def test_bad_cache_and_lora_settings_name_their_field(settings, field):
    with pytest.raises(InvalidInputError) as refused:
        GenerationRequest(image=Path("x.png"), **settings).validated()
    assert refused.value.field == field and refused.value.hint


def test_each_cache_has_its_default_threshold_unless_one_is_given():
    def threshold(**settings) -> float | None:
        return GenerationRequest(image=Path("x.png"), **settings).validated().effective_cache_threshold

    assert threshold() == 0.15 and threshold(cache="none") is None and threshold(cache="taylorseer") is None
    assert threshold(cache="magcache", cache_threshold=0.2) == 0.2
    assert GenerationRequest(image=Path("x.png"), cache="first-block").validated().cache is CacheMethod.FIRST_BLOCK


def test_loras_travel_in_the_spec_as_sha256_and_weight_and_come_back_as_paths(tmp_path):
    style, motion = tmp_path / "style.safetensors", tmp_path / "motion.safetensors"
    style.write_bytes(b"style"), motion.write_bytes(b"motion")
    request = GenerationRequest(image=Path("x.png"), loras=[(style, 0.8), {"path": str(motion)}])
    spec = JobSpec.from_request(request, SHA)
    assert spec.inputs["loras"] == [{"sha256": file_sha256(style), "weight": 0.8},
                                    {"sha256": file_sha256(motion), "weight": 1.0}]
    again = JobSpec.from_json(spec.to_json())
    assert again == spec and again.digest == spec.digest
    assert spec.files_for(request) == {file_sha256(style): style, file_sha256(motion): motion}
    back = again.request(Path("x.png"), files={file_sha256(style): tmp_path / "s", file_sha256(motion): motion})
    assert back.loras == (LoraChoice(tmp_path / "s", 0.8), LoraChoice(motion, 1.0))
    reweighted = JobSpec.from_request(GenerationRequest(image=Path("x.png"), loras=[(style, 0.5), (motion, 1)]), SHA)
    assert reweighted.digest != spec.digest and reweighted.differences(spec) == [
        f"inputs.loras: {reweighted.inputs['loras']!r} -> {spec.inputs['loras']!r}"]


@pytest.mark.parametrize(("text", "parsed"), [
    ("style.safetensors", (Path("style.safetensors"), 1.0)),
    ("style.safetensors:0.8", (Path("style.safetensors"), 0.8)),
    ("C:/loras/style.safetensors:-0.5", (Path("C:/loras/style.safetensors"), -0.5)),
    ("C:/loras/style.safetensors", (Path("C:/loras/style.safetensors"), 1.0)),
])
def test_lora_option_takes_a_path_and_an_optional_weight(text, parsed):
    assert lora_argument(text) == parsed


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_setting_options(parser)
    return parser.parse_args(list(argv))


def test_teacache_options_still_say_the_cache_and_conflict_with_cache():
    assert cache_from_args(_args()) == "teacache"
    assert cache_from_args(_args("--no-teacache")) == "none"
    assert cache_from_args(_args("--cache", "magcache")) == "magcache"
    with pytest.raises(InvalidInputError) as both:
        cache_from_args(_args("--no-teacache", "--cache", "magcache"))
    assert both.value.field == "cache"
    request = request_from_args(_args("--lora", "a.safetensors:0.7", "--lora", "b.safetensors", "--lora-fuse",
                                      "--teacache-threshold", "0.2"), Path("x.png")).validated()
    assert request.loras == (LoraChoice(Path("a.safetensors"), 0.7), LoraChoice(Path("b.safetensors"), 1.0))
    assert request.lora_fuse and request.cache is CacheMethod.TEACACHE and request.cache_threshold == 0.2


def test_an_edit_from_an_older_client_may_still_turn_teacache_off():
    spec = JobSpec.from_request(GenerationRequest(image=Path("x.png")), SHA)
    assert spec.with_changes({"use_teacache": False}).settings["cache"] == "none"
    with pytest.raises(InvalidInputError) as refused:
        spec.with_changes({"use_teacache": "no"})
    assert refused.value.field == "settings.use_teacache"
