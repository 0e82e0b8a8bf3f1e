"""What every part of the page works with: the app's settings, the job service, the served output files, which
stream each browser session follows, and who is asking."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import gradio as gr

from app.access import Viewer
from app.api.status import JobStatuses
from app.service.generation import GenerationService
from app.service.outputs import ServedFiles
from app.settings import Settings
from app.ui.render import build_request, gallery_items
from app.ui.streams import LatestStreams
from framepack_core.jobs.spec import file_sha256
from framepack_core.lora.library import LoraFolder
from framepack_core.request import GenerationRequest

# A second Start with the same image and settings from the same page within this time is the same intent (a double
# click, an impatient second press): it follows the first job instead of queueing a copy.
REPEATED_START_WINDOW_S = 5.0


@dataclass(frozen=True)
class _RecentStart:
    intent: GenerationRequest  # the request with the image's content hash in place of its path
    job_id: str
    at: float


@dataclass
class PageContext:
    """Shared by the tabs' handlers and the API endpoints of one page (one ``build_app``)."""

    settings: Settings
    service: GenerationService
    served: ServedFiles  # how output files reach a browser: see ServedFiles and docs/security.md
    statuses: JobStatuses  # a job's status as the API endpoints return it, the REST API's shape
    streams: LatestStreams = field(default_factory=LatestStreams)
    loras: LoraFolder | None = None  # the LoRA folder the page offers (None: the settings' ``lora_folder``)
    defaults: dict[str, Any] = field(init=False)  # the form's initial values
    _recent_starts: dict[str, _RecentStart] = field(default_factory=dict, init=False, repr=False)
    _starts_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self) -> None:
        self.defaults = self.settings.job_defaults()
        if self.loras is None:
            self.loras = LoraFolder(self.settings.lora_folder)

    def viewer_of(self, request: gr.Request | None) -> Viewer:
        """Who is asking: with logins on, a request without a login sees nothing."""
        login = getattr(request, "username", None) if request is not None else None
        return Viewer.of(login, logins_on=self.settings.logins_on, admins=self.settings.admins)

    def submit(self, image: str | None, values: dict[str, Any], viewer: Viewer) -> str:
        """Queue a job for the form's ``values`` as ``viewer``; raises what the request or the queue refuses."""
        return self.service.submit(build_request(image, values), owner=viewer.submitter,
                                   max_pending=self.settings.max_pending_per_user)

    def submit_once(self, session: str, image: str | None, values: dict[str, Any], viewer: Viewer
                    ) -> tuple[str, bool]:
        """Like ``submit``, but a repeat of ``session``'s last Start (same image content and settings, within
        ``REPEATED_START_WINDOW_S``, its job not ended) returns that job instead of queueing a copy. Returns the
        job id and whether it is the earlier job."""
        request = build_request(image, values)
        intent = _intent(request)
        # One lock for every session: the repeat must see the first Start's job even when both clicks arrive at
        # once, and a submission takes milliseconds.
        with self._starts_lock:
            now = time.monotonic()
            for key in [key for key, start in self._recent_starts.items()
                        if now - start.at > REPEATED_START_WINDOW_S]:
                del self._recent_starts[key]
            recent = self._recent_starts.get(session)
            if intent is not None and recent is not None and recent.intent == intent \
                    and self._is_running(recent.job_id, viewer):
                return recent.job_id, True
            job_id = self.service.submit(request, owner=viewer.submitter,
                                         max_pending=self.settings.max_pending_per_user)
            if intent is not None:
                self._recent_starts[session] = _RecentStart(intent, job_id, now)
            return job_id, False

    def _is_running(self, job_id: str, viewer: Viewer) -> bool:
        try:
            return not self.service.snapshot(job_id, viewer).state.done
        except KeyError:
            return False

    def past_generations(self, viewer: Viewer) -> tuple[Any, list[dict[str, Any]]]:
        """The gallery's update for the viewer's past generations, and their records (server paths: these stay in
        server-side state)."""
        records = self.service.list_outputs(limit=self.settings.gallery_size, viewer=viewer)
        kept = [{"video": str(r.video), "input_image": str(r.input_image) if r.input_image else None,
                 "settings": r.settings} for r in records]
        return gr.update(value=gallery_items(records, self.served.serve)), kept


def _intent(request: GenerationRequest) -> GenerationRequest | None:
    """What makes two Starts the same: the image's content (a second upload of the same file counts) and every
    setting. None when the image cannot be read: the service's own check then says why."""
    try:
        return replace(request, image=Path(file_sha256(Path(request.image))))
    except (OSError, TypeError):  # TypeError: no image (a clip to extend only)
        return None
