"""Prompts that change over time: the grammar, which section gets which prompt in either model's generation
order, blending at a change, one encode per distinct prompt, and the CLI, spec and "load from a video" paths."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from framepack_core.cli import main as cli
from framepack_core.errors import InvalidInputError
from framepack_core.events import JobFinished
from framepack_core.jobs.queue import JobQueue
from framepack_core.models import store as store_module
from framepack_core.models.devices import resolve_device_config
from framepack_core.models.loading import ModelSource
from framepack_core.models.store import ModelStore
from framepack_core.pipeline.engine import FramePackEngine
from framepack_core.prompts.embeddings import blend_prompt_embeddings
from framepack_core.prompts.sections import PromptMix, section_prompt_mix, section_prompt_mixes
from framepack_core.prompts.timed import format_timed_prompt, parse_timed_prompt
from framepack_core.request import GenerationRequest, Reroll
from framepack_core.sampling.timeline import section_spans

# Window 3 at 1.6 s: four sections of 0.4 s (time indices 0-3), one step each.
FOUR_SECTIONS = {"latent_window_size": 3, "steps": 1, "resolution": 64, "seconds": 1.6, "cache": "none"}
# Sections by time: 0 walks, 1-2 turns, 3 waves (0.5 s is in section 1, 1.3 s in section 3).
TIMED = "[0s: a man walks] [0.5s: he turns around] [1.3s: he waves]"
WALKS, TURNS, WAVES = "a man walks", "he turns around", "he waves"


@pytest.fixture(scope="module")
def engine(tiny_models_dir: Path) -> FramePackEngine:
    return FramePackEngine(ModelStore(ModelSource(models_dir=tiny_models_dir), resolve_device_config("cpu")))


def _request(image: Path, tmp_path: Path, prompt: str, **changes) -> GenerationRequest:
    return GenerationRequest(image=image, prompt=prompt, **{**FOUR_SECTIONS, "output": tmp_path / "out.mp4", **changes})


def _conditioning_per_call(engine: FramePackEngine, request: GenerationRequest) -> list[dict[str, torch.Tensor]]:
    """The prompt tensors the transformer received, one dict per call (one call per section here)."""
    transformer = engine.models.transformer(request.validated().model)
    calls = []

    def record(_module, _args, kwargs):
        calls.append({name: kwargs[name].detach().clone()
                      for name in ("encoder_hidden_states", "encoder_attention_mask", "pooled_projections")})

    handle = transformer.register_forward_pre_hook(record, with_kwargs=True)
    try:
        last = list(engine.generate(request))[-1]
    finally:
        handle.remove()
    assert isinstance(last, JobFinished), last
    return calls


def _assert_conditioned_on(call: dict[str, torch.Tensor], llama: torch.Tensor, mask: torch.Tensor,
                           pooled: torch.Tensor) -> None:
    assert torch.equal(call["encoder_hidden_states"], llama.to(call["encoder_hidden_states"].dtype))
    assert torch.equal(call["encoder_attention_mask"], mask)
    assert torch.equal(call["pooled_projections"], pooled.to(call["pooled_projections"].dtype))


# --- the grammar -------------------------------------------------------------------------------------------------


def test_a_prompt_without_a_time_tag_is_one_prompt_used_exactly_as_typed():
    for plain in ("", "a man walks", "  a [red] car, [cinematic]  ", "ratio [16:9] shot"):
        (only,) = parse_timed_prompt(plain)
        assert (only.seconds, only.text) == (0.0, plain)


def test_timed_prompts_parse_in_seconds():
    parsed = parse_timed_prompt(" [0s: a man walks]\n[2.5s:  he turns ] [ 4 s : he waves] ")
    assert [(p.seconds, p.text) for p in parsed] == [(0.0, "a man walks"), (2.5, "he turns"), (4.0, "he waves")]
    assert format_timed_prompt([(3, "b"), (0, "a")]) == "[0s: a] [3s: b]"


def test_times_without_their_unit_leave_a_plain_prompt_with_a_note(gradient_image):
    request = GenerationRequest(image=gradient_image, prompt="[0: a man walks] [3: he waves]").validated()
    assert parse_timed_prompt(request.prompt)[0].text == request.prompt
    (note,) = request.notes()
    assert '"[0:"' in note and "[0s: a man walks]" in note
    assert GenerationRequest(image=gradient_image, prompt="ratio [16:9] shot").notes() == ()


@pytest.mark.parametrize("prompt, quoted", [
    ("[0s: a man walks] [3s: he turns", '"[3s: he turns"'),  # unclosed
    ("[0s: a man walks [3s: he turns]", '"[0s: a man walks"'),  # unclosed before the next block
    ("the man [0s: walks] [3s: turns]", '"the man"'),  # text outside a block
    ("[0s: walks] and then [3s: turns]", '"and then"'),
    ("[3s: he turns] [1s: a man walks]", '"[1s: a man walks]" comes after "[3s: he turns]"'),  # out of order
    ("[0s: walks] [0s: turns]", '"[0s: turns]" comes after "[0s: walks]"'),
    ("[0s: walks] [3s:   ]", '"[3s:   ]"'),  # empty text
    ("[0s: walks] [2s-4s: turns]", '"[2s-4s: turns]"'),  # not a time
    ("[0s: walks] [1:30: turns]", '"[1:30: turns]"'),  # minutes:seconds is not the grammar
    ("[0s: walks] [3: turns]", '"[3: turns]"'),  # no unit
    ("[0s: walks] [9s: turns]", '"[9s: turns]"'),  # past the end of the 4.83 s video
    ("[0s: walks] [0.5s: turns]", '"[0s: walks]" and "[0.5s: turns]"'),  # two on the 1.2 s first section
])
def test_malformed_timed_prompts_are_refused_quoting_the_faulty_part(gradient_image, prompt, quoted):
    with pytest.raises(InvalidInputError) as raised:
        GenerationRequest(image=gradient_image, prompt=prompt, seconds=5.0).validated()
    assert raised.value.field == "prompt"
    assert quoted in raised.value.message, raised.value.message


def test_a_time_past_the_end_is_refused_before_any_model_loads(gradient_image, tmp_path):
    empty = FramePackEngine(ModelStore(ModelSource(models_dir=tmp_path / "none", offline=True),
                                       resolve_device_config("cpu")))
    request = _request(gradient_image, tmp_path, "[0s: walks] [1.7s: waves]")
    with pytest.raises(InvalidInputError, match='past the end of the 1.63 s video: "\\[1.7s: waves\\]"'):
        next(empty.generate(request))
    assert not (tmp_path / "none").exists()


# --- which section gets which prompt -----------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["original", "f1"])
def test_each_section_gets_the_prompt_of_its_time_in_either_generation_order(engine, gradient_image, tmp_path, model):
    request = _request(gradient_image, tmp_path, TIMED, model=model)
    calls = _conditioning_per_call(engine, request)
    spans = section_spans(model, request.seconds, request.latent_window_size)
    assert len(calls) == len(spans) == 4
    expected_by_time = {0: WALKS, 1: TURNS, 2: TURNS, 3: WAVES}
    for call, span in zip(calls, spans, strict=True):  # calls come in generation order
        alone = engine.models.encode_prompt(expected_by_time[span.time_index])
        _assert_conditioned_on(call, alone.llama_vec, alone.llama_attention_mask, alone.clip_l_pooler)
    # The original model samples the end first: its first section is conditioned on the LAST prompt.
    first = engine.models.encode_prompt(WAVES if model == "original" else WALKS)
    assert torch.equal(calls[0]["pooled_projections"], first.clip_l_pooler.to(calls[0]["pooled_projections"].dtype))


def test_a_plain_prompt_conditions_every_section_on_its_own_encoding(engine, gradient_image, tmp_path):
    prompt = "a [red] car drives: fast"
    calls = _conditioning_per_call(engine, _request(gradient_image, tmp_path, prompt))
    alone = engine.models.encode_prompt(prompt)
    assert len(calls) == 4
    for call in calls:
        _assert_conditioned_on(call, alone.llama_vec, alone.llama_attention_mask, alone.clip_l_pooler)


def test_the_earliest_prompt_also_covers_the_time_before_it(gradient_image):
    request = GenerationRequest(image=gradient_image, prompt="[0.5s: turns] [1.3s: waves]",
                                **FOUR_SECTIONS).validated()
    by_time = {span.time_index: section_prompt_mixes(request)[span.number].texts
               for span in section_spans("original", 1.6, 3)}
    assert by_time == {0: ("turns",), 1: ("turns",), 2: ("turns",), 3: ("waves",)}


def test_a_reroll_prompt_takes_over_from_its_section_in_generation_order(gradient_image):
    request = GenerationRequest(image=gradient_image, prompt=TIMED, rerolls=(Reroll(3, 7, "he sits down"),),
                                **FOUR_SECTIONS).validated()
    texts = {number: mix.texts for number, mix in section_prompt_mixes(request).items()}
    # Original model: sections 1-2 (the end of the video) keep the timed prompt, 3-4 (its start) are re-rolled.
    assert texts == {1: (WAVES,), 2: (TURNS,), 3: ("he sits down",), 4: ("he sits down",)}
    with pytest.raises(InvalidInputError, match='"\\[0s: sits"'):
        replace(request, rerolls=(Reroll(3, 7, "[0s: sits"),)).validated()


# --- blending ----------------------------------------------------------------------------------------------------


def test_blending_eases_the_sections_before_a_change_into_the_next_prompt(gradient_image):
    # 4.0 s at window 3: ten 0.4 s sections; the change at 2.0 s is in section 5 (time index).
    request = GenerationRequest(image=gradient_image, prompt="[0s: a] [2s: b] [2.9s: c]", seconds=4.0,
                                latent_window_size=3, prompt_blend_sections=3, model="f1").validated()
    mixes = {number - 1: mix.parts for number, mix in section_prompt_mixes(request).items()}  # F1: by time
    assert mixes[0] == mixes[1] == (("a", 1.0),)
    assert mixes[2] == (("a", 0.75), ("b", 0.25))
    assert mixes[3] == (("a", 0.5), ("b", 0.5))
    assert mixes[4] == (("a", 0.25), ("b", 0.75))
    assert mixes[5] == (("b", 1.0),)  # the section that covers 2 s gets b unmixed
    # c at 2.9 s is in section 7: only section 6 lies between b's section and c's, so it is the one blended.
    assert mixes[6] == (("b", 0.5), ("c", 0.5))
    assert mixes[7] == mixes[8] == mixes[9] == (("c", 1.0),)
    # The same mixes in the original model's order: a section's mix depends on its time, not when it is sampled.
    original = replace(request, model="original").validated()
    spans = section_spans("original", 4.0, 3)
    assert {s.time_index: section_prompt_mix(original, s.number).parts for s in spans} == mixes


def test_a_blended_section_receives_the_documented_mix_of_the_two_encodings(engine, gradient_image, tmp_path):
    request = _request(gradient_image, tmp_path, TIMED, model="f1", prompt_blend_sections=2)
    calls = _conditioning_per_call(engine, request)
    turns, waves = engine.models.encode_prompt(TURNS), engine.models.encode_prompt(WAVES)
    # Time index 2 lies between "turns" (section 1) and "waves" (section 3): one section to blend, half and half.
    assert section_prompt_mix(request.validated(), 3).parts == ((TURNS, 0.5), (WAVES, 0.5))
    _assert_conditioned_on(calls[2], (turns.llama_vec.float() * 0.5 + waves.llama_vec.float() * 0.5),
                           turns.llama_attention_mask | waves.llama_attention_mask,
                           turns.clip_l_pooler.float() * 0.5 + waves.clip_l_pooler.float() * 0.5)
    # The prompts' token counts differ, so the union mask attends the longer one's extra tokens.
    assert int(turns.llama_attention_mask.sum()) != int(waves.llama_attention_mask.sum())
    walks = engine.models.encode_prompt(WALKS)  # time index 0 stays pure: "turns" starts at the very next section
    _assert_conditioned_on(calls[0], walks.llama_vec, walks.llama_attention_mask, walks.clip_l_pooler)


def test_blending_keeps_the_encodings_dtype_and_a_single_prompt_is_its_very_tensors(engine):
    encoded = {"a": engine.models.encode_prompt("a"), "b": engine.models.encode_prompt("b")}
    assert blend_prompt_embeddings(PromptMix((("a", 1.0),)), encoded) is encoded["a"]
    bf16 = {name: replace(e, llama_vec=e.llama_vec.bfloat16(), clip_l_pooler=e.clip_l_pooler.bfloat16())
            for name, e in encoded.items()}
    mixed = blend_prompt_embeddings(PromptMix((("a", 0.25), ("b", 0.75))), bf16)
    assert mixed.llama_vec.dtype == mixed.clip_l_pooler.dtype == torch.bfloat16


# --- encoding once -----------------------------------------------------------------------------------------------


def test_each_distinct_prompt_is_encoded_once_per_job_and_reused_across_jobs(tiny_models_dir, gradient_image,
                                                                             tmp_path, monkeypatch):
    encoded = []
    real = store_module.encode_prompt

    def counting(prompt, *args, **kwargs):
        encoded.append(prompt)
        return real(prompt, *args, **kwargs)

    monkeypatch.setattr(store_module, "encode_prompt", counting)
    engine = FramePackEngine(ModelStore(ModelSource(models_dir=tiny_models_dir), resolve_device_config("cpu")))
    repeated = "[0s: a man walks] [0.5s: he waves] [0.9s: a man walks] [1.3s: he waves]"
    for name in ("first", "second"):
        request = _request(gradient_image, tmp_path, repeated, prompt_blend_sections=1, output=tmp_path / f"{name}.mp4")
        assert isinstance(list(engine.generate(request))[-1], JobFinished)
    assert sorted(encoded) == ["a man walks", "he waves"]  # the second job took both from the prompt cache


# --- CLI, spec, load from a video --------------------------------------------------------------------------------


def test_the_cli_refuses_a_malformed_timed_prompt_naming_prompt_and_quoting_it(gradient_image, tmp_path, capsys):
    code = cli.main(["generate", "--image", str(gradient_image), "--prompt", "[0s: walks] [1s: waves",
                     "--models-dir", str(tmp_path / "none"), "--output", str(tmp_path / "x.mp4")])
    err = capsys.readouterr().err
    assert code == cli.EXIT_BAD_INPUT, err
    assert err.startswith('error: --prompt: has an unclosed bracket: "[1s: waves"'), err
    assert not list(tmp_path.glob("*.mp4"))


def test_jobs_submit_keeps_the_timed_prompt_and_blend_in_the_spec(gradient_image, tmp_path, capsys):
    code = cli.main(["jobs", "--output-dir", str(tmp_path), "submit", "--image", str(gradient_image),
                     "--prompt", TIMED, "--prompt-blend-sections", "2", "--seconds", "1.6", "--window", "3"])
    err = capsys.readouterr().err
    assert code == cli.EXIT_OK, err
    (job,) = JobQueue.for_output_dir(tmp_path).list()
    assert job.spec.settings["prompt"] == TIMED and job.spec.settings["prompt_blend_sections"] == 2
    code = cli.main(["jobs", "--output-dir", str(tmp_path), "submit", "--image", str(gradient_image),
                     "--prompt", TIMED, "--prompt-blend-sections", "17"])
    err = capsys.readouterr().err
    assert code == cli.EXIT_BAD_INPUT and "error: --prompt-blend-sections: 17 is out of range" in err, err


def test_load_settings_from_a_video_restores_the_timed_prompt_and_blend(tiny_models_dir, gradient_image, tmp_path,
                                                                         capsys):
    from framepack_core.cli.from_output import request_from_video
    from framepack_core.cli.options import add_generate_parser

    video = tmp_path / "timed.mp4"
    prompt = "[0s: walks] [0.5s: waves]"
    code = cli.main(["generate", "--image", str(gradient_image), "--prompt", prompt, "--prompt-blend-sections", "1",
                     "--seconds", "0.8", "--window", "3", "--steps", "1", "--resolution", "64", "--no-teacache",
                     "--models-dir", str(tiny_models_dir), "--quiet", "--output", str(video)])
    assert code == cli.EXIT_OK, capsys.readouterr().err
    argv = ["generate", "--from", str(video), "--image", str(gradient_image)]
    root = argparse.ArgumentParser()
    add_generate_parser(root.add_subparsers(dest="command"))
    request, _, _ = request_from_video(root.parse_args(argv), argv)
    assert (request.prompt, request.prompt_blend_sections) == (prompt, 1)


def test_the_rest_api_takes_a_timed_prompt_and_blend_as_settings_and_quotes_a_bad_one(gradient_image, tmp_path):
    import json

    from fastapi.testclient import TestClient

    from app.api.routes import build_api
    from app.service.generation import GenerationService
    from app.settings import Settings

    out = tmp_path / "outputs"
    service = GenerationService(lambda: None, out, queue=JobQueue.for_output_dir(out))  # not started: jobs wait
    client = TestClient(build_api(service, Settings(output_dir=out)))
    image = {"image": ("input.png", gradient_image.read_bytes(), "image/png")}

    def submit(settings: dict):
        return client.post("/jobs", files=image, data={"settings": json.dumps({**FOUR_SECTIONS, **settings})})

    accepted = submit({"prompt": TIMED, "prompt_blend_sections": 2})
    assert accepted.status_code == 201, accepted.text
    assert accepted.json()["spec"]["settings"]["prompt_blend_sections"] == 2
    refused = submit({"prompt": "[0s: walks] junk [1s: waves]"})
    assert refused.status_code == 422 and refused.json()["field"] == "prompt"
    assert '"junk"' in refused.json()["error"], refused.json()

