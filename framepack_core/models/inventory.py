"""What is on disk of the model set: each component, where it was looked for, whether it is whole, its size, and
the free space where downloads go. Reads configs and safetensors headers only (``framepack_core.models.loading``)
and never downloads: the Hugging Face cache is asked with ``local_files_only``.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from framepack_core.models.components import Component, ModelVariant
from framepack_core.models.loading import (
    ComponentFiles,
    ComponentProblem,
    ModelSource,
    component_files,
    component_problem,
    needed_files,
)

# What ``--model`` may ask for: one variant's job set, or both transformers with the shared components.
MODEL_CHOICES = ("original", "f1", "all")


@dataclass(frozen=True)
class ComponentStatus:
    """One component on disk. ``problem`` is None when the component is whole."""

    files: ComponentFiles
    looked_in: Path
    present: bool
    problem: str | None
    size_bytes: int

    @property
    def name(self) -> str:
        return self.files.name

    @property
    def complete(self) -> bool:
        return self.problem is None

    def to_dict(self) -> dict[str, Any]:
        return {"component": self.name, "repo": self.files.repo, "looked_in": str(self.looked_in),
                "present": self.present, "complete": self.complete, "problem": self.problem,
                "size_bytes": self.size_bytes}


@dataclass(frozen=True)
class ModelInventory:
    """Every component asked for, and the drive downloads go to (``target``) with its free space."""

    components: tuple[ComponentStatus, ...]
    target: Path
    free_bytes: int

    @property
    def incomplete(self) -> tuple[ComponentStatus, ...]:
        return tuple(status for status in self.components if not status.complete)

    def to_dict(self) -> dict[str, Any]:
        return {"components": [status.to_dict() for status in self.components], "target": str(self.target),
                "free_bytes": self.free_bytes, "complete": not self.incomplete}


def files_for(model: str) -> tuple[ComponentFiles, ...]:
    """The components ``model`` ("original", "f1" or "all") needs, in the order the engine uses them."""
    if model == "all":
        return (*needed_files(ModelVariant.ORIGINAL), component_files(Component.TRANSFORMER, ModelVariant.F1))
    return needed_files(ModelVariant(model))


def download_target(models_dir: Path | None, cache_dir: Path | None = None) -> Path:
    """The folder downloads go to: ``models_dir``, else the Hugging Face cache."""
    from huggingface_hub import constants

    if models_dir is not None:
        return Path(models_dir).expanduser()
    return Path(cache_dir if cache_dir is not None else constants.HF_HUB_CACHE).expanduser()


def free_bytes(folder: Path) -> int:
    """The free space of the drive that holds (or will hold) ``folder``."""
    existing = Path(folder).expanduser().absolute()
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    return shutil.disk_usage(existing).free


def _size_on_disk(folder: Path, files: ComponentFiles) -> int:
    if not folder.is_dir():
        return 0
    if files.subfolder:
        paths = folder.rglob("*")
    else:  # the transformer's files sit at the repository root, beside whatever else the folder holds
        paths = (path for pattern in files.allow_patterns for path in folder.glob(pattern))
    # stat() follows the cache's snapshot links to their blobs; a link to a missing blob counts nothing.
    return sum(path.stat().st_size for path in paths if path.is_file())


def component_status(source: ModelSource, files: ComponentFiles) -> ComponentStatus:
    """One component's status; ``source`` must be offline, or this may download."""
    checked = component_problem(source, files)
    if isinstance(checked, ComponentProblem):
        looked_in = Path(checked.looked_in)
        # Asked offline on purpose: "offline mode is on" would only confuse here.
        problem = checked.detail if checked.found or source.models_dir is not None else "not in the Hugging Face cache"
        return ComponentStatus(files, looked_in, checked.found, problem, _size_on_disk(looked_in, files))
    return ComponentStatus(files, checked, True, None, _size_on_disk(checked, files))


def inspect_models(model: str = "original", models_dir: Path | None = None,
                   cache_dir: Path | None = None) -> ModelInventory:
    """The status of every component ``model`` ("original", "f1" or "all") needs, downloading nothing."""
    source = ModelSource(models_dir=models_dir, offline=True, cache_dir=cache_dir)
    statuses = tuple(component_status(source, files) for files in files_for(model))
    target = download_target(models_dir, cache_dir)
    return ModelInventory(statuses, target, free_bytes(target))
