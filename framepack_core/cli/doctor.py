"""``python -m framepack_core doctor [--quick] [--json]``: check this install and say how to fix what is wrong."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from framepack_core.cli.options import EXIT_FAILED, EXIT_OK


def add_doctor_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("doctor", help="Check Python, torch and the GPU, the driver, memory, disk, ffmpeg, attention "
                                      "packages, the model files and the output folder, and run a tiny job; each "
                                      "problem comes with its fix. Exits 1 when a check fails.")
    p.add_argument("--quick", action="store_true", help="Skip the end-to-end tiny job (default: run it).")
    p.add_argument("--json", action="store_true", help="Print the results as JSON (default: a table).")
    p.add_argument("--models-dir", type=Path, default=None,
                   help="Folder with the models in org/name layout (default: the Hugging Face cache).")
    p.add_argument("--output-dir", type=Path, default=None,
                   help="The output folder to check (default: outputs/ beside the code, as the app's).")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default auto).")
    p.add_argument("--demo", action="store_true",
                   help="Check the demo set (tiny models in --models-dir, default tiny_models/ beside the code) "
                        "instead of the real weights (default off).")


def run_doctor_command(args: argparse.Namespace) -> int:
    from framepack_core.doctor import run_doctor
    from framepack_core.jobs.output_naming import DEFAULT_OUTPUT_DIR
    from framepack_core.models.tiny import DEFAULT_TINY_MODELS_DIR

    models_dir = args.models_dir
    if args.demo and models_dir is None:
        models_dir = DEFAULT_TINY_MODELS_DIR
    if args.demo:
        from framepack_core.models.tiny import build_tiny_models

        build_tiny_models(models_dir)  # as launch.py --demo does on first use
    output_dir = args.output_dir if args.output_dir is not None else DEFAULT_OUTPUT_DIR
    if not args.json:
        print("Checking this install" + (" (quick)" if args.quick else " (a tiny job runs at the end)") + " ...",
              file=sys.stderr, flush=True)
    report = run_doctor(models_dir, Path(output_dir), args.device, demo=args.demo, quick=args.quick)
    print(report.to_json() if args.json else report.table())
    return EXIT_FAILED if report.failed else EXIT_OK
