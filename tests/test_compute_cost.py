"""Tokens and FLOPs of a transformer call by arithmetic, and the activation estimates, against the real model."""

from __future__ import annotations

import pytest

from framepack_core.media.buckets import BUCKETS_640
from framepack_core.memory import activations
from framepack_core.memory.compute_cost import TransformerShape, call_flops, section_tokens

# bench (a), docs/benchmarks.md: latent tokens per section of every 640 bucket, counted by the model itself.
LATENT_TOKENS_640 = {
    (416, 960): 17_970, (448, 864): 17_402, (480, 832): 17_966, (512, 768): 17_664, (544, 704): 17_226,
    (576, 672): 17_406, (608, 640): 17_500, (640, 608): 17_500, (672, 576): 17_406, (704, 544): 17_226,
    (768, 512): 17_664, (832, 480): 17_966, (864, 448): 17_402, (960, 416): 17_970,
}


def test_a_608x640_section_packs_17500_tokens_for_both_models():
    for variant in ("original", "f1"):
        tokens = section_tokens(608, 640, 9, variant)
        assert (tokens.main, tokens.clean_1x, tokens.clean_2x, tokens.clean_4x) == (13_680, 3_040, 380, 400)
        assert tokens.latent == 17_500


def test_every_640_bucket_matches_the_count_of_the_model_itself():
    assert {b: section_tokens(*b, 9).latent for b in BUCKETS_640} == LATENT_TOKENS_640


def test_the_window_scales_only_the_noisy_tokens():
    assert section_tokens(608, 640, 5).main == 5 * 1_520
    assert section_tokens(608, 640, 5).latent - section_tokens(608, 640, 5).main == 3_820


@pytest.mark.parametrize("args", [(600, 640, 9), (608, 640, 0), (0, 640, 9)])
def test_impossible_sections_are_refused(args):
    with pytest.raises(ValueError):
        section_tokens(*args)
    with pytest.raises(ValueError, match="variant"):
        section_tokens(608, 640, 9, "f2")


def test_a_call_at_608x640_costs_503_tflop():
    assert call_flops(17_500, 256) == pytest.approx(503.2e12, rel=0.01)
    assert call_flops(17_500, 256) > call_flops(17_500, 20) > call_flops(13_000, 20)


def test_the_closed_form_block_parameters_equal_the_real_blocks():
    from bench.context_tokens import build_meta_transformer
    from bench.flops import BlockParams

    real = BlockParams.of(build_meta_transformer())
    shape = TransformerShape()
    assert real.dual_image == real.dual_text == shape.dual_stream_parameters()
    assert real.dual_modulation == shape.dual_modulation_parameters()
    assert real.single_per_token == shape.single_token_parameters()
    assert real.single_modulation == shape.single_modulation_parameters()


def test_the_closed_form_equals_the_benchmark_arithmetic():
    from bench.context_tokens import build_meta_transformer
    from bench.flops import BlockParams, arithmetic_dual, arithmetic_single

    params = BlockParams.of(build_meta_transformer())
    for latent, text in ((17_500, 256), (17_970, 20)):
        encoder = 729 + text
        expected = 20 * arithmetic_dual(params, latent, encoder, 3072) + 40 * arithmetic_single(
            params, latent, encoder, 3072)
        assert call_flops(latent, text) == expected


def test_activation_estimates_follow_their_stated_formulas():
    # Transformer: N x 3072 x 2 bytes x 20.
    assert activations.transformer_activation_bytes(18_485) == 18_485 * 3072 * 2 * 20
    # Framewise decoding: at most 5 latent frames (17 pixel frames) in the decoder at once.
    assert activations.decoder_frames_at_once(19) == 17 and activations.decoder_frames_at_once(2) == 5
    assert activations.pixel_frames(19) == 73
    untiled = activations.vae_decode_activation_bytes(19, 608, 640, tiled=False)
    tiled = activations.vae_decode_activation_bytes(19, 608, 640, tiled=True)
    output = 73 * 3 * 608 * 640 * 2 * 3
    assert untiled == 17 * 608 * 640 * 128 * 2 * 8 + output
    assert tiled == 17 * 256 * 256 * 128 * 2 * 8 + output
    assert tiled < untiled / 4
    assert activations.vae_encode_activation_bytes(608, 640, tiled=False) == 608 * 640 * 128 * 2 * 8


def test_the_most_latents_one_section_decodes():
    assert activations.decoded_latent_frames(9, "original") == 19  # last section: 2 windows + the start latent
    assert activations.decoded_latent_frames(9, "f1") == 18
    assert activations.decoded_latent_frames(1, "original") == 3
