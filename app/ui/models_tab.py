"""The Models tab: which model components are on disk (the table ``python -m framepack_core models status``
prints) and a Download button that fetches the missing ones, with the bytes as they arrive. With logins on, only
an admin may start a download: it writes tens of GB to the server's disk. Under them, the System check
(``app.ui.system_check_panel``)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from app.access import Viewer
from app.ui.context import PageContext
from app.ui.render import page_text
from app.ui.system_check_panel import SystemCheckPanel, build_system_check_panel, wire_system_check_panel
from framepack_core.errors import FramePackError
from framepack_core.models.download import DownloadPlan, check_space, download, plan_download
from framepack_core.models.hub_files import download_bytes, format_gb
from framepack_core.models.inventory import MODEL_CHOICES, ModelInventory, inspect_models

MODEL_COLUMNS = ("component", "state", "size on disk", "looked in", "problem")
PROGRESS_EVERY_S = 0.5


@dataclass
class ModelsTab:
    model: gr.Radio
    summary: gr.Markdown
    table: gr.Dataframe
    check: gr.Button
    download: gr.Button
    progress: gr.Markdown
    system_check: SystemCheckPanel


def build_models_tab() -> ModelsTab:
    """The tab, laid out in the current Blocks; filled when the page opens and after each action."""
    with gr.Tab("Models", elem_id="models-tab"):
        with gr.Row(equal_height=True):
            model = gr.Radio(list(MODEL_CHOICES), value="original", label="Model set (all: both transformers)",
                             elem_id="models-choice", scale=3)
            check = gr.Button("Check again", size="sm", elem_id="models-check", scale=1)
            download_btn = gr.Button("Download missing", size="sm", variant="primary", elem_id="models-download",
                                     scale=1)
        summary = gr.Markdown("", elem_id="models-summary")
        table = gr.Dataframe(headers=list(MODEL_COLUMNS), value=[], interactive=False, wrap=True,
                             elem_id="models-table")
        progress = gr.Markdown("", elem_id="models-progress")
        system_check = build_system_check_panel()
    return ModelsTab(model=model, summary=summary, table=table, check=check, download=download_btn,
                     progress=progress, system_check=system_check)


def status_rows(inventory: ModelInventory) -> list[list[str]]:
    """One row per component, as ``models status`` prints it."""
    return [[status.name, "ok" if status.complete else ("damaged" if status.present else "missing"),
             format_gb(status.size_bytes) if status.present else "-", str(status.looked_in), status.problem or ""]
            for status in inventory.components]


def download_button(inventory: ModelInventory) -> dict[str, Any]:
    """The Download button stands out only when there is something to download."""
    return gr.update(variant="primary" if inventory.incomplete else "secondary")


def status_summary(inventory: ModelInventory, offline: bool) -> str:
    """A line on the whole set: complete, or what is missing and about how big it is; and the free space."""
    free = f"{format_gb(inventory.free_bytes)} free on the drive of `{inventory.target}`."
    if not inventory.incomplete:
        return f"**Every component is on disk and whole.** {free}"
    size, from_hub = download_bytes(tuple(status.files for status in inventory.incomplete), offline)
    about = "" if from_hub else "about "
    return (f"**{len(inventory.incomplete)} component(s) missing or incomplete**, {about}{format_gb(size)} to "
            f"download. {free}")


@dataclass
class DownloadRun:
    """One download in a background thread; the page polls ``done`` and ``error``."""

    plan: DownloadPlan
    done: int = 0
    error: BaseException | None = None
    thread: threading.Thread = field(init=False)

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self._run, name="model-download", daemon=True)

    def _count(self, size: int) -> None:
        self.done += size

    def _run(self) -> None:
        try:
            download(self.plan, progress=self._count)
        except BaseException as error:  # noqa: BLE001 - shown on the page; what was fetched stays for a resume
            self.error = error


def progress_line(run: DownloadRun) -> str:
    total = max(run.plan.needed_bytes, 1)
    return (f"Downloading {', '.join(run.plan.components)}: {format_gb(run.done)} of "
            f"{format_gb(run.plan.needed_bytes)} ({100 * min(run.done, total) / total:.0f} %)")


def download_updates(model: str, viewer: Viewer, context: PageContext,
                     busy: threading.Lock) -> Iterator[tuple[list[list[str]], str, str]]:
    """The table, the summary and the progress line, again and again while a download runs."""
    settings = context.settings
    inventory = inspect_models(model, models_dir=settings.models_dir)
    rows, summary = status_rows(inventory), status_summary(inventory, offline=True)
    if not viewer.admin:
        yield rows, summary, "Only an admin may download models."
        return
    if settings.offline:
        note = ("The app runs in offline mode: it downloads nothing. Restart it without offline mode, or run "
                f"`python -m framepack_core models download --model {model}` on the server.")
        yield rows, summary, note
        return
    if not inventory.incomplete:
        yield rows, summary, "Nothing to download."
        return
    if not busy.acquire(blocking=False):
        yield rows, summary, "A download is already running."
        return
    try:
        try:
            plan = plan_download(inventory, models_dir=settings.models_dir)
            check_space(plan)
        except FramePackError as error:
            yield rows, summary, f"**{page_text(error.message)}** {page_text(error.hint)}"
            return
        except Exception as error:  # noqa: BLE001 - the hub could not be reached
            yield rows, summary, f"**Could not ask the Hugging Face hub for the files** ({type(error).__name__})."
            return
        run = DownloadRun(plan)
        run.thread.start()
        while run.thread.is_alive():
            yield rows, summary, progress_line(run)
            run.thread.join(PROGRESS_EVERY_S)
        after = inspect_models(model, models_dir=settings.models_dir)
        if run.error is not None:
            note = (f"**The download stopped** ({type(run.error).__name__}: {run.error}). Press Download again to "
                    "resume where it stopped.")
        elif after.incomplete:
            note = "**Some components are still incomplete after the download:** see their problems above."
        else:
            note = f"Downloaded {format_gb(plan.needed_bytes)}."
        yield status_rows(after), status_summary(after, offline=True), note
    finally:
        busy.release()


def wire_models_tab(demo: gr.Blocks, tab: ModelsTab, context: PageContext) -> None:
    """The table at page load and on Check again or a new model choice, and the Download button."""
    busy = threading.Lock()  # one download per app: two would fetch the same files

    def show(model: str) -> tuple[list[list[str]], str, dict[str, Any]]:
        inventory = inspect_models(model, models_dir=context.settings.models_dir)
        return status_rows(inventory), status_summary(inventory, offline=True), download_button(inventory)

    def start(model: str, request: gr.Request) -> Iterator[tuple[Any, ...]]:
        yield from download_updates(model, context.viewer_of(request), context, busy)

    for trigger in (demo.load, tab.check.click, tab.model.change):
        trigger(show, inputs=[tab.model], outputs=[tab.table, tab.summary, tab.download], api_visibility="private",
                show_progress="hidden")
    wire_system_check_panel(tab.system_check, context)
    tab.download.click(start, inputs=[tab.model], outputs=[tab.table, tab.summary, tab.progress],
                       api_visibility="private", show_progress="hidden").then(
        show, inputs=[tab.model], outputs=[tab.table, tab.summary, tab.download], api_visibility="private",
        show_progress="hidden")
