"""How the job API answers errors: one JSON shape, ``{"error", "hint", "field"?}``, never a server path.

Every expected error says what is wrong (``error``) and how to fix it (``hint``), naming settings by their field
names, never by a command-line flag (``framepack_core.errors.render_fields``). Paths inside the app's folders
(the output folder, the queue, the temp folder) are cut to their file names, and a route can name server paths
that must read as something else (``show_as``: the upload's temporary file as the client's file name).
"""

from __future__ import annotations

import errno
import re
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from framepack_core.errors import DiskFullError, FramePackError, InvalidInputError, render_fields
from framepack_core.jobs.queue import QueueError, QueueLimitError

# Characters that end a path inside a message: whitespace, quotes and the punctuation our messages put after one.
_PATH_TAIL = r"[^\s'\"(),;]*"
_LOCATIONS = ("body", "query", "path", "header", "cookie")


class ApiRefusal(HTTPException):
    """An expected refusal: its status, what is wrong and how to fix it."""

    def __init__(self, status_code: int, error: str, hint: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(status_code, error, dict(headers) if headers else None)
        self.hint = hint


class PathHider:
    """Cuts paths inside ``folders`` in a text down to their file names."""

    def __init__(self, folders: Iterable[Path]) -> None:
        # Absolute spellings only: a relative one ("outputs") would match ordinary words in a message.
        spellings = {str(Path(folder).absolute()) for folder in folders} | {str(Path(folder).resolve())
                                                                             for folder in folders}
        # Longest first, so a folder inside another is matched whole.
        alternatives = "|".join(re.escape(s) for s in sorted(spellings, key=len, reverse=True) if s not in ("", "/"))
        self._pattern = re.compile(f"(?:{alternatives}){_PATH_TAIL}") if alternatives else None

    def __call__(self, text: str, show_as: Mapping[str, str] | None = None) -> str:
        for server_path, shown in (show_as or {}).items():
            text = text.replace(server_path, shown)
        if self._pattern is not None:
            text = self._pattern.sub(_file_name, text)
        # A message may quote what the client sent; text that is not valid Unicode must not break the answer.
        return text.encode("utf-8", "replace").decode("utf-8")


def api_text(text: str) -> str:
    """An engine text as the API shows it: each setting it points at by its JSON field name (``job_dir``)."""
    return render_fields(text)


def install_error_handlers(api: FastAPI, hide_paths: PathHider) -> None:
    """Answer every expected error of ``api`` in the API's shape."""

    def answer(request: Request, status: int, error: str, hint: str = "", field: str | None = None,
               headers: Mapping[str, str] | None = None) -> JSONResponse:
        show_as = getattr(request.state, "show_as", None)
        body: dict[str, str] = {"error": hide_paths(api_text(error), show_as),
                                "hint": hide_paths(api_text(hint), show_as)}
        if field is not None:
            body["field"] = hide_paths(field)
        return JSONResponse(body, status_code=status, headers=dict(headers or {}))

    @api.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        if _is_disk_full(error.__cause__):  # the body could not be spooled while it was parsed
            return await disk_full(request, DiskFullError("the uploaded request"))
        if isinstance(error.__cause__, UnicodeDecodeError):
            return answer(request, 400, f"The request body is not UTF-8 text (byte {error.__cause__.start} is not).",
                          "Encode the JSON as UTF-8.")
        if error.status_code == 400:  # FastAPI could not parse the body
            return answer(request, 400, str(error.detail), "Send what the API's description (its /docs page) "
                          "shows: a multipart form to submit a job, a JSON object to edit one.")
        return answer(request, error.status_code, str(error.detail), getattr(error, "hint", ""),
                      headers=error.headers)

    @api.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = error.errors()
        first = problems[0] if problems else {}
        field = ".".join(str(part) for part in first.get("loc", ()) if part not in _LOCATIONS) or None
        message = str(first.get("msg", "The request does not match the API's description."))
        return answer(request, 422, f"{field}: {message}" if field else message,
                      "See the API's description at its /docs page.", field)

    @api.exception_handler(InvalidInputError)
    async def invalid_input(request: Request, error: InvalidInputError) -> JSONResponse:
        return answer(request, 422, error.message, error.hint, error.field)

    @api.exception_handler(QueueLimitError)
    async def too_many_pending(request: Request, error: QueueLimitError) -> JSONResponse:
        return answer(request, 429, error.message, error.hint)

    @api.exception_handler(QueueError)
    async def queue_conflict(request: Request, error: QueueError) -> JSONResponse:
        return answer(request, 409, error.message, error.hint)

    @api.exception_handler(DiskFullError)
    async def disk_full(request: Request, error: FramePackError) -> JSONResponse:
        return answer(request, 507, error.message, error.hint)

    @api.exception_handler(OSError)
    async def os_error(request: Request, error: OSError) -> JSONResponse:
        if _is_disk_full(error):
            return await disk_full(request, DiskFullError("the request's data"))
        raise error  # a bug or a broken system: the server error it always was


def _file_name(match: re.Match[str]) -> str:
    path = match.group(0)
    stripped = path.rstrip(".:")  # the end of a sentence, not of the name
    return Path(stripped).name + path[len(stripped):]


def _is_disk_full(error: BaseException | None) -> bool:
    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)


def default_hidden_folders(*folders: Path) -> list[Path]:
    """``folders`` and the system's temp folder (where request bodies are spooled)."""
    return [*folders, Path(tempfile.gettempdir())]
