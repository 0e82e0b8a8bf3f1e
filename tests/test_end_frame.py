"""End frame and loop (original model), checked on the tensors the tiny transformer receives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from framepack_core.cli import main as cli
from framepack_core.errors import InvalidInputError
from framepack_core.media.buckets import resize_and_center_crop
from framepack_core.media.image_input import load_input_image
from framepack_core.models.devices import resolve_device_config
from framepack_core.models.loading import ModelSource
from framepack_core.models.store import ModelStore
from framepack_core.pipeline.engine import FramePackEngine
from framepack_core.pipeline.story_inputs import mixed_embeddings, siglip_embeddings, vae_latent
from framepack_core.request import GenerationRequest
from tests.conditioning_recorder import ONE_STEP, assert_same_calls, run_recorded

BUCKET = (48, 64)  # the gradient start image's bucket at base resolution 64


@pytest.fixture(scope="module")
def engine(tiny_models_dir: Path) -> FramePackEngine:
    return FramePackEngine(ModelStore(ModelSource(models_dir=tiny_models_dir), resolve_device_config("cpu")))


@pytest.fixture(scope="module")
def end_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A square image of another size and content than the start image: it must be bucketed to the start's size."""
    path = tmp_path_factory.mktemp("end") / "end.png"
    y, x = np.mgrid[0:200, 0:200]
    Image.fromarray(np.stack([(x * y) % 256, 255 - x, y], axis=-1).astype(np.uint8)).save(path)
    return path


def _end_latent(engine: FramePackEngine, path: Path) -> torch.Tensor:
    pixels = resize_and_center_crop(load_input_image(path).pixels, *BUCKET)
    return vae_latent(engine.models, pixels)


def test_an_end_frame_at_strength_zero_conditions_the_model_exactly_as_no_end_frame(engine, gradient_image,
                                                                                   end_image, tmp_path):
    plain, plain_latents = run_recorded(engine, tmp_path, "plain", image=gradient_image, seconds=0.8)
    zero, zero_latents = run_recorded(engine, tmp_path, "zero", image=gradient_image, seconds=0.8,
                                      end_image=end_image, end_strength=0.0)
    assert len(plain) == len(zero) == 2
    for a, b in zip(plain, zero, strict=True):
        assert_same_calls(a, b)
    assert torch.equal(load_file(str(plain_latents))["history_latents"],
                       load_file(str(zero_latents))["history_latents"])


def test_an_end_frame_fills_only_the_first_sections_post_slot_with_its_latent_times_the_strength(
        engine, gradient_image, end_image, tmp_path):
    plain, _ = run_recorded(engine, tmp_path, "plain", image=gradient_image, seconds=0.8)
    half, latents = run_recorded(engine, tmp_path, "half", image=gradient_image, seconds=0.8,
                                 end_image=end_image, end_strength=0.5)
    expected = _end_latent(engine, end_image) * 0.5
    assert expected.shape == (1, 16, 1, 6, 8)  # bucketed to the start image's 48x64
    assert torch.equal(half[0]["latents_clean"][:, :, 1:2], expected)
    assert torch.equal(plain[0]["latents_clean"][:, :, 1:2], torch.zeros_like(expected))
    assert_same_calls(plain[0], half[0], skip=("latents_clean",))
    assert torch.equal(half[0]["latents_clean"][:, :, :1], plain[0]["latents_clean"][:, :, :1])
    # The second section sees its own history: the first latent the first section generated, not the end frame.
    history = load_file(str(latents))["history_latents"]
    assert torch.equal(half[1]["latents_clean"][:, :, 1:2], history[:, :, 1 + 3:2 + 3])


def test_a_loops_first_section_post_slot_is_the_start_latent_and_later_sections_keep_their_history(
        engine, gradient_image, tmp_path):
    plain, _ = run_recorded(engine, tmp_path, "plain", image=gradient_image, seconds=1.2)
    loop, latents = run_recorded(engine, tmp_path, "loop", image=gradient_image, seconds=1.2, loop=True)
    saved = load_file(str(latents))
    start = saved["start_latent"]
    assert torch.equal(loop[0]["latents_clean"][:, :, 1:2], start)
    assert torch.equal(loop[0]["latents_clean"][:, :, :1], start)
    assert_same_calls(plain[0], loop[0], skip=("latents_clean",))
    history = saved["history_latents"]  # time order: start, section 3, section 2, section 1 (3 latents each)
    for call, first_of_later in ((loop[1], 7), (loop[2], 4)):
        assert torch.equal(call["latents_clean"][:, :, 1:2], history[:, :, first_of_later:first_of_later + 1])
        assert torch.equal(call["latents_clean"][:, :, :1], start)
        assert torch.equal(call["image_embeds"], plain[0]["image_embeds"])
    # Its history context as in any run: the 2x slot holds the rest of the section generated just before.
    assert torch.equal(loop[2]["latents_history_2x"], history[:, :, 5:7])
    assert [c["latents_clean"].shape for c in loop] == [c["latents_clean"].shape for c in plain]


def test_the_end_image_embedding_weight_mixes_siglip_embeddings_as_documented(engine, gradient_image, end_image,
                                                                              tmp_path):
    runs = {w: run_recorded(engine, tmp_path, f"w{w}", image=gradient_image, seconds=0.4, end_image=end_image,
                            end_image_embedding_weight=w)[0] for w in (0.0, 0.25)}
    start = siglip_embeddings(engine.models, resize_and_center_crop(load_input_image(gradient_image).pixels, *BUCKET))
    end = siglip_embeddings(engine.models, resize_and_center_crop(load_input_image(end_image).pixels, *BUCKET))
    assert torch.equal(runs[0.0][0]["image_embeds"], start)
    assert torch.equal(runs[0.25][0]["image_embeds"], 0.75 * start + 0.25 * end)
    assert not torch.equal(start, end)
    # At 0.5 the mix is, bit for bit, diffusers' (first + last) / 2.
    assert torch.equal(mixed_embeddings(start, end, 0.5), (start + end) / 2)


@pytest.mark.parametrize("settings, field", [({"end_image": "END"}, "end_image"), ({"loop": True}, "loop")])
def test_f1_refuses_an_end_frame_naming_the_field_and_suggesting_the_original_model(engine, gradient_image,
                                                                                    end_image, settings, field):
    settings = {k: end_image if v == "END" else v for k, v in settings.items()}
    request = GenerationRequest(image=gradient_image, model="f1", **ONE_STEP, **settings)
    with pytest.raises(InvalidInputError) as refused:
        next(iter(engine.generate(request)))
    assert refused.value.field == field
    assert "F1" in refused.value.message and "end frame" in refused.value.message
    assert "{model} to original" in refused.value.hint


def test_a_broken_end_image_is_refused_naming_end_image(engine, gradient_image, tmp_path):
    broken = tmp_path / "end.png"
    broken.write_text("not an image")
    with pytest.raises(InvalidInputError) as refused:
        next(iter(engine.generate(GenerationRequest(image=gradient_image, end_image=broken, **ONE_STEP))))
    assert refused.value.field == "end_image" and refused.value.message.startswith("end_image: ")


def test_the_cli_refuses_an_f1_end_frame_with_exit_2_no_traceback_and_the_fix(gradient_image, end_image, tmp_path,
                                                                              capsys):
    empty = tmp_path / "no_models"
    empty.mkdir()
    code = cli.main(["generate", "--image", str(gradient_image), "--model", "f1", "--end-image", str(end_image),
                     "--models-dir", str(empty), "--output", str(tmp_path / "out.mp4")])
    err = capsys.readouterr().err
    assert code == cli.EXIT_BAD_INPUT, err
    assert err.startswith("error: --end-image: FramePack-F1"), err
    assert "Set --model to original" in err and "Traceback" not in err
    code = cli.main(["generate", "--image", str(gradient_image), "--model", "f1", "--loop",
                     "--models-dir", str(empty), "--output", str(tmp_path / "out.mp4")])
    err = capsys.readouterr().err
    assert code == cli.EXIT_BAD_INPUT and err.startswith("error: --loop: FramePack-F1"), err


def test_the_cli_passes_the_end_frame_options_to_the_request():
    from framepack_core.cli.main import build_parser
    from framepack_core.cli.options import request_from_args

    args = build_parser().parse_args(["generate", "--image", "a.png", "--end-image", "b.png", "--end-strength",
                                      "0.7", "--end-image-embedding-weight", "0.3"])
    request = request_from_args(args, Path("a.png")).validated()
    assert (request.end_image, request.end_strength, request.end_image_embedding_weight, request.loop) == (
        Path("b.png"), 0.7, 0.3, False)
    assert request_from_args(build_parser().parse_args(["generate", "--image", "a.png", "--loop"]),
                             Path("a.png")).loop


def test_our_first_section_context_equals_diffusers_last_image_for_the_same_latent(tiny_models_dir, gradient_image,
                                                                                   end_image):
    """diffusers' HunyuanVideoFramepackPipeline on the same tiny components: its first section's clean_latents_post
    is the last image's latent, as ours at strength 1; its SigLIP average is computed but, in diffusers 0.42, never
    reaches the transformer (see docs/controls.md)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, HunyuanVideoFramepackPipeline

    from framepack_core.models.loaders import load_image_encoder, load_transformer, load_vae
    from framepack_core.pipeline.story_inputs import SectionAnchors, anchored_context
    from framepack_core.sampling.packing import LatentHistory

    source = ModelSource(models_dir=tiny_models_dir)
    encoder = load_image_encoder(source, "cpu", torch.float32)
    vae = load_vae(source, "cpu", torch.float32)
    transformer = load_transformer(source, "original", "cpu", torch.float32)
    pipe = HunyuanVideoFramepackPipeline(text_encoder=None, tokenizer=None, transformer=transformer, vae=vae,
                                         scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0), text_encoder_2=None,
                                         tokenizer_2=None, image_encoder=encoder.image_encoder,
                                         feature_extractor=encoder.feature_extractor)
    first, last = (Image.fromarray(resize_and_center_crop(load_input_image(p).pixels, *BUCKET))
                   for p in (gradient_image, end_image))
    calls = []
    handle = transformer.register_forward_pre_hook(lambda m, a, kw: calls.append(kw), with_kwargs=True)
    try:
        pipe(image=first, last_image=last, height=48, width=64, num_frames=9, latent_window_size=3,
             num_inference_steps=1, guidance_scale=10.0, generator=torch.Generator().manual_seed(5),
             prompt_embeds=torch.randn(1, 4, transformer.config.text_embed_dim),
             pooled_prompt_embeds=torch.randn(1, transformer.config.pooled_projection_dim),
             prompt_attention_mask=torch.ones(1, 4), output_type="latent")
    finally:
        handle.remove()
    # Their image latents are posterior samples drawn from the generator in this order: replay them.
    replay = torch.Generator().manual_seed(5)
    first_latent, last_latent = (
        vae.encode(pipe.video_processor.preprocess(image, 48, 64).unsqueeze(2)).latent_dist.sample(replay)
        * vae.config.scaling_factor for image in (first, last))
    assert len(calls) == 1  # one section, one step
    theirs = calls[0]
    assert torch.equal(theirs["latents_clean"][:, :, 1:2], last_latent)
    ours = anchored_context(LatentHistory("original", first_latent).context(), 0, SectionAnchors({0: last_latent}))
    assert torch.equal(ours.clean_latents, theirs["latents_clean"])
    assert torch.equal(ours.clean_latents_2x, theirs["latents_history_2x"])
    assert torch.equal(ours.clean_latents_4x, theirs["latents_history_4x"])
    start_embeds, last_embeds = (pipe.encode_image(pipe.video_processor.preprocess(image, 48, 64))
                                 for image in (first, last))
    assert torch.equal(theirs["image_embeds"], start_embeds)  # the average is dropped: W = 0 in effect
    assert not torch.equal(start_embeds, (start_embeds + last_embeds) / 2)
    assert torch.equal(mixed_embeddings(start_embeds, last_embeds, 0.5), (start_embeds + last_embeds) / 2)
