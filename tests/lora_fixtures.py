"""Small valid LoRA files for the tiny transformer (diffusers/PEFT keys), for tests that need real files in a
LoRA folder: each seed gives different weights, so different files and SHA-256s."""

from __future__ import annotations

from pathlib import Path

TARGETS = ("transformer_blocks.0.attn.to_q", "single_transformer_blocks.0.proj_out")
RANK = 2


def write_tiny_lora(path: Path, models_dir: Path, seed: int) -> Path:
    """A rank-2 LoRA on two layers of the tiny transformer in ``models_dir``, written to ``path``."""
    import torch
    from safetensors.torch import save_file

    from framepack_core.lora import transformer_layers
    from framepack_core.lora.files import transformer_config

    layers = transformer_layers(transformer_config(models_dir)[0])
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for target in TARGETS:
        out_features, in_features = layers[target]
        tensors[f"transformer.{target}.lora_A.weight"] = torch.randn(RANK, in_features, generator=generator)
        tensors[f"transformer.{target}.lora_B.weight"] = torch.randn(out_features, RANK, generator=generator) * 0.01
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))
    return path
