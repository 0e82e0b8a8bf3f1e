"""``--devices`` and ``--ray`` for ``jobs run``: workers that claim jobs from the one queue, a process per local
device or a Ray actor per GPU of a cluster."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # events (numpy) load only when workers are made, so the CLI's help stays instant
    from framepack_core.workers.remote import Worker


def add_worker_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--devices", default=None, metavar="LIST",
                   help="Run jobs side by side, one worker process per device, each with its own copy of the "
                        "models: cuda:0,cuda:1, or auto for every GPU. A device may repeat (cpu,cpu). Default: "
                        "one job at a time on --device, in this process.")
    p.add_argument("--ray", default=None, metavar="ADDRESS",
                   help="Run jobs on a Ray cluster, one actor per GPU, each with its own copy of the models: local "
                        "starts Ray on this machine; auto, HOST:PORT or ray://HOST:PORT joins a running cluster. "
                        "--device is the actors' device (cpu for CPU actors). Needs pip install -r "
                        "requirements-ray.txt. Default: no Ray.")
    p.add_argument("--ray-workers", type=int, default=None, metavar="N",
                   help="With --ray: how many actors (default: one per GPU of the cluster, or one on CPU).")


def workers_from_args(args: argparse.Namespace) -> list[Worker] | None:
    """The workers ``--devices`` or ``--ray`` ask for, None when neither is given (the jobs run in this process).
    ``InvalidInputError`` (field ``devices``, ``ray`` or ``ray_workers``): see ``make_workers``."""
    from framepack_core.cli.options import recipe_from_args
    from framepack_core.workers.selection import make_workers

    workers = make_workers(recipe_from_args(args), devices=args.devices, ray=getattr(args, "ray", None),
                           ray_workers=getattr(args, "ray_workers", None))
    return workers or None
