"""``--devices`` for ``jobs run``: a worker process per device, all claiming jobs from the one queue."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from framepack_core.workers.recipe import EngineRecipe
    from framepack_core.workers.remote import Worker


def add_worker_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--devices", default=None, metavar="LIST",
                   help="Run jobs side by side, one worker process per device, each with its own copy of the "
                        "models: cuda:0,cuda:1, or auto for every GPU. A device may repeat (cpu,cpu). Default: "
                        "one job at a time on --device, in this process.")


def recipe_from_args(args: argparse.Namespace) -> EngineRecipe:
    """The engine ``add_runtime_options``' values describe, as a recipe a worker builds where it runs."""
    from framepack_core.pipeline.timings import DEFAULT_TIMINGS_PATH
    from framepack_core.workers.recipe import EngineRecipe

    return EngineRecipe(device=args.device, dtype=args.dtype, models_dir=args.models_dir, offline=args.offline,
                        attention=args.attention, compile=args.compile, timings_path=DEFAULT_TIMINGS_PATH)


def workers_from_args(args: argparse.Namespace) -> list[Worker] | None:
    """The workers ``--devices`` asks for, None when it is not given (the jobs run in this process).
    ``InvalidInputError`` (field ``devices``) for a device this machine does not have."""
    if args.devices is None:
        return None
    from framepack_core.workers.process import local_workers

    return local_workers(recipe_from_args(args), args.devices)
