"""Exceptions the engine raises for problems a user can fix.

Every error carries a message that says what is wrong and a hint that says how to fix it, so the CLI, the UI
and the HTTP API can show both without knowing where the error came from.

A text that points at a setting names its field in braces (``"give another folder as {job_dir}"``), never a
command-line flag: a web user cannot pass ``--job-dir``. The texts travel with the markers (in events and in the
job queue) and each edge renders them when it shows them, with its own names: the CLI its flags, the page its
labels, the HTTP API the JSON field names. Texts stored before markers existed have none and render as written.
"""

from __future__ import annotations

import re
from collections.abc import Callable

# The settings an error's text may point at. A closed set, so that braces in a path or in quoted input are never
# taken for a marker; every edge has a name for each (tests pin that).
MARKED_FIELDS = frozenset({
    "seconds", "resolution", "latent_window_size", "cache", "gpu_memory_preservation", "fp8",
    "save_latents", "job_dir", "models_dir", "offline", "device", "dtype",
    "model", "attention", "compile", "devices", "ray", "ray_workers",
})

# What an edge calls a field, or None when it has no name for it (the marker is then shown as it is).
FieldNamer = Callable[[str], "str | None"]

_FIELD_MARKER = re.compile("\\{(" + "|".join(sorted(MARKED_FIELDS)) + ")\\}")


def field_name(field: str) -> str:
    """The plain namer: the field as the request and the HTTP API spell it (``job_dir``)."""
    return field


def render_fields(text: str, name_field: FieldNamer = field_name) -> str:
    """``text`` with each ``{field}`` marker replaced by ``name_field(field)``."""

    def name(match: re.Match[str]) -> str:
        named = name_field(match.group(1))
        return match.group(0) if named is None else named

    return _FIELD_MARKER.sub(name, text)


class FramePackError(Exception):
    """Base class for errors that should reach the user as a readable message."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def render(self, name_field: FieldNamer = field_name) -> str:
        """The message and its fix as one text, each setting named by ``name_field``."""
        message, hint = render_fields(self.message, name_field), render_fields(self.hint, name_field)
        return f"{message}\n  How to fix: {hint}" if hint else message

    def __str__(self) -> str:
        return self.render()


class InvalidInputError(FramePackError, ValueError):
    """A request field, image or prompt was refused before any model loaded."""

    def __init__(self, field: str, message: str, hint: str = "") -> None:
        super().__init__(f"{field}: {message}", hint)
        self.field = field


class MissingWeightsError(FramePackError):
    """A model component (``component``, the first of them) could not be found or is incomplete or corrupt on disk.

    When several are, ``summary`` is the message: one short paragraph that names them all, while ``details`` says,
    one line each, where each was looked for and what is wrong; the edges show the details second.
    """

    def __init__(self, component: str, looked_in: list[str], detail: str, hint: str, *, summary: str = "",
                 details: str = "") -> None:
        places = "; ".join(looked_in) if looked_in else "(nowhere)"
        super().__init__(summary or f"Model component '{component}' could not be loaded: {detail}. Looked in: {places}",
                         hint)
        self.component = component
        self.looked_in = looked_in
        self.details = details


class OutputWriteError(FramePackError):
    """The video or latents could not be written (full disk, permissions)."""


class Cancelled(Exception):
    """Raised inside the engine when the job's cancel token is set. Not a failure."""


class DiskFullError(FramePackError):
    """A write failed because the disk (or the queue's database) is full. Nothing half-written was kept."""

    def __init__(self, what: str, where: str = "") -> None:
        place = f" ({where})" if where else ""
        super().__init__(f"The disk is full: could not write {what}{place}.",
                         "Free some disk space on the drive that holds the output folder, then try again.")


# Set on the one log record of an expected failure: a caller that shows the failure event itself (the CLI) may
# drop that record, so the user reads the message once.
EXPECTED_FAILURE_RECORD = "framepack_expected_failure"
