"""A memory plan in words: the table ``plan`` prints, the notice a job shows, and the advice after an
out-of-memory error."""

from __future__ import annotations

import math

from framepack_core.memory.plan import GIB, MemoryPlan, Placement, gib_text, placement_text
from framepack_core.models.components import DIT, TE, VAE


def describe(plan: MemoryPlan) -> str:
    """The plan for a person: the budgets, a table of the components, the per-stage peaks and the times."""
    lines = [f"Memory plan for {plan.device_name} ({plan.device_type}): "
             + ("fits" if plan.fits else "DOES NOT FIT")]
    if plan.workload is not None:
        lines.append(f"Job: {plan.workload.describe()}")
    cpu = plan.device_type == "cpu"
    if cpu:
        lines.append(f"Budget: RAM {gib_text(plan.ram_budget_bytes)} (available minus "
                     f"{gib_text(plan.ram_baseline_bytes)} for the process)")
    else:
        lines.append(f"Budgets: VRAM {gib_text(plan.vram_budget_bytes)} (free minus {gib_text(plan.preserve_bytes)} "
                     f"preserved), RAM {gib_text(plan.ram_budget_bytes)} (available minus "
                     f"{gib_text(plan.ram_baseline_bytes)} for the process)")
    lines += ["", "| component | placement | storage / compute | weights GiB | on device GiB | in RAM GiB |",
              "|---|---|---|---:|---:|---:|"]
    for c in plan.components:
        placement = placement_text(c) + (" + VAE tiling" if c.vae_tiling else "")
        lines.append(f"| {c.component.value} | {placement} | {c.storage_dtype} / {c.compute_dtype} | "
                     f"{c.weight_bytes / GIB:.2f} | {c.device_bytes / GIB:.2f} | {c.host_bytes / GIB:.2f} |")
    lines += ["", "| stage | VRAM GiB | RAM GiB |", "|---|---:|---:|"]
    lines += [f"| {s.label} | {s.vram_bytes / GIB:.2f} | {s.ram_bytes / GIB:.2f} |" for s in plan.stages]
    peaks = (f"Peak RAM {plan.peak_ram_gb:.2f} GiB of {gib_text(plan.ram_budget_bytes)}" if cpu else
             f"Peak VRAM {plan.peak_vram_gb:.2f} GiB of {gib_text(plan.vram_budget_bytes)} (including a "
             f"{gib_text(plan.device_allowance_bytes)} allowance); peak RAM {plan.peak_ram_gb:.2f} GiB of "
             f"{gib_text(plan.ram_budget_bytes)}")
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
        return ("The CPU ran out of RAM: close other programs, use a lower {resolution} or a smaller "
                "{latent_window_size}, or run on a GPU.")
    advice: list[str] = []
    dit = plan.component(DIT)
    vae = plan.component(VAE)
    can_offload_more = (dit.placement == Placement.RESIDENT or bool(dit.resident_blocks)
                        or not vae.vae_tiling or vae.placement == Placement.RESIDENT)
    if can_offload_more:
        raise_by = max(GIB, int(0.15 * plan.vram_budget_bytes))
        suggested = math.ceil((plan.preserve_bytes + raise_by) / (GIB / 2)) / 2
        advice.append(f"Raise the GPU memory to preserve to {suggested:.1f} GB (now {plan.preserve_bytes / GIB:.1f}; "
                      "{gpu_memory_preservation}) so that more of the transformer is offloaded and the VAE decodes "
                      "in tiles.")
    if not dit.fp8:
        advice.append("Store the transformer in fp8 ({fp8}): its weights drop from "
                      f"{dit.weight_bytes / GIB:.1f} GiB to about half, with slightly different results.")
    workload = plan.workload
    where = f" (this job packs {workload.sequence_tokens:,} tokens per call)" if workload is not None else ""
    advice.append(f"Or make the job smaller{where}: a lower {{resolution}} (e.g. 512) or a smaller "
                  "{latent_window_size}.")
    if plan.release_text_encoders is False and plan.component(TE).host_bytes:
        advice.append("Closing other programs also frees RAM for the offloaded weights.")
    return " ".join(advice)
