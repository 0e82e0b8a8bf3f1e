"""How big each model component is, and how it splits into repeated blocks, without loading a single weight.

For each component that holds weights (``framepack_core.models.components.WEIGHT_COMPONENTS``): the parameter
count, the repeated block lists that block-level offloading moves one block at a time (the transformer's 20 dual-stream
``transformer_blocks`` and 40 ``single_transformer_blocks``, the LLaMA's ``layers``, CLIP's and SigLIP's
``encoder.layers``; the VAE has none and moves whole), the rest ("remainder": embeddings, refiners, heads), and
the dtype the weights are stored in on disk. (transformers 4 nests CLIP and SigLIP one level deeper, as
``text_model.encoder.layers`` / ``vision_model.encoder.layers``, and so do checkpoints saved with it;
transformers 5 flattens them. A block list is matched after any such prefix, so both count the same.)

Two sources, tried in this order per component:

1. **safetensors headers** of a local copy: a ``--models-dir`` tree, or the Hugging Face cache. Only the
   8-byte length and the JSON header of each file are read (the sharded ``*.safetensors.index.json`` lists
   the files); nothing is downloaded, even when the component is missing (``ModelSource(offline=True)``).
2. **the built-in real configs** in ``framepack_core/models/configs/*.json``, instantiated on the meta device
   (no memory is allocated) and counted.

Disk dtypes assumed for the built-in configs (what the real repositories ship; the planner decides the dtype
weights are *held* in separately): transformer bfloat16 (lllyasviel's repos), LLaMA and CLIP text encoders
float16, VAE float16, SigLIP float16 (the official app loads all four in fp16; that the SigLIP and VAE files
are fp16 on disk too is an assumption: not checked against the hub from this machine).
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any

from framepack_core.models.components import (
    DIT,
    IMAGE,
    TE,
    TE2,
    VAE,
    WEIGHT_COMPONENTS,
    Component,
    ModelVariant,
    weight_component,
)

# safetensors dtype codes -> (torch dtype name, bytes per element)
SAFETENSORS_DTYPES = MappingProxyType(
    {
        "BOOL": ("bool", 1), "U8": ("uint8", 1), "I8": ("int8", 1), "F8_E4M3": ("float8_e4m3fn", 1),
        "F8_E5M2": ("float8_e5m2", 1), "I16": ("int16", 2), "F16": ("float16", 2), "BF16": ("bfloat16", 2),
        "I32": ("int32", 4), "F32": ("float32", 4), "I64": ("int64", 8), "F64": ("float64", 8),
    }
)
_MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors library's own limit

# The repeated block lists of each component, in forward order (module paths inside the loaded model).
BLOCK_LISTS = MappingProxyType(
    {
        DIT: ("transformer_blocks", "single_transformer_blocks"),
        TE: ("layers",),
        TE2: ("encoder.layers",),
        IMAGE: ("encoder.layers",),
        VAE: (),
    }
)

ASSUMED_DISK_DTYPES = MappingProxyType(
    {
        DIT: "bfloat16",
        TE: "float16",
        TE2: "float16",
        IMAGE: "float16",
        VAE: "float16",
    }
)


def format_parameters(count: int) -> str:
    """12874314816 -> "12.874 B", 123060480 -> "123.1 M", 98765 -> "98,765"."""
    if count >= 1e9:
        return f"{count / 1e9:.3f} B"
    if count >= 1e6:
        return f"{count / 1e6:.1f} M"
    return f"{count:,}"


@dataclass(frozen=True)
class BlockList:
    """One repeated block list: ``path`` inside the model and each block's parameter count, in forward order."""

    path: str
    block_parameters: tuple[int, ...]

    @property
    def count(self) -> int:
        return len(self.block_parameters)

    @property
    def parameters(self) -> int:
        return sum(self.block_parameters)


@dataclass(frozen=True)
class ComponentSize:
    """One component's parameter count, split into its block lists and the rest, and where that came from."""

    component: Component
    parameters: int
    blocks: tuple[BlockList, ...]
    disk_dtype: str  # torch dtype name, the one most of the bytes on disk have
    source: str  # "headers" or "config"
    location: str  # the folder read, or the built-in config file

    @property
    def block_parameters(self) -> int:
        return sum(b.parameters for b in self.blocks)

    @property
    def remainder_parameters(self) -> int:
        """Parameters outside the block lists (embeddings, refiners, norms, heads): they stay on the device."""
        return self.parameters - self.block_parameters

    @property
    def block_count(self) -> int:
        return sum(b.count for b in self.blocks)

    def block_sizes(self) -> tuple[int, ...]:
        """Every block's parameter count in forward order, over all block lists."""
        return tuple(p for b in self.blocks for p in b.block_parameters)

    def describe(self) -> str:
        blocks = " + ".join(f"{b.count} x {b.path}" for b in self.blocks) or "no block list (moves whole)"
        where = "safetensors headers" if self.source == "headers" else "built-in config"
        return (f"{self.component.value}: {format_parameters(self.parameters)} parameters ({blocks}), "
                f"{self.disk_dtype} on disk, from {where} ({self.location})")


@dataclass(frozen=True)
class ModelSizes:
    """The weight-holding components' sizes (the transformer is the one of ``variant``)."""

    components: tuple[ComponentSize, ...]
    variant: ModelVariant = ModelVariant.ORIGINAL

    def __getitem__(self, component: Component | str) -> ComponentSize:
        wanted = weight_component(component)
        for size in self.components:
            if size.component == wanted:
                return size
        raise KeyError(wanted.value)

    @property
    def all_builtin(self) -> bool:
        return all(size.source == "config" for size in self.components)

    def describe_sources(self) -> str:
        """One line per component saying where its size came from."""
        return "\n".join(size.describe() for size in self.components)


# --------------------------------------------------------------------------------------------------------------
# safetensors headers
# --------------------------------------------------------------------------------------------------------------


def read_safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of one safetensors file (``__metadata__`` removed), reading only the header bytes.

    Layout: an 8-byte little-endian length N, then N bytes of JSON mapping each tensor name to its
    ``dtype``, ``shape`` and ``data_offsets``. Raises ``ValueError`` for a file that is not one.
    """
    with Path(path).open("rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise ValueError(f"{path}: too short for a safetensors header")
        (length,) = struct.unpack("<Q", prefix)
        if length > _MAX_HEADER_BYTES:
            raise ValueError(f"{path}: header length {length} is not plausible")
        raw = handle.read(length)
    if len(raw) < length:
        raise ValueError(f"{path}: truncated header")
    header = json.loads(raw.decode("utf-8"))
    if not isinstance(header, dict):
        raise ValueError(f"{path}: the header is not a JSON object")  # noqa: TRY004 - a bad file, not a bad argument
    header.pop("__metadata__", None)
    return header


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files of a model folder: the shards its ``*.safetensors.index.json`` names, if any."""
    folder = Path(folder)
    indexes = sorted(folder.glob("*.safetensors.index.json"))
    if indexes:
        names: set[str] = set()
        for index in indexes:
            names.update(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        return [folder / name for name in sorted(names)]
    return sorted(folder.glob("*.safetensors"))


def _block_pattern(path: str) -> re.Pattern[str]:
    # The list may sit under a prefix ("text_model.encoder.layers.0." in transformers 4 CLIP checkpoints,
    # "model.layers.0." in a LlamaForCausalLM) but must start at a name boundary: "transformer_blocks" must not
    # match inside "single_transformer_blocks".
    return re.compile(rf"^(?:.*\.)?{re.escape(path)}\.(\d+)\.")


def _split_blocks(
    named_counts: Iterable[tuple[str, int]], block_paths: tuple[str, ...]
) -> tuple[int, tuple[BlockList, ...]]:
    """Total parameters and per-block counts from (tensor name, element count) pairs."""
    patterns = [_block_pattern(p) for p in block_paths]
    per_block: list[dict[int, int]] = [{} for _ in block_paths]
    total = 0
    for name, count in named_counts:
        total += count
        for i, pattern in enumerate(patterns):
            match = pattern.match(name)
            if match:
                index = int(match.group(1))
                per_block[i][index] = per_block[i].get(index, 0) + count
                break
    blocks = tuple(
        BlockList(path, tuple(counts[i] for i in sorted(counts))) for path, counts in zip(block_paths, per_block)
        if counts
    )
    return total, blocks


def sizes_from_safetensors(folder: Path, component: Component | str) -> ComponentSize:
    """A component's size from the headers of the safetensors files in ``folder`` (no tensor is read).

    Raises ``FileNotFoundError`` when the folder has no weights and ``ValueError`` for an unreadable header.
    """
    component = weight_component(component)
    files = weight_files(folder)
    if not files:
        raise FileNotFoundError(f"no .safetensors weights in {folder}")
    named: list[tuple[str, int]] = []
    bytes_by_dtype: dict[str, int] = {}
    for path in files:
        for name, entry in read_safetensors_header(path).items():
            dtype, itemsize = SAFETENSORS_DTYPES.get(entry["dtype"], (entry["dtype"].lower(), 0))
            numel = 1
            for dim in entry["shape"]:
                numel *= int(dim)
            named.append((name, numel))
            bytes_by_dtype[dtype] = bytes_by_dtype.get(dtype, 0) + numel * itemsize
    total, blocks = _split_blocks(named, BLOCK_LISTS[component])
    disk_dtype = max(bytes_by_dtype, key=bytes_by_dtype.__getitem__)
    return ComponentSize(component, total, blocks, disk_dtype, "headers", str(folder))


# --------------------------------------------------------------------------------------------------------------
# Built-in configs on the meta device
# --------------------------------------------------------------------------------------------------------------

_CONFIG_FILES = MappingProxyType(
    {
        TE: "text_encoder.json",
        TE2: "text_encoder_2.json",
        IMAGE: "image_encoder.json",
        VAE: "vae.json",
        DIT: "transformer.json",
    }
)


def builtin_config(component: Component | str) -> dict[str, Any]:
    """The real config of ``component`` as shipped in ``framepack_core/models/configs`` ("_" keys removed)."""
    name = _CONFIG_FILES[weight_component(component)]
    text = (resources.files("framepack_core.models") / "configs" / name).read_text(encoding="utf-8")
    return {k: v for k, v in json.loads(text).items() if not k.startswith("_")}


def _build_module(component: Component) -> Any:
    """The component's real class with its real config; call inside a meta-device context."""
    config = builtin_config(component)
    if component == DIT:
        from diffusers import HunyuanVideoFramepackTransformer3DModel

        return HunyuanVideoFramepackTransformer3DModel(**config)
    if component == VAE:
        from diffusers import AutoencoderKLHunyuanVideo

        return AutoencoderKLHunyuanVideo(**config)
    if component == TE:
        from transformers import LlamaConfig, LlamaModel

        return LlamaModel(LlamaConfig(**config))
    if component == TE2:
        from transformers import CLIPTextConfig, CLIPTextModel

        return CLIPTextModel(CLIPTextConfig(**config))
    from transformers import SiglipVisionConfig, SiglipVisionModel

    return SiglipVisionModel(SiglipVisionConfig(**config))


def module_size(module: Any, component: Component | str, source: str, location: str,
                disk_dtype: str) -> ComponentSize:
    """Count a built (meta or real) module's parameters, split by ``BLOCK_LISTS``."""
    component = weight_component(component)
    named = ((name, p.numel()) for name, p in module.named_parameters())
    total, blocks = _split_blocks(named, BLOCK_LISTS[component])
    return ComponentSize(component, total, blocks, disk_dtype, source, location)


@cache
def sizes_from_config(component: Component | str) -> ComponentSize:
    """A component's size from its built-in real config, built on the meta device (no memory, ~0.3 s for the
    13 B transformer once diffusers and transformers are imported). Pure, so cached."""
    import torch

    component = weight_component(component)
    with torch.device("meta"):
        module = _build_module(component)
    return module_size(module, component, "config", f"models/configs/{_CONFIG_FILES[component]}",
                       ASSUMED_DISK_DTYPES[component])


def builtin_sizes(variant: ModelVariant | str = ModelVariant.ORIGINAL) -> ModelSizes:
    """All weight-holding components from the built-in real configs (both transformer variants share one
    architecture)."""
    return ModelSizes(tuple(sizes_from_config(c) for c in WEIGHT_COMPONENTS), variant=ModelVariant(variant))


# --------------------------------------------------------------------------------------------------------------
# Local copies first, built-in configs otherwise
# --------------------------------------------------------------------------------------------------------------


def local_component_folder(component: Component | str, variant: ModelVariant | str = ModelVariant.ORIGINAL,
                           models_dir: Path | None = None, cache_dir: Path | None = None) -> Path | None:
    """The local folder with ``component``'s files, from ``models_dir`` or the Hugging Face cache, or None.

    Never downloads: the cache is asked with ``offline=True`` (huggingface_hub's ``local_files_only``).
    """
    from framepack_core.errors import FramePackError
    from framepack_core.models.loading import ModelSource, resolve_component

    source = ModelSource(models_dir=models_dir, offline=True, cache_dir=cache_dir)
    try:
        folder = resolve_component(source, Component(component), variant)
    except FramePackError:
        return None
    return folder if folder.is_dir() else None


def find_sizes(variant: ModelVariant | str = ModelVariant.ORIGINAL, models_dir: Path | None = None,
               cache_dir: Path | None = None) -> tuple[ModelSizes, tuple[str, ...]]:
    """Each component's size from a local copy's headers when there is one, else from the built-in config.

    Returns the sizes and notes on components whose local copy was there but unreadable (those fall back too).
    """
    variant = ModelVariant(variant)
    sizes: list[ComponentSize] = []
    notes: list[str] = []
    for component in WEIGHT_COMPONENTS:
        folder = local_component_folder(component, variant, models_dir, cache_dir)
        if folder is not None:
            try:
                sizes.append(sizes_from_safetensors(folder, component))
                continue
            except (OSError, ValueError, KeyError, TypeError) as error:
                notes.append(f"{component.value}: the local copy in {folder} is unreadable ({error}); "
                             "using the built-in config")
        sizes.append(sizes_from_config(component))
    return ModelSizes(tuple(sizes), variant=variant), tuple(notes)
