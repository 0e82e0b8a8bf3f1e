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
from framepack_core.request import FILE_FIELDS, GenerationRequest, Keyframe, LoraChoice

SPEC_VERSION = 2
READABLE_VERSIONS = (1, 2)  # version 1 had no input files but the start image, and fewer settings
SPEC_KIND = "framepack-job"

# The request's fields that describe the video (not where files go), in the order they are written.
SETTINGS_FIELDS = tuple(f.name for f in fields(GenerationRequest) if f.name not in FILE_FIELDS)
# Version 1's settings. A setting added since is left out of the digest while at its default, so a job folder
# started by an older version still resumes, and an old video's settings still match a new run of them.
_V1_SETTINGS = frozenset({
    "prompt", "negative_prompt", "model", "seconds", "seed", "steps", "latent_window_size", "distilled_guidance",
    "cfg", "cfg_rescale", "cache", "cache_threshold", "crf", "resolution", "sampler_variant",
    "gpu_memory_preservation", "fp8"})
# Versions 1 and 2 said TeaCache on or off with these two settings; ``cache`` and ``cache_threshold`` replace them.
_LEGACY_CACHE_SETTINGS = ("use_teacache", "teacache_threshold")
_TEACACHE_DEFAULT_THRESHOLD = 0.15
_ADDED_DEFAULTS = {name: value for name, value in
                   GenerationRequest(image=Path("spec")).to_dict().items()
                   if name in SETTINGS_FIELDS and name not in _V1_SETTINGS}
# Input files besides the start image, by role: one file each, or a list of timed keyframe images.
INPUT_ROLES = ("end_image", "extend_video", "keyframes", "loras")
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
    # The other input files' SHA-256 by role: {"end_image": sha, "extend_video": sha,
    # "keyframes": [{"seconds": 3.0, "image_sha256": sha}, ...], "loras": [{"sha256": sha, "weight": 0.8}, ...]};
    # a role not used is absent.
    inputs: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "settings", MappingProxyType(dict(self.settings)))
        object.__setattr__(self, "models", MappingProxyType(dict(self.models)))
        object.__setattr__(self, "inputs", MappingProxyType(dict(self.inputs)))

    @classmethod
    def from_request(cls, request: GenerationRequest, image_sha256: str,
                     models: Mapping[str, str] | None = None) -> JobSpec:
        """The spec of ``request``; the other input files it names are hashed here."""
        request = request.validated()
        data = request.to_dict()
        inputs: dict[str, Any] = {}
        for role in ("end_image", "extend_video"):
            if getattr(request, role) is not None:
                inputs[role] = file_sha256(Path(getattr(request, role)))
        if request.keyframes:
            inputs["keyframes"] = [{"seconds": k.seconds, "image_sha256": file_sha256(k.image)}
                                   for k in request.keyframes]
        if request.loras:
            inputs["loras"] = [{"sha256": file_sha256(lora.path), "weight": lora.weight} for lora in request.loras]
        return cls({name: data[name] for name in SETTINGS_FIELDS}, image_sha256, models or {}, inputs=inputs)

    @staticmethod
    def input_files_of(request: GenerationRequest) -> dict[str, Path]:
        """The request's input files besides the start image, by SHA-256 (what ``request`` and the queue take)."""
        paths = [p for p in (request.end_image, request.extend_video) if p is not None]
        paths += [k.image for k in request.keyframes] + [lora.path for lora in request.loras]
        return {file_sha256(Path(path)): Path(path) for path in paths}

    def files_for(self, request: GenerationRequest) -> dict[str, Path]:
        """The input files of ``request``, the request this spec was made from, by the SHA-256 the spec already
        holds for each (what ``request`` and the queue take), so no file is read again."""
        request = request.validated()  # keyframes in time order, as the spec lists them
        files = {self.inputs[role]: Path(getattr(request, role))
                 for role in ("end_image", "extend_video") if role in self.inputs}
        for listed, keyframe in zip(self.inputs.get("keyframes", ()), request.keyframes, strict=True):
            files[listed["image_sha256"]] = Path(keyframe.image)
        for listed, lora in zip(self.inputs.get("loras", ()), request.loras, strict=True):
            files[listed["sha256"]] = Path(lora.path)
        return files

    def input_sha256s(self) -> list[str]:
        """The SHA-256 of every input file besides the start image, each once, in role order."""
        found = [self.inputs[role] for role in ("end_image", "extend_video") if role in self.inputs]
        found += [k["image_sha256"] for k in self.inputs.get("keyframes", ())]
        found += [lora["sha256"] for lora in self.inputs.get("loras", ())]
        return list(dict.fromkeys(found))

    def request(self, image: Path, output: Path | None = None, save_latents: Path | None = None,
                files: Mapping[str, Path] | None = None) -> GenerationRequest:
        """The request that runs this spec with ``image`` and the other input files, ``files`` mapping each one's
        SHA-256 to its path (the caller checks the start image's hash, see ``check_image``)."""
        return GenerationRequest(image=Path(image), output=output, save_latents=save_latents,
                                 **dict(self.settings), **self._input_paths(files or {})).validated()

    def _input_paths(self, files: Mapping[str, Path]) -> dict[str, Any]:
        def path(sha256: str, role: str) -> Path:
            if sha256 not in files:
                raise InvalidInputError(f"inputs.{role}", f"the job needs its file with SHA-256 {sha256[:12]}...",
                                        "Give the same file the job was made with.")
            return Path(files[sha256])

        paths: dict[str, Any] = {role: path(self.inputs[role], role)
                                 for role in ("end_image", "extend_video") if role in self.inputs}
        if "keyframes" in self.inputs:
            paths["keyframes"] = tuple(Keyframe(k["seconds"], path(k["image_sha256"], "keyframes"))
                                       for k in self.inputs["keyframes"])
        if "loras" in self.inputs:
            paths["loras"] = tuple(LoraChoice(path(lora["sha256"], "loras"), lora["weight"])
                                   for lora in self.inputs["loras"])
        return paths

    def with_changes(self, changes: Mapping[str, Any]) -> JobSpec:
        """The same job with some settings changed (same image and models); ``InvalidInputError`` names a bad
        or unknown setting."""
        if not isinstance(changes, Mapping):
            raise InvalidInputError("settings", "must be an object of the settings to change, such as {\"seed\": 7}")
        changes = settings_in_current_names(dict(changes))  # {"use_teacache": false} from an older client
        return JobSpec.from_dict({**self.to_dict(), "settings": {**self.settings, **changes}})

    def check_image(self, image: Path) -> None:
        actual = file_sha256(image)
        if actual != self.image_sha256:
            raise InvalidInputError("image", f"{image} is not the spec's input image (SHA-256 {actual[:12]}... "
                                    f"instead of {self.image_sha256[:12]}...)",
                                    "Give the same image file the video was made from.")

    def to_dict(self) -> dict[str, Any]:
        data = {"kind": SPEC_KIND, "version": self.version, "settings": dict(self.settings),
                "image_sha256": self.image_sha256, "models": dict(self.models)}
        if self.inputs:
            data["inputs"] = dict(self.inputs)
        return data

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=False)

    @property
    def digest(self) -> str:
        """SHA-256 of what decides the video, as canonical JSON. Left out: memory-only settings, the version,
        and settings added since version 1 while at their defaults (so older job folders still resume)."""
        data = self.to_dict()
        del data["version"]
        data["settings"] = {k: v for k, v in data["settings"].items() if k not in MEMORY_ONLY_SETTINGS
                            and not (k in _ADDED_DEFAULTS and v == _ADDED_DEFAULTS[k])}
        data["settings"] = _with_legacy_cache_settings(data["settings"])
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
        for role in INPUT_ROLES:
            if self.inputs.get(role) != other.inputs.get(role):
                lines.append(f"inputs.{role}: {self.inputs.get(role)!r} -> {other.inputs.get(role)!r}")
        for component in sorted(set(self.models) | set(other.models)):
            if self.models.get(component) != other.models.get(component):
                lines.append(f"models.{component}: {self.models.get(component)} -> {other.models.get(component)}")
        return lines

    @classmethod
    def from_dict(cls, data: Any) -> JobSpec:
        """Parse and validate; ``InvalidInputError`` names the first bad field."""
        if not isinstance(data, dict):
            raise InvalidInputError("spec", f"must be a JSON object, got {type(data).__name__}")
        unknown = sorted(set(data) - {"kind", "version", "settings", "image_sha256", "models", "inputs"})
        if unknown:
            raise InvalidInputError(unknown[0], "is not a field of a job spec",
                                    "A spec has kind, version, settings, image_sha256, inputs and models.")
        if data.get("kind", SPEC_KIND) != SPEC_KIND:
            raise InvalidInputError("kind", f"must be {SPEC_KIND!r}, got {data.get('kind')!r}")
        version = data.get("version")
        if version not in READABLE_VERSIONS or isinstance(version, bool):
            raise InvalidInputError("version", f"must be one of {', '.join(map(str, READABLE_VERSIONS))}, "
                                               f"got {version!r}",
                                    "This spec was written by another version of the app.")
        settings = data.get("settings")
        if not isinstance(settings, dict):
            raise InvalidInputError("settings", "must be an object of generation settings")
        settings = settings_in_current_names(settings)
        for name in settings:
            if name not in SETTINGS_FIELDS:
                raise InvalidInputError(f"settings.{name}", "is not a generation setting",
                                        f"Settings are: {', '.join(SETTINGS_FIELDS)}.")
        inputs = _parsed_inputs(data.get("inputs", {}))
        try:
            # Stand-in paths: what is checked here is the settings and how they go with the inputs used.
            only_inputs = JobSpec({}, "0" * 64, inputs=inputs)
            paths = only_inputs._input_paths({sha: Path(sha) for sha in only_inputs.input_sha256s()})
            request = GenerationRequest(image=Path("spec"), **settings, **paths).validated()
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
        data = request.to_dict()
        return cls({name: data[name] for name in SETTINGS_FIELDS}, image_sha256, models, inputs=inputs)

    @classmethod
    def from_json(cls, text: str) -> JobSpec:
        try:
            data = json.loads(text)
        except (ValueError, TypeError) as error:
            raise InvalidInputError("spec", f"is not valid JSON ({error})") from None
        except RecursionError:  # "[[[[...]]]]" nested deeper than the parser's stack
            raise InvalidInputError("spec", "is nested too deeply to be a job spec") from None
        return cls.from_dict(data)


def _with_legacy_cache_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """TeaCache on or off said as versions 1 and 2 said it, so the digest of a job folder or video made before
    ``cache`` existed is unchanged; the other caches are new and keep the new names."""
    method, threshold = settings.get("cache"), settings.get("cache_threshold")
    if method not in ("teacache", "none"):
        return settings
    rest = {k: v for k, v in settings.items() if k not in ("cache", "cache_threshold")}
    used = threshold if method == "teacache" and threshold is not None else _TEACACHE_DEFAULT_THRESHOLD
    return rest | {"use_teacache": method == "teacache", "teacache_threshold": used}


def settings_in_current_names(settings: dict[str, Any]) -> dict[str, Any]:
    """Settings with a version 1 or 2 spec's ``use_teacache``/``teacache_threshold`` said as ``cache`` and
    ``cache_threshold`` (what older specs, saved settings and API clients send)."""
    if not any(name in settings for name in _LEGACY_CACHE_SETTINGS):
        return settings
    if "cache" in settings or "cache_threshold" in settings:
        raise InvalidInputError("settings.use_teacache", "is given together with cache",
                                "Give only cache and cache_threshold.")
    use_teacache = settings.get("use_teacache", True)
    if not isinstance(use_teacache, bool):
        raise InvalidInputError("settings.use_teacache", f"must be true or false, got {use_teacache!r}")
    threshold = settings.get("teacache_threshold", _TEACACHE_DEFAULT_THRESHOLD)
    rest = {k: v for k, v in settings.items() if k not in _LEGACY_CACHE_SETTINGS}
    return rest | {"cache": "teacache" if use_teacache else "none",
                   "cache_threshold": None if not use_teacache or threshold == _TEACACHE_DEFAULT_THRESHOLD
                   else threshold}


def _is_sha256(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and set(value) <= _HEX


def _parsed_inputs(inputs: Any) -> dict[str, Any]:
    if not isinstance(inputs, dict):
        raise InvalidInputError("inputs", "must be an object of input files' SHA-256 by role")
    for role, value in inputs.items():
        if role not in INPUT_ROLES:
            raise InvalidInputError(f"inputs.{role}", "is not an input role",
                                    f"Input roles are: {', '.join(INPUT_ROLES)}.")
        if role not in ("keyframes", "loras") and not _is_sha256(value):
            raise InvalidInputError(f"inputs.{role}", "must be 64 lowercase hex digits (the file's SHA-256)")
    keyframes = inputs.get("keyframes", [])
    if not isinstance(keyframes, list) or not all(
            isinstance(k, dict) and set(k) == {"seconds", "image_sha256"} and _is_sha256(k["image_sha256"])
            for k in keyframes):
        raise InvalidInputError("inputs.keyframes", "must be a list of {seconds, image_sha256} objects")
    loras = inputs.get("loras", [])
    if not isinstance(loras, list) or not all(
            isinstance(item, dict) and set(item) == {"sha256", "weight"} and _is_sha256(item["sha256"])
            for item in loras):
        raise InvalidInputError("inputs.loras", "must be a list of {sha256, weight} objects")
    return {role: value for role, value in inputs.items() if value not in ([], None)}
