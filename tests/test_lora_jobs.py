"""LoRAs in jobs, on the tiny models: each file is loaded once and switched per job, reaches the transformer's
outputs, is gone again for the next job, fuses and restores exactly, and is refused clearly when it is foreign."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from framepack_core.cli import main as cli
from framepack_core.errors import InvalidInputError
from framepack_core.events import CancelToken, JobCancelled, JobFinished, Notice, StepProgress
from framepack_core.jobs.output_description import read_output_description
from framepack_core.jobs.queue import JobQueue
from framepack_core.jobs.spec import file_sha256
from framepack_core.lora.keys import DIFFUSERS, HUNYUAN, MUSUBI
from framepack_core.memory.hardware import fake_hardware
from framepack_core.memory.offload import uniform_plan
from framepack_core.memory.plan import MemoryPlan, Placement, Workload
from framepack_core.memory.planner import plan_memory
from framepack_core.models.components import Component, ModelVariant
from framepack_core.models.devices import resolve_device_config
from framepack_core.models.loading import ModelSource
from framepack_core.models.sizes import find_sizes
from framepack_core.models.store import ModelStore
from framepack_core.pipeline.engine import FramePackEngine
from framepack_core.pipeline.input_checks import check_input_files
from framepack_core.request import GenerationRequest, LoraChoice
from tests.test_offload import FixedPlanner

FAST = {"latent_window_size": 3, "steps": 2, "resolution": 64, "seconds": 0.8, "cache": "none"}
RANK, ALPHA = 4, 2.0
HIDDEN, MLP = 32, 128  # the tiny transformer's widths
# HunyuanVideo's original module name -> the FramePack modules it feeds (output rows in this order) and their widths.
GROUPS = {
    "double_blocks.0.img_attn_qkv": [("transformer_blocks.0.attn.to_q", HIDDEN), ("transformer_blocks.0.attn.to_k",
                                     HIDDEN), ("transformer_blocks.0.attn.to_v", HIDDEN)],
    "double_blocks.1.img_mlp.fc1": [("transformer_blocks.1.ff.net.0.proj", MLP)],
    "single_blocks.0.linear1": [("single_transformer_blocks.0.attn.to_q", HIDDEN),
                                ("single_transformer_blocks.0.attn.to_k", HIDDEN),
                                ("single_transformer_blocks.0.attn.to_v", HIDDEN),
                                ("single_transformer_blocks.0.proj_mlp", MLP)],
    "single_blocks.1.linear2": [("single_transformer_blocks.1.proj_out", HIDDEN)],
}
IN_FEATURES = {"single_blocks.1.linear2": HIDDEN + MLP}


def _pairs(seed: int, scale: float = 0.3) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Original name -> (down, fused up before alpha/rank), big enough to move the tiny model's latents."""
    generator = torch.Generator().manual_seed(seed)
    return {name: (torch.randn(RANK, IN_FEATURES.get(name, HIDDEN), generator=generator) * scale,
                   torch.randn(sum(width for _, width in targets), RANK, generator=generator) * scale)
            for name, targets in GROUPS.items()}


def _musubi(pairs) -> dict[str, torch.Tensor]:
    tensors = {}
    for original, (down, up) in pairs.items():
        name = "lora_unet_" + original.replace(".", "_")
        tensors |= {f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up, f"{name}.alpha": torch.tensor(ALPHA)}
    return tensors


def _hunyuan(pairs) -> dict[str, torch.Tensor]:
    return {f"diffusion_model.{original}.lora_{ab}.weight": tensor for original, (down, up) in pairs.items()
            for ab, tensor in (("A", down), ("B", up * (ALPHA / RANK)))}


def _diffusers(pairs) -> dict[str, torch.Tensor]:
    tensors = {}
    for original, (down, up) in pairs.items():
        targets = GROUPS[original]
        for (target, _), rows in zip(targets, up.split([width for _, width in targets], dim=0)):
            tensors[f"transformer.{target}.lora_A.weight"] = down.clone()
            tensors[f"transformer.{target}.lora_B.weight"] = (rows * (ALPHA / RANK)).contiguous()
    return tensors


def _save(folder: Path, name: str, tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> Path:
    path = folder / name
    save_file({key: value.contiguous() for key, value in tensors.items()}, str(path), metadata=metadata)
    return path


@pytest.fixture(scope="module")
def loras(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("loras")
    first, second = _pairs(1), _pairs(2)
    # One file holding both LoRAs' deltas: their down matrices stacked and up matrices side by side (rank 8).
    both = {name: (torch.cat([first[name][0], second[name][0]]), torch.cat([first[name][1], second[name][1]], dim=1))
            for name in first}
    extra = {"lora_unet_double_blocks_7_img_attn_proj.lora_down.weight": torch.zeros(RANK, HIDDEN),
             "lora_unet_double_blocks_7_img_attn_proj.lora_up.weight": torch.zeros(HIDDEN, RANK)}
    files = {MUSUBI: _save(folder, "style_musubi.safetensors", _musubi(first)),
             HUNYUAN: _save(folder, "style_hunyuan.safetensors", _hunyuan(first)),
             DIFFUSERS: _save(folder, "style_diffusers.safetensors", _diffusers(first)),
             "second": _save(folder, "motion.safetensors", _musubi(second)),
             "extra": _save(folder, "extra.safetensors", _musubi(first) | extra),
             "text": folder / "notes.safetensors",
             "flux": _save(folder, "flux.safetensors", {
                 "lora_unet_double_blocks_0_img_mod_lin.lora_down.weight": torch.zeros(RANK, 3072),
                 "lora_unet_double_blocks_0_img_mod_lin.lora_up.weight": torch.zeros(6 * 3072, RANK)})}
    files["text"].write_text("not a LoRA\n")
    # Alpha 2 at rank 8 halves each part of "both" compared with alpha 2 at rank 4: double the up matrices.
    files["both"] = _save(folder, "both.safetensors", _musubi({k: (d, u * 2) for k, (d, u) in both.items()}))
    whole = files[MUSUBI].read_bytes()
    files["truncated"] = folder / "truncated.safetensors"
    files["truncated"].write_bytes(whole[: len(whole) // 2])
    return files


def _engine(tiny_models_dir: Path) -> FramePackEngine:
    return FramePackEngine(ModelStore(ModelSource(models_dir=tiny_models_dir), resolve_device_config("cpu")))


@pytest.fixture(scope="module")
def engine(tiny_models_dir: Path) -> FramePackEngine:
    return _engine(tiny_models_dir)


@pytest.fixture(scope="module")
def reference(tiny_models_dir, gradient_image, tmp_path_factory) -> torch.Tensor:
    """A fresh engine's latents without any LoRA."""
    return _latents(_engine(tiny_models_dir), gradient_image, tmp_path_factory.mktemp("reference"), "ref")[0]


def _latents(engine: FramePackEngine, image: Path, folder: Path, name: str, loras=(), **settings):
    request = GenerationRequest(image=image, prompt="a cat walks", output=folder / f"{name}.mp4",
                                save_latents=folder / f"{name}.safetensors", loras=list(loras), **{**FAST, **settings})
    events = list(engine.generate(request))
    assert isinstance(events[-1], JobFinished), events[-1]
    return load_file(str(folder / f"{name}.safetensors"))["history_latents"], events


def _base_weights(transformer: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every base weight by its name without PEFT's wrapping, so that a LoRA-wrapped model compares with a fresh one."""
    return {name.replace(".base_layer", ""): tensor.detach().clone() for name, tensor in transformer.state_dict().items()
            if "lora_" not in name}


def test_a_lora_changes_the_latents_and_weight_zero_gives_the_no_lora_latents_bit_for_bit(
        engine, reference, loras, gradient_image, tmp_path):
    with_lora, _ = _latents(engine, gradient_image, tmp_path, "on", [(loras[MUSUBI], 1.0)])
    assert (with_lora - reference).abs().max() > 1e-3, "the LoRA reached the transformer"
    zero, _ = _latents(engine, gradient_image, tmp_path, "zero", [(loras[MUSUBI], 0.0)])
    assert torch.equal(zero, reference)
    without, _ = _latents(engine, gradient_image, tmp_path, "off")
    assert torch.equal(without, reference), "a job without LoRAs after one with a LoRA is a fresh engine's"


def test_the_lora_reaches_the_transformers_output(engine, loras, gradient_image, tmp_path):
    _latents(engine, gradient_image, tmp_path, "load", [(loras[MUSUBI], 1.0)])
    transformer = engine.models.transformer(ModelVariant.ORIGINAL)
    block = transformer.transformer_blocks[0].attn.to_q
    x = torch.randn(1, 5, HIDDEN, generator=torch.Generator().manual_seed(0))
    files = engine.models.job_loras([LoraChoice(loras[MUSUBI], 0.7)], ModelVariant.ORIGINAL)
    engine.models.use_loras(files, fuse=False)
    try:
        down, up = _pairs(1)["double_blocks.0.img_attn_qkv"]
        expected = block.base_layer(x) + 0.7 * (ALPHA / RANK) * (x @ down.T @ up[:HIDDEN].T)
        assert torch.allclose(block(x), expected, rtol=1e-5, atol=1e-6)
    finally:
        engine.models.end_loras()
    assert torch.equal(block(x), block.base_layer(x)), "switched off after the job"


def test_changing_weights_between_jobs_reloads_neither_the_model_nor_the_file(engine, loras, gradient_image,
                                                                             tmp_path):
    first, _ = _latents(engine, gradient_image, tmp_path, "w1", [(loras[MUSUBI], 1.0)])
    transformer = engine.models.transformer(ModelVariant.ORIGINAL)
    reads = engine.models.lora_library.files_read
    adapters = dict(transformer.peft_config)
    second, _ = _latents(engine, gradient_image, tmp_path, "w05", [(loras[MUSUBI], 0.5)])
    again, _ = _latents(engine, gradient_image, tmp_path, "w1-again", [(loras[MUSUBI], 1.0)])
    assert engine.models.transformer(ModelVariant.ORIGINAL) is transformer
    assert engine.models.lora_library.files_read == reads and dict(transformer.peft_config) == adapters
    assert not torch.equal(first, second) and torch.equal(first, again)


@pytest.mark.parametrize("family", [DIFFUSERS, HUNYUAN])
def test_the_same_deltas_in_another_key_family_give_the_same_latents(engine, loras, gradient_image, tmp_path, family):
    musubi, _ = _latents(engine, gradient_image, tmp_path, "musubi", [(loras[MUSUBI], 0.8)])
    other, _ = _latents(engine, gradient_image, tmp_path, "other", [(loras[family], 0.8)])
    assert (other - musubi).norm() <= 1e-6 * musubi.norm()


def test_fused_equals_unfused_and_the_weights_come_back_exactly(tiny_models_dir, reference, loras, gradient_image,
                                                                tmp_path):
    engine = _engine(tiny_models_dir)
    unfused, _ = _latents(engine, gradient_image, tmp_path, "unfused", [(loras[MUSUBI], 0.8)])
    transformer = engine.models.transformer(ModelVariant.ORIGINAL)
    before = _base_weights(transformer)
    fused, events = _latents(engine, gradient_image, tmp_path, "fused", [(loras[MUSUBI], 0.8)], lora_fuse=True)
    # fp32 on the CPU: merging W + s * B @ A rounds differently from adding s * B(A x). Measured: max |delta|
    # 2.4e-7 (latents up to 4.5; the LoRA moves them by up to 0.075); the bound leaves a 40x margin.
    assert torch.allclose(fused, unfused, rtol=0, atol=1e-5) and not torch.equal(fused, reference)
    after = _base_weights(transformer)
    assert all(torch.equal(before[name], after[name]) for name in before), "base weights restored bit for bit"
    assert read_output_description(events[-1].output_path).fingerprint["loras"][0]["fused"] is True
    without, _ = _latents(engine, gradient_image, tmp_path, "after-fuse")
    assert torch.equal(without, reference)


def test_a_cancelled_fused_job_puts_the_weights_back_and_the_next_job_is_a_fresh_engines(
        tiny_models_dir, reference, loras, gradient_image, tmp_path):
    engine = _engine(tiny_models_dir)
    cancel = CancelToken()
    request = GenerationRequest(image=gradient_image, output=tmp_path / "cut.mp4", loras=[(loras[MUSUBI], 1.0)],
                                lora_fuse=True, **FAST)
    fresh = _base_weights(ModelStore(ModelSource(models_dir=tiny_models_dir), resolve_device_config("cpu"))
                          .transformer(ModelVariant.ORIGINAL))
    merged = None
    for event in engine.generate(request, cancel=cancel):
        if isinstance(event, StepProgress) and not cancel.cancelled:
            merged = _base_weights(engine.models.transformer(ModelVariant.ORIGINAL))
            cancel.cancel()
    assert isinstance(event, JobCancelled)
    to_q = "transformer_blocks.0.attn.to_q.weight"
    assert merged is not None and not torch.equal(merged[to_q], fresh[to_q]), "fused while it ran"
    after = _base_weights(engine.models.transformer(ModelVariant.ORIGINAL))
    assert all(torch.equal(after[name], fresh[name]) for name in fresh)
    assert torch.equal(_latents(engine, gradient_image, tmp_path, "next")[0], reference)


def test_several_loras_at_once_add_their_changes(engine, loras, gradient_image, tmp_path):
    together, _ = _latents(engine, gradient_image, tmp_path, "two", [(loras[MUSUBI], 1.0), (loras["second"], 1.0)])
    one_file, _ = _latents(engine, gradient_image, tmp_path, "both", [(loras["both"], 1.0)])
    alone, _ = _latents(engine, gradient_image, tmp_path, "one", [(loras[MUSUBI], 1.0)])
    assert (together - one_file).norm() <= 1e-5 * together.norm()
    assert (together - alone).abs().max() > 1e-3


def test_the_output_records_each_lora_and_unmatched_layers_are_noticed(engine, loras, gradient_image, tmp_path):
    _, events = _latents(engine, gradient_image, tmp_path, "meta", [(loras["extra"], 0.6), (loras["second"], 1.0)])
    notices = [e.message for e in events if isinstance(e, Notice)]
    assert any("extra.safetensors" in m and "double_blocks_7_img_attn_proj" in m for m in notices), notices
    description = read_output_description(events[-1].output_path)
    assert description.fingerprint["loras"] == [
        {"file": "extra.safetensors", "sha256": file_sha256(loras["extra"]), "weight": 0.6, "format": MUSUBI,
         "fused": False},
        {"file": "motion.safetensors", "sha256": file_sha256(loras["second"]), "weight": 1.0, "format": MUSUBI,
         "fused": False}]
    assert description.spec.inputs["loras"][0] == {"sha256": file_sha256(loras["extra"]), "weight": 0.6}


@pytest.mark.parametrize(("case", "words"), [("text", "not a readable safetensors"), ("truncated", "truncated"),
                                             ("flux", "Flux LoRA"), ("missing", "no LoRA file")])
def test_a_bad_or_foreign_file_is_refused_before_any_model_loads(engine, loras, gradient_image, tiny_models_dir,
                                                                tmp_path, capsys, case, words):
    path = loras.get(case, tmp_path / "gone.safetensors")
    request = GenerationRequest(image=gradient_image, loras=[(path, 1.0)], output=tmp_path / "x.mp4", **FAST)
    for check in (lambda: next(engine.generate(request)),
                  lambda: check_input_files(request.validated(), tiny_models_dir)):
        with pytest.raises(InvalidInputError) as caught:
            check()
        assert caught.value.field == "loras" and words in str(caught.value)
    capsys.readouterr()
    code = cli.main(["generate", "--image", str(gradient_image), "--lora", f"{path}:0.5", "--models-dir",
                     str(tiny_models_dir), "--output", str(tmp_path / "x.mp4"), "--quiet"])
    err = capsys.readouterr().err
    assert code == cli.EXIT_BAD_INPUT and "--lora" in err and words in err and "Traceback" not in err
    assert not (tmp_path / "x.mp4").exists()
    code = cli.main(["jobs", "--output-dir", str(tmp_path / "outputs"), "submit", "--image", str(gradient_image),
                     "--lora", str(path)])
    err = capsys.readouterr().err
    assert code == cli.EXIT_BAD_INPUT and "--lora" in err and words in err and "Traceback" not in err
    assert JobQueue.for_output_dir(tmp_path / "outputs").list() == [], "nothing queued"


def test_generate_from_asks_for_the_lora_again_and_checks_it(loras, gradient_image, tiny_models_dir, tmp_path,
                                                             capsys):
    video, latents = tmp_path / "made.mp4", tmp_path / "made.safetensors"
    fast = ["--seconds", "0.8", "--window", "3", "--steps", "1", "--resolution", "64", "--cache", "none", "--quiet"]
    common = ["--image", str(gradient_image), "--models-dir", str(tiny_models_dir)]
    assert cli.main(["generate", *common, *fast, "--lora", f"{loras[MUSUBI]}:0.7", "--output", str(video),
                     "--save-latents", str(latents)]) == cli.EXIT_OK
    capsys.readouterr()
    assert cli.main(["generate", "--from", str(video), *common, "--output", str(tmp_path / "x.mp4")]) == 2
    assert "--lora" in capsys.readouterr().err
    assert cli.main(["generate", "--from", str(video), *common, "--lora", str(loras["second"]),
                     "--output", str(tmp_path / "x.mp4")]) == 2
    assert "--lora" in capsys.readouterr().err and not (tmp_path / "x.mp4").exists()
    again = tmp_path / "again.safetensors"
    code = cli.main(["generate", "--from", str(video), *common, "--lora", str(loras[MUSUBI]), "--quiet",
                     "--output", str(tmp_path / "again.mp4"), "--save-latents", str(again)])
    assert code == cli.EXIT_OK, capsys.readouterr().err
    assert torch.equal(load_file(str(latents))["history_latents"], load_file(str(again))["history_latents"])


# Memory plans: offloaded blocks and fp8 storage ------------------------------------------------------------------


@pytest.fixture(scope="module")
def cpu_plan(tiny_models_dir: Path) -> MemoryPlan:
    sizes, _ = find_sizes("original", models_dir=tiny_models_dir)
    return plan_memory(sizes, fake_hardware(0, 16, device_type="cpu"), Workload(48, 64, 3))


def _planned(tiny_models_dir: Path, plan: MemoryPlan, folder: Path) -> FramePackEngine:
    store = ModelStore(ModelSource(models_dir=tiny_models_dir), resolve_device_config("cpu"), plan,
                       disk_offload_dir=folder / "offload")
    return FramePackEngine(store, FixedPlanner(plan))


@pytest.fixture(scope="module")
def lora_reference(engine, loras, gradient_image, tmp_path_factory) -> torch.Tensor:
    """The unplaced engine's latents with the musubi LoRA at weight 1."""
    return _latents(engine, gradient_image, tmp_path_factory.mktemp("lora-reference"), "lora", [(loras[MUSUBI], 1.0)])[0]


def _lora_layers(transformer: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    return [(name, module) for name, module in transformer.named_modules()
            if name.rsplit(".", 2)[-2:-1] in (["lora_A"], ["lora_B"])]


@pytest.mark.parametrize("placement", [Placement.BLOCKS, Placement.DISK])
@pytest.mark.parametrize("lora_first", [True, False], ids=["lora-in-first-job", "lora-after-placing"])
def test_offloaded_blocks_carry_the_lora_layers(tiny_models_dir, cpu_plan, loras, gradient_image, lora_reference,
                                                tmp_path, placement, lora_first):
    engine = _planned(tiny_models_dir, uniform_plan(cpu_plan, placement, resident_blocks=1), tmp_path)
    if not lora_first:
        _latents(engine, gradient_image, tmp_path, "placed")  # placed without adapters: the LoRA comes later
    latents, _ = _latents(engine, gradient_image, tmp_path, "lora", [(loras[MUSUBI], 1.0)])
    transformer = engine.models.transformer(ModelVariant.ORIGINAL)
    offloaded = engine.models._placed[Component.TRANSFORMER].offloaded_blocks
    inside = {id(m) for block in offloaded for m in block.modules()}
    layers = _lora_layers(transformer)
    assert layers and any(id(module) in inside for _, module in layers), "the offloaded blocks hold LoRA layers"
    assert all(block._diffusers_hook.get_hook("group_offloading") is not None for block in offloaded)
    if placement == Placement.BLOCKS:
        assert torch.equal(latents, lora_reference)
    else:  # DISK's file-backed tensors take another CPU GEMM path (tests/test_offload.py), hence a tolerance
        assert torch.allclose(latents, lora_reference, rtol=0, atol=1e-5)


@pytest.mark.parametrize("lora_first", [True, False], ids=["lora-in-first-job", "lora-after-placing"])
def test_fp8_storage_keeps_the_lora_in_the_compute_dtype_and_does_not_fuse(tiny_models_dir, cpu_plan, loras,
                                                                            gradient_image, reference, lora_reference,
                                                                            tmp_path, lora_first):
    plan = uniform_plan(cpu_plan, Placement.RESIDENT, fp8=True)
    compute = getattr(torch, plan.component(Component.TRANSFORMER).compute_dtype)
    engine = _planned(tiny_models_dir, plan, tmp_path)
    fp8_plain, _ = _latents(engine, gradient_image, tmp_path, "fp8")
    if lora_first:
        engine = _planned(tiny_models_dir, plan, tmp_path)
    latents, events = _latents(engine, gradient_image, tmp_path, "fp8-lora", [(loras[MUSUBI], 1.0)], lora_fuse=True)
    notices = [e.message for e in events if isinstance(e, Notice)]
    assert any("not merged" in m and "fp8" in m for m in notices), notices
    assert read_output_description(events[-1].output_path).fingerprint["loras"][0]["fused"] is False
    transformer = engine.models.transformer(ModelVariant.ORIGINAL)
    assert transformer.transformer_blocks[0].attn.to_q.base_layer.weight.dtype == torch.float8_e4m3fn
    for name, layer in _lora_layers(transformer):
        assert layer.weight.dtype == compute, name
        hooks = getattr(layer, "_diffusers_hook", None)
        assert hooks is None or hooks.get_hook("layerwise_casting") is None, name
    # The LoRA's effect survives fp8 storage: it moves the latents as it does at full precision. Measured: the
    # two effects differ by 5.6% of the effect's norm (a LoRA lost in fp8 rounding would differ by about 100%).
    effect, fp8_effect = lora_reference - reference, latents - fp8_plain
    assert (fp8_effect - effect).norm() <= 0.25 * effect.norm()


@pytest.mark.parametrize("lora_first", [True, False], ids=["lora-in-first-job", "lora-after-placing"])
def test_fp8_leaves_out_the_output_projections_lora_layer_and_keeps_the_block_layers_in_the_compute_dtype(
        tiny_models_dir, cpu_plan, gradient_image, tmp_path, lora_first):
    from peft.tuners.tuners_utils import BaseTunerLayer

    from framepack_core.lora.files import transformer_config, transformer_layers

    shapes = transformer_layers(transformer_config(tiny_models_dir)[0])
    targets = ("proj_out", "transformer_blocks.0.attn.to_q", "single_transformer_blocks.0.proj_mlp")
    generator = torch.Generator().manual_seed(5)
    tensors = {}
    for target in targets:
        out_features, in_features = shapes[target]
        tensors[f"transformer.{target}.lora_A.weight"] = torch.randn(RANK, in_features, generator=generator) * 0.3
        tensors[f"transformer.{target}.lora_B.weight"] = torch.randn(out_features, RANK, generator=generator) * 0.3
    lora = _save(tmp_path, "with_proj_out.safetensors", tensors)
    plan = uniform_plan(cpu_plan, Placement.RESIDENT, fp8=True)
    compute = getattr(torch, plan.component(Component.TRANSFORMER).compute_dtype)
    engine = _planned(tiny_models_dir, plan, tmp_path)
    if not lora_first:
        _latents(engine, gradient_image, tmp_path, "fp8")  # cast to fp8 and placed before the LoRA arrives
    _, events = _latents(engine, gradient_image, tmp_path, "fp8-proj-out", [(lora, 1.0)])
    notices = [e.message for e in events if isinstance(e, Notice)]
    assert ("LoRA with_proj_out.safetensors: its layer(s) proj_out are left out: the transformer is stored in fp8 "
            "and keeps those layers out of the fp8 casting only by their exact names") in notices
    transformer = engine.models.transformer(ModelVariant.ORIGINAL)
    # The output projection is the plain layer, in the dtype it was loaded in (fp32, the official app's output
    # projection), outside the fp8 casting.
    proj_out = transformer.proj_out
    assert type(proj_out) is torch.nn.Linear and not isinstance(proj_out, BaseTunerLayer)
    assert proj_out.weight.dtype == torch.float32
    hooks = getattr(proj_out, "_diffusers_hook", None)
    assert hooks is None or hooks.get_hook("layerwise_casting") is None
    # The block layers carry the adapter, over fp8 base weights, in the compute dtype.
    wrapped = sorted({name.rsplit(".", 2)[0] for name, _ in _lora_layers(transformer)})  # less lora_A.<adapter>
    assert wrapped == ["single_transformer_blocks.0.proj_mlp", "transformer_blocks.0.attn.to_q"]
    for name in wrapped:
        assert transformer.get_submodule(name).base_layer.weight.dtype == torch.float8_e4m3fn, name
    for name, layer in _lora_layers(transformer):
        assert layer.weight.dtype == compute, name
