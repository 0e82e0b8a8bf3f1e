"""The memory plan: where each model component lives during a job, decided before the job starts.

The planner reads component sizes (``framepack_core.models.sizes``) and the machine's memory
(``framepack_core.memory.hardware``) and picks, per component, the cheapest placement that fits the VRAM and RAM budgets.
``framepack_core.memory.offload`` applies a plan to loaded modules with the diffusers hooks.

This module holds the plan's types, the model's constants and the plan as JSON; the search is
``framepack_core.memory.planner`` (``plan_memory``) and the words are ``framepack_core.memory.report``
(``describe``, ``next_plan_advice``). Everything is arithmetic on sizes: no model is loaded, no GPU is asked.

**Budgets.** VRAM budget = free VRAM - memory to preserve; the automatic preserve (``preserve_bytes=None``) is
max(0.5 GiB, 5 % of the card), for the desktop and other programs. RAM budget = available RAM - 2 GiB, the
process itself (torch with its CUDA libraries, diffusers, transformers, the UI). Peaks are reported without
that baseline. Sizes in GiB; transfers and bandwidths in decimal GB (10^9 B), as bandwidths are quoted.

**Dtypes** held and computed (``devices.default_config``): bf16 transformer, fp16 encoders and VAE on a GPU;
fp32 on the CPU. fp8 storage (``float8_e4m3fn``, computed in bf16 by diffusers layerwise casting) halves the
transformer's blocks; its non-block layers are counted in bf16. A job's LoRA adapter layers
(``framepack_core.memory.adapters``) are part of the transformer's weights, in its compute dtype, each counted in
the block it lives in (so it is resident or offloaded with that block).

**Stages** in engine order and the component each runs: text encoding (LLaMA + CLIP), VAE encode, image
encoding (SigLIP), then per section sampling (transformer) and VAE decode. For each stage:

    stage VRAM = allowance (0.75 GiB: cuBLAS/cuDNN workspaces, allocator fragmentation, small tensors)
               + the stage's activations (``framepack_core.memory.activations``)
               + the active component's device bytes
               + every RESIDENT component's weights
               + the transformer's never-moved part (non-block layers + resident blocks): the store keeps it
                 loaded between jobs, so a later job encodes its prompt with that part in place
    stage RAM  = every component's RAM copy (``host_bytes``) + the decoded section in float32 (decode stage);
                 with ``release_text_encoders`` the text encoders are not held in the section loop and the
                 transformer is not yet held while they encode (the first job's order)
    peak VRAM / RAM = the maximum over the stages.

On MPS the device and the host share one memory: a stage fits when its VRAM is within the VRAM budget (Metal's
recommended working set) and its VRAM + RAM within the RAM budget. On the CPU everything is RAM, activations
included; VRAM is 0.

**Per placement** (blocks in forward order; resident blocks are the first ones):

    RESIDENT  device = weights, RAM 0, moved 0
    SWAP      device = weights during its stage, RAM = weights (moved whole in and out around the stage)
    BLOCKS    device = non-block + resident blocks + the largest offloaded block (the one computing);
              RAM = the offloaded blocks (an encoder, used once per job, keeps its whole copy in RAM and
              nothing on the device after its stage); moved per call = the offloaded blocks
    STREAMED  device = non-block + the two largest blocks (computing + prefetched); RAM = all blocks (pinned);
              moved per call = all blocks
    DISK      as BLOCKS on the device; RAM = one block (read from the safetensors files as it is needed)

**Time per denoising step** (calls = 2 with real CFG, else 1; FLOPs per call from ``compute_cost``;
rates from ``CostModel``):

    resident = calls x FLOPs / compute rate
    BLOCKS   = calls x (FLOPs / rate + moved / host-to-device bandwidth)          (no overlap)
    STREAMED = calls x (max(FLOPs / rate, all blocks / bandwidth) + first block / bandwidth)
    DISK     = calls x (FLOPs / rate + moved / disk bandwidth)
    bytes moved per step = calls x moved per call

**Choices.** All RESIDENT when everything fits (untiled VAE first, then tiled). Otherwise the transformer, used
every step, has first claim and the VAE (used every section) second; the encoders, used once per job, are SWAP
(whole, around their stage), else BLOCKS, else DISK when RAM cannot hold them. The transformer's options come
in tiers: its native bf16 (RESIDENT, STREAMED on CUDA, BLOCKS with any number of resident blocks), then fp8
storage, then DISK (fp8 unless forbidden). Within the first tier with any plan that fits, the lowest modelled
step time wins (so BLOCKS gets the most resident blocks that fit, and STREAMED and BLOCKS are compared on CUDA;
MPS has no streams); ties go to a resident VAE, then to no VAE tiling, then to keeping the text encoders.
``fp8=True`` forces fp8 storage, ``fp8=False`` forbids it. VAE tiling (with slicing) is on when the untiled
decode would not fit. ``release_text_encoders`` is set when holding them in RAM through the section loop
would exceed the RAM budget. When nothing fits, the plan is the smallest one (DISK, tiled VAE swapped, encoders
from disk) with ``fits`` False and notes saying what is short and by how much.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType
from typing import Any

from framepack_core.events import Stage
from framepack_core.memory.activations import (
    decoded_latent_frames,
)
from framepack_core.memory.compute_cost import (
    MAX_TEXT_TOKENS,
    SIGLIP_TOKENS,
    SectionTokens,
    call_flops,
    section_tokens,
)
from framepack_core.models.components import DIT, IMAGE, TE, TE2, VAE, Component, ModelVariant, weight_component

GIB = 1024**3


class Placement(str, Enum):
    """Where a component's weights live while a job runs."""

    RESIDENT = "resident"  # on the device for the whole job
    SWAP = "swap"  # kept on the CPU, moved to the device whole for its stage and back after it
    BLOCKS = "blocks"  # diffusers block-level group offloading without streams: ``resident_blocks`` of its
    #                    repeated blocks stay on the device, every other block is moved in before it runs and
    #                    out after it; the non-block layers stay on the device (an encoder's, used once per
    #                    job, only during its own stage: its whole copy lives in RAM, see the module docstring)
    STREAMED = "streamed"  # diffusers block-level group offloading with CUDA-stream prefetch (CUDA only):
    #                        every block is moved each call, overlapped with the compute of the block before
    DISK = "disk"  # diffusers group offloading from safetensors files on disk: for machines short of RAM
    CPU = "cpu"  # runs on the CPU (the device is the CPU)


@dataclass(frozen=True)
class ComponentPlan:
    """How one component is stored and placed."""

    component: Component
    placement: Placement
    storage_dtype: str  # torch dtype name without "torch.": "bfloat16", "float16", "float32", "float8_e4m3fn"
    compute_dtype: str  # the dtype its layers compute in (differs from storage_dtype for fp8 storage)
    weight_bytes: int  # all its weights in storage_dtype (a transformer's LoRA layers in compute_dtype)
    device_bytes: int  # the most of its weights on the device at once during its stage
    host_bytes: int  # its weights held in host RAM (0 when resident, or when DISK keeps them on disk)
    resident_blocks: int | None = None  # BLOCKS: repeated blocks kept on the device; None otherwise
    total_blocks: int | None = None  # BLOCKS / STREAMED / DISK: how many repeated blocks it has
    blocks_per_group: int = 1  # BLOCKS / DISK: how many blocks move together
    vae_tiling: bool = False  # VAE only
    vae_slicing: bool = False  # VAE only
    lora_bytes: int = 0  # transformer only: the part of weight_bytes that is LoRA adapter layers

    @property
    def fp8(self) -> bool:
        return self.storage_dtype.startswith("float8")

    @property
    def group_offloaded(self) -> bool:
        """Whether diffusers' group offloading hooks hold its blocks (they see only the layers there when placed)."""
        return self.placement in (Placement.BLOCKS, Placement.STREAMED, Placement.DISK)


@dataclass(frozen=True)
class CostModel:
    """The stated figures the modelled times come from. Defaults: PCIe 4.0 x16 at a realistic 25 GB/s host to
    device with pinned memory, an NVMe SSD at 3 GB/s, and an RTX 4090's dense bf16 tensor rate (165 TFLOPS)."""

    name: str = "RTX 4090, PCIe 4.0 x16"
    host_to_device_gb_s: float = 25.0
    disk_gb_s: float = 3.0
    compute_tflops: float = 165.0


@dataclass(frozen=True)
class Workload:
    """What one job asks of the models: the bucket, the window, the model, real CFG and the prompt length.

    The packed tokens per section, and so the memory and FLOPs of a transformer call, depend on these alone
    (not on the video length: every section packs the same context).
    """

    height: int = 608  # bucket, pixels (multiple of 16)
    width: int = 640
    latent_window_size: int = 9
    variant: ModelVariant = ModelVariant.ORIGINAL  # same architecture, same shapes
    real_cfg: bool = False  # cfg != 1: a second (negative) transformer call per step
    text_tokens: int = MAX_TEXT_TOKENS  # real prompt tokens, at most 256 (the transformer drops padding)

    def __post_init__(self) -> None:
        section_tokens(self.height, self.width, self.latent_window_size, self.variant)  # validates all four
        object.__setattr__(self, "variant", ModelVariant(self.variant))
        if not 0 <= self.text_tokens <= MAX_TEXT_TOKENS:
            raise ValueError(f"text_tokens must be in 0..{MAX_TEXT_TOKENS}, got {self.text_tokens}")

    @classmethod
    def from_resolution(
        cls,
        resolution: int = 640,
        *,
        image_size: tuple[int, int] | None = None,
        latent_window_size: int = 9,
        variant: ModelVariant | str = ModelVariant.ORIGINAL,
        real_cfg: bool = False,
        text_tokens: int = MAX_TEXT_TOKENS,
    ) -> Workload:
        """The workload at base ``resolution``: the bucket of an ``image_size`` (height, width) when given,
        otherwise the bucket with the most packed tokens (so the plan holds for any input image)."""
        from framepack_core.media.buckets import buckets_for_resolution, find_nearest_bucket

        if image_size is not None:
            height, width = find_nearest_bucket(image_size[0], image_size[1], resolution=resolution)
        else:
            def weight(bucket: tuple[int, int]) -> tuple[int, int]:
                return section_tokens(*bucket, latent_window_size, variant).latent, bucket[0] * bucket[1]

            height, width = max(buckets_for_resolution(resolution), key=weight)
        return cls(height, width, latent_window_size, variant, real_cfg, text_tokens)

    @property
    def calls_per_step(self) -> int:
        return 2 if self.real_cfg else 1

    @property
    def tokens(self) -> SectionTokens:
        return section_tokens(self.height, self.width, self.latent_window_size, self.variant)

    @property
    def sequence_tokens(self) -> int:
        """What the transformer's blocks see: packed latent + SigLIP image + real text tokens."""
        return self.tokens.latent + SIGLIP_TOKENS + self.text_tokens

    @property
    def flops_per_call(self) -> int:
        return call_flops(self.tokens.latent, self.text_tokens)

    @property
    def decoded_latent_frames(self) -> int:
        return decoded_latent_frames(self.latent_window_size, self.variant)

    def describe(self) -> str:
        cfg = "real CFG on (2 calls per step)" if self.real_cfg else "CFG off (1 call per step)"
        return (f"{self.height}x{self.width}, window {self.latent_window_size}, {self.variant.value}, {cfg}, "
                f"{self.sequence_tokens:,} tokens per call ({self.tokens.latent:,} latent + {SIGLIP_TOKENS} image "
                f"+ {self.text_tokens} text), {self.flops_per_call / 1e12:.1f} TFLOP per call")


@dataclass(frozen=True)
class StagePeak:
    """One stage of a job and the memory the plan uses during it."""

    stage: Stage
    vram_bytes: int  # device: weights there + the stage's activations + the allowance
    ram_bytes: int  # host: weights held in RAM + host buffers (the process baseline not included)

    @property
    def label(self) -> str:
        """The stage as the report and ``--json`` name it: "text encoding", "VAE encode", ..., "VAE decode"."""
        return STAGE_LABELS[self.stage]


@dataclass(frozen=True)
class MemoryPlan:
    """A whole plan, with the figures it was chosen by. Byte counts are bytes; ``*_gb`` properties are GiB."""

    components: tuple[ComponentPlan, ...]
    device_type: str  # "cuda", "mps" or "cpu"
    device_name: str
    vram_budget_bytes: int  # what the plan may use on the device (free VRAM minus the memory to preserve)
    ram_budget_bytes: int  # what the plan may use in host RAM
    peak_vram_bytes: int  # weights on the device plus the largest activation peak, over the job's stages
    peak_ram_bytes: int  # weights and buffers in host RAM at the worst stage
    bytes_moved_per_step: int  # host or disk to device, per denoising step (all model calls of one step)
    step_time_s: float  # modelled seconds per denoising step with this plan
    resident_step_time_s: float  # the same if every weight fit on the device
    release_text_encoders: bool  # drop the text encoders from RAM after encoding (prompts stay cached)
    fits: bool  # both peaks within their budgets
    cost_model: CostModel = field(default_factory=CostModel)
    notes: tuple[str, ...] = ()
    # Added for reporting; every field below has a default so plans can still be built from the fields above.
    workload: Workload | None = None
    stages: tuple[StagePeak, ...] = ()  # per stage of the job, what the plan puts on the device and in RAM
    preserve_bytes: int = 0  # the VRAM left alone for other programs (subtracted from the free VRAM)
    ram_baseline_bytes: int = 0  # RAM assumed taken by the process itself (subtracted from the available RAM)
    device_allowance_bytes: int = 0  # added to every stage's device peak (workspaces, fragmentation)
    flops_per_call: int = 0  # one transformer call
    calls_per_step: int = 1  # 2 with real CFG
    sizes_source: str = ""  # where the component sizes came from
    unified_memory: bool = False  # MPS: device and host memory are one pool; fits is judged on their sum

    def component(self, component: Component | str) -> ComponentPlan:
        wanted = weight_component(component)
        for plan in self.components:
            if plan.component == wanted:
                return plan
        raise KeyError(wanted.value)

    @property
    def peak_vram_gb(self) -> float:
        return self.peak_vram_bytes / GIB

    @property
    def peak_ram_gb(self) -> float:
        return self.peak_ram_bytes / GIB

    @property
    def overhead_ratio(self) -> float:
        """Modelled step time over the all-resident step time (1.0 = offloading costs nothing)."""
        return self.step_time_s / self.resident_step_time_s if self.resident_step_time_s else 1.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary: peaks, budgets, transfers, times, and each component's placement."""
        return plan_to_dict(self)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)


DTYPE_BYTES = MappingProxyType({"float32": 4, "bfloat16": 2, "float16": 2, "float8_e4m3fn": 1})
FP8_STORAGE = "float8_e4m3fn"
MIN_PRESERVE_BYTES = GIB // 2
PRESERVE_FRACTION = 0.05
DEVICE_ALLOWANCE_BYTES = 3 * GIB // 4
RAM_BASELINE_BYTES = 2 * GIB
TRANSFORMER_INNER_DIM = 3072
STREAM_BLOCKS_ON_DEVICE = 2  # the block computing and the one being prefetched

# The stages of a job that hold weights, in engine order, and the components each one runs.
STAGES: tuple[tuple[Stage, frozenset[Component]], ...] = (
    (Stage.TEXT_ENCODING, frozenset({TE, TE2})),
    (Stage.VAE_ENCODING, frozenset({VAE})),
    (Stage.IMAGE_ENCODING, frozenset({IMAGE})),
    (Stage.SAMPLING, frozenset({DIT})),
    (Stage.DECODING, frozenset({VAE})),
)
LOOP_STAGES = frozenset({Stage.SAMPLING, Stage.DECODING})  # repeated for every section
# How the plan's table and JSON name the stages (the memory each stage's model needs, in the report's words).
STAGE_LABELS = MappingProxyType({
    Stage.TEXT_ENCODING: "text encoding",
    Stage.VAE_ENCODING: "VAE encode",
    Stage.IMAGE_ENCODING: "image encoding",
    Stage.SAMPLING: "sampling",
    Stage.DECODING: "VAE decode",
})


def runtime_dtypes(device_type: str) -> Mapping[Component, str]:
    """The dtype each component is held and computed in: ``framepack_core.models.devices.default_config``'s table (the
    official app's on a GPU, float32 on the CPU), by component."""
    from framepack_core.models.devices import default_config  # imports torch: only when a plan is made

    config = default_config(device_type)
    by_component = {TE: config.text_encoder_dtype, TE2: config.text_encoder_dtype, IMAGE: config.image_encoder_dtype,
                    VAE: config.vae_dtype, DIT: config.transformer_dtype}
    return MappingProxyType({c: str(dtype).removeprefix("torch.") for c, dtype in by_component.items()})


def automatic_preserve_bytes(vram_total_bytes: int) -> int:
    """The VRAM left for the desktop and other programs when none is asked for: max(0.5 GiB, 5 % of the card)."""
    return max(MIN_PRESERVE_BYTES, int(vram_total_bytes * PRESERVE_FRACTION))


def placement_text(plan: ComponentPlan) -> str:
    if plan.placement in (Placement.BLOCKS, Placement.DISK) and plan.total_blocks:
        return f"{plan.placement.value} ({plan.resident_blocks}/{plan.total_blocks} resident)"
    return plan.placement.value


def gib_text(count: int) -> str:
    return f"{count / GIB:.2f} GiB"


def _component_dict(plan: ComponentPlan) -> dict[str, Any]:
    return {
        "component": plan.component.value,
        "placement": plan.placement.value,
        "storage_dtype": plan.storage_dtype,
        "compute_dtype": plan.compute_dtype,
        "weight_gb": round(plan.weight_bytes / GIB, 3),
        "device_gb": round(plan.device_bytes / GIB, 3),
        "host_gb": round(plan.host_bytes / GIB, 3),
        "resident_blocks": plan.resident_blocks,
        "total_blocks": plan.total_blocks,
        "vae_tiling": plan.vae_tiling,
        "vae_slicing": plan.vae_slicing,
        **({"lora_gb": round(plan.lora_bytes / GIB, 3)} if plan.lora_bytes else {}),
    }


def plan_to_dict(plan: MemoryPlan) -> dict[str, Any]:
    """Everything a caller or ``--json`` needs; sizes in GiB (``*_gb``), transfers also in bytes."""
    workload = plan.workload
    return {
        "device_type": plan.device_type,
        "device_name": plan.device_name,
        "fits": plan.fits,
        "peak_vram_gb": round(plan.peak_vram_gb, 3),
        "peak_ram_gb": round(plan.peak_ram_gb, 3),
        "vram_budget_gb": round(plan.vram_budget_bytes / GIB, 3),
        "ram_budget_gb": round(plan.ram_budget_bytes / GIB, 3),
        "preserve_gb": round(plan.preserve_bytes / GIB, 3),
        "ram_baseline_gb": round(plan.ram_baseline_bytes / GIB, 3),
        "device_allowance_gb": round(plan.device_allowance_bytes / GIB, 3),
        "bytes_moved_per_step": plan.bytes_moved_per_step,
        "gb_moved_per_step": round(plan.bytes_moved_per_step / 1e9, 3),
        "step_time_s": round(plan.step_time_s, 4),
        "resident_step_time_s": round(plan.resident_step_time_s, 4),
        "overhead_ratio": round(plan.overhead_ratio, 4),
        "calls_per_step": plan.calls_per_step,
        "tflop_per_call": round(plan.flops_per_call / 1e12, 2),
        "release_text_encoders": plan.release_text_encoders,
        "unified_memory": plan.unified_memory,
        "workload": None if workload is None else {
            "height": workload.height, "width": workload.width, "latent_window_size": workload.latent_window_size,
            "variant": workload.variant.value, "real_cfg": workload.real_cfg, "text_tokens": workload.text_tokens,
            "latent_tokens": workload.tokens.latent, "sequence_tokens": workload.sequence_tokens,
        },
        "stages": [{"stage": s.label, "vram_gb": round(s.vram_bytes / GIB, 3), "ram_gb": round(s.ram_bytes / GIB, 3)}
                   for s in plan.stages],
        "components": [_component_dict(c) for c in plan.components],
        "cost_model": {"name": plan.cost_model.name, "host_to_device_gb_s": plan.cost_model.host_to_device_gb_s,
                       "disk_gb_s": plan.cost_model.disk_gb_s, "compute_tflops": plan.cost_model.compute_tflops},
        "sizes_source": plan.sizes_source,
        "notes": list(plan.notes),
    }
