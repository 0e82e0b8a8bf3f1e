"""Loads each model component on first use, places it as the memory plan says, and keeps it for the next job.

One store per device. Prompt embeddings are cached by prompt text and model identity, so re-running with an
unchanged prompt never touches the text encoders again.

Without a plan every component is loaded straight onto the device. With one (``use_plan``, normally made per job
by ``framepack_core.memory.job_planning.JobPlanner``), a component the plan keeps resident still loads straight onto
the device; any other loads on the CPU and is placed by ``framepack_core.memory.offload``, and the engine wraps each
stage in ``stage(component)`` so swapped components are on the device only while they run.
"""

from __future__ import annotations

import gc
import logging
import tempfile
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import torch

from framepack_core.lora.adapters import (
    LoraActivation,
    LoraFile,
    LoraLibrary,
    TransformerLoras,
    fuse_refusal,
    transformer_layers_for,
)
from framepack_core.memory.offload import AppliedPlacement, apply_component_plan
from framepack_core.memory.plan import ComponentPlan, MemoryPlan, Placement
from framepack_core.models.acceleration import Acceleration, apply_runtime_options
from framepack_core.models.components import DIT, IMAGE, TE, TE2, VAE, Component, ModelVariant, weight_component
from framepack_core.models.devices import DeviceConfig
from framepack_core.models.loaders import (
    load_image_encoder,
    load_text_encoders,
    load_transformer,
    load_vae,
)
from framepack_core.models.loading import ModelSource
from framepack_core.models.missing_weights import check_weights
from framepack_core.models.precision import apply_fp32_output_projection
from framepack_core.models.runtime import RuntimeOptions
from framepack_core.models.text_encoding import PromptEmbeddings, encode_prompt
from framepack_core.request import LoraChoice

logger = logging.getLogger(__name__)

PROMPT_CACHE_SIZE = 16
PIN_MEMORY_MIN_HEADROOM = 0.10  # pin STREAMED host copies only with this share of the RAM budget to spare

# The store holds the two text encoders as one unit (they encode together).
_UNITS = {TE: (TE, TE2), TE2: (TE, TE2), IMAGE: (IMAGE,), VAE: (VAE,), DIT: (DIT,)}


class ModelStore:
    def __init__(self, source: ModelSource, config: DeviceConfig, plan: MemoryPlan | None = None, *,
                 disk_offload_dir: Path | None = None, runtime: RuntimeOptions | None = None) -> None:
        self.source = source
        self.config = config
        self.runtime = runtime if runtime is not None else RuntimeOptions()  # attention backend, compilation
        self.disk_offload_dir = disk_offload_dir  # for DISK placements; a temporary folder when None
        self._plan = plan
        self._text_encoders: Any = None
        self._vae: Any = None
        self._image_encoder: Any = None
        self._transformers: dict[ModelVariant, torch.nn.Module] = {}
        self._acceleration: dict[ModelVariant, Acceleration] = {}
        self._placed: dict[Component, AppliedPlacement] = {}
        self._prompt_cache: OrderedDict[str, PromptEmbeddings] = OrderedDict()
        self._checked: set[ModelVariant] = set()
        self.lora_library = LoraLibrary()  # LoRA files read once per process, kept across transformer reloads
        self._loras: TransformerLoras | None = None  # the adapters in the loaded transformer

    # Plans ----------------------------------------------------------------------------------------------------

    @property
    def plan(self) -> MemoryPlan | None:
        return self._plan

    def use_plan(self, plan: MemoryPlan | None) -> list[Component]:
        """Switch to ``plan`` for the next stages. Returns the loaded components it changes: each is placed anew
        when only its placement changed, or dropped to be reloaded on next use (storage dtype changed, it was on
        disk, or it was loaded without a plan). Call between jobs or at the start of one, never during a stage."""
        self._plan = plan
        changed = [c for c in self._loaded_components()
                   if (self._placed[c].plan if c in self._placed else None) != self._component_plan(c, plan)]
        for unit in dict.fromkeys(_UNITS[c] for c in changed):
            placed = [self._placed.get(c) for c in unit]
            if plan is not None and all(p is not None and p.reusable
                                        and p.plan.storage_dtype == plan.component(p.component).storage_dtype
                                        for p in placed):
                for placement in placed:
                    placement.remove()
                    self._placed[placement.component] = self._apply(placement.component, placement.module)
            else:
                self._drop(unit)
        if changed:
            self._empty_device_cache()
        return changed

    @contextmanager
    def stage(self, *components: Component | str) -> Iterator[None]:
        """Run a stage: the components' placements ready on the device inside the block (SWAP moves them whole,
        encoders under BLOCKS move their non-block layers), back on the CPU after it, also on an error."""
        with ExitStack() as stack:
            for component in components:
                placed = self._placed.get(weight_component(component))
                if placed is not None:
                    stack.enter_context(placed.on_device())
            yield

    def held_bytes(self) -> tuple[int, int]:
        """Bytes of loaded weights now on the device and in host RAM (the planner counts them as free: they are
        ours, and the next plan decides where they go). On the CPU everything is host RAM."""
        on_device = on_host = 0
        for module in self._modules():
            for tensor in (*module.parameters(), *module.buffers()):
                size = tensor.numel() * tensor.element_size()
                if tensor.device.type == "cpu":
                    on_host += size
                else:
                    on_device += size
        return on_device, on_host

    # Text -----------------------------------------------------------------------------------------------------

    def check_weights(self, variant: ModelVariant) -> None:
        if variant not in self._checked:
            check_weights(self.source, variant)
            self._checked.add(variant)

    def encode_prompt(self, prompt: str) -> PromptEmbeddings:
        cached = self._prompt_cache.get(prompt)
        if cached is not None:
            self._prompt_cache.move_to_end(prompt)
            return cached
        if self._text_encoders is None:
            self._text_encoders = load_text_encoders(self.source, self._load_device(TE),
                                                     self.config.text_encoder_dtype)
            self._place(TE, self._text_encoders.text_encoder)
            self._place(TE2, self._text_encoders.text_encoder_2)
        te = self._text_encoders
        with self.stage(TE, TE2):
            embeddings = encode_prompt(prompt, te.tokenizer, te.text_encoder, te.tokenizer_2, te.text_encoder_2)
        embeddings = PromptEmbeddings(
            llama_vec=embeddings.llama_vec.cpu(),
            llama_attention_mask=embeddings.llama_attention_mask.cpu(),
            clip_l_pooler=embeddings.clip_l_pooler.cpu(),
            truncated=embeddings.truncated,
        )
        self._prompt_cache[prompt] = embeddings
        while len(self._prompt_cache) > PROMPT_CACHE_SIZE:
            self._prompt_cache.popitem(last=False)
        return embeddings

    def finish_text_encoding(self) -> bool:
        """After a job's prompts are encoded: drop the text encoders when the plan says RAM cannot hold them
        through the section loop. Returns whether they were dropped."""
        if self._plan is not None and self._plan.release_text_encoders and self._text_encoders is not None:
            self.release_text_encoders()
            return True
        return False

    def release_text_encoders(self) -> None:
        """Drop the text encoders (the largest component after the transformer); cached prompts stay usable."""
        self._drop((TE, TE2))

    def release_all(self) -> None:
        """Drop every loaded model (RAM and VRAM); cached prompt embeddings stay. Call between jobs, not during one."""
        self._drop((TE, TE2, IMAGE, VAE, DIT))
        gc.collect()
        self._empty_device_cache()

    # Images and video -----------------------------------------------------------------------------------------

    def vae(self) -> torch.nn.Module:
        if self._vae is None:
            self._vae = load_vae(self.source, self._load_device(VAE), self.config.vae_dtype)
            self._place(VAE, self._vae)
        return self._vae

    def image_encoder(self) -> tuple[Any, torch.nn.Module]:
        if self._image_encoder is None:
            self._image_encoder = load_image_encoder(self.source, self._load_device(IMAGE),
                                                     self.config.image_encoder_dtype)
            self._place(IMAGE, self._image_encoder.image_encoder)
        return self._image_encoder.feature_extractor, self._image_encoder.image_encoder

    def transformer(self, variant: ModelVariant, loras: Sequence[LoraFile] = ()) -> torch.nn.Module:
        """The transformer, with each of ``loras`` loaded as an adapter (off until ``use_loras`` switches it on)."""
        if variant not in self._transformers:
            # One DiT at a time: both would not fit on a consumer GPU.
            self._drop((DIT,))
            transformer = load_transformer(self.source, variant, self._load_device(DIT),
                                           self.config.transformer_dtype)
            apply_fp32_output_projection(transformer)  # as the official app, a no-op in fp32
            plan = self._component_plan(DIT, self._plan)
            compute = self.config.transformer_dtype if plan is None else getattr(torch, plan.compute_dtype)
            self._loras = TransformerLoras(transformer, compute, fp8=plan is not None and plan.fp8)
            self._loras.load(loras)  # before placing: fp8 casting skips the adapter layers, offloading moves them
            self._place(DIT, transformer)
            # After placing: the compiled blocks are traced with the offloading hooks they will run with.
            self._acceleration[variant] = apply_runtime_options(transformer, self.runtime, self.config.device,
                                                                 self.config.transformer_dtype)
            self._transformers[variant] = transformer
        elif self._loras is not None and self._loras.missing(loras):
            placed = self._placed.get(DIT)
            if placed is not None and placed.plan.group_offloaded:
                if not placed.reusable:  # its blocks live in files written without the new layers: load it again
                    self._drop((DIT,))
                    return self.transformer(variant, loras)
                placed.remove()  # the offloading hooks are put on again below, over the new layers too
            self._loras.load(loras)
            if placed is not None and placed.plan.group_offloaded:
                self._placed[DIT] = self._apply(DIT, self._transformers[variant])
        return self._transformers[variant]

    # LoRA -----------------------------------------------------------------------------------------------------

    def job_loras(self, choices: Sequence[LoraChoice], variant: ModelVariant) -> list[LoraFile]:
        """A job's LoRA files, each read once per process and checked against the transformer's layers (from its
        config: no weights load). Raises ``InvalidInputError`` (field ``loras``) for a file it cannot use."""
        return self.lora_library.job_loras(
            choices, lambda: transformer_layers_for(self.source.models_dir, ModelVariant(variant).value))

    def resident_loras(self, loras: Sequence[LoraFile], variant: ModelVariant) -> list[LoraFile]:
        """The LoRAs whose adapters the transformer of ``variant`` holds during a job with ``loras``: the job's and
        those already loaded into it (adapters stay loaded, only switched off, until the transformer is dropped)."""
        loaded = self._loras.loaded if self._loras is not None and variant in self._transformers else []
        return [*loaded, *loras]

    def use_loras(self, loras: Sequence[LoraFile], fuse: bool) -> LoraActivation:
        """Switch on the job's adapters at their weights in the loaded transformer (loaded by ``transformer``)."""
        if self._loras is None:
            return LoraActivation()
        return self._loras.activate(loras, fuse, fuse_refusal(self._component_plan(DIT, self._plan)))

    def end_loras(self) -> None:
        """After a job, also a failed one: fused weights put back exactly, every adapter off."""
        if self._loras is not None:
            self._loras.deactivate()

    def acceleration_notes(self, variant: ModelVariant) -> tuple[str, ...]:
        """What the loaded ``variant`` runs with (attention backend, compilation), for the job to tell."""
        applied = self._acceleration.get(variant)
        return applied.notes if applied is not None else ()

    def empty_device_cache(self) -> None:
        """Return the allocator's cached blocks to the driver (after an out-of-memory error, between jobs)."""
        gc.collect()
        self._empty_device_cache()

    # Internals ------------------------------------------------------------------------------------------------

    @staticmethod
    def _component_plan(component: Component, plan: MemoryPlan | None) -> ComponentPlan | None:
        return None if plan is None else plan.component(component)

    def _load_device(self, component: Component) -> torch.device:
        """Resident components load straight onto the device (no CPU copy); the rest load on the CPU, as do
        fp8 ones (cast on the CPU first: the plan chose fp8 because the full-precision weights do not fit)."""
        plan = self._component_plan(component, self._plan)
        if plan is None or (plan.placement in (Placement.RESIDENT, Placement.CPU) and not plan.fp8):
            return self.config.device
        return torch.device("cpu")

    def _place(self, component: Component, module: torch.nn.Module) -> None:
        if self._component_plan(component, self._plan) is not None:
            self._placed[component] = self._apply(component, module)

    def _apply(self, component: Component, module: torch.nn.Module) -> AppliedPlacement:
        assert self._plan is not None
        plan = self._plan.component(component)
        disk_dir = self.disk_offload_dir or Path(tempfile.gettempdir()) / "framepack-offload"
        headroom = self._plan.ram_budget_bytes - self._plan.peak_ram_bytes
        pin = headroom >= PIN_MEMORY_MIN_HEADROOM * self._plan.ram_budget_bytes
        logger.info("Placing %s: %s", component.value, plan.placement.value)
        return apply_component_plan(module, plan, self.config.device, disk_dir=disk_dir, pin_memory=pin)

    def _loaded_components(self) -> Iterator[Component]:
        if self._text_encoders is not None:
            yield from (TE, TE2)
        if self._image_encoder is not None:
            yield IMAGE
        if self._vae is not None:
            yield VAE
        if self._transformers:
            yield DIT

    def _modules(self) -> Iterator[torch.nn.Module]:
        if self._text_encoders is not None:
            yield from (self._text_encoders.text_encoder, self._text_encoders.text_encoder_2)
        if self._image_encoder is not None:
            yield self._image_encoder.image_encoder
        if self._vae is not None:
            yield self._vae
        yield from self._transformers.values()

    def _drop(self, components: tuple[Component, ...]) -> None:
        for component in components:
            placed = self._placed.pop(component, None)
            if placed is not None:
                placed.remove()  # deletes a DISK folder; the module itself goes with the reference below
        if TE in components or TE2 in components:
            self._text_encoders = None
        if IMAGE in components:
            self._image_encoder = None
        if VAE in components:
            self._vae = None
        if DIT in components:
            self._transformers.clear()
            self._loras = None
            self._acceleration.clear()

    def _empty_device_cache(self) -> None:
        if self.config.device.type == "cuda":
            torch.cuda.empty_cache()
        elif self.config.device.type == "mps":
            torch.mps.empty_cache()

