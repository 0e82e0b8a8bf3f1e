"""The command line, end to end with the tiny models: success, refusals before any model loads, missing weights,
prompts, odd image files, and Ctrl-C.

Most runs call ``cli.main`` in-process (a subprocess costs seconds of imports on a small machine); two real
subprocesses stay: one successful run and one cancelled with SIGINT.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from framepack_core.cli import main as cli
from framepack_core.media.video_io import probe_video

REPO_ROOT = Path(__file__).resolve().parents[1]
# Window 3 and base resolution 64 keep runs short: 0.8 s gives 2 sections and 25 frames; a 300x420 (h x w)
# image lands in the 48x64 bucket.
FAST = ["--window", "3", "--steps", "2", "--resolution", "64", "--seconds", "0.8"]
EXPECTED_FRAMES, EXPECTED_WIDTH, EXPECTED_HEIGHT = 25, 64, 48


def _gradient(height: int = 300, width: int = 420) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 255 // width, y * 255 // height, (x + y) % 256], axis=-1).astype(np.uint8)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Start images: a plain RGB PNG, odd-but-valid files, and broken ones."""
    folder = tmp_path_factory.mktemp("images")
    rgb = _gradient()
    paths = {name: folder / name for name in (
        "rgb.png", "rgba.png", "gray.png", "gray16.png", "palette.png", "cmyk.jpg", "exif_rotated.jpg",
        "text.png", "truncated.png", "small.png", "a_folder")}
    Image.fromarray(rgb).save(paths["rgb.png"])
    alpha = np.tile(np.linspace(0, 255, 420).astype(np.uint8), (300, 1))[:, :, None]
    Image.fromarray(np.concatenate([rgb, alpha], axis=2), "RGBA").save(paths["rgba.png"])
    Image.fromarray(rgb).convert("L").save(paths["gray.png"])
    sixteen = Image.fromarray(rgb[:, :, 0].astype(np.uint16) * 257)
    assert sixteen.mode.startswith("I;16")
    sixteen.save(paths["gray16.png"])
    Image.fromarray(rgb).convert("P").save(paths["palette.png"])
    Image.fromarray(rgb).convert("CMYK").save(paths["cmyk.jpg"])
    # Stored on its side (300 wide, 420 high) with EXIF orientation 6 ("rotate 90 degrees clockwise to view"):
    # upright it is 420x300 again, so the video is landscape only if the orientation was applied.
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(rgb).transpose(Image.Transpose.ROTATE_90).save(paths["exif_rotated.jpg"], exif=exif)
    paths["text.png"].write_text("this is not a picture\n")
    paths["truncated.png"].write_bytes(paths["rgb.png"].read_bytes()[:300])
    Image.fromarray(_gradient(80, 50)).save(paths["small.png"])
    paths["a_folder"].mkdir()
    return paths


@pytest.fixture
def empty_models_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "no_models"
    folder.mkdir()
    return folder


def _cli(capsys: pytest.CaptureFixture, *argv: object) -> tuple[int, str, str]:
    """Run the CLI in this process; returns (exit code, stdout, stderr)."""
    capsys.readouterr()
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _assert_video(path: Path, frames: int = EXPECTED_FRAMES) -> None:
    info = probe_video(path)
    assert (info.frame_count, info.width, info.height) == (frames, EXPECTED_WIDTH, EXPECTED_HEIGHT)


def _leftovers(folder: Path) -> list[str]:
    """Videos, latents and hidden working folders in ``folder`` (a refused or failed job must leave none)."""
    return sorted(p.name for p in folder.iterdir() if p.suffix in (".mp4", ".safetensors") or p.name.startswith("."))


def _subprocess_env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}


# --- success -------------------------------------------------------------------------------------------------


def test_generate_in_a_subprocess_writes_the_video_and_latents_and_shows_progress(tiny_models_dir, images,
                                                                                   tmp_path):
    output, latents = tmp_path / "out.mp4", tmp_path / "latents.safetensors"
    result = subprocess.run(
        [sys.executable, "-m", "framepack_core", "generate", "--image", str(images["rgb.png"]), "--prompt",
         "a cat walks", "--model", "original", "--models-dir", str(tiny_models_dir), *FAST, "--output",
         str(output), "--save-latents", str(latents)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=180, env=_subprocess_env(), check=False)
    assert result.returncode == 0, result.stderr
    # The video's length and the time the job took, apart, so the one is not read as the other.
    assert re.search(f"^Wrote {re.escape(str(output))}: 0.83 s video, {EXPECTED_FRAMES} frames at 30 fps, "
                     f"{EXPECTED_WIDTH}x{EXPECTED_HEIGHT}; took [0-9.]+ s$", result.stdout, re.MULTILINE), result.stdout
    assert f"Wrote {latents}" in result.stdout
    _assert_video(output)
    assert latents.is_file() and latents.stat().st_size > 0
    # Progress (stages, the bar, per-section lines) goes to stderr; stdout carries only the results.
    assert "Text encoding ..." in result.stderr
    assert "note: Memory plan on " in result.stderr and "everything on the CPU" in result.stderr
    assert "note: --seconds 0.8 gives a 0.83 s video: 25 frames at 30 fps" in result.stderr
    assert "4/4" in result.stderr and "step" in result.stderr
    assert "section 1/2 done: 9 frames" in result.stderr and "section 2/2 done: 25 frames" in result.stderr
    assert result.stdout.splitlines() == [line for line in result.stdout.splitlines() if line.startswith("Wrote ")]
    assert _leftovers(tmp_path) == ["latents.safetensors", "out.mp4"]


def test_generate_f1_in_process_with_quiet_prints_only_the_result(tiny_models_dir, images, tmp_path, capsys):
    from huggingface_hub.utils import are_progress_bars_disabled
    from transformers.utils import logging as transformers_logging

    def library_bars() -> tuple[bool, bool]:
        return transformers_logging.is_progress_bar_enabled(), are_progress_bars_disabled()

    before = library_bars()
    output, latents = tmp_path / "f1.mp4", tmp_path / "f1.safetensors"
    code, out, err = _cli(capsys, "generate", "--image", images["rgb.png"], "--prompt", "waves", "--model", "f1",
                          "--models-dir", tiny_models_dir, *FAST, "--output", output, "--save-latents", latents,
                          "--quiet")
    assert library_bars() == before, "--quiet must put the libraries' progress-bar setting back"
    assert code == cli.EXIT_OK, err
    assert out.splitlines()[0].startswith(f"Wrote {output}: 0.83 s video, {EXPECTED_FRAMES} frames at 30 fps, 64x48; "
                                          "took ")
    assert out.splitlines()[1:] == [f"Wrote {latents}"]
    _assert_video(output)
    assert latents.is_file()
    # No bar of ours, no stage lines, and no weight-loading bars of transformers/diffusers either.
    assert "%|" not in err and "step" not in err and "section" not in err and "Text encoding" not in err, err


def test_fp8_and_memory_to_preserve_reach_the_memory_plan(tiny_models_dir, images, tmp_path, capsys):
    output = tmp_path / "fp8.mp4"
    code, out, err = _cli(capsys, "generate", "--image", images["rgb.png"], "--models-dir", tiny_models_dir, *FAST,
                          "--output", output, "--fp8", "--preserve-gb", "1.5")
    assert code == cli.EXIT_OK, err
    assert "note: Memory plan on " in err and "(transformer stored in fp8)" in err, err
    _assert_video(output)


def test_an_empty_prompt_is_allowed(tiny_models_dir, images, tmp_path, capsys):
    code, out, err = _cli(capsys, "generate", "--image", images["rgb.png"], "--prompt", "", "--models-dir",
                          tiny_models_dir, *FAST, "--output", tmp_path / "empty.mp4", "--quiet")
    assert code == cli.EXIT_OK, err
    assert out.startswith("Wrote ")
    _assert_video(tmp_path / "empty.mp4")
    assert "note: The prompt is empty: the video will follow only the image" in err, err


def test_an_over_long_prompt_still_generates_and_warns_that_it_was_cut_to_256_tokens(tiny_models_dir, images,
                                                                                    tmp_path, capsys, caplog):
    prompt = " ".join(f"word{i}" for i in range(400))
    code, out, err = _cli(capsys, "generate", "--image", images["rgb.png"], "--prompt", prompt, "--models-dir",
                          tiny_models_dir, *FAST, "--output", tmp_path / "long.mp4", "--quiet")
    assert code == cli.EXIT_OK, err
    assert out.startswith("Wrote ")
    _assert_video(tmp_path / "long.mp4")
    assert "longer than 256 tokens" in err  # the engine's notice, shown even with --quiet
    assert sum("256" in line for line in err.splitlines()) == 1  # said once, not twice


@pytest.mark.parametrize("name, note", [
    ("rgba.png", "white background"),
    ("gray.png", "grayscale"),
    ("gray16.png", "16-bit"),
    ("palette.png", "palette"),
    ("cmyk.jpg", "CMYK"),
    ("exif_rotated.jpg", "EXIF orientation 6"),
])
def test_unusual_but_valid_images_generate_end_to_end(tiny_models_dir, images, tmp_path, capsys, name, note):
    output = tmp_path / "video.mp4"
    code, out, err = _cli(capsys, "generate", "--image", images[name], "--model", "f1", "--models-dir",
                          tiny_models_dir, *FAST, "--output", output, "--quiet")
    assert code == cli.EXIT_OK, err
    assert out.startswith("Wrote ")
    # Landscape 64x48 for every file, the EXIF-rotated one included (unrotated it would be 48x64).
    _assert_video(output)
    assert "note: Input image:" in err and note in err, err


def test_tiny_models_builds_a_set_and_a_second_call_is_quick_and_says_ready(tmp_path, capsys):
    root = tmp_path / "tiny"
    code, out, err = _cli(capsys, "tiny-models", root)
    assert code == cli.EXIT_OK, err
    assert out.strip() == f"Tiny model set ready in {root.resolve()}"
    manifest = root / "tiny_models.json"
    assert manifest.is_file() and (root / "lllyasviel" / "FramePackI2V_HY" / "config.json").is_file()
    built_at = manifest.stat().st_mtime_ns

    started = time.perf_counter()
    code, out, err = _cli(capsys, "tiny-models", root)
    assert code == cli.EXIT_OK, err
    assert time.perf_counter() - started < 3.0
    assert out.strip() == f"Tiny model set ready in {root.resolve()}"
    assert manifest.stat().st_mtime_ns == built_at, "a complete build must be reused, not rebuilt"


# --- refusals ------------------------------------------------------------------------------------------------

# (case id, image key, extra options, option named in the message, how-to-fix text)
BAD_INPUTS = [
    ("missing image", "missing.png", [], "--image", "does not exist"),
    ("directory as image", "a_folder", [], "--image", "Give the path of one image"),
    ("text file named png", "text.png", [], "--image", "Use a PNG, JPEG"),
    ("truncated png", "truncated.png", [], "--image", "Re-download or re-export"),
    ("image under 64 px", "small.png", [], "--image", "at least 64x64"),
    ("zero seconds", "rgb.png", ["--seconds", "0"], "--seconds", "above 0 and at most 120"),
    ("negative seconds", "rgb.png", ["--seconds", "-1"], "--seconds", "above 0 and at most 120"),
    ("too many seconds", "rgb.png", ["--seconds", "121"], "--seconds", "above 0 and at most 120"),
    ("nan seconds", "rgb.png", ["--seconds", "nan"], "--seconds", "above 0 and at most 120"),
    ("zero steps", "rgb.png", ["--steps", "0"], "--steps", "25 steps is the official default"),
    ("zero window", "rgb.png", ["--window", "0"], "--window", "9 is the trained value"),
    ("crf over 51", "rgb.png", ["--crf", "52"], "--crf", "0 (lossless) to 51"),
    ("nan guidance", "rgb.png", ["--gs", "nan"], "--gs", "10 is the official default"),
    ("cfg under 1", "rgb.png", ["--cfg", "0.5"], "--cfg", "1 turns real CFG off"),
    ("output is a folder", "rgb.png", ["--output", "{tmp}"], "--output", "Give a file name"),
    ("output not mp4", "rgb.png", ["--output", "{tmp}/x.avi"], "--output", "*.mp4"),
    ("unknown dtype", "rgb.png", ["--dtype", "int8"], "--dtype", "use auto, float32, bfloat16 or float16"),
    ("cuda without a gpu", "rgb.png", ["--device", "cuda"], "--device", "set --device to cpu"),
    ("negative memory to preserve", "rgb.png", ["--preserve-gb", "-3"], "--preserve-gb", "empty for automatic"),
]
_NEEDS_NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")


@pytest.mark.parametrize("image, extra, option, fix", [
    pytest.param(*rest, id=case, marks=[_NEEDS_NO_CUDA] if "cuda" in case else []) for case, *rest in BAD_INPUTS])
def test_bad_input_is_refused_with_exit_2_before_any_model_loads(images, tmp_path, empty_models_dir, capsys,
                                                                 image, extra, option, fix):
    image_path = images.get(image, images["rgb.png"].parent / image)
    extra = [e.replace("{tmp}", str(tmp_path)) for e in extra]
    # The models folder is empty: had validation come after loading, this would fail with exit 1 (missing
    # weights) instead.
    code, out, err = _cli(capsys, "generate", "--image", image_path, "--models-dir", empty_models_dir, *FAST,
                          "--output", tmp_path / "out.mp4", *extra)
    assert code == cli.EXIT_BAD_INPUT, err
    assert err.startswith(f"error: {option}"), err
    assert fix in err, err
    assert "Model component" not in err and "Checking model files" not in err
    assert out == ""
    assert _leftovers(tmp_path) == []
    assert not list(empty_models_dir.iterdir())


def test_a_value_that_is_not_a_number_is_refused_by_the_parser_with_exit_2(images, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["generate", "--image", str(images["rgb.png"]), "--steps", "many", "--output",
                  str(tmp_path / "out.mp4")])
    assert exit_info.value.code == cli.EXIT_BAD_INPUT
    assert "--steps" in capsys.readouterr().err
    assert _leftovers(tmp_path) == []


def test_missing_weights_fail_with_exit_1_naming_the_component_the_folder_and_the_fix(images, tmp_path,
                                                                                       empty_models_dir, capsys,
                                                                                       caplog):
    code, out, err = _cli(capsys, "generate", "--image", images["rgb.png"], "--models-dir", empty_models_dir,
                          *FAST, "--output", tmp_path / "out.mp4", "--quiet")
    assert code == cli.EXIT_FAILED, err
    assert f"All 8 model components this job needs are missing or incomplete in {empty_models_dir}: tokenizer," in err
    assert "How to fix: Get them all (" in err and " GB" in err  # the hub's sizes, or the estimate offline
    assert f"`python -m framepack_core models download --model original --models-dir {empty_models_dir}`" in err
    assert out == ""
    assert _leftovers(tmp_path) == []
    assert not [record for record in caplog.records if record.exc_info], "an expected error logs no traceback"


def test_a_missing_weights_failure_reaches_a_cli_user_once_and_without_a_traceback(images, tmp_path,
                                                                                     empty_models_dir):
    # A real process: the log line the app keeps for an expected failure must not repeat the CLI's own message.
    result = subprocess.run([sys.executable, "-m", "framepack_core", "generate", "--image", str(images["rgb.png"]),
                             "--models-dir", str(empty_models_dir), "--output", str(tmp_path / "out.mp4")],
                            cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=300,
                            check=False)
    assert result.returncode == cli.EXIT_FAILED, result.stderr
    assert result.stderr.count("model components this job needs are missing") == 1, result.stderr
    assert "Traceback" not in result.stderr


# --- Ctrl-C ----------------------------------------------------------------------------------------------------


def test_sigint_after_the_first_section_exits_130_and_keeps_a_playable_partial_video(tiny_models_dir, images,
                                                                                     tmp_path):
    output = tmp_path / "long.mp4"
    process = subprocess.Popen(
        [sys.executable, "-m", "framepack_core", "generate", "--image", str(images["rgb.png"]), "--models-dir",
         str(tiny_models_dir), "--window", "3", "--steps", "4", "--resolution", "64", "--seconds", "8",
         "--no-teacache", "--output", str(output)],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_subprocess_env())
    stderr = bytearray()

    def pump() -> None:
        while chunk := os.read(process.stderr.fileno(), 65536):
            stderr.extend(chunk)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 120
        while not re.search(rb"section 1/\d+ done", stderr):
            assert process.poll() is None, f"the job ended before its first section was done:\n{stderr.decode()}"
            assert time.monotonic() < deadline, f"no section finished in time:\n{stderr.decode()}"
            time.sleep(0.02)
        process.send_signal(signal.SIGINT)
        signalled = time.monotonic()
        code = process.wait(timeout=60)
        stopped_after = time.monotonic() - signalled
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    reader.join(timeout=10)
    text, stdout = stderr.decode(), process.stdout.read().decode()
    process.stdout.close()
    process.stderr.close()

    assert code == cli.EXIT_CANCELLED, text
    assert stopped_after < 10, f"took {stopped_after:.1f} s to stop"
    assert "Stopping after the current step" in text
    # 8 s at window 3 is 20 sections, far more than can finish between the signal and the next step.
    sections = re.findall(r"section (\d+)/20 done: (\d+) frames", text)
    assert sections and int(sections[-1][0]) < 20, f"the job must stop early:\n{text}"
    assert f"Cancelled after {len(sections)} section(s); partial video: " in text
    partial = tmp_path / "long.partial.mp4"
    assert partial.is_file() and not output.exists()
    # The partial video holds every frame the finished sections produced.
    info = probe_video(partial)
    assert info.frame_count == int(sections[-1][1]) > 0
    assert (info.width, info.height) == (EXPECTED_WIDTH, EXPECTED_HEIGHT)
    assert "Wrote" not in stdout
    assert _leftovers(tmp_path) == ["long.partial.mp4"], "the hidden segment folder must be removed"


def test_a_second_ctrl_c_aborts_at_once_with_exit_130_and_no_traceback(images, tmp_path, monkeypatch, capsys):
    """In-process, with a stand-in engine that presses Ctrl-C twice right after its first section."""
    from framepack_core.events import SectionFinished
    from framepack_core.pipeline.engine import FramePackEngine

    segments = tmp_path / ".out.segments-test"
    segments.mkdir()
    (segments / "seg_00000.mp4").write_bytes(b"finished section")
    default_handler = signal.getsignal(signal.SIGINT)

    def generate(self, request, cancel=None, job_id=None, job_dir=None):
        request.validated()
        yield SectionFinished("job", section=1, total_sections=5, segment_path=segments / "seg_00000.mp4",
                              video_frames=9, latent_frames=3, dit_s=0.0, decode_s=0.0, write_s=0.0)
        # Only raise SIGINT at our own handler: pytest's would end the whole session.
        assert signal.getsignal(signal.SIGINT) not in (default_handler, signal.default_int_handler)
        signal.raise_signal(signal.SIGINT)  # first Ctrl-C: finish the current step, then stop
        assert cancel.cancelled
        signal.raise_signal(signal.SIGINT)  # second Ctrl-C: stop now
        raise AssertionError("the second Ctrl-C should have interrupted the job")

    monkeypatch.setattr(FramePackEngine, "generate", generate)
    try:
        code, out, err = _cli(capsys, "generate", "--image", images["rgb.png"], "--models-dir", tmp_path,
                              "--output", tmp_path / "out.mp4")
    except KeyboardInterrupt:  # caught here, or pytest would take it as the user stopping the whole run
        pytest.fail("KeyboardInterrupt escaped the CLI: the user would see a traceback")
    assert code == cli.EXIT_CANCELLED, err
    assert "Stopping after the current step" in err
    assert f"Aborted; the finished sections' video segments are in {segments}" in err
    assert "Traceback" not in err and out == ""
    assert signal.getsignal(signal.SIGINT) is default_handler, "the CLI must restore the SIGINT handler"
