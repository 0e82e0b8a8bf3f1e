"""The step caches a job can run with, named once for the request, the CLI, the page and the API.

Light on purpose (no torch): the request imports it. Applying a method to a transformer is
``framepack_core.sampling.caches``'s job.
"""

from __future__ import annotations

from enum import Enum


class CacheMethod(str, Enum):
    """How a job skips transformer work between denoising steps.

    ``TEACACHE`` is the official app's (its default, hand-written to match it, ``sampling.teacache``); the others
    are diffusers' hooks. ``NONE`` evaluates the full model at every step.
    """

    NONE = "none"
    TEACACHE = "teacache"
    FIRST_BLOCK = "first-block"
    MAGCACHE = "magcache"
    TAYLORSEER = "taylorseer"


# The threshold each method uses when the request gives none. TeaCache's is the official app's; the others are
# diffusers' own defaults for their configs.
DEFAULT_CACHE_THRESHOLDS: dict[CacheMethod, float | None] = {
    CacheMethod.NONE: None,
    CacheMethod.TEACACHE: 0.15,
    CacheMethod.FIRST_BLOCK: 0.05,
    CacheMethod.MAGCACHE: 0.06,
    CacheMethod.TAYLORSEER: None,  # no threshold: it predicts on a fixed interval
}
