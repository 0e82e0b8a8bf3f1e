"""Exceptions the engine raises for problems a user can fix.

Every error carries a message that says what is wrong and a hint that says how to fix it, so the CLI, the UI
and the HTTP API can show both without knowing where the error came from.
"""

from __future__ import annotations


class FramePackError(Exception):
    """Base class for errors that should reach the user as a readable message."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\n  How to fix: {self.hint}" if self.hint else self.message


class InvalidInputError(FramePackError, ValueError):
    """A request field, image or prompt was refused before any model loaded."""

    def __init__(self, field: str, message: str, hint: str = "") -> None:
        super().__init__(f"{field}: {message}", hint)
        self.field = field


class MissingWeightsError(FramePackError):
    """A model component could not be found or is incomplete or corrupt on disk."""

    def __init__(self, component: str, looked_in: list[str], detail: str, hint: str) -> None:
        places = "; ".join(looked_in) if looked_in else "(nowhere)"
        super().__init__(f"Model component '{component}' could not be loaded: {detail}. Looked in: {places}", hint)
        self.component = component
        self.looked_in = looked_in


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
