"""Shared fixtures. The tiny model set is built once per test session (about a second after the imports)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root of a tiny random-weight model set (seed 0) in the real repositories' ``org/name`` layout."""
    from framepack_core.tiny_models import build_tiny_models

    return build_tiny_models(tmp_path_factory.mktemp("tiny") / "models", seed=0)
