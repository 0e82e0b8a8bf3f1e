"""The memory planner on simulated machines with the real model sizes (meta device): choices, peaks, times."""

from __future__ import annotations

import json

import pytest

from framepack_core.events import Stage
from framepack_core.memory.hardware import GIB, fake_hardware
from framepack_core.memory.plan import (
    DEVICE_ALLOWANCE_BYTES,
    FP8_STORAGE,
    RAM_BASELINE_BYTES,
    CostModel,
    MemoryPlan,
    Placement,
    Workload,
    automatic_preserve_bytes,
)
from framepack_core.memory.planner import plan_memory
from framepack_core.memory.report import describe, next_plan_advice
from framepack_core.models.components import Component
from framepack_core.models.sizes import builtin_sizes

C = Component
WORKLOAD = Workload(608, 640, 9)


@pytest.fixture(scope="module")
def sizes():
    return builtin_sizes()


def _plan(sizes, vram_gb: float, ram_gb: float, **kwargs) -> MemoryPlan:
    device_type = kwargs.pop("device_type", "cuda")
    workload = kwargs.pop("workload", WORKLOAD)
    return plan_memory(sizes, fake_hardware(vram_gb, ram_gb, device_type=device_type), workload, **kwargs)


def _within_budgets(plan: MemoryPlan) -> bool:
    return plan.peak_vram_bytes <= plan.vram_budget_bytes and plan.peak_ram_bytes <= plan.ram_budget_bytes


def test_everything_is_resident_on_an_80_gb_card(sizes):
    plan = _plan(sizes, 80, 64)
    assert plan.fits and _within_budgets(plan)
    assert {c.placement for c in plan.components} == {Placement.RESIDENT}
    assert not plan.component(C.VAE).vae_tiling
    assert plan.bytes_moved_per_step == 0 and plan.step_time_s == plan.resident_step_time_s
    assert plan.component(C.TRANSFORMER).storage_dtype == "bfloat16"
    assert plan.component(C.TRANSFORMER).weight_bytes == 12_874_314_816 * 2


def test_peaks_are_the_largest_stage_and_include_the_allowance(sizes):
    plan = _plan(sizes, 80, 64)
    assert [s.stage for s in plan.stages] == [Stage.TEXT_ENCODING, Stage.VAE_ENCODING, Stage.IMAGE_ENCODING,
                                              Stage.SAMPLING, Stage.DECODING]
    assert plan.peak_vram_bytes == max(s.vram_bytes for s in plan.stages)
    assert plan.peak_ram_bytes == max(s.ram_bytes for s in plan.stages)
    weights = sum(c.weight_bytes for c in plan.components)
    sampling = next(s for s in plan.stages if s.stage == Stage.SAMPLING)
    assert sampling.vram_bytes == weights + DEVICE_ALLOWANCE_BYTES + 18_485 * 3072 * 2 * 20


def test_a_24_gb_card_streams_the_transformer_and_keeps_the_rest_whole(sizes):
    plan = _plan(sizes, 24, 64)
    dit = plan.component(C.TRANSFORMER)
    assert plan.fits and _within_budgets(plan)
    assert dit.placement == Placement.STREAMED and dit.storage_dtype == "bfloat16"
    assert plan.component(C.TEXT_ENCODER).placement == Placement.SWAP
    assert plan.bytes_moved_per_step == (12_874_314_816 - 414_016_576) * 2  # every block, bf16; not the rest
    # STREAMED: max(compute, transfer) + one (dual) block's transfer.
    compute = 503.19e12 / 165e12
    first_block = 339_831_296 * 2 / 25e9
    assert plan.step_time_s == pytest.approx(max(compute, plan.bytes_moved_per_step / 25e9) + first_block, rel=1e-3)
    assert any("streamed" in n and "blocks (" in n for n in plan.notes)  # the comparison is reported


def test_without_streams_the_most_resident_blocks_that_fit_are_kept(sizes):
    plan = _plan(sizes, 24, 64, device_type="mps")
    dit = plan.component(C.TRANSFORMER)
    assert dit.placement == Placement.BLOCKS and dit.total_blocks == 60
    assert 0 < dit.resident_blocks < 60
    assert plan.fits and _within_budgets(plan)
    assert plan.step_time_s == pytest.approx(503.19e12 / 165e12 + plan.bytes_moved_per_step / 25e9, rel=1e-3)
    # One more resident block would not fit: with a budget just large enough it is taken.
    more = plan_memory(sizes, fake_hardware(24, 64, device_type="mps"), WORKLOAD,
                       preserve_bytes=plan.preserve_bytes - 700 * 1024**2)
    assert more.component(C.TRANSFORMER).resident_blocks > dit.resident_blocks


def test_no_plan_on_mps_streams(sizes):
    for vram in (8, 16, 32):
        plan = _plan(sizes, vram, 64, device_type="mps")
        assert all(c.placement != Placement.STREAMED for c in plan.components)
        assert plan.unified_memory


def test_mps_judges_ram_on_device_plus_host(sizes):
    plan = _plan(sizes, 16, 32, device_type="mps")
    assert plan.fits
    assert all(s.vram_bytes + s.ram_bytes <= plan.ram_budget_bytes for s in plan.stages)


def test_fp8_is_used_only_when_ram_cannot_hold_bf16(sizes):
    roomy = _plan(sizes, 6, 64)
    assert roomy.component(C.TRANSFORMER).storage_dtype == "bfloat16"
    tight = _plan(sizes, 6, 16)
    dit = tight.component(C.TRANSFORMER)
    assert dit.storage_dtype == FP8_STORAGE and dit.compute_dtype == "bfloat16" and dit.fp8
    assert tight.fits and _within_budgets(tight)
    assert dit.weight_bytes < 0.55 * 12_874_314_816 * 2


def test_fp8_true_forces_it_and_fp8_false_forbids_it(sizes):
    forced = _plan(sizes, 80, 64, fp8=True)
    assert forced.component(C.TRANSFORMER).storage_dtype == FP8_STORAGE
    assert forced.component(C.TRANSFORMER).placement == Placement.RESIDENT
    forbidden = _plan(sizes, 6, 16, fp8=False)
    dit = forbidden.component(C.TRANSFORMER)
    assert dit.storage_dtype == "bfloat16" and dit.placement == Placement.DISK  # RAM holds no bf16 copy
    assert forbidden.fits and dit.host_bytes < GIB


def test_disk_when_ram_cannot_hold_even_fp8(sizes):
    plan = _plan(sizes, 8, 8)
    dit = plan.component(C.TRANSFORMER)
    assert (dit.placement, dit.storage_dtype) == (Placement.DISK, FP8_STORAGE)
    assert plan.component(C.TEXT_ENCODER).placement == Placement.DISK
    assert plan.fits and _within_budgets(plan)
    assert plan.step_time_s == pytest.approx(503.19e12 / 165e12 + plan.bytes_moved_per_step / 3e9, rel=1e-3)


def test_the_vae_tiles_only_when_the_untiled_decode_does_not_fit(sizes):
    assert _plan(sizes, 8, 64).component(C.VAE).vae_tiling
    assert _plan(sizes, 8, 64).component(C.VAE).vae_slicing
    assert not _plan(sizes, 24, 64).component(C.VAE).vae_tiling


def test_text_encoders_are_released_only_when_ram_needs_it(sizes):
    assert _plan(sizes, 24, 32).release_text_encoders
    assert not _plan(sizes, 24, 64).release_text_encoders
    assert any("released" in n for n in _plan(sizes, 24, 32).notes)


def test_the_llama_is_swapped_whole_when_it_fits_and_in_blocks_when_not(sizes):
    assert _plan(sizes, 24, 64).component(C.TEXT_ENCODER).placement == Placement.SWAP
    small = _plan(sizes, 8, 64).component(C.TEXT_ENCODER)
    assert small.placement == Placement.BLOCKS and small.device_bytes < 2 * GIB
    assert small.host_bytes == small.weight_bytes  # it lives in RAM between its stages


def test_preserve_defaults_to_the_stated_rule_and_shrinks_the_budget(sizes):
    assert automatic_preserve_bytes(6 * GIB) == GIB // 2
    assert automatic_preserve_bytes(80 * GIB) == 4 * GIB
    plan = _plan(sizes, 24, 64)
    assert plan.preserve_bytes == int(24 * GIB * 0.05)
    assert plan.vram_budget_bytes == 24 * GIB - plan.preserve_bytes
    assert plan.ram_budget_bytes == 64 * GIB - RAM_BASELINE_BYTES
    explicit = _plan(sizes, 24, 64, preserve_bytes=6 * GIB)
    assert explicit.vram_budget_bytes == 18 * GIB and explicit.fits and _within_budgets(explicit)
    with pytest.raises(ValueError):
        _plan(sizes, 24, 64, preserve_bytes=-1)


def test_when_nothing_fits_the_notes_say_what_is_short_and_by_how_much(sizes):
    plan = _plan(sizes, 3, 32)
    assert not plan.fits
    short = [n for n in plan.notes if n.startswith("does not fit")]
    assert short and "VRAM" in short[0] and "more than the" in short[0]
    dit = plan.component(C.TRANSFORMER)
    assert dit.placement == Placement.DISK and dit.resident_blocks == 0 and plan.component(C.VAE).vae_tiling
    preserved_all = _plan(sizes, 24, 64, preserve_bytes=24 * GIB)
    assert not preserved_all.fits and preserved_all.vram_budget_bytes == 0


def test_real_cfg_doubles_the_calls_the_transfers_and_the_time(sizes):
    off = _plan(sizes, 8, 64)
    on = _plan(sizes, 8, 64, workload=Workload(608, 640, 9, real_cfg=True))
    assert (off.calls_per_step, on.calls_per_step) == (1, 2)
    assert on.bytes_moved_per_step == 2 * off.bytes_moved_per_step
    assert on.step_time_s == pytest.approx(2 * off.step_time_s)
    assert on.resident_step_time_s == pytest.approx(2 * off.resident_step_time_s)


def test_a_faster_link_makes_offloading_cheaper(sizes):
    slow = plan_memory(sizes, fake_hardware(12, 64, device_type="mps"), WORKLOAD)
    fast = plan_memory(sizes, fake_hardware(12, 64, device_type="mps"), WORKLOAD,
                       cost=CostModel(name="fast", host_to_device_gb_s=100.0))
    assert fast.step_time_s < slow.step_time_s and fast.resident_step_time_s == slow.resident_step_time_s


def test_on_the_cpu_everything_is_cpu_and_only_ram_counts(sizes):
    plan = _plan(sizes, 0, 128, device_type="cpu")
    assert {c.placement for c in plan.components} == {Placement.CPU}
    assert {c.storage_dtype for c in plan.components} == {"float32"}
    assert plan.peak_vram_bytes == 0 and plan.vram_budget_bytes == 0 and plan.fits
    small = _plan(sizes, 0, 16, device_type="cpu")
    assert not small.fits and any("RAM" in n for n in small.notes)


def test_every_simulated_machine_plan_stays_within_its_budgets(sizes):
    for vram in (6, 8, 12, 16, 24, 80):
        for ram in (16, 32, 64):
            plan = _plan(sizes, vram, ram)
            assert plan.fits and _within_budgets(plan), (vram, ram)
            assert plan.step_time_s >= plan.resident_step_time_s


def test_the_workload_of_a_resolution_is_its_largest_bucket_or_the_images(sizes):
    assert (Workload.from_resolution(640).height, Workload.from_resolution(640).width) == (416, 960)
    fitted = Workload.from_resolution(640, image_size=(600, 640))
    assert (fitted.height, fitted.width) == (608, 640)
    assert fitted.sequence_tokens == 17_500 + 729 + 256
    assert fitted.flops_per_call == pytest.approx(503.2e12, rel=0.01)
    assert Workload.from_resolution(320).tokens.latent < 17_500 / 3
    with pytest.raises(ValueError):
        Workload(600, 640)
    with pytest.raises(ValueError):
        Workload(608, 640, text_tokens=300)


def test_the_json_has_the_figures_and_each_component(sizes):
    plan = _plan(sizes, 8, 32)
    data = json.loads(plan.to_json())
    for key in ("peak_vram_gb", "peak_ram_gb", "bytes_moved_per_step", "step_time_s", "resident_step_time_s",
                "vram_budget_gb", "ram_budget_gb", "fits", "components", "stages", "notes", "workload"):
        assert key in data
    assert data["peak_vram_gb"] == pytest.approx(plan.peak_vram_gb, abs=1e-3)
    dit = next(c for c in data["components"] if c["component"] == "transformer")
    assert dit["placement"] == plan.component(C.TRANSFORMER).placement.value
    assert {"storage_dtype", "resident_blocks", "total_blocks", "vae_tiling"} <= set(dit)
    assert [s["stage"] for s in data["stages"]] == ["text encoding", "VAE encode", "image encoding", "sampling",
                                                    "VAE decode"]
    assert data["workload"]["variant"] == "original"


def test_describe_tells_a_person_the_table_and_the_figures(sizes):
    text = describe(_plan(sizes, 8, 32))
    assert "| transformer | streamed |" in text
    assert "Peak VRAM" in text and "Modelled step time" in text and "Budgets: VRAM 7.50 GiB" in text
    assert "608x640, window 9, original," in text
    assert "| text encoding |" in text and "| VAE decode |" in text


def test_advice_after_running_out_of_memory(sizes):
    advice = next_plan_advice(_plan(sizes, 24, 64))
    assert "preserve" in advice and "fp8" in advice and "resolution" in advice
    already_smallest = next_plan_advice(_plan(sizes, 3, 32))
    assert "preserve" not in already_smallest and "resolution" in already_smallest
    assert "RAM" in next_plan_advice(_plan(sizes, 0, 16, device_type="cpu"))
