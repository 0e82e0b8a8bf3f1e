"""Benchmark (g): what each placement costs in wall time on the CPU, with the tiny models.

The modelled overhead of offloading on a GPU is in section (e); this measures the other part, the bookkeeping of
the hooks themselves (diffusers group offloading and layerwise casting, our stage moves), by running the same
tiny job under each placement with the device and the offload device both the CPU. On the CPU no byte crosses a
bus, so any difference is hook overhead (and, for disk, file I/O; for fp8, casting every layer's weights on each
call). The tiny transformer computes almost nothing, so these ratios are an upper bound of the hooks' share.

Reproduce (about 1 minute on 2 CPU cores)::

    python -m bench.offload_overhead                 # 5 rounds, placements interleaved
    python -m bench.offload_overhead --rounds 9
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
JOB = dict(latent_window_size=3, steps=8, resolution=64, seconds=1.6, cache="none")  # 4 sections, 32 steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)

    from framepack_core.events import JobFinished, SectionFinished
    from framepack_core.memory.hardware import fake_hardware
    from framepack_core.memory.offload import uniform_plan
    from framepack_core.memory.plan import Placement, Workload
    from framepack_core.memory.planner import plan_memory
    from framepack_core.models.devices import resolve_device_config
    from framepack_core.models.loading import ModelSource
    from framepack_core.models.sizes import find_sizes
    from framepack_core.models.store import ModelStore
    from framepack_core.models.tiny import build_tiny_models
    from framepack_core.pipeline.engine import FramePackEngine
    from framepack_core.request import GenerationRequest

    with tempfile.TemporaryDirectory() as work:
        root = build_tiny_models(Path(work) / "tiny")
        source = ModelSource(models_dir=root)
        sizes, _ = find_sizes("original", models_dir=root)
        base = plan_memory(sizes, fake_hardware(0, 16, device_type="cpu"), Workload(48, 64, 3))
        variants = {
            "no plan": None,
            "cpu": uniform_plan(base, Placement.CPU),
            "swap": uniform_plan(base, Placement.SWAP),
            "blocks, 1 of 4 resident": uniform_plan(base, Placement.BLOCKS, resident_blocks=1),
            "blocks, none resident": uniform_plan(base, Placement.BLOCKS),
            "disk": uniform_plan(base, Placement.DISK),
            "fp8 storage, resident": uniform_plan(base, Placement.RESIDENT, fp8=True),
        }
        # One store per variant, loaded and placed once (as the app keeps its models between jobs); a warm-up run
        # each, then the rounds interleave the variants so that machine noise hits them alike.
        engines = {name: FramePackEngine(ModelStore(source, resolve_device_config("cpu"), plan,
                                                    disk_offload_dir=Path(work) / "offload"))
                   for name, plan in variants.items()}
        image = REPO / "assets" / "chelsea_landscape.jpg"
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
        for round_ in range(args.rounds + 1):
            for name, engine in engines.items():
                request = GenerationRequest(image=image, prompt="a cat", output=Path(work) / "out.mp4", **JOB)
                started = time.perf_counter()
                events = list(engine.generate(request))
                total = time.perf_counter() - started
                if not isinstance(events[-1], JobFinished):
                    raise SystemExit(f"{name}: {events[-1]}")
                dit = sum(e.dit_s for e in events if isinstance(e, SectionFinished))
                if round_:  # round 0 warms up
                    times[name].append((dit, total))
    reference_dit = statistics.median(d for d, _ in times["no plan"])
    reference_total = statistics.median(t for _, t in times["no plan"])
    print(f"{args.rounds} rounds, tiny models, 4 sections x 8 steps at 48x64, CPU (device = offload device)\n")
    print("| placement | sampling s (median) | vs no plan | whole job s (median) | vs no plan |")
    print("|---|---:|---:|---:|---:|")
    for name, runs in times.items():
        dit = statistics.median(d for d, _ in runs)
        total = statistics.median(t for _, t in runs)
        print(f"| {name} | {dit:.3f} | x{dit / reference_dit:.2f} | {total:.2f} | x{total / reference_total:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
