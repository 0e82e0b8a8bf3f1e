"""What a video was made with, beyond its settings: model files, library versions, device, dtypes, attention,
runtime options (attention choice, compilation), cache and memory placement.

The official app's README says these change results, so every output carries them next to its job spec
(``framepack_core.jobs.output_description``). A fingerprint is plain JSON data; comparing two tells why a video may
not reproduce bit for bit on another machine (``fingerprint_differences``).

Nothing here touches CUDA unless the job runs on a CUDA device, and nothing imports gradio (its version is read
from the installed package's metadata, None when it is not installed).
"""

from __future__ import annotations

import importlib.metadata
import platform
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from framepack_core.memory.hardware import cpu_name

if TYPE_CHECKING:
    import torch

    from framepack_core.memory.plan import MemoryPlan
    from framepack_core.models.devices import DeviceConfig
    from framepack_core.models.loading import ModelSource
    from framepack_core.request import GenerationRequest

# Packages whose versions change the numbers (av: its bundled libx264 encodes the frames).
VERSIONED_PACKAGES = ("torch", "diffusers", "transformers", "gradio", "av")
# What ``fingerprint_differences`` compares: what decides the video's numbers, not where the weights lived.
_COMPARED = ("models", "versions", "device.type", "dtypes", "attention.backend")
_NOT_COMPARED = frozenset({"versions.gradio"})  # the UI library: recorded, but it never touches the numbers


class ModelsInfo(Protocol):
    """What the fingerprint needs of a ``ModelStore``."""

    source: ModelSource
    config: DeviceConfig


def package_versions() -> dict[str, str | None]:
    """Python's and each of ``VERSIONED_PACKAGES``' installed versions (None for one that is not installed)."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def device_name(device: torch.device) -> str:
    """The GPU's name for a CUDA device (asks the driver), else a description of the CPU or the Apple GPU."""
    if device.type == "cuda":
        import torch

        index = device.index if device.index is not None else torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(index)
        return f"{torch.cuda.get_device_name(index)} (sm_{major}{minor})"
    if device.type == "mps":
        return f"Apple GPU ({platform.machine() or 'arm64'})"
    return _cpu_model() or cpu_name()


def _cpu_model() -> str | None:
    """The CPU's model name on Linux (its instruction set decides CPU kernels, hence the last bits of a result)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                    return value.strip()
    except OSError:
        pass
    return None


def attention_info(device: torch.device, transformer: torch.nn.Module | None = None) -> dict[str, Any]:
    """The attention the transformer runs: ``backend`` is the diffusers dispatcher backend its attention processors
    use (a processor's own ``_attention_backend`` when set with ``set_attention_backend``, else the dispatcher's
    active one: ``DIFFUSERS_ATTN_BACKEND``, "native" by default, i.e. ``torch.nn.functional.scaled_dot_product_
    attention``). ``processors`` maps each processor class to what it calls; ``sdpa_kernels`` lists the torch SDPA
    kernels enabled on CUDA (torch picks among them per call), None elsewhere."""
    try:
        from diffusers.models.attention_dispatch import _AttentionBackendRegistry

        active, _ = _AttentionBackendRegistry.get_active_backend()
        default = str(getattr(active, "value", active))
    except (ImportError, AttributeError, KeyError):  # a diffusers without the dispatcher
        default = "unknown"
    processors: dict[str, str] = {}
    if transformer is not None:
        for module in transformer.modules():
            processor = getattr(module, "processor", None)
            if processor is None:
                continue
            if hasattr(processor, "_attention_backend"):
                chosen = processor._attention_backend
                used = default if chosen is None else str(getattr(chosen, "value", chosen))
            else:  # a processor that calls torch's SDPA itself, not through the dispatcher
                used = "torch sdpa (direct)"
            processors[type(processor).__name__] = used
    dispatched = sorted({used for used in processors.values() if used != "torch sdpa (direct)"})
    backend = ", ".join(dispatched) if dispatched else default
    kernels = None
    if device.type == "cuda":
        import torch

        flags = {"flash": torch.backends.cuda.flash_sdp_enabled, "mem_efficient":
                 torch.backends.cuda.mem_efficient_sdp_enabled, "math": torch.backends.cuda.math_sdp_enabled,
                 "cudnn": getattr(torch.backends.cuda, "cudnn_sdp_enabled", lambda: False)}
        kernels = [name for name, enabled in flags.items() if enabled()]
    return {"backend": backend, "processors": dict(sorted(processors.items())), "sdpa_kernels": kernels}


def runtime_info(models: ModelsInfo, transformer: torch.nn.Module | None = None) -> dict[str, Any]:
    """The process's runtime options as given (``--attention``, ``--compile``) and how many of the transformer's
    blocks really are compiled (compiled kernels round differently from eager ones)."""
    compiled = 0
    if transformer is not None:
        from framepack_core.models.compilation import compiled_block_count

        compiled = compiled_block_count(transformer)
    runtime = getattr(models, "runtime", None)
    return {"attention": getattr(runtime, "attention", None), "compile": bool(getattr(runtime, "compile", False)),
            "compiled_blocks": compiled}


def plan_placements(plan: MemoryPlan | None) -> dict[str, Any] | None:
    """Where the memory plan put each component and in which dtype (None when no plan was used)."""
    if plan is None:
        return None
    components = {}
    for c in plan.components:
        entry: dict[str, Any] = {"placement": c.placement.value, "storage_dtype": c.storage_dtype,
                                 "compute_dtype": c.compute_dtype, "fp8": c.fp8}
        if c.total_blocks is not None:
            entry.update(resident_blocks=c.resident_blocks, total_blocks=c.total_blocks,
                         blocks_per_group=c.blocks_per_group)
        if c.vae_tiling or c.vae_slicing:
            entry.update(vae_tiling=c.vae_tiling, vae_slicing=c.vae_slicing)
        components[c.component.value] = entry
    return {"device_type": plan.device_type, "fp8": any(c.fp8 for c in plan.components),
            "release_text_encoders": plan.release_text_encoders, "components": components}


def environment_fingerprint(models: ModelsInfo, plan: MemoryPlan | None, request: GenerationRequest, *,
                            identities: Mapping[str, str] | None = None,
                            transformer: torch.nn.Module | None = None,
                            loras: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """The fingerprint of a job run with ``models`` (a ``ModelStore``), ``plan`` and ``request``, as JSON data.

    ``identities``: the components' identities when already known (the job spec's ``models``); computed from
    ``models.source`` otherwise. ``transformer``: the loaded transformer, to report the attention its processors
    really use (without it, the dispatcher's default). ``loras``: each LoRA the job ran with (file name, SHA-256,
    weight, detected format, whether fused); recorded only when there are any.
    """
    if identities is None:
        from framepack_core.models.identity import model_identities

        identities = model_identities(models.source, str(getattr(request.model, "value", request.model)))
    config = models.config
    fingerprint = {
        "models": dict(identities),
        "versions": package_versions(),
        "platform": platform.platform(),
        "device": {"type": config.device.type, "name": device_name(config.device)},
        "dtypes": {name: str(getattr(config, f"{name}_dtype")).removeprefix("torch.")
                   for name in ("transformer", "text_encoder", "vae", "image_encoder")},
        "attention": attention_info(config.device, transformer),
        "runtime": runtime_info(models, transformer),
        "cache": {"method": str(getattr(request.cache, "value", request.cache)),
                  "threshold": request.effective_cache_threshold},
        "memory_plan": plan_placements(plan),
    }
    if loras:
        fingerprint["loras"] = [dict(lora) for lora in loras]
    return fingerprint


def fingerprint_differences(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """What differs between two fingerprints in what decides the numbers (model files, library versions, device
    type, dtypes, attention backend), as "what: recorded -> current" lines; keys absent from both are skipped."""
    lines = []
    for path in _COMPARED:
        ours, theirs = _at(recorded, path), _at(current, path)
        if isinstance(ours, Mapping) and isinstance(theirs, Mapping):
            # Models: only the components both used (another variant's transformer is another choice, not drift).
            keys = set(ours) & set(theirs) if path == "models" else set(ours) | set(theirs)
            for key in sorted(keys):
                if ours.get(key) != theirs.get(key) and f"{path}.{key}" not in _NOT_COMPARED:
                    lines.append(f"{path}.{key}: {ours.get(key)} -> {theirs.get(key)}")
        elif ours != theirs and (ours is not None or theirs is not None):
            lines.append(f"{path}: {ours} -> {theirs}")
    return lines


def _at(data: Mapping[str, Any], dotted: str) -> Any:
    value: Any = data
    for key in dotted.split("."):
        value = value.get(key) if isinstance(value, Mapping) else None
    return value
