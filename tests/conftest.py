"""Shared fixtures. The tiny model set is built once per test session (about a second after the imports)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root of a tiny random-weight model set (seed 0) in the real repositories' ``org/name`` layout."""
    from framepack_core.models.tiny import build_tiny_models

    return build_tiny_models(tmp_path_factory.mktemp("tiny") / "models", seed=0)


@pytest.fixture(scope="session")
def gradient_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 420x300 RGB gradient PNG: lands in the 48x64 bucket at resolution 64."""
    import numpy as np
    from PIL import Image

    path = tmp_path_factory.mktemp("gradient") / "input.png"
    y, x = np.mgrid[0:300, 0:420]
    Image.fromarray(np.stack([x * 255 // 420, y * 255 // 300, (x + y) % 256], axis=-1).astype(np.uint8)).save(path)
    return path
