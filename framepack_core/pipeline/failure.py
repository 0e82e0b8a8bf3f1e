"""How a failed job is described to the user: a message that says what went wrong and a hint that says what to do."""

from __future__ import annotations

import torch

from framepack_core.errors import FramePackError
from framepack_core.memory.plan import MemoryPlan
from framepack_core.memory.report import next_plan_advice


def is_out_of_memory(error: Exception) -> bool:
    """Whether ``error`` is the device (or the host) running out of memory; the backends do not share one type."""
    text = str(error).lower()
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in text or "can't allocate memory" in text


def is_expected_failure(error: Exception) -> bool:
    """Whether the failure is one the user can fix (its description says how), rather than a bug."""
    return isinstance(error, FramePackError) or is_out_of_memory(error)


def describe_failure(error: Exception, plan: MemoryPlan | None = None) -> tuple[str, str]:
    """The message and the hint for ``error``; ``plan`` is the memory plan the job ran with, if any."""
    if isinstance(error, FramePackError):
        return error.message, error.hint
    if is_out_of_memory(error):
        if plan is not None:
            return ("The device ran out of memory (the plan estimated a peak of "
                    f"{plan.peak_vram_gb:.1f} GiB of VRAM and {plan.peak_ram_gb:.1f} GiB of RAM).",
                    next_plan_advice(plan))
        return ("The device ran out of memory.",
                "Lower {resolution} or {seconds}, choose a {cache}, or close other GPU programs.")
    return f"{type(error).__name__}: {error}", "This is a bug; please report it with the log above."
