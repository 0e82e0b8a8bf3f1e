"""Host RAM while loading: at most 1.2x a component's size, and CPU weights that are views of the mapped files.

The RSS checks run ``bench/load_rss.py``'s own children (a fresh process per load under ``/usr/bin/time -v``) on
random components of ~150 MB built into ``tmp_path``: big enough that the loader's fixed overhead (~10 MB of
Python objects) stays well inside the 20 % margin, small enough to take ~20 s in all.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from bench import load_rss
from framepack_core.models.loaders import (
    lean_from_pretrained,
    load_image_encoder,
    load_text_encoders,
    load_transformer,
    load_vae,
)
from framepack_core.models.loading import ModelSource

SIZE_GB = 0.15

needs_gnu_time = pytest.mark.skipif(not os.access(load_rss.TIME, os.X_OK), reason=f"{load_rss.TIME} is missing")


@pytest.fixture(scope="module")
def baseline_bytes(tmp_path_factory: pytest.TempPathFactory) -> int:
    """Peak RSS of a child that does every import and loads nothing (the same for both kinds)."""
    built = load_rss.Built("llama", tmp_path_factory.mktemp("empty"), Path("unused"), 1, 0, {})
    return load_rss.measure("baseline", built).peak_bytes


def _assert_lean(kind: str, root: Path, baseline: int) -> None:
    built = load_rss.build(kind, SIZE_GB, root)
    assert 0.1e9 < built.size_bytes < 0.2e9 and built.shards >= 2
    row = load_rss.Row(load_rss.measure("ours", built), baseline, built.size_bytes)
    assert row.run.loaded_bytes == built.size_bytes  # every weight was read, in the storage dtype
    assert row.ratio <= load_rss.LIMIT, f"{kind}: peak - baseline = {row.load_bytes / 1e6:.0f} MB for a " \
        f"{built.size_bytes / 1e6:.0f} MB component ({row.ratio:.2f}x)"


@needs_gnu_time
def test_loading_the_diffusers_transformer_takes_at_most_1_2x_its_size_in_ram(tmp_path: Path, baseline_bytes: int):
    _assert_lean("transformer", tmp_path, baseline_bytes)


@needs_gnu_time
def test_loading_a_transformers_llama_takes_at_most_1_2x_its_size_in_ram(tmp_path: Path, baseline_bytes: int):
    _assert_lean("llama", tmp_path, baseline_bytes)


def _file_mappings() -> list[tuple[int, int]]:
    """Address ranges of this process's mappings of safetensors files, from /proc/self/maps."""
    ranges = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5].endswith(".safetensors"):
            start, end = (int(x, 16) for x in fields[0].split("-"))
            ranges.append((start, end))
    return ranges


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux /proc")
def test_cpu_weights_in_the_file_dtype_are_views_of_the_mapped_safetensors(tiny_models_dir: Path) -> None:
    # No second copy: every parameter of every component points into a mapping of its safetensors file.
    source = ModelSource(models_dir=tiny_models_dir)  # the tiny set is stored in float32
    text = load_text_encoders(source, "cpu", torch.float32)
    models = {
        "text_encoder": text.text_encoder,
        "text_encoder_2": text.text_encoder_2,
        "image_encoder": load_image_encoder(source, "cpu", torch.float32).image_encoder,
        "vae": load_vae(source, "cpu", torch.float32),
        "transformer": load_transformer(source, "original", "cpu", torch.float32),
    }
    mapped = _file_mappings()
    for name, model in models.items():
        copied = [
            key for key, param in model.named_parameters()
            if not any(start <= param.data_ptr() < end for start, end in mapped)
        ]
        assert copied == [], f"{name}: parameters copied out of the file: {copied[:5]}"


class _RecordingModel:
    """Stands in for a library class: ``from_pretrained`` returns the options it is given."""

    @classmethod
    def from_pretrained(cls, folder: Path, **options) -> dict:
        return options


class _FakeDiffusersModel(_RecordingModel):
    pass


_FakeDiffusersModel.__module__ = "diffusers.models.fake"


def test_weights_for_a_gpu_are_loaded_straight_onto_it() -> None:
    options = lean_from_pretrained(_RecordingModel, Path("x"), dtype=torch.bfloat16, device="cuda:1")
    assert options["device_map"] == {"": torch.device("cuda:1")}
    assert options["dtype"] == torch.bfloat16 and options["local_files_only"] is True
    assert "low_cpu_mem_usage" not in options  # transformers 5 ignores it: it always loads this way


def test_diffusers_models_load_with_low_cpu_mem_usage_and_cpu_loads_have_no_device_map() -> None:
    options = lean_from_pretrained(_FakeDiffusersModel, Path("x"), dtype=torch.float16, device=torch.device("cpu"))
    assert options["low_cpu_mem_usage"] is True
    assert "device_map" not in options
