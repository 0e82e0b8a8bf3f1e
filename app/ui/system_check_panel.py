"""The Models tab's "System check": ``python -m framepack_core doctor`` on the server, its table on the page. With
logins on only an admin may run it, since it shows the server's paths, versions and hardware."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from app.access import Viewer
from app.ui.context import PageContext
from framepack_core.doctor.report import CheckStatus, DoctorReport

CHECK_COLUMNS = ("check", "status", "found", "fix")
CHECK_COLUMN_WIDTHS = ("16%", "9%", "40%", "35%")
INTRO = ("Checks what generating needs on the machine that runs the app: torch's build against the GPU (the RTX 50 "
         "'no kernel image' error), the driver, memory and page file, disk, FFmpeg, attention packages, the model "
         "files and the output folder, each with its fix. The same as `python -m framepack_core doctor`.")


@dataclass
class SystemCheckPanel:
    with_job: gr.Checkbox
    run: gr.Button
    summary: gr.Markdown
    table: gr.Dataframe


def build_system_check_panel() -> SystemCheckPanel:
    """The panel, laid out in the current Blocks (in the Models tab)."""
    with gr.Accordion("System check", open=False, elem_id="system-check"):
        gr.Markdown(INTRO)
        with gr.Row(equal_height=True):
            with_job = gr.Checkbox(value=False, label="Also run a tiny test job on the GPU (a few seconds)",
                                   elem_id="system-check-job", scale=3)
            run = gr.Button("Run system check", size="sm", elem_id="system-check-run", scale=1)
        summary = gr.Markdown("", elem_id="system-check-summary")
        # Fixed shares of the table's width: sized from their content, the long "found" and "fix" texts make
        # columns wider than the page, and wrap=True only wraps inside a width it has been given. Wrapped rows are
        # taller: the height fits every check, so no row hides under an inner scroll bar.
        table = gr.Dataframe(headers=list(CHECK_COLUMNS), value=[], interactive=False, wrap=True,
                             column_widths=list(CHECK_COLUMN_WIDTHS), max_height=1200,
                             elem_id="system-check-table")
    return SystemCheckPanel(with_job=with_job, run=run, summary=summary, table=table)


def report_rows(report: DoctorReport) -> list[list[str]]:
    return [[r.name, r.status.value, r.found, r.fix if r.status in (CheckStatus.WARNING, CheckStatus.FAILED) else ""]
            for r in report.results]


def report_summary(report: DoctorReport) -> str:
    if report.failed:
        names = ", ".join(r.name for r in report.failed)
        return f"**{len(report.failed)} check(s) failed** ({names}): generating will not work until they are fixed."
    if report.warnings:
        return f"**No failures**; {len(report.warnings)} warning(s)."
    return "**Everything checked is in order.**"


def system_check(with_job: bool, viewer: Viewer, context: PageContext) -> tuple[list[list[str]], str]:
    """The table and a summary line for ``viewer``; a non-admin with logins on gets neither."""
    if not viewer.admin:
        return [], "Only an admin may run the system check: it shows the server's paths and hardware."
    from framepack_core.doctor import run_doctor

    settings = context.settings
    report = run_doctor(settings.models_dir, settings.output_dir, settings.device, demo=settings.demo,
                        quick=not with_job)
    return report_rows(report), report_summary(report)


def wire_system_check_panel(panel: SystemCheckPanel, context: PageContext) -> None:
    def run(with_job: bool, request: gr.Request) -> tuple[Any, ...]:
        return system_check(bool(with_job), context.viewer_of(request), context)

    panel.run.click(run, inputs=[panel.with_job], outputs=[panel.table, panel.summary], api_visibility="private",
                    concurrency_limit=1)
