"""Resolving, checking and loading the five components through the real from_pretrained calls (tiny set)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from framepack_core.errors import InvalidInputError, MissingWeightsError
from framepack_core.models.components import Component, ModelVariant
from framepack_core.models.loaders import (
    load_image_encoder,
    load_text_encoders,
    load_transformer,
    load_vae,
)
from framepack_core.models.loading import (
    BASE_REPO,
    REDUX_REPO,
    TRANSFORMER_REPOS,
    ModelSource,
    resolve_component,
    safetensors_problem,
)
from framepack_core.models.missing_weights import check_weights

SNAPSHOT = "0" * 40


@pytest.fixture
def models_copy(tiny_models_dir: Path, tmp_path: Path, monkeypatch) -> Path:
    """A private copy of the tiny set (4 MB) that a test may damage. Offline: a missing-weights message then
    estimates the download's size rather than asking the hub."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return Path(shutil.copytree(tiny_models_dir, tmp_path / "models"))


@pytest.fixture(scope="module")
def hf_cache(tiny_models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny set laid out as a Hugging Face hub cache: models--org--name/{snapshots/<sha>/..., refs/main}."""
    cache = tmp_path_factory.mktemp("hf") / "hub"
    for repo in (BASE_REPO, REDUX_REPO, *TRANSFORMER_REPOS.values()):
        repo_dir = cache / ("models--" + repo.replace("/", "--"))
        shutil.copytree(tiny_models_dir / repo, repo_dir / "snapshots" / SNAPSHOT)
        (repo_dir / "refs").mkdir()
        (repo_dir / "refs" / "main").write_text(SNAPSHOT)
    return cache


def _assert_inference_ready(model: torch.nn.Module, dtype: torch.dtype) -> None:
    assert not model.training
    params = list(model.parameters())
    assert params and all(not p.requires_grad for p in params)
    assert {p.dtype for p in params} == {dtype}
    assert {p.device.type for p in params} == {"cpu"}


def _load_everything(source: ModelSource) -> None:
    text = load_text_encoders(source, "cpu", torch.float32)
    image = load_image_encoder(source, torch.device("cpu"), torch.float16)
    vae = load_vae(source, "cpu", torch.bfloat16)
    transformer = load_transformer(source, "f1", "cpu", torch.bfloat16)
    _assert_inference_ready(text.text_encoder, torch.float32)
    _assert_inference_ready(text.text_encoder_2, torch.float32)
    _assert_inference_ready(image.image_encoder, torch.float16)
    _assert_inference_ready(vae, torch.bfloat16)
    _assert_inference_ready(transformer, torch.bfloat16)
    assert type(text.text_encoder).__name__ == "LlamaModel"
    assert type(text.text_encoder_2).__name__ == "CLIPTextModel"
    assert type(text.tokenizer_2).__name__ == "CLIPTokenizer"
    assert "ByteLevel" in repr(text.tokenizer.backend_tokenizer.pre_tokenizer)  # not transformers 5's Metaspace
    assert type(image.image_encoder).__name__ == "SiglipVisionModel"
    assert type(vae).__name__ == "AutoencoderKLHunyuanVideo"
    assert type(transformer).__name__ == "HunyuanVideoFramepackTransformer3DModel"
    pixels = image.feature_extractor(images=torch.zeros(3, 40, 50).numpy().transpose(1, 2, 0), return_tensors="pt")
    assert pixels.pixel_values.shape == (1, 3, 32, 32)


def test_components_resolve_to_the_repository_layout_under_models_dir(tiny_models_dir: Path) -> None:
    source = ModelSource(models_dir=tiny_models_dir)
    assert resolve_component(source, "vae") == tiny_models_dir / BASE_REPO / "vae"
    assert resolve_component(source, Component.TOKENIZER_2) == tiny_models_dir / BASE_REPO / "tokenizer_2"
    assert resolve_component(source, "image_encoder") == tiny_models_dir / REDUX_REPO / "image_encoder"
    assert resolve_component(source, "transformer:original") == tiny_models_dir / "lllyasviel/FramePackI2V_HY"
    assert resolve_component(source, "transformer:f1") == tiny_models_dir / "lllyasviel/FramePack_F1_I2V_HY_20250503"
    with pytest.raises(InvalidInputError):
        resolve_component(source, "unet")


def test_every_component_loads_from_models_dir_ready_for_inference(tiny_models_dir: Path) -> None:
    source = ModelSource(models_dir=tiny_models_dir)
    check_weights(source, "original")
    check_weights(source, ModelVariant.F1)
    _load_everything(source)


def test_components_load_by_repo_id_from_an_offline_hf_cache(hf_cache: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    source = ModelSource(cache_dir=hf_cache)
    snapshot = hf_cache / "models--hunyuanvideo-community--HunyuanVideo" / "snapshots" / SNAPSHOT
    assert resolve_component(source, "text_encoder") == snapshot / "text_encoder"
    assert resolve_component(source, "transformer:f1") == (
        hf_cache / "models--lllyasviel--FramePack_F1_I2V_HY_20250503" / "snapshots" / SNAPSHOT
    )
    check_weights(source, "f1")
    _load_everything(source)


def test_a_repo_missing_from_an_offline_cache_says_how_to_download_it(tmp_path: Path) -> None:
    source = ModelSource(cache_dir=tmp_path / "empty", offline=True)
    with pytest.raises(MissingWeightsError) as caught:
        check_weights(source, "original")
    error = caught.value
    assert error.component == "tokenizer"
    assert "Offline mode is on" in error.message and "transformer:original" in error.message  # all are named
    assert "{offline}" in error.hint and "`python -m framepack_core models download --model original`" in error.hint
    # Each component's folder and its own fix come second, in the details.
    assert "models--hunyuanvideo-community--HunyuanVideo" in error.details
    assert "hf download hunyuanvideo-community/HunyuanVideo" in error.details


@torch.no_grad()
def test_loaded_transformer_forward_on_tiny_inputs_is_finite(tiny_models_dir: Path) -> None:
    model = load_transformer(ModelSource(models_dir=tiny_models_dir), ModelVariant.ORIGINAL, "cpu", torch.float32)
    g = torch.Generator().manual_seed(1)
    index = torch.arange(10)
    out = model(
        hidden_states=torch.randn(1, 16, 2, 4, 4, generator=g),
        timestep=torch.tensor([700.0]),
        encoder_hidden_states=torch.randn(1, 7, 32, generator=g),
        encoder_attention_mask=torch.ones(1, 7, dtype=torch.bool),
        pooled_projections=torch.randn(1, 32, generator=g),
        image_embeds=torch.randn(1, 16, 32, generator=g),
        indices_latents=index[1:3],
        guidance=torch.tensor([10000.0]),
        latents_clean=torch.randn(1, 16, 2, 4, 4, generator=g),
        indices_latents_clean=index[[0, 3]],
        latents_history_2x=torch.zeros(1, 16, 2, 4, 4),
        indices_latents_history_2x=index[4:6],
        latents_history_4x=torch.zeros(1, 16, 4, 4, 4),
        indices_latents_history_4x=index[6:10],
        return_dict=False,
    )[0]
    assert out.shape == (1, 16, 2, 4, 4)
    assert torch.isfinite(out).all() and 0.01 < out.std() < 10


def _raises_for(source: ModelSource, component: str, folder: Path, *fragments: str) -> MissingWeightsError:
    with pytest.raises(MissingWeightsError) as caught:
        check_weights(source, "original")
    error = caught.value
    assert error.component == component
    assert component in error.message and str(folder) not in error.message  # one short paragraph
    line = next(line for line in error.details.splitlines() if line.startswith(f"{component}: "))
    assert str(folder) in line
    for fragment in fragments:
        assert fragment in line
    assert "models download --model original" in error.hint
    return error


def test_missing_component_folder_is_reported_with_the_folder_and_a_fix(models_copy: Path) -> None:
    folder = models_copy / BASE_REPO / "vae"
    shutil.rmtree(folder)
    error = _raises_for(ModelSource(models_dir=models_copy), "vae", folder, "does not exist",
                        "hf download hunyuanvideo-community/HunyuanVideo --include 'vae/*'")
    assert "tiny-models" in error.hint and f"--models-dir {models_copy}" in error.hint
    with pytest.raises(MissingWeightsError, match="'vae'"):
        load_vae(ModelSource(models_dir=models_copy), "cpu", torch.float32)


def test_missing_shard_is_reported(models_copy: Path) -> None:
    folder = models_copy / BASE_REPO / "text_encoder"
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    last_shard = sorted(set(index["weight_map"].values()))[-1]
    (folder / last_shard).unlink()
    _raises_for(ModelSource(models_dir=models_copy), "text_encoder", folder, f"shard {last_shard}", "is missing")


def test_truncated_safetensors_file_is_reported(models_copy: Path) -> None:
    folder = models_copy / TRANSFORMER_REPOS["original"]
    weights = folder / "diffusion_pytorch_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    _raises_for(ModelSource(models_dir=models_copy), "transformer:original", folder, "truncated")
    with pytest.raises(MissingWeightsError, match="transformer:original"):
        load_transformer(ModelSource(models_dir=models_copy), "original", "cpu", torch.float32)


def test_corrupted_safetensors_header_is_reported(models_copy: Path) -> None:
    folder = models_copy / REDUX_REPO / "image_encoder"
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[8:24] = b"\x00garbage-bytes!\xff"
    weights.write_bytes(bytes(data))
    _raises_for(ModelSource(models_dir=models_copy), "image_encoder", folder, "corrupt header")


def test_header_claiming_more_than_the_file_holds_is_reported(models_copy: Path) -> None:
    weights = models_copy / BASE_REPO / "text_encoder_2" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[0:8] = (len(data) * 2).to_bytes(8, "little")
    weights.write_bytes(bytes(data))
    assert "truncated or corrupt" in safetensors_problem(weights)
    assert safetensors_problem(models_copy / BASE_REPO / "vae" / "diffusion_pytorch_model.safetensors") is None


def test_a_damaged_hf_cache_entry_suggests_a_forced_download(hf_cache: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cache = Path(shutil.copytree(hf_cache, tmp_path / "hub"))
    folder = cache / "models--lllyasviel--flux_redux_bfl" / "snapshots" / SNAPSHOT / "image_encoder"
    (folder / "config.json").unlink()
    _raises_for(ModelSource(cache_dir=cache), "image_encoder", folder, "config.json is missing", "--force-download")


def test_from_pretrained_failures_are_wrapped_with_the_component_name(models_copy: Path) -> None:
    folder = models_copy / BASE_REPO / "vae"
    config = json.loads((folder / "config.json").read_text())
    config["block_out_channels"] = [8, 8, 16, 32]  # the weights no longer fit this architecture
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(MissingWeightsError, match="from_pretrained failed") as caught:
        load_vae(ModelSource(models_dir=models_copy), "cpu", torch.float32)
    assert caught.value.component == "vae" and str(folder) in str(caught.value)
    assert caught.value.__cause__ is not None


def test_unknown_variant_is_refused_before_touching_the_disk(tiny_models_dir: Path) -> None:
    with pytest.raises(InvalidInputError, match="variant"):
        check_weights(ModelSource(models_dir=tiny_models_dir), "f2")
