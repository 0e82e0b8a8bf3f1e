"""The API's door: the login, then the request's size, checked before anything reads the request body.

``ApiDoor`` is pure ASGI middleware, so it runs before FastAPI parses (and spools) a body: a request without a
valid login gets its 401 (or 429 while logins back off) having sent only its headers, and a body larger than the
limit is refused with 413 from its declared ``Content-Length``, or, for a chunked body or one that sends more than
it declared, as soon as the bytes received pass the limit.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Collection, Mapping

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.logins import LoginGuard

# Where the door leaves the authenticated login for the routes (absent: the app has no logins).
LOGIN_SCOPE_KEY = "framepack.login"
LOGIN_REALM = 'Basic realm="FramePack", charset="UTF-8"'


class ApiDoor:
    """Checks every HTTP request to ``app`` in order: login (unless its path is in ``open_paths`` or under one of
    ``open_prefixes``), declared size, then received size."""

    def __init__(self, app: ASGIApp, *, guard: LoginGuard, max_body_bytes: int, limit_text: str,
                 open_paths: Collection[str] = (), open_prefixes: Collection[str] = (),
                 body_limits: Mapping[str, int] | None = None) -> None:
        """``limit_text``: the limit as the user set it (e.g. "50 MB"), for the 413 message. ``body_limits``:
        paths whose body may be larger (a batch carries several images, each still held to the upload limit)."""
        self.app = app
        self.guard = guard
        self.max_body_bytes = max_body_bytes
        self.limit_text = limit_text
        self.open_paths = frozenset(open_paths)
        self.open_prefixes = tuple(open_prefixes)
        self.body_limits = dict(body_limits or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan; the API has no websockets
            await self.app(scope, receive, send)
            return
        path = route_path(scope)
        if self.guard.logins_on and path not in self.open_paths and not path.startswith(self.open_prefixes):
            refusal = self._login(scope)
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        limit = self.body_limits.get(path, self.max_body_bytes)
        declared = Headers(scope=scope).get("content-length", "")
        if declared.strip().isdigit() and int(declared) > limit:
            await self._too_large()(scope, receive, send)
            return
        await self._counted(scope, receive, send, limit)

    def _login(self, scope: Scope) -> JSONResponse | None:
        """None when the request carries a valid login (then left in the scope), else the response refusing it."""
        credentials = basic_credentials(Headers(scope=scope).get("authorization"))
        if credentials is None:
            return _refuse(401, "Log in with one of the app's --auth users (HTTP Basic).",
                           "Send the user name and password as HTTP Basic credentials, e.g. curl -u USER:PASSWORD.",
                           {"WWW-Authenticate": LOGIN_REALM})
        client = scope.get("client")
        result = self.guard.check(*credentials, client[0] if client else None)
        if result.backing_off:
            return _refuse(429, "Too many failed logins for this user or from this address.",
                           f"Wait {result.retry_after} s, then log in again with the right password.",
                           {"Retry-After": str(result.retry_after)})
        if not result.ok:
            return _refuse(401, "The user name or password is wrong.",
                           "Log in with one of the app's --auth users (HTTP Basic).",
                           {"WWW-Authenticate": LOGIN_REALM})
        scope[LOGIN_SCOPE_KEY] = credentials[0]
        return None

    def _too_large(self) -> JSONResponse:
        return _refuse(413, f"The request is larger than the app's upload limit of {self.limit_text}.",
                       f"Send a smaller image (at most {self.limit_text}), or start the app with a higher "
                       "--max-file-size-mb.", {"Connection": "close"})

    async def _counted(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        """Run the app with a ``receive`` that counts the body's bytes. Past the limit the client gets a 413 at once
        and the app sees the client go away, so it stops reading and spools nothing more."""
        received = 0
        refused = False
        response_started = False

        async def counting_receive() -> Message:
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    refused = True
                    if not response_started:
                        await self._too_large()(scope, receive, send)
                    return {"type": "http.disconnect"}
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            if refused:
                return  # the app's answer to the "disconnect": the client already has its 413
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        await self.app(scope, counting_receive, tracking_send)


def route_path(scope: Scope) -> str:
    """The request's path inside this app: without the prefix the app is mounted at (``root_path``)."""
    path, root = scope["path"], scope.get("root_path", "")
    if root and path.startswith(root) and (len(path) == len(root) or path[len(root)] == "/"):
        return path[len(root):] or "/"
    return path


def basic_credentials(header: str | None) -> tuple[str, str] | None:
    """(user, password) from an ``Authorization: Basic`` header, or None when there is none or it is malformed."""
    scheme, _, token = (header or "").strip().partition(" ")
    if scheme.lower() != "basic" or not token:
        return None
    try:
        text = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, separator, password = text.partition(":")
    return (user, password) if separator and user else None


def _refuse(status: int, error: str, hint: str, headers: dict[str, str]) -> JSONResponse:
    return JSONResponse({"error": error, "hint": hint}, status_code=status, headers=headers)
