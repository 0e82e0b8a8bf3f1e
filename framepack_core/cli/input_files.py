"""``generate --from VIDEO``: the input files besides the start image (end image, keyframes, LoRAs) that the
video's spec names by SHA-256. They are given again as ``--end-image`` / ``--keyframe`` / ``--lora``, and each must
be the very file the video was made from, as ``--image`` must."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from framepack_core.errors import InvalidInputError
from framepack_core.jobs.spec import JobSpec, file_sha256
from framepack_core.request import Keyframe, LoraChoice

SAME_FILE_HINT = "Give the exact file the video was made from (a re-saved, resized or converted copy differs)."


def input_files_for(spec: JobSpec, args: argparse.Namespace, video: Path) -> tuple[dict[str, Any], list[str]]:
    """The request fields for the files ``spec`` needs (``end_image``, ``keyframes``) from the options, and notes
    for files given that the video was made without. ``InvalidInputError`` names the field of a file that is
    missing or is not the video's."""
    fields: dict[str, Any] = {}
    notes = []
    wanted_end = spec.inputs.get("end_image")
    given_end = getattr(args, "end_image", None)
    if wanted_end is not None and given_end is None:
        raise InvalidInputError("end_image", f"{video.name} was made with an end image (SHA-256 {wanted_end[:12]}...)",
                                "Give it again with --end-image.")
    if given_end is not None:
        if wanted_end is None:
            notes.append(f"--end-image {given_end} is used, though {video.name} was made without one")
        else:
            _check_same_file("end_image", Path(given_end), wanted_end, "the end image", video)
        fields["end_image"] = Path(given_end)

    given = {float(seconds): Path(path) for seconds, path in getattr(args, "keyframes", None) or ()}
    for wanted in spec.inputs.get("keyframes", ()):
        seconds, sha256 = float(wanted["seconds"]), wanted["image_sha256"]
        if seconds not in given:
            raise InvalidInputError("keyframes", f"{video.name} was made with a keyframe at {seconds:g} s "
                                                 f"(SHA-256 {sha256[:12]}...)",
                                    f"Give it again with --keyframe {seconds:g}:PATH.")
        _check_same_file("keyframes", given[seconds], sha256, f"the keyframe at {seconds:g} s", video)
    extra = sorted(set(given) - {float(k["seconds"]) for k in spec.inputs.get("keyframes", ())})
    if extra:
        notes.append(f"keyframes at {', '.join(f'{s:g} s' for s in extra)} are used, though {video.name} was made "
                     "without them")
    if given:
        fields["keyframes"] = tuple(Keyframe(seconds, path) for seconds, path in given.items())
    loras = _loras_for(spec, args, video, notes)
    if loras:
        fields["loras"] = loras
    return fields, notes


def _loras_for(spec: JobSpec, args: argparse.Namespace, video: Path, notes: list[str]) -> tuple[LoraChoice, ...]:
    """The video's LoRAs, matched by SHA-256 among the ``--lora`` files, at the video's weights (a weight given
    other than the default 1 overrides it); a ``--lora`` the video was made without is added, with a note."""
    given = [(Path(path), float(weight)) for path, weight in getattr(args, "loras", None) or ()]
    by_sha = {file_sha256(path): (path, weight) for path, weight in given if path.is_file()}
    unreadable = [(path, weight) for path, weight in given if not path.is_file()]  # the engine says what is wrong
    choices = []
    for wanted in spec.inputs.get("loras", ()):
        sha256, weight = wanted["sha256"], float(wanted["weight"])
        if sha256 not in by_sha:
            raise InvalidInputError("loras", f"{video.name} was made with a LoRA at weight {weight:g} (SHA-256 "
                                             f"{sha256[:12]}...) that no --lora file is",
                                    f"Give it again with --lora PATH. {SAME_FILE_HINT}")
        path, given_weight = by_sha.pop(sha256)
        if given_weight not in (1.0, weight):
            notes.append(f"--lora {path} at weight {given_weight:g} instead of the video's {weight:g}")
            weight = given_weight
        choices.append(LoraChoice(path, weight))
    for path, weight in [*by_sha.values(), *unreadable]:
        notes.append(f"--lora {path} is used, though {video.name} was made without it")
        choices.append(LoraChoice(path, weight))
    return tuple(choices)


def _check_same_file(field: str, path: Path, sha256: str, what: str, video: Path) -> None:
    if not path.is_file():  # a missing or unreadable image is reported by the engine's image check
        return
    actual = file_sha256(path)
    if actual != sha256:
        raise InvalidInputError(field, f"{path} is not {what} {video.name} was made with (its SHA-256 is "
                                       f"{actual[:12]}..., the video's is {sha256[:12]}...)", SAME_FILE_HINT)
