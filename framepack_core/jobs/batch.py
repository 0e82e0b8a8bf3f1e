"""Batches: one queued job per combination of start image, prompt and seed, checked whole before any is queued.

The CLI (``jobs submit --image A --image B | --image-dir DIR``, ``--prompt-file``, ``--seeds | --seed-count``), the
page's batch panel and ``POST /api/v1/batches`` all expand a batch here, from one request that holds every other
setting. Every job of a batch stores the batch's id (the queue's ``batch_id`` column), so the queue shows the batch
as a group and cancels it as one, and a label (``output_naming.batch_label``: the image's stem and the prompt's
number) that goes into its output's name next to the seed.

Seeds: ``--seeds 1,2,3`` lists them; ``--seed-count N`` takes N seeds counting up from the request's seed
(``--seed 7 --seed-count 3`` is 7, 8, 9), so the same command queues the same jobs again. Prompts: one a line;
blank lines and lines whose first character is ``#`` are skipped.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Sequence
from contextlib import suppress
from dataclasses import dataclass, replace
from pathlib import Path

from framepack_core.errors import FramePackError, InvalidInputError
from framepack_core.jobs.output_naming import batch_label
from framepack_core.jobs.queue_rows import JobState, QueuedJob
from framepack_core.request import MAX_SEED, GenerationRequest

# What ``--image-dir`` takes from a folder, sorted by name.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
# A slip (``--seed-count 10000``) must not flood the shared queue; a real batch this big is split in several.
MAX_BATCH_JOBS = 500
MAX_PROMPT_FILE_BYTES = 1 << 20
BATCH_ID_CHARS = 8
SEED_SEPARATORS = (",", ";")


@dataclass(frozen=True)
class BatchJob:
    """One combination of a batch: its whole request and the label its output's name carries."""

    request: GenerationRequest
    label: str


@dataclass(frozen=True)
class SubmittedBatch:
    batch_id: str
    job_ids: tuple[str, ...]


@dataclass(frozen=True)
class BatchSummary:
    """A batch as the queue shows it: how many of its jobs are in each state."""

    batch_id: str
    counts: dict[JobState, int]

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def active(self) -> int:
        return self.counts.get(JobState.QUEUED, 0) + self.counts.get(JobState.RUNNING, 0)

    def text(self) -> str:
        """``batch 3f2a91c0: 6 jobs, 2 done, 1 running, 3 waiting``."""
        words = ((JobState.FINISHED, "done"), (JobState.RUNNING, "running"), (JobState.QUEUED, "waiting"),
                 (JobState.FAILED, "failed"), (JobState.CANCELLED, "cancelled"))
        parts = [f"{self.counts[state]} {word}" for state, word in words if self.counts.get(state)]
        jobs = f"{self.total} job{'s' if self.total != 1 else ''}"
        return f"batch {self.batch_id}: {jobs}" + "".join(f", {part}" for part in parts)


def new_batch_id() -> str:
    return uuid.uuid4().hex[:BATCH_ID_CHARS]


def images_in_folder(folder: Path) -> list[Path]:
    """The images (``IMAGE_SUFFIXES``, any case) directly in ``folder``, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InvalidInputError("image_dir", f"{folder} is not a folder", "Give a folder that holds the images.")
    images = sorted((path for path in folder.iterdir()
                     if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES), key=lambda path: path.name)
    if not images:
        raise InvalidInputError("image_dir", f"{folder} holds no {', '.join(IMAGE_SUFFIXES)} image",
                                "Put the start images in it, or give them one by one.")
    return images


def prompt_lines(text: str) -> list[str]:
    """The prompts of a list, one a line; blank lines and ``#`` comments are skipped."""
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def read_prompt_file(path: Path) -> list[str]:
    """The prompts in a UTF-8 text file (``prompt_lines``); at least one."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_PROMPT_FILE_BYTES:
            raise InvalidInputError("prompt_file", f"{path} is larger than {MAX_PROMPT_FILE_BYTES >> 20} MB",
                                    "Give a text file with one prompt a line.")
        prompts = prompt_lines(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise InvalidInputError("prompt_file", f"cannot read {path}: {error.strerror or error}") from None
    except UnicodeDecodeError:
        raise InvalidInputError("prompt_file", f"{path} is not UTF-8 text",
                                "Save it as UTF-8 text, one prompt a line.") from None
    if not prompts:
        raise InvalidInputError("prompt_file", f"{path} holds no prompt (blank lines and # comments are skipped)",
                                "Write one prompt a line.")
    return prompts


def parse_seeds(text: str, field: str = "seeds") -> list[int]:
    """Seeds written as ``1,2,3`` (commas, semicolons or spaces between them)."""
    for separator in SEED_SEPARATORS:
        text = text.replace(separator, " ")
    seeds = []
    for word in text.split():
        try:
            seed = int(word)
        except ValueError:
            raise InvalidInputError(field, f"{word!r} is not a whole number",
                                    "Write the seeds as whole numbers separated by commas, e.g. 1,2,3.") from None
        if not 0 <= seed <= MAX_SEED:
            raise InvalidInputError(field, f"{seed} is out of range", "Use whole numbers from 0 to 2**63-1.")
        seeds.append(seed)
    if not seeds:
        raise InvalidInputError(field, "holds no seed", "Write the seeds separated by commas, e.g. 1,2,3.")
    return seeds


def seed_run(first: int, count: int, field: str = "seed_count") -> list[int]:
    """``count`` seeds counting up from ``first``: reproducible, and each job's seed is in its name."""
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_BATCH_JOBS:
        raise InvalidInputError(field, f"{count!r} is out of range", f"Use a whole number from 1 to {MAX_BATCH_JOBS}.")
    if first + count - 1 > MAX_SEED:
        raise InvalidInputError(field, f"{count} seeds from {first} pass the largest seed, 2**63-1",
                                "Start from a smaller seed.")
    return list(range(first, first + count))


def expand_batch(base: GenerationRequest, images: Sequence[Path], prompts: Sequence[str] = (),
                 seeds: Sequence[int] = (), *, prompt_field: str = "prompts", seed_field: str = "seeds",
                 image_names: Sequence[str] | None = None, check_images: bool = True) -> list[BatchJob]:
    """Every job of the batch, image by image, then prompt by prompt, then seed by seed; all validated. No
    ``prompts`` or ``seeds``: the base request's. A bad image, prompt or seed refuses the whole batch, naming it
    (``prompt_field`` and ``seed_field``: what the caller calls the lists, for the error to name).
    ``image_names``: the images' names as the user knows them (an upload's file name), for the labels."""
    if not images:
        raise InvalidInputError("image", "a batch needs at least one start image", "Give one or more images.")
    prompt_list = list(prompts) if prompts else [base.prompt]
    seed_list = list(seeds) if seeds else [base.seed]
    count = len(images) * len(prompt_list) * len(seed_list)
    if count > MAX_BATCH_JOBS:
        raise InvalidInputError("batch_size", f"would make {count} jobs ({len(images)} images x {len(prompt_list)} "
                                f"prompts x {len(seed_list)} seeds); a batch makes at most {MAX_BATCH_JOBS}",
                                "Split it into several batches.")
    if check_images:
        from framepack_core.media.image_input import load_input_image

        for image in dict.fromkeys(Path(path) for path in images):
            load_input_image(image)  # its message names the file
    several_prompts = len(prompt_list) > 1
    jobs = []
    for image, name in zip(images, image_names or [Path(image).name for image in images], strict=True):
        for number, prompt in enumerate(prompt_list, start=1):
            for seed in seed_list:
                request = _checked(replace(base, image=Path(image), prompt=prompt, seed=seed), number,
                                   prompt_field if prompts else "prompt", seed_field if seeds else "seed")
                jobs.append(BatchJob(request, batch_label(name, number if several_prompts else None)))
    return jobs


def submit_batch(jobs: Sequence[BatchJob], submit_one: Callable[[BatchJob, str], str],
                 withdraw: Callable[[str], None], *, pending: int = 0,
                 max_pending: int | None = None) -> SubmittedBatch:
    """Queue every job under one new batch id through ``submit_one(job, batch_id) -> job id``. A batch that would
    take its owner past ``max_pending`` waiting jobs (``pending`` are waiting already) is refused before any is
    queued; should a job still be refused midway (the disk fills, another submit took the last place), the jobs
    already queued are withdrawn (``withdraw(job_id)``), so a batch is queued whole or not at all."""
    from framepack_core.jobs.queue import QueueLimitError

    if max_pending is not None and pending + len(jobs) > max_pending:
        raise QueueLimitError(f"This batch would queue {len(jobs)} jobs and you already have {pending} waiting; "
                              f"each user may have at most {max_pending}.",
                              "Queue a smaller batch, or wait for some of your jobs to run.")
    batch_id = new_batch_id()
    queued: list[str] = []
    try:
        for job in jobs:
            queued.append(submit_one(job, batch_id))
    except BaseException:
        for job_id in queued:
            with suppress(FramePackError, KeyError):
                withdraw(job_id)
        raise
    return SubmittedBatch(batch_id, tuple(queued))


def batch_summaries(jobs: Iterable[QueuedJob]) -> list[BatchSummary]:
    """The batches among ``jobs``, in the order their first job is listed."""
    counts: dict[str, dict[JobState, int]] = {}
    for job in jobs:
        if job.batch_id is not None:
            states = counts.setdefault(job.batch_id, {})
            states[job.state] = states.get(job.state, 0) + 1
    return [BatchSummary(batch_id, states) for batch_id, states in counts.items()]


def batch_jobs(jobs: Iterable[QueuedJob], batch_id: str) -> list[QueuedJob]:
    return [job for job in jobs if job.batch_id == batch_id]


def unknown_batch(batch_id: str) -> InvalidInputError:
    return InvalidInputError("batch", f"there is no batch {batch_id!r} in the queue",
                             "List the jobs to see the batches' ids.")


def _checked(request: GenerationRequest, prompt_number: int, prompt_field: str, seed_field: str
             ) -> GenerationRequest:
    """The validated request; a refused prompt or seed is named as the batch's list names it."""
    try:
        return request.validated()
    except InvalidInputError as error:
        said = error.message.removeprefix(f"{error.field}: ")
        if error.field == "prompt" and prompt_field != "prompt":
            raise InvalidInputError(prompt_field, f"prompt {prompt_number}: {said}", error.hint) from None
        if error.field == "seed" and seed_field != "seed":
            raise InvalidInputError(seed_field, f"seed {request.seed}: {said}", error.hint) from None
        raise
