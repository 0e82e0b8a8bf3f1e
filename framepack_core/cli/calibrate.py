"""``python -m framepack_core calibrate-cache``: measure MagCache's per-step magnitude ratios on this machine's
transformer with diffusers' calibration mode, and keep them next to the models for later MagCache jobs."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path

from framepack_core.cli.options import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_OK,
    add_runtime_options,
    add_setting_options,
    engine_from_args,
    option_text,
    request_from_args,
    with_option_name,
)
from framepack_core.errors import FramePackError, InvalidInputError


def add_calibrate_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("calibrate-cache",
                       help="Measure MagCache's per-step ratios for this transformer (one uncached job) and save "
                            "them where later --cache magcache jobs find them.")
    p.add_argument("--image", required=True, help="Input image of the calibration job (any typical one).")
    add_setting_options(p)
    add_runtime_options(p)
    p.add_argument("--output", type=Path, default=None,
                   help="Also keep the calibration job's video here (default: not kept).")
    p.add_argument("--ratios-file", type=Path, default=None,
                   help="Where to write the ratios (default: magcache_ratios.json in --models-dir, else in the "
                        "Hugging Face cache, where jobs look for them).")
    return p


def run_calibrate(args: argparse.Namespace) -> int:
    from framepack_core.events import JobCancelled, JobFailed, JobFinished, StageChanged
    from framepack_core.models.identity import model_identities
    from framepack_core.pipeline.timings import StageTimings
    from framepack_core.sampling.caches import MagCacheCalibration
    from framepack_core.sampling.magcache_ratios import ratios_path, save_calibration

    engine = engine_from_args(args)
    if engine is None:
        return EXIT_BAD_INPUT
    # Learned in memory only: an uncached calibration run must not become MagCache's learned speed.
    engine.timings = StageTimings()
    source = engine.models.source
    target = args.ratios_file or ratios_path(source.models_dir, source.cache_dir)
    calibration = MagCacheCalibration()
    with tempfile.TemporaryDirectory(prefix="framepack-calibrate-") as scratch:
        output = args.output or Path(scratch) / "calibration.mp4"
        # Whatever --cache says: the job runs MagCache's hooks in calibration mode, which skip nothing.
        request = dataclasses.replace(request_from_args(args, Path(args.image), output), cache="magcache",
                                      cache_threshold=None)
        try:
            for event in engine.generate(request, magcache_calibration=calibration):
                if isinstance(event, StageChanged):
                    print(event.message, file=sys.stderr)
                elif isinstance(event, JobFailed):
                    print(f"error: {option_text(event.message)}", file=sys.stderr)
                    if event.hint:
                        print(f"  How to fix: {option_text(event.hint)}", file=sys.stderr)
                    return EXIT_FAILED
                elif isinstance(event, JobCancelled):
                    return EXIT_FAILED
                elif isinstance(event, JobFinished):
                    break
        except InvalidInputError as error:
            print(f"error: {with_option_name(error)}", file=sys.stderr)
            return EXIT_BAD_INPUT
        except FramePackError as error:
            print(f"error: {with_option_name(error)}", file=sys.stderr)
            return EXIT_FAILED
    request = request.validated()
    variant = request.model.value
    ratios = calibration.ratios
    if not ratios:
        print("error: the calibration job recorded no ratios", file=sys.stderr)
        return EXIT_FAILED
    identity = model_identities(source, variant).get(f"transformer:{variant}")
    note = f"{len(calibration.sections)} section(s) of {request.steps} steps, mean per step"
    save_calibration(target, variant, identity, ratios, request.steps, note)
    print(f"Wrote MagCache ratios for {variant} ({request.steps} steps) to {target}:")
    print("  " + ", ".join(f"{value:.5f}" for value in ratios))
    return EXIT_OK
