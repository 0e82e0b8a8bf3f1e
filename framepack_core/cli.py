"""Command line: ``python -m framepack_core generate ...``, ``python -m framepack_core tiny-models DIR`` and
``python -m framepack_core plan ...``."""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
from pathlib import Path

from framepack_core.cli_jobs import add_jobs_parser, run_jobs
from framepack_core.cli_options import (
    add_generate_parser,
    engine_from_args,
    library_progress_bars_off,
    request_from_args,
    with_option_name,
)
from framepack_core.errors import FramePackError, InvalidInputError

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_CANCELLED = 0, 1, 2, 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m framepack_core", description="FramePack image-to-video.")
    sub = parser.add_subparsers(dest="command", required=True)
    add_generate_parser(sub)
    tiny = sub.add_parser("tiny-models", help="Build the tiny random-weight model set (offline, a few MB).")
    tiny.add_argument("directory", type=Path)
    tiny.add_argument("--seed", type=int, default=0)
    _plan_parser(sub)
    add_jobs_parser(sub)
    return parser


def _plan_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="Show where each model component would live in memory (loads no model).")
    p.add_argument("--vram-gb", type=float, default=None,
                   help="Plan for a GPU with this much free memory (GiB) instead of this machine's device.")
    p.add_argument("--ram-gb", type=float, default=None, help="Plan for this much available RAM (GiB).")
    p.add_argument("--model", choices=["original", "f1"], default="original")
    p.add_argument("--resolution", type=int, default=640,
                   help="Base resolution; the plan holds for its largest bucket (default 640).")
    p.add_argument("--window", type=int, default=9, help="Latent window size (default 9).")
    p.add_argument("--cfg", type=float, default=1.0, help="Real CFG scale; other than 1 means 2 calls per step.")
    p.add_argument("--preserve-gb", type=float, default=None,
                   help="GPU memory to leave free (GiB; default max(0.5, 5%% of the card)).")
    p.add_argument("--fp8", action=argparse.BooleanOptionalAction, default=None,
                   help="--fp8 forces fp8 storage of the transformer, --no-fp8 forbids it (default: when needed).")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default auto).")
    p.add_argument("--models-dir", type=Path, default=None,
                   help="Read the sizes from this org/name tree (default: the local Hugging Face cache, else the "
                        "built-in real configs). Nothing is downloaded.")
    p.add_argument("--json", action="store_true", help="Print the plan as JSON.")


def run_generate(args: argparse.Namespace, argv: list[str] | None = None) -> int:
    """``argv``: the command line ``args`` came from (``sys.argv[1:]`` when None), for ``--from``."""
    from tqdm import tqdm

    from framepack_core.events import CancelToken, JobCancelled, JobFailed, JobFinished, Notice, SectionFinished, \
        StageChanged, StepProgress
    description, notes = None, []
    if args.from_video is not None:
        from framepack_core.cli_from import environment_notes, request_from_video

        try:
            request, description, notes = request_from_video(args, sys.argv[1:] if argv is None else argv)
        except InvalidInputError as error:
            print(f"error: {with_option_name(error)}", file=sys.stderr)
            return EXIT_BAD_INPUT
    else:
        request = request_from_args(args, Path(args.image), args.output, args.save_latents)
    engine = engine_from_args(args)
    if engine is None:
        return EXIT_BAD_INPUT
    if description is not None:
        notes += environment_notes(description, engine.models, request, Path(args.from_video))
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    cancel = CancelToken()

    def on_interrupt(signum, frame):  # noqa: ANN001
        if cancel.cancelled:
            raise KeyboardInterrupt
        print("\nStopping after the current step (Ctrl-C again to abort at once) ...", file=sys.stderr)
        cancel.cancel()

    previous_handler = signal.signal(signal.SIGINT, on_interrupt)
    bar = None
    quiet_libraries = contextlib.ExitStack()
    libraries_silenced = False
    segments_dir: Path | None = None
    try:
        events = engine.generate(request, cancel=cancel, job_dir=args.job_dir)
        for event in events:
            if args.quiet and not libraries_silenced:
                # From the first event on: the request passed validation (a refused one imports nothing more).
                quiet_libraries.enter_context(library_progress_bars_off())
                libraries_silenced = True
            if isinstance(event, Notice):
                (bar.write if bar is not None else print)(f"note: {event.message}", file=sys.stderr)
            elif isinstance(event, StageChanged):
                if bar is None and not args.quiet:
                    print(event.message, file=sys.stderr)
            elif isinstance(event, StepProgress):
                if bar is None and not args.quiet:
                    bar = tqdm(total=event.total_sections * event.total_steps, unit="step", file=sys.stderr,
                               desc=f"{engine.models.config.device}")
                if bar is not None:
                    bar.set_postfix_str(f"section {event.section}/{event.total_sections}")
                    bar.update(1)
            elif isinstance(event, SectionFinished):
                if event.segment_path is not None:
                    segments_dir = Path(event.segment_path).parent
                if bar is not None:
                    bar.write(f"section {event.section}/{event.total_sections} done: {event.video_frames} frames "
                              f"({event.video_seconds:.2f} s)", file=sys.stderr)
            elif isinstance(event, JobFinished):
                if bar is not None:
                    bar.close()
                print(f"Wrote {event.output_path} ({event.video_frames} frames, {event.width}x{event.height}, "
                      f"{event.elapsed_s:.1f} s)")
                if event.latents_path:
                    print(f"Wrote {event.latents_path}")
                return EXIT_OK
            elif isinstance(event, JobCancelled):
                if bar is not None:
                    bar.close()
                where = f"partial video: {event.partial_path}" if event.partial_path else "no section had finished"
                print(f"Cancelled after {event.sections_done} section(s); {where}", file=sys.stderr)
                return EXIT_CANCELLED
            elif isinstance(event, JobFailed):
                if bar is not None:
                    bar.close()
                print(f"error: {event.message}", file=sys.stderr)
                if event.hint:
                    print(f"  How to fix: {event.hint}", file=sys.stderr)
                if event.partial_path:
                    print(f"  The finished sections were kept in {event.partial_path}", file=sys.stderr)
                return EXIT_FAILED
    except InvalidInputError as error:
        print(f"error: {with_option_name(error)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:  # the second Ctrl-C: stop at once, without a traceback
        if bar is not None:
            bar.close()
        kept = ""
        if segments_dir is not None and any(segments_dir.glob("*.mp4")):
            kept = f"; the finished sections' video segments are in {segments_dir}"
        print(f"\nAborted{kept}", file=sys.stderr)
        return EXIT_CANCELLED
    except FramePackError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        quiet_libraries.close()
        signal.signal(signal.SIGINT, previous_handler)
    return EXIT_FAILED


def run_tiny_models(args: argparse.Namespace) -> int:
    from framepack_core.tiny_models import build_tiny_models

    root = build_tiny_models(args.directory, seed=args.seed)
    print(f"Tiny model set ready in {root}")
    return EXIT_OK


def _plan_input_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the numbers given to ``plan``, or None."""
    import math

    for option, value, low in (("--vram-gb", args.vram_gb, 0.0), ("--ram-gb", args.ram_gb, 0.0),
                               ("--preserve-gb", args.preserve_gb, 0.0)):
        if value is not None and (not math.isfinite(value) or value < low or (option == "--ram-gb" and value == 0)):
            return f"{option}: {value} is not a usable amount of memory (a number of GiB, at least 0)"
    # The job's own numbers are checked by the request, as for generate, so both commands accept the same values.
    from framepack_core.request import GenerationRequest

    try:
        GenerationRequest(image=Path("plan"), model=args.model, latent_window_size=args.window,
                          resolution=args.resolution, cfg=args.cfg).validated()
    except InvalidInputError as error:
        return with_option_name(error)
    if args.models_dir is not None and not args.models_dir.is_dir():
        return f"--models-dir: {args.models_dir} is not a folder"
    if args.vram_gb is not None and args.device == "cpu":
        return "--vram-gb plans for a GPU: leave out --device cpu (or use --device cuda or mps)"
    return None


def run_plan(args: argparse.Namespace) -> int:
    import json

    from framepack_core.hardware import TorchHardwareProbe, simulated_gpu, with_ram
    from framepack_core.memory_plan import GIB, Workload
    from framepack_core.memory_planner import plan_memory
    from framepack_core.memory_report import describe
    from framepack_core.model_sizes import find_sizes

    problem = _plan_input_problem(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        workload = Workload.from_resolution(args.resolution, latent_window_size=args.window, variant=args.model,
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
    sizes, size_notes = find_sizes(args.model, models_dir=args.models_dir)
    preserve = None if args.preserve_gb is None else int(args.preserve_gb * GIB)
    plan = plan_memory(sizes, hardware, workload, preserve_bytes=preserve, fp8=args.fp8)
    if args.json:
        data = plan.to_dict()
        data["hardware"] = {"device_type": hardware.device_type, "device_name": hardware.device_name,
                            "vram_total_gb": round(hardware.vram_total_gb, 3),
                            "vram_free_gb": round(hardware.vram_free_gb, 3),
                            "ram_available_gb": round(hardware.ram_available_gb, 3)}
        data["sizes"] = [{"component": s.component.value, "parameters": s.parameters, "source": s.source,
                          "location": s.location, "disk_dtype": s.disk_dtype} for s in sizes.components]
        data["size_notes"] = list(size_notes)
        print(json.dumps(data, indent=2))
        return EXIT_OK
    print(f"Hardware: {hardware.describe()}")
    print("Sizes:\n" + "\n".join(f"  {line}" for line in sizes.describe_sources().splitlines()))
    for note in size_notes:
        print(f"  note: {note}")
    print()
    print(describe(plan))
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "generate":
        return run_generate(args, argv)
    if args.command == "plan":
        return run_plan(args)
    if args.command == "jobs":

        return run_jobs(args)
    return run_tiny_models(args)
