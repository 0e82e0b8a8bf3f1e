"""The tiny model set: layout, byte-for-byte determinism, tokenizers, cross-component constraints, stability."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from framepack_core.models import tiny as tiny_models
from framepack_core.models.text_encoding import PROMPT_TEMPLATE, TEMPLATE_CROP_START
from framepack_core.models.tiny import build_tiny_models

BASE = Path("hunyuanvideo-community/HunyuanVideo")
REDUX = Path("lllyasviel/flux_redux_bfl")
ORIGINAL = Path("lllyasviel/FramePackI2V_HY")
F1 = Path("lllyasviel/FramePack_F1_I2V_HY_20250503")
REPO_ROOT = Path(__file__).resolve().parents[1]


def _hashes(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def same_seed_elsewhere(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Seed 0 built again in a fresh process with another hash seed, so set and dict orders differ."""
    root = tmp_path_factory.mktemp("rebuilt") / "seed0"
    code = "import sys; from framepack_core.models.tiny import build_tiny_models; build_tiny_models(sys.argv[1], 0)"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    subprocess.run([sys.executable, "-c", code, str(root)], check=True, cwd=REPO_ROOT, env=env, capture_output=True)
    return root


@pytest.fixture(scope="module")
def other_seed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_models(tmp_path_factory.mktemp("other") / "seed1", seed=1)


def test_layout_mirrors_the_real_repositories(tiny_models_dir: Path) -> None:
    base = tiny_models_dir / BASE
    for name in ("model_index.json", "scheduler/scheduler_config.json", "text_encoder/config.json",
                 "text_encoder_2/config.json", "text_encoder_2/model.safetensors", "tokenizer/tokenizer.json",
                 "tokenizer/tokenizer_config.json", "tokenizer_2/tokenizer_config.json", "vae/config.json",
                 "vae/diffusion_pytorch_model.safetensors"):
        assert (base / name).is_file(), name
    assert (tiny_models_dir / REDUX / "image_encoder/model.safetensors").is_file()
    assert _json(tiny_models_dir / REDUX / "feature_extractor/preprocessor_config.json")["image_processor_type"] == (
        "SiglipImageProcessor"
    )
    index = _json(base / "model_index.json")
    assert index["_class_name"] == "HunyuanVideoPipeline"
    assert index["tokenizer"] == ["transformers", "LlamaTokenizerFast"]
    assert index["text_encoder"] == ["transformers", "LlamaModel"]
    assert index["vae"] == ["diffusers", "AutoencoderKLHunyuanVideo"]
    assert _json(base / "tokenizer/tokenizer_config.json")["tokenizer_class"] == "PreTrainedTokenizerFast"
    for repo in (ORIGINAL, F1):
        assert sorted(p.name for p in (tiny_models_dir / repo).iterdir()) == [
            "config.json", "diffusion_pytorch_model.safetensors"]
        assert _json(tiny_models_dir / repo / "config.json")["_class_name"] == "HunyuanVideoTransformer3DModelPacked"
    # The text encoder is sharded, like the real 4-shard one, so the index + shards path is exercised.
    weight_map = _json(base / "text_encoder/model.safetensors.index.json")["weight_map"]
    shards = sorted(set(weight_map.values()))
    assert len(shards) >= 2 and all((base / "text_encoder" / s).is_file() for s in shards)
    manifest = _json(tiny_models_dir / "tiny_models.json")
    assert manifest["seed"] == 0 and "transformer" in manifest["configs"]


def test_whole_set_is_a_few_megabytes(tiny_models_dir: Path) -> None:
    total = sum(p.stat().st_size for p in tiny_models_dir.rglob("*") if p.is_file())
    assert 1_000_000 < total < 8_000_000


def test_same_seed_rebuilds_byte_identical_in_another_process(tiny_models_dir: Path, same_seed_elsewhere) -> None:
    assert _hashes(same_seed_elsewhere) == _hashes(tiny_models_dir)


def test_another_seed_changes_every_weight_file_but_not_the_tokenizers(tiny_models_dir: Path, other_seed) -> None:
    ours, theirs = _hashes(tiny_models_dir), _hashes(other_seed)
    assert ours.keys() == theirs.keys()
    weights = [k for k in ours if k.endswith(".safetensors")]
    assert len(weights) == 7
    assert all(ours[k] != theirs[k] for k in weights)
    assert all(ours[k] == theirs[k] for k in ours if "/tokenizer" in k)


def test_the_two_transformer_variants_get_different_weights(tiny_models_dir: Path) -> None:
    from safetensors.torch import load_file

    a = load_file(tiny_models_dir / ORIGINAL / "diffusion_pytorch_model.safetensors")
    b = load_file(tiny_models_dir / F1 / "diffusion_pytorch_model.safetensors")
    assert a.keys() == b.keys()
    assert not torch.equal(a["proj_out.weight"], b["proj_out.weight"])


def test_a_complete_build_is_reused_without_touching_it(tiny_models_dir: Path) -> None:
    before = {p: p.stat().st_mtime_ns for p in tiny_models_dir.rglob("*")}
    started = time.perf_counter()
    assert build_tiny_models(tiny_models_dir, seed=0) == tiny_models_dir
    assert time.perf_counter() - started < 0.5
    assert {p: p.stat().st_mtime_ns for p in tiny_models_dir.rglob("*")} == before


def test_an_interrupted_build_leaves_neither_a_tree_nor_temp_folders(tmp_path: Path, monkeypatch) -> None:
    def interrupted(out_dir: Path) -> dict:
        out_dir.mkdir(parents=True)
        (out_dir / "vocab.json").write_text("{")
        raise KeyboardInterrupt

    monkeypatch.setattr(tiny_models, "build_clip_tokenizer", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build_tiny_models(tmp_path / "models")
    assert list(tmp_path.iterdir()) == []


def test_a_build_for_another_seed_is_replaced(tmp_path: Path, tiny_models_dir: Path, other_seed) -> None:
    import shutil

    root = tmp_path / "models"
    shutil.copytree(other_seed, root)
    build_tiny_models(root, seed=0)
    assert _hashes(root) == _hashes(tiny_models_dir)
    assert [p.name for p in tmp_path.iterdir()] == ["models"]


def test_a_damaged_build_is_rebuilt_in_place(tmp_path: Path, tiny_models_dir: Path) -> None:
    import shutil

    root = Path(shutil.copytree(tiny_models_dir, tmp_path / "models"))
    vae = root / BASE / "vae/diffusion_pytorch_model.safetensors"
    data = bytearray(vae.read_bytes())
    data[-4:] = b"\xff\xff\xff\xff"  # same size, different bytes
    vae.write_bytes(bytes(data))
    build_tiny_models(root, seed=0)
    assert _hashes(root) == _hashes(tiny_models_dir)
    assert [p.name for p in tmp_path.iterdir()] == ["models"]


def test_a_folder_that_is_not_a_tiny_build_is_refused(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a tiny model build"):
        build_tiny_models(tmp_path / "models")
    assert (tmp_path / "models" / "notes.txt").read_text() == "mine"


def test_llama_tokenizer_loads_as_bytelevel_with_autotokenizer_and_round_trips(tiny_models_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_models_dir / BASE / "tokenizer")
    backend = tokenizer.backend_tokenizer
    assert "ByteLevel" in repr(backend.pre_tokenizer) and "Split" in repr(backend.pre_tokenizer)
    assert "ByteLevel" in repr(backend.decoder)
    assert "Metaspace" not in repr(backend.pre_tokenizer)
    for text in ("The girl dances gracefully", "  two  spaces, tabs\tand\nlines ", "Ünïcödé 日本語 🎉 café"):
        ids = tokenizer(text).input_ids
        assert ids[0] == tokenizer.bos_token_id == 0
        assert tokenizer.decode(ids, skip_special_tokens=True) == text
    assert tokenizer.convert_ids_to_tokens(tokenizer("<|eot_id|>", add_special_tokens=False).input_ids) == [
        "<|eot_id|>"]
    padded = tokenizer(["hi"], padding="max_length", max_length=6)
    assert padded.input_ids[0][2:] == [tokenizer.pad_token_id] * 4
    assert tokenizer.pad_token == "<|finetune_right_pad_id|>" and tokenizer.padding_side == "right"


def test_prompt_template_prefix_is_as_many_tokens_as_with_the_real_llama3(tiny_models_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_models_dir / BASE / "tokenizer")
    prefix = PROMPT_TEMPLATE.split("{}")[0]
    assert len(tokenizer(prefix).input_ids) == TEMPLATE_CROP_START
    ids = tokenizer(PROMPT_TEMPLATE.format("a cat walks")).input_ids
    assert tokenizer.decode(ids[TEMPLATE_CROP_START:]) == "a cat walks<|eot_id|>"


def test_clip_tokenizer_loads_with_both_classes_and_never_meets_an_unknown_character(tiny_models_dir: Path) -> None:
    from transformers import AutoTokenizer, CLIPTokenizer

    folder = tiny_models_dir / BASE / "tokenizer_2"
    auto, clip = AutoTokenizer.from_pretrained(folder), CLIPTokenizer.from_pretrained(folder)
    assert isinstance(auto, CLIPTokenizer)
    text = "The GIRL dances — gracefully! 日本語 🎉 ünïcode"
    ids = clip([text], padding="max_length", max_length=77, truncation=True).input_ids[0]
    assert auto([text], padding="max_length", max_length=77, truncation=True).input_ids[0] == ids
    assert len(ids) == 77 and clip.model_max_length == 77
    eos = clip.eos_token_id
    first_eos = ids.index(eos)
    assert ids[0] == clip.bos_token_id and eos not in ids[1:first_eos]  # the unk token is eos: none inside
    # CLIP's decoder turns every end-of-word mark into a space, so only the characters are compared.
    assert clip.decode(ids, skip_special_tokens=True).replace(" ", "") == text.lower().replace(" ", "")
    config = _json(tiny_models_dir / BASE / "text_encoder_2/config.json")
    assert config["eos_token_id"] == eos and config["vocab_size"] == len(clip)


def test_configs_satisfy_the_constraints_that_tie_the_components_together(tiny_models_dir: Path) -> None:
    from transformers import AutoTokenizer

    t = _json(tiny_models_dir / ORIGINAL / "config.json")
    llama = _json(tiny_models_dir / BASE / "text_encoder/config.json")
    clip = _json(tiny_models_dir / BASE / "text_encoder_2/config.json")
    siglip = _json(tiny_models_dir / REDUX / "image_encoder/config.json")
    vae = _json(tiny_models_dir / BASE / "vae/config.json")
    assert t["has_image_proj"] and t["has_clean_x_embedder"]
    assert t["text_embed_dim"] == llama["hidden_size"]
    assert t["pooled_projection_dim"] == clip["hidden_size"]
    assert t["image_proj_dim"] == siglip["hidden_size"]
    assert t["in_channels"] == vae["latent_channels"] == 16
    assert sum(t["rope_axes_dim"]) == t["attention_head_dim"] and all(a % 2 == 0 for a in t["rope_axes_dim"])
    assert llama["num_hidden_layers"] >= 2 and llama["max_position_embeddings"] >= 256 + TEMPLATE_CROP_START
    tokenizer = AutoTokenizer.from_pretrained(tiny_models_dir / BASE / "tokenizer")
    assert llama["vocab_size"] == len(tokenizer)
    assert (llama["bos_token_id"], llama["pad_token_id"]) == (tokenizer.bos_token_id, tokenizer.pad_token_id)


@torch.no_grad()
def test_transformer_and_vae_stay_finite_and_unit_scale_over_25_sampling_steps(tiny_models_dir: Path) -> None:
    from diffusers import AutoencoderKLHunyuanVideo, HunyuanVideoFramepackTransformer3DModel

    model = HunyuanVideoFramepackTransformer3DModel.from_pretrained(tiny_models_dir / ORIGINAL).eval()
    vae = AutoencoderKLHunyuanVideo.from_pretrained(tiny_models_dir / BASE / "vae").eval()
    g = torch.Generator().manual_seed(0)
    frames, h, w = 3, 4, 6
    latents = torch.randn(1, 16, frames, h, w, generator=g)
    index = torch.arange(1 + frames + 1 + 2 + 16)
    inputs = dict(
        encoder_hidden_states=torch.randn(1, 12, 32, generator=g),
        encoder_attention_mask=torch.ones(1, 12, dtype=torch.bool),
        pooled_projections=torch.randn(1, 32, generator=g),
        image_embeds=torch.randn(1, 16, 32, generator=g),
        indices_latents=index[1:1 + frames],
        guidance=torch.tensor([10000.0]),
        latents_clean=torch.randn(1, 16, 2, h, w, generator=g),
        indices_latents_clean=torch.stack([index[0], index[1 + frames]]),
        latents_history_2x=torch.zeros(1, 16, 2, h, w),
        indices_latents_history_2x=index[2 + frames:4 + frames],
        latents_history_4x=torch.zeros(1, 16, 16, h, w),
        indices_latents_history_4x=index[4 + frames:],
        return_dict=False,
    )
    sigmas = torch.linspace(1.0, 0.0, 26)
    for sigma, next_sigma in zip(sigmas[:-1], sigmas[1:]):
        velocity = model(hidden_states=latents, timestep=sigma[None] * 1000, **inputs)[0]
        assert torch.isfinite(velocity).all()
        latents = latents + (next_sigma - sigma) * velocity
    assert 0.3 < latents.std().item() < 3.0
    pixels = vae.decode(latents / vae.config.scaling_factor).sample
    assert pixels.shape == (1, 3, 9, 8 * h, 8 * w)
    assert torch.isfinite(pixels).all() and pixels.abs().max() < 10


def test_the_medium_transformer_has_about_80m_parameters_and_still_fits_the_tiny_encoders() -> None:
    from diffusers import HunyuanVideoFramepackTransformer3DModel

    tokens = {"vocab_size": 300, "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 2}
    tiny = tiny_models.tiny_configs(tokens, tokens)
    medium = tiny_models.tiny_configs(tokens, tokens, transformer="medium")
    t = medium["transformer"]
    assert sum(t["rope_axes_dim"]) == t["attention_head_dim"] and all(a % 2 == 0 for a in t["rope_axes_dim"])
    for key in ("text_embed_dim", "pooled_projection_dim", "image_proj_dim", "in_channels", "out_channels"):
        assert t[key] == tiny["transformer"][key], key
    assert {name: c for name, c in medium.items() if name != "transformer"} == {
        name: c for name, c in tiny.items() if name != "transformer"}
    with torch.device("meta"):  # no memory, no init time
        model = HunyuanVideoFramepackTransformer3DModel(**t)
    assert 75e6 < sum(p.numel() for p in model.parameters()) < 85e6
    with pytest.raises(ValueError, match="unknown transformer size 'huge'"):
        tiny_models.tiny_configs(tokens, tokens, transformer="huge")


def test_the_transformer_size_is_built_recorded_and_loaded_through_the_real_loader(
        tmp_path: Path, tiny_models_dir: Path, monkeypatch, capsys) -> None:
    from framepack_core.cli.main import main
    from framepack_core.models.components import ModelVariant
    from framepack_core.models.loaders import load_transformer
    from framepack_core.models.loading import ModelSource

    # A stand-in for "medium" that builds in a second: the plumbing is what is tested, not the 600 MB of weights.
    monkeypatch.setitem(tiny_models.TRANSFORMER_SIZES, "medium", {"num_single_layers": 3})
    root = tmp_path / "models"
    assert main(["tiny-models", str(root), "--transformer", "medium"]) == 0
    assert "(medium transformer)" in capsys.readouterr().out
    assert _json(root / "tiny_models.json")["transformer_size"] == "medium"
    assert tiny_models.is_complete_build(root, 0, "medium") and not tiny_models.is_complete_build(root, 0)
    assert not tiny_models.is_complete_build(tiny_models_dir, 0, "medium")
    assert "transformer_size" not in _json(tiny_models_dir / "tiny_models.json")  # tiny builds are as before
    transformer = load_transformer(ModelSource(models_dir=root), ModelVariant.ORIGINAL, "cpu", torch.float32)
    assert len(transformer.single_transformer_blocks) == 3
    # Asking for the tiny size again replaces the build rather than reusing the medium one.
    build_tiny_models(root, seed=0)
    assert _hashes(root) == _hashes(tiny_models_dir)
