"""The job spec: a versioned, self-contained description of one generation, as JSON.

A ``GenerationRequest`` says what to do with files on this machine (an image path, an output path). A ``JobSpec``
says what video that is, anywhere: every setting, the input image's SHA-256 and the identity of each model
component. The CLI, the UI, the job queue and the HTTP API exchange specs; job folders, output sidecars and mp4
metadata store them. Parsing refuses anything unknown or invalid with an error naming the field
(``settings.steps``, ``image_sha256``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any

from framepack_core.errors import InvalidInputError
from framepack_core.request import GenerationRequest

SPEC_VERSION = 1
SPEC_KIND = "framepack-job"

# The request's fields that describe the video (not where files go), in the order they are written.
SETTINGS_FIELDS = tuple(f.name for f in fields(GenerationRequest) if f.name not in ("image", "output", "save_latents"))
# Settings that change where the weights live but never the video: a resumed job may change them.
MEMORY_ONLY_SETTINGS = frozenset({"gpu_memory_preservation"})
_HEX = frozenset("0123456789abcdef")


def file_sha256(path: Path, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class JobSpec:
    """Everything that decides a video. ``models`` maps each component to its identity (``org/name@revision``
    or a digest of a local copy, see ``framepack_core.models.identity``)."""

    settings: Mapping[str, Any]
    image_sha256: str
    models: Mapping[str, str] = field(default_factory=dict)
    version: int = SPEC_VERSION

    def __post_init__(self) -> None:
        object.__setattr__(self, "settings", MappingProxyType(dict(self.settings)))
        object.__setattr__(self, "models", MappingProxyType(dict(self.models)))

    @classmethod
    def from_request(cls, request: GenerationRequest, image_sha256: str,
                     models: Mapping[str, str] | None = None) -> JobSpec:
        data = request.validated().to_dict()
        return cls({name: data[name] for name in SETTINGS_FIELDS}, image_sha256, models or {})

    def request(self, image: Path, output: Path | None = None, save_latents: Path | None = None
                ) -> GenerationRequest:
        """The request that runs this spec with ``image`` (whose hash the caller checks, see ``check_image``)."""
        return GenerationRequest(image=Path(image), output=output, save_latents=save_latents,
                                 **dict(self.settings)).validated()

    def with_changes(self, changes: Mapping[str, Any]) -> JobSpec:
        """The same job with some settings changed (same image and models); ``InvalidInputError`` names a bad
        or unknown setting."""
        if not isinstance(changes, Mapping):
            raise InvalidInputError("settings", "must be an object of the settings to change, such as {\"seed\": 7}")
        return JobSpec.from_dict({**self.to_dict(), "settings": {**self.settings, **changes}})

    def check_image(self, image: Path) -> None:
        actual = file_sha256(image)
        if actual != self.image_sha256:
            raise InvalidInputError("image", f"{image} is not the spec's input image (SHA-256 {actual[:12]}... "
                                    f"instead of {self.image_sha256[:12]}...)",
                                    "Give the same image file the video was made from.")

    def to_dict(self) -> dict[str, Any]:
        return {"kind": SPEC_KIND, "version": self.version, "settings": dict(self.settings),
                "image_sha256": self.image_sha256, "models": dict(self.models)}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=False)

    @property
    def digest(self) -> str:
        """SHA-256 of what decides the video (memory-only settings left out), as canonical JSON."""
        data = self.to_dict()
        data["settings"] = {k: v for k, v in data["settings"].items() if k not in MEMORY_ONLY_SETTINGS}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()

    def differences(self, other: JobSpec) -> list[str]:
        """What differs in the video-deciding parts, as "field: ours -> theirs" lines (empty when the same)."""
        lines = []
        for name in SETTINGS_FIELDS:
            if name in MEMORY_ONLY_SETTINGS:
                continue
            if self.settings.get(name) != other.settings.get(name):
                lines.append(f"settings.{name}: {self.settings.get(name)!r} -> {other.settings.get(name)!r}")
        if self.image_sha256 != other.image_sha256:
            lines.append(f"image_sha256: {self.image_sha256[:12]}... -> {other.image_sha256[:12]}...")
        for component in sorted(set(self.models) | set(other.models)):
            if self.models.get(component) != other.models.get(component):
                lines.append(f"models.{component}: {self.models.get(component)} -> {other.models.get(component)}")
        if self.version != other.version:
            lines.append(f"version: {self.version} -> {other.version}")
        return lines

    @classmethod
    def from_dict(cls, data: Any) -> JobSpec:
        """Parse and validate; ``InvalidInputError`` names the first bad field."""
        if not isinstance(data, dict):
            raise InvalidInputError("spec", f"must be a JSON object, got {type(data).__name__}")
        unknown = sorted(set(data) - {"kind", "version", "settings", "image_sha256", "models"})
        if unknown:
            raise InvalidInputError(unknown[0], "is not a field of a job spec",
                                    "A spec has kind, version, settings, image_sha256 and models.")
        if data.get("kind", SPEC_KIND) != SPEC_KIND:
            raise InvalidInputError("kind", f"must be {SPEC_KIND!r}, got {data.get('kind')!r}")
        version = data.get("version")
        if version != SPEC_VERSION:
            raise InvalidInputError("version", f"must be {SPEC_VERSION}, got {version!r}",
                                    "This spec was written by another version of the app.")
        settings = data.get("settings")
        if not isinstance(settings, dict):
            raise InvalidInputError("settings", "must be an object of generation settings")
        for name in settings:
            if name not in SETTINGS_FIELDS:
                raise InvalidInputError(f"settings.{name}", "is not a generation setting",
                                        f"Settings are: {', '.join(SETTINGS_FIELDS)}.")
        try:
            request = GenerationRequest(image=Path("spec"), **settings).validated()
        except InvalidInputError as error:
            raise InvalidInputError(f"settings.{error.field}", error.message.split(": ", 1)[-1], error.hint) from None
        except TypeError as error:
            raise InvalidInputError("settings", str(error)) from None
        image_sha256 = data.get("image_sha256")
        if not (isinstance(image_sha256, str) and len(image_sha256) == 64 and set(image_sha256) <= _HEX):
            raise InvalidInputError("image_sha256", "must be 64 lowercase hex digits (the input image's SHA-256)")
        models = data.get("models", {})
        if not isinstance(models, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                   for k, v in models.items()):
            raise InvalidInputError("models", "must map component names to identity strings")
        return cls.from_request(request, image_sha256, models)

    @classmethod
    def from_json(cls, text: str) -> JobSpec:
        try:
            data = json.loads(text)
        except (ValueError, TypeError) as error:
            raise InvalidInputError("spec", f"is not valid JSON ({error})") from None
        except RecursionError:  # "[[[[...]]]]" nested deeper than the parser's stack
            raise InvalidInputError("spec", "is nested too deeply to be a job spec") from None
        return cls.from_dict(data)
