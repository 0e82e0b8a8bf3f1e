"""Benchmark (a): packed context tokens per section, for every 640 bucket and video lengths of 1 s to 120 s.

FramePack's claim is that the transformer sees a constant-length context however long the video gets: each
section packs its noisy window plus 2 clean 1x frames, 2 frames at 2x and 16 frames at 4x compression. This
script checks that claim by *counting*, not by formula:

* the sections come from the project's own bookkeeping: ``plan_sections`` for the frame indices and
  ``LatentHistory`` (fed with every generated section, original and f1 alike) for the context shapes, at the
  real latent height/width of the bucket. The history holds zero-channel tensors, so it costs no memory while
  its time/height/width bookkeeping is the real one;
* the tokens come from the real 13B ``HunyuanVideoFramepackTransformer3DModel`` config (diffusers defaults with
  ``has_image_proj`` and ``has_clean_x_embedder``) built on the meta device: each section's shapes go through
  the model's own ``x_embedder`` and ``clean_x_embedder`` (so the replicate padding of the 2x/4x inputs is the
  model's) and its own RoPE (``rope`` + the model's packing, which pads and average-pools the 2x/4x phases);
  the packed sequence length is read off the packed hidden states, and the RoPE table must have the same
  number of rows;
* conditioning: 729 SigLIP tokens through the model's ``image_projection``, plus at most 256 real text
  tokens (the transformer drops the padding of the 512-token text tensor at batch size 1).

The noisy-window count is also checked against ``framepack_core.sampling.sampler.main_token_count`` (the number the
sampler's shift uses). The script exits with status 1 if any section of any length has a different latent token
count than the others of its bucket, or if a check fails.

Reproduce (from the repository root, CPU only, about 8 s for the full grid on 2 cores)::

    python -m bench.context_tokens
    python -m bench.context_tokens --buckets 608x640 --lengths 1 10 --detail-bucket 608x640   # quick
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from diffusers import HunyuanVideoFramepackTransformer3DModel

from framepack_core.media.buckets import buckets_for_resolution
from framepack_core.models.components import ModelVariant
from framepack_core.models.text_encoding import MAX_PROMPT_TOKENS
from framepack_core.sampling.packing import LatentHistory, PackedContext, SectionPlan, plan_sections
from framepack_core.sampling.sampler import main_token_count
from framepack_core.sampling.schedule import total_latent_sections

DEFAULT_LENGTHS: tuple[float, ...] = (1, 2, 5, 10, 20, 30, 60, 90, 120)
DEFAULT_WINDOW = 9
DEFAULT_RESOLUTION = 640
DETAIL_BUCKET = (608, 640)
VAE_SPATIAL_COMPRESSION = 8  # HunyuanVideo VAE: 8x in height and width (same value as framepack_core.pipeline.engine)
SIGLIP_TOKENS = 729  # SigLIP so400m/14 at 384 px: a 27 x 27 grid (last_hidden_state of the image encoder)
META = torch.device("meta")


def build_meta_transformer() -> HunyuanVideoFramepackTransformer3DModel:
    """The real FramePack transformer config (12.87 B parameters) with every tensor on the meta device."""
    with META:
        return HunyuanVideoFramepackTransformer3DModel(has_image_proj=True, has_clean_x_embedder=True).eval()


def meta_latents(model: HunyuanVideoFramepackTransformer3DModel, frames: int, height: int, width: int) -> torch.Tensor:
    return torch.empty((1, model.config.in_channels, frames, height, width), device=META)


@dataclass(frozen=True)
class SectionTokens:
    """Packed tokens of one section as the transformer builds them."""

    variant: str
    seconds: float
    section: int
    main: int
    clean_1x: int
    clean_2x: int
    clean_4x: int
    packed: int  # length of the packed hidden states (= main + 1x + 2x + 4x when the model packs as expected)
    rope_rows: int  # rows of the packed RoPE table

    @property
    def latent(self) -> int:
        return self.main + self.clean_1x + self.clean_2x + self.clean_4x


def iterate_sections(
    variant: ModelVariant, seconds: float, window: int, latent_height: int, latent_width: int
) -> Iterator[tuple[SectionPlan, PackedContext]]:
    """Each section's plan and history context, exactly as the engine's loop produces them.

    The history is fed zero-channel latents: ``LatentHistory`` only concatenates and slices along time, so its
    frame bookkeeping (and so the context shapes) is the real one at no memory cost.
    """
    start = torch.zeros(1, 0, 1, latent_height, latent_width)
    history = LatentHistory(variant, start)
    sections = total_latent_sections(seconds, window)
    for plan in plan_sections(variant, sections, window):
        yield plan, history.context()
        history.add_section(torch.zeros(1, 0, window, latent_height, latent_width), plan.is_last)


SectionShapes = tuple[int, int, int, int, int, int]  # frames: noisy, 1x, 2x, 4x; latent height, width


def section_shapes(plan: SectionPlan, context: PackedContext, latent_height: int, latent_width: int) -> SectionShapes:
    """What the transformer's output shape depends on: the frame counts of the four inputs and the latent size.

    The index *values* (gaps, positions) change the RoPE phases but never a shape; the index counts must equal
    the frame counts, which is asserted here.
    """
    frames = (
        len(plan.latent_indices),
        context.clean_latents.shape[2],
        context.clean_latents_2x.shape[2],
        context.clean_latents_4x.shape[2],
    )
    indices = (
        len(plan.latent_indices),
        len(plan.clean_latent_indices),
        len(plan.clean_latent_2x_indices),
        len(plan.clean_latent_4x_indices),
    )
    if frames != indices:
        raise AssertionError(f"section {plan.number}: frame counts {frames} != index counts {indices}")
    return (*frames, latent_height, latent_width)


class TokenCounter:
    """Runs the model's embedders and packing on meta tensors, once per distinct input shape.

    Building RoPE tables through meta kernels costs ~35 ms a section (minutes for the full grid), so results are
    kept per :data:`SectionShapes`; ``distinct_shapes`` says how many different packed inputs were seen, i.e.
    how many times the model actually ran.
    """

    def __init__(self, model: HunyuanVideoFramepackTransformer3DModel) -> None:
        self.model = model
        self._counts: dict[SectionShapes, tuple[int, int, int, int, int, int]] = {}

    @property
    def distinct_shapes(self) -> int:
        return len(self._counts)

    def forget(self) -> None:
        self._counts.clear()

    def count(self, plan: SectionPlan, context: PackedContext, latent_height: int, latent_width: int
              ) -> tuple[int, int, int, int, int, int]:
        """(main, 1x, 2x, 4x, packed, rope rows) for one section."""
        shapes = section_shapes(plan, context, latent_height, latent_width)
        if shapes not in self._counts:
            self._counts[shapes] = count_section_tokens(self.model, plan, shapes)
        return self._counts[shapes]


@dataclass(frozen=True)
class EmbeddedSection:
    """One section after the model's patch embedders and packing (all meta tensors)."""

    noisy: torch.Tensor  # (1, main tokens, inner dim)
    clean_1x: torch.Tensor
    clean_2x: torch.Tensor
    clean_4x: torch.Tensor
    packed: torch.Tensor  # (1, latent tokens, inner dim): [4x | 2x | 1x | noisy]
    rope: tuple[torch.Tensor, torch.Tensor]  # packed (cos, sin), one row per packed token


def embed_section(
    model: HunyuanVideoFramepackTransformer3DModel, plan: SectionPlan, shapes: SectionShapes
) -> EmbeddedSection:
    """The first part of the model's forward for one section: patchify, RoPE and packing, on meta tensors."""
    noisy_frames, frames_1x, frames_2x, frames_4x, latent_height, latent_width = shapes
    hidden = model.x_embedder(meta_latents(model, noisy_frames, latent_height, latent_width))
    emb_1x, emb_2x, emb_4x = model.clean_x_embedder(
        meta_latents(model, frames_1x, latent_height, latent_width),
        meta_latents(model, frames_2x, latent_height, latent_width),
        meta_latents(model, frames_4x, latent_height, latent_width),
    )

    def rope(indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return model.rope(frame_indices=indices, height=latent_height, width=latent_width, device=META)

    patch = model.config.patch_size
    # The same call the model's forward makes; it prepends 1x, 2x, 4x and pads/pools the 2x/4x RoPE.
    packed, packed_rope = model._pack_history_states(
        hidden,
        emb_1x,
        emb_2x,
        emb_4x,
        rope(plan.latent_indices),
        rope(plan.clean_latent_indices),
        rope(plan.clean_latent_2x_indices),
        rope(plan.clean_latent_4x_indices),
        latent_height // patch,
        latent_width // patch,
    )
    return EmbeddedSection(hidden, emb_1x, emb_2x, emb_4x, packed, packed_rope)


def count_section_tokens(
    model: HunyuanVideoFramepackTransformer3DModel, plan: SectionPlan, shapes: SectionShapes
) -> tuple[int, int, int, int, int, int]:
    """(main, 1x, 2x, 4x, packed, rope rows) from the model's own embedders and packing, on meta tensors."""
    with torch.no_grad():
        e = embed_section(model, plan, shapes)
    return (
        e.noisy.shape[1],
        e.clean_1x.shape[1],
        e.clean_2x.shape[1],
        e.clean_4x.shape[1],
        e.packed.shape[1],
        e.rope[0].shape[0],
    )


def image_token_count(model: HunyuanVideoFramepackTransformer3DModel) -> int:
    with torch.no_grad():
        image = torch.empty((1, SIGLIP_TOKENS, model.config.image_proj_dim), device=META)
        return model.image_projection(image).shape[1]


@dataclass(frozen=True)
class BucketSummary:
    bucket: tuple[int, int]
    rows: list[SectionTokens]
    distinct_shapes: int  # different (frames, height, width) inputs over all sections = model runs

    def _values(self, field: str) -> set[int]:
        return {getattr(row, field) for row in self.rows}

    def span(self, field: str) -> tuple[int, int]:
        values = self._values(field)
        return min(values), max(values)

    @property
    def constant(self) -> bool:
        return all(len(self._values(f)) == 1 for f in ("main", "clean_1x", "clean_2x", "clean_4x", "latent"))

    def problems(self, window: int) -> list[str]:
        found: list[str] = []
        if not self.constant:
            found.append(f"{fmt_bucket(self.bucket)}: latent tokens vary between sections: {self.span('latent')}")
        expected_main = main_token_count(
            window, self.bucket[0] // VAE_SPATIAL_COMPRESSION, self.bucket[1] // VAE_SPATIAL_COMPRESSION
        )
        for row in self.rows:
            if row.packed != row.latent or row.rope_rows != row.packed or row.main != expected_main:
                found.append(
                    f"{fmt_bucket(self.bucket)} {row.variant} {row.seconds:g}s section {row.section}: packed "
                    f"{row.packed}, rope rows {row.rope_rows}, parts {row.latent}, main {row.main} vs "
                    f"main_token_count {expected_main}"
                )
        return found


def measure_bucket(
    counter: TokenCounter,
    bucket: tuple[int, int],
    lengths: Sequence[float],
    window: int,
    variants: Sequence[ModelVariant],
) -> BucketSummary:
    latent_height, latent_width = bucket[0] // VAE_SPATIAL_COMPRESSION, bucket[1] // VAE_SPATIAL_COMPRESSION
    counter.forget()
    rows: list[SectionTokens] = []
    for variant in variants:
        for seconds in lengths:
            for plan, context in iterate_sections(variant, seconds, window, latent_height, latent_width):
                counts = counter.count(plan, context, latent_height, latent_width)
                rows.append(SectionTokens(variant.value, seconds, plan.number, *counts))
    return BucketSummary(bucket, rows, counter.distinct_shapes)


def fmt_bucket(bucket: tuple[int, int]) -> str:
    return f"{bucket[0]}x{bucket[1]}"


def fmt_span(span: tuple[int, int]) -> str:
    low, high = span
    return f"{low:,}" if low == high else f"{low:,}-{high:,} (VARIES)"


def parse_bucket(text: str) -> tuple[int, int]:
    height, width = text.lower().split("x")
    return int(height), int(width)


def bucket_table(summaries: Sequence[BucketSummary], image_tokens: int, text_tokens: int) -> str:
    lines = [
        "| bucket (HxW) | main (9 frames) | clean 1x (2) | 2x (2) | 4x (16) | latent tokens/section (min = max) "
        f"| sections checked | distinct input shapes | + {image_tokens} image + {text_tokens} text |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in summaries:
        low, high = s.span("latent")
        lines.append(
            f"| {fmt_bucket(s.bucket)} | {fmt_span(s.span('main'))} | {fmt_span(s.span('clean_1x'))} "
            f"| {fmt_span(s.span('clean_2x'))} | {fmt_span(s.span('clean_4x'))} | {fmt_span((low, high))} "
            f"| {len(s.rows):,} | {s.distinct_shapes} | {fmt_span((low + image_tokens + text_tokens, high + image_tokens + text_tokens))} |"
        )
    return "\n".join(lines)


def length_table(
    summary: BucketSummary, lengths: Sequence[float], window: int, image_tokens: int, text_tokens: int
) -> str:
    variants = sorted({row.variant for row in summary.rows}, key=[v.value for v in ModelVariant].index)
    header = "| length (s) | sections |" + "".join(f" {v} latent min / max |" for v in variants)
    lines = [header + " total with image + text |", "|---:|---:|" + "---:|" * len(variants) + "---:|"]
    for seconds in lengths:
        cells = []
        totals: set[int] = set()
        for variant in variants:
            values = [r.latent for r in summary.rows if r.variant == variant and r.seconds == seconds]
            cells.append(f" {min(values):,} / {max(values):,} |")
            totals.update(v + image_tokens + text_tokens for v in values)
        total = fmt_span((min(totals), max(totals)))
        lines.append(f"| {seconds:g} | {total_latent_sections(seconds, window)} |" + "".join(cells) + f" {total} |")
    return "\n".join(lines)


@dataclass(frozen=True)
class ContextTokenReport:
    summaries: list[BucketSummary]
    image_tokens: int
    text_tokens: int
    problems: list[str]

    def latent_tokens(self, bucket: tuple[int, int]) -> int:
        """The (constant) latent tokens per section of ``bucket``; raises if they vary."""
        summary = next(s for s in self.summaries if s.bucket == bucket)
        low, high = summary.span("latent")
        if low != high:
            raise ValueError(f"{fmt_bucket(bucket)}: latent tokens vary: {low}..{high}")
        return low


def measure(
    buckets: Sequence[tuple[int, int]],
    lengths: Sequence[float],
    window: int = DEFAULT_WINDOW,
    variants: Sequence[ModelVariant] = (ModelVariant.ORIGINAL, ModelVariant.F1),
    model: HunyuanVideoFramepackTransformer3DModel | None = None,
) -> ContextTokenReport:
    model = model if model is not None else build_meta_transformer()
    counter = TokenCounter(model)
    summaries = [measure_bucket(counter, b, lengths, window, variants) for b in buckets]
    problems = [p for s in summaries for p in s.problems(window)]
    return ContextTokenReport(summaries, image_token_count(model), MAX_PROMPT_TOKENS, problems)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", type=float, nargs="+", default=list(DEFAULT_LENGTHS), help="seconds")
    parser.add_argument("--buckets", type=parse_bucket, nargs="+", default=None,
                        help="HxW, e.g. 608x640 (default: every bucket of --resolution)")
    parser.add_argument("--resolution", type=int, default=DEFAULT_RESOLUTION)
    parser.add_argument("--window", type=int, default=DEFAULT_WINDOW, help="latent window size")
    parser.add_argument("--variants", nargs="+", choices=[v.value for v in ModelVariant],
                        default=[v.value for v in ModelVariant])
    parser.add_argument("--detail-bucket", type=parse_bucket, default=None,
                        help=f"bucket for the per-length table (default {fmt_bucket(DETAIL_BUCKET)} or the first one)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    buckets = args.buckets or list(dict.fromkeys(buckets_for_resolution(args.resolution)))
    detail = args.detail_bucket or (DETAIL_BUCKET if DETAIL_BUCKET in buckets else buckets[0])
    if detail not in buckets:
        buckets.append(detail)
    started = time.perf_counter()
    report = measure(buckets, args.lengths, args.window, [ModelVariant(v) for v in args.variants])
    elapsed = time.perf_counter() - started

    detail_summary = next(s for s in report.summaries if s.bucket == detail)
    print(f"## Packed latent tokens per section, window {args.window}, models: {', '.join(args.variants)}, "
          f"lengths: {', '.join(f'{s:g}' for s in args.lengths)} s\n")
    print(bucket_table(report.summaries, report.image_tokens, report.text_tokens))
    print(f"\n## Per length, bucket {fmt_bucket(detail)}\n")
    print(length_table(detail_summary, args.lengths, args.window, report.image_tokens, report.text_tokens))
    sections = sum(len(s.rows) for s in report.summaries)
    print(f"\n{sections:,} sections counted on the meta device in {elapsed:.1f} s.")
    if report.problems:
        print("\nFAILED:\n" + "\n".join(f"- {p}" for p in report.problems), file=sys.stderr)
        return 1
    print("Every section of every length has the same latent token count within its bucket.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
