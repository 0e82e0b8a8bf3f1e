"""Key names of the three LoRA families, and where each lands in the FramePack transformer.

Pure string work, no torch: ``source_table`` lists every module name a LoRA may use for a layer of the FramePack
transformer (its own diffusers name, and HunyuanVideo's original name), each with the target modules it feeds.
A fused HunyuanVideo projection feeds several targets, one block of its output rows each, in order.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DIFFUSERS = "diffusers/peft"
MUSUBI = "musubi-tuner/kohya"
HUNYUAN = "hunyuan-video (original names, lora_A/lora_B)"

_PREFIXES = ("transformer.", "diffusion_model.", "base_model.model.")
_KOHYA_PREFIX = "lora_unet_"

# HunyuanVideo original name (after "double_blocks.N.") -> the FramePack double block's module(s).
_DOUBLE = {
    "img_attn_qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "txt_attn_qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "img_attn_proj": ("attn.to_out.0",),
    "txt_attn_proj": ("attn.to_add_out",),
    "img_mlp.fc1": ("ff.net.0.proj",),
    "img_mlp.fc2": ("ff.net.2",),
    "txt_mlp.fc1": ("ff_context.net.0.proj",),
    "txt_mlp.fc2": ("ff_context.net.2",),
    "img_mod.linear": ("norm1.linear",),
    "txt_mod.linear": ("norm1_context.linear",),
}
_SINGLE = {
    "linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"),
    "linear2": ("proj_out",),
    "modulation.linear": ("norm.linear",),
}

# Module names that only a Flux LoRA uses: Flux shares HunyuanVideo's block naming (and, at full size, its widths),
# so these names are what tells the two apart when shapes cannot.
_FLUX_MARKERS = re.compile(r"(img_mod|txt_mod|modulation)[._]lin([._]|$)|(^|[._])x_embedder[._]lora|"
                           r"(^|[._])context_embedder[._]lora")


@dataclass(frozen=True)
class LoraKey:
    """One tensor of a LoRA file: the layer it belongs to (as the file names it) and what it is."""

    key: str
    module: str  # as the file names it, prefix removed (dots for the lora_A/B families, underscores for kohya)
    kind: str  # "down", "up" or "alpha"
    family: str


def parse_key(key: str) -> LoraKey | None:
    """The key's layer and role, or None when it is no LoRA tensor (a bias, dora scale, metadata...)."""
    if key.startswith(_KOHYA_PREFIX):
        body = key[len(_KOHYA_PREFIX):]
        for suffix, kind in ((".lora_down.weight", "down"), (".lora_up.weight", "up"), (".alpha", "alpha")):
            if body.endswith(suffix):
                return LoraKey(key, body[: -len(suffix)], kind, MUSUBI)
        return None
    body = key
    for prefix in _PREFIXES:
        if body.startswith(prefix):
            body = body[len(prefix):]
            break
    body = body.replace(".default.", ".")  # PEFT's adapter name inside the key
    for suffix, kind in ((".lora_A.weight", "down"), (".lora_B.weight", "up"), (".alpha", "alpha")):
        if body.endswith(suffix):
            module = body[: -len(suffix)]
            family = HUNYUAN if re.match(r"(double|single)_blocks\.\d+\.", module) else DIFFUSERS
            return LoraKey(key, module, kind, family)
    return None


# Training tools' metadata keys that name the base model (kohya/musubi "ss_*", ai-toolkit's modelspec).
_BASE_MODEL_METADATA = ("ss_base_model_version", "modelspec.architecture", "ss_sd_model_name")


def looks_like_flux(keys: list[str], metadata: dict[str, str] | None = None) -> bool:
    """Whether Flux-only layer names, or the trainer's note of the base model, say Flux. At full size a Flux LoRA
    of attention and MLP layers alone has HunyuanVideo's names and shapes, so the metadata is the only tell then."""
    noted = " ".join((metadata or {}).get(key, "") for key in _BASE_MODEL_METADATA).lower()
    return "flux" in noted or any(_FLUX_MARKERS.search(key) for key in keys)


def source_table(target_names: list[str]) -> dict[str, tuple[str, ...]]:
    """Every name a LoRA may give a layer (dotted) -> the FramePack target modules it feeds, for these targets."""
    table = {name: (name,) for name in target_names}
    for name in target_names:
        match = re.fullmatch(r"(single_)?transformer_blocks\.(\d+)\.(.+)", name)
        if not match:
            continue
        single, index, _ = match.groups()
        originals = _SINGLE if single else _DOUBLE
        block = f"{'single' if single else 'double'}_blocks.{index}"
        ours = f"{'single_' if single else ''}transformer_blocks.{index}"
        for original, parts in originals.items():
            table[f"{block}.{original}"] = tuple(f"{ours}.{part}" for part in parts)
    return table


def kohya_name(dotted: str) -> str:
    """kohya's spelling of a module path: every dot an underscore."""
    return dotted.replace(".", "_")
