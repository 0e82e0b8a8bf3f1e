"""LoRA files in each key family are read without the base model, mapped onto the FramePack transformer's
module names (fused HunyuanVideo projections split by rows), and refused with a clear message when foreign."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from framepack_core.cli.main import main
from framepack_core.errors import InvalidInputError
from framepack_core.lora import inspect_lora, transformer_layers, weight_deltas
from framepack_core.lora.files import transformer_config
from framepack_core.lora.keys import DIFFUSERS, HUNYUAN, MUSUBI

RANK, ALPHA = 4, 2.0
# HunyuanVideo's original module name -> the FramePack modules it feeds, in the order of its output rows.
GROUPS = {
    "double_blocks.0.img_attn_qkv": ["transformer_blocks.0.attn.to_q", "transformer_blocks.0.attn.to_k",
                                     "transformer_blocks.0.attn.to_v"],
    "double_blocks.1.txt_attn_proj": ["transformer_blocks.1.attn.to_add_out"],
    "double_blocks.0.img_mlp.fc1": ["transformer_blocks.0.ff.net.0.proj"],
    "single_blocks.0.linear1": ["single_transformer_blocks.0.attn.to_q", "single_transformer_blocks.0.attn.to_k",
                                "single_transformer_blocks.0.attn.to_v", "single_transformer_blocks.0.proj_mlp"],
    "single_blocks.1.linear2": ["single_transformer_blocks.1.proj_out"],
}


@pytest.fixture(scope="module")
def tiny_layers(tiny_models_dir: Path) -> dict[str, tuple[int, int]]:
    config, source = transformer_config(tiny_models_dir)
    assert source.endswith("config.json") and config["num_attention_heads"] * config["attention_head_dim"] == 32
    return transformer_layers(config)


@pytest.fixture(scope="module")
def truth(tiny_layers) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Original name -> (shared down, fused up as a musubi file stores it, i.e. before alpha/rank)."""
    generator = torch.Generator().manual_seed(0)
    pairs = {}
    for original, targets in GROUPS.items():
        in_features = tiny_layers[targets[0]][1]
        out_features = sum(tiny_layers[target][0] for target in targets)
        pairs[original] = (torch.randn(RANK, in_features, generator=generator),
                           torch.randn(out_features, RANK, generator=generator))
    return pairs


def _musubi(truth) -> dict[str, torch.Tensor]:
    tensors = {}
    for original, (down, up) in truth.items():
        name = "lora_unet_" + original.replace(".", "_")
        tensors |= {f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up, f"{name}.alpha": torch.tensor(ALPHA)}
    return tensors


def _hunyuan(truth) -> dict[str, torch.Tensor]:
    # No alpha key: the scale alpha/rank is already in lora_B, as diffusers-style files have it.
    return {f"diffusion_model.{original}.lora_{ab}.weight": tensor
            for original, (down, up) in truth.items()
            for ab, tensor in (("A", down), ("B", up * (ALPHA / RANK)))}


def _diffusers(truth, tiny_layers) -> dict[str, torch.Tensor]:
    tensors = {}
    for original, (down, up) in truth.items():
        targets = GROUPS[original]
        rows = up.split([tiny_layers[target][0] for target in targets], dim=0)
        for target, part in zip(targets, rows):
            tensors[f"transformer.{target}.lora_A.weight"] = down.clone()
            tensors[f"transformer.{target}.lora_B.weight"] = (part * (ALPHA / RANK)).contiguous()
    return tensors


def _save(tmp_path: Path, name: str, tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> Path:
    path = tmp_path / name
    save_file({key: value.contiguous() for key, value in tensors.items()}, str(path), metadata=metadata)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory, truth, tiny_layers) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("loras")
    return {MUSUBI: _save(folder, "musubi.safetensors", _musubi(truth)),
            HUNYUAN: _save(folder, "hunyuan.safetensors", _hunyuan(truth)),
            DIFFUSERS: _save(folder, "diffusers.safetensors", _diffusers(truth, tiny_layers))}


ALL_TARGETS = [target for targets in GROUPS.values() for target in targets]


@pytest.mark.parametrize("family", [MUSUBI, HUNYUAN, DIFFUSERS])
def test_each_key_family_is_detected_and_reaches_the_framepack_module_names(family, files, tiny_layers):
    description = inspect_lora(files[family], tiny_layers)
    assert description.format == family
    assert sorted(description.matched) == sorted(ALL_TARGETS)
    assert description.unmatched == {}
    assert set(description.ranks.values()) == {RANK}
    assert set(description.converted) == {f"transformer.{t}.lora_{ab}.weight" for t in ALL_TARGETS for ab in "AB"}
    expected_alpha = ALPHA if family == MUSUBI else float(RANK)
    assert set(description.alphas.values()) == {expected_alpha}


def test_a_fused_qkv_up_matrix_is_split_by_rows_and_the_down_matrix_is_shared(files, truth, tiny_layers):
    converted = inspect_lora(files[MUSUBI], tiny_layers).converted
    down, up = truth["double_blocks.0.img_attn_qkv"]
    for index, part in enumerate(("to_q", "to_k", "to_v")):
        prefix = f"transformer.transformer_blocks.0.attn.{part}"
        assert torch.equal(converted[f"{prefix}.lora_A.weight"], down)
        assert torch.equal(converted[f"{prefix}.lora_B.weight"], up[index * 32:(index + 1) * 32] * (ALPHA / RANK))


def test_the_single_blocks_fused_qkv_and_mlp_split_into_q_k_v_and_proj_mlp(files, truth, tiny_layers):
    converted = inspect_lora(files[MUSUBI], tiny_layers).converted
    down, up = truth["single_blocks.0.linear1"]
    assert up.shape[0] == 3 * 32 + 128  # hidden 32, MLP 4x: the tiny transformer's linear1
    expected = dict(zip(("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"), up.split([32, 32, 32, 128])))
    for part, rows in expected.items():
        prefix = f"transformer.single_transformer_blocks.0.{part}"
        assert converted[f"{prefix}.lora_B.weight"].shape == (tiny_layers[f"single_transformer_blocks.0.{part}"][0],
                                                               RANK)
        assert torch.equal(converted[f"{prefix}.lora_B.weight"], rows * (ALPHA / RANK))
        assert torch.equal(converted[f"{prefix}.lora_A.weight"], down)


def test_the_same_deltas_in_every_family_give_the_same_merged_tiny_transformer_weights(files, tiny_models_dir):
    # Merged W + B @ A by hand on the real tiny model (the diffusers loader is checked in its own test below).
    from diffusers import HunyuanVideoFramepackTransformer3DModel

    from framepack_core.models.loading import TRANSFORMER_REPOS

    model = HunyuanVideoFramepackTransformer3DModel.from_pretrained(tiny_models_dir / TRANSFORMER_REPOS["original"])
    base = {key: value.clone() for key, value in model.state_dict().items()}
    layers = {name: (m.out_features, m.in_features) for name, m in model.named_modules()
              if isinstance(m, torch.nn.Linear)}
    merged = {}
    for family, path in files.items():
        deltas = weight_deltas(inspect_lora(path, layers).converted, weight=0.7)
        merged[family] = {f"{module}.weight": base[f"{module}.weight"] + delta for module, delta in deltas.items()}
        model.load_state_dict(merged[family], strict=False)  # the shapes fit the real module
    reference = merged[DIFFUSERS]
    assert set(reference) == {f"{target}.weight" for target in ALL_TARGETS}
    for family in (MUSUBI, HUNYUAN):
        for key, weight in reference.items():
            delta, other = weight - base[key], merged[family][key] - base[key]
            assert (other - delta).norm() <= 1e-6 * delta.norm(), (family, key)


def test_layers_the_transformer_lacks_are_reported_by_name(tmp_path, truth, tiny_layers):
    tensors = _musubi(truth) | {"lora_unet_double_blocks_7_img_attn_proj.lora_down.weight": torch.zeros(RANK, 32),
                                "lora_unet_double_blocks_7_img_attn_proj.lora_up.weight": torch.zeros(32, RANK)}
    description = inspect_lora(_save(tmp_path, "extra.safetensors", tensors), tiny_layers)
    assert sorted(description.matched) == sorted(ALL_TARGETS)
    assert set(description.unmatched) == {"lora_unet_double_blocks_7_img_attn_proj.lora_down.weight",
                                          "lora_unet_double_blocks_7_img_attn_proj.lora_up.weight"}
    assert "no layer double_blocks_7_img_attn_proj" in description.unmatched[
        "lora_unet_double_blocks_7_img_attn_proj.lora_up.weight"]


def test_musubi_keys_with_framepack_module_names_are_read_as_they_are(tmp_path, tiny_layers):
    generator = torch.Generator().manual_seed(1)
    down, up = torch.randn(2, 32, generator=generator), torch.randn(128, 2, generator=generator)
    tensors = {"lora_unet_transformer_blocks_1_ff_net_0_proj.lora_down.weight": down,
               "lora_unet_transformer_blocks_1_ff_net_0_proj.lora_up.weight": up,
               "lora_unet_transformer_blocks_1_ff_net_0_proj.alpha": torch.tensor(1.0)}
    description = inspect_lora(_save(tmp_path, "native.safetensors", tensors), tiny_layers)
    assert description.format == MUSUBI and description.matched == ["transformer_blocks.1.ff.net.0.proj"]
    assert torch.equal(weight_deltas(description.converted)["transformer_blocks.1.ff.net.0.proj"], (up * 0.5) @ down)


def test_a_layer_given_twice_under_two_names_is_used_once_and_the_second_reported(tmp_path, truth, tiny_layers):
    tensors = _musubi(truth) | {"lora_unet_transformer_blocks_0_attn_to_q.lora_down.weight": torch.zeros(RANK, 32),
                                "lora_unet_transformer_blocks_0_attn_to_q.lora_up.weight": torch.zeros(32, RANK)}
    description = inspect_lora(_save(tmp_path, "twice.safetensors", tensors), tiny_layers)
    assert sorted(description.matched) == sorted(ALL_TARGETS)
    assert all("second LoRA pair" in why for why in description.unmatched.values())
    assert len(description.unmatched) == 2


def _flux_lora() -> dict[str, torch.Tensor]:
    # Flux's kohya names: HunyuanVideo's block naming, but "img_mod_lin" and Flux's 3072 width.
    name = "lora_unet_double_blocks_0_"
    return {f"{name}img_attn_qkv.lora_down.weight": torch.zeros(RANK, 3072),
            f"{name}img_attn_qkv.lora_up.weight": torch.zeros(3 * 3072, RANK),
            f"{name}img_mod_lin.lora_down.weight": torch.zeros(RANK, 3072),
            f"{name}img_mod_lin.lora_up.weight": torch.zeros(6 * 3072, RANK)}


def _refusal(tmp_path: Path, case: str) -> Path:
    if case == "text file":
        path = tmp_path / "notes.safetensors"
        path.write_text("this is not a LoRA\n")
        return path
    if case == "truncated":
        whole = _save(tmp_path, "whole.safetensors", {"a.lora_A.weight": torch.ones(64, 64)})
        path = tmp_path / "truncated.safetensors"
        path.write_bytes(whole.read_bytes()[:-100])
        return path
    if case == "flux":
        return _save(tmp_path, "flux.safetensors", _flux_lora())
    if case == "flux metadata":  # names and shapes of a FramePack LoRA: only the trainer's note tells
        tensors = {"transformer.transformer_blocks.0.attn.to_q.lora_A.weight": torch.zeros(RANK, 32),
                   "transformer.transformer_blocks.0.attn.to_q.lora_B.weight": torch.zeros(32, RANK)}
        return _save(tmp_path, "flux_noted.safetensors", tensors, {"ss_base_model_version": "flux1"})
    if case == "wrong sizes":
        tensors = {key: value for key, value in _flux_lora().items() if "mod_lin" not in key}
        return _save(tmp_path, "wide.safetensors", tensors)
    return _save(tmp_path, "elsewhere.safetensors", {"transformer.not_here.lora_A.weight": torch.zeros(RANK, 8),
                                                     "transformer.not_here.lora_B.weight": torch.zeros(8, RANK)})


@pytest.mark.parametrize(("case", "words"), [("text file", "not a readable safetensors"),
                                             ("truncated", "truncated"),
                                             ("flux", "Flux LoRA"),
                                             ("flux metadata", "Flux LoRA"),
                                             ("wrong sizes", "other sizes"),
                                             ("no match", "matches no layer")])
def test_foreign_or_broken_files_are_refused_with_a_clear_message(case, words, tmp_path, tiny_layers):
    with pytest.raises(InvalidInputError) as caught:
        inspect_lora(_refusal(tmp_path, case), tiny_layers)
    assert caught.value.field == "lora"
    assert words in str(caught.value) and caught.value.hint


def test_cli_inspect_prints_format_ranks_and_layers(files, tiny_models_dir, capsys):
    assert main(["lora", "inspect", str(files[MUSUBI]), "--models-dir", str(tiny_models_dir)]) == 0
    out = capsys.readouterr().out
    assert f"Format:    {MUSUBI}" in out and "Rank(s):   4" in out and "Alpha(s):  2" in out
    assert f"Matched layers: {len(ALL_TARGETS)}" in out and "single_transformer_blocks.0.proj_mlp" in out


def test_cli_inspect_json_against_the_built_in_full_size_config(tmp_path, capsys):
    tensors = {"lora_unet_single_blocks_39_linear1.lora_down.weight": torch.zeros(2, 3072),
               "lora_unet_single_blocks_39_linear1.lora_up.weight": torch.zeros(3 * 3072 + 12288, 2),
               "lora_unet_single_blocks_40_linear1.lora_down.weight": torch.zeros(2, 3072),
               "lora_unet_single_blocks_40_linear1.lora_up.weight": torch.zeros(3 * 3072 + 12288, 2)}
    path = _save(tmp_path, "full.safetensors", tensors)
    assert main(["lora", "inspect", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["config"] == "built-in config" and info["format"] == MUSUBI and info["ranks"] == [2]
    assert info["matched"] == [f"single_transformer_blocks.39.{part}"
                               for part in ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")]
    assert sorted(info["unmatched"]) == sorted(key for key in tensors if "_40_" in key)


def test_cli_inspect_refuses_a_text_file_with_exit_2_and_no_traceback(tmp_path, capsys):
    path = _refusal(tmp_path, "text file")
    assert main(["lora", "inspect", str(path)]) == 2
    err = capsys.readouterr().err
    assert "not a readable safetensors file" in err and "Traceback" not in err


def test_a_converted_lora_loads_through_diffusers_and_fuses_to_the_hand_merged_weights(files, tiny_models_dir):
    """The converted dict is what diffusers' PEFT loader takes: loaded and fused into the tiny transformer, it
    changes each weight exactly as merging W + B @ A by hand does."""
    from diffusers import HunyuanVideoFramepackTransformer3DModel

    from framepack_core.models.loading import TRANSFORMER_REPOS

    model = HunyuanVideoFramepackTransformer3DModel.from_pretrained(tiny_models_dir / TRANSFORMER_REPOS["original"])
    base = {key: value.clone() for key, value in model.state_dict().items()}
    layers = {name: (m.out_features, m.in_features) for name, m in model.named_modules()
              if isinstance(m, torch.nn.Linear)}
    description = inspect_lora(files[MUSUBI], layers)
    model.load_lora_adapter(description.converted, adapter_name="musubi", prefix="transformer")
    model.fuse_lora(lora_scale=1.0)
    fused = model.state_dict()
    for module, delta in weight_deltas(description.converted, weight=1.0).items():
        change = fused[f"{module}.base_layer.weight"] - base[f"{module}.weight"]
        assert (change - delta).norm() <= 1e-5 * delta.norm(), module
