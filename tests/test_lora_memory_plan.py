"""The memory plan counts the LoRA adapter layers the transformer holds during a job: in the compute dtype, in the
block each lives in, proj_out's left out under fp8, every loaded adapter whatever its weight. The engine, the
estimate and ``plan --lora`` all plan through ``JobPlanner.plan_job``.

Sizes come from the built-in real configs (an empty models folder) unless a test runs the tiny models.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from framepack_core.cli import main as cli
from framepack_core.events import JobFinished
from framepack_core.lora.adapters import adapter_parameters
from framepack_core.memory.hardware import FakeHardwareProbe, HardwareInfo, fake_hardware
from framepack_core.memory.job_planning import JobPlanner
from framepack_core.memory.plan import Placement
from framepack_core.models.components import Component
from framepack_core.models.devices import resolve_device_config
from framepack_core.models.loading import ModelSource
from framepack_core.models.sizes import builtin_sizes
from framepack_core.models.store import ModelStore
from framepack_core.pipeline.engine import FramePackEngine
from framepack_core.pipeline.estimate import estimate_job
from framepack_core.pipeline.timings import StageTimings
from framepack_core.request import GenerationRequest, LoraChoice

DIT = Component.TRANSFORMER
RANK = 64
# Layers of the full-size transformer (out, in features): two in the repeated blocks, and the top-level output
# projection, which is left out under fp8 storage.
BLOCK_LAYERS = {"transformer_blocks.0.attn.to_q": (3072, 3072), "single_transformer_blocks.5.proj_mlp": (12288, 3072)}
PROJ_OUT = {"proj_out": (64, 3072)}
BLOCK_PARAMETERS = RANK * (3072 + 3072) + RANK * (12288 + 3072)  # lora_A (rank x in) + lora_B (out x rank)
PROJ_OUT_PARAMETERS = RANK * (64 + 3072)
BF16 = 2


def _write_lora(path: Path, layers: dict[str, tuple[int, int]], seed: int = 0) -> Path:
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for module, (out_features, in_features) in layers.items():
        tensors[f"transformer.{module}.lora_A.weight"] = torch.randn(RANK, in_features, generator=generator)
        tensors[f"transformer.{module}.lora_B.weight"] = torch.randn(out_features, RANK, generator=generator) * 0.01
    save_file(tensors, str(path))
    return path


@pytest.fixture(scope="module")
def lora_file(tmp_path_factory) -> Path:
    return _write_lora(tmp_path_factory.mktemp("loras") / "style.safetensors", BLOCK_LAYERS | PROJ_OUT)


@pytest.fixture
def empty_models_dir(tmp_path: Path) -> Path:
    """No local weights: every size and layer comes from the built-in real configs."""
    folder = tmp_path / "models"
    folder.mkdir()
    return folder


def _planner(models_dir: Path, hardware: HardwareInfo) -> JobPlanner:
    return JobPlanner(ModelSource(models_dir=models_dir), hardware.device_type, probe=FakeHardwareProbe(hardware))


def _store(models_dir: Path) -> ModelStore:
    return ModelStore(ModelSource(models_dir=models_dir), resolve_device_config("cpu"))


def _request(loras: tuple[LoraChoice, ...] = (), **settings) -> GenerationRequest:
    return GenerationRequest(image=Path("any.png"), loras=loras, **settings).validated()


def test_a_lora_counts_its_adapter_elements_in_bf16_in_the_transformers_size(empty_models_dir, lora_file):
    planner = _planner(empty_models_dir, fake_hardware(80, 128))
    without = planner.plan_job(_request(), None, _store(empty_models_dir))
    planned = planner.plan_job(_request((LoraChoice(lora_file, 0.8),)), None, _store(empty_models_dir))
    expected = (BLOCK_PARAMETERS + PROJ_OUT_PARAMETERS) * BF16
    assert expected == 3_153_920
    dit, plain = planned.component(DIT), without.component(DIT)
    assert dit.placement == plain.placement == Placement.RESIDENT
    assert dit.lora_bytes == expected and plain.lora_bytes == 0
    assert dit.weight_bytes - plain.weight_bytes == expected
    assert planned.peak_vram_bytes - without.peak_vram_bytes == expected
    assert any("LoRA adapter layers (in bfloat16)" in note for note in planned.notes)
    assert not any("LoRA" in note for note in without.notes)


def test_under_fp8_the_proj_out_adapter_is_not_counted_and_the_rest_stays_in_bf16(empty_models_dir, lora_file):
    planner = _planner(empty_models_dir, fake_hardware(80, 128))
    planned = planner.plan_job(_request((LoraChoice(lora_file, 1.0),), fp8=True), None, _store(empty_models_dir))
    dit = planned.component(DIT)
    assert dit.fp8 and dit.lora_bytes == BLOCK_PARAMETERS * BF16 == 2_752_512


def test_a_lora_at_weight_zero_still_occupies_memory(empty_models_dir, lora_file):
    planner = _planner(empty_models_dir, fake_hardware(80, 128))
    planned = planner.plan_job(_request((LoraChoice(lora_file, 0.0),)), None, _store(empty_models_dir))
    assert planned.component(DIT).lora_bytes == (BLOCK_PARAMETERS + PROJ_OUT_PARAMETERS) * BF16


def test_each_adapter_is_counted_in_the_block_it_lives_in(lora_file, empty_models_dir):
    from framepack_core.lora.adapters import LoraLibrary, transformer_layers_for

    loras = LoraLibrary().job_loras([LoraChoice(lora_file, 1.0)],
                                    lambda: transformer_layers_for(empty_models_dir, "original"))
    size = builtin_sizes()[DIT]
    counted = adapter_parameters(loras * 2, size)  # the same file twice is one adapter
    assert len(counted.block_parameters) == size.block_count == 60
    assert counted.block_parameters[0] == RANK * (3072 + 3072)
    assert counted.block_parameters[20 + 5] == RANK * (12288 + 3072)  # after the 20 dual-stream blocks
    assert sum(counted.block_parameters) == BLOCK_PARAMETERS
    assert counted.remainder_parameters == 0 and counted.fp8_left_out_parameters == PROJ_OUT_PARAMETERS


def test_loras_that_push_a_borderline_card_over_offload_a_transformer_block_instead(empty_models_dir, tmp_path):
    # Rank 64 on every attention projection of the 20 dual-stream blocks: 60 MiB of bf16 adapters.
    layers = {f"transformer_blocks.{i}.attn.{name}": (3072, 3072) for i in range(20)
              for name in ("to_q", "to_k", "to_v", "to_out.0")}
    lora = _write_lora(tmp_path / "big.safetensors", layers)
    lora_bytes = 80 * RANK * (3072 + 3072) * BF16
    assert lora_bytes == 62_914_560
    request = _request(gpu_memory_preservation=0)
    with_lora = _request((LoraChoice(lora, 1.0),), gpu_memory_preservation=0)
    # On a 28 GiB card the transformer is resident (the LLaMA in blocks); a card whose free memory is that plan's
    # peak plus half the LoRAs' bytes still holds it without LoRAs, but not with them.
    card = _planner(empty_models_dir, fake_hardware(28, 128)).plan_job(request, None, _store(empty_models_dir))
    assert card.component(DIT).placement == Placement.RESIDENT
    borderline = replace(fake_hardware(28, 128), vram_free_bytes=card.peak_vram_bytes + lora_bytes // 2)
    without = _planner(empty_models_dir, borderline).plan_job(request, None, _store(empty_models_dir))
    planned = _planner(empty_models_dir, borderline).plan_job(with_lora, None, _store(empty_models_dir))
    assert without.fits and without.component(DIT).placement == Placement.RESIDENT
    assert without.peak_vram_bytes == card.peak_vram_bytes
    dit = planned.component(DIT)
    assert planned.fits and dit.lora_bytes == lora_bytes
    assert (dit.placement, dit.resident_blocks, dit.total_blocks) == (Placement.BLOCKS, 59, 60)
    assert planned.peak_vram_bytes <= planned.vram_budget_bytes


def test_the_estimate_plans_the_requests_loras(empty_models_dir, lora_file):
    planner = _planner(empty_models_dir, fake_hardware(80, 128))
    store = _store(empty_models_dir)
    plain = estimate_job(_request(), None, store, planner, StageTimings())
    with_lora = estimate_job(_request((LoraChoice(lora_file, 1.0),)), None, store, planner, StageTimings())
    expected = (BLOCK_PARAMETERS + PROJ_OUT_PARAMETERS) * BF16
    assert with_lora.peak_vram_gb - plain.peak_vram_gb == pytest.approx(expected / 1024**3, abs=1e-9)


def test_plan_lora_counts_the_file_and_refuses_one_that_is_not_a_lora(empty_models_dir, lora_file, tmp_path, capsys):
    base = ["plan", "--vram-gb", 80, "--ram-gb", 128, "--models-dir", empty_models_dir, "--json"]
    capsys.readouterr()
    assert cli.main([str(a) for a in [*base, "--lora", f"{lora_file}:0.5"]]) == 0
    data = json.loads(capsys.readouterr().out)
    dit = next(c for c in data["components"] if c["component"] == "transformer")
    assert dit["lora_gb"] == round(3_153_920 / 1024**3, 3)
    assert any("LoRA adapter layers" in note for note in data["notes"])
    assert cli.main([str(a) for a in base]) == 0
    dit = next(c for c in json.loads(capsys.readouterr().out)["components"] if c["component"] == "transformer")
    assert "lora_gb" not in dit
    text = tmp_path / "notes.safetensors"
    text.write_text("not a LoRA\n")
    assert cli.main([str(a) for a in [*base, "--lora", text]]) == 2
    assert "--lora" in capsys.readouterr().err


def test_adapters_loaded_by_an_earlier_job_stay_counted_in_the_next_plan(tiny_models_dir, gradient_image, tmp_path):
    from tests.lora_fixtures import write_tiny_lora

    lora = write_tiny_lora(tmp_path / "tiny.safetensors", tiny_models_dir, seed=3)
    planner = _planner(tiny_models_dir, fake_hardware(0, 64, device_type="cpu"))
    engine = FramePackEngine(_store(tiny_models_dir), planner)
    fast = {"latent_window_size": 3, "steps": 2, "resolution": 64, "seconds": 0.8, "cache": "none"}
    request = GenerationRequest(image=gradient_image, prompt="a cat walks", output=tmp_path / "out.mp4", **fast)
    first = planner.plan_job(request, None, engine.models)
    events = list(engine.generate(replace(request, loras=(LoraChoice(lora, 0.0),))))
    assert isinstance(events[-1], JobFinished), events[-1]
    # The tiny file's one matching layer: transformer_blocks.0.attn.to_q (32 -> 32) at rank 2, fp32 on the CPU.
    tiny_bytes = 2 * (32 + 32) * 4
    after = planner.plan_job(request, None, engine.models)  # a job without LoRAs on the same transformer
    assert first.component(DIT).lora_bytes == 0
    assert after.component(DIT).lora_bytes == tiny_bytes == 512
