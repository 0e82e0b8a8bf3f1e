"""What the command line and launch.py tell a new user: every option's help and default, the notes a valid
request earns before it runs (the true video length, an empty prompt), what launch.py says about the real models on a
CPU, and its start-up lines. The end-to-end runs that print these are in tests/test_cli.py."""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import launch
from framepack_core.cli import main as cli
from framepack_core.cli.options import request_notes
from framepack_core.durations import duration_text
from framepack_core.memory.hardware import fake_hardware
from framepack_core.memory.plan import GIB, Workload
from framepack_core.memory.planner import plan_memory
from framepack_core.models.sizes import find_sizes
from framepack_core.request import GenerationRequest


def _options(parser: argparse.ArgumentParser, command: str) -> Iterator[tuple[str, argparse.Action]]:
    """Every option and positional argument of ``parser`` and of its subcommands, with the command it belongs to."""
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        if isinstance(action, argparse._SubParsersAction):
            for name, subparser in action.choices.items():
                yield from _options(subparser, f"{command} {name}")
            continue
        yield command, action


@pytest.mark.parametrize("parser, command", [(cli.build_parser(), "python -m framepack_core"),
                                             (launch.build_parser(), "launch.py")], ids=["cli", "launch"])
def test_every_option_of_every_command_has_help_and_says_its_default(parser, command):
    missing_help, missing_default = [], []
    for where, action in _options(parser, command):
        name = action.option_strings[0] if action.option_strings else action.dest
        if not action.help or action.help == argparse.SUPPRESS:
            missing_help.append(f"{where} {name}")
        # An option that takes a value and may be left out must say what happens then; a switch's help says what
        # it turns on, and a positional argument has no default.
        elif action.option_strings and action.nargs != 0 and not action.required \
                and "default" not in action.help.lower():
            missing_default.append(f"{where} {name}")
    assert not missing_help, f"options without help: {missing_help}"
    assert not missing_default, f"options whose help gives no default: {missing_default}"


def test_launch_help_says_each_default_once():
    helps = {action.option_strings[0]: action.help for _, action in _options(launch.build_parser(), "launch.py")
             if action.option_strings}
    assert not [name for name, text in helps.items() if "None:" in text or text.count("Default") > 1]
    assert helps["--ray"].endswith("ray.txt. Default: no Ray. See docs/scaling.md.")
    assert helps["--models-dir"] == ("Folder with the models in org/name/subfolder layout. "
                                     "Default: the Hugging Face cache.")


def test_generate_help_names_the_defaults_of_seed_steps_and_teacache_threshold_and_sampler_variant(capsys):
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["generate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for default in ("(default 31337)", "(default 25)", "(default 0.15)", "default bh1."):
        assert default in text, text


@pytest.mark.parametrize("seconds, window, note", [
    (3, 9, ("--seconds 3 gives a 2.43 s video: 73 frames at 30 fps (the start frame and 2 blocks of 36, as "
           "--window 9 sets)")),
    (5, 9, "--seconds 5 gives a 4.83 s video: 145 frames at 30 fps"),
    (0.8, 3, "--seconds 0.8 gives a 0.83 s video: 25 frames at 30 fps"),
])
def test_a_length_that_sections_round_gets_a_note_with_the_true_length(seconds, window, note):
    request = GenerationRequest(image=Path("x.png"), prompt="a cat", seconds=seconds,
                                latent_window_size=window).validated()
    notes = request_notes(request)
    assert len(notes) == 1 and notes[0].startswith(note), notes


def test_a_length_that_is_already_whole_sections_and_a_prompt_get_no_note():
    request = GenerationRequest(image=Path("x.png"), prompt="a cat", seconds=2.43).validated()
    assert request_notes(request) == []


@pytest.mark.parametrize("prompt", ["", "   \n"])
def test_an_empty_prompt_gets_a_note_that_the_video_follows_only_the_image(prompt):
    request = GenerationRequest(image=Path("x.png"), prompt=prompt, seconds=2.43).validated()
    assert request.notes() == (("The prompt is empty: the video will follow only the image, with no motion "
                               "described."),)
    assert request_notes(request) == list(request.notes())


@pytest.mark.parametrize("seconds, text", [(8.24, "8.2 s"), (192.4, "3 min 12 s"), (3900, "1 h 05 min")])
def test_the_time_a_job_took_is_worded_in_the_largest_sensible_unit(seconds, text):
    assert duration_text(seconds) == text


def test_launch_on_a_cpu_says_the_real_models_do_not_fit_with_the_planners_figures():
    hardware = fake_hardware(0, 21.7, device_type="cpu")
    plan = plan_memory(find_sizes()[0], hardware, Workload.from_resolution())
    assert not plan.fits
    text = launch.real_models_on_cpu(None, hardware)
    assert text.startswith(f"the real models do not fit here: they need {plan.peak_ram_gb:.1f} GiB of RAM, "
                           f"{plan.ram_budget_bytes / GIB:.1f} GiB available"), text
    assert "python -m framepack_core plan --device cpu" in text and "hours" not in text


def test_launch_on_a_cpu_with_room_for_the_real_models_says_they_would_be_slow():
    text = launch.real_models_on_cpu(None, fake_hardware(0, 512, device_type="cpu"))
    assert text == "the real models fit in RAM here, but would take hours per video"


def test_launch_points_at_the_share_flag_not_at_gradios_code():
    lines = launch.startup_lines("http://127.0.0.1:7860/", "http://127.0.0.1:7860/api/v1/docs", share=False)
    assert lines.splitlines() == [
        "* Running on local URL:  http://127.0.0.1:7860",
        "* Job API: http://127.0.0.1:7860/api/v1/docs",
        "* To create a public link, restart with --share (add --auth USER:PASS so that it asks for a login).",
    ]
    shared = launch.startup_lines("http://127.0.0.1:7860/", "http://127.0.0.1:7860/api/v1/docs", share=True)
    assert "--share" not in shared and "share=True" not in shared


def test_loading_the_image_encoder_prints_no_torchvision_fallback_warning(tiny_models_dir):
    # A fresh process: transformers warns once per process, and building the tiny set here may have warned already.
    script = ("import torch; from framepack_core.models.loaders import load_image_encoder; "
              "from framepack_core.models.loading import ModelSource; "
              f"encoder = load_image_encoder(ModelSource(models_dir={str(tiny_models_dir)!r}, offline=True), 'cpu', "
              "torch.float32); print(type(encoder.feature_extractor).__name__)")
    result = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).resolve().parents[1],
                            capture_output=True, text=True, timeout=180, check=False)
    assert result.returncode == 0, result.stderr
    assert "falling back" not in result.stderr and "torchvision" not in result.stderr, result.stderr
    # The official app's PIL processor: SiglipImageProcessorPil in transformers 5, the old name in 4.
    assert result.stdout.strip() in ("SiglipImageProcessorPil", "SiglipImageProcessor"), result.stdout


def test_jobs_submit_notes_the_true_length_and_an_empty_prompt(gradient_image, tmp_path, capsys):
    code = cli.main(["jobs", "--output-dir", str(tmp_path), "submit", "--image", str(gradient_image),
                     "--seconds", "3"])
    out, err = capsys.readouterr()
    assert code == cli.EXIT_OK, err
    assert " queued (number 1)" in out
    assert err.splitlines() == [
        ("note: --seconds 3 gives a 2.43 s video: 73 frames at 30 fps (the start frame and 2 blocks of 36, as "
         "--window 9 sets)"),
        "note: The prompt is empty: the video will follow only the image, with no motion described.",
    ]


def test_the_engine_says_an_empty_prompt_leaves_the_video_to_the_image_so_every_edge_shows_it(tiny_models_dir,
                                                                                                gradient_image):
    from framepack_core.events import Notice, StageChanged
    from framepack_core.models.devices import resolve_device_config
    from framepack_core.models.loading import ModelSource
    from framepack_core.models.store import ModelStore
    from framepack_core.pipeline.engine import FramePackEngine

    engine = FramePackEngine(ModelStore(ModelSource(models_dir=tiny_models_dir, offline=True),
                                        resolve_device_config("cpu")))
    events = engine.generate(GenerationRequest(image=gradient_image, prompt="  "))
    notices = []
    for event in events:  # the notes come before the job's first stage; nothing runs after that
        if isinstance(event, StageChanged):
            break
        if isinstance(event, Notice):
            notices.append(event.message)
    events.close()
    empty_prompt_note = GenerationRequest(image=gradient_image, prompt="").notes()[0]
    assert empty_prompt_note in notices
    cli_notes = request_notes(GenerationRequest(image=gradient_image, prompt="").validated(), with_request_notes=False)
    assert not any("prompt is empty" in note for note in cli_notes)  # generate leaves it to the engine: said once
