"""``python -m framepack_core plan``: the memory plan for this machine or a simulated one, as text or JSON.

In-process through ``cli.main``. The Hugging Face cache is pointed at an empty folder so that the sizes come from
the built-in real configs whatever this machine has cached.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from framepack_core.cli import main as cli


@pytest.fixture(autouse=True)
def empty_hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from huggingface_hub import constants

    cache = tmp_path / "hf_cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def _cli(capsys: pytest.CaptureFixture, *argv: object) -> tuple[int, str, str]:
    capsys.readouterr()
    code = cli.main(["plan", *(str(a) for a in argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_simulated_8_gb_card_gets_a_plan_that_fits(capsys):
    code, out, err = _cli(capsys, "--vram-gb", 8, "--ram-gb", 32)
    assert code == 0, err
    assert "Simulated GPU (8 GiB) (cuda" in out and "Memory plan for" in out and ": fits" in out
    assert "| transformer | streamed |" in out
    assert out.count("from built-in config") == 5  # which source the sizes came from
    assert "416x960" in out  # resolution 640's largest bucket


def test_json_output_is_the_plan_with_hardware_and_size_sources(capsys):
    code, out, _ = _cli(capsys, "--vram-gb", 6, "--ram-gb", 16, "--json")
    assert code == 0
    data = json.loads(out)
    assert data["fits"] is True
    assert data["peak_vram_gb"] <= data["vram_budget_gb"] and data["peak_ram_gb"] <= data["ram_budget_gb"]
    for key in ("bytes_moved_per_step", "step_time_s", "resident_step_time_s", "components", "stages"):
        assert key in data
    assert data["hardware"]["vram_total_gb"] == 6 and data["hardware"]["ram_available_gb"] == 16
    assert {s["source"] for s in data["sizes"]} == {"config"}
    dit = next(c for c in data["components"] if c["component"] == "transformer")
    assert dit["storage_dtype"] == "float8_e4m3fn"  # 16 GB of RAM cannot hold the bf16 blocks


def test_workload_options_reach_the_plan(capsys):
    code, out, _ = _cli(capsys, "--vram-gb", 12, "--ram-gb", 64, "--model", "f1", "--resolution", 320,
                        "--window", 5, "--cfg", 3, "--preserve-gb", 2, "--no-fp8", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["workload"]["variant"] == "f1" and data["workload"]["latent_window_size"] == 5
    assert data["workload"]["real_cfg"] is True and data["calls_per_step"] == 2
    assert data["workload"]["height"] * data["workload"]["width"] < 640 * 640 / 3
    assert data["preserve_gb"] == 2 and data["vram_budget_gb"] == 10
    assert all(c["storage_dtype"] != "float8_e4m3fn" for c in data["components"])


def test_fp8_can_be_forced(capsys):
    code, out, _ = _cli(capsys, "--vram-gb", 80, "--ram-gb", 64, "--fp8", "--json")
    dit = next(c for c in json.loads(out)["components"] if c["component"] == "transformer")
    assert code == 0 and dit["storage_dtype"] == "float8_e4m3fn" and dit["placement"] == "resident"


def test_cpu_plans_everything_in_ram(capsys):
    code, out, _ = _cli(capsys, "--device", "cpu", "--ram-gb", 128, "--json")
    data = json.loads(out)
    assert code == 0 and data["device_type"] == "cpu" and data["peak_vram_gb"] == 0
    assert {c["placement"] for c in data["components"]} == {"cpu"}


def test_this_machine_is_the_default(capsys):
    code, out, err = _cli(capsys)
    assert code == 0, err
    assert out.startswith("Hardware: ") and "Memory plan for" in out


def test_sizes_come_from_a_models_dir_when_given(capsys, tiny_models_dir):
    code, out, _ = _cli(capsys, "--models-dir", tiny_models_dir, "--vram-gb", 24, "--ram-gb", 32, "--json")
    data = json.loads(out)
    assert code == 0 and {s["source"] for s in data["sizes"]} == {"headers"}
    assert "safetensors headers" in data["sizes_source"]
    assert {c["placement"] for c in data["components"]} == {"resident"}  # a few MB of weights


def test_sizes_come_from_the_hf_cache_when_the_repos_are_there(capsys, tiny_models_dir, empty_hf_cache):
    # The tiny set laid out as the Hugging Face cache does it: models--org--name/snapshots/<rev>/..., refs/main.
    import shutil

    revision = "0" * 40
    for repo in ("hunyuanvideo-community/HunyuanVideo", "lllyasviel/flux_redux_bfl", "lllyasviel/FramePackI2V_HY"):
        folder = empty_hf_cache / ("models--" + repo.replace("/", "--"))
        shutil.copytree(tiny_models_dir / repo, folder / "snapshots" / revision)
        (folder / "refs").mkdir()
        (folder / "refs" / "main").write_text(revision)
    code, out, _ = _cli(capsys, "--vram-gb", 24, "--ram-gb", 32)
    assert code == 0 and out.count("from safetensors headers") == 5 and str(empty_hf_cache) in out


@pytest.mark.parametrize("argv, message", [
    (["--vram-gb", "-1"], "--vram-gb"),
    (["--ram-gb", "0"], "--ram-gb"),
    (["--preserve-gb", "nan"], "--preserve-gb"),
    (["--window", "0"], "--window"),
    (["--resolution", "8"], "--resolution"),
    (["--cfg", "0"], "--cfg"),
    (["--device", "cpu", "--vram-gb", "8"], "--vram-gb"),
    (["--device", "tpu"], "--device"),
    (["--models-dir", "/no/such/folder"], "--models-dir"),
])
def test_bad_input_exits_2_with_a_message_naming_the_option(capsys, argv, message):
    code, out, err = _cli(capsys, *argv)
    assert code == cli.EXIT_BAD_INPUT
    assert err.startswith("error: ") and message in err and out == ""


def test_cuda_asked_for_on_a_machine_without_it_says_how_to_simulate_one(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code, _, err = _cli(capsys, "--device", "cuda")
    assert code == cli.EXIT_BAD_INPUT and "--vram-gb" in err
