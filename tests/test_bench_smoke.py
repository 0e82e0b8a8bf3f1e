"""Smoke tests of the benchmark scripts bench/context_tokens.py and bench/flops.py on a reduced grid.

Both run the real 13B transformer config on the meta device (no weights, no GPU), so they are quick enough for
the normal test run: one or two buckets, two video lengths, two prompt lengths.
"""

import pytest

from bench import context_tokens, flops
from framepack_core.models.components import ModelVariant

BUCKET = (608, 640)


@pytest.fixture(scope="module")
def meta_model():
    return context_tokens.build_meta_transformer()


def test_context_tokens_script_passes_on_a_reduced_grid(capsys):
    assert context_tokens.main(["--buckets", "608x640", "--lengths", "1", "10"]) == 0
    out = capsys.readouterr().out
    assert "| 608x640 | 13,680 | 3,040 | 380 | 400 | 17,500 | 18 | 1 | 18,485 |" in out


def test_every_section_packs_the_same_tokens_whatever_the_length(meta_model):
    report = context_tokens.measure([BUCKET, (416, 960)], [1, 10, 30], model=meta_model)
    assert report.problems == []
    by_bucket = {s.bucket: s for s in report.summaries}
    detail = by_bucket[BUCKET]
    # The reference's worked example: 13,680 + 3,040 + 380 + 400.
    assert [detail.span(f) for f in ("main", "clean_1x", "clean_2x", "clean_4x")] == [
        (13_680, 13_680), (3_040, 3_040), (380, 380), (400, 400)]
    assert report.latent_tokens(BUCKET) == 17_500
    assert report.latent_tokens((416, 960)) == 17_970  # 4x: 16 frames -> 4 x ceil(52/8) x ceil(120/8) = 420
    # 1 + 8 + 25 sections per model, both models, and a single distinct input shape for all of them.
    assert len(detail.rows) == 2 * (1 + 8 + 25) and detail.distinct_shapes == 1
    assert {r.variant for r in detail.rows} == {v.value for v in ModelVariant}
    assert (report.image_tokens, report.text_tokens) == (729, 256)


def test_a_varying_count_is_reported():
    row = context_tokens.SectionTokens("original", 1.0, 0, 13_680, 3_040, 380, 400, 17_500, 17_500)
    odd = context_tokens.SectionTokens("original", 60.0, 3, 13_680, 3_040, 380, 416, 17_516, 17_516)
    summary = context_tokens.BucketSummary(BUCKET, [row, odd], distinct_shapes=2)
    assert not summary.constant
    assert any("vary" in p for p in summary.problems(window=9))


def test_counted_flops_match_the_arithmetic(meta_model):
    report = flops.measure([BUCKET], [256, 20], model=meta_model)
    assert report.parameters == 12_874_314_816
    for result in report.results:
        assert result.latent_tokens == 17_500
        assert result.encoder_tokens == 729 + result.text_tokens
        assert result.ratio == pytest.approx(1.0, abs=0.05)
        assert result.dual_block / result.arithmetic_dual_block == pytest.approx(1.0, abs=0.05)
        assert result.single_block / result.arithmetic_single_block == pytest.approx(1.0, abs=0.05)
        assert result.attention_per_block == 4 * result.sequence**2 * 3072
    longest = max(report.results, key=lambda r: r.text_tokens)
    assert longest.sequence == 18_485
    assert 450e12 < longest.counted < 550e12  # ~0.5 PFLOPs per call


def test_flops_script_runs_and_fails_when_the_tolerance_is_too_tight(capsys):
    assert flops.main(["--buckets", "608x640", "--text-tokens", "256"]) == 0
    out = capsys.readouterr().out
    assert "| 608x640 | 17,500 | 985 (256) | 18,485 |" in out
    # The embedders are not in the arithmetic, so the whole-call ratio is slightly above 1.
    assert flops.main(["--buckets", "608x640", "--text-tokens", "256", "--max-ratio-error", "0"]) == 1


def test_offload_overhead_script_runs_every_placement(capsys):
    from bench import offload_overhead

    assert offload_overhead.main(["--rounds", "1"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and " x" in line]
    assert [row.split(" | ")[0].lstrip("| ") for row in rows] == [
        "no plan", "cpu", "swap", "blocks, 1 of 4 resident", "blocks, none resident", "disk", "fp8 storage, resident"]


def test_speed_options_script_counts_skipped_calls_and_checks_determinism(capsys, tiny_models_dir):
    from bench import speed_options

    # Tiny transformer, 3 steps x 2 sections: TeaCache at a loose threshold skips each section's middle step
    # (its first and last steps always compute), and the hooks on the transformer count exactly that.
    assert speed_options.main(["--quick", "--models-dir", str(tiny_models_dir),
                               "--grid", "none", "teacache:5", "first-block:0.1"]) == 0
    out = capsys.readouterr().out
    rows = {row.split(" | ")[0].lstrip("| "): row for row in out.splitlines() if row.startswith("| ")}
    assert list(rows) == ["method", "none", "teacache", "first-block"]
    assert rows["none"].startswith("| none | - | off |") and "| x1.00 | 0 of 6 | 0.00e+00 |" in rows["none"]
    assert "| 2 of 6 |" in rows["teacache"]
    assert "Uncached run bit-identical to a second uncached run: yes" in out
    assert "bit-identical to the engine's default path" in out and "options): yes" in out


def test_speed_options_grid_entries_parse_and_bad_ones_are_refused():
    import argparse

    from bench.speed_options import Variant

    assert Variant.parse("magcache:0.12+compile") == Variant("magcache", 0.12, True)
    assert Variant.parse("taylorseer") == Variant("taylorseer", None, False)
    for bad in ("teacache:fast", "none+fast"):
        with pytest.raises(argparse.ArgumentTypeError):
            Variant.parse(bad)
