"""Self-describing outputs: every mp4 the engine writes says how it was made.

The description is one JSON document, ``{"kind": "framepack-output", "version": 1, "spec": {...},
"fingerprint": {...}}``: the job spec (every setting, the input image's SHA-256, the model identities; see
``framepack_core.jobs.spec``) and the environment fingerprint (library versions, device, dtypes, attention, cache,
memory placement; see ``framepack_core.jobs.fingerprint``). It is stored twice:

- in the mp4 itself, as the container's ``comment`` tag (compact JSON). FFmpeg's mp4 muxer writes only the
  tags it knows (title, comment, ...) into the iTunes ``ilst`` box; a custom key needs ``movflags=
  use_metadata_tags`` (the QuickTime ``mdta`` box), and a plain ``ffmpeg -i in.mp4 -c copy out.mp4`` drops it
  again. ``comment`` survives such a remux or trim, and ffprobe, exiftool and PyAV read it back. The document's
  ``kind`` tells it apart from a comment some other tool wrote.
- in a sidecar ``<video>.json`` next to the video (the same document, indented), written atomically; the app's
  gallery reads it, and ``read_output_description`` falls back to it when the mp4's tags were stripped.

``python -m framepack_core generate --from VIDEO.mp4 --image IMG`` and the app's "Load settings from a video"
read it back to make the same video again.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from framepack_core.errors import InvalidInputError
from framepack_core.files import write_text_atomically
from framepack_core.jobs.spec import JobSpec

OUTPUT_KIND = "framepack-output"
OUTPUT_VERSION = 1
METADATA_TAG = "comment"  # why this tag: see the module docstring
SIDECAR_SUFFIX = ".json"
_FIX_INVALID = ("The description was edited or written by an incompatible version of the app. Use the video's "
                "settings by hand, or make it again with this version.")


@dataclass(frozen=True)
class OutputDescription:
    """How a video was made: the job ``spec`` and the environment ``fingerprint`` (plain JSON data)."""

    spec: JobSpec
    fingerprint: Mapping[str, Any]
    version: int = OUTPUT_VERSION

    def __post_init__(self) -> None:
        object.__setattr__(self, "fingerprint", MappingProxyType(dict(self.fingerprint)))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": OUTPUT_KIND, "version": self.version, "spec": self.spec.to_dict(),
                "fingerprint": json.loads(json.dumps(dict(self.fingerprint)))}

    def to_json(self, indent: int | None = 2) -> str:
        separators = None if indent else (",", ":")
        return json.dumps(self.to_dict(), indent=indent, separators=separators)

    @classmethod
    def from_dict(cls, data: Any) -> OutputDescription:
        """Parse and validate; ``InvalidInputError`` names the first bad field (``spec.settings.steps``)."""
        if not isinstance(data, dict):
            raise InvalidInputError("description", f"must be a JSON object, got {type(data).__name__}")
        unknown = sorted(set(data) - {"kind", "version", "spec", "fingerprint"})
        if unknown:
            raise InvalidInputError(unknown[0], "is not a field of an output description",
                                    "A description has kind, version, spec and fingerprint.")
        if data.get("kind") != OUTPUT_KIND:
            raise InvalidInputError("kind", f"must be {OUTPUT_KIND!r}, got {data.get('kind')!r}")
        if data.get("version") != OUTPUT_VERSION:
            raise InvalidInputError("version", f"must be {OUTPUT_VERSION}, got {data.get('version')!r}",
                                    "This video was described by another version of the app.")
        try:
            spec = JobSpec.from_dict(data.get("spec"))
        except InvalidInputError as error:
            raise InvalidInputError(f"spec.{error.field}", error.message.split(": ", 1)[-1], error.hint) from None
        fingerprint = data.get("fingerprint")
        if not isinstance(fingerprint, dict):
            raise InvalidInputError("fingerprint", "must be a JSON object")
        return cls(spec, fingerprint)

    @classmethod
    def from_json(cls, text: str) -> OutputDescription:
        try:
            data = json.loads(text)
        except (ValueError, TypeError) as error:
            raise InvalidInputError("description", f"is not valid JSON ({error})") from None
        return cls.from_dict(data)


def sidecar_path(video: Path) -> Path:
    """The sidecar JSON of ``video``: the same name with ``.json`` (``clip.partial.mp4`` -> ``clip.partial.json``)."""
    return Path(video).with_suffix(SIDECAR_SUFFIX)


def container_metadata(description: OutputDescription) -> dict[str, str]:
    """The mp4 container tags that carry ``description`` (for ``join_segments`` / ``SectionVideoWriter``)."""
    return {METADATA_TAG: description.to_json(indent=None)}


def write_sidecar(video: Path, description: OutputDescription) -> Path:
    """Write ``description`` next to ``video`` atomically (a temporary file in the same folder, then a rename), so
    a reader sees the old file or the new one, never half of one. Raises ``OSError``."""
    return write_text_atomically(sidecar_path(video), description.to_json() + "\n")


def is_description(data: Any) -> bool:
    """Whether ``data`` (parsed JSON) claims to be an output description (valid or not)."""
    return isinstance(data, dict) and data.get("kind") == OUTPUT_KIND


def read_output_description(video: Path, field: str = "from") -> OutputDescription:
    """The description of ``video``: from its mp4 metadata, else from its sidecar JSON.

    Raises ``InvalidInputError`` with ``field`` (the option or input that named the file) when the file is missing,
    is not a video, carries no description, or carries an invalid one; the message says which and how to fix it.
    """
    import av

    video = Path(video)
    if not video.is_file():
        what = "is a folder" if video.is_dir() else "does not exist"
        raise InvalidInputError(field, f"{video} {what}", "Give the path of an mp4 video this app made.")
    try:
        with av.open(str(video)) as container:
            format_name = container.format.name or ""
            is_video = bool(container.streams.video) and not format_name.endswith("_pipe") and format_name != "image2"
            tag = container.metadata.get(METADATA_TAG)
    except (av.FFmpegError, OSError, ValueError) as error:
        raise InvalidInputError(field, f"{video.name} is not a video file ({_reason(error)})",
                                "Give an mp4 video this app made.") from None
    if not is_video:
        raise InvalidInputError(field, f"{video.name} is not a video file (it holds no video stream)",
                                "Give an mp4 video this app made.")
    if tag:
        try:
            data = json.loads(tag)
        except ValueError:
            data = None  # a comment another tool wrote
        if is_description(data):
            return _parse(data, f"the description in {video.name}'s metadata", field)
    sidecar = sidecar_path(video)
    if sidecar.is_file():
        try:
            data = json.loads(sidecar.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise InvalidInputError(field, f"{video.name} has no description in its metadata, and its sidecar "
                                    f"{sidecar.name} cannot be read ({_reason(error)})", _FIX_INVALID) from None
        if is_description(data):
            return _parse(data, f"the description in {sidecar.name}", field)
    raise InvalidInputError(
        field, f"{video.name} carries no FramePack description: none in its mp4 metadata, and no sidecar "
               f"{sidecar.name} next to it",
        "Give a video made by this version of the app, as it wrote it (a video re-encoded or stripped of its "
        "metadata loses the description; keep its .json sidecar next to it then).")


def _parse(data: dict[str, Any], where: str, field: str) -> OutputDescription:
    try:
        return OutputDescription.from_dict(data)
    except InvalidInputError as error:
        raise InvalidInputError(field, f"{where} is invalid: {error.message}", _FIX_INVALID) from None


def _reason(error: BaseException) -> str:
    return getattr(error, "strerror", None) or str(error) or type(error).__name__
