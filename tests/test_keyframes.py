"""Section keyframes (original model), checked on the tensors the tiny transformer receives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from framepack_core.cli import main as cli
from framepack_core.errors import InvalidInputError
from framepack_core.media.buckets import resize_and_center_crop
from framepack_core.media.image_input import load_input_image
from framepack_core.models.devices import resolve_device_config
from framepack_core.models.loading import ModelSource
from framepack_core.models.store import ModelStore
from framepack_core.pipeline.engine import FramePackEngine
from framepack_core.pipeline.story_inputs import vae_latent
from framepack_core.request import GenerationRequest, Keyframe
from tests.conditioning_recorder import ONE_STEP, assert_same_calls, run_recorded


@pytest.fixture(scope="module")
def engine(tiny_models_dir: Path) -> FramePackEngine:
    return FramePackEngine(ModelStore(ModelSource(models_dir=tiny_models_dir), resolve_device_config("cpu")))


@pytest.fixture(scope="module")
def pose(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("keyframes") / "pose.png"
    y, x = np.mgrid[0:240, 0:320]
    Image.fromarray(np.stack([(x // 16 + y // 16) % 2 * 255, x % 256, 255 - y], axis=-1).astype(np.uint8)).save(path)
    return path


def test_a_keyframe_changes_only_its_own_sections_context(engine, gradient_image, pose, tmp_path):
    # 1.2 s at window 3 is three sections; in generation order 1 makes 0.8 s to the end, 2 makes 0.4-0.8 s and
    # 3 makes 0-0.4 s, so a keyframe at 0.5 s belongs to section 2.
    plain, _ = run_recorded(engine, tmp_path, "plain", image=gradient_image, seconds=1.2)
    keyed, latents = run_recorded(engine, tmp_path, "keyed", image=gradient_image, seconds=1.2,
                                  keyframes=[Keyframe(0.5, pose)])
    assert len(plain) == len(keyed) == 3
    assert_same_calls(plain[0], keyed[0])
    expected = vae_latent(engine.models, resize_and_center_crop(load_input_image(pose).pixels, 48, 64))
    assert torch.equal(keyed[1]["latents_clean"][:, :, 1:2], expected)
    assert not torch.equal(plain[1]["latents_clean"][:, :, 1:2], expected)
    assert_same_calls(plain[1], keyed[1], skip=("latents_clean",))
    assert torch.equal(keyed[1]["latents_clean"][:, :, :1], plain[1]["latents_clean"][:, :, :1])
    # Section 3 is not pinned: its post slot is its own history (section 2's first latent), not the keyframe.
    history = load_file(str(latents))["history_latents"]  # start, section 3, section 2, section 1
    assert torch.equal(keyed[2]["latents_clean"][:, :, 1:2], history[:, :, 4:5])
    assert not torch.equal(keyed[2]["latents_clean"][:, :, 1:2], expected)
    assert torch.equal(keyed[2]["latents_history_2x"], history[:, :, 5:7])
    assert_same_calls(plain[2], keyed[2], skip=("latents_clean", "latents_history_2x", "latents_history_4x"))


@pytest.mark.parametrize("times, message", [
    ((5.0,), "the keyframe at 5 s is past the end of the video, which is 1.23 s long"),
    ((1.3,), "past the end"),
    ((0.5, 0.7), "the keyframes at 0.5 s and 0.7 s both fall in section 2 (0.40-0.80 s); a section takes one"),
])
def test_a_keyframe_past_the_end_or_two_on_one_section_are_refused_naming_keyframes(engine, gradient_image, pose,
                                                                                   times, message):
    request = GenerationRequest(image=gradient_image, seconds=1.2, keyframes=[Keyframe(t, pose) for t in times],
                                **ONE_STEP)
    with pytest.raises(InvalidInputError) as refused:
        next(iter(engine.generate(request)))
    assert refused.value.field == "keyframes"
    assert message in refused.value.message


def test_a_keyframe_on_the_end_frames_section_is_refused(engine, gradient_image, pose):
    request = GenerationRequest(image=gradient_image, seconds=1.2, loop=True, keyframes=[Keyframe(1.0, pose)],
                                **ONE_STEP)
    with pytest.raises(InvalidInputError, match="which the end frame already anchors") as refused:
        next(iter(engine.generate(request)))
    assert refused.value.field == "keyframes"


def test_f1_refuses_keyframes_naming_the_field(engine, gradient_image, pose):
    request = GenerationRequest(image=gradient_image, model="f1", seconds=1.2, keyframes=[Keyframe(0.5, pose)],
                                **ONE_STEP)
    with pytest.raises(InvalidInputError, match="F1") as refused:
        next(iter(engine.generate(request)))
    assert refused.value.field == "keyframes" and "{model}" in refused.value.hint


def test_a_broken_keyframe_image_is_refused_naming_keyframes(engine, gradient_image, tmp_path):
    missing = tmp_path / "missing.png"
    request = GenerationRequest(image=gradient_image, seconds=1.2, keyframes=[Keyframe(0.5, missing)], **ONE_STEP)
    with pytest.raises(InvalidInputError, match="does not exist") as refused:
        next(iter(engine.generate(request)))
    assert refused.value.field == "keyframes"


def test_the_cli_takes_repeated_keyframes_and_refuses_bad_ones_with_exit_2_and_no_traceback(gradient_image, pose,
                                                                                            tmp_path, capsys):
    from framepack_core.cli.main import build_parser
    from framepack_core.cli.options import request_from_args

    args = build_parser().parse_args(["generate", "--image", "a.png", "--keyframe", f"0.9:{pose}",
                                      "--keyframe", "0.2:C:/x.png"])
    request = request_from_args(args, Path("a.png")).validated()
    assert request.keyframes == (Keyframe(0.2, Path("C:/x.png")), Keyframe(0.9, pose))

    empty = tmp_path / "no_models"
    empty.mkdir()
    common = ["generate", "--image", str(gradient_image), "--models-dir", str(empty), "--window", "3",
              "--seconds", "1.2", "--output", str(tmp_path / "out.mp4")]
    code = cli.main([*common, "--keyframe", f"9:{pose}"])
    err = capsys.readouterr().err
    assert code == cli.EXIT_BAD_INPUT, err
    assert err.startswith("error: --keyframe: the keyframe at 9 s is past the end"), err
    assert "Traceback" not in err and not (tmp_path / "out.mp4").exists()
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*common, "--keyframe", "soon:pose.png"])
    assert exit_info.value.code == cli.EXIT_BAD_INPUT
    assert "is not SECONDS:PATH" in capsys.readouterr().err


def test_a_job_with_an_end_frame_and_a_keyframe_resumes_bit_identical(engine, gradient_image, pose, tmp_path):
    from framepack_core.events import CancelToken, JobCancelled, JobFinished, StepProgress

    def request(name: str) -> GenerationRequest:
        return GenerationRequest(image=gradient_image, seconds=1.2, loop=True, keyframes=[Keyframe(0.5, pose)],
                                 output=tmp_path / f"{name}.mp4", save_latents=tmp_path / f"{name}.safetensors",
                                 **ONE_STEP)

    assert isinstance(list(engine.generate(request("whole")))[-1], JobFinished)
    cancel = CancelToken()
    events = []
    for event in engine.generate(request("resumed"), cancel=cancel, job_dir=tmp_path / "job"):
        events.append(event)
        if isinstance(event, StepProgress) and event.section == 2:  # the keyframe's section is being sampled
            cancel.cancel()
    assert isinstance(events[-1], JobCancelled) and events[-1].sections_done == 1
    assert isinstance(list(engine.generate(request("resumed"), job_dir=tmp_path / "job"))[-1], JobFinished)
    whole, resumed = (load_file(str(tmp_path / f"{n}.safetensors")) for n in ("whole", "resumed"))
    assert torch.equal(whole["history_latents"], resumed["history_latents"])
