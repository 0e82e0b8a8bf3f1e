"""Runtime options: the attention backend (auto's choice, refusals with the install command, the fingerprint) and
regional compilation (equal latents within fp32 tolerance, compiled once per process, with TeaCache, skipped
with a notice where torch.compile cannot run)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from framepack_core.cli import main as cli
from framepack_core.errors import InvalidInputError
from framepack_core.events import JobFinished, Notice
from framepack_core.jobs.fingerprint import environment_fingerprint
from framepack_core.jobs.output_description import read_output_description
from framepack_core.models.acceleration import apply_runtime_options
from framepack_core.models.attention_backends import AttentionEnvironment, auto_attention_backend, resolve_attention
from framepack_core.models.compilation import CompileEnvironment, compile_skip_reason, is_compiled, repeated_blocks
from framepack_core.models.components import ModelVariant
from framepack_core.models.devices import resolve_device_config
from framepack_core.models.loaders import load_transformer
from framepack_core.models.loading import ModelSource
from framepack_core.models.runtime import RuntimeOptions
from framepack_core.models.store import ModelStore
from framepack_core.pipeline.engine import FramePackEngine
from framepack_core.request import GenerationRequest

CPU = torch.device("cpu")
FAST = {"latent_window_size": 3, "steps": 1, "resolution": 64, "seconds": 0.8, "cache": "none"}
# What torch.compile may change: the order of float operations in the fused kernels.
FP32_TOLERANCE = 1e-4
COMPILER_FOUND = CompileEnvironment(dynamo_problem=None, cxx_compiler="/usr/bin/g++", has_triton=True, system="Linux")


@pytest.fixture(scope="module")
def transformer(tiny_models_dir):
    return load_transformer(ModelSource(models_dir=tiny_models_dir), "original", CPU, torch.float32)


# Attention -------------------------------------------------------------------------------------------------------

def test_auto_on_the_cpu_is_native_and_leaves_the_processors_as_they_were(transformer):
    assert auto_attention_backend(AttentionEnvironment.detect(CPU, torch.float32)) == "native"
    applied = apply_runtime_options(transformer, RuntimeOptions(), CPU)
    assert applied.attention_backend == "native" and applied.compiled_blocks == 0
    assert applied.notes == ("Attention: native (auto)",)
    # Today's path untouched: no processor got a backend of its own (the default run stays bit-identical).
    assert all(getattr(m.processor, "_attention_backend", None) is None for m in transformer.modules()
               if getattr(m, "processor", None) is not None)


@pytest.mark.parametrize(("capability", "dtype", "usable", "expected"), [
    ((9, 0), "bfloat16", {"sage", "_flash_3", "flash", "xformers"}, "sage"),  # the official app's first choice
    ((9, 0), "bfloat16", {"_flash_3", "flash", "xformers"}, "_flash_3"),  # Hopper: FlashAttention 3
    ((8, 9), "bfloat16", {"_flash_3", "flash", "xformers"}, "flash"),  # FA3 needs Hopper
    ((8, 6), "float16", {"flash", "xformers"}, "flash"),
    ((7, 5), "float16", {"sage", "flash", "xformers"}, "xformers"),  # Turing: neither sage 2 nor FA2
    ((7, 5), "float16", {"sage", "flash"}, "native"),
    ((8, 9), "float32", {"sage", "flash", "xformers"}, "xformers"),  # sage and flash take half precision only
    ((8, 0), "bfloat16", set(), "native"),
])
def test_auto_picks_the_fastest_backend_that_runs_on_the_gpu(capability, dtype, usable, expected):
    environment = AttentionEnvironment("cuda", capability, dtype, frozenset(usable))
    assert auto_attention_backend(environment) == expected


def test_auto_is_native_on_apple_gpus_whatever_is_installed():
    environment = AttentionEnvironment("mps", None, "float16", frozenset({"sage", "flash", "xformers"}))
    assert auto_attention_backend(environment) == "native"


def test_explicit_flash_is_flash_attention_3_on_hopper_when_installed():
    hopper = AttentionEnvironment("cuda", (9, 0), "bfloat16", frozenset({"_flash_3", "flash"}))
    assert resolve_attention("flash", hopper) == "_flash_3"
    ada = AttentionEnvironment("cuda", (8, 9), "bfloat16", frozenset({"_flash_3", "flash"}))
    assert resolve_attention("flash", ada) == "flash"


@pytest.mark.parametrize(("choice", "command"), [
    ("flash", "pip install flash-attn --no-build-isolation"),
    ("sage", "pip install git+https://github.com/thu-ml/SageAttention.git --no-build-isolation"),
    ("xformers", "pip install xformers"),
])
def test_an_explicit_backend_missing_here_is_refused_with_its_install_command(choice, command):
    with pytest.raises(InvalidInputError) as refused:
        resolve_attention(choice, AttentionEnvironment.detect(CPU, torch.float32))
    assert refused.value.field == "attention"
    assert command in refused.value.hint
    assert "runs only on an NVIDIA GPU (CUDA), this process runs on the cpu" in refused.value.message


def test_an_installed_backend_on_a_gpu_too_old_says_which_it_needs():
    turing = AttentionEnvironment("cuda", (7, 5), "float16", frozenset({"sage"}), {"sage": "2.2.0"})
    with pytest.raises(InvalidInputError) as refused:
        resolve_attention("sage", turing)
    assert "compute capability 8.0 (Ampere) or newer, this one is 7.5" in refused.value.message
    assert "pip install" not in refused.value.hint  # it is installed: no install command


def test_sage_attention_1_is_named_as_too_old():
    old = AttentionEnvironment("cuda", (8, 9), "bfloat16", frozenset(), {"sage": "1.0.6"})
    with pytest.raises(InvalidInputError, match="sageattention 1.0.6 is installed, diffusers needs 2.1.1"):
        resolve_attention("sage", old)


@pytest.mark.parametrize("command", ["generate", "jobs run"])
def test_the_cli_refuses_a_missing_backend_with_exit_2_naming_the_flag(command, tiny_models_dir, gradient_image,
                                                                      tmp_path, capsys):
    argv = ["generate", "--image", str(gradient_image), "--output", str(tmp_path / "out.mp4")] \
        if command == "generate" else ["jobs", "--output-dir", str(tmp_path / "out"), "run"]
    code = cli.main([*argv, "--models-dir", str(tiny_models_dir), "--device", "cpu", "--attention", "sage"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "error: --attention: sage attention cannot run here" in err
    assert "pip install git+https://github.com/thu-ml/SageAttention.git --no-build-isolation" in err
    assert "Or use --attention auto" in err and "Traceback" not in err


def test_the_fingerprint_records_the_backend_the_processors_were_given(tiny_models_dir, gradient_image,
                                                                        monkeypatch):
    """On this CPU-only machine no kernel package imports, so diffusers' requirement check is faked; the model is
    never run with it. The process-wide active backend is put back by monkeypatch."""
    from diffusers.models import attention_dispatch

    monkeypatch.setattr(attention_dispatch._AttentionBackendRegistry, "_active_backend",
                        attention_dispatch._AttentionBackendRegistry._active_backend)
    monkeypatch.setattr(attention_dispatch, "_check_attention_backend_requirements", lambda backend: None)
    fresh = load_transformer(ModelSource(models_dir=tiny_models_dir), "original", CPU, torch.float32)
    ampere = AttentionEnvironment("cuda", (8, 6), "float32", frozenset({"xformers"}))
    applied = apply_runtime_options(fresh, RuntimeOptions(attention="auto"), CPU, attention_environment=ampere)
    assert applied.notes[0] == "Attention: xformers (auto)"
    store = ModelStore(ModelSource(models_dir=tiny_models_dir), resolve_device_config("cpu"),
                       runtime=RuntimeOptions(attention="auto"))
    fingerprint = environment_fingerprint(store, None, GenerationRequest(image=gradient_image), transformer=fresh)
    assert fingerprint["attention"]["backend"] == "xformers"
    assert fingerprint["attention"]["processors"] == {"AttnProcessor2_0": "torch sdpa (direct)",
                                                      "HunyuanVideoAttnProcessor2_0": "xformers"}
    assert fingerprint["runtime"] == {"attention": "auto", "compile": False, "compiled_blocks": 0}


# Compilation -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("device", "environment", "reason"), [
    ("cpu", CompileEnvironment(None, None, False, "Linux"), ("needs a C++ compiler on the CPU and none was found; "
                                                            "install g++ or clang++")),
    ("cpu", CompileEnvironment(None, None, False, "Windows"), "Visual Studio's C++ build tools (cl.exe)"),
    ("cuda", CompileEnvironment(None, "g++", False, "Windows"), ("needs Triton for CUDA and it is not installed "
                                                                "(pip install triton-windows)")),
    ("cuda", CompileEnvironment(None, "g++", False, "Linux"), "(pip install triton)"),
    ("mps", COMPILER_FOUND, "Apple GPU (MPS) support is a prototype"),
    ("cuda", CompileEnvironment("Python 3.15+ not yet supported for torch.compile", "g++", True, "Linux"),
     "does not run here: Python 3.15+ not yet supported"),
])
def test_where_torch_compile_cannot_run_the_reason_says_what_to_install(device, environment, reason):
    assert reason in compile_skip_reason(device, environment)


def test_compile_where_unsupported_is_a_no_op_with_a_notice(tiny_models_dir):
    fresh = load_transformer(ModelSource(models_dir=tiny_models_dir), "original", CPU, torch.float32)
    no_compiler = CompileEnvironment(dynamo_problem=None, cxx_compiler=None, has_triton=False, system="Linux")
    applied = apply_runtime_options(fresh, RuntimeOptions(compile=True), CPU, compile_environment=no_compiler)
    assert applied.compiled_blocks == 0 and not any(is_compiled(b) for b in repeated_blocks(fresh))
    assert applied.notes[-1].startswith("Compile skipped: torch.compile needs a C++ compiler on the CPU")
    assert compile_skip_reason("cpu", CompileEnvironment.detect()) is None  # this machine has g++


@pytest.fixture(scope="module")
def engines(tiny_models_dir):
    source = ModelSource(models_dir=tiny_models_dir)
    eager = FramePackEngine(ModelStore(source, resolve_device_config("cpu")))
    compiled = FramePackEngine(ModelStore(source, resolve_device_config("cpu"), runtime=RuntimeOptions(compile=True)))
    return eager, compiled


def _latents(engine, image, folder: Path, name: str, **settings):
    request = GenerationRequest(image=image, prompt="waves", seed=5, output=folder / f"{name}.mp4",
                                save_latents=folder / f"{name}.safetensors", **{**FAST, **settings})
    events = list(engine.generate(request))
    assert isinstance(events[-1], JobFinished), events[-1]
    notices = [e.message for e in events if isinstance(e, Notice)]
    fingerprint = read_output_description(folder / f"{name}.mp4").fingerprint
    return load_file(str(folder / f"{name}.safetensors"))["history_latents"], notices, fingerprint


def test_compiled_blocks_match_eager_within_fp32_tolerance_and_compile_once_per_process(engines, gradient_image,
                                                                                         tmp_path):
    from torch._dynamo.utils import counters

    eager, compiled = engines
    reference, notices, _ = _latents(eager, gradient_image, tmp_path, "eager")
    assert "Attention: native (auto)" in notices
    graphs_before = counters["stats"]["unique_graphs"]
    latents, notices, fingerprint = _latents(compiled, gradient_image, tmp_path, "compiled")
    assert any(n.startswith("Compiled 4 transformer blocks with torch.compile") for n in notices), notices
    assert counters["stats"]["unique_graphs"] > graphs_before  # the blocks really ran through dynamo and inductor
    assert fingerprint["runtime"] == {"attention": "auto", "compile": True, "compiled_blocks": 4}
    difference = (latents - reference).abs().max().item()
    assert difference <= FP32_TOLERANCE, difference  # measured 0 to ~1e-6 on this CPU
    # A second job in the same process: the store keeps the compiled transformer and nothing is compiled again.
    transformer = compiled.models.transformer(ModelVariant.ORIGINAL)
    wrappers = [block._compiled_call_impl for block in repeated_blocks(transformer)]
    graphs_after_first_job = counters["stats"]["unique_graphs"]
    again, _, _ = _latents(compiled, gradient_image, tmp_path, "again")
    assert counters["stats"]["unique_graphs"] == graphs_after_first_job
    assert [block._compiled_call_impl for block in repeated_blocks(transformer)] == wrappers
    assert torch.equal(again, latents)


def test_compile_with_teacache_matches_eager_teacache(engines, gradient_image, tmp_path):
    """TeaCache's hooks sit on the compiled blocks and are traced with them; a threshold this high skips the
    middle step, so both the computed and the reused-residual paths run compiled."""
    eager, compiled = engines
    settings = {"steps": 3, "cache": "teacache", "cache_threshold": 10.0}
    reference, _, _ = _latents(eager, gradient_image, tmp_path, "eager_teacache", **settings)
    latents, _, _ = _latents(compiled, gradient_image, tmp_path, "compiled_teacache", **settings)
    no_cache, _, _ = _latents(eager, gradient_image, tmp_path, "eager_none", steps=3)
    assert not torch.allclose(reference, no_cache)  # the cache did skip work
    difference = (latents - reference).abs().max().item()
    assert difference <= FP32_TOLERANCE, difference


def test_the_app_takes_both_from_flags_or_the_environment_and_refuses_a_missing_backend_at_start(tmp_path):
    import launch
    from app.settings import Settings

    from_env = Settings.from_env({"FRAMEPACK_ATTENTION": "sage", "FRAMEPACK_COMPILE": "1"})
    assert (from_env.attention, from_env.compile) == ("sage", True)
    with pytest.raises(InvalidInputError, match="sage attention cannot run here"):
        launch.check_attention(from_env, resolve_device_config("cpu"))
    args = launch.build_parser().parse_args(["--attention", "native", "--compile", "--output-dir", str(tmp_path)])
    settings = launch.settings_from_args(args)
    engine = launch.engine_factory(settings)()
    assert engine.models.runtime == RuntimeOptions(attention="native", compile=True)
