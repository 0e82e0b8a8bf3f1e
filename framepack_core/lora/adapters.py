"""A job's LoRAs on the loaded transformer, through diffusers' PEFT adapters.

Each LoRA file is read and converted once per process (``LoraLibrary``, by SHA-256) and loaded once into each
transformer (``TransformerLoras``, the adapter named after the file's SHA-256). A job then only switches its
adapters on at its weights (``set_adapters``): changing weights between jobs reloads neither the model nor the file.
After the job every adapter is switched off, so a job without LoRAs computes exactly what a fresh engine does.

Fusing (``lora_fuse``) merges the active adapters into the base weights for the job. PEFT's unmerge subtracts the
delta again, which is not exact in floating point, so the touched base weights are copied (to the CPU) first and
put back bit for bit afterwards. It is skipped, with a note, on an fp8-stored transformer (the LoRA's small change
would be rounded away in fp8: the "weak effect with fp8" complaint) and when the transformer's blocks are offloaded
(merged weights would have to be written back into the offloaded copies).

fp8 storage (diffusers layerwise casting) never reaches the adapter weights: loaded before the cast, diffusers'
``enable_layerwise_casting`` skips PEFT's ``lora_A``/``lora_B`` layers; loaded after it, PEFT would give the new
layers the base layer's fp8 dtype, so they are moved to the compute dtype (``TransformerLoras.load``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from framepack_core.errors import InvalidInputError
from framepack_core.jobs.spec import file_sha256
from framepack_core.lora.files import LoraDescription, inspect_lora, transformer_config, transformer_layers
from framepack_core.memory.adapters import AdapterParameters
from framepack_core.memory.plan import ComponentPlan
from framepack_core.request import LoraChoice

if TYPE_CHECKING:
    from framepack_core.models.sizes import ComponentSize

FIELD = "loras"
# Layers diffusers' layerwise casting skips only by an anchored name ("^proj_out$"): wrapped by PEFT they would be
# renamed "proj_out.base_layer" and cast to fp8, losing the fp32 output projection. Left out under fp8 storage.
_FP8_UNWRAPPABLE = ("proj_in", "proj_out")
_LISTED_LAYERS = 8  # unmatched keys named in a notice before "and N more"


@dataclass(frozen=True)
class LoraFile:
    """One LoRA of a job: its file, the file's SHA-256, the weight it runs at and what the file holds."""

    path: Path
    sha256: str
    weight: float
    description: LoraDescription

    @property
    def adapter_name(self) -> str:
        return f"lora_{self.sha256[:16]}"

    def record(self, fused: bool) -> dict[str, Any]:
        """How the output's fingerprint names this LoRA."""
        return {"file": self.path.name, "sha256": self.sha256, "weight": self.weight,
                "format": self.description.format, "fused": fused}


@dataclass
class LoraActivation:
    """What a job's LoRAs did: notes for the job's events and one record per LoRA for the output's fingerprint."""

    notes: list[str] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)


def transformer_layers_for(models_dir: Path | None, variant: str) -> dict[str, tuple[int, int]]:
    """The transformer's linear layers for matching LoRA keys, from its config only (no weights)."""
    return transformer_layers(transformer_config(models_dir, variant)[0])


class LoraLibrary:
    """The LoRA files this process has read, by SHA-256: each is read, matched and converted once."""

    def __init__(self) -> None:
        self._descriptions: dict[str, LoraDescription] = {}
        self._hashes: dict[Path, tuple[int, int, str]] = {}  # file -> (size, mtime_ns, sha256)
        self.files_read = 0  # how many files were read and converted (a file seen again is not read again)
        self.files_hashed = 0  # how many times a file was read whole for its SHA-256

    def job_loras(self, choices: Sequence[LoraChoice],
                  layers: Callable[[], dict[str, tuple[int, int]]]) -> list[LoraFile]:
        """The job's LoRAs, each checked against the transformer's ``layers`` (asked for only when a file is new).
        Raises ``InvalidInputError`` (field ``loras``) for a missing, unreadable or foreign file."""
        loras = []
        for choice in choices:
            path = Path(choice.path)
            if not path.is_file():
                raise InvalidInputError(FIELD, f"no LoRA file at {path}", "Give the path of a .safetensors LoRA file.")
            sha256 = self._sha256(path)
            description = self._descriptions.get(sha256)
            if description is None:
                description = inspect_lora(path, layers(), field=FIELD)
                self._descriptions[sha256] = description
                self.files_read += 1
            loras.append(LoraFile(path, sha256, choice.weight, description))
        return loras

    def _sha256(self, path: Path) -> str:
        """The file's SHA-256, read again only when its size or modification time changed: LoRAs are hundreds of
        MB, and the page's estimate asks for them at every change of a setting."""
        stat = path.stat()
        key = path.resolve()
        known = self._hashes.get(key)
        if known is not None and known[:2] == (stat.st_size, stat.st_mtime_ns):
            return known[2]
        sha256 = file_sha256(path)
        self.files_hashed += 1
        self._hashes[key] = (stat.st_size, stat.st_mtime_ns, sha256)
        return sha256


def adapter_parameters(loras: Iterable[LoraFile], transformer: ComponentSize) -> AdapterParameters:
    """The parameters the adapters of ``loras`` add to the transformer of size ``transformer``, each file counted
    once (by SHA-256) and at any weight: an adapter occupies memory whether or not a job switches it on."""
    lists, first = {}, 0
    for block_list in transformer.blocks:  # each list's first block's index in forward order, and its length
        lists[block_list.path] = (first, block_list.count)
        first += block_list.count
    per_block, remainder, unwrappable = [0] * first, 0, 0
    for lora in {lora.sha256: lora for lora in loras}.values():
        for key, tensor in lora.description.converted.items():
            block_list, _, rest = key.removeprefix("transformer.").partition(".")
            index = rest.partition(".")[0]
            start, count = lists.get(block_list, (0, 0))
            if index.isdigit() and int(index) < count:
                per_block[start + int(index)] += tensor.numel()
            elif block_list in _FP8_UNWRAPPABLE:
                unwrappable += tensor.numel()
            else:
                remainder += tensor.numel()
    return AdapterParameters(tuple(per_block), remainder, unwrappable)


def fuse_refusal(plan: ComponentPlan | None) -> str | None:
    """Why the transformer's placement forbids fusing LoRAs into its weights, or None when it allows it."""
    if plan is None:
        return None
    if plan.fp8:
        return ("the transformer is stored in fp8, where a LoRA's small change to each weight would be rounded away; "
                f"the LoRAs run unmerged instead, in {plan.compute_dtype}")
    if plan.group_offloaded:
        return ("the memory plan offloads the transformer's blocks, and merged weights would have to be written "
                "into the offloaded copies; the LoRAs run unmerged instead")
    return None


class TransformerLoras:
    """The LoRA adapters of one loaded transformer, kept for as long as the transformer is."""

    def __init__(self, transformer: torch.nn.Module, compute_dtype: torch.dtype, fp8: bool) -> None:
        self.transformer = transformer
        self.compute_dtype = compute_dtype
        self.fp8 = fp8
        self._loaded: dict[str, list[str]] = {}  # SHA-256 -> the modules left out of it (fp8)
        self._files: dict[str, LoraFile] = {}  # SHA-256 -> the file loaded
        self._fused: list[tuple[torch.nn.Parameter, torch.Tensor]] = []  # base weights and their exact copies

    @property
    def loaded(self) -> list[LoraFile]:
        """The LoRAs whose adapters this transformer holds (switched on or not)."""
        return list(self._files.values())

    def missing(self, loras: Sequence[LoraFile]) -> list[LoraFile]:
        return [lora for lora in loras if lora.sha256 not in self._loaded]

    def load(self, loras: Sequence[LoraFile]) -> None:
        """Add each LoRA not loaded yet as an adapter (switched off until a job activates it). Call while the
        transformer is not placed: offloading hooks must be put on after the new layers exist."""
        for lora in self.missing(loras):
            converted, left_out = lora.description.converted, []
            if self.fp8:
                left_out = sorted({key.split(".")[1] for key in converted if key.split(".")[1] in _FP8_UNWRAPPABLE})
                converted = {k: v for k, v in converted.items() if k.split(".")[1] not in _FP8_UNWRAPPABLE}
            if converted:
                with warnings.catch_warnings():  # several adapters in one model is what this class is for
                    warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
                    self.transformer.load_lora_adapter(converted, adapter_name=lora.adapter_name,
                                                       prefix="transformer")
                self._keep_out_of_fp8(lora.adapter_name)
            self._loaded[lora.sha256] = left_out
            self._files[lora.sha256] = lora
        if self._loaded:
            self.transformer.disable_lora()

    def activate(self, loras: Sequence[LoraFile], fuse: bool, refusal: str | None) -> LoraActivation:
        """Switch on the job's adapters at their weights (every other adapter off), fused when asked and allowed."""
        if self._fused:  # the last job was not ended (``deactivate``): never merge on top of merged weights
            self.deactivate()
        activation = LoraActivation()
        for lora in loras:
            activation.notes += _notes(lora, self._loaded.get(lora.sha256, []))
        active = [lora for lora in loras if lora.weight != 0 and self._has_adapter(lora)]
        fused = False
        if not active:
            self.deactivate()
        else:
            self.transformer.enable_lora()
            self.transformer.set_adapters([lora.adapter_name for lora in active], [lora.weight for lora in active])
            self.transformer.requires_grad_(False)  # PEFT marks active adapters trainable; inference needs no grads
            if fuse and refusal is not None:
                activation.notes.append(f"LoRAs not merged: {refusal}.")
            elif fuse:
                self._fuse([lora.adapter_name for lora in active])
                fused = True
        merged = {lora.sha256 for lora in active} if fused else set()
        activation.records = [lora.record(lora.sha256 in merged) for lora in loras]
        return activation

    def deactivate(self) -> None:
        """Put fused base weights back exactly and switch every adapter off. Safe to call twice."""
        if self._fused:
            self.transformer.unfuse_lora()  # PEFT's own bookkeeping; the weights are then restored exactly below
            with torch.no_grad():
                for parameter, original in self._fused:
                    parameter.data.copy_(original)
            self._fused = []
        if self._adapter_names():
            self.transformer.disable_lora()

    # Internals ------------------------------------------------------------------------------------------------

    def _fuse(self, adapter_names: list[str]) -> None:
        from peft.tuners.tuners_utils import BaseTunerLayer

        for module in self.transformer.modules():
            if isinstance(module, BaseTunerLayer) and any(name in module.lora_A for name in adapter_names):
                weight = module.get_base_layer().weight
                self._fused.append((weight, weight.detach().to("cpu", copy=True)))
        self.transformer.fuse_lora(lora_scale=1.0, adapter_names=adapter_names)

    def _keep_out_of_fp8(self, adapter_name: str) -> None:
        """PEFT gives new adapter layers the base layer's dtype; over an fp8-stored base that would store the LoRA
        in fp8 (and compute with fp8 inputs), so those go to the compute dtype."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        for module in self.transformer.modules():
            if not isinstance(module, BaseTunerLayer) or adapter_name not in module.lora_A:
                continue
            for layers in (module.lora_A, module.lora_B):
                if layers[adapter_name].weight.dtype.itemsize == 1:  # the float8 types
                    layers[adapter_name].to(self.compute_dtype)

    def _adapter_names(self) -> list[str]:
        return list(getattr(self.transformer, "peft_config", {}) or {})

    def _has_adapter(self, lora: LoraFile) -> bool:
        return lora.adapter_name in self._adapter_names()


def _notes(lora: LoraFile, left_out: list[str]) -> list[str]:
    notes = []
    unmatched = sorted(lora.description.unmatched)
    if unmatched:
        listed = ", ".join(unmatched[:_LISTED_LAYERS])
        more = f" and {len(unmatched) - _LISTED_LAYERS} more" if len(unmatched) > _LISTED_LAYERS else ""
        notes.append(f"LoRA {lora.path.name}: {len(unmatched)} key(s) match no layer of the FramePack transformer and "
                     f"are left out: {listed}{more}")
    if left_out:
        notes.append(f"LoRA {lora.path.name}: its layer(s) {', '.join(left_out)} are left out: the transformer is "
                     "stored in fp8 and keeps those layers out of the fp8 casting only by their exact names")
    return notes
