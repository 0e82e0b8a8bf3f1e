"""The pre-flight check of a job's weights, and the one short paragraph that says what is missing and how to get it.

A job that lacks weights fails before it loads anything, with: which components are missing, the one command that
fetches all of them (``models download``, a shell command to copy) and about how many GB that is. Each component's
folder and problem follow in the error's ``details``, which the edges show second.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from framepack_core.errors import MissingWeightsError
from framepack_core.models.components import ModelVariant
from framepack_core.models.hub_files import download_bytes, format_gb
from framepack_core.models.inventory import download_target
from framepack_core.models.loading import (
    TINY_MANIFEST_NAME,
    TINY_MODELS_COMMAND,
    ComponentProblem,
    ModelSource,
    component_problems,
    is_offline,
    needed_files,
)


def models_download_command(variant: ModelVariant | str, models_dir: Path | None = None) -> str:
    """The shell command that fetches every missing component of ``variant`` (to copy, so it spells the flags)."""
    return (f"python -m framepack_core models download --model {ModelVariant(variant).value}"
            f"{'' if models_dir is None else ' --models-dir ' + shlex.quote(str(Path(models_dir).expanduser()))}")


def missing_weights_error(source: ModelSource, variant: ModelVariant | str,
                          problems: tuple[ComponentProblem, ...]) -> MissingWeightsError:
    """One error for every unusable component: a short paragraph, with each one's folder and problem in ``details``."""
    offline = is_offline(source)
    names = ", ".join(problem.files.name for problem in problems)
    total = len(needed_files(variant))
    target = download_target(source.models_dir, source.cache_dir)
    where = str(target) if source.models_dir is not None else f"the Hugging Face cache ({target})"
    if len(problems) == 1:
        message = f"The model component {names} is missing or incomplete in {where}."
    else:
        count = f"All {total}" if len(problems) == total else f"{len(problems)} of the {total}"
        message = f"{count} model components this job needs are missing or incomplete in {where}: {names}."
    if offline and source.models_dir is None:
        message += " Offline mode is on, so nothing was downloaded."
    size, from_hub = download_bytes(tuple(problem.files for problem in problems), offline)
    about = f"{format_gb(size)}, as the hub lists it" if from_hub else f"about {format_gb(size)}"
    command = f"`{models_download_command(variant, source.models_dir)}`"
    models_dir = source.models_dir
    if models_dir is not None and (Path(models_dir).expanduser() / TINY_MANIFEST_NAME).is_file():
        hint = (f"This is a tiny test set: rebuild it with `{TINY_MODELS_COMMAND} {Path(models_dir).expanduser()}`, "
                f"or get the real weights ({about}) with {command}.")
    elif offline and models_dir is None:
        hint = (f"Get them all ({about}) with {command}, or run without {{offline}} so that the job downloads them, "
                "or give a folder that holds them as {models_dir}.")
    else:
        hint = f"Get them all ({about}) with {command}, or give a folder that holds them as {{models_dir}}."
    details = "\n".join(problem.describe() for problem in problems)
    first = problems[0]
    return MissingWeightsError(first.files.name, [problem.looked_in for problem in problems], first.detail, hint,
                               summary=message, details=details)


def check_weights(source: ModelSource, variant: ModelVariant | str) -> None:
    """Pre-flight check that every component a job with ``variant`` ("original" or "f1") needs is whole.

    Raises one ``MissingWeightsError`` naming every broken component, so that one run tells the user everything
    to fix (see ``framepack_core.models.loading.component_problems``).
    """
    problems = component_problems(source, variant)
    if problems:
        raise missing_weights_error(source, variant, problems)
