"""Applies a process's ``RuntimeOptions`` to a freshly loaded transformer: the attention backend
(``attention_backends``) and regional compilation (``compilation``). ``ModelStore.transformer`` calls it once per
loaded transformer; the engine tells every job what it says."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from framepack_core.models.attention_backends import (
    NATIVE,
    AttentionEnvironment,
    choice_words,
    resolve_attention,
)
from framepack_core.models.compilation import CompileEnvironment, compile_repeated_blocks, compile_skip_reason
from framepack_core.models.runtime import RuntimeOptions

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Acceleration:
    """What was applied: the dispatcher backend, how many blocks were compiled, and the words for the job."""

    attention_backend: str
    compiled_blocks: int
    notes: tuple[str, ...]


def check_runtime_options(runtime: RuntimeOptions, device: torch.device, dtype: torch.dtype,
                          environment: AttentionEnvironment | None = None) -> str:
    """The dispatcher backend ``runtime.attention`` becomes on ``device``; an explicit backend that cannot run here
    raises ``InvalidInputError`` (field "attention") before any model loads. For the CLI's and the app's start."""
    return resolve_attention(runtime.attention, environment or AttentionEnvironment.detect(device, dtype))


def apply_runtime_options(transformer: torch.nn.Module, runtime: RuntimeOptions, device: torch.device,
                          dtype: torch.dtype | None = None, *,
                          attention_environment: AttentionEnvironment | None = None,
                          compile_environment: CompileEnvironment | None = None) -> Acceleration:
    """Set the transformer's attention backend and, with ``runtime.compile``, compile its repeated blocks.
    ``dtype``: the dtype it computes in (its parameters' by default; fp8-stored weights are cast up to it)."""
    dtype = dtype if dtype is not None else next(transformer.parameters()).dtype
    backend = check_runtime_options(runtime, device, dtype, attention_environment)
    # Sets every dispatching processor's backend (and diffusers' process-wide active one); the token refiner's
    # processor calls torch's SDPA itself and is left as it is. Native where native already runs is left alone:
    # today's path stays untouched, without diffusers' "experimental feature" warning on every load.
    if not (backend == NATIVE and _runs_native_already(transformer)):
        transformer.set_attention_backend(backend)
    notes = [f"Attention: {choice_words(runtime.attention, backend)}"]
    compiled = 0
    if runtime.compile:
        reason = compile_skip_reason(device.type, compile_environment or CompileEnvironment.detect())
        if reason is None:
            compiled = compile_repeated_blocks(transformer)
            notes.append(f"Compiled {compiled} transformer blocks with torch.compile: the first steps of the first "
                         "job also build the kernels, later jobs of this process reuse them")
        else:
            notes.append(f"Compile skipped: {reason}")
    for note in notes:
        logger.info(note)
    return Acceleration(backend, compiled, tuple(notes))


def _runs_native_already(transformer: torch.nn.Module) -> bool:
    """No processor has a backend of its own and diffusers' default is torch's SDPA."""
    try:
        from diffusers.models.attention_dispatch import _AttentionBackendRegistry

        active, _ = _AttentionBackendRegistry.get_active_backend()
    except (ImportError, AttributeError):
        return False
    chosen = [getattr(module.processor, "_attention_backend", None) for module in transformer.modules()
              if getattr(module, "processor", None) is not None]
    return str(getattr(active, "value", active)) == NATIVE and all(backend is None for backend in chosen)
