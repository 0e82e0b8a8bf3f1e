"""Drive a running Gradio app over plain HTTP, as its page does: log in, read /config, fire any event.

The sharing tests use this to reach *every* route a browser can, the private ones included: an endpoint hidden
from the API page (``api_visibility="private"``) is still callable by anyone who can load the page, so its
handler must check who is asking. Events are found the way a user triggers them: by the ``elem_id`` of the
component and the event name (``("queue-delete", "click")``).
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx


class GradioSession:
    """One logged-in browser session (its own cookies and session hash)."""

    def __init__(self, base_url: str, login: tuple[str, str] | None = None, timeout: float = 120.0) -> None:
        self.base = base_url.rstrip("/")
        self.http = httpx.Client(base_url=self.base, timeout=timeout, follow_redirects=False)
        self.session_hash = uuid.uuid4().hex[:11]
        if login is not None:
            response = self.http.post("/login", data={"username": login[0], "password": login[1]})
            if response.status_code != 200:
                raise AssertionError(f"login as {login[0]} failed: {response.status_code} {response.text}")
        self._config: dict[str, Any] | None = None

    def close(self) -> None:
        self.http.close()

    @property
    def config(self) -> dict[str, Any]:
        if self._config is None:
            response = self.http.get("/config")
            response.raise_for_status()
            self._config = response.json()
        return self._config

    def component_id(self, elem_id: str) -> int:
        for component in self.config["components"]:
            if component.get("props", {}).get("elem_id") == elem_id:
                return component["id"]
        raise KeyError(f"no component with elem_id {elem_id!r}")

    def dependency(self, elem_id: str | None, event: str) -> dict[str, Any]:
        """The event listener for ``event`` on the component ``elem_id`` (None: the page's own load event)."""
        target = None if elem_id is None else self.component_id(elem_id)
        for dependency in self.config["dependencies"]:
            for target_id, trigger in dependency["targets"]:
                if trigger == event and (target is None or target_id == target):
                    return dependency
        raise KeyError(f"no {event} listener on {elem_id!r}")

    def chained(self, dependency: dict[str, Any]) -> dict[str, Any]:
        """The listener that runs after ``dependency`` (its ``.then``): e.g. the job behind Start's first step."""
        return next(d for d in self.config["dependencies"] if d.get("trigger_after") == dependency["id"])

    def by_api_name(self, api_name: str) -> dict[str, Any]:
        return next(d for d in self.config["dependencies"] if d.get("api_name") == api_name)

    def upload(self, data: bytes, name: str = "upload.png") -> dict[str, Any]:
        """Upload a file as the page does; returns the FileData to pass to an event."""
        response = self.http.post("/gradio_api/upload", files={"files": (name, data)})
        response.raise_for_status()
        return {"path": response.json()[0], "orig_name": name, "meta": {"_type": "gradio.FileData"}}

    def dependencies(self, event: str) -> list[dict[str, Any]]:
        return [d for d in self.config["dependencies"] if any(t[1] == event for t in d["targets"])]

    def call(self, dependency: dict[str, Any], data: list[Any], event_data: Any = None) -> list[dict[str, Any]]:
        """Fire one event and return every message the server sent for it (the last holds the output)."""
        trigger = dependency["targets"][0][0] if dependency["targets"] else None
        body = {"data": data, "fn_index": dependency["id"], "session_hash": self.session_hash,
                "event_data": event_data, "trigger_id": trigger}
        # ASCII JSON, as browsers send it: text that is not valid Unicode (a lone surrogate) still travels.
        content, headers = json.dumps(body).encode(), {"content-type": "application/json"}
        if not dependency.get("queue", True):
            response = self.http.post("/gradio_api/run/predict", content=content, headers=headers)
            return [{"msg": "process_completed", "status": response.status_code,
                     "success": response.status_code == 200, "output": _json_or_text(response)}]
        joined = self.http.post("/gradio_api/queue/join", content=content, headers=headers)
        if joined.status_code != 200:
            return [{"msg": "process_completed", "status": joined.status_code, "success": False,
                     "output": _json_or_text(joined)}]
        event_id = joined.json()["event_id"]
        messages = []
        with self.http.stream("GET", "/gradio_api/queue/data", params={"session_hash": self.session_hash}) as sse:
            for line in sse.iter_lines():
                if not line.startswith("data:"):
                    continue
                message = json.loads(line[len("data:"):])
                if message.get("event_id") not in (None, event_id):
                    continue
                messages.append(message)
                if message.get("msg") in ("process_completed", "close_stream"):
                    break
        return messages

    def call_at_once(self, dependency: dict[str, Any], datas: list[list[Any]]) -> list[list[dict[str, Any]]]:
        """Fire ``dependency`` once per ``datas`` entry, all joined before any runs (as a double click does), and
        return each event's messages once all have completed."""
        trigger = dependency["targets"][0][0] if dependency["targets"] else None
        events = []
        for data in datas:
            body = {"data": data, "fn_index": dependency["id"], "session_hash": self.session_hash,
                    "event_data": None, "trigger_id": trigger}
            joined = self.http.post("/gradio_api/queue/join", content=json.dumps(body).encode(),
                                    headers={"content-type": "application/json"})
            joined.raise_for_status()
            events.append(joined.json()["event_id"])
        messages: dict[str, list[dict[str, Any]]] = {event: [] for event in events}
        pending = set(events)
        with self.http.stream("GET", "/gradio_api/queue/data", params={"session_hash": self.session_hash}) as sse:
            for line in sse.iter_lines():
                if not line.startswith("data:"):
                    continue
                message = json.loads(line[len("data:"):])
                if message.get("event_id") in messages:
                    messages[message["event_id"]].append(message)
                    if message.get("msg") == "process_completed":
                        pending.discard(message["event_id"])
                if not pending or message.get("msg") == "close_stream":
                    break
        return [messages[event] for event in events]

    def fire(self, elem_id: str | None, event: str, data: list[Any], event_data: Any = None) -> dict[str, Any]:
        """Fire an event and return its final output (``{"data": [...]}``, or an error payload)."""
        messages = self.call(self.dependency(elem_id, event), data, event_data)
        done = [m for m in messages if m.get("msg") == "process_completed"]
        assert done, messages
        return done[-1]

    def file(self, path: str) -> httpx.Response:
        return self.http.get(f"/gradio_api/file={path}")


def _json_or_text(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text
