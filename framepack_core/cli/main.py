"""Command line: ``python -m framepack_core generate ...``, ``tiny-models DIR``, ``plan ...``, ``jobs ...``,
``models ...``, ``lora inspect PATH``, ``calibrate-cache`` and ``doctor``. This module only dispatches; each command
lives in its own module."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from framepack_core.cli.calibrate import add_calibrate_parser, run_calibrate
from framepack_core.cli.doctor import add_doctor_parser, run_doctor_command
from framepack_core.cli.extend import with_clip_start_image
from framepack_core.cli.generate import run_generate
from framepack_core.cli.jobs import add_jobs_parser, run_jobs
from framepack_core.cli.lora import add_lora_parser, run_lora
from framepack_core.cli.models import add_models_parser, run_models
from framepack_core.cli.options import (  # noqa: F401  (the exit codes are part of this module's contract)
    EXIT_BAD_INPUT,
    EXIT_CANCELLED,
    EXIT_FAILED,
    EXIT_OK,
    add_generate_parser,
)
from framepack_core.cli.plan import add_plan_parser, run_plan
from framepack_core.errors import EXPECTED_FAILURE_RECORD


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m framepack_core", description="FramePack image-to-video.")
    sub = parser.add_subparsers(dest="command", required=True)
    add_generate_parser(sub)
    tiny = sub.add_parser("tiny-models", help="Build the tiny random-weight model set (offline, a few MB).")
    tiny.add_argument("directory", type=Path, help="Folder to build the set in (a complete set there is reused).")
    tiny.add_argument("--seed", type=int, default=0, help="Seed of the random weights (default 0).")
    tiny.add_argument("--transformer", choices=["tiny", "medium"], default="tiny",
                      help="Transformer size: tiny (default, a few hundred kB) or medium (about 79M parameters, "
                           "some 300 MB per variant, for speed benchmarks where the DiT dominates).")
    add_plan_parser(sub)
    add_jobs_parser(sub)
    add_models_parser(sub)
    add_lora_parser(sub)
    add_calibrate_parser(sub)
    add_doctor_parser(sub)
    return parser


def run_tiny_models(args: argparse.Namespace) -> int:
    from framepack_core.models.tiny import build_tiny_models

    root = build_tiny_models(args.directory, seed=args.seed, transformer=args.transformer)
    size = "" if args.transformer == "tiny" else f" ({args.transformer} transformer)"
    print(f"Tiny model set ready in {root}{size}")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # The commands print an expected failure themselves: its log line would say it twice. Only while this command
    # runs, since tests (and scripts) call main() in-process.
    handlers = list(logging.getLogger().handlers)
    for handler in handlers:
        handler.addFilter(_not_an_expected_failure)
    try:
        return _run(args, argv)
    finally:
        for handler in handlers:
            handler.removeFilter(_not_an_expected_failure)


def _run(args: argparse.Namespace, argv: list[str] | None) -> int:
    if args.command == "generate":
        return with_clip_start_image(args, lambda: run_generate(args, argv))
    if args.command == "plan":
        return run_plan(args)
    if args.command == "jobs":
        return with_clip_start_image(args, lambda: run_jobs(args))
    if args.command == "models":
        return run_models(args)
    if args.command == "lora":
        return run_lora(args)
    if args.command == "calibrate-cache":
        return run_calibrate(args)
    if args.command == "doctor":
        return run_doctor_command(args)
    return run_tiny_models(args)


def _not_an_expected_failure(record: logging.LogRecord) -> bool:
    return not getattr(record, EXPECTED_FAILURE_RECORD, False)
