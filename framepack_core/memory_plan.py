"""The memory plan: where each model component lives during a job, decided before the job starts.

The planner reads component sizes (``framepack_core.model_sizes``) and the machine's memory
(``framepack_core.hardware``) and picks, per component, the cheapest placement that fits the VRAM and RAM budgets.
``framepack_core.offload`` applies a plan to loaded modules with the diffusers hooks.

Only the types live at the top of this module; the planning functions (``plan_memory``, ``describe``,
``next_plan_advice``) follow them. Everything is arithmetic on sizes: no model is loaded, no GPU is asked.

**Budgets.** VRAM budget = free VRAM - memory to preserve; the automatic preserve (``preserve_bytes=None``) is
max(0.5 GiB, 5 % of the card), for the desktop and other programs. RAM budget = available RAM - 2 GiB, the
process itself (torch with its CUDA libraries, diffusers, transformers, the UI). Peaks are reported without
that baseline. Sizes in GiB; transfers and bandwidths in decimal GB (10^9 B), as bandwidths are quoted.

**Dtypes** held and computed (``devices.default_config``): bf16 transformer, fp16 encoders and VAE on a GPU;
fp32 on the CPU. fp8 storage (``float8_e4m3fn``, computed in bf16 by diffusers layerwise casting) halves the
transformer's blocks; its non-block layers are counted in bf16.

**Stages** in engine order and the component each runs: text encoding (LLaMA + CLIP), VAE encode, image
encoding (SigLIP), then per section sampling (transformer) and VAE decode. For each stage:

    stage VRAM = allowance (0.75 GiB: cuBLAS/cuDNN workspaces, allocator fragmentation, small tensors)
               + the stage's activations (``framepack_core.activations``)
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
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from framepack_core.activations import (
    IMAGE_ENCODING_BYTES,
    TEXT_ENCODING_BYTES,
    decoded_latent_frames,
    host_decode_buffer_bytes,
    transformer_activation_bytes,
    vae_decode_activation_bytes,
    vae_encode_activation_bytes,
)
from framepack_core.components import PlannedComponent
from framepack_core.compute_cost import MAX_TEXT_TOKENS, SIGLIP_TOKENS, SectionTokens, call_flops, section_tokens

if TYPE_CHECKING:
    from framepack_core.hardware import HardwareInfo
    from framepack_core.model_sizes import ComponentSize, ModelSizes

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

    component: PlannedComponent
    placement: Placement
    storage_dtype: str  # torch dtype name without "torch.": "bfloat16", "float16", "float32", "float8_e4m3fn"
    compute_dtype: str  # the dtype its layers compute in (differs from storage_dtype for fp8 storage)
    weight_bytes: int  # all its weights in storage_dtype
    device_bytes: int  # the most of its weights on the device at once during its stage
    host_bytes: int  # its weights held in host RAM (0 when resident, or when DISK keeps them on disk)
    resident_blocks: int | None = None  # BLOCKS: repeated blocks kept on the device; None otherwise
    total_blocks: int | None = None  # BLOCKS / STREAMED / DISK: how many repeated blocks it has
    blocks_per_group: int = 1  # BLOCKS / DISK: how many blocks move together
    vae_tiling: bool = False  # VAE only
    vae_slicing: bool = False  # VAE only

    @property
    def fp8(self) -> bool:
        return self.storage_dtype.startswith("float8")


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
    variant: str = "original"  # "original" or "f1": same architecture, same shapes
    real_cfg: bool = False  # cfg != 1: a second (negative) transformer call per step
    text_tokens: int = MAX_TEXT_TOKENS  # real prompt tokens, at most 256 (the transformer drops padding)

    def __post_init__(self) -> None:
        object.__setattr__(self, "variant", str(getattr(self.variant, "value", self.variant)))
        section_tokens(self.height, self.width, self.latent_window_size, self.variant)  # validates all three
        if not 0 <= self.text_tokens <= MAX_TEXT_TOKENS:
            raise ValueError(f"text_tokens must be in 0..{MAX_TEXT_TOKENS}, got {self.text_tokens}")

    @classmethod
    def from_resolution(
        cls,
        resolution: int = 640,
        *,
        image_size: tuple[int, int] | None = None,
        latent_window_size: int = 9,
        variant: str = "original",
        real_cfg: bool = False,
        text_tokens: int = MAX_TEXT_TOKENS,
    ) -> Workload:
        """The workload at base ``resolution``: the bucket of an ``image_size`` (height, width) when given,
        otherwise the bucket with the most packed tokens (so the plan holds for any input image)."""
        from framepack_core.buckets import buckets_for_resolution, find_nearest_bucket

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
        return (f"{self.height}x{self.width}, window {self.latent_window_size}, {self.variant}, {cfg}, "
                f"{self.sequence_tokens:,} tokens per call ({self.tokens.latent:,} latent + {SIGLIP_TOKENS} image "
                f"+ {self.text_tokens} text), {self.flops_per_call / 1e12:.1f} TFLOP per call")


@dataclass(frozen=True)
class StagePeak:
    """One stage of a job and the memory the plan uses during it."""

    stage: str  # "text encoding", "VAE encode", "image encoding", "sampling", "VAE decode"
    vram_bytes: int  # device: weights there + the stage's activations + the allowance
    ram_bytes: int  # host: weights held in RAM + host buffers (the process baseline not included)


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

    def component(self, component: PlannedComponent | str) -> ComponentPlan:
        wanted = PlannedComponent(component)
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


# ==============================================================================================================
# Planning
# ==============================================================================================================

DTYPE_BYTES = MappingProxyType({"float32": 4, "bfloat16": 2, "float16": 2, "float8_e4m3fn": 1})
FP8_STORAGE = "float8_e4m3fn"
MIN_PRESERVE_BYTES = GIB // 2
PRESERVE_FRACTION = 0.05
DEVICE_ALLOWANCE_BYTES = 3 * GIB // 4
RAM_BASELINE_BYTES = 2 * GIB
TRANSFORMER_INNER_DIM = 3072
STREAM_BLOCKS_ON_DEVICE = 2  # the block computing and the one being prefetched

TE, TE2, IMAGE, VAE, DIT = (PlannedComponent.TEXT_ENCODER, PlannedComponent.TEXT_ENCODER_2,
                            PlannedComponent.IMAGE_ENCODER, PlannedComponent.VAE, PlannedComponent.TRANSFORMER)
ENCODERS = (TE, TE2, IMAGE)

# The stages of a job in engine order, and the component each one runs.
STAGES: tuple[tuple[str, frozenset[PlannedComponent]], ...] = (
    ("text encoding", frozenset({TE, TE2})),
    ("VAE encode", frozenset({VAE})),
    ("image encoding", frozenset({IMAGE})),
    ("sampling", frozenset({DIT})),
    ("VAE decode", frozenset({VAE})),
)
LOOP_STAGES = frozenset({"sampling", "VAE decode"})  # repeated for every section


def runtime_dtypes(device_type: str) -> Mapping[PlannedComponent, str]:
    """The dtype each component is held and computed in: ``framepack_core.devices.default_config``'s table (the
    official app's on a GPU, float32 on the CPU), by component."""
    from framepack_core.devices import default_config  # imports torch: only when a plan is made

    config = default_config(device_type)
    by_component = {PlannedComponent.TEXT_ENCODER: config.text_encoder_dtype,
                    PlannedComponent.TEXT_ENCODER_2: config.text_encoder_dtype,
                    PlannedComponent.IMAGE_ENCODER: config.image_encoder_dtype,
                    PlannedComponent.VAE: config.vae_dtype,
                    PlannedComponent.TRANSFORMER: config.transformer_dtype}
    return MappingProxyType({c: str(dtype).removeprefix("torch.") for c, dtype in by_component.items()})


def automatic_preserve_bytes(vram_total_bytes: int) -> int:
    """The VRAM left for the desktop and other programs when none is asked for: max(0.5 GiB, 5 % of the card)."""
    return max(MIN_PRESERVE_BYTES, int(vram_total_bytes * PRESERVE_FRACTION))


@dataclass(frozen=True)
class _Choice:
    """A component's plan plus what the stage arithmetic needs about it."""

    plan: ComponentPlan
    persistent_bytes: int  # stays on the device between its calls inside the section loop
    moved_bytes: int  # moved to the device per call (per transformer call, or per use of an encoder)
    first_block_bytes: int  # the one transfer a prefetching stream cannot hide


def _choice(size: ComponentSize, placement: Placement, storage: str, compute: str,
            resident_blocks: int | None = None, vae_tiling: bool = False, stage_only: bool = False) -> _Choice:
    """Bytes on the device, in RAM and moved per call for ``size`` placed as asked.

    fp8 storage applies to the repeated blocks; the remainder (embedders, refiner, norms: what diffusers'
    layerwise casting skips, and a little more) is counted in the compute dtype. ``stage_only``: the component
    is on the device during its own stage only (the encoders), so BLOCKS keeps a whole copy in RAM and nothing
    of it stays on the device after the stage.
    """
    block_unit = DTYPE_BYTES[storage]
    rest_unit = DTYPE_BYTES[compute] if storage == FP8_STORAGE else block_unit
    blocks = [p * block_unit for p in size.block_sizes()]
    remainder = size.remainder_parameters * rest_unit
    weight = remainder + sum(blocks)
    total_blocks = len(blocks) if placement in (Placement.BLOCKS, Placement.STREAMED, Placement.DISK) else None
    kept = blocks[:resident_blocks] if resident_blocks else []
    offloaded = blocks[len(kept):]
    in_flight = max(offloaded, default=0)
    if placement == Placement.RESIDENT:
        device, host, persistent, moved = weight, 0, weight, 0
    elif placement == Placement.SWAP:
        device, host, persistent, moved = weight, weight, 0, weight
    elif placement in (Placement.BLOCKS, Placement.DISK):
        persistent = remainder + sum(kept)
        device, moved = persistent + in_flight, sum(offloaded)
        # DISK reads one block at a time through RAM; BLOCKS keeps every offloaded block there (and, for a
        # stage-only component, the rest too: it has to live somewhere between its stages).
        if placement == Placement.DISK:
            host = in_flight
        else:
            host = weight if stage_only else sum(offloaded)
        if stage_only:
            persistent = 0
    elif placement == Placement.STREAMED:
        persistent = remainder
        device = remainder + sum(sorted(blocks, reverse=True)[:STREAM_BLOCKS_ON_DEVICE])
        host, moved = sum(blocks), sum(blocks)
    else:  # Placement.CPU: the device is the CPU, so everything is in RAM
        device, host, persistent, moved = 0, weight, 0, 0
    plan = ComponentPlan(
        component=size.component, placement=placement, storage_dtype=storage, compute_dtype=compute,
        weight_bytes=weight, device_bytes=device, host_bytes=host,
        resident_blocks=(len(kept) if placement in (Placement.BLOCKS, Placement.DISK) else None),
        total_blocks=total_blocks, vae_tiling=vae_tiling, vae_slicing=vae_tiling,
    )
    return _Choice(plan, persistent, moved, blocks[0] if blocks else 0)


@dataclass(frozen=True)
class _Budget:
    vram: int
    ram: int
    allowance: int
    unified: bool


class _Planner:
    """The arithmetic of one planning call: stage peaks of a set of choices, and the search over them."""

    def __init__(self, sizes: ModelSizes, hardware: HardwareInfo, workload: Workload, budget: _Budget,
                 cost: CostModel, fp8: bool | None) -> None:
        self.sizes, self.hardware, self.workload, self.budget, self.cost, self.fp8 = (
            sizes, hardware, workload, budget, cost, fp8)
        self.dtypes = runtime_dtypes(hardware.device_type)
        self.compute_s = workload.flops_per_call / (cost.compute_tflops * 1e12)
        self._encoder_memo: dict[tuple[int, int], dict[PlannedComponent, _Choice] | None] = {}

    # --- stage arithmetic -----------------------------------------------------------------------------------

    def activation(self, stage: str, choices: Mapping[PlannedComponent, _Choice]) -> int:
        w = self.workload
        tiled = choices[VAE].plan.vae_tiling
        if stage == "text encoding":
            return TEXT_ENCODING_BYTES
        if stage == "VAE encode":
            return vae_encode_activation_bytes(w.height, w.width, tiled, DTYPE_BYTES[self.dtypes[VAE]])
        if stage == "image encoding":
            return IMAGE_ENCODING_BYTES
        if stage == "sampling":
            return transformer_activation_bytes(w.sequence_tokens, TRANSFORMER_INNER_DIM,
                                                DTYPE_BYTES[choices[DIT].plan.compute_dtype])
        return vae_decode_activation_bytes(w.decoded_latent_frames, w.height, w.width, tiled,
                                           DTYPE_BYTES[self.dtypes[VAE]])

    def stage_vram(self, stage: str, active: frozenset[PlannedComponent],
                   choices: Mapping[PlannedComponent, _Choice]) -> int:
        """Device bytes during ``stage``: the allowance, the stage's activations, the active components' device
        part, every RESIDENT component whole, and the part of the others that never leaves the device (the
        transformer's non-block layers and resident blocks: the store keeps it loaded between jobs, so a later
        job encodes its prompt with that part in place)."""
        if self.hardware.device_type == "cpu":
            return 0
        total = self.budget.allowance + self.activation(stage, choices)
        for component, choice in choices.items():
            if component in active:
                total += choice.plan.device_bytes
            elif choice.plan.placement == Placement.RESIDENT:
                total += choice.plan.weight_bytes
            else:
                total += choice.persistent_bytes
        return total

    def stage_ram(self, stage: str, choices: Mapping[PlannedComponent, _Choice], release: bool) -> int:
        """Host bytes during ``stage``: every component's RAM copy, except that released text encoders are not
        held in the section loop and (being released) were encoded before the transformer was loaded. On the
        CPU the stage's activations are in RAM too."""
        held = set(PlannedComponent)
        if release:
            held -= {TE, TE2} if stage in LOOP_STAGES else {DIT}
        total = sum(choices[c].plan.host_bytes for c in held)
        if stage == "VAE decode":
            w = self.workload
            total += host_decode_buffer_bytes(w.decoded_latent_frames, w.height, w.width)
        if self.hardware.device_type == "cpu":
            total += self.activation(stage, choices)
        return total

    def stages(self, choices: Mapping[PlannedComponent, _Choice], release: bool) -> tuple[StagePeak, ...]:
        return tuple(StagePeak(name, self.stage_vram(name, active, choices), self.stage_ram(name, choices, release))
                     for name, active in STAGES)

    def stage_fits(self, peak: StagePeak) -> bool:
        if peak.vram_bytes > self.budget.vram:
            return False
        used_ram = peak.ram_bytes + (peak.vram_bytes if self.budget.unified else 0)
        return used_ram <= self.budget.ram

    def fits(self, choices: Mapping[PlannedComponent, _Choice], release: bool) -> bool:
        return all(self.stage_fits(p) for p in self.stages(choices, release))

    def fits_stages(self, names: frozenset[str], choices: Mapping[PlannedComponent, _Choice], release: bool) -> bool:
        return all(self.stage_fits(StagePeak(name, self.stage_vram(name, active, choices),
                                             self.stage_ram(name, choices, release)))
                   for name, active in STAGES if name in names)

    # --- time -----------------------------------------------------------------------------------------------

    def call_time(self, choice: _Choice) -> float:
        """Modelled seconds of one transformer call with ``choice``."""
        bandwidth = self.cost.host_to_device_gb_s * 1e9
        placement = choice.plan.placement
        if placement == Placement.STREAMED:
            return max(self.compute_s, choice.moved_bytes / bandwidth) + choice.first_block_bytes / bandwidth
        if placement == Placement.DISK:
            return self.compute_s + choice.moved_bytes / (self.cost.disk_gb_s * 1e9)
        return self.compute_s + choice.moved_bytes / bandwidth

    def step_time(self, choice: _Choice) -> float:
        return self.workload.calls_per_step * self.call_time(choice)

    # --- options --------------------------------------------------------------------------------------------

    def option(self, component: PlannedComponent, placement: Placement, storage: str | None = None,
               resident_blocks: int | None = None, vae_tiling: bool = False) -> _Choice:
        compute = self.dtypes[component]
        return _choice(self.sizes[component], placement, storage or compute, compute, resident_blocks, vae_tiling,
                       stage_only=component in ENCODERS)

    def transformer_tiers(self) -> list[list[_Choice]]:
        """The transformer's options, in tiers tried in order: bf16 held in RAM, fp8 held in RAM, then disk."""
        blocks = self.sizes[DIT].block_count
        native = self.dtypes[DIT]

        def held(storage: str) -> list[_Choice]:
            options = [self.option(DIT, Placement.RESIDENT, storage)]
            if blocks and self.hardware.device_type == "cuda" and self.hardware.supports_streams:
                options.append(self.option(DIT, Placement.STREAMED, storage))
            options += [self.option(DIT, Placement.BLOCKS, storage, k) for k in range(blocks - 1, -1, -1)]
            return options

        tiers = []
        if self.fp8 is not True:
            tiers.append(held(native))
        if self.fp8 is not False:
            tiers.append(held(FP8_STORAGE))
        disk_storage = native if self.fp8 is False else FP8_STORAGE
        tiers.append([self.option(DIT, Placement.DISK, disk_storage, k) for k in range(blocks, -1, -1)])
        return tiers

    def encoder_options(self, component: PlannedComponent) -> list[_Choice]:
        """SWAP (moved whole around its stage), else BLOCKS (held in RAM, moved in one block at a time during
        its stage: one call, so keeping blocks resident would save nothing), else DISK (read from the files
        during its stage, for RAM too small to hold it)."""
        options = [self.option(component, Placement.SWAP)]
        if self.sizes[component].block_count:
            options += [self.option(component, Placement.BLOCKS, None, 0),
                        self.option(component, Placement.DISK, None, 0)]
        return options

    def choose_encoders(self, dit: _Choice, vae: _Choice) -> dict[PlannedComponent, _Choice] | None:
        """The encoders' placements that fit beside the transformer's and the VAE's device parts (memoised)."""
        key = (dit.plan.weight_bytes if dit.plan.placement == Placement.RESIDENT else dit.persistent_bytes,
               vae.plan.weight_bytes if vae.plan.placement == Placement.RESIDENT else 0)
        if key not in self._encoder_memo:
            self._encoder_memo[key] = self._search_encoders(dit, vae)
        return self._encoder_memo[key]

    def _search_encoders(self, dit: _Choice, vae: _Choice) -> dict[PlannedComponent, _Choice] | None:
        """First fit, the LLaMA's options innermost; RAM is checked as if released (the loosest case), the
        final check of the whole plan decides whether they must be released."""
        stages = frozenset({"text encoding", "image encoding"})
        for clip in self.encoder_options(TE2):
            for siglip in self.encoder_options(IMAGE):
                for llama in self.encoder_options(TE):
                    choices = {TE: llama, TE2: clip, IMAGE: siglip, VAE: vae, DIT: dit}
                    if self.fits_stages(stages, choices, release=True):
                        return {TE: llama, TE2: clip, IMAGE: siglip}
        return None

    # --- search ---------------------------------------------------------------------------------------------

    def all_resident(self) -> tuple[dict[PlannedComponent, _Choice], bool] | None:
        dit_storage = FP8_STORAGE if self.fp8 is True else None
        for tiling in (False, True):
            choices = {c: self.option(c, Placement.RESIDENT, dit_storage if c == DIT else None,
                                      vae_tiling=tiling and c == VAE) for c in PlannedComponent}
            for release in (False, True):
                if self.fits(choices, release):
                    return choices, release
        return None

    def search(self) -> tuple[dict[PlannedComponent, _Choice], bool, list[str]] | None:
        """The fastest plan of the first transformer tier that has one; ties go to a resident VAE, no tiling."""
        for tier in self.transformer_tiers():
            found: list[tuple[tuple[float, bool, bool, bool], dict[PlannedComponent, _Choice], bool]] = []
            for dit in tier:
                for vae_placement in (Placement.RESIDENT, Placement.SWAP):
                    for tiling in (False, True):
                        vae = self.option(VAE, vae_placement, vae_tiling=tiling)
                        encoders = self.choose_encoders(dit, vae)
                        if encoders is None:
                            continue
                        choices = {**encoders, VAE: vae, DIT: dit}
                        for release in (False, True):
                            if self.fits(choices, release):
                                key = (round(self.step_time(dit), 9), vae_placement != Placement.RESIDENT, tiling,
                                       release)
                                found.append((key, choices, release))
                                break
            if found:
                _, choices, release = min(found, key=lambda item: item[0])
                return choices, release, self._comparison(found)
        return None

    def _comparison(self, found: list[tuple[tuple[float, bool, bool, bool], dict[PlannedComponent, _Choice],
                                            bool]]) -> list[str]:
        """The best modelled step time of each transformer placement that fitted, for the notes."""
        best: dict[Placement, tuple[float, _Choice]] = {}
        for key, choices, _ in found:
            dit = choices[DIT]
            placement = dit.plan.placement
            if placement not in best or key[0] < best[placement][0]:
                best[placement] = (key[0], dit)
        if len(best) < 2:
            return []
        parts = [f"{_placement_text(dit.plan)} {seconds:.2f} s/step"
                 for seconds, dit in sorted(best.values(), key=lambda item: item[0])]
        return ["transformer placements that fit, fastest first: " + "; ".join(parts)]

    def smallest(self) -> tuple[dict[PlannedComponent, _Choice], bool]:
        """The plan with the least memory everywhere, for a machine on which nothing fits."""
        storage = self.dtypes[DIT] if self.fp8 is False else FP8_STORAGE
        choices = {
            DIT: self.option(DIT, Placement.DISK, storage, 0),
            VAE: self.option(VAE, Placement.SWAP, vae_tiling=True),
        }
        for component in ENCODERS:
            choices[component] = self.encoder_options(component)[-1]
        return choices, self._needs_release(choices)

    def _needs_release(self, choices: Mapping[PlannedComponent, _Choice]) -> bool:
        peak = max(self.stage_ram(name, choices, release=False) for name, _ in STAGES)
        return peak > self.budget.ram

    def cpu_plan(self) -> tuple[dict[PlannedComponent, _Choice], bool]:
        """Everything in RAM; VAE tiling and releasing the text encoders only when RAM needs them. fp8 storage of
        the transformer only when asked for (``fp8=True``): it halves its RAM, but the CPU computes in fp32 anyway."""
        for tiling in (False, True):
            choices = {c: _choice(self.sizes[c], Placement.CPU,
                                  FP8_STORAGE if c == DIT and self.fp8 else self.dtypes[c], self.dtypes[c],
                                  vae_tiling=tiling and c == VAE) for c in PlannedComponent}
            for release in (False, True):
                if self.fits(choices, release):
                    return choices, release
        return choices, self._needs_release(choices)


def _budgets(hardware: HardwareInfo, preserve_bytes: int | None) -> tuple[_Budget, int]:
    if hardware.device_type == "cpu":
        preserve = 0
        vram = 0
        allowance = 0
    else:
        preserve = automatic_preserve_bytes(hardware.vram_total_bytes) if preserve_bytes is None else preserve_bytes
        if preserve < 0:
            raise ValueError(f"preserve_bytes must not be negative, got {preserve}")
        vram = max(0, hardware.vram_free_bytes - preserve)
        allowance = DEVICE_ALLOWANCE_BYTES
    ram = max(0, hardware.ram_available_bytes - RAM_BASELINE_BYTES)
    return _Budget(vram, ram, allowance, unified=hardware.device_type == "mps"), preserve


def plan_memory(
    sizes: ModelSizes,
    hardware: HardwareInfo,
    workload: Workload = Workload(),
    *,
    preserve_bytes: int | None = None,
    fp8: bool | None = None,
    cost: CostModel = CostModel(),
) -> MemoryPlan:
    """Where each component lives for ``workload`` on ``hardware``, by the rules in the module docstring.

    ``preserve_bytes``: VRAM to leave free (None: max(0.5 GiB, 5 % of the card)). ``fp8``: True forces fp8
    storage of the transformer, False forbids it, None uses it only when bf16 cannot fit.
    """
    budget, preserve = _budgets(hardware, preserve_bytes)
    planner = _Planner(sizes, hardware, workload, budget, cost, fp8)
    notes: list[str] = []
    if hardware.device_type == "cpu":
        choices, release = planner.cpu_plan()
        notes.append("CPU: every component runs in float32 in RAM; the step times use the cost model's GPU rate, "
                     "so they are not CPU times")
    else:
        resident = planner.all_resident()
        searched = None if resident else planner.search()
        if resident is not None:
            choices, release = resident
        elif searched is not None:
            choices, release, comparison = searched
            notes += comparison
        else:
            choices, release = planner.smallest()
    return _assemble(planner, choices, release, preserve, notes)


def _assemble(planner: _Planner, choices: Mapping[PlannedComponent, _Choice], release: bool, preserve: int,
              notes: list[str]) -> MemoryPlan:
    hardware, workload, budget = planner.hardware, planner.workload, planner.budget
    stages = planner.stages(choices, release)
    peak_vram = max(s.vram_bytes for s in stages)
    peak_ram = max(s.ram_bytes for s in stages)
    fits = all(planner.stage_fits(s) for s in stages)
    dit = choices[DIT]
    resident_time = workload.calls_per_step * planner.compute_s
    step_time = planner.step_time(dit) if dit.plan.placement != Placement.CPU else resident_time
    notes = list(notes) + _notes(planner, choices, release, stages, fits)
    ordered = tuple(choices[c].plan for c in (TE, TE2, VAE, IMAGE, DIT))
    return MemoryPlan(
        components=ordered,
        device_type=hardware.device_type,
        device_name=hardware.device_name,
        vram_budget_bytes=budget.vram,
        ram_budget_bytes=budget.ram,
        peak_vram_bytes=peak_vram,
        peak_ram_bytes=peak_ram,
        bytes_moved_per_step=workload.calls_per_step * dit.moved_bytes,
        step_time_s=step_time,
        resident_step_time_s=resident_time,
        release_text_encoders=release,
        fits=fits,
        cost_model=planner.cost,
        notes=tuple(notes),
        workload=workload,
        stages=stages,
        preserve_bytes=preserve,
        ram_baseline_bytes=RAM_BASELINE_BYTES,
        device_allowance_bytes=budget.allowance,
        flops_per_call=workload.flops_per_call,
        calls_per_step=workload.calls_per_step,
        sizes_source=_sizes_source(planner.sizes),
        unified_memory=budget.unified,
    )


def _sizes_source(sizes: ModelSizes) -> str:
    from_headers = [s.component.value for s in sizes.components if s.source == "headers"]
    if not from_headers:
        return "built-in real configs (meta device)"
    if len(from_headers) == len(sizes.components):
        return "safetensors headers of the local files"
    return f"safetensors headers for {', '.join(from_headers)}; built-in real configs for the rest"


def _gib(count: int) -> str:
    return f"{count / GIB:.2f} GiB"


def _notes(planner: _Planner, choices: Mapping[PlannedComponent, _Choice], release: bool,
           stages: tuple[StagePeak, ...], fits: bool) -> list[str]:
    notes: list[str] = []
    dit, vae = choices[DIT].plan, choices[VAE].plan
    budget = planner.budget
    if dit.fp8:
        notes.append("transformer stored in float8_e4m3fn and computed in bfloat16 (diffusers layerwise casting): "
                     "half the bytes, results differ slightly from bf16")
    if dit.placement == Placement.STREAMED:
        notes.append(f"streaming keeps {_gib(dit.host_bytes)} of transformer blocks in pinned (page-locked) RAM")
    if dit.placement == Placement.DISK:
        notes.append(f"the transformer's offloaded blocks are read from disk every call "
                     f"({choices[DIT].moved_bytes / 1e9:.1f} GB per call at {planner.cost.disk_gb_s:g} GB/s)")
    if vae.vae_tiling:
        notes.append("VAE tiling and slicing on: an untiled decode would not fit beside the rest")
    if release:
        held = choices[TE].plan.host_bytes + choices[TE2].plan.host_bytes
        notes.append(f"text encoders released after encoding (prompts stay cached); a new prompt in a later job "
                     f"loads them again ({_gib(held)} of RAM) while the transformer is held")
    if budget.unified:
        notes.append("MPS: device and host share one memory, so offloading only limits the GPU working set; RAM "
                     "fit is judged on device + host; attention memory on MPS (no flash kernel) is not modelled")
    if not fits:
        worst_vram = max(stages, key=lambda s: s.vram_bytes)
        if worst_vram.vram_bytes > budget.vram:
            notes.append(f"does not fit: the smallest plan needs {_gib(worst_vram.vram_bytes)} of VRAM "
                         f"({worst_vram.stage}), {_gib(worst_vram.vram_bytes - budget.vram)} more than the "
                         f"{_gib(budget.vram)} budget")
        used = [(s.ram_bytes + (s.vram_bytes if budget.unified else 0), s) for s in stages]
        worst_ram, stage = max(used, key=lambda item: item[0])
        if worst_ram > budget.ram:
            notes.append(f"does not fit: {_gib(worst_ram)} of RAM needed ({stage.stage}), "
                         f"{_gib(worst_ram - budget.ram)} more than the {_gib(budget.ram)} budget")
    return notes


# ==============================================================================================================
# Reporting
# ==============================================================================================================


def _placement_text(plan: ComponentPlan) -> str:
    if plan.placement in (Placement.BLOCKS, Placement.DISK) and plan.total_blocks:
        return f"{plan.placement.value} ({plan.resident_blocks}/{plan.total_blocks} resident)"
    return plan.placement.value


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
            "variant": workload.variant, "real_cfg": workload.real_cfg, "text_tokens": workload.text_tokens,
            "latent_tokens": workload.tokens.latent, "sequence_tokens": workload.sequence_tokens,
        },
        "stages": [{"stage": s.stage, "vram_gb": round(s.vram_bytes / GIB, 3), "ram_gb": round(s.ram_bytes / GIB, 3)}
                   for s in plan.stages],
        "components": [_component_dict(c) for c in plan.components],
        "cost_model": {"name": plan.cost_model.name, "host_to_device_gb_s": plan.cost_model.host_to_device_gb_s,
                       "disk_gb_s": plan.cost_model.disk_gb_s, "compute_tflops": plan.cost_model.compute_tflops},
        "sizes_source": plan.sizes_source,
        "notes": list(plan.notes),
    }


def describe(plan: MemoryPlan) -> str:
    """The plan for a person: the budgets, a table of the components, the per-stage peaks and the times."""
    lines = [f"Memory plan for {plan.device_name} ({plan.device_type}): "
             + ("fits" if plan.fits else "DOES NOT FIT")]
    if plan.workload is not None:
        lines.append(f"Job: {plan.workload.describe()}")
    cpu = plan.device_type == "cpu"
    if cpu:
        lines.append(f"Budget: RAM {_gib(plan.ram_budget_bytes)} (available minus "
                     f"{_gib(plan.ram_baseline_bytes)} for the process)")
    else:
        lines.append(f"Budgets: VRAM {_gib(plan.vram_budget_bytes)} (free minus {_gib(plan.preserve_bytes)} "
                     f"preserved), RAM {_gib(plan.ram_budget_bytes)} (available minus "
                     f"{_gib(plan.ram_baseline_bytes)} for the process)")
    lines += ["", "| component | placement | storage / compute | weights GiB | on device GiB | in RAM GiB |",
              "|---|---|---|---:|---:|---:|"]
    for c in plan.components:
        placement = _placement_text(c) + (" + VAE tiling" if c.vae_tiling else "")
        lines.append(f"| {c.component.value} | {placement} | {c.storage_dtype} / {c.compute_dtype} | "
                     f"{c.weight_bytes / GIB:.2f} | {c.device_bytes / GIB:.2f} | {c.host_bytes / GIB:.2f} |")
    lines += ["", "| stage | VRAM GiB | RAM GiB |", "|---|---:|---:|"]
    lines += [f"| {s.stage} | {s.vram_bytes / GIB:.2f} | {s.ram_bytes / GIB:.2f} |" for s in plan.stages]
    peaks = (f"Peak RAM {plan.peak_ram_gb:.2f} GiB of {_gib(plan.ram_budget_bytes)}" if cpu else
             f"Peak VRAM {plan.peak_vram_gb:.2f} GiB of {_gib(plan.vram_budget_bytes)} (including a "
             f"{_gib(plan.device_allowance_bytes)} allowance); peak RAM {plan.peak_ram_gb:.2f} GiB of "
             f"{_gib(plan.ram_budget_bytes)}")
    lines += [
        "",
        peaks,
        (f"Moved to the device per step: {plan.bytes_moved_per_step / 1e9:.2f} GB ({plan.calls_per_step} "
         f"call{'s' if plan.calls_per_step > 1 else ''} per step)"),
        (f"Modelled step time: {plan.step_time_s:.2f} s (all resident: {plan.resident_step_time_s:.2f} s, "
         f"x{plan.overhead_ratio:.2f}); cost model: {plan.cost_model.name}, {plan.cost_model.compute_tflops:g} "
         f"TFLOPS, {plan.cost_model.host_to_device_gb_s:g} GB/s to the device, disk "
         f"{plan.cost_model.disk_gb_s:g} GB/s"),
        f"Text encoders released after encoding: {'yes' if plan.release_text_encoders else 'no'}",
    ]
    if plan.sizes_source:
        lines.append(f"Sizes from: {plan.sizes_source}")
    lines += [f"Note: {note}" for note in plan.notes]
    return "\n".join(lines)


def next_plan_advice(plan: MemoryPlan) -> str:
    """What to try after ``plan`` ran out of memory, in words (for the engine's out-of-memory message).

    The plan's figures are estimates; running out means the real peak was higher, so the advice is to leave
    more memory alone (the planner then offloads more), to halve the transformer with fp8, or to shrink the job.
    """
    if plan.device_type == "cpu":
        return ("The CPU ran out of RAM: close other programs, use a lower --resolution or a smaller --window, "
                "or run on a GPU.")
    advice: list[str] = []
    dit = plan.component(DIT)
    vae = plan.component(VAE)
    can_offload_more = (dit.placement == Placement.RESIDENT or bool(dit.resident_blocks)
                        or not vae.vae_tiling or vae.placement == Placement.RESIDENT)
    if can_offload_more:
        raise_by = max(GIB, int(0.15 * plan.vram_budget_bytes))
        suggested = math.ceil((plan.preserve_bytes + raise_by) / (GIB / 2)) / 2
        advice.append(f"Raise the GPU memory to preserve to {suggested:.1f} GB (now {plan.preserve_bytes / GIB:.1f}; "
                      "--preserve-gb, or the 'GPU memory to preserve' setting) so that more of the transformer is "
                      "offloaded and the VAE decodes in tiles.")
    if not dit.fp8:
        advice.append(f"Store the transformer in fp8 (--fp8): its weights drop from {dit.weight_bytes / GIB:.1f} GiB "
                      f"to about half, with slightly different results.")
    workload = plan.workload
    where = f" (this job packs {workload.sequence_tokens:,} tokens per call)" if workload is not None else ""
    advice.append(f"Or make the job smaller{where}: a lower --resolution (e.g. 512) or a smaller --window.")
    if plan.release_text_encoders is False and plan.component(TE).host_bytes:
        advice.append("Closing other programs also frees RAM for the offloaded weights.")
    return " ".join(advice)
