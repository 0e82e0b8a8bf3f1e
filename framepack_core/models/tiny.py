"""Build a tiny random-weight FramePack model set, offline and deterministically, in the real repositories' layout.

The set exists so that the whole engine (and the real ``from_pretrained`` loading code) can run on a CPU in
seconds: every component is the real class with a toy config, saved with ``save_pretrained`` into the same
``org/name/subfolder`` tree that the Hugging Face repositories have. Tests and CI use it; a user can use it to
check an installation without downloading 30 GB.

Determinism: the weights come from per-component seeds derived from ``seed``; the tokenizers come from a fixed
corpus and a BPE merge construction written here (the ``tokenizers`` trainer breaks frequency ties in an
unspecified order, so its merges differ from run to run). Building twice with the same seed gives byte-identical
files (with the same torch/transformers/diffusers versions, whose init code and file formats are part of the
recipe).

The LLaMA tokenizer is trained until every chunk of HunyuanVideo's prompt template is a single token, exactly as
with the real Llama-3 vocabulary, so the template's prefix is ``TEMPLATE_CROP_START`` (95) tokens here too and the
engine crops the prompt at the same place as with the real model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from framepack_core.models.loading import BASE_REPO, REDUX_REPO, TINY_MANIFEST_NAME, TRANSFORMER_REPOS
from framepack_core.models.tiny_tokenizers import (
    CLIP_MAX_LENGTH,
    build_clip_tokenizer,
    build_llama_tokenizer,
    patch_json,
)

logger = logging.getLogger(__name__)

# Bump when anything that changes the files changes, so an older build in the same folder is rebuilt.
FORMAT_VERSION = 1
MANIFEST_NAME = TINY_MANIFEST_NAME

# The transformer sizes the builder knows, as changes to the tiny config. "medium" (about 79M parameters: 8 heads
# of 64, 4 double-stream and 8 single-stream blocks) makes the DiT dominate a job's time, as the real 13B model
# does, for speed benchmarks (bench/speed_options.py); the encoders and the VAE stay tiny, so it still runs on a CPU.
TRANSFORMER_SIZES: dict[str, dict[str, Any]] = {
    "tiny": {},
    "medium": {"num_attention_heads": 8, "attention_head_dim": 64, "num_layers": 4, "num_single_layers": 8,
               "rope_axes_dim": [16, 24, 24]},
}

# --------------------------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------------------------


def tiny_configs(llama_tokens: dict[str, int], clip_tokens: dict[str, int],
                 transformer: str = "tiny") -> dict[str, dict[str, Any]]:
    """The component configs, fresh on every call; ``transformer`` is one of ``TRANSFORMER_SIZES``. Dimensions follow the constraints that tie the parts together:

    transformer ``text_embed_dim`` = LLaMA hidden size, ``pooled_projection_dim`` = CLIP hidden size,
    ``image_proj_dim`` = SigLIP hidden size, ``in_channels`` = VAE latent channels (16, as the real VAE),
    ``sum(rope_axes_dim) == attention_head_dim`` with even entries; the LLaMA needs >= 3 layers' hidden states
    (index -3) and >= 351 positions (template prefix + 256); the vocab sizes and special ids come from the
    tokenizers (CLIP's pooler looks for the real eos id).
    """
    if transformer not in TRANSFORMER_SIZES:
        raise ValueError(f"unknown transformer size {transformer!r}; choose one of {', '.join(TRANSFORMER_SIZES)}")
    text_dim, clip_dim, image_dim = 32, 32, 32
    configs = {
        "transformer": {
            "in_channels": 16,
            "out_channels": 16,
            "num_attention_heads": 2,
            "attention_head_dim": 16,
            "num_layers": 2,
            "num_single_layers": 2,
            "num_refiner_layers": 1,
            "mlp_ratio": 4.0,
            "patch_size": 2,
            "patch_size_t": 1,
            "qk_norm": "rms_norm",
            "guidance_embeds": True,
            "text_embed_dim": text_dim,
            "pooled_projection_dim": clip_dim,
            "rope_theta": 256.0,
            "rope_axes_dim": [4, 6, 6],
            "image_condition_type": None,
            "has_image_proj": True,
            "image_proj_dim": image_dim,
            "has_clean_x_embedder": True,
            **TRANSFORMER_SIZES[transformer],
        },
        "vae": {
            "in_channels": 3,
            "out_channels": 3,
            "latent_channels": 16,
            "down_block_types": ["HunyuanVideoDownBlock3D"] * 4,
            "up_block_types": ["HunyuanVideoUpBlock3D"] * 4,
            "block_out_channels": [8, 8, 16, 16],
            "layers_per_block": 1,
            "act_fn": "silu",
            "norm_num_groups": 4,
            "scaling_factor": 0.476986,
            "spatial_compression_ratio": 8,
            "temporal_compression_ratio": 4,
            "mid_block_add_attention": True,
        },
        "scheduler": {"shift": 7.0},
        "text_encoder": {
            "hidden_size": text_dim,
            "intermediate_size": 64,
            "num_hidden_layers": 3,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 1024,
            "rms_norm_eps": 1e-5,
            "hidden_act": "silu",
            **llama_tokens,
        },
        "text_encoder_2": {
            "hidden_size": clip_dim,
            "intermediate_size": 64,
            "projection_dim": clip_dim,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": CLIP_MAX_LENGTH,
            "hidden_act": "quick_gelu",
            **clip_tokens,
        },
        "image_encoder": {
            "hidden_size": image_dim,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_channels": 3,
            "image_size": 32,
            "patch_size": 8,
            "hidden_act": "gelu_pytorch_tanh",
            "layer_norm_eps": 1e-6,
        },
        "feature_extractor": {
            "do_resize": True,
            "size": {"height": 32, "width": 32},
            "resample": 3,
            "do_rescale": True,
            "rescale_factor": 1 / 255,
            "do_normalize": True,
            "image_mean": [0.5, 0.5, 0.5],
            "image_std": [0.5, 0.5, 0.5],
        },
    }
    return configs


# --------------------------------------------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------------------------------------------


def component_seed(seed: int, component: str) -> int:
    """A stable per-component seed (not Python's ``hash``, which changes per process)."""
    digest = hashlib.sha256(f"framepack-tiny:{seed}:{component}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


def _seeded(seed: int, build: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    # fork_rng: building must not move the caller's global RNG (tests seed it for their own purposes).
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def _shrink_transformer(model: torch.nn.Module) -> None:
    """Halve the output projections of the DiT's blocks, so that sampled latents keep a unit scale.

    With PyTorch's default init the tiny DiT is already finite, but each block's residual branch adds to the
    stream: measured at 48x64 with unit-scale conditioning, the velocity's std is about 0.6 and the latents
    grow from std 1.0 to 1.15 over 25 Euler steps. Halved, the velocity is about 0.3 and the latents end at 1.03,
    which leaves room for the longer histories and half-precision runs of the engine's tests.
    """
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim >= 2 and name.endswith(("to_out.0.weight", "ff.net.2.weight", "proj_out.weight")):
                param.mul_(0.5)


def _unit_scale_embeddings(model: torch.nn.Module) -> torch.nn.Module:
    """Give the LLaMA's token embeddings unit scale (``transformers`` initialises them with std 0.02).

    The engine feeds hidden_states[-3] to the DiT; at std 0.02 the prompt would hardly change the video, whereas
    a real Llama's hidden states are O(1). Called inside the seeded block, so it stays deterministic.
    """
    with torch.no_grad():
        model.get_input_embeddings().weight.normal_(0.0, 1.0)
    return model


def _save_transformer(out_dir: Path, config: dict[str, Any], seed: int) -> None:
    from diffusers import HunyuanVideoFramepackTransformer3DModel

    model = _seeded(seed, lambda: HunyuanVideoFramepackTransformer3DModel(**config))
    _shrink_transformer(model)
    model.save_pretrained(out_dir, safe_serialization=True)
    # lllyasviel's repos name the class of the original FramePack code; diffusers loads it into its own class.
    patch_json(out_dir / "config.json", {"_class_name": "HunyuanVideoTransformer3DModelPacked"}, sort_keys=True)


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _model_index() -> dict[str, Any]:
    import diffusers

    # As in the real repo (which also lists a non-FramePack HunyuanVideo transformer that the app replaces).
    return {
        "_class_name": "HunyuanVideoPipeline",
        "_diffusers_version": diffusers.__version__,
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "LlamaModel"],
        "text_encoder_2": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "LlamaTokenizerFast"],
        "tokenizer_2": ["transformers", "CLIPTokenizer"],
        "transformer": ["diffusers", "HunyuanVideoTransformer3DModel"],
        "vae": ["diffusers", "AutoencoderKLHunyuanVideo"],
    }


def _build_tree(root: Path, seed: int, transformer: str) -> dict[str, Any]:
    """Write every component under ``root``; return the manifest data (without the file list)."""
    from diffusers import AutoencoderKLHunyuanVideo, FlowMatchEulerDiscreteScheduler
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        LlamaConfig,
        LlamaModel,
        SiglipImageProcessor,
        SiglipVisionConfig,
        SiglipVisionModel,
    )

    # The same org/name layout that model_loading resolves, so the real loading code reads this tree unchanged.
    base = root / BASE_REPO
    redux = root / REDUX_REPO
    llama_tokens = build_llama_tokenizer(base / "tokenizer")
    clip_tokens = build_clip_tokenizer(base / "tokenizer_2")
    configs = tiny_configs(llama_tokens, clip_tokens, transformer)
    weighted = ("text_encoder", "text_encoder_2", "vae", "image_encoder", "transformer:original", "transformer:f1")
    seeds = {name: component_seed(seed, name) for name in weighted}

    _write_json(base / "model_index.json", _model_index())
    FlowMatchEulerDiscreteScheduler(**configs["scheduler"]).save_pretrained(base / "scheduler")

    text_encoder = _seeded(
        seeds["text_encoder"], lambda: _unit_scale_embeddings(LlamaModel(LlamaConfig(**configs["text_encoder"])))
    )
    # Small shards: the loader's sharded path (index.json + several files) is what the real 16 GB encoder uses.
    text_encoder.save_pretrained(base / "text_encoder", max_shard_size="100KB", safe_serialization=True)
    text_encoder_2 = _seeded(
        seeds["text_encoder_2"], lambda: CLIPTextModel(CLIPTextConfig(**configs["text_encoder_2"]))
    )
    text_encoder_2.save_pretrained(base / "text_encoder_2", safe_serialization=True)
    vae = _seeded(seeds["vae"], lambda: AutoencoderKLHunyuanVideo(**configs["vae"]))
    vae.save_pretrained(base / "vae", safe_serialization=True)

    image_encoder = _seeded(
        seeds["image_encoder"], lambda: SiglipVisionModel(SiglipVisionConfig(**configs["image_encoder"]))
    )
    image_encoder.save_pretrained(redux / "image_encoder", safe_serialization=True)
    SiglipImageProcessor(**configs["feature_extractor"]).save_pretrained(redux / "feature_extractor")
    # Without torchvision transformers 5 saves its PIL fallback's name; the real repo names the processor itself.
    patch_json(
        redux / "feature_extractor" / "preprocessor_config.json",
        {"image_processor_type": "SiglipImageProcessor"},
        sort_keys=True,
    )

    for variant, repo in TRANSFORMER_REPOS.items():
        _save_transformer(root / repo, configs["transformer"], seeds[f"transformer:{variant}"])

    manifest = {"format_version": FORMAT_VERSION, "seed": seed, "component_seeds": seeds, "configs": configs}
    if transformer != "tiny":  # a tiny build's manifest stays as it was, so existing builds are still complete
        manifest["transformer_size"] = transformer
    return manifest


# --------------------------------------------------------------------------------------------------------------
# Atomic build
# --------------------------------------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _file_list(root: Path) -> dict[str, dict[str, Any]]:
    return {
        path.relative_to(root).as_posix(): {"size": path.stat().st_size, "sha256": _sha256(path)}
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.name != MANIFEST_NAME
    }


def is_complete_build(root: Path, seed: int, transformer: str = "tiny") -> bool:
    """True when ``root`` holds a finished, undamaged build of this format for ``seed`` and ``transformer`` size.

    Every file is hashed against the manifest (4 MB, a few milliseconds), so a damaged tiny set is rebuilt by
    running the build again, which is what the loader's error message tells the user to do.
    """
    try:
        manifest = json.loads((root / MANIFEST_NAME).read_text(encoding="utf-8"))
        if manifest.get("format_version") != FORMAT_VERSION or manifest.get("seed") != seed:
            return False
        if manifest.get("transformer_size", "tiny") != transformer:
            return False
        files = manifest["files"]
        return bool(files) and all(
            (root / rel).stat().st_size == entry["size"] and _sha256(root / rel) == entry["sha256"]
            for rel, entry in files.items()
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


# Where launch.py --demo and doctor --demo keep the set: tiny_models/ beside the code.
DEFAULT_TINY_MODELS_DIR = Path(__file__).resolve().parents[2] / "tiny_models"


def build_tiny_models(root: Path, seed: int = 0, transformer: str = "tiny") -> Path:
    """Build the tiny model set into ``root`` (or reuse a complete build for ``seed``) and return ``root``.

    ``transformer`` "medium" gives both transformer variants about 79M parameters (``TRANSFORMER_SIZES``): some
    300 MB each instead of a few hundred kB, for benchmarks where the DiT must dominate the time.

    The tree is written into a temporary folder beside ``root`` and renamed into place, so an interrupted build
    never leaves a half tree. An existing build for another seed (or an older format) is replaced; a folder that
    is not a tiny-model build at all is left alone and refused.
    """
    root = Path(root).expanduser().resolve()
    if transformer not in TRANSFORMER_SIZES:
        raise ValueError(f"unknown transformer size {transformer!r}; choose one of {', '.join(TRANSFORMER_SIZES)}")
    if is_complete_build(root, seed, transformer):
        logger.info("Tiny models for seed %d already in %s", seed, root)
        return root
    if root.exists() and not _replaceable(root):
        raise FileExistsError(
            f"{root} exists and is not a tiny model build; choose an empty or new folder for the tiny models"
        )
    root.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.building-", dir=root.parent))
    try:
        manifest = _build_tree(staging, seed, transformer)
        manifest["files"] = _file_list(staging)
        # The manifest is written last: its presence (with matching hashes) is what marks a build complete.
        _write_json(staging / MANIFEST_NAME, manifest)
        _move_into_place(staging, root, seed, transformer)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    logger.info("Built tiny models (seed %d) in %s in %.1f s", seed, root, time.perf_counter() - started)
    return root


def _replaceable(root: Path) -> bool:
    return root.is_dir() and (not any(root.iterdir()) or (root / MANIFEST_NAME).is_file())


def _move_into_place(staging: Path, root: Path, seed: int, transformer: str) -> None:
    if root.exists():
        if is_complete_build(root, seed, transformer):  # another process finished the same build first
            return
        # Swap via a side folder: root holds either the old tree or the new one, never a mix, and the old tree
        # is put back if the new one cannot be moved in.
        aside = Path(tempfile.mkdtemp(prefix=f".{root.name}.old-", dir=root.parent))
        os.replace(root, aside / "tree")
        try:
            os.replace(staging, root)
        except OSError:
            os.replace(aside / "tree", root)
            raise
        finally:
            if root.exists():
                shutil.rmtree(aside, ignore_errors=True)
        return
    try:
        os.replace(staging, root)
    except OSError:
        # Lost a race with a concurrent build of the same folder; theirs is as good as ours.
        if not is_complete_build(root, seed, transformer):
            raise
