"""``python -m framepack_core plan``: where each model component would live in memory, without loading a model."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from framepack_core.cli.options import EXIT_BAD_INPUT, EXIT_OK, lora_argument, with_option_name
from framepack_core.errors import InvalidInputError

if TYPE_CHECKING:
    from framepack_core.memory.plan import MemoryPlan
    from framepack_core.models.store import ModelStore
    from framepack_core.pipeline.estimate import JobEstimate
    from framepack_core.request import GenerationRequest


def add_plan_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="Show where each model component would live in memory (loads no model).")
    p.add_argument("--vram-gb", type=float, default=None,
                   help="Plan for a GPU with this much free memory (GiB) instead of this machine's device "
                        "(default: this machine's device).")
    p.add_argument("--ram-gb", type=float, default=None,
                   help="Plan for this much available RAM (GiB; default: this machine's available RAM).")
    p.add_argument("--model", choices=["original", "f1"], default="original",
                   help="The transformer to plan for (default original; f1 is the same size).")
    p.add_argument("--resolution", type=int, default=640,
                   help="Base resolution; the plan holds for its largest bucket (default 640).")
    p.add_argument("--window", type=int, default=9, help="Latent window size (default 9).")
    p.add_argument("--cfg", type=float, default=1.0,
                   help="Real CFG scale; other than 1 means 2 calls per step (default 1).")
    p.add_argument("--preserve-gb", type=float, default=None,
                   help="GPU memory to leave free (GiB; default max(0.5, 5%% of the card)).")
    p.add_argument("--fp8", action=argparse.BooleanOptionalAction, default=None,
                   help="--fp8 forces fp8 storage of the transformer, --no-fp8 forbids it (default: when needed).")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default auto).")
    p.add_argument("--models-dir", type=Path, default=None,
                   help="Read the sizes from this org/name tree (default: the local Hugging Face cache, else the "
                        "built-in real configs). Nothing is downloaded.")
    p.add_argument("--lora", dest="loras", action="append", type=lora_argument, default=None,
                   metavar="PATH[:WEIGHT]",
                   help="Plan for a job with this LoRA (as generate's --lora): its adapter layers count in the "
                        "transformer's size; repeat for several. Default: none.")
    p.add_argument("--json", action="store_true", help="Print the plan as JSON.")


def _plan_input_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the numbers given to ``plan``, or None."""
    import math

    for option, value, low in (("--vram-gb", args.vram_gb, 0.0), ("--ram-gb", args.ram_gb, 0.0),
                               ("--preserve-gb", args.preserve_gb, 0.0)):
        if value is not None and (not math.isfinite(value) or value < low or (option == "--ram-gb" and value == 0)):
            return f"{option}: {value} is not a usable amount of memory (a number of GiB, at least 0)"
    # The job's own numbers are checked by the request, as for generate, so both commands accept the same values.
    try:
        _request(args)
    except InvalidInputError as error:
        return with_option_name(error)
    if args.models_dir is not None and not args.models_dir.is_dir():
        return f"--models-dir: {args.models_dir} is not a folder"
    if args.vram_gb is not None and args.device == "cpu":
        return "--vram-gb plans for a GPU: leave out --device cpu (or use --device cuda or mps)"
    return None


def _request(args: argparse.Namespace) -> GenerationRequest:
    """The job ``plan`` plans for: generate's defaults with the options given."""
    from framepack_core.request import GenerationRequest, LoraChoice

    loras = tuple(LoraChoice(path, weight) for path, weight in args.loras or ())
    return GenerationRequest(image=Path("plan"), model=args.model, latent_window_size=args.window,
                             resolution=args.resolution, cfg=args.cfg, fp8=args.fp8,
                             gpu_memory_preservation=args.preserve_gb, loras=loras).validated()


def run_plan(args: argparse.Namespace) -> int:
    import json

    from framepack_core.memory.hardware import FakeHardwareProbe, TorchHardwareProbe, simulated_gpu, with_ram
    from framepack_core.memory.job_planning import JobPlanner
    from framepack_core.memory.plan import Workload
    from framepack_core.memory.report import describe
    from framepack_core.models.devices import resolve_device_config
    from framepack_core.models.loading import ModelSource
    from framepack_core.models.store import ModelStore

    problem = _plan_input_problem(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:  # a shape the planner cannot model is refused here, naming the options, before anything is probed
        Workload.from_resolution(args.resolution, latent_window_size=args.window, variant=args.model,
                                 real_cfg=args.cfg != 1.0)
    except ValueError as error:
        print(f"error: --resolution / --window: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        probe = TorchHardwareProbe()
        if args.vram_gb is not None:
            # Only the host is probed: the GPU is the one asked for, whatever this machine has.
            kind = args.device.partition(":")[0] if args.device != "auto" else "cuda"
            hardware = simulated_gpu(probe.probe("cpu"), args.vram_gb, kind)
        else:
            hardware = probe.probe(args.device)
    except ValueError as error:
        hint = "; pass --vram-gb to plan for a GPU this machine does not have" if args.vram_gb is None else ""
        print(f"error: --device {args.device}: {error}{hint}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.ram_gb is not None:
        hardware = with_ram(hardware, args.ram_gb)
    source = ModelSource(models_dir=args.models_dir)
    # Planned as a job is (``JobPlanner.plan_job``), on the machine probed or simulated above, by a store that
    # holds nothing yet.
    planner = JobPlanner(source, hardware.device_type, probe=FakeHardwareProbe(hardware))
    simulated = args.vram_gb is not None
    models = ModelStore(source, resolve_device_config("cpu" if simulated else args.device))
    sizes, size_notes = planner.sizes(args.model)
    request = _request(args)
    try:
        plan = planner.plan_job(request, None, models)
    except InvalidInputError as error:
        print(f"error: {with_option_name(error)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.json:
        data = plan.to_dict()
        data["hardware"] = {"device_type": hardware.device_type, "device_name": hardware.device_name,
                            "vram_total_gb": round(hardware.vram_total_gb, 3),
                            "vram_free_gb": round(hardware.vram_free_gb, 3),
                            "ram_available_gb": round(hardware.ram_available_gb, 3)}
        data["sizes"] = [{"component": s.component.value, "parameters": s.parameters, "source": s.source,
                          "location": s.location, "disk_dtype": s.disk_dtype} for s in sizes.components]
        data["size_notes"] = list(size_notes)
        estimate = _estimate(request, models, plan, simulated)
        data["estimate"] = {"seconds": estimate.seconds, "source": estimate.source, "text": estimate.time_text(),
                            "job": _TIMED_JOB}
        print(json.dumps(data, indent=2))
        return EXIT_OK
    print(f"Hardware: {hardware.describe()}")
    print("Sizes:\n" + "\n".join(f"  {line}" for line in sizes.describe_sources().splitlines()))
    for note in size_notes:
        print(f"  note: {note}")
    print()
    print(describe(plan))
    estimate = _estimate(request, models, plan, simulated)
    print(f"Estimated time: {estimate.time_text()}, for generate's defaults ({_TIMED_JOB})")
    return EXIT_OK


# What the time is estimated for: plan has no options for the length, the steps or TeaCache.
_TIMED_JOB = "a 5 s video, 25 steps, TeaCache on"


def _estimate(request: GenerationRequest, models: ModelStore, plan: MemoryPlan, simulated: bool) -> JobEstimate:
    """The job's estimate with ``plan``: this machine's learned speeds (the default output folder's), or a first
    guess for a ``simulated`` GPU, whose speed this machine cannot have learned."""
    from framepack_core.pipeline.estimate import estimate_job
    from framepack_core.pipeline.timings import DEFAULT_TIMINGS_PATH, StageTimings

    timings = StageTimings() if simulated else StageTimings.load(DEFAULT_TIMINGS_PATH)
    return estimate_job(request, None, models, None, timings, plan=plan)
