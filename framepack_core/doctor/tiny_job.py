"""The end-to-end check: a whole job, from the image to the mp4, with the tiny random-weight models on the device
the app would use. It runs every kernel kind a real job runs (attention, convolutions, the sampler, the video
writer), so a torch without kernels for the GPU or a broken install fails here within seconds, with the error a
real job would give."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from framepack_core.doctor.report import CheckResult, CheckStatus

NAME = "End-to-end job"


def check_tiny_job(device: str = "auto", models_dir: Path | None = None) -> CheckResult:
    """Run a one-step, one-section job with the tiny models on ``device`` (built in a temporary folder unless
    ``models_dir`` holds a tiny set already)."""
    try:
        import torch  # noqa: F401
    except Exception:  # noqa: BLE001 - the PyTorch check reports it
        return CheckResult(NAME, CheckStatus.SKIPPED, "PyTorch does not import (see above).")
    with tempfile.TemporaryDirectory(prefix="framepack-doctor-") as work:
        started = time.perf_counter()
        try:
            finished, where = _run(Path(work), device, models_dir)
        except Exception as error:  # noqa: BLE001 - any failure is the finding
            return CheckResult(NAME, CheckStatus.FAILED, f"a tiny job failed: {type(error).__name__}: {error}"[:600],
                               "Fix the failures above first; if there are none, run the tiny job with "
                               "the demo mode of launch.py and report the error it prints.")
        seconds = time.perf_counter() - started
    return CheckResult(NAME, CheckStatus.OK, f"a tiny job ran on {where} and wrote a {finished.video_frames}-frame "
                                             f"video in {seconds:.1f} s")


def _run(work: Path, device: str, models_dir: Path | None):  # noqa: ANN202 - (JobFinished, device text)
    from PIL import Image

    from framepack_core.events import JobFailed, JobFinished
    from framepack_core.models.devices import resolve_device_config
    from framepack_core.models.loading import ModelSource
    from framepack_core.models.store import ModelStore
    from framepack_core.models.tiny import build_tiny_models
    from framepack_core.pipeline.engine import FramePackEngine
    from framepack_core.request import GenerationRequest

    tiny = models_dir if models_dir is not None else build_tiny_models(work / "tiny_models")
    image = work / "start.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 96, 3), dtype=np.uint8)).save(image)
    config = resolve_device_config(device)
    engine = FramePackEngine(ModelStore(ModelSource(models_dir=Path(tiny), offline=True), config))
    request = GenerationRequest(image=image, prompt="a test", seconds=0.5, steps=1, latent_window_size=3,
                                resolution=64, cache="none", output=work / "check.mp4")
    last = None
    for last in engine.generate(request):
        pass
    if isinstance(last, JobFailed):
        raise RuntimeError(f"{last.message} {last.details}".strip())
    if not isinstance(last, JobFinished):
        raise RuntimeError(f"the job ended with {type(last).__name__}")
    return last, config.describe()
