"""``generate --job-dir DIR --reroll-from K [--seed S] [--prompt P]``: re-roll a finished or interrupted job from
section K into a new job folder beside it (``framepack_core.jobs.reroll``), keeping the old folder and video."""

from __future__ import annotations

import argparse
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from framepack_core.cli.from_output import setting_options, typed_settings
from framepack_core.cli.options import request_from_args
from framepack_core.errors import InvalidInputError

if TYPE_CHECKING:
    from framepack_core.request import GenerationRequest

# What a re-roll may change; every other setting is the job's own.
REROLL_SETTINGS = frozenset({"seed", "prompt"})


def request_for_reroll(args: argparse.Namespace, argv: Sequence[str]) -> tuple[GenerationRequest, Path, list[str]]:
    """Prepare the re-roll's job folder; returns the request to run in it, the folder and notes for the user
    (which part of the clip changes, where the old and the new version are). ``InvalidInputError`` names
    ``job_dir``, ``reroll_from`` or a setting given that a re-roll takes from the job."""
    from framepack_core.jobs.output_naming import DEFAULT_OUTPUT_DIR, output_path, reroll_output_path
    from framepack_core.jobs.reroll import (
        existing_reroll_dir,
        prepare_reroll,
        read_job_record,
        record_output,
        reroll_job_dir,
        rerolled_spec,
    )
    from framepack_core.jobs.spec import JobSpec
    from framepack_core.request import MAX_SEED
    from framepack_core.sampling.rerolls import check_reroll_section
    from framepack_core.sampling.schedule import total_latent_sections

    if args.job_dir is None:
        raise InvalidInputError("reroll_from", "needs the folder of the job to re-roll",
                                "Give the job's {job_dir} as well.")
    given = typed_settings(argv)
    fixed = sorted(given - REROLL_SETTINGS)
    if fixed:
        raise InvalidInputError(setting_options()[fixed[0]], "is the job's own in a re-roll",
                                "A re-roll takes every setting from its job folder but --seed and --prompt.")
    seed = args.seed if "seed" in given else secrets.randbelow(MAX_SEED + 1)
    prompt = args.prompt if "prompt" in given else None
    image = Path(args.image)
    if not image.is_file():
        raise InvalidInputError("image", f"{image} is not a file", "Give the job's own start image.")
    # The job's other input files (an end image, keyframes) come from their own options, as for a new job.
    files = JobSpec.input_files_of(request_from_args(args, image))
    spec, _ = read_job_record(Path(args.job_dir))
    spec.request(image, files=files)  # every input file is there, before any folder is made
    if "seed" in given:  # the same re-roll asked for again (after a Ctrl-C or a crash): resume it
        check_reroll_section(args.reroll_from, total_latent_sections(spec.settings["seconds"],
                                                                     spec.settings["latent_window_size"]))
        wanted = rerolled_spec(spec, args.reroll_from, seed, prompt)
        existing = existing_reroll_dir(Path(args.job_dir), wanted)
        if existing is not None:
            recorded = read_job_record(existing)[1]
            output = Path(args.output) if args.output else recorded
            return (wanted.request(image, output=output, save_latents=args.save_latents, files=files), existing,
                    [f"this re-roll is already in {existing}: it goes on from there"])
    target = reroll_job_dir(args.job_dir)
    job = prepare_reroll(Path(args.job_dir), target, args.reroll_from, seed, prompt, image=image)
    previous = job.previous_output or output_path(DEFAULT_OUTPUT_DIR, seed=int(job.spec.settings["seed"]),
                                                  model=str(job.spec.settings["model"]))
    output = Path(args.output) if args.output else reroll_output_path(previous, len(job.spec.settings["rerolls"]) + 1)
    record_output(target, output)
    request = job.spec.request(image, output=output, save_latents=args.save_latents, files=files)
    notes = [job.span.describe(),
             f"re-roll seed {seed}" + (f", prompt {prompt!r}" if prompt is not None else ", the job's prompt"),
             f"the previous version stays in {args.job_dir}" + (f" and {previous}" if job.previous_output else "")
             + f"; this one goes to {target} and {output}"]
    return request, target, notes
