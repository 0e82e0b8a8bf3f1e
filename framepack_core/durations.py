"""Durations as people say them, the one wording shared by the CLI, the page and estimates."""

from __future__ import annotations


def duration_text(seconds: float | None) -> str:
    """A time span: "8.2 s", "3 min 12 s", "1 h 05 min"; "-" when unknown."""
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def rough_duration_text(seconds: float) -> str:
    """A duration as an estimate says it: "40 s", "4 min", "1 h 20 min" (no more precise than an estimate is)."""
    if seconds < 60:
        return f"{max(1, round(seconds / 5) * 5 if seconds >= 10 else round(seconds))} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"
