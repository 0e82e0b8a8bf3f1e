"""``python -m framepack_core jobs ...``: the persistent job queue from the command line.

The queue lives under the output folder (``--output-dir``, default ``outputs/`` beside the code), the same one the app uses, so a
job submitted here runs in the app when it starts (or with ``jobs run``), and jobs queued in the app show up in
``jobs list``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import threading
import time
from pathlib import Path

from framepack_core.cli.options import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_OK,
    add_batch_options,
    add_runtime_options,
    add_setting_options,
    engine_from_args,
    option_text,
    request_from_args,
    request_notes,
    with_option_name,
)
from framepack_core.cli.workers import add_worker_options, workers_from_args
from framepack_core.errors import FramePackError, InvalidInputError, render_fields
from framepack_core.jobs.output_naming import DEFAULT_OUTPUT_DIR
from framepack_core.models.progress_bars import library_progress_bars_off

JOB_ID_HELP = "The job's id, as `jobs list` shows it."


def add_jobs_parser(sub: argparse._SubParsersAction) -> None:

    jobs = sub.add_parser("jobs", help="The persistent job queue: list, submit, cancel, retry, run.")
    jobs.add_argument("--output-dir", type=Path, default=DEFAULT_OUTPUT_DIR,
                      help="The output folder whose queue to use (default: outputs/ beside the code, as the app's).")
    verbs = jobs.add_subparsers(dest="verb", required=True)

    listing = verbs.add_parser("list", help="Running, pending (in queue order) and ended jobs.")
    listing.add_argument("--json", action="store_true", help="One JSON object per job, with its spec.")

    submit = verbs.add_parser("submit", help="Add a job at the end of the queue, or a batch: one job per image x "
                                             "prompt x seed (several --image, --image-dir, --prompt-file, "
                                             "--seeds or --seed-count).")
    submit.add_argument("--image", action="append", default=None,
                        help="Input image (a copy is kept in the queue); repeat it for a batch. Required unless "
                             "--image-dir gives the images, or --extend a clip (default: then its last frame).")
    submit.add_argument("--spec", type=Path, default=None,
                        help="A job spec JSON file; its settings replace the options below (default: the options).")
    submit.add_argument("--output", type=Path, default=None, help="Output .mp4 (default: in the output folder).")
    add_setting_options(submit)
    add_batch_options(submit)

    for verb, text in (("cancel", "Cancel a pending job, or ask a running one to stop; or a whole batch."),
                       ("retry", "Queue a failed or cancelled job again; it resumes from its last section."),
                       ("delete", "Remove an ended or pending job and its checkpoints (not its video).")):
        verb_parser = verbs.add_parser(verb, help=text)
        verb_parser.add_argument("job_id", nargs="?" if verb == "cancel" else None, help=JOB_ID_HELP)
        if verb == "cancel":
            verb_parser.add_argument("--batch", default=None,
                                     help="Cancel every waiting job of this batch and stop its running one "
                                          "(the id `jobs list` shows). Default: cancel the one job given.")
    edit = verbs.add_parser("edit", help="Change settings of a pending job.")
    edit.add_argument("job_id", help=JOB_ID_HELP)
    edit.add_argument("settings", help='The settings to change, as JSON, e.g. \'{"seed": 7, "seconds": 10}\'.')
    move = verbs.add_parser("move", help="Put a pending job at another place in the queue.")
    move.add_argument("job_id", help=JOB_ID_HELP)
    move.add_argument("place", type=int, help="1 = next to run.")

    run = verbs.add_parser("run", help="Run the pending jobs (interrupted ones first) until the queue is empty.")
    add_runtime_options(run)
    add_worker_options(run)
    run.add_argument("--quiet", action="store_true", help="Only the result of each job.")


def run_jobs(args: argparse.Namespace) -> int:
    from framepack_core.jobs.queue import JobQueue

    try:
        queue = JobQueue.for_output_dir(args.output_dir)
        if queue.recovery_note:
            print(f"note: {queue.recovery_note}", file=sys.stderr)
        if args.verb == "list":
            return _list(queue, args.json)
        if args.verb == "submit":
            return _submit(queue, args)
        if args.verb == "run":
            return _run(queue, args)
        if args.verb == "move":
            job = queue.move(args.job_id, args.place)
            print(f"{job.id} is now number {queue.pending_position(job.id)} in the queue")
            return EXIT_OK
        if args.verb == "edit":
            return _edit(queue, args.job_id, args.settings)
        if args.verb == "cancel" and (args.batch is not None or args.job_id is None):
            return _cancel_batch(queue, args.batch, args.job_id)
        if args.verb == "delete":
            queue.delete(args.job_id)
            print(f"Deleted {args.job_id}")
            return EXIT_OK
        job = queue.cancel(args.job_id) if args.verb == "cancel" else queue.retry(args.job_id)
        if args.verb == "cancel":
            said = "asked to stop after the current step" if job.cancel_requested else "cancelled"
        else:
            said = f"queued again (number {queue.pending_position(job.id)}); it resumes from its last finished section"
            if job.partial is not None:
                said += f"; the earlier attempt's partial video is kept as {job.partial}"
        print(f"{job.id} {said}")
        return EXIT_OK
    except InvalidInputError as error:

        print(f"error: {with_option_name(error)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except FramePackError as error:
        print(f"error: {with_option_name(error)}", file=sys.stderr)
        return EXIT_FAILED


def _list(queue, as_json: bool) -> int:
    jobs, damaged = queue.list(), queue.damaged()
    if as_json:
        for job in jobs:
            summary = job.summary()
            for key in ("error", "hint"):  # JSON readers get the field names, as from the REST API
                if summary.get(key):
                    summary[key] = render_fields(summary[key], str)
            print(json.dumps(summary))
        for row in damaged:  # "state": "damaged" keeps one shape for readers that look at the state
            print(json.dumps({**row.summary(), "state": "damaged"}))
        return EXIT_OK
    for row in damaged:
        print(f"note: job {row.id} is damaged ({row.reason}); delete it with `jobs delete {row.id}`", file=sys.stderr)
    if not jobs:
        print("The queue is empty.")
        return EXIT_OK
    print(f"{'id':<12}  {'state':<9}  {'progress':<8}  {'created':<16}  {'batch':<8}  prompt")
    for job in jobs:
        progress = f"{job.sections_done}/{job.total_sections}" if job.total_sections else "-"
        created = time.strftime("%Y-%m-%d %H:%M", time.localtime(job.created_at))
        prompt = str(job.spec.settings.get("prompt", ""))
        prompt = prompt if len(prompt) <= 50 else prompt[:47] + "..."
        print(f"{job.id:<12}  {job.state.value:<9}  {progress:<8}  {created:<16}  {job.batch_id or '-':<8}  {prompt}")
        if job.error:
            print(f"{'':<12}  error: {option_text(job.error)}")
    from framepack_core.jobs.batch import batch_summaries

    for summary in batch_summaries(jobs):
        print(summary.text())
    return EXIT_OK


def _submit(queue, args: argparse.Namespace) -> int:
    from framepack_core.jobs.spec import JobSpec, file_sha256
    from framepack_core.media.image_input import load_input_image
    from framepack_core.pipeline.input_checks import check_lora_files
    from framepack_core.pipeline.story_inputs import check_story_images

    if len(args.image or []) > 1 or any(value is not None for value in (
            args.image_dir, args.prompt_file, args.seeds, args.seed_count)):
        return _submit_batch(queue, args)
    if not args.image:
        raise InvalidInputError("image", "no input image was given", "Give --image (or --image-dir for a batch).")
    image = Path(args.image[0])
    pixels = load_input_image(image).pixels  # refuse a broken image now, not when the job runs
    typed = request_from_args(args, image).validated()
    # The end image and keyframes: a spec names them by SHA-256, the options give the files.
    check_story_images(typed, pixels)
    check_lora_files(typed)  # a broken or foreign LoRA is refused now, not when the job's turn comes
    files = JobSpec.input_files_of(typed)
    if args.spec is not None:
        try:
            text = args.spec.read_text(encoding="utf-8")
        except OSError as error:
            raise InvalidInputError("spec", f"cannot read {args.spec}: {error.strerror or error}") from None
        spec = JobSpec.from_json(text)
        spec.check_image(image)
        check_story_images(spec.request(image, files=files), pixels)
    else:
        spec = JobSpec.from_request(typed, file_sha256(image))
    if args.output is not None:
        spec.request(image, output=args.output, files=files)  # validates the name
    job = queue.submit(spec, image, output=args.output, files=files)
    print(f"{job.id} queued (number {queue.pending_position(job.id)})")
    for note in request_notes(spec.request(image, files=files)):
        print(f"note: {note}", file=sys.stderr)
    return EXIT_OK


def _submit_batch(queue, args: argparse.Namespace) -> int:
    """One job per image x prompt x seed, all checked before any is queued (``framepack_core.jobs.batch``)."""
    from framepack_core.jobs.batch import (
        expand_batch,
        images_in_folder,
        parse_seeds,
        read_prompt_file,
        seed_run,
        submit_batch,
    )
    from framepack_core.jobs.spec import JobSpec, file_sha256

    for name, value in (("spec", args.spec), ("output", args.output)):
        if value is not None:
            raise InvalidInputError(name, "cannot be used with a batch: each job of a batch is named for its "
                                          "image, prompt and seed", f"Leave out --{name}, or queue one job.")
    if args.seeds is not None and args.seed_count is not None:
        raise InvalidInputError("seeds", "give --seeds or --seed-count, not both")
    images = [Path(image) for image in args.image or []]
    images += images_in_folder(args.image_dir) if args.image_dir is not None else []
    prompts = read_prompt_file(args.prompt_file) if args.prompt_file is not None else []
    seeds = (parse_seeds(args.seeds) if args.seeds is not None
             else seed_run(args.seed, args.seed_count) if args.seed_count is not None else [])
    base = request_from_args(args, images[0] if images else Path())
    jobs = expand_batch(base, images, prompts, seeds, prompt_field="prompt_file",
                        seed_field="seeds" if args.seeds is not None else "seed_count")

    def submit_one(job, batch_id: str) -> str:
        spec = JobSpec.from_request(job.request, file_sha256(job.request.image))
        return queue.submit(spec, job.request.image, files=spec.files_for(job.request),
                            batch_id=batch_id, label=job.label).id

    batch = submit_batch(jobs, submit_one, queue.delete)
    first = queue.pending_position(batch.job_ids[0])
    print(f"batch {batch.batch_id}: {len(jobs)} job{'s' if len(jobs) != 1 else ''} queued "
          f"(numbers {first} to {first + len(jobs) - 1}); cancel them all with `jobs cancel --batch {batch.batch_id}`")
    for job, job_id in zip(jobs, batch.job_ids):
        print(f"{job_id} queued: {job.label}, seed {job.request.seed}")
    for note in request_notes(jobs[0].request):
        print(f"note: {note}", file=sys.stderr)
    return EXIT_OK


def _cancel_batch(queue, batch_id: str | None, job_id: str | None) -> int:
    from framepack_core.jobs.batch import batch_jobs, unknown_batch
    from framepack_core.jobs.queue import QueueError

    if batch_id is None or job_id is not None:
        raise InvalidInputError("batch", "give a job id or --batch ID, one of the two")
    jobs = batch_jobs(queue.list(), batch_id)
    if not jobs:
        raise unknown_batch(batch_id)
    cancelled = stopping = 0
    for job in jobs:
        if job.state.done:
            continue
        try:
            stopping += queue.cancel(job.id).cancel_requested
            cancelled += 1
        except QueueError:  # it ended meanwhile
            continue
    print(f"batch {batch_id}: cancelled {cancelled - stopping} waiting job{'s' if cancelled - stopping != 1 else ''}"
          + (f", asked {stopping} running one to stop after the current step" if stopping else "")
          + f"; {len(jobs) - cancelled} had already ended")
    return EXIT_OK


def _edit(queue, job_id: str, text: str) -> int:
    try:
        changes = json.loads(text)
    except ValueError as error:
        raise InvalidInputError("settings", f"is not valid JSON ({error})") from None
    queue.edit(job_id, queue.get(job_id).spec.with_changes(changes))
    print(f"{job_id} edited: " + ", ".join(f"{k}={v!r}" for k, v in changes.items()))
    return EXIT_OK


def _run(queue, args: argparse.Namespace) -> int:
    with queue.require_ownership():  # refused (naming the owner) before any model loads
        return _run_owned(queue, args)


def _run_owned(queue, args: argparse.Namespace) -> int:
    from framepack_core.events import JobFailed, Notice, SectionFinished, WorkerLost
    from framepack_core.jobs.queue import JobState
    from framepack_core.jobs.runner import QueueRunner
    from framepack_core.workers.pool import WorkerPool

    workers = workers_from_args(args)  # refused (naming --devices or --ray) before any worker starts
    engine = engine_from_args(args) if workers is None else None
    if workers is None and engine is None:
        return EXIT_BAD_INPUT

    running: set[str] = set()  # jobs whose start was told; the pool calls ``show`` from a thread per worker
    running_lock = threading.Lock()

    def show(job, event) -> None:
        if args.quiet:
            return
        with running_lock:
            starting = job.id not in running and not isinstance(event, WorkerLost)
            running.add(job.id)
            if isinstance(event, WorkerLost):
                running.discard(job.id)  # it starts again, here or on another worker
        if starting:
            on = f" on {job.worker}" if workers is not None and job.worker else ""
            print(f"{job.id}: started{on}", file=sys.stderr)
        if isinstance(event, Notice):
            print(f"{job.id}: note: {event.message}", file=sys.stderr)
        elif isinstance(event, SectionFinished):
            on = f" on {job.worker}" if workers is not None else ""
            print(f"{job.id}: section {event.section}/{event.total_sections} done{on}", file=sys.stderr)
        elif isinstance(event, WorkerLost):
            print(f"{job.id}: {event.message}; it goes back to the queue", file=sys.stderr)
        elif isinstance(event, JobFailed):
            print(f"{job.id}: error: {option_text(event.message)}", file=sys.stderr)

    with contextlib.ExitStack() as quiet:
        if args.quiet:
            quiet.enter_context(library_progress_bars_off())
        if workers is None:
            done = QueueRunner(queue, engine, args.output_dir).run_pending(show)
        else:
            pool = WorkerPool(queue, workers, args.output_dir)
            try:
                done = pool.run_pending(show)
            finally:
                pool.close()
    for job in done:
        video = job.output if job.state == JobState.FINISHED else job.partial  # a stopped job's output is unmade
        where = f": {video}" if video else ""
        print(f"{job.id} {job.state.value}{where}")
    if not done:
        print("No pending jobs.")
    return EXIT_OK if all(job.state == JobState.FINISHED for job in done) else EXIT_FAILED
