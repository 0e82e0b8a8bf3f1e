"""The LoRA panel's pure pieces: the folder's files as the panel's rows, the rows' weights as request fields, and a
video's LoRAs found again in the folder by SHA-256.

Nothing here touches Gradio's components (``app.ui.lora_panel`` lays them out). The page sends the server only
names of the folder's files, which ``LoraFolder`` resolves, so no path from a browser is ever opened.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from framepack_core.lora.library import LORA_SUFFIX, LoraFile, LoraFolder

# The panel has this many rows at most (one weight slider each); a bigger folder shows its first files by name.
MAX_LORA_ROWS = 24
WEIGHT_RANGE = (0.0, 2.0)  # the slider's; the request takes more, which the API and the CLI can send


@dataclass(frozen=True)
class LoraRow:
    """One file of the folder as the panel shows it: its slider's label and info, and its weight."""

    name: str
    info: str
    weight: float = 0.0


def size_text(size: int) -> str:
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} bytes"


def panel_rows(files: Sequence[LoraFile], weights: Mapping[str, float] | None = None) -> list[LoraRow]:
    """The rows for the folder's ``files`` (at most ``MAX_LORA_ROWS``), each at its weight in ``weights`` (by name;
    0 when absent: off)."""
    weights = weights or {}
    return [LoraRow(lora.name, size_text(lora.size), _on_slider(weights.get(lora.name, 0.0)))
            for lora in files[:MAX_LORA_ROWS]]


def panel_note(files: Sequence[LoraFile], folder_words: str) -> str:
    """The words above the rows: where to put files when there are none, else how the weights work."""
    if not files:
        return (f"No LoRA files yet. Put `{LORA_SUFFIX}` files in {folder_words}, then press **Refresh**. "
                "FramePack (HunyuanVideo) LoRAs in diffusers, musubi-tuner or kohya format are read.")
    note = (f"{len(files)} LoRA file{'s' if len(files) != 1 else ''} in {folder_words}. Set a weight to use one: "
            "1 is the strength it was trained at, **0 turns it off**.")
    if len(files) > MAX_LORA_ROWS:
        note += f" Only the first {MAX_LORA_ROWS} are listed here; the API takes any of them by name."
    return note


def folder_words(folder: LoraFolder, *, show_path: bool) -> str:
    """How the panel names the LoRA folder: its path, or (with logins, where users should not learn the server's
    folders) words that send them to whoever runs the app."""
    return f"`{folder.folder}`" if show_path else "the app's LoRA folder (ask whoever runs the app)"


def lora_request_values(folder: LoraFolder, names: Sequence[str], weights: Sequence[float | None],
                        fuse: bool) -> dict[str, Any]:
    """The request fields the panel sets: each row with a weight becomes a LoRA, resolved by name in the folder
    (``InvalidInputError`` naming ``loras`` for a file gone since the panel was drawn). Fuse without a LoRA is
    left off: it would change nothing but the job's settings (and so its spec's digest)."""
    chosen = {name: float(weight) for name, weight in zip(names, weights, strict=False) if weight}
    loras = folder.choices(chosen)
    return {"loras": loras, "lora_fuse": bool(fuse) and bool(loras)}


def weights_from_spec(inputs: Mapping[str, Any], files: Sequence[LoraFile]) -> tuple[dict[str, float], str]:
    """A job's LoRAs (``spec.inputs["loras"]``, by SHA-256) found again among the folder's ``files``: the weights
    by name, and a sentence for the page about those the folder lacks ("" when none)."""
    by_sha256 = {lora.sha256: lora.name for lora in files if lora.sha256}
    weights: dict[str, float] = {}
    missing = []
    for listed in inputs.get("loras") or ():
        name = by_sha256.get(listed["sha256"])
        if name is None:
            missing.append(f"`{listed['sha256'][:12]}…` at weight {float(listed['weight']):g}")
        else:
            weights[name] = float(listed["weight"])
    shown = {lora.name for lora in files[:MAX_LORA_ROWS]}
    hidden = [name for name in weights if name not in shown]
    note = ""
    if missing:
        note += (f" The LoRA folder lacks {len(missing)} LoRA{'s' if len(missing) != 1 else ''} the job used (SHA-256 "
                 f"{', '.join(missing)}): put the same file{'s' if len(missing) != 1 else ''} there and load again.")
    if hidden:
        note += f" {', '.join(hidden)} {'is' if len(hidden) == 1 else 'are'} past the panel's {MAX_LORA_ROWS} rows."
    off_slider = [name for name, weight in weights.items() if _on_slider(weight) != weight]
    if off_slider:
        note += (f" The weight of {', '.join(off_slider)} is outside the panel's {WEIGHT_RANGE[0]:g} to "
                 f"{WEIGHT_RANGE[1]:g}; the slider shows the nearest value.")
    return weights, note


def _on_slider(weight: float) -> float:
    return min(max(float(weight), WEIGHT_RANGE[0]), WEIGHT_RANGE[1])
