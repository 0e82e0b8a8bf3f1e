"""How a failed job is described to the user: a message that says what went wrong and a hint that says what to do."""

from __future__ import annotations

import sys

import torch

from framepack_core.errors import FramePackError
from framepack_core.memory.plan import MemoryPlan
from framepack_core.memory.report import next_plan_advice


def is_out_of_memory(error: Exception) -> bool:
    """Whether ``error`` is the device (or the host) running out of memory; the backends do not share one type."""
    text = str(error).lower()
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in text or "can't allocate memory" in text


def is_compile_failure(error: Exception) -> bool:
    """Whether ``error`` is torch.compile failing (dynamo tracing or inductor building kernels: a missing or broken
    C++ compiler or Triton, or an operation it cannot compile). Read from ``sys.modules``: where nothing was compiled
    dynamo was never imported, and the failure cannot be one of its."""
    dynamo_errors = sys.modules.get("torch._dynamo.exc")
    return dynamo_errors is not None and isinstance(error, dynamo_errors.TorchDynamoException)


def is_expected_failure(error: Exception) -> bool:
    """Whether the failure is one the user can fix (its description says how), rather than a bug."""
    return isinstance(error, FramePackError) or is_out_of_memory(error) or is_compile_failure(error)


def describe_failure(error: Exception, plan: MemoryPlan | None = None) -> tuple[str, str]:
    """The message and the hint for ``error``; ``plan`` is the memory plan the job ran with, if any."""
    if isinstance(error, FramePackError):
        return error.message, error.hint
    if is_out_of_memory(error):
        if plan is not None:
            message = ("The device ran out of memory (the plan estimated a peak of "
                       f"{plan.peak_vram_gb:.1f} GiB of VRAM and {plan.peak_ram_gb:.1f} GiB of RAM).")
            return message, next_plan_advice(plan)
        return ("The device ran out of memory.",
                "Lower {resolution} or {seconds}, choose a {cache}, or close other GPU programs.")
    if is_compile_failure(error):
        # The error's text is the compiler's whole output; its last line says what failed.
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        reason = lines[-1] if lines else type(error).__name__
        hint = ("Start again without {compile}: jobs then run uncompiled, a little slower and otherwise the same. "
                "To compile, torch needs a working C++ compiler on the CPU, or on an NVIDIA GPU a Triton that "
                "matches the installed torch (pip install triton, or triton-windows on Windows).")
        return f"torch.compile could not compile the transformer's blocks: {reason}", hint
    return f"{type(error).__name__}: {error}", "This is a bug; please report it with the log above."
