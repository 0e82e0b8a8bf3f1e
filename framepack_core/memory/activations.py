"""Estimates of the working memory (activations) of each stage of a job, from the shapes alone.

These are stated estimates, not measurements: nothing here has run on a GPU. Each is "the largest tensor of
the stage, times a factor for how many such tensors are alive at once"; the factors are argued below and are
constants so that a measurement on a GPU can replace them in one place.

* **Transformer** (one call): ``N x 3072 x bytes x 20``, N = packed latent + 729 image + text tokens. Inside a
  single-stream block the live tensors are the residual stream, the normed input, q/k/v, the attention output
  (1 x N x d each), the MLP input and its GELU (4 x N x d each) and their concatenation (5 x N x d), about 17
  units of N x d; 20 leaves room for the RoPE tables and the packed inputs. Attention itself is taken to be
  memory-efficient (flash / memory-efficient SDPA on CUDA): no N x N score matrix.
* **VAE decode**: diffusers decodes HunyuanVideo latents framewise by default (``use_framewise_decoding``):
  temporal tiles of 4 + 1 latent frames, i.e. at most 17 pixel frames go through the decoder at once. The
  largest tensors are at the top (full-resolution) decoder level, 128 channels (256 at the last upsampler):
  ``frames at once x H x W x 128 x bytes x 8`` -- 8 units of the 128-channel level, i.e. the upsampler's
  256-channel input, its replicate-padded copy and its output plus a GroupNorm output. With tiling, H x W is
  one 256 x 256 px tile (diffusers' default tile; 192 px stride). On top, the decoded video is held three times
  (tiles, blended, concatenated): ``pixel frames x 3 x H x W x bytes x 3``.
* **VAE encode** (the start image, 1 frame): the same top-level term with 1 frame.
* **Text and image encoders**: small fixed estimates from their real shapes (LLaMA: 351 tokens x 4096 x 33 kept
  hidden states + the 14,336-wide MLP, about 0.15 GiB; CLIP-L at 77 tokens: tiny; SigLIP at 729 tokens: about
  0.1 GiB), rounded up.
* **Host buffers** during decoding: the decoded section in float32 on the CPU and its copy in the writer.
"""

from __future__ import annotations

from framepack_core.models.components import ModelVariant

GIB = 1024**3

TRANSFORMER_ACTIVATION_FACTOR = 20
VAE_TOP_CHANNELS = 128
VAE_ACTIVATION_FACTOR = 8
VAE_OUTPUT_COPIES = 3
VAE_TEMPORAL_COMPRESSION = 4
VAE_TILE_PIXELS = 256  # diffusers' tile_sample_min_height / width for this VAE
VAE_TILE_LATENT_FRAMES = 4  # tile_sample_min_num_frames (16) / temporal compression: 4 (+1 causal) per tile
TEXT_ENCODING_BYTES = GIB // 4  # LLaMA + CLIP together
IMAGE_ENCODING_BYTES = GIB // 8  # SigLIP
HOST_PIXEL_BYTES = 4  # the engine moves decoded pixels to the CPU as float32
HOST_PIXEL_COPIES = 2


def transformer_activation_bytes(sequence_tokens: int, inner_dim: int = 3072, dtype_bytes: int = 2) -> int:
    """Working memory of one transformer call over ``sequence_tokens`` (latent + image + text)."""
    return sequence_tokens * inner_dim * dtype_bytes * TRANSFORMER_ACTIVATION_FACTOR


def pixel_frames(latent_frames: int) -> int:
    """Pixel frames the causal VAE makes of ``latent_frames``: the first latent is one frame, the others four."""
    return (latent_frames - 1) * VAE_TEMPORAL_COMPRESSION + 1


def decoder_frames_at_once(latent_frames: int) -> int:
    """Pixel frames inside the decoder at once with framewise decoding (diffusers' default): at most 17."""
    return pixel_frames(min(latent_frames, VAE_TILE_LATENT_FRAMES + 1))


def _area(height: int, width: int, tiled: bool) -> int:
    if tiled:
        return min(height, VAE_TILE_PIXELS) * min(width, VAE_TILE_PIXELS)
    return height * width


def vae_decode_activation_bytes(latent_frames: int, height: int, width: int, tiled: bool,
                                dtype_bytes: int = 2) -> int:
    """Working memory of decoding ``latent_frames`` to ``height`` x ``width`` pixels (with or without tiling)."""
    working = (decoder_frames_at_once(latent_frames) * _area(height, width, tiled) * VAE_TOP_CHANNELS
               * dtype_bytes * VAE_ACTIVATION_FACTOR)
    output = pixel_frames(latent_frames) * 3 * height * width * dtype_bytes * VAE_OUTPUT_COPIES
    return working + output


def vae_encode_activation_bytes(height: int, width: int, tiled: bool, dtype_bytes: int = 2) -> int:
    """Working memory of encoding the one start image."""
    return _area(height, width, tiled) * VAE_TOP_CHANNELS * dtype_bytes * VAE_ACTIVATION_FACTOR


def decoded_latent_frames(latent_window_size: int, variant: ModelVariant | str = ModelVariant.ORIGINAL) -> int:
    """The most latent frames one section decodes: the new window plus one window of context, plus the start
    latent in the original model's last section (``LatentHistory.latents_to_decode``); a one-section original
    video decodes window + 1."""
    if ModelVariant(variant) == ModelVariant.ORIGINAL:
        return max(2 * latent_window_size + 1, latent_window_size + 1)
    return 2 * latent_window_size


def host_decode_buffer_bytes(latent_frames: int, height: int, width: int) -> int:
    """Host RAM for one decoded section: float32 pixels and the writer's copy."""
    return pixel_frames(latent_frames) * 3 * height * width * HOST_PIXEL_BYTES * HOST_PIXEL_COPIES
