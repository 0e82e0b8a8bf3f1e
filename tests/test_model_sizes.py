"""Component sizes: from safetensors headers (the tiny set, a sharded index) and from the built-in real configs."""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

import pytest
import torch

from framepack_core.models.components import WEIGHT_COMPONENTS, Component
from framepack_core.models.loaders import load_image_encoder, load_text_encoders, load_transformer, load_vae
from framepack_core.models.loading import ModelSource
from framepack_core.models.sizes import (
    builtin_config,
    builtin_sizes,
    find_sizes,
    read_safetensors_header,
    sizes_from_config,
    sizes_from_safetensors,
    weight_files,
)

C = Component


def _numel(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _block_numels(module: torch.nn.Module, path: str) -> list[int]:
    return [_numel(block) for block in module.get_submodule(path)]


@pytest.fixture(scope="module")
def tiny_modules(tiny_models_dir: Path) -> dict[Component, torch.nn.Module]:
    source = ModelSource(models_dir=tiny_models_dir)
    text = load_text_encoders(source, "cpu", torch.float32)
    return {
        C.TEXT_ENCODER: text.text_encoder,
        C.TEXT_ENCODER_2: text.text_encoder_2,
        C.VAE: load_vae(source, "cpu", torch.float32),
        C.IMAGE_ENCODER: load_image_encoder(source, "cpu", torch.float32).image_encoder,
        C.TRANSFORMER: load_transformer(source, "original", "cpu", torch.float32),
    }


def test_header_sizes_of_the_tiny_set_equal_the_loaded_modules(tiny_models_dir, tiny_modules):
    sizes, notes = find_sizes("original", models_dir=tiny_models_dir)
    assert notes == ()
    for component, module in tiny_modules.items():
        size = sizes[component]
        assert size.source == "headers"
        assert size.parameters == _numel(module), component
        for blocks in size.blocks:
            assert list(blocks.block_parameters) == _block_numels(module, blocks.path), (component, blocks.path)
        assert size.disk_dtype == "float32"  # the tiny set is saved in fp32
    dit = sizes[C.TRANSFORMER]
    assert [(b.path, b.count) for b in dit.blocks] == [("transformer_blocks", 2), ("single_transformer_blocks", 2)]
    assert sizes[C.VAE].blocks == ()  # moves whole
    assert sizes[C.TEXT_ENCODER].block_count == 3


def test_a_sharded_checkpoint_is_read_through_its_index(tiny_models_dir):
    folder = tiny_models_dir / "hunyuanvideo-community/HunyuanVideo/text_encoder"
    assert (folder / "model.safetensors.index.json").is_file()  # the tiny LLaMA is saved in 100 KB shards
    files = weight_files(folder)
    assert len(files) > 1
    assert sizes_from_safetensors(folder, C.TEXT_ENCODER).parameters == sum(
        _count(read_safetensors_header(f)) for f in files)


def _count(header: dict) -> int:
    total = 0
    for entry in header.values():
        n = 1
        for d in entry["shape"]:
            n *= d
        total += n
    return total


def _write_header_only(path: Path, tensors: dict[str, tuple[str, list[int]]]) -> None:
    """A safetensors header with no data after it: sizes must come from the header alone."""
    header, offset = {}, 0
    for name, (dtype, shape) in tensors.items():
        n = 2
        for d in shape:
            n *= d
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps({"__metadata__": {"format": "pt"}, **header}).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw)


def test_only_the_header_is_read_and_blocks_match_after_any_prefix(tmp_path):
    _write_header_only(tmp_path / "model.safetensors", {
        "text_model.embeddings.token_embedding.weight": ("BF16", [100, 8]),
        "text_model.encoder.layers.0.mlp.fc1.weight": ("BF16", [32, 8]),
        "text_model.encoder.layers.1.mlp.fc1.weight": ("BF16", [32, 8]),
        "text_model.encoder.layers.10.mlp.fc1.weight": ("BF16", [32, 8]),
    })
    size = sizes_from_safetensors(tmp_path, C.TEXT_ENCODER_2)
    assert size.parameters == 800 + 3 * 256 and size.disk_dtype == "bfloat16"
    assert size.block_sizes() == (256, 256, 256) and size.remainder_parameters == 800


def test_single_blocks_are_not_counted_as_dual_blocks(tmp_path):
    _write_header_only(tmp_path / "diffusion_pytorch_model.safetensors", {
        "transformer_blocks.0.w": ("BF16", [10]),
        "single_transformer_blocks.0.w": ("BF16", [3]),
        "single_transformer_blocks.1.w": ("BF16", [3]),
        "x_embedder.w": ("BF16", [7]),
    })
    size = sizes_from_safetensors(tmp_path, C.TRANSFORMER)
    assert [(b.path, b.block_parameters) for b in size.blocks] == [
        ("transformer_blocks", (10,)), ("single_transformer_blocks", (3, 3))]
    assert size.remainder_parameters == 7


def test_a_broken_local_copy_falls_back_to_the_builtin_config(tmp_path, tiny_models_dir):
    import shutil

    models = tmp_path / "models"
    shutil.copytree(tiny_models_dir, models)
    vae = models / "hunyuanvideo-community/HunyuanVideo/vae/diffusion_pytorch_model.safetensors"
    vae.write_bytes(b"\xff" * 4)
    shutil.rmtree(models / "lllyasviel/FramePack_F1_I2V_HY_20250503")
    sizes, notes = find_sizes("f1", models_dir=models)
    assert sizes[C.VAE].source == "config" and sizes[C.VAE].parameters == 246_478_803
    assert any("vae" in n and "unreadable" in n for n in notes)
    assert sizes[C.TRANSFORMER].source == "config"  # missing: built-in, with no note (nothing was there)
    assert sizes[C.TEXT_ENCODER].source == "headers"
    assert sizes.variant == "f1"


def test_the_real_configs_have_the_real_sizes():
    sizes = builtin_sizes()
    assert [s.component for s in sizes.components] == list(WEIGHT_COMPONENTS)
    assert all(s.source == "config" for s in sizes.components) and sizes.all_builtin
    dit = sizes[C.TRANSFORMER]
    assert dit.parameters == pytest.approx(12.87e9, abs=0.01e9)
    assert dit.parameters == 12_874_314_816  # bench/flops.py counts the same
    assert [(b.path, b.count) for b in dit.blocks] == [("transformer_blocks", 20), ("single_transformer_blocks", 40)]
    assert dit.disk_dtype == "bfloat16"
    assert sizes[C.VAE].parameters == pytest.approx(246.5e6, abs=0.1e6) and sizes[C.VAE].blocks == ()
    llama = sizes[C.TEXT_ENCODER]
    assert llama.parameters == pytest.approx(7.505e9, abs=0.001e9) and llama.block_count == 32
    assert llama.remainder_parameters == 128_320 * 4096 + 4096  # embeddings + final norm
    assert sizes[C.TEXT_ENCODER_2].parameters == pytest.approx(123.06e6, abs=0.01e6)
    assert sizes[C.TEXT_ENCODER_2].block_count == 12
    assert sizes[C.IMAGE_ENCODER].parameters == pytest.approx(428.2e6, abs=0.1e6)
    assert sizes[C.IMAGE_ENCODER].block_count == 27
    assert {s.component: s.disk_dtype for s in sizes.components if s.component != C.TRANSFORMER} == {
        C.TEXT_ENCODER: "float16", C.TEXT_ENCODER_2: "float16", C.VAE: "float16", C.IMAGE_ENCODER: "float16"}


def test_the_builtin_configs_are_the_documented_ones():
    llama = builtin_config(C.TEXT_ENCODER)
    assert (llama["hidden_size"], llama["intermediate_size"], llama["num_hidden_layers"], llama["num_attention_heads"],
            llama["num_key_value_heads"], llama["vocab_size"], llama["max_position_embeddings"],
            llama["rope_theta"], llama["rms_norm_eps"]) == (4096, 14336, 32, 32, 8, 128320, 8192, 500000.0, 1e-5)
    siglip = builtin_config(C.IMAGE_ENCODER)
    assert (siglip["hidden_size"], siglip["intermediate_size"], siglip["num_hidden_layers"],
            siglip["num_attention_heads"], siglip["image_size"], siglip["patch_size"]) == (1152, 4304, 27, 16, 384, 14)
    dit = builtin_config(C.TRANSFORMER)
    assert dit["has_image_proj"] is True and dit["has_clean_x_embedder"] is True
    assert not any(key.startswith("_") for key in dit)


def test_counting_the_real_configs_is_quick_and_cached():
    import diffusers  # noqa: F401 - imports are not what is timed
    import transformers  # noqa: F401

    sizes_from_config.cache_clear()
    started = time.perf_counter()
    builtin_sizes()
    assert time.perf_counter() - started < 3.0
    started = time.perf_counter()
    builtin_sizes()
    assert time.perf_counter() - started < 0.01
