"""Benchmark (c): model FLOPs per denoising step of the real 13B FramePack transformer, counted on the meta device.

What is counted: ``torch.utils.flop_counter.FlopCounterMode`` around the real
``HunyuanVideoFramepackTransformer3DModel`` config (diffusers defaults with ``has_image_proj`` and
``has_clean_x_embedder``, 12.87 B parameters) built on the meta device, fed meta tensors of the real shapes of one
section at a 640 bucket. It counts matmuls and convolutions (``addmm``/``mm``/``bmm``/``convolution``; attention on
the meta device runs as two ``bmm``), not element-wise work (norms, RoPE, activations, residuals), which is a
rounding error next to them.

Why per module and not ``model(...)``: at batch size 1 the forward crops the text to its real length with
``encoder_hidden_states[:, :mask.sum()]``, which needs the mask's value (an implicit ``.item()``) and a meta tensor
has none. So the forward is replayed module by module, with the shapes it would produce:

* embedders: ``x_embedder`` (noisy window), ``clean_x_embedder`` (1x / 2x / 4x context with its replicate
  padding), RoPE through the model's own ``rope`` and packing (``_pack_history_states``), ``time_text_embed``,
  ``context_embedder`` (the 2-layer token refiner, on all 512 padded text tokens: the crop happens after it)
  and ``image_projection`` on the 729 SigLIP tokens;
* ONE dual-stream block (``transformer_blocks[0]``) and ONE single-stream block, on the packed latent tokens
  (bench (a); they do not depend on the video length) and 729 image + the real text tokens. The 20 dual and 40
  single blocks are identical in shape and see identical input shapes, so the call's block FLOPs are exactly
  20x and 40x those of one block;
* the output: ``norm_out`` + ``proj_out`` on the noisy tokens only.

The reference arithmetic it is checked against (per block, N = latent + text tokens, d = 3072 inner dim):

* dual block: 2 x (image-stream parameters x latent tokens + text-stream parameters x text tokens)
  + 2 x modulation parameters (the AdaLN linears act on the single conditioning vector, once per call)
  + 4 x N^2 x d for attention (QK^T and AV, each 2 x N^2 x d);
* single block: 2 x (its parameters without modulation) x N + 2 x modulation parameters + 4 x N^2 x d.

Parameter counts are read from the block modules (weights, biases and RMSNorm weights), grouped by stream by
name. A call costs the same for the original and the F1 model (same architecture and shapes). A denoising step
is 1 call with real CFG off (the default, cfg = 1) and 2 with it on; a section is 25 steps; a 5 s video is
4 sections. TeaCache (which skips whole calls) is not modelled. The time estimate divides by an assumed RTX 4090
dense bf16 tensor rate with fp32 accumulation of 165 TFLOPS (spec sheet; no sparsity), i.e. 100 % utilisation,
as a lower bound to compare with the README's 2.5 s/frame.

Reproduce (from the repository root, CPU only, about 11 s for every bucket on 2 cores)::

    python -m bench.flops
    python -m bench.flops --buckets 608x640 --text-tokens 256   # quick
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from diffusers import HunyuanVideoFramepackTransformer3DModel
from torch.utils.flop_counter import FlopCounterMode

from bench.context_tokens import (
    DETAIL_BUCKET,
    META,
    SIGLIP_TOKENS,
    VAE_SPATIAL_COMPRESSION,
    TokenCounter,
    build_meta_transformer,
    embed_section,
    fmt_bucket,
    iterate_sections,
    parse_bucket,
    section_shapes,
)
from framepack_core.media.buckets import buckets_for_resolution
from framepack_core.models.components import ModelVariant
from framepack_core.models.text_encoding import MAX_PROMPT_TOKENS, PADDED_LENGTH
from framepack_core.sampling.schedule import video_length

DEFAULT_TEXT_TOKENS: tuple[int, ...] = (MAX_PROMPT_TOKENS, 20)  # the cap, and a short one-sentence prompt
DEFAULT_STEPS = 25  # official default
DEFAULT_WINDOW = 9
VIDEO_SECONDS = 5.0  # the official default length: 4 sections, 145 frames
RTX_4090_BF16_TFLOPS = 165.0  # dense bf16 tensor-core rate with fp32 accumulate (spec sheet), no sparsity
README_SECONDS_PER_FRAME = 2.5  # README: RTX 4090 desktop, unoptimised (no TeaCache)

# Submodule name prefixes (relative to a block) of each stream; the rest of a block is its AdaLN modulation.
DUAL_IMAGE_STREAM = ("attn.to_q.", "attn.to_k.", "attn.to_v.", "attn.to_out.", "attn.norm_q.", "attn.norm_k.", "ff.")
DUAL_TEXT_STREAM = ("attn.add_q_proj.", "attn.add_k_proj.", "attn.add_v_proj.", "attn.to_add_out.",
                    "attn.norm_added_q.", "attn.norm_added_k.", "ff_context.")
DUAL_MODULATION = ("norm1.linear.", "norm1_context.linear.")
SINGLE_PER_TOKEN = ("attn.to_q.", "attn.to_k.", "attn.to_v.", "attn.norm_q.", "attn.norm_k.", "proj_mlp.", "proj_out.")
SINGLE_MODULATION = ("norm.linear.",)


def count_flops(fn: Callable[[], object]) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def params_with_prefix(module: torch.nn.Module, prefixes: Sequence[str]) -> int:
    return sum(p.numel() for name, p in module.named_parameters() if name.startswith(tuple(prefixes)))


@dataclass(frozen=True)
class BlockParams:
    """Parameter counts of one dual and one single block, split by what they are applied to."""

    dual_image: int
    dual_text: int
    dual_modulation: int
    single_per_token: int
    single_modulation: int

    @classmethod
    def of(cls, model: HunyuanVideoFramepackTransformer3DModel) -> BlockParams:
        dual, single = model.transformer_blocks[0], model.single_transformer_blocks[0]
        params = cls(
            dual_image=params_with_prefix(dual, DUAL_IMAGE_STREAM),
            dual_text=params_with_prefix(dual, DUAL_TEXT_STREAM),
            dual_modulation=params_with_prefix(dual, DUAL_MODULATION),
            single_per_token=params_with_prefix(single, SINGLE_PER_TOKEN),
            single_modulation=params_with_prefix(single, SINGLE_MODULATION),
        )
        # Every parameter must be in exactly one group, or the arithmetic would silently miss some.
        dual_total = sum(p.numel() for p in dual.parameters())
        single_total = sum(p.numel() for p in single.parameters())
        if params.dual_image + params.dual_text + params.dual_modulation != dual_total:
            raise AssertionError("dual block parameters are not fully covered by the stream prefixes")
        if params.single_per_token + params.single_modulation != single_total:
            raise AssertionError("single block parameters are not fully covered by the prefixes")
        return params


def arithmetic_dual(params: BlockParams, latent: int, text: int, inner_dim: int) -> int:
    tokens = latent + text
    linear = 2 * (params.dual_image * latent + params.dual_text * text) + 2 * params.dual_modulation
    return linear + 4 * tokens * tokens * inner_dim


def arithmetic_single(params: BlockParams, latent: int, text: int, inner_dim: int) -> int:
    tokens = latent + text
    linear = 2 * params.single_per_token * tokens + 2 * params.single_modulation
    return linear + 4 * tokens * tokens * inner_dim


@dataclass(frozen=True)
class CallFlops:
    """FLOPs of one transformer call for one bucket and text length."""

    bucket: tuple[int, int]
    latent_tokens: int
    noisy_tokens: int
    text_tokens: int  # real prompt tokens
    encoder_tokens: int  # image + real text, what the blocks see
    embedders: int
    dual_block: int
    single_block: int
    output: int
    arithmetic_dual_block: int
    arithmetic_single_block: int
    attention_per_block: int
    num_dual: int
    num_single: int

    @property
    def sequence(self) -> int:
        return self.latent_tokens + self.encoder_tokens

    @property
    def counted_blocks(self) -> int:
        return self.num_dual * self.dual_block + self.num_single * self.single_block

    @property
    def counted(self) -> int:
        return self.embedders + self.counted_blocks + self.output

    @property
    def arithmetic(self) -> int:
        return self.num_dual * self.arithmetic_dual_block + self.num_single * self.arithmetic_single_block

    @property
    def ratio(self) -> float:
        return self.counted / self.arithmetic

    @property
    def attention_share(self) -> float:
        return (self.num_dual + self.num_single) * self.attention_per_block / self.counted


def measure_call(
    model: HunyuanVideoFramepackTransformer3DModel,
    bucket: tuple[int, int],
    text_tokens: int,
    window: int = DEFAULT_WINDOW,
    counter: TokenCounter | None = None,
) -> CallFlops:
    """Count one call at ``bucket`` with ``text_tokens`` real prompt tokens, module by module on meta tensors."""
    config = model.config
    inner_dim = config.num_attention_heads * config.attention_head_dim
    latent_height, latent_width = bucket[0] // VAE_SPATIAL_COMPRESSION, bucket[1] // VAE_SPATIAL_COMPRESSION
    # Any section will do: bench (a) shows they all pack to the same shapes. Take the first of a 5 s original video.
    plan, context = next(iter(iterate_sections(ModelVariant.ORIGINAL, VIDEO_SECONDS, window, latent_height,
                                               latent_width)))
    counter = counter if counter is not None else TokenCounter(model)
    main, _, _, _, latent_tokens, _ = counter.count(plan, context, latent_height, latent_width)

    shapes = section_shapes(plan, context, latent_height, latent_width)
    timestep = torch.empty((1,), device=META)
    guidance = torch.empty((1,), device=META)
    pooled = torch.empty((1, config.pooled_projection_dim), device=META)
    text = torch.empty((1, PADDED_LENGTH, config.text_embed_dim), device=META)
    text_mask = torch.empty((1, PADDED_LENGTH), dtype=torch.bool, device=META)
    image = torch.empty((1, SIGLIP_TOKENS, config.image_proj_dim), device=META)

    outputs: dict[str, torch.Tensor] = {}

    def embed() -> None:
        section = embed_section(model, plan, shapes)
        temb, _ = model.time_text_embed(timestep, pooled, guidance)
        encoded_text = model.context_embedder(text, timestep, text_mask)
        encoded_image = model.image_projection(image)
        # The forward's batch-1 crop: image tokens first, then only the real text tokens.
        outputs.update(
            hidden=section.packed, rope_cos=section.rope[0], rope_sin=section.rope[1], temb=temb,
            encoder=torch.cat([encoded_image, encoded_text[:, :text_tokens]], dim=1),
        )

    embedders = count_flops(embed)
    hidden, encoder, temb = outputs["hidden"], outputs["encoder"], outputs["temb"]
    rope_table = (outputs["rope_cos"], outputs["rope_sin"])
    if hidden.shape[1] != latent_tokens:
        raise AssertionError(f"packed {hidden.shape[1]} tokens, bench (a) says {latent_tokens}")

    dual_block = count_flops(lambda: model.transformer_blocks[0](hidden, encoder, temb, None, rope_table))
    single_block = count_flops(lambda: model.single_transformer_blocks[0](hidden, encoder, temb, None, rope_table))
    output = count_flops(lambda: model.proj_out(model.norm_out(hidden[:, -main:], temb)))

    params = BlockParams.of(model)
    sequence = latent_tokens + encoder.shape[1]
    return CallFlops(
        bucket=bucket,
        latent_tokens=latent_tokens,
        noisy_tokens=main,
        text_tokens=text_tokens,
        encoder_tokens=encoder.shape[1],
        embedders=embedders,
        dual_block=dual_block,
        single_block=single_block,
        output=output,
        arithmetic_dual_block=arithmetic_dual(params, latent_tokens, encoder.shape[1], inner_dim),
        arithmetic_single_block=arithmetic_single(params, latent_tokens, encoder.shape[1], inner_dim),
        attention_per_block=4 * sequence * sequence * inner_dim,
        num_dual=len(model.transformer_blocks),
        num_single=len(model.single_transformer_blocks),
    )


def tf(flops: float) -> str:
    return f"{flops / 1e12:,.1f}"


def call_table(results: Sequence[CallFlops]) -> str:
    lines = [
        "| bucket | latent tokens | text tokens (729 image + real) | N | counted TFLOPs/call | arithmetic TFLOPs/call "
        "| ratio | attention share | TFLOPs/step CFG off (1 call) | TFLOPs/step CFG on (2 calls) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {fmt_bucket(r.bucket)} | {r.latent_tokens:,} | {r.encoder_tokens:,} ({r.text_tokens}) | "
            f"{r.sequence:,} | {tf(r.counted)} | {tf(r.arithmetic)} | {r.ratio:.4f} | {r.attention_share:.0%} | "
            f"{tf(r.counted)} | {tf(2 * r.counted)} |"
        )
    return "\n".join(lines)


def breakdown_table(r: CallFlops) -> str:
    rows = [
        ("embedders (patchify, refiner on 512 text tokens, image proj, conditioning)", r.embedders, None),
        ("1 dual-stream block", r.dual_block, r.arithmetic_dual_block),
        ("1 single-stream block", r.single_block, r.arithmetic_single_block),
        (f"{r.num_dual} dual-stream blocks", r.num_dual * r.dual_block, r.num_dual * r.arithmetic_dual_block),
        (f"{r.num_single} single-stream blocks", r.num_single * r.single_block,
         r.num_single * r.arithmetic_single_block),
        ("output (norm_out + proj_out on noisy tokens)", r.output, None),
        ("attention part of one block (4 N^2 d)", r.attention_per_block, None),
        ("whole call", r.counted, r.arithmetic),
    ]
    lines = ["| part | counted TFLOPs | arithmetic TFLOPs | ratio |", "|---|---:|---:|---:|"]
    for name, counted, arithmetic in rows:
        if arithmetic is None:
            lines.append(f"| {name} | {counted / 1e12:,.4f} | - | - |")
        else:
            lines.append(f"| {name} | {counted / 1e12:,.4f} | {arithmetic / 1e12:,.4f} | {counted / arithmetic:.5f} |")
    return "\n".join(lines)


def totals_table(results: Sequence[CallFlops], steps: int, window: int, rate_tflops: float) -> str:
    length = video_length(VIDEO_SECONDS, window)
    lines = [
        f"| bucket | text tokens | CFG | calls/step | PFLOPs/section ({steps} steps) | PFLOPs per {VIDEO_SECONDS:g} s video "
        f"({length.sections} sections, {length.pixel_frames} frames) | time at {rate_tflops:g} TFLOPS, 100 % "
        f"| s/frame at 100 % | utilisation implied by {README_SECONDS_PER_FRAME:g} s/frame |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        for cfg, calls in (("off", 1), ("on", 2)):
            section = steps * calls * r.counted
            video = length.sections * section
            seconds = video / (rate_tflops * 1e12)
            per_frame = seconds / length.pixel_frames
            lines.append(
                f"| {fmt_bucket(r.bucket)} | {r.text_tokens} | {cfg} | {calls} | {section / 1e15:,.2f} | "
                f"{video / 1e15:,.1f} | {seconds:,.0f} s ({seconds / 60:.1f} min) | {per_frame:.2f} | "
                f"{implied_utilisation(per_frame) if calls == 1 else 'n/a (README speed is CFG off)'} |"
            )
    return "\n".join(lines)


def implied_utilisation(seconds_per_frame_at_peak: float) -> str:
    """Share of the assumed peak rate a GPU would need to sustain to match the README's speed."""
    return f"{seconds_per_frame_at_peak / README_SECONDS_PER_FRAME:.0%}"


@dataclass(frozen=True)
class FlopsReport:
    results: list[CallFlops]
    parameters: int
    elapsed: float


def measure(
    buckets: Sequence[tuple[int, int]],
    text_tokens: Sequence[int],
    window: int = DEFAULT_WINDOW,
    model: HunyuanVideoFramepackTransformer3DModel | None = None,
) -> FlopsReport:
    started = time.perf_counter()
    model = model if model is not None else build_meta_transformer()
    counter = TokenCounter(model)
    results = [measure_call(model, b, t, window, counter) for b in buckets for t in text_tokens]
    parameters = sum(p.numel() for p in model.parameters())
    return FlopsReport(results, parameters, time.perf_counter() - started)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--buckets", type=parse_bucket, nargs="+", default=None,
                        help="HxW, e.g. 608x640 (default: every bucket of --resolution)")
    parser.add_argument("--resolution", type=int, default=640)
    parser.add_argument("--text-tokens", type=int, nargs="+", default=list(DEFAULT_TEXT_TOKENS),
                        help=f"real prompt tokens (at most {MAX_PROMPT_TOKENS})")
    parser.add_argument("--window", type=int, default=DEFAULT_WINDOW)
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    parser.add_argument("--rate-tflops", type=float, default=RTX_4090_BF16_TFLOPS,
                        help="assumed accelerator rate for the time estimate (RTX 4090 dense bf16)")
    parser.add_argument("--detail-bucket", type=parse_bucket, default=None,
                        help=f"bucket for the breakdown and totals (default {fmt_bucket(DETAIL_BUCKET)} or the first)")
    parser.add_argument("--max-ratio-error", type=float, default=0.05,
                        help="exit 1 if counted/arithmetic is further than this from 1")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if any(not 0 < t <= MAX_PROMPT_TOKENS for t in args.text_tokens):
        raise SystemExit(f"--text-tokens must be in 1..{MAX_PROMPT_TOKENS}")
    buckets = args.buckets or list(dict.fromkeys(buckets_for_resolution(args.resolution)))
    detail = args.detail_bucket or (DETAIL_BUCKET if DETAIL_BUCKET in buckets else buckets[0])
    if detail not in buckets:
        buckets.append(detail)
    report = measure(buckets, args.text_tokens, args.window)

    print(f"## Transformer FLOPs per call, window {args.window} ({report.parameters / 1e9:.2f} B parameters, "
          "meta device)\n")
    print(call_table(report.results))
    detail_results = [r for r in report.results if r.bucket == detail]
    longest = max(detail_results, key=lambda r: r.text_tokens)
    print(f"\n## Breakdown, {fmt_bucket(detail)}, {longest.text_tokens} text tokens\n")
    print(breakdown_table(longest))
    print(f"\n## Per section and per {VIDEO_SECONDS:g} s video, {fmt_bucket(detail)}\n")
    print(totals_table(detail_results, args.steps, args.window, args.rate_tflops))
    print(f"\nCounted {len(report.results)} configurations in {report.elapsed:.1f} s.")

    bad = [r for r in report.results if abs(r.ratio - 1) > args.max_ratio_error]
    if bad:
        print("\nFAILED: counted/arithmetic off by more than "
              f"{args.max_ratio_error:.0%}: " + ", ".join(f"{fmt_bucket(r.bucket)}/{r.text_tokens}: {r.ratio:.4f}"
                                                        for r in bad), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
