"""The memory planner's search: the cheapest placement of each component that fits the budgets.

What a plan is, the budgets and the per-placement arithmetic are described in ``framepack_core.memory.plan``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from framepack_core.events import Stage
from framepack_core.memory.activations import (
    IMAGE_ENCODING_BYTES,
    TEXT_ENCODING_BYTES,
    host_decode_buffer_bytes,
    transformer_activation_bytes,
    vae_decode_activation_bytes,
    vae_encode_activation_bytes,
)
from framepack_core.memory.plan import (
    DEVICE_ALLOWANCE_BYTES,
    DTYPE_BYTES,
    FP8_STORAGE,
    LOOP_STAGES,
    RAM_BASELINE_BYTES,
    STAGES,
    STREAM_BLOCKS_ON_DEVICE,
    TRANSFORMER_INNER_DIM,
    ComponentPlan,
    CostModel,
    MemoryPlan,
    Placement,
    StagePeak,
    Workload,
    automatic_preserve_bytes,
    gib_text,
    placement_text,
    runtime_dtypes,
)
from framepack_core.models.components import DIT, ENCODERS, IMAGE, TE, TE2, VAE, WEIGHT_COMPONENTS, Component

if TYPE_CHECKING:
    from framepack_core.memory.adapters import AdapterParameters
    from framepack_core.memory.hardware import HardwareInfo
    from framepack_core.models.sizes import ComponentSize, ModelSizes

@dataclass(frozen=True)
class _Choice:
    """A component's plan plus what the stage arithmetic needs about it."""

    plan: ComponentPlan
    persistent_bytes: int  # stays on the device between its calls inside the section loop
    moved_bytes: int  # moved to the device per call (per transformer call, or per use of an encoder)
    first_block_bytes: int  # the one transfer a prefetching stream cannot hide


def _choice(size: ComponentSize, placement: Placement, storage: str, compute: str,
            resident_blocks: int | None = None, vae_tiling: bool = False, stage_only: bool = False,
            adapters: AdapterParameters | None = None) -> _Choice:
    """Bytes on the device, in RAM and moved per call for ``size`` placed as asked.

    fp8 storage applies to the repeated blocks; the remainder (embedders, refiner, norms: what diffusers'
    layerwise casting skips, and a little more) is counted in the compute dtype. ``stage_only``: the component
    is on the device during its own stage only (the encoders), so BLOCKS keeps a whole copy in RAM and nothing
    of it stays on the device after the stage. ``adapters``: the transformer's LoRA layers, in the compute dtype,
    each counted with the block (or the remainder) it lives in (``framepack_core.memory.adapters``).
    """
    block_unit = DTYPE_BYTES[storage]
    rest_unit = DTYPE_BYTES[compute] if storage == FP8_STORAGE else block_unit
    blocks = [p * block_unit for p in size.block_sizes()]
    remainder = size.remainder_parameters * rest_unit
    lora = 0
    if adapters is not None:
        blocks = [b + a for b, a in zip(blocks, adapters.block_bytes(DTYPE_BYTES[compute]), strict=True)]
        remainder += adapters.remainder_bytes(DTYPE_BYTES[compute], fp8=storage == FP8_STORAGE)
        lora = adapters.total_bytes(DTYPE_BYTES[compute], fp8=storage == FP8_STORAGE)
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
        total_blocks=total_blocks, vae_tiling=vae_tiling, vae_slicing=vae_tiling, lora_bytes=lora,
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
                 cost: CostModel, fp8: bool | None, adapters: AdapterParameters | None = None) -> None:
        self.sizes, self.hardware, self.workload, self.budget, self.cost, self.fp8 = (
            sizes, hardware, workload, budget, cost, fp8)
        self.adapters = adapters
        self.dtypes = runtime_dtypes(hardware.device_type)
        self.compute_s = workload.flops_per_call / (cost.compute_tflops * 1e12)
        self._encoder_memo: dict[tuple[int, int], dict[Component, _Choice] | None] = {}

    # --- stage arithmetic -----------------------------------------------------------------------------------

    def activation(self, stage: Stage, choices: Mapping[Component, _Choice]) -> int:
        w = self.workload
        tiled = choices[VAE].plan.vae_tiling
        if stage == Stage.TEXT_ENCODING:
            return TEXT_ENCODING_BYTES
        if stage == Stage.VAE_ENCODING:
            return vae_encode_activation_bytes(w.height, w.width, tiled, DTYPE_BYTES[self.dtypes[VAE]])
        if stage == Stage.IMAGE_ENCODING:
            return IMAGE_ENCODING_BYTES
        if stage == Stage.SAMPLING:
            return transformer_activation_bytes(w.sequence_tokens, TRANSFORMER_INNER_DIM,
                                                DTYPE_BYTES[choices[DIT].plan.compute_dtype])
        if stage == Stage.DECODING:
            return vae_decode_activation_bytes(w.decoded_latent_frames, w.height, w.width, tiled,
                                               DTYPE_BYTES[self.dtypes[VAE]])
        raise ValueError(f"the plan has no stage {stage.value!r}")

    def stage_vram(self, stage: Stage, active: frozenset[Component], choices: Mapping[Component, _Choice]) -> int:
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

    def stage_ram(self, stage: Stage, choices: Mapping[Component, _Choice], release: bool) -> int:
        """Host bytes during ``stage``: every component's RAM copy, except that released text encoders are not
        held in the section loop and (being released) were encoded before the transformer was loaded. On the
        CPU the stage's activations are in RAM too."""
        held = set(WEIGHT_COMPONENTS)
        if release:
            held -= {TE, TE2} if stage in LOOP_STAGES else {DIT}
        total = sum(choices[c].plan.host_bytes for c in held)
        if stage == Stage.DECODING:
            w = self.workload
            total += host_decode_buffer_bytes(w.decoded_latent_frames, w.height, w.width)
        if self.hardware.device_type == "cpu":
            total += self.activation(stage, choices)
        return total

    def stages(self, choices: Mapping[Component, _Choice], release: bool) -> tuple[StagePeak, ...]:
        return tuple(StagePeak(stage, self.stage_vram(stage, active, choices),
                               self.stage_ram(stage, choices, release))
                     for stage, active in STAGES)

    def stage_fits(self, peak: StagePeak) -> bool:
        if peak.vram_bytes > self.budget.vram:
            return False
        used_ram = peak.ram_bytes + (peak.vram_bytes if self.budget.unified else 0)
        return used_ram <= self.budget.ram

    def fits(self, choices: Mapping[Component, _Choice], release: bool) -> bool:
        return all(self.stage_fits(p) for p in self.stages(choices, release))

    def fits_stages(self, stages: frozenset[Stage], choices: Mapping[Component, _Choice], release: bool) -> bool:
        return all(self.stage_fits(StagePeak(stage, self.stage_vram(stage, active, choices),
                                             self.stage_ram(stage, choices, release)))
                   for stage, active in STAGES if stage in stages)

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

    def option(self, component: Component, placement: Placement, storage: str | None = None,
               resident_blocks: int | None = None, vae_tiling: bool = False) -> _Choice:
        compute = self.dtypes[component]
        return _choice(self.sizes[component], placement, storage or compute, compute, resident_blocks, vae_tiling,
                       stage_only=component in ENCODERS, adapters=self.adapters if component == DIT else None)

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

    def encoder_options(self, component: Component) -> list[_Choice]:
        """SWAP (moved whole around its stage), else BLOCKS (held in RAM, moved in one block at a time during
        its stage: one call, so keeping blocks resident would save nothing), else DISK (read from the files
        during its stage, for RAM too small to hold it)."""
        options = [self.option(component, Placement.SWAP)]
        if self.sizes[component].block_count:
            options += [self.option(component, Placement.BLOCKS, None, 0),
                        self.option(component, Placement.DISK, None, 0)]
        return options

    def choose_encoders(self, dit: _Choice, vae: _Choice) -> dict[Component, _Choice] | None:
        """The encoders' placements that fit beside the transformer's and the VAE's device parts (memoised)."""
        key = (dit.plan.weight_bytes if dit.plan.placement == Placement.RESIDENT else dit.persistent_bytes,
               vae.plan.weight_bytes if vae.plan.placement == Placement.RESIDENT else 0)
        if key not in self._encoder_memo:
            self._encoder_memo[key] = self._search_encoders(dit, vae)
        return self._encoder_memo[key]

    def _search_encoders(self, dit: _Choice, vae: _Choice) -> dict[Component, _Choice] | None:
        """First fit, the LLaMA's options innermost; RAM is checked as if released (the loosest case), the
        final check of the whole plan decides whether they must be released."""
        stages = frozenset({Stage.TEXT_ENCODING, Stage.IMAGE_ENCODING})
        for clip in self.encoder_options(TE2):
            for siglip in self.encoder_options(IMAGE):
                for llama in self.encoder_options(TE):
                    choices = {TE: llama, TE2: clip, IMAGE: siglip, VAE: vae, DIT: dit}
                    if self.fits_stages(stages, choices, release=True):
                        return {TE: llama, TE2: clip, IMAGE: siglip}
        return None

    # --- search ---------------------------------------------------------------------------------------------

    def all_resident(self) -> tuple[dict[Component, _Choice], bool] | None:
        dit_storage = FP8_STORAGE if self.fp8 is True else None
        for tiling in (False, True):
            choices = {c: self.option(c, Placement.RESIDENT, dit_storage if c == DIT else None,
                                      vae_tiling=tiling and c == VAE) for c in WEIGHT_COMPONENTS}
            for release in (False, True):
                if self.fits(choices, release):
                    return choices, release
        return None

    def search(self) -> tuple[dict[Component, _Choice], bool, list[str]] | None:
        """The fastest plan of the first transformer tier that has one; ties go to a resident VAE, no tiling."""
        for tier in self.transformer_tiers():
            found: list[tuple[tuple[float, bool, bool, bool], dict[Component, _Choice], bool]] = []
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

    def _comparison(self, found: list[tuple[tuple[float, bool, bool, bool], dict[Component, _Choice],
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
        parts = [f"{placement_text(dit.plan)} {seconds:.2f} s/step"
                 for seconds, dit in sorted(best.values(), key=lambda item: item[0])]
        return ["transformer placements that fit, fastest first: " + "; ".join(parts)]

    def smallest(self) -> tuple[dict[Component, _Choice], bool]:
        """The plan with the least memory everywhere, for a machine on which nothing fits."""
        storage = self.dtypes[DIT] if self.fp8 is False else FP8_STORAGE
        choices = {
            DIT: self.option(DIT, Placement.DISK, storage, 0),
            VAE: self.option(VAE, Placement.SWAP, vae_tiling=True),
        }
        for component in ENCODERS:
            choices[component] = self.encoder_options(component)[-1]
        return choices, self._needs_release(choices)

    def _needs_release(self, choices: Mapping[Component, _Choice]) -> bool:
        peak = max(self.stage_ram(stage, choices, release=False) for stage, _ in STAGES)
        return peak > self.budget.ram

    def cpu_plan(self) -> tuple[dict[Component, _Choice], bool]:
        """Everything in RAM; VAE tiling and releasing the text encoders only when RAM needs them. fp8 storage of
        the transformer only when asked for (``fp8=True``): it halves its RAM, but the CPU computes in fp32 anyway."""
        for tiling in (False, True):
            choices = {c: _choice(self.sizes[c], Placement.CPU,
                                  FP8_STORAGE if c == DIT and self.fp8 else self.dtypes[c], self.dtypes[c],
                                  vae_tiling=tiling and c == VAE, adapters=self.adapters if c == DIT else None)
                       for c in WEIGHT_COMPONENTS}
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
    adapters: AdapterParameters | None = None,
) -> MemoryPlan:
    """Where each component lives for ``workload`` on ``hardware``, by the rules in the module docstring.

    ``preserve_bytes``: VRAM to leave free (None: max(0.5 GiB, 5 % of the card)). ``fp8``: True forces fp8
    storage of the transformer, False forbids it, None uses it only when bf16 cannot fit. ``adapters``: the LoRA
    layers the transformer will hold, counted in its size (None: no LoRA).
    """
    budget, preserve = _budgets(hardware, preserve_bytes)
    planner = _Planner(sizes, hardware, workload, budget, cost, fp8, adapters)
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


def _assemble(planner: _Planner, choices: Mapping[Component, _Choice], release: bool, preserve: int,
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
    ordered = tuple(choices[c].plan for c in WEIGHT_COMPONENTS)
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


def _notes(planner: _Planner, choices: Mapping[Component, _Choice], release: bool,
           stages: tuple[StagePeak, ...], fits: bool) -> list[str]:
    notes: list[str] = []
    dit, vae = choices[DIT].plan, choices[VAE].plan
    budget = planner.budget
    if dit.fp8:
        notes.append("transformer stored in float8_e4m3fn and computed in bfloat16 (diffusers layerwise casting): "
                     "half the bytes, results differ slightly from bf16")
    if dit.lora_bytes:
        notes.append(f"the transformer's size includes {gib_text(dit.lora_bytes)} of LoRA adapter layers "
                     f"(in {dit.compute_dtype})")
    if dit.placement == Placement.STREAMED:
        notes.append(f"streaming keeps {gib_text(dit.host_bytes)} of transformer blocks in pinned (page-locked) RAM")
    if dit.placement == Placement.DISK:
        notes.append(f"the transformer's offloaded blocks are read from disk every call "
                     f"({choices[DIT].moved_bytes / 1e9:.1f} GB per call at {planner.cost.disk_gb_s:g} GB/s)")
    if vae.vae_tiling:
        notes.append("VAE tiling and slicing on: an untiled decode would not fit beside the rest")
    if release:
        held = choices[TE].plan.host_bytes + choices[TE2].plan.host_bytes
        notes.append(f"text encoders released after encoding (prompts stay cached); a new prompt in a later job "
                     f"loads them again ({gib_text(held)} of RAM) while the transformer is held")
    if budget.unified:
        notes.append("MPS: device and host share one memory, so offloading only limits the GPU working set; RAM "
                     "fit is judged on device + host; attention memory on MPS (no flash kernel) is not modelled")
    if not fits:
        worst_vram = max(stages, key=lambda s: s.vram_bytes)
        if worst_vram.vram_bytes > budget.vram:
            notes.append(f"does not fit: the smallest plan needs {gib_text(worst_vram.vram_bytes)} of VRAM "
                         f"({worst_vram.label}), {gib_text(worst_vram.vram_bytes - budget.vram)} more than the "
                         f"{gib_text(budget.vram)} budget")
        used = [(s.ram_bytes + (s.vram_bytes if budget.unified else 0), s) for s in stages]
        worst_ram, stage = max(used, key=lambda item: item[0])
        if worst_ram > budget.ram:
            notes.append(f"does not fit: {gib_text(worst_ram)} of RAM needed ({stage.label}), "
                         f"{gib_text(worst_ram - budget.ram)} more than the {gib_text(budget.ram)} budget")
    return notes


# ==============================================================================================================
# Reporting
# ==============================================================================================================
