"""Planning each job's memory from its request and the machine as it is when the job starts.

The engine asks a ``JobPlanner`` for a plan at the start of every job: the workload comes from the request (the
input image's bucket, the window, the model, real CFG), the budgets from the device now, and the user's controls
(``gpu_memory_preservation``, ``fp8``) from the request. Weights the store already holds count as free: they are
ours, and the plan decides where they go next. The transformer's size includes the LoRA adapters it will hold during
the job (``framepack_core.memory.adapters``): the job's and those earlier jobs loaded into it.

``plan_job`` is the one way a job's plan is made: the engine at the start of the job, the estimate before it, and
``python -m framepack_core plan`` all call it, so the three never disagree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from framepack_core.memory.hardware import HardwareInfo, HardwareProbe, TorchHardwareProbe
from framepack_core.memory.plan import GIB, CostModel, MemoryPlan, Placement, Workload
from framepack_core.memory.planner import plan_memory
from framepack_core.models.components import DIT, ModelVariant
from framepack_core.models.sizes import ModelSizes, find_sizes

if TYPE_CHECKING:
    import torch

    from framepack_core.lora.adapters import LoraFile
    from framepack_core.models.loading import ModelSource
    from framepack_core.models.store import ModelStore
    from framepack_core.request import GenerationRequest


class JobPlanner:
    """Makes a ``MemoryPlan`` per job for one device. ``probe`` defaults to the real machine (through torch)."""

    def __init__(self, source: ModelSource, device: torch.device | str, *, probe: HardwareProbe | None = None,
                 cost: CostModel = CostModel(), ram_share: float = 1.0) -> None:
        """``ram_share``: the part of the machine's RAM this engine may plan for, when several workers on one
        machine share it (``framepack_core.workers``): two that load at the same moment each see all of it free."""
        if not 0 < ram_share <= 1:
            raise ValueError(f"ram_share must be in (0, 1], not {ram_share}")
        self.source = source
        self.device = str(device)
        self.probe = probe or TorchHardwareProbe()
        self.cost = cost
        self.ram_share = ram_share
        self._sizes: dict[ModelVariant, tuple[ModelSizes, tuple[str, ...]]] = {}

    def sizes(self, variant: ModelVariant | str) -> tuple[ModelSizes, tuple[str, ...]]:
        """The components' sizes for ``variant`` (read once: from the local files' headers, else the configs)."""
        variant = ModelVariant(variant)
        if variant not in self._sizes:
            self._sizes[variant] = find_sizes(variant, models_dir=self.source.models_dir,
                                              cache_dir=self.source.cache_dir)
        return self._sizes[variant]

    def plan_job(self, request: GenerationRequest, image_size: tuple[int, int] | None, models: ModelStore,
                 loras: Sequence[LoraFile] | None = None) -> MemoryPlan:
        """The plan for ``request`` run by ``models`` as they are now: the weights they hold count as free, and the
        transformer holds the adapters of the job's LoRAs (``loras``, already read; None: read from the request)
        and of every LoRA loaded into it before (they stay loaded for the process's life)."""
        if loras is None:
            loras = models.job_loras(request.loras, request.model)
        held_device, held_host = models.held_bytes()
        return self.plan(request, image_size, held_device_bytes=held_device, held_host_bytes=held_host,
                         loras=models.resident_loras(loras, ModelVariant(request.model)))

    def plan(self, request: GenerationRequest, image_size: tuple[int, int] | None, *, held_device_bytes: int = 0,
             held_host_bytes: int = 0, loras: Sequence[LoraFile] = ()) -> MemoryPlan:
        """The plan for ``request`` with an input image of ``image_size`` (height, width) pixels (None: the
        resolution's largest bucket, which holds for any image).

        ``held_*_bytes``: weights the model store has loaded now, on the device and in host RAM; they are added
        back to the free figures so that a second job plans as the first did instead of around its own models.
        ``loras``: the LoRAs whose adapters the transformer holds during the job, counted in its size.
        """
        variant = ModelVariant(request.model)
        sizes, _ = self.sizes(variant)
        workload = Workload.from_resolution(request.resolution, image_size=image_size,
                                            latent_window_size=request.latent_window_size, variant=variant,
                                            real_cfg=request.cfg != 1.0)
        hardware = _with_held_memory(self.probe.probe(self.device), held_device_bytes, held_host_bytes)
        if self.ram_share < 1:
            hardware = replace(hardware, ram_available_bytes=min(hardware.ram_available_bytes,
                                                                 int(hardware.ram_total_bytes * self.ram_share)))
        preserve = None if request.gpu_memory_preservation is None else int(request.gpu_memory_preservation * GIB)
        adapters = None
        if loras:
            from framepack_core.lora.adapters import adapter_parameters

            adapters = adapter_parameters(loras, sizes[DIT])
        return plan_memory(sizes, hardware, workload, preserve_bytes=preserve, fp8=request.fp8, cost=self.cost,
                           adapters=adapters)


def _with_held_memory(hardware: HardwareInfo, device_bytes: int, host_bytes: int) -> HardwareInfo:
    return replace(hardware,
                   vram_free_bytes=min(hardware.vram_total_bytes, hardware.vram_free_bytes + device_bytes),
                   ram_available_bytes=min(hardware.ram_total_bytes, hardware.ram_available_bytes + host_bytes))


def plan_summary(plan: MemoryPlan) -> str:
    """One line for the job's log: where each component goes and the estimated peaks against the budgets."""
    if plan.device_type == "cpu":
        fp8 = [c.component.value for c in plan.components if c.fp8]
        where = "everything on the CPU" + (f" ({', '.join(fp8)} stored in fp8)" if fp8 else "")
        peaks = f"peak RAM {plan.peak_ram_gb:.1f} of {plan.ram_budget_bytes / GIB:.1f} GiB"
    else:
        parts = []
        for component in plan.components:
            text = component.placement.value
            if component.placement in (Placement.BLOCKS, Placement.DISK) and component.total_blocks:
                text += f" {component.resident_blocks or 0}/{component.total_blocks} resident"
            extras = [x for x, on in (("fp8", component.fp8), ("tiled", component.vae_tiling)) if on]
            parts.append(f"{component.component.value} {text}" + (f" ({', '.join(extras)})" if extras else ""))
        where = ", ".join(parts)
        peaks = (f"peak VRAM {plan.peak_vram_gb:.1f} of {plan.vram_budget_bytes / GIB:.1f} GiB, peak RAM "
                 f"{plan.peak_ram_gb:.1f} of {plan.ram_budget_bytes / GIB:.1f} GiB, modelled step time "
                 f"x{plan.overhead_ratio:.2f} of all-resident")
    released = "; text encoders released after encoding" if plan.release_text_encoders else ""
    return f"Memory plan on {plan.device_name}: {where}; {peaks}{released}."
