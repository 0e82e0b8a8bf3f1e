"""``models status`` and ``models download``, and the one command a job without its weights points at.

No network: the hub is ``tests.fake_hub.FakeHub``, serving the tiny set's files.
"""

from __future__ import annotations

import json
import shutil
from collections import namedtuple
from pathlib import Path

import pytest

from framepack_core.cli.main import main
from framepack_core.errors import MissingWeightsError
from framepack_core.models.hub_files import belongs_to
from framepack_core.models.inventory import files_for
from framepack_core.models.loading import BASE_REPO, TRANSFORMER_REPOS, ModelSource
from framepack_core.models.missing_weights import check_weights
from tests.fake_hub import FakeHub

DiskUsage = namedtuple("DiskUsage", "total used free")

@pytest.fixture
def hub(tiny_models_dir: Path, monkeypatch: pytest.MonkeyPatch) -> FakeHub:
    return FakeHub.installed(tiny_models_dir, monkeypatch)


@pytest.fixture
def models_copy(tiny_models_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_models_dir, tmp_path / "models"))


def _component_bytes(root: Path, *names: str) -> int:
    """The bytes of the hub's files of the components ``names`` (all of the original set's when none)."""
    total = 0
    for files in files_for("original"):
        if names and files.name not in names:
            continue
        repo = root / files.repo
        total += sum(path.stat().st_size for path in repo.rglob("*")
                     if path.is_file() and belongs_to(files, path.relative_to(repo).as_posix()))
    return total


def test_status_of_the_tiny_set_lists_every_component_whole_with_its_folder_and_size(tiny_models_dir, capsys):
    assert main(["models", "status", "--model", "all", "--models-dir", str(tiny_models_dir), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    names = [row["component"] for row in status["components"]]
    assert names == ["tokenizer", "text_encoder", "tokenizer_2", "text_encoder_2", "feature_extractor",
                     "image_encoder", "vae", "transformer:original", "transformer:f1"]
    assert all(row["present"] and row["complete"] and row["problem"] is None for row in status["components"])
    assert all(row["size_bytes"] > 0 for row in status["components"])
    vae = next(row for row in status["components"] if row["component"] == "vae")
    assert vae["looked_in"] == str(tiny_models_dir / BASE_REPO / "vae")
    assert status["complete"] and status["free_bytes"] > 0 and status["target"] == str(tiny_models_dir)


def test_status_tells_a_removed_component_from_a_truncated_one(models_copy, capsys):
    shutil.rmtree(models_copy / BASE_REPO / "vae")
    weights = models_copy / TRANSFORMER_REPOS["original"] / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    assert main(["models", "status", "--models-dir", str(models_copy), "--offline"]) == 1
    out = capsys.readouterr().out
    lines = out.splitlines()
    vae = next(i for i, line in enumerate(lines) if line.startswith("vae "))
    assert "missing" in lines[vae] and str(models_copy / BASE_REPO / "vae") in lines[vae]
    assert "the folder does not exist" in lines[vae + 1]
    transformer = next(i for i, line in enumerate(lines) if line.startswith("transformer:original "))
    assert "damaged" in lines[transformer] and "truncated" in lines[transformer + 1]
    assert next(line for line in lines if line.startswith("text_encoder ")).split()[1] == "ok"
    assert "Free disk space:" in out and "To download: about" in out  # --offline: estimated, the hub not asked


def test_a_missing_component_gives_one_short_paragraph_and_the_command_that_fetches_it(models_copy, hub, capsys):
    shutil.rmtree(models_copy / BASE_REPO / "vae")
    with pytest.raises(MissingWeightsError) as caught:
        check_weights(ModelSource(models_dir=models_copy), "original")
    error = caught.value
    assert error.message == f"The model component vae is missing or incomplete in {models_copy}."
    command = f"python -m framepack_core models download --model original --models-dir {models_copy}"
    vae_bytes = _component_bytes(hub.root, "vae")
    assert f"`{command}`" in error.hint and f"({vae_bytes / 1e6:.1f} MB, as the hub lists it)" in error.hint
    assert error.details.startswith(f"vae: the folder does not exist (looked in {models_copy / BASE_REPO / 'vae'})")

    # The command it names fetches just that component, and the job's check then passes.
    assert main(command.split()[3:]) == 0
    assert hub.fetched and all(name.startswith(f"{BASE_REPO}/vae/") for name in hub.fetched)
    check_weights(ModelSource(models_dir=models_copy), "original")
    assert "All components of 'original' are on disk and whole" in capsys.readouterr().out


def test_download_resumes_after_an_interruption_and_fetches_only_what_was_left(hub, tmp_path, capsys):
    target = tmp_path / "models"
    total = _component_bytes(hub.root)
    hub.interrupt_at = total // 2
    command = ["models", "download", "--models-dir", str(target)]
    assert main(command) == 1
    assert "Run the same command again to resume" in capsys.readouterr().err
    first = list(hub.fetched)
    partial = list(target.rglob("*.incomplete"))
    assert first and len(partial) == 1 and partial[0].stat().st_size > 0  # cut mid-file

    hub.fetched.clear()
    assert main(command) == 0
    assert not set(first) & set(hub.fetched), "whole files are not fetched twice"
    assert hub.served == total - total // 2, "the cut file goes on from where it stopped"
    check_weights(ModelSource(models_dir=target), "original")
    assert not list(target.rglob("*.incomplete"))


def test_download_refuses_when_the_disk_is_too_small_and_says_how_much_is_needed_and_where(hub, tmp_path, capsys,
                                                                                            monkeypatch):
    monkeypatch.setattr("framepack_core.models.inventory.shutil.disk_usage",
                        lambda path: DiskUsage(10**9, 10**9 - 100_000, 100_000))
    target = tmp_path / "models"
    assert main(["models", "download", "--models-dir", str(target)]) == 1
    err = capsys.readouterr().err
    needed = _component_bytes(hub.root) / 1e6
    assert f"need {needed:.1f} MB, but only 0.1 MB is free on the drive of {target}" in err
    assert "as --models-dir" in err and not hub.fetched and not target.exists()
