"""Find the five FramePack components on disk (or in the Hugging Face cache) and load them.

The loaders make the same ``from_pretrained`` calls that load the real weights on a user's PC; the tiny model
set (``framepack_core.models.tiny``) has the same layout, so tests run this exact code.

Two ways to find the files:

* ``ModelSource(models_dir=DIR)``: a plain folder in the repositories' ``org/name/subfolder`` layout
  (the transformer repos have their files at ``org/name``). Nothing is ever downloaded.
* no ``models_dir``: huggingface_hub's ``snapshot_download`` of just the files a component needs, into the
  standard HF cache (or ``cache_dir``), with huggingface_hub's own progress bars. ``offline=True`` or
  ``HF_HUB_OFFLINE=1`` uses the cache only.

Either way a component resolves to a local folder, which ``component_problem`` inspects without loading anything
(config present, every shard present, every safetensors file's size matching its header), so that a truncated
download is reported before a job starts rather than as a cryptic error halfway through it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from framepack_core.errors import InvalidInputError, MissingWeightsError
from framepack_core.models.components import Component, ModelVariant

logger = logging.getLogger(__name__)

BASE_REPO = "hunyuanvideo-community/HunyuanVideo"
REDUX_REPO = "lllyasviel/flux_redux_bfl"
TRANSFORMER_REPOS = MappingProxyType(
    {"original": "lllyasviel/FramePackI2V_HY", "f1": "lllyasviel/FramePack_F1_I2V_HY_20250503"}
)

TINY_MODELS_COMMAND = "python -m framepack_core tiny-models"
# The manifest that framepack_core.models.tiny writes last into a tiny set; its presence marks a tiny models_dir.
TINY_MANIFEST_NAME = "tiny_models.json"


@dataclass(frozen=True)
class ComponentFiles:
    """Where one component's files are and what they hold.

    ``name`` is what messages, ``resolve_component`` and job metadata call them: the component's value, and for
    the transformer "transformer:original" or "transformer:f1" (two checkpoints of one component).
    """

    component: Component
    variant: ModelVariant | None  # the transformer's checkpoint; None for the components every job shares
    repo: str
    subfolder: str | None  # None: the files sit at the repository root (the FramePack transformer repos)
    kind: str  # "weights", "tokenizer" or "processor": decides what the check looks for
    config_name: str

    @property
    def name(self) -> str:
        return self.component.value if self.variant is None else f"{self.component.value}:{self.variant.value}"

    @property
    def allow_patterns(self) -> list[str]:
        if self.subfolder:
            return [f"{self.subfolder}/*"]
        return ["config.json", "*.safetensors", "*.safetensors.index.json"]


_SHARED_FILES = MappingProxyType(
    {
        component: ComponentFiles(component, None, repo, subfolder, kind, config_name)
        for component, repo, subfolder, kind, config_name in (
            (Component.TOKENIZER, BASE_REPO, "tokenizer", "tokenizer", "tokenizer_config.json"),
            (Component.TEXT_ENCODER, BASE_REPO, "text_encoder", "weights", "config.json"),
            (Component.TOKENIZER_2, BASE_REPO, "tokenizer_2", "tokenizer", "tokenizer_config.json"),
            (Component.TEXT_ENCODER_2, BASE_REPO, "text_encoder_2", "weights", "config.json"),
            (Component.VAE, BASE_REPO, "vae", "weights", "config.json"),
            (Component.FEATURE_EXTRACTOR, REDUX_REPO, "feature_extractor", "processor", "preprocessor_config.json"),
            (Component.IMAGE_ENCODER, REDUX_REPO, "image_encoder", "weights", "config.json"),
        )
    }
)
_TRANSFORMER_FILES = MappingProxyType(
    {
        variant: ComponentFiles(Component.TRANSFORMER, variant, TRANSFORMER_REPOS[variant.value], None, "weights",
                                "config.json")
        for variant in ModelVariant
    }
)
_FILES_BY_NAME = MappingProxyType(
    {files.name: files for files in (*_SHARED_FILES.values(), *_TRANSFORMER_FILES.values())}
)

# The components every job needs besides its transformer, in the order the engine uses them.
_SHARED_COMPONENTS = (
    Component.TOKENIZER,
    Component.TEXT_ENCODER,
    Component.TOKENIZER_2,
    Component.TEXT_ENCODER_2,
    Component.FEATURE_EXTRACTOR,
    Component.IMAGE_ENCODER,
    Component.VAE,
)


@dataclass(frozen=True)
class ModelSource:
    """Where the weights come from: a local ``org/name`` tree, or the Hugging Face cache (downloading if allowed)."""

    models_dir: Path | None = None
    offline: bool = False
    cache_dir: Path | None = None


@dataclass(frozen=True)
class TextEncoders:
    """LLaMA tokenizer + encoder and CLIP-L tokenizer + encoder, loaded and released together."""

    tokenizer: Any
    text_encoder: Any
    tokenizer_2: Any
    text_encoder_2: Any


@dataclass(frozen=True)
class ImageEncoder:
    """SigLIP image processor and vision encoder."""

    feature_extractor: Any
    image_encoder: Any


# --------------------------------------------------------------------------------------------------------------
# Resolving
# --------------------------------------------------------------------------------------------------------------


def _variant(variant: ModelVariant | str) -> ModelVariant:
    try:
        return ModelVariant(variant)
    except ValueError:
        raise InvalidInputError("model", f"unknown model variant {variant!r}", "use 'original' or 'f1'") from None


def component_files(component: Component, variant: ModelVariant | str | None = None) -> ComponentFiles:
    """The files of ``component``; for the transformer, of the checkpoint ``variant`` ("original" or "f1")."""
    if component == Component.TRANSFORMER:
        if variant is None:
            raise ValueError("the transformer's files depend on the model variant: pass one")
        return _TRANSFORMER_FILES[_variant(variant)]
    return _SHARED_FILES[Component(component)]


def job_files(variant: ModelVariant | str) -> tuple[ComponentFiles, ...]:
    """The files of every component a job with ``variant`` reads, in ``Component`` order."""
    return tuple(component_files(component, variant) for component in Component)


def _files_named(name: Component | str) -> ComponentFiles:
    try:
        return _FILES_BY_NAME[name]
    except KeyError:
        known = ", ".join(_FILES_BY_NAME)
        raise InvalidInputError("component", f"unknown model component {name!r}", f"use one of: {known}") from None


def is_offline(source: ModelSource) -> bool:
    """Whether nothing may be downloaded: the source says so, or the environment does (HF_HUB_OFFLINE)."""
    # Read the environment now: huggingface_hub reads HF_HUB_OFFLINE once, at import.
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return source.offline or constants.is_offline_mode() or env.strip().upper() in {"1", "ON", "YES", "TRUE"}


def cache_repo_dir(source: ModelSource, repo: str) -> Path:
    """The Hugging Face cache's folder for ``repo`` (``models--org--name``), whether or not it exists."""
    from huggingface_hub import constants

    cache = Path(source.cache_dir) if source.cache_dir is not None else Path(constants.HF_HUB_CACHE)
    return cache.expanduser() / ("models--" + repo.replace("/", "--"))


def _download_command(files: ComponentFiles, source: ModelSource, force: bool = False) -> str:
    command = f"hf download {files.repo}"
    if files.subfolder:  # the transformer repos hold just the model (and a README): downloaded whole
        command += f" --include '{files.subfolder}/*'"
    if source.models_dir is not None:
        command += f" --local-dir {Path(source.models_dir).expanduser() / files.repo}"
    elif source.cache_dir is not None:
        command += f" --cache-dir {source.cache_dir}"
    return command + (" --force-download" if force else "")


@dataclass(frozen=True)
class ComponentProblem:
    """A component that is not usable, with everything a ``MissingWeightsError`` needs to say so."""

    files: ComponentFiles
    looked_in: str
    detail: str
    hint: str
    found: bool  # a folder was there (damaged or incomplete), as opposed to nothing at all

    def error(self) -> MissingWeightsError:
        return MissingWeightsError(self.files.name, [self.looked_in], self.detail, self.hint)

    def describe(self) -> str:
        """One line: the component, what is wrong, where it was looked for and how to fix this one alone."""
        return f"{self.files.name}: {self.detail} (looked in {self.looked_in}). {self.hint}"


def _resolve(source: ModelSource, files: ComponentFiles) -> Path | ComponentProblem:
    if source.models_dir is not None:
        folder = Path(source.models_dir).expanduser() / files.repo
        return folder / files.subfolder if files.subfolder else folder

    from huggingface_hub import snapshot_download

    offline = is_offline(source)
    try:
        snapshot = snapshot_download(
            files.repo,
            allow_patterns=files.allow_patterns,
            cache_dir=source.cache_dir,
            local_files_only=offline,
        )
    except Exception as error:  # noqa: BLE001 - any failure here means the component is not available
        logger.debug("snapshot_download(%s) failed", files.repo, exc_info=True)
        if offline:
            detail = f"it is not in the Hugging Face cache and offline mode is on ({type(error).__name__})"
            hint = (
                "Run once without {offline} (and with HF_HUB_OFFLINE unset) so it downloads, or download it with "
                f"`{_download_command(files, source)}`, or use the tiny test set: `{TINY_MODELS_COMMAND} DIR` "
                "and give DIR as {models_dir}"
            )
        else:
            detail = f"downloading {files.repo} failed: {type(error).__name__}: {error}"
            hint = (
                "Check the network connection and retry, or download it yourself with "
                f"`{_download_command(files, source)}`, or give a folder with a local copy as {{models_dir}}"
            )
        return ComponentProblem(files, str(cache_repo_dir(source, files.repo)), detail, hint, found=False)
    folder = Path(snapshot)
    return folder / files.subfolder if files.subfolder else folder


def resolve_component(source: ModelSource, component_name: Component | str,
                      variant: ModelVariant | str | None = None) -> Path:
    """The local folder that holds ``component_name``'s files (downloading them first when allowed).

    ``component_name`` is a ``ComponentFiles.name`` ("vae", "transformer:f1"), or a ``Component`` with the
    transformer's ``variant``.

    With ``models_dir`` the path is returned whether or not it exists; ``component_problem`` says what is wrong.
    Through the hub, a failed download, or a component absent from the cache in offline mode, raises
    ``MissingWeightsError``.
    """
    files = _files_named(component_name) if variant is None else component_files(Component(component_name), variant)
    resolved = _resolve(source, files)
    if isinstance(resolved, ComponentProblem):
        raise resolved.error()
    return resolved


# --------------------------------------------------------------------------------------------------------------
# Checking
# --------------------------------------------------------------------------------------------------------------

_DTYPE_BYTES = MappingProxyType(
    {
        "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1,
        "U16": 2, "I16": 2, "F16": 2, "BF16": 2,
        "U32": 4, "I32": 4, "F32": 4,
        "U64": 8, "I64": 8, "F64": 8, "C64": 8,
    }
)
_MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors library's own limit


def safetensors_problem(path: Path) -> str | None:
    """What is wrong with a safetensors file, judged from its header alone, or None if it looks whole.

    Layout: 8-byte little-endian header length N, N bytes of JSON, then the data; every tensor's
    ``data_offsets`` are relative to the data, and together they must cover it exactly. A download cut short
    leaves the file shorter than the offsets say, which is the commonest corruption; a garbage header is the next.
    """
    if path.is_symlink() and not path.exists():
        return f"{path.name} is a link to a missing file (an interrupted download)"
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                return f"{path.name} is truncated ({size} bytes, too short for a safetensors header)"
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > _MAX_HEADER_BYTES or 8 + header_len > size:
                return f"{path.name} is truncated or corrupt (header length {header_len} with a file of {size} bytes)"
            raw = handle.read(header_len)
    except OSError as error:
        return f"{path.name} cannot be read: {error}"
    try:
        header = json.loads(raw.decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("not a JSON object")
        data_end = 0
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            start, end = (int(v) for v in entry["data_offsets"])
            expected = math.prod(int(d) for d in entry["shape"]) * _DTYPE_BYTES[entry["dtype"]]
            if not 0 <= start <= end or end - start != expected:
                raise ValueError(f"tensor {name!r} has inconsistent offsets")
            data_end = max(data_end, end)
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as error:
        return f"{path.name} has a corrupt header ({error})"
    expected_size = 8 + header_len + data_end
    if size != expected_size:
        state = "truncated" if size < expected_size else "corrupt"
        return f"{path.name} is {state}: {size} bytes where its header describes {expected_size}"
    return None


def _weights_problem(folder: Path) -> str | None:
    indexes = sorted(folder.glob("*.safetensors.index.json"))
    files: set[Path] = set()
    for index in indexes:
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            shards = {folder / name for name in weight_map.values()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            return f"the shard index {index.name} is unreadable ({error})"
        for shard in sorted(shards):
            if not shard.exists():
                return f"shard {shard.name} listed in {index.name} is missing"
        files |= shards
    if not indexes:
        files = set(folder.glob("*.safetensors"))
    if not files:
        return "no .safetensors weights file"
    for path in sorted(files):
        problem = safetensors_problem(path)
        if problem:
            return problem
    return None


def _folder_problem(folder: Path, files: ComponentFiles) -> str | None:
    """What is missing or broken in a component's folder, or None. Reads configs and headers, never weights."""
    if not folder.exists():
        return "the folder does not exist"
    if not folder.is_dir():
        return "the path is not a folder"
    config = folder / files.config_name
    if not config.is_file():
        return f"{files.config_name} is missing"
    try:
        if not isinstance(json.loads(config.read_text(encoding="utf-8")), dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as error:
        return f"{files.config_name} is unreadable ({error})"
    if files.kind == "tokenizer":
        has_fast = (folder / "tokenizer.json").is_file()
        has_bpe_files = (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()
        if not (has_fast or has_bpe_files):
            return "tokenizer.json (or vocab.json with merges.txt) is missing"
    elif files.kind == "weights":
        return _weights_problem(folder)
    return None


def fix_hint(source: ModelSource, files: ComponentFiles, folder: Path, exists: bool) -> str:
    """How to fix a missing (``exists`` False) or damaged component, for the way the source finds files."""
    if source.models_dir is not None:
        models_dir = Path(source.models_dir).expanduser()
        if (models_dir / TINY_MANIFEST_NAME).is_file():
            return (
                f"This is a tiny test set: rebuild it with `{TINY_MODELS_COMMAND} {models_dir}` (a damaged build is "
                f"replaced), or download the real files with `{_download_command(files, source)}`"
            )
        if exists:
            return f"Download it again over the damaged copy: `{_download_command(files, source, force=True)}`"
        return (
            f"Download it with `{_download_command(files, source)}`; to try the app without the real weights, build "
            f"the tiny test set with `{TINY_MODELS_COMMAND} DIR` and give DIR as {{models_dir}}"
        )
    if exists:
        return (
            f"The cached copy in {folder} is incomplete or damaged: delete that folder and re-run without "
            f"{{offline}}, or re-download it with `{_download_command(files, source, force=True)}`"
        )
    return f"Re-run without {{offline}} so it downloads, or download it with `{_download_command(files, source)}`"


def component_problem(source: ModelSource, files: ComponentFiles) -> Path | ComponentProblem:
    """The component's checked folder, or what is wrong with it (resolving through the hub as ``source`` allows)."""
    resolved = _resolve(source, files)
    if isinstance(resolved, ComponentProblem):
        return resolved
    problem = _folder_problem(resolved, files)
    if problem:
        exists = resolved.exists()
        return ComponentProblem(files, str(resolved), problem, fix_hint(source, files, resolved, exists), exists)
    return resolved


def checked_folder(source: ModelSource, files: ComponentFiles) -> Path:
    checked = component_problem(source, files)
    if isinstance(checked, ComponentProblem):
        raise checked.error()
    return checked


def needed_files(variant: ModelVariant | str) -> tuple[ComponentFiles, ...]:
    """The files of every component a job with ``variant`` needs, in the order the engine uses them."""
    return (*(_SHARED_FILES[c] for c in _SHARED_COMPONENTS), component_files(Component.TRANSFORMER, variant))


def component_problems(source: ModelSource, variant: ModelVariant | str) -> tuple[ComponentProblem, ...]:
    """What is wrong with each component a job with ``variant`` ("original" or "f1") needs; empty when all are whole.

    Reads only configs, shard indexes and safetensors headers, so it takes milliseconds even for the real 30 GB
    set. Without ``models_dir`` this resolves through huggingface_hub, so it is also where missing files get
    downloaded (with progress bars) unless offline. ``framepack_core.models.missing_weights.check_weights`` turns
    the problems into one error that tells the user everything to fix.
    """
    checked = (component_problem(source, files) for files in needed_files(variant))
    return tuple(problem for problem in checked if isinstance(problem, ComponentProblem))
