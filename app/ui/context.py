"""What every part of the page works with: the app's settings, the job service, the served output files, which
stream each browser session follows, and who is asking."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from app.access import Viewer
from app.api.status import JobStatuses
from app.service.generation import GenerationService
from app.service.outputs import ServedFiles
from app.settings import Settings
from app.ui.render import build_request, gallery_items
from app.ui.streams import LatestStreams


@dataclass
class PageContext:
    """Shared by the tabs' handlers and the API endpoints of one page (one ``build_app``)."""

    settings: Settings
    service: GenerationService
    served: ServedFiles  # how output files reach a browser: see ServedFiles and docs/security.md
    statuses: JobStatuses  # a job's status as the API endpoints return it, the REST API's shape
    streams: LatestStreams = field(default_factory=LatestStreams)
    defaults: dict[str, Any] = field(init=False)  # the form's initial values

    def __post_init__(self) -> None:
        self.defaults = self.settings.job_defaults()

    def viewer_of(self, request: gr.Request | None) -> Viewer:
        """Who is asking: with logins on, a request without a login sees nothing."""
        login = getattr(request, "username", None) if request is not None else None
        return Viewer.of(login, logins_on=self.settings.logins_on, admins=self.settings.admins)

    def submit(self, image: str | None, values: dict[str, Any], viewer: Viewer) -> str:
        """Queue a job for the form's ``values`` as ``viewer``; raises what the request or the queue refuses."""
        return self.service.submit(build_request(image, values), owner=viewer.submitter,
                                   max_pending=self.settings.max_pending_per_user)

    def past_generations(self, viewer: Viewer) -> tuple[Any, list[dict[str, Any]]]:
        """The gallery's update for the viewer's past generations, and their records (server paths: these stay in
        server-side state)."""
        records = self.service.list_outputs(limit=self.settings.gallery_size, viewer=viewer)
        kept = [{"video": str(r.video), "input_image": str(r.input_image) if r.input_image else None,
                 "settings": r.settings} for r in records]
        return gr.update(value=gallery_items(records, self.served.serve)), kept
