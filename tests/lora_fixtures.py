"""Small valid LoRA files for tests that need real files in a LoRA folder (diffusers/PEFT keys); each seed gives
different weights, so different files and SHA-256s.

Each file holds one layer shaped for the tiny transformer and one shaped for the full-size one (the built-in
config), so it is a valid LoRA for either: a submit-time check against the built-in config (a service that does not
know the tiny models' folder) and the tiny engine each match one layer and report the other as unmatched. The
full-size layer is rank 2, about 150 KB.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

TINY_TARGET = "transformer_blocks.0.attn.to_q"
FULL_SIZE_TARGET = "single_transformer_blocks.0.proj_out"
RANK = 2


def write_tiny_lora(path: Path, models_dir: Path, seed: int) -> Path:
    """A rank-2 LoRA for the tiny transformer in ``models_dir`` (and one layer of the full-size one), at ``path``."""
    import torch
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for config_dir, target in ((models_dir, TINY_TARGET), (None, FULL_SIZE_TARGET)):
        out_features, in_features = _layers(config_dir)[target]
        tensors[f"transformer.{target}.lora_A.weight"] = torch.randn(RANK, in_features, generator=generator)
        tensors[f"transformer.{target}.lora_B.weight"] = torch.randn(out_features, RANK, generator=generator) * 0.01
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))
    return path


@cache
def _layers(models_dir: Path | None) -> dict[str, tuple[int, int]]:
    """The transformer's layer shapes from ``models_dir``'s config (None: the built-in full-size one)."""
    from framepack_core.lora import transformer_layers
    from framepack_core.lora.files import transformer_config

    return transformer_layers(transformer_config(models_dir)[0])
