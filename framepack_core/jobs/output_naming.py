"""The one naming rule for a job's files, and the one default output folder.

A job's files share a base, ``<time>_<job id>_seed<seed>`` (``<time>_<model>_seed<seed>`` for a one-off
``generate`` that has no job id; ``<time>_<label>_<job id>_seed<seed>`` for a job of a batch, whose label names its
image and prompt, see ``batch_label``): the video ``<base>.mp4``, the partial video of a stopped attempt
``<base>.partial.mp4`` (kept as ``<base>.attempt<N>.partial.mp4`` when the job is retried), their ``.json``
sidecars and the cropped input image ``<base>.png``. A re-roll's video is ``<base>_r<N>.mp4``
(``reroll_output_path``). Light on imports: the queue and the CLI use it without torch.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

# Beside the code, not the current folder: the app, ``generate`` and ``jobs`` use the same folder wherever they
# are started from (each takes --output-dir to choose another).
DEFAULT_OUTPUT_DIR = Path(__file__).resolve().parents[2] / "outputs"  # the repository's outputs/
PARTIAL_SUFFIX = ".partial.mp4"
MAX_LABEL_CHARS = 40
# A label keeps to letters, digits, "-" and "_": no dot (``output_base`` cuts at the first one), no separator, and
# nothing a shell or another system's file names would trip on.
_UNSAFE_IN_LABEL = re.compile(r"[^A-Za-z0-9_-]+")


def output_path(folder: Path, *, seed: int, job_id: str | None = None, model: str | None = None,
                when: float | None = None, label: str | None = None) -> Path:
    """Where a job's video goes: ``<time>_<job id or model>_seed<seed>.mp4`` in ``folder``, with a batch job's
    ``label`` before its id."""
    stamp = time.strftime("%Y%m%d_%H%M%S", time.localtime(when))
    labelled = f"{label}_" if label else ""
    return Path(folder) / f"{stamp}_{labelled}{job_id or model}_seed{seed}.mp4"


def batch_label(image_name: str, prompt_number: int | None = None) -> str:
    """What tells the jobs of a batch apart in their names, beside the seed that every name carries: the start
    image's stem and, when the batch has several prompts, the prompt's 1-based number (``cat-p2``). The job id
    that follows it keeps two names apart even for one image given twice."""
    stem = _UNSAFE_IN_LABEL.sub("-", Path(image_name).stem).strip("-_")[:MAX_LABEL_CHARS] or "image"
    return f"{stem}-p{prompt_number}" if prompt_number is not None else stem


def partial_output_path(output: Path) -> Path:
    """The playable video of the sections an unfinished attempt wrote: ``<base>.partial.mp4``."""
    return output.with_name(output.stem + PARTIAL_SUFFIX)


def output_base(video: Path | str) -> str:
    """What every file of one job shares: its name up to the first dot (``<time>_<id>_seed<n>`` for the ``.mp4``,
    ``.partial.mp4``, ``.attempt1.partial.mp4``, the ``.json`` sidecars and the input ``.png``)."""
    return Path(video).name.split(".", 1)[0]


def reroll_output_path(previous: Path, version: int, taken: Callable[[Path], bool] = Path.exists) -> Path:
    """A re-roll's video beside the one it re-rolls: ``<base>_r<version>.mp4`` (the base without an earlier
    ``_r<N>``), the next version up while ``taken(path)`` says that name is in use, so no video is overwritten."""
    base = re.sub(r"_r\d+$", "", output_base(previous))
    while taken(path := Path(previous).with_name(f"{base}_r{version}.mp4")):
        version += 1
    return path
