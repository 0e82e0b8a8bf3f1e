"""The work of one transformer call, by arithmetic: packed tokens per section and FLOPs per call.

No model is built: these are closed forms of the real 13 B architecture, checked against the model itself on the
meta device by ``bench/context_tokens.py`` and ``bench/flops.py`` (and by the tests).

Tokens of one section (bucket H x W pixels, latent h = H/8, w = W/8, window n; the 1x2x2 patchify halves h and w):

* main (noisy window):   n x (h/2) x (w/2)
* clean 1x (start frame + 1 history frame):  2 x (h/2) x (w/2)
* clean 2x (2 frames, kernel 2x4x4 after replicate padding):   ceil(2/2) x ceil(h/4) x ceil(w/4)
* clean 4x (16 frames, kernel 4x8x8 after replicate padding):  ceil(16/4) x ceil(h/8) x ceil(w/8)

The same for both models (original and F1 pack the same frame counts, in another order), and for every section
of every length (bench (a)). 608x640, n = 9: 13,680 + 3,040 + 380 + 400 = 17,500.

FLOPs per call (2 per multiply-add; d = 3072 inner dim, m = 4 d MLP width, N = latent + image + text tokens):

* dual-stream block: 2 x (image-stream parameters x latent tokens + text-stream parameters x (image + text)
  tokens) + 2 x modulation parameters (the AdaLN linears see one conditioning vector) + 4 N^2 d (QK^T and AV);
* single-stream block: 2 x (its per-token parameters) x N + 2 x modulation parameters + 4 N^2 d;
* a call is 20 dual + 40 single blocks; embedders and the output projection (under 0.1 %) are left out.

608x640, window 9, 729 image + 256 text tokens: 503.2 TFLOP per call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from framepack_core.models.components import ModelVariant

VAE_SPATIAL_COMPRESSION = 8  # HunyuanVideo VAE: 8x in height and width
PATCH_SIZE = 2  # the transformer's 1x2x2 patchify
CLEAN_1X_FRAMES = 2  # the start latent plus CONTEXT_1X (1) history frame, for both models
CLEAN_2X_FRAMES = 2  # packing.CONTEXT_2X
CLEAN_4X_FRAMES = 16  # packing.CONTEXT_4X
SIGLIP_TOKENS = 729  # SigLIP so400m/14 at 384 px: a 27 x 27 grid, projected to 729 image tokens
MAX_TEXT_TOKENS = 256  # text_encoding.MAX_PROMPT_TOKENS: the transformer drops the padding at batch size 1


@dataclass(frozen=True)
class SectionTokens:
    """Packed latent tokens of one section."""

    main: int
    clean_1x: int
    clean_2x: int
    clean_4x: int

    @property
    def latent(self) -> int:
        return self.main + self.clean_1x + self.clean_2x + self.clean_4x


def section_tokens(height: int, width: int, latent_window_size: int,
                   variant: ModelVariant | str = ModelVariant.ORIGINAL) -> SectionTokens:
    """Packed tokens of a section at bucket ``height`` x ``width`` pixels (multiples of 16).

    ``variant`` ("original" or "f1") is accepted for clarity; both pack the same frame counts.
    """
    try:
        ModelVariant(variant)
    except ValueError:
        raise ValueError(f"unknown model variant {variant!r}") from None
    step = VAE_SPATIAL_COMPRESSION * PATCH_SIZE
    if height <= 0 or width <= 0 or height % step or width % step:
        raise ValueError(f"bucket sides must be positive multiples of {step}, got {height}x{width}")
    if latent_window_size < 1:
        raise ValueError(f"latent_window_size must be at least 1, got {latent_window_size}")
    latent_h, latent_w = height // VAE_SPATIAL_COMPRESSION, width // VAE_SPATIAL_COMPRESSION
    per_frame = (latent_h // PATCH_SIZE) * (latent_w // PATCH_SIZE)
    return SectionTokens(
        main=latent_window_size * per_frame,
        clean_1x=CLEAN_1X_FRAMES * per_frame,
        clean_2x=math.ceil(CLEAN_2X_FRAMES / 2) * math.ceil(latent_h / 4) * math.ceil(latent_w / 4),
        clean_4x=math.ceil(CLEAN_4X_FRAMES / 4) * math.ceil(latent_h / 8) * math.ceil(latent_w / 8),
    )


@dataclass(frozen=True)
class TransformerShape:
    """The dimensions the FLOPs depend on; the defaults are the real FramePack DiT."""

    inner_dim: int = 3072  # 24 heads x 128
    head_dim: int = 128
    num_dual: int = 20
    num_single: int = 40
    mlp_ratio: float = 4.0

    @property
    def mlp_dim(self) -> int:
        return int(self.inner_dim * self.mlp_ratio)

    def dual_stream_parameters(self) -> int:
        """Parameters of one stream of a dual block: q, k, v, out (with biases), q/k RMSNorm, the MLP."""
        d, m = self.inner_dim, self.mlp_dim
        return 4 * (d * d + d) + 2 * self.head_dim + (d * m + m) + (m * d + d)

    def dual_modulation_parameters(self) -> int:
        d = self.inner_dim
        return 2 * (6 * d * d + 6 * d)  # norm1 and norm1_context: Linear(d, 6d) each

    def single_token_parameters(self) -> int:
        """Parameters of a single block applied per token: q, k, v, q/k norms, proj_mlp, proj_out (d + m -> d)."""
        d, m = self.inner_dim, self.mlp_dim
        return 3 * (d * d + d) + 2 * self.head_dim + (d * m + m) + ((d + m) * d + d)

    def single_modulation_parameters(self) -> int:
        d = self.inner_dim
        return 3 * d * d + 3 * d  # AdaLayerNormZeroSingle: Linear(d, 3d)


def attention_flops(tokens: int, inner_dim: int) -> int:
    """QK^T and AV over ``tokens`` (2 x N^2 x d each)."""
    return 4 * tokens * tokens * inner_dim


def call_flops(latent_tokens: int, text_tokens: int = MAX_TEXT_TOKENS, image_tokens: int = SIGLIP_TOKENS,
               shape: TransformerShape = TransformerShape()) -> int:
    """FLOPs of one transformer call (all 60 blocks) for ``latent_tokens`` packed tokens."""
    encoder = image_tokens + text_tokens
    tokens = latent_tokens + encoder
    stream = shape.dual_stream_parameters()
    dual = (2 * (stream * latent_tokens + stream * encoder) + 2 * shape.dual_modulation_parameters()
            + attention_flops(tokens, shape.inner_dim))
    single = (2 * shape.single_token_parameters() * tokens + 2 * shape.single_modulation_parameters()
              + attention_flops(tokens, shape.inner_dim))
    return shape.num_dual * dual + shape.num_single * single
