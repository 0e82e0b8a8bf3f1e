"""Putting a loaded component where its ``ComponentPlan`` says, with the diffusers hooks.

``apply_component_plan`` takes a module loaded on the CPU (the offload device) and returns an ``AppliedPlacement``
whose ``on_device()`` context wraps the component's stage. Per placement (see ``framepack_core.memory.plan``):

* fp8 storage first, when planned: diffusers layerwise casting stores the weights in ``float8_e4m3fn`` and casts
  each layer to its compute dtype just for its forward (norms, embeddings and ``proj_out`` are skipped, as
  diffusers does by default), so every later move carries half the bytes;
* ``RESIDENT`` / ``CPU``: moved to the device once;
* ``SWAP``: stays on the CPU; ``on_device()`` moves it whole to the device and back after the stage;
* ``BLOCKS``: the repeated blocks after the first ``resident_blocks`` get diffusers block-level group offloading
  (no streams): each group is moved in just before it runs and out after it. They are gathered in a container
  module so that the hooks land on the blocks themselves while the resident blocks and the non-block layers are
  left alone: the transformer's stay on the device for the job; an encoder's are moved around its stage;
* ``STREAMED`` (CUDA only): group offloading of the whole module with a CUDA stream that prefetches the next block
  while the current one computes, ``record_stream`` so no synchronisation is needed on offload, and the host
  copies pinned (``low_cpu_mem_usage`` when RAM is short: pinned just in time instead);
* ``DISK``: as ``BLOCKS`` but the offloaded blocks are written once to safetensors files in a fresh folder and
  read back from there as they are needed; the folder is deleted by ``remove()``;
* VAE tiling and slicing when planned.

With the device and the offload device both the CPU, every placement computes exactly what the plain module does
(``tests/test_offload.py``), which is how the code paths are exercised without a GPU.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from framepack_core.memory.plan import FP8_STORAGE, ComponentPlan, MemoryPlan, Placement
from framepack_core.models.components import DIT, VAE, Component, weight_component
from framepack_core.models.sizes import BLOCK_LISTS

GroupOffloading = Callable[..., None]  # ``diffusers.hooks.apply_group_offloading``


class _OffloadedBlocks(torch.nn.Module):
    """Holds the blocks to offload (the same module objects the model runs) in one ``ModuleList``, so that
    diffusers' block-level group offloading hooks exactly those blocks. Never called itself."""

    def __init__(self, blocks: list[torch.nn.Module]) -> None:
        super().__init__()
        self.blocks = torch.nn.ModuleList(blocks)


@dataclass
class AppliedPlacement:
    """A component placed by ``apply_component_plan``. Use ``on_device()`` around the component's stage."""

    component: Component
    plan: ComponentPlan
    module: torch.nn.Module
    device: torch.device
    offload_device: torch.device
    offloaded_blocks: tuple[torch.nn.Module, ...] = ()
    moves_rest_per_stage: bool = False  # BLOCKS / DISK encoders: the non-offloaded part moves around the stage
    disk_dir: Path | None = None

    @property
    def reusable(self) -> bool:
        """Whether ``remove()`` leaves the weights intact, so the module can be placed again without reloading
        (not after DISK, whose CPU tensors are placeholders once written to disk)."""
        return self.plan.placement != Placement.DISK

    @contextmanager
    def on_device(self) -> Iterator[torch.nn.Module]:
        """The component ready to run on the device for the duration of the block; moved back after it, also
        when the stage fails (so an out-of-memory error does not leave it occupying the device)."""
        if self.plan.placement == Placement.SWAP:
            self.module.to(self.device)
            try:
                yield self.module
            finally:
                self.module.to(self.offload_device)
        elif self.moves_rest_per_stage:
            self._move_rest(self.device)
            try:
                yield self.module
            finally:
                self._move_rest(self.offload_device)
        else:
            yield self.module

    def remove(self) -> None:
        """Take the offloading hooks off and leave the whole module on the offload device. fp8 storage stays
        (the bf16 weights are gone); after DISK the module must be reloaded (see ``reusable``)."""
        from diffusers.hooks import HookRegistry
        from diffusers.hooks.group_offloading import _GROUP_OFFLOADING, _LAZY_PREFETCH_GROUP_OFFLOADING

        for submodule in self.module.modules():
            registry = getattr(submodule, "_diffusers_hook", None)
            if registry is None:
                continue
            for name in (_GROUP_OFFLOADING, _LAZY_PREFETCH_GROUP_OFFLOADING):
                if registry.get_hook(name) is not None:
                    registry.remove_hook(name, recurse=False)
        HookRegistry.check_if_exists_or_initialize(self.module).invalidate_child_registries_cache()
        if self.reusable:
            self.module.to(self.offload_device)
        if self.disk_dir is not None:
            shutil.rmtree(self.disk_dir, ignore_errors=True)
            self.disk_dir = None

    def _move_rest(self, device: torch.device) -> None:
        """Move every layer except the offloaded blocks (whose hooks move them), as ``Module.to`` would."""
        offloaded = {id(m) for block in self.offloaded_blocks for m in block.modules()}
        for submodule in self.module.modules():
            if id(submodule) not in offloaded:
                submodule._apply(lambda tensor: tensor.to(device), recurse=False)


def apply_component_plan(
    module: torch.nn.Module,
    plan: ComponentPlan,
    device: torch.device | str,
    *,
    offload_device: torch.device | str = "cpu",
    disk_dir: Path | None = None,
    pin_memory: bool = True,
    group_offloading: GroupOffloading | None = None,
) -> AppliedPlacement:
    """Place ``module`` (loaded on ``offload_device``) as ``plan`` says, for running on ``device``.

    ``disk_dir``: where DISK creates its (temporary) folder; required for DISK. ``pin_memory``: STREAMED keeps
    page-locked host copies (fast transfers, but that RAM cannot be swapped out); False passes diffusers'
    ``low_cpu_mem_usage`` instead. ``group_offloading`` defaults to diffusers' ``apply_group_offloading``; it is a
    parameter so that the CUDA-only arguments can be checked with a fake.
    """
    from diffusers.hooks import apply_group_offloading

    group_offloading = group_offloading or apply_group_offloading
    device, offload_device = torch.device(device), torch.device(offload_device)
    component = weight_component(plan.component)

    if plan.fp8:
        _store_in_fp8(module, plan)
    if plan.vae_tiling:
        module.enable_tiling()
    if plan.vae_slicing:
        module.enable_slicing()

    applied = AppliedPlacement(component, plan, module, device, offload_device)
    placement = plan.placement
    if placement in (Placement.RESIDENT, Placement.CPU):
        module.to(device)
    elif placement == Placement.SWAP:
        module.to(offload_device)
    elif placement == Placement.STREAMED:
        if device.type != "cuda":
            raise ValueError(f"{component.value}: the streamed placement needs a CUDA device, not {device.type}")
        module.to(offload_device)
        group_offloading(module, onload_device=device, offload_device=offload_device, offload_type="block_level",
                         num_blocks_per_group=1, non_blocking=True, use_stream=True, record_stream=True,
                         low_cpu_mem_usage=not pin_memory)
    elif placement in (Placement.BLOCKS, Placement.DISK):
        _offload_blocks(applied, group_offloading, disk_dir)
    else:
        raise ValueError(f"{component.value}: unknown placement {placement!r}")
    return applied


def uniform_plan(base: MemoryPlan, placement: Placement, *, resident_blocks: int = 0, blocks_per_group: int = 1,
                 fp8: bool = False, vae: Placement | None = None, **plan_fields: Any) -> MemoryPlan:
    """``base`` with every component at ``placement``, for tests and benchmarks that exercise one placement (the
    VAE, which has no blocks, is swapped instead of BLOCKS or DISK unless ``vae`` says otherwise; only the
    transformer keeps ``resident_blocks``, as the planner does; ``fp8`` stores the transformer in fp8)."""
    components = []
    for plan in base.components:
        where = placement
        if plan.component == VAE:
            where = vae or (Placement.SWAP if placement in (Placement.BLOCKS, Placement.DISK) else placement)
        by_blocks = where in (Placement.BLOCKS, Placement.DISK)
        resident = (resident_blocks if plan.component == DIT else 0) if by_blocks else None
        storage = FP8_STORAGE if fp8 and plan.component == DIT else plan.storage_dtype
        components.append(replace(plan, placement=where, resident_blocks=resident, blocks_per_group=blocks_per_group,
                                  storage_dtype=storage))
    return replace(base, components=tuple(components), **plan_fields)


def component_blocks(module: torch.nn.Module, component: Component) -> list[torch.nn.Module]:
    """The component's repeated blocks in forward order (``model_sizes.BLOCK_LISTS``; the lists may sit under a
    prefix such as ``text_model.`` in CLIP)."""
    blocks: list[torch.nn.Module] = []
    for path in BLOCK_LISTS[component]:
        found = [m for name, m in module.named_modules()
                 if isinstance(m, torch.nn.ModuleList) and (name == path or name.endswith("." + path))]
        if len(found) != 1:
            raise ValueError(f"{component.value}: expected one block list {path!r} in {type(module).__name__}, "
                             f"found {len(found)}")
        blocks.extend(found[0])
    return blocks


def _offload_blocks(applied: AppliedPlacement, group_offloading: GroupOffloading, disk_dir: Path | None) -> None:
    plan, module = applied.plan, applied.module
    blocks = component_blocks(module, applied.component)
    if not blocks:
        raise ValueError(f"{applied.component.value} has no repeated blocks to offload; plan it swap or resident")
    resident = plan.resident_blocks or 0
    offloaded = blocks[resident:]
    applied.offloaded_blocks = tuple(offloaded)
    # The transformer runs every step, so its non-offloaded part stays on the device; an encoder runs once per job.
    applied.moves_rest_per_stage = applied.component != DIT
    module.to(applied.offload_device)
    if not applied.moves_rest_per_stage:
        applied._move_rest(applied.device)
    if not offloaded:
        return
    options: dict[str, Any] = {}
    if plan.placement == Placement.DISK:
        if disk_dir is None:
            raise ValueError(f"{applied.component.value}: the disk placement needs a folder for its files")
        disk_dir.mkdir(parents=True, exist_ok=True)
        # A fresh folder per placement: diffusers reuses any file already there with the same group name.
        applied.disk_dir = Path(tempfile.mkdtemp(prefix=f"{applied.component.value}-", dir=disk_dir))
        options["offload_to_disk_path"] = str(applied.disk_dir)
    group_offloading(_OffloadedBlocks(offloaded), onload_device=applied.device, offload_device=applied.offload_device,
                     offload_type="block_level", num_blocks_per_group=max(1, plan.blocks_per_group), **options)


def _store_in_fp8(module: torch.nn.Module, plan: ComponentPlan) -> None:
    from diffusers.hooks import apply_layerwise_casting

    if _stored_in_fp8(module):  # placed again (new LoRA layers, a new plan): the casting hooks are still on
        return
    storage = getattr(torch, plan.storage_dtype)
    compute = getattr(torch, plan.compute_dtype)
    if hasattr(module, "enable_layerwise_casting"):
        # diffusers models add their own skip patterns (embedders, norms) and fp32-kept modules to the defaults.
        module.enable_layerwise_casting(storage_dtype=storage, compute_dtype=compute)
    else:
        apply_layerwise_casting(module, storage_dtype=storage, compute_dtype=compute, skip_modules_pattern="auto")


def _stored_in_fp8(module: torch.nn.Module) -> bool:
    """Whether diffusers' layerwise casting already stores ``module`` (registering its hooks twice is an error)."""
    return any(getattr(submodule, "_diffusers_hook", None) is not None
               and submodule._diffusers_hook.get_hook("layerwise_casting") is not None
               for submodule in module.modules())
