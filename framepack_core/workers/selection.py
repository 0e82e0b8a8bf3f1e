"""Which workers run the jobs: the one choice ``launch.py`` and ``jobs run`` make from the same settings."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from framepack_core.errors import InvalidInputError

if TYPE_CHECKING:  # events (numpy) load only when workers are made, so the CLI's help stays instant
    from framepack_core.workers.recipe import EngineRecipe
    from framepack_core.workers.remote import Worker


def make_workers(recipe: EngineRecipe, *, devices: str | None = None, ray: str | None = None,
                 ray_workers: int | None = None) -> list[Worker]:
    """A worker process per device ``devices`` names, or ``ray_workers`` Ray actors on the cluster at ``ray``;
    none when neither is given (the caller runs the jobs itself, one at a time). ``InvalidInputError`` (field
    ``devices``, ``ray`` or ``ray_workers``) for a device this machine does not have, both at once, Ray missing
    or its cluster out of reach."""
    if ray is not None:
        if devices is not None:
            raise InvalidInputError("ray", "cannot be combined with worker devices",
                                    "Give either {ray} (Ray actors) or {devices} (worker processes on this "
                                    "machine), not both.")
        from framepack_core.workers.ray_actors import ray_workers as make_ray_workers

        # Timings learned on the cluster's nodes would not describe this machine: the actors keep theirs in memory.
        return list(make_ray_workers(replace(recipe, timings_path=None), ray, ray_workers))
    if ray_workers is not None:
        raise InvalidInputError("ray_workers", "is given without a Ray address",
                                "Also set {ray}: local, or a cluster's address.")
    if devices is None:
        return []
    from framepack_core.workers.process import local_workers

    return local_workers(recipe, devices)
