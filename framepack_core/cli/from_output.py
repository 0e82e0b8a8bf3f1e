"""``python -m framepack_core generate --from VIDEO.mp4 --image IMG [options]``: make a video again from its
description (``framepack_core.jobs.output_description``).

The settings come from the video's job spec; every setting option typed on the command line overrides the
spec's value (typed, not merely defaulted: the command line is parsed a second time with every setting's
default replaced by a marker, so ``--seed 31337`` counts even when it equals the default). The image must be the
very file the video was made from (same SHA-256). Notes say which options overrode the spec and where this
machine differs from the one that made the video (model files, library versions, device type, dtypes,
attention), since then the result may not be bit-identical.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from framepack_core.cli.input_files import input_files_for
from framepack_core.cli.options import add_generate_parser, option_for_field, request_from_args
from framepack_core.errors import FramePackError, InvalidInputError
from framepack_core.jobs.output_description import OutputDescription, read_output_description
from framepack_core.jobs.spec import SETTINGS_FIELDS, JobSpec, file_sha256

_NOT_GIVEN = object()

if TYPE_CHECKING:
    from framepack_core.jobs.fingerprint import ModelsInfo
    from framepack_core.request import GenerationRequest


def setting_options() -> dict[str, str]:
    """Each setting's argparse dest -> its request field (``window`` -> ``latent_window_size``)."""

    dests = {option_for_field(name)[2:].replace("-", "_"): name for name in SETTINGS_FIELDS}
    return dests | {"teacache": "cache"}  # --teacache/--no-teacache say --cache teacache/none


def typed_settings(argv: Sequence[str]) -> set[str]:
    """The setting dests given on the command line ``argv`` (``["generate", "--image", ...]``)."""

    dests = setting_options()
    root = argparse.ArgumentParser(add_help=False)
    generate = add_generate_parser(root.add_subparsers(dest="command"))
    # A marker object rather than argparse.SUPPRESS: argparse runs ``type`` on string defaults ("==SUPPRESS==").
    generate.set_defaults(**dict.fromkeys(dests, _NOT_GIVEN))
    parsed = vars(root.parse_args(list(argv)))
    return {dest for dest in dests if parsed.get(dest, _NOT_GIVEN) is not _NOT_GIVEN}


def request_from_video(args: argparse.Namespace, argv: Sequence[str]
                       ) -> tuple[GenerationRequest, OutputDescription, list[str]]:
    """The request that remakes ``args.from_video`` with ``args.image``, the description read from the video,
    and notes for the user. ``InvalidInputError`` (field ``from`` or ``image``) for a video without a valid
    description or an image that is not the video's."""
    from framepack_core.request import GenerationRequest

    video = Path(args.from_video)
    description = read_output_description(video, field="from")
    spec = description.spec
    image = Path(args.image)
    if image.is_file():  # a missing or unreadable image is reported by the engine's image check
        actual = file_sha256(image)
        if actual != spec.image_sha256:
            raise InvalidInputError(
                "image", f"{image} is not the image {video.name} was made from (its SHA-256 is {actual[:12]}..., "
                         f"the video's is {spec.image_sha256[:12]}...)",
                "Give --image the exact file the video was made from (a re-saved, resized or converted copy "
                "differs). To use these settings with another image, run without --from and give them as options.")
    settings: dict[str, Any] = dict(spec.settings)
    typed = request_from_args(args, image).to_dict()
    notes = [f"settings from {video.name} (seed {settings['seed']}, {settings['steps']} steps, "
             f"{settings['seconds']:g} s, model {settings['model']})"]
    overrides = []
    given = typed_settings(argv)
    for dest, name in setting_options().items():
        if dest in given and name in settings:
            overrides.append(f"{_option_text(dest, typed[name])} instead of {_value_text(dest, settings[name])}")
            settings[name] = typed[name]
    if overrides:
        notes.append("options that override the video's settings: " + ", ".join(overrides))
    files, file_notes = input_files_for(spec, args, video)
    notes += file_notes
    clip = _extend_video(args, spec, video.name)
    if clip is not None:
        files["extend_video"] = clip
    request = GenerationRequest(image=image, output=args.output, save_latents=args.save_latents, **settings, **files)
    return request, description, notes


def _extend_video(args: argparse.Namespace, spec: JobSpec, video_name: str) -> Path | None:
    """The clip the video extended, asked for again (``--extend``) and checked by its SHA-256."""
    clip = getattr(args, "extend_video", None)
    expected = spec.inputs.get("extend_video")
    if expected is None or clip is None:
        if expected is not None:
            raise InvalidInputError("extend_video", f"{video_name} extends a clip (SHA-256 {expected[:12]}...)",
                                    "Give that clip again with --extend CLIP.")
        return None if clip is None else Path(clip)
    if Path(clip).is_file() and file_sha256(Path(clip)) != expected:
        raise InvalidInputError("extend_video", f"{clip} is not the clip {video_name} extends (its SHA-256 is "
                                f"{file_sha256(Path(clip))[:12]}..., the video's is {expected[:12]}...)",
                                "Give --extend the exact file the video was made from.")
    return Path(clip)


def environment_notes(description: OutputDescription, models: ModelsInfo, request: GenerationRequest,
                      video: Path) -> list[str]:
    """A note when this machine differs from the one that made ``video`` in what decides the numbers."""
    from framepack_core.jobs.fingerprint import environment_fingerprint, fingerprint_differences
    from framepack_core.models.identity import model_identities

    recorded = description.fingerprint
    try:
        identities = model_identities(models.source, str(getattr(request.model, "value", request.model)))
    except (FramePackError, OSError):  # missing weights: the run reports them; skip the comparison here
        identities = dict(recorded.get("models") or {})
    current = environment_fingerprint(models, None, request, identities=identities)
    differences = fingerprint_differences(recorded, current)
    if not differences:
        return []
    return [f"this machine differs from the one that made {video.name}, so the video may not reproduce bit for "
            "bit: " + "; ".join(differences)]


def _option_text(dest: str, value: Any) -> str:
    """How ``value`` is typed for the option of ``dest``: ``--seed 7``, ``--no-teacache``, ``--prompt 'a cat'``."""
    option = "--" + dest.replace("_", "-")
    if dest == "teacache":  # --teacache/--no-teacache set the cache: say it as they were typed
        value = value == "teacache"
    if isinstance(value, bool):
        return option if value else f"--no-{option[2:]}"
    return f"{option} {_value_text(dest, value)}"


def _value_text(dest: str, value: Any) -> str:
    if isinstance(value, bool) or dest == "teacache":
        return _option_text(dest, value)
    if value is None:
        return "automatic"
    return repr(value) if isinstance(value, str) else f"{value:g}" if isinstance(value, float) else str(value)
