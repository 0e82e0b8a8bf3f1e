"""MagCache's per-step magnitude ratios for FramePack: the published ones, or this machine's calibration.

MagCache skips a step while the accumulated change of the residual's magnitude, predicted from these ratios,
stays under its threshold. The ratios belong to a checkpoint and a sampler: the defaults below are the ones
MagCache's authors calibrated for FramePack and FramePack-F1 at 25 steps (Zehong Ma et al., "MagCache: Fast Video
Generation with Magnitude-Aware Cache", https://github.com/Zehong-Ma/MagCache, MagCache4FramePack/
magcache_demo_gradio.py and magcache_demo_gradio_f1.py, Apache License 2.0; only the numbers are taken, as data).

``python -m framepack_core calibrate-cache`` measures them again with diffusers' calibration mode and writes
``magcache_ratios.json`` next to the models (``ratios_path``); a later job on the same transformer files uses
those instead. A job with another step count gets them interpolated by diffusers (``MagCacheConfig``'s nearest
neighbour).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from framepack_core.files import write_text_atomically

RATIOS_FILE = "magcache_ratios.json"
RATIOS_KIND = "framepack-magcache-ratios"
RATIOS_VERSION = 1
PUBLISHED_ORIGIN = "published (MagCache4FramePack, 25 steps)"

# Step 0's ratio is 1.0 (nothing to compare with), then one per step: 25 in all.
PUBLISHED_RATIOS: dict[str, tuple[float, ...]] = {
    "original": (1.0, 1.26562, 1.23438, 1.03125, 1.02344, 1.03906, 1.01562, 1.03906, 1.05469, 1.02344, 1.03906,
                 0.99609, 1.03125, 1.02344, 1.01562, 1.02344, 1.00781, 1.04688, 0.98828, 1.0, 1.00781, 0.98828,
                 0.94141, 0.94141, 0.78906),
    "f1": (1.0, 1.25781, 1.08594, 1.02344, 1.00781, 1.02344, 1.00781, 1.02344, 1.05469, 0.99609, 1.03906, 1.00781,
           1.01562, 1.00781, 1.02344, 1.01562, 0.98047, 1.05469, 0.98047, 0.96875, 1.03125, 0.97266, 0.9375,
           0.96484, 0.78516),
}


@dataclass(frozen=True)
class MagCacheRatios:
    ratios: tuple[float, ...]
    origin: str  # PUBLISHED_ORIGIN, or "calibrated (<file>)"


def ratios_path(models_dir: Path | None, cache_dir: Path | None = None) -> Path:
    """Where calibrated ratios live: next to the models (the ``org/name`` tree, else the Hugging Face cache)."""
    if models_dir is not None:
        return Path(models_dir) / RATIOS_FILE
    if cache_dir is not None:
        return Path(cache_dir) / RATIOS_FILE
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE) / RATIOS_FILE


def magcache_ratios(path: Path, variant: str, transformer_identity: str | None) -> MagCacheRatios:
    """The calibrated ratios in ``path`` for ``variant``'s transformer, when they were measured on these very
    files (``transformer_identity``); the published ones otherwise."""
    entry = _read(path).get(variant)
    if isinstance(entry, dict) and entry.get("transformer") == transformer_identity and _valid(entry.get("ratios")):
        return MagCacheRatios(tuple(float(value) for value in entry["ratios"]), f"calibrated ({path})")
    return MagCacheRatios(PUBLISHED_RATIOS[variant], PUBLISHED_ORIGIN)


def save_calibration(path: Path, variant: str, transformer_identity: str | None, ratios: Sequence[float],
                     steps: int, note: str = "") -> Path:
    """Record ``variant``'s calibrated ratios in ``path`` (atomically), keeping the other variant's entry."""
    if not _valid(ratios) or len(ratios) != steps:
        raise ValueError(f"expected {steps} positive ratios, got {list(ratios)}")
    data = {"kind": RATIOS_KIND, "version": RATIOS_VERSION, "variants": _read(path)}
    data["variants"][variant] = {"transformer": transformer_identity, "steps": steps,
                                 "ratios": [round(float(value), 6) for value in ratios], "note": note}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomically(path, json.dumps(data, indent=2) + "\n")
    return path


def _read(path: Path) -> dict[str, Any]:
    """The file's entries per variant; an absent or unreadable file has none (the published ratios apply)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("kind") != RATIOS_KIND or not isinstance(data.get("variants"), dict):
        return {}
    return dict(data["variants"])


def _valid(ratios: Any) -> bool:
    return (isinstance(ratios, (list, tuple)) and len(ratios) > 0
            and all(isinstance(value, (int, float)) and value > 0 for value in ratios))
