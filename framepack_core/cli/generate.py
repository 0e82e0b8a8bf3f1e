"""``python -m framepack_core generate``: one job from the command line, with progress and Ctrl-C to stop."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from framepack_core.cli.options import (
    EXIT_BAD_INPUT,
    EXIT_CANCELLED,
    EXIT_FAILED,
    EXIT_OK,
    engine_from_args,
    option_text,
    request_from_args,
    request_notes,
    with_option_name,
)
from framepack_core.durations import duration_text
from framepack_core.errors import FramePackError, InvalidInputError
from framepack_core.models.progress_bars import library_progress_bars_off

# tqdm's own time left counts only the steps; the engine's ETA (in the postfix) counts every stage.
BAR_FORMAT = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}, {rate_fmt}{postfix}]"
HEARTBEAT_S = 1.0  # how often the bar is redrawn while a stage (a decode, a write) sends no event


class _Heartbeat:
    """Redraws the bar every ``HEARTBEAT_S`` from a timer thread, so its elapsed time runs on during a stage
    that yields no event for seconds."""

    def __init__(self, bar: Any) -> None:
        self._bar = bar
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="progress-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stopped.wait(HEARTBEAT_S):
            self._bar.refresh()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join()


def _bar_status(where: str, eta_s: float | None) -> str:
    if eta_s is None:
        return where
    minutes, seconds = divmod(round(eta_s), 60)
    return f"{where} · ETA {f'{minutes} min {seconds:02d} s' if minutes else f'{seconds} s'}"


def run_generate(args: argparse.Namespace, argv: list[str] | None = None) -> int:
    """``argv``: the command line ``args`` came from (``sys.argv[1:]`` when None), for ``--from``."""
    from tqdm import tqdm

    from framepack_core.events import (
        CancelToken,
        JobCancelled,
        JobFailed,
        JobFinished,
        Notice,
        SectionFinished,
        StageChanged,
        StepProgress,
    )
    from framepack_core.sampling.schedule import FPS

    description, notes = None, []
    if args.from_video is not None:
        from framepack_core.cli.from_output import environment_notes, request_from_video

        try:
            request, description, notes = request_from_video(args, sys.argv[1:] if argv is None else argv)
        except InvalidInputError as error:
            print(f"error: {with_option_name(error)}", file=sys.stderr)
            return EXIT_BAD_INPUT
    elif args.reroll_from is not None:
        from framepack_core.cli.reroll import request_for_reroll

        try:
            request, args.job_dir, notes = request_for_reroll(args, sys.argv[1:] if argv is None else argv)
        except InvalidInputError as error:
            print(f"error: {with_option_name(error)}", file=sys.stderr)
            return EXIT_BAD_INPUT
    else:
        request = request_from_args(args, Path(args.image), args.output, args.save_latents)
    engine = engine_from_args(args)
    if engine is None:
        return EXIT_BAD_INPUT
    if description is not None:
        notes += environment_notes(description, engine.models, request, Path(args.from_video))
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    cancel = CancelToken()

    def on_interrupt(signum, frame):  # noqa: ANN001
        if cancel.cancelled:
            raise KeyboardInterrupt
        print("\nStopping after the current step (Ctrl-C again to abort at once) ...", file=sys.stderr)
        cancel.cancel()

    previous_handler = signal.signal(signal.SIGINT, on_interrupt)
    bar = None
    heartbeat: _Heartbeat | None = None
    quiet_libraries = contextlib.ExitStack()
    first_event = True
    segments_dir: Path | None = None
    try:
        events = engine.generate(request, cancel=cancel, job_dir=args.job_dir)
        for event in events:
            if first_event:
                # From the first event on: the request passed validation (a refused one imports nothing more), so
                # its notes hold, and they come before the job's own.
                first_event = False
                if args.quiet:
                    quiet_libraries.enter_context(library_progress_bars_off())
                for note in request_notes(request.validated(), with_request_notes=False):
                    print(f"note: {note}", file=sys.stderr)
            if isinstance(event, Notice):
                (bar.write if bar is not None else print)(f"note: {event.message}", file=sys.stderr)
            elif isinstance(event, StageChanged):
                if bar is None and not args.quiet:
                    print(event.message, file=sys.stderr)
                elif bar is not None:
                    bar.set_postfix_str(_bar_status(event.message.removesuffix(" ...").lower(), event.eta_s))
            elif isinstance(event, StepProgress):
                if bar is None and not args.quiet:
                    bar = tqdm(total=event.total_sections * event.total_steps, unit="step", file=sys.stderr,
                               desc=f"{engine.models.config.device}", bar_format=BAR_FORMAT)
                    heartbeat = _Heartbeat(bar)
                if bar is not None:
                    bar.set_postfix_str(_bar_status(f"section {event.section}/{event.total_sections}", event.eta_s),
                                        refresh=False)
                    bar.update(1)
            elif isinstance(event, SectionFinished):
                if event.segment_path is not None:
                    segments_dir = Path(event.segment_path).parent
                if bar is not None:
                    bar.write(f"section {event.section}/{event.total_sections} done: {event.video_frames} frames "
                              f"({event.video_seconds:.2f} s)", file=sys.stderr)
            elif isinstance(event, JobFinished):
                if bar is not None:
                    bar.close()
                # The video's length and the time the job took, worded apart so neither reads as the other.
                print(f"Wrote {event.output_path}: {event.video_frames / FPS:.2f} s video, {event.video_frames} "
                      f"frames at {FPS} fps, {event.width}x{event.height}; took {duration_text(event.elapsed_s)}")
                if event.latents_path:
                    print(f"Wrote {event.latents_path}")
                return EXIT_OK
            elif isinstance(event, JobCancelled):
                if bar is not None:
                    bar.close()
                where = f"partial video: {event.partial_path}" if event.partial_path else "no section had finished"
                print(f"Cancelled after {event.sections_done} section(s); {where}", file=sys.stderr)
                return EXIT_CANCELLED
            elif isinstance(event, JobFailed):
                if bar is not None:
                    bar.close()
                print(f"error: {option_text(event.message)}", file=sys.stderr)
                if event.hint:
                    print(f"  How to fix: {option_text(event.hint)}", file=sys.stderr)
                if event.details:
                    print(_details_text(option_text(event.details), args), file=sys.stderr)
                if event.partial_path:
                    print(f"  The finished sections were kept in {event.partial_path}", file=sys.stderr)
                return EXIT_FAILED
    except InvalidInputError as error:
        print(f"error: {with_option_name(error)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:  # the second Ctrl-C: stop at once, without a traceback
        if bar is not None:
            bar.close()
        kept = ""
        if segments_dir is not None and any(segments_dir.glob("*.mp4")):
            kept = f"; the finished sections' video segments are in {segments_dir}"
        print(f"\nAborted{kept}", file=sys.stderr)
        return EXIT_CANCELLED
    except FramePackError as error:
        print(f"error: {with_option_name(error)}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        if heartbeat is not None:
            heartbeat.stop()
        quiet_libraries.close()
        signal.signal(signal.SIGINT, previous_handler)
    return EXIT_FAILED


def _details_text(details: str, args: argparse.Namespace) -> str:
    """A failure's details, second to its message and hint: a line or two as they are; more (every component of a
    missing model set) would bury the one command that fixes them all, so they stay one command away."""
    lines = details.splitlines()
    if len(lines) <= 2:
        return "  Details:\n" + "\n".join(f"    {line}" for line in lines)
    command = f"python -m framepack_core models status --model {getattr(args.model, 'value', args.model)}"
    if getattr(args, "models_dir", None) is not None:
        command += f" --models-dir {args.models_dir}"
    return f"  Details: `{command}` shows each component's folder and what is wrong with it."
