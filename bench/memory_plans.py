"""Benchmark (e): memory plans for the real models on simulated consumer machines (no GPU, no weights).

The five components' sizes come from the built-in real configs counted on the meta device
(``framepack_core.models.sizes``); the machines are ``fake_hardware`` with all of their VRAM free and all of their
RAM available; the planner is ``framepack_core.memory.planner.plan_memory`` with its default cost model (an RTX
4090's 165 TFLOPS dense bf16, 25 GB/s host to device, 3 GB/s disk) and automatic memory to preserve. For every
VRAM x RAM pair the script checks that the chosen plan fits and that its peaks are within its budgets, and exits
with status 1 if one is not. Both models are planned: they have the same architecture and pack the same tokens,
so they must get the same placements and step times, which is checked too (the table shows the original's).

Reproduce (from the repository root, CPU only, a few seconds)::

    python -m bench.memory_plans
    python -m bench.memory_plans --vram 6 24 --ram 16     # quick
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

from framepack_core.memory.hardware import fake_hardware
from framepack_core.memory.plan import MemoryPlan, Placement, Workload
from framepack_core.memory.planner import plan_memory
from framepack_core.models.components import Component
from framepack_core.models.sizes import ModelSizes, builtin_sizes

DEFAULT_VRAM_GB: tuple[float, ...] = (6, 8, 12, 16, 24, 80)
DEFAULT_RAM_GB: tuple[float, ...] = (16, 32, 64)
DEFAULT_BUCKET = (608, 640)  # resolution 640
DEFAULT_WINDOW = 9


@dataclass(frozen=True)
class PlanRow:
    vram_gb: float
    ram_gb: float
    plan: MemoryPlan

    @property
    def problems(self) -> list[str]:
        plan, where = self.plan, f"{self.vram_gb:g} GB VRAM / {self.ram_gb:g} GB RAM"
        found = []
        if not plan.fits:
            found.append(f"{where}: no plan fits ({'; '.join(plan.notes)})")
        if plan.peak_vram_bytes > plan.vram_budget_bytes:
            found.append(f"{where}: peak VRAM {plan.peak_vram_gb:.2f} GiB over the budget")
        if plan.peak_ram_bytes > plan.ram_budget_bytes:
            found.append(f"{where}: peak RAM {plan.peak_ram_gb:.2f} GiB over the budget")
        return found


def transformer_cell(plan: MemoryPlan) -> str:
    dit = plan.component(Component.TRANSFORMER)
    dtype = "fp8" if dit.fp8 else dit.storage_dtype.replace("bfloat16", "bf16")
    if dit.placement in (Placement.BLOCKS, Placement.DISK):
        return f"{dit.placement.value} {dit.resident_blocks}/{dit.total_blocks}, {dtype}"
    return f"{dit.placement.value}, {dtype}"


def text_encoder_cell(plan: MemoryPlan) -> str:
    llama = plan.component(Component.TEXT_ENCODER).placement.value
    clip = plan.component(Component.TEXT_ENCODER_2).placement.value
    cell = llama if llama == clip else f"{llama} (CLIP {clip})"
    return cell + (", released" if plan.release_text_encoders else "")


def table(rows: Sequence[PlanRow]) -> str:
    lines = [
        ("| VRAM GB | RAM GB | transformer (resident blocks/60, dtype) | text encoders | VAE tiling | peak VRAM GiB "
         "(budget) | peak RAM GiB (budget) | GB moved/step | modelled s/step | resident s/step | overhead |"),
        "|---:|---:|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        p = row.plan
        tiling = "yes" if p.component(Component.VAE).vae_tiling else "no"
        lines.append(
            f"| {row.vram_gb:g} | {row.ram_gb:g} | {transformer_cell(p)} | {text_encoder_cell(p)} | {tiling} | "
            f"{p.peak_vram_gb:.2f} ({p.vram_budget_bytes / 2**30:.2f}) | {p.peak_ram_gb:.2f} "
            f"({p.ram_budget_bytes / 2**30:.2f}) | {p.bytes_moved_per_step / 1e9:.1f} | {p.step_time_s:.2f} | "
            f"{p.resident_step_time_s:.2f} | x{p.overhead_ratio:.2f} |"
        )
    return "\n".join(lines)


def plan_grid(sizes: ModelSizes, workload: Workload, vram: Sequence[float], ram: Sequence[float]) -> list[PlanRow]:
    return [PlanRow(v, r, plan_memory(sizes, fake_hardware(v, r), workload)) for v in vram for r in ram]


def _signature(rows: Sequence[PlanRow]) -> list[tuple]:
    """What must not differ between the two models' plans: every placement and the transformer's figures. (The
    peaks may: an F1 section decodes 2 windows of latents, the original's last one 2 windows + 1.)"""
    return [(r.vram_gb, r.ram_gb, r.plan.components, r.plan.bytes_moved_per_step, r.plan.step_time_s)
            for r in rows]


def parse_bucket(text: str) -> tuple[int, int]:
    height, width = text.lower().split("x")
    return int(height), int(width)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vram", type=float, nargs="+", default=list(DEFAULT_VRAM_GB), help="GB (GiB) of VRAM")
    parser.add_argument("--ram", type=float, nargs="+", default=list(DEFAULT_RAM_GB), help="GB (GiB) of RAM")
    parser.add_argument("--bucket", type=parse_bucket, default=DEFAULT_BUCKET, help="HxW, default 608x640")
    parser.add_argument("--window", type=int, default=DEFAULT_WINDOW)
    parser.add_argument("--cfg-on", action="store_true", help="real CFG (2 transformer calls per step)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    started = time.perf_counter()
    sizes = builtin_sizes()
    rows_by_model = {
        variant: plan_grid(sizes, Workload(*args.bucket, args.window, variant, args.cfg_on), args.vram, args.ram)
        for variant in ("original", "f1")
    }
    elapsed = time.perf_counter() - started
    rows = rows_by_model["original"]
    workload = rows[0].plan.workload
    assert workload is not None
    print(f"## Memory plans, {workload.describe()}\n")
    print(table(rows))
    print(f"\n{len(rows)} plans per model, both models, in {elapsed:.1f} s (sizes from "
          f"{rows[0].plan.sizes_source}).")
    problems = [p for row in rows for p in row.problems]
    if _signature(rows_by_model["original"]) != _signature(rows_by_model["f1"]):
        problems.append("the original and F1 models got different plans")
    if problems:
        print("\nFAILED:\n" + "\n".join(f"- {p}" for p in problems), file=sys.stderr)
        return 1
    print("Every plan fits, with its peaks within its budgets; both models get the same placements.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
