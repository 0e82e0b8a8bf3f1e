"""Reading a LoRA safetensors file and matching it against the FramePack transformer's layers."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from framepack_core.errors import InvalidInputError
from framepack_core.lora.keys import MUSUBI, LoraKey, kohya_name, looks_like_flux, parse_key, source_table

_FIELD = "lora"
_WHICH_LORA = "Use a LoRA trained for FramePack or HunyuanVideo (diffusers, musubi-tuner or kohya keys)."


@dataclass
class LoraDescription:
    """What a LoRA file holds, seen against one transformer. ``converted`` has diffusers/PEFT keys
    (``transformer.<module>.lora_A.weight`` / ``lora_B.weight``) with alpha/rank folded into ``lora_B``, in float32
    so the folding loses nothing before a later cast."""

    path: Path
    format: str
    ranks: dict[str, int]  # target module -> rank
    alphas: dict[str, float]  # target module -> alpha (the rank where the file gives none)
    matched: list[str]  # target modules, in the transformer's order
    unmatched: dict[str, str]  # file key -> why it matches no layer
    config_source: str = ""
    converted: dict[str, Any] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "format": self.format, "config": self.config_source,
                "ranks": sorted(set(self.ranks.values())), "alphas": sorted(set(self.alphas.values())),
                "matched": self.matched, "unmatched": self.unmatched}


def transformer_config(models_dir: Path | None, variant: str = "original") -> tuple[dict[str, Any], str]:
    """The transformer's config from ``models_dir`` (its config.json only) or the built-in one, and which it was."""
    from framepack_core.models.loading import TRANSFORMER_REPOS
    from framepack_core.models.sizes import builtin_config

    if models_dir is not None:
        path = Path(models_dir) / TRANSFORMER_REPOS[variant] / "config.json"
        if path.is_file():
            config = json.loads(path.read_text(encoding="utf-8"))
            return {k: v for k, v in config.items() if not k.startswith("_")}, str(path)
    return builtin_config("transformer"), "built-in config"


def transformer_layers(config: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """The transformer's linear layers, name -> (out_features, in_features). Built on the meta device from the
    config, so this allocates no weights even for the full-size model."""
    import torch
    from diffusers import HunyuanVideoFramepackTransformer3DModel

    with torch.device("meta"):
        model = HunyuanVideoFramepackTransformer3DModel(**config)
    return {name: (module.out_features, module.in_features) for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear)}


def read_lora(path: Path, field: str = _FIELD) -> tuple[dict[str, Any], dict[str, str]]:
    """The file's tensors and metadata, or an InvalidInputError (naming ``field``) that says why it is no readable
    safetensors file."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(field, f"no LoRA file at {path}", "Give the path of a .safetensors LoRA file.")
    try:
        with safe_open(str(path), framework="pt") as handle:
            return {key: handle.get_tensor(key) for key in handle.keys()}, dict(handle.metadata() or {})  # noqa: SIM118 (no __iter__)
    except Exception as error:  # safetensors raises its own and OS errors; any of them means "unreadable"
        raise InvalidInputError(
            field, f"{path.name} is not a readable safetensors file ({error})",
            "The file may be truncated (an interrupted download) or not a LoRA at all: download it again.",
        ) from error


def inspect_lora(path: Path, layers: dict[str, tuple[int, int]], config_source: str = "",
                 field: str = _FIELD) -> LoraDescription:
    """Read the LoRA at ``path`` and match it against ``layers`` (from ``transformer_layers``). A refusal names
    ``field``: ``lora`` for ``lora inspect``, ``loras`` for a job."""
    tensors, metadata = read_lora(path, field)
    name = Path(path).name
    parsed = [parse_key(key) for key in tensors]
    keys = [key for key in parsed if key is not None]
    unmatched = {key: "not a LoRA weight" for key, parsed_key in zip(tensors, parsed) if parsed_key is None}
    if not keys:
        raise InvalidInputError(field, f"{name} holds no LoRA weights (no lora_A/lora_B or lora_down/lora_up keys)",
                                _WHICH_LORA)
    if looks_like_flux(list(tensors), metadata):
        raise InvalidInputError(field, f"{name} is a Flux LoRA (its layer names are Flux's), not a FramePack one",
                                _WHICH_LORA)
    description = LoraDescription(Path(path), Counter(key.family for key in keys).most_common(1)[0][0], {}, {}, [],
                                  unmatched, config_source)
    table = source_table(list(layers))
    by_kohya_name = {kohya_name(source): source for source in table}
    groups: dict[tuple[str, str], dict[str, LoraKey]] = {}
    for key in keys:
        groups.setdefault((key.family, key.module), {})[key.kind] = key
    for (family, module), parts in groups.items():
        source = by_kohya_name.get(module) if family == MUSUBI else module
        problem = _match(description, tensors, parts, table.get(source or ""), layers, module)
        if problem:
            description.unmatched.update({key.key: problem for key in parts.values()})
    order = {name: index for index, name in enumerate(layers)}
    description.matched.sort(key=order.__getitem__)
    if not description.matched:
        shapes = any("shape" in why for why in description.unmatched.values())
        why = " (the layers it names have other sizes: a LoRA for another model)" if shapes else ""
        raise InvalidInputError(field, f"{name} matches no layer of the FramePack transformer{why}", _WHICH_LORA)
    return description


def _match(description: LoraDescription, tensors: dict[str, Any], parts: dict[str, LoraKey],
           targets: tuple[str, ...] | None, layers: dict[str, tuple[int, int]], module: str) -> str | None:
    """Add the layer group to ``description``; return why it does not fit, or None when it was added."""
    if targets is None:
        return f"no layer {module} in the FramePack transformer"
    if any(target in description.ranks for target in targets):
        return f"a second LoRA pair for {', '.join(targets)} (under another name)"
    if "down" not in parts or "up" not in parts:
        return "half of a LoRA pair (lora_A/lora_down and lora_B/lora_up go together)"
    down, up = tensors[parts["down"].key], tensors[parts["up"].key]
    outs = [layers[target][0] for target in targets]
    in_features = layers[targets[0]][1]
    if down.ndim != 2 or up.ndim != 2 or up.shape[1] != down.shape[0]:
        return f"not a linear LoRA pair (shapes {tuple(down.shape)} and {tuple(up.shape)})"
    if down.shape[1] != in_features or up.shape[0] != sum(outs):
        return (f"shape mismatch: the file's layer is {up.shape[0]}x{down.shape[1]}, the transformer's "
                f"{'+'.join(map(str, outs))}x{in_features}")
    rank = int(down.shape[0])
    alpha = float(tensors[parts["alpha"].key]) if "alpha" in parts else float(rank)
    up = up.float() * (alpha / rank)
    # A fused projection's output rows are its targets' outputs one after another; the input side is shared.
    for target, rows in zip(targets, up.split(outs, dim=0)):
        description.converted[f"transformer.{target}.lora_A.weight"] = down.float().contiguous()
        description.converted[f"transformer.{target}.lora_B.weight"] = rows.contiguous()
        description.ranks[target], description.alphas[target] = rank, alpha
        description.matched.append(target)
    return None


def weight_deltas(converted: dict[str, Any], weight: float = 1.0) -> dict[str, Any]:
    """Target module -> the change ``weight * lora_B @ lora_A`` its weight gets, from a converted dict."""
    deltas = {}
    for key, down in converted.items():
        if key.endswith(".lora_A.weight"):
            module = key[len("transformer."): -len(".lora_A.weight")]
            deltas[module] = weight * (converted[f"transformer.{module}.lora_B.weight"] @ down)
    return deltas
