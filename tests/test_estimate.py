"""The estimate before Start: the memory plan's peaks and the run time (learned from this machine's jobs, else a
first guess on CUDA, else unknown), with a quality warning above 640; and the page's panel that shows it."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from app.service.generation import GenerationService
from app.ui.estimate_panel import estimate_panel_html
from app.ui.render import FIELD_LABELS
from framepack_core.durations import rough_duration_text
from framepack_core.events import JobFinished, StageChanged
from framepack_core.media.buckets import find_nearest_bucket
from framepack_core.memory.hardware import FakeHardwareProbe, fake_hardware
from framepack_core.memory.job_planning import JobPlanner
from framepack_core.models.components import DIT
from framepack_core.models.devices import resolve_device_config
from framepack_core.models.loading import ModelSource
from framepack_core.models.store import ModelStore
from framepack_core.pipeline.engine import FramePackEngine
from framepack_core.pipeline.estimate import (
    TEACACHE_SPEEDUP,
    TimeSource,
    estimate_job,
    image_size_of,
)
from framepack_core.pipeline.timings import StageTimings
from framepack_core.request import GenerationRequest

TWO_SECTIONS = {"latent_window_size": 3, "seconds": 0.8, "steps": 3, "resolution": 64, "cache": "none"}
CPU = resolve_device_config("cpu")


@pytest.fixture
def real_sizes(tmp_path) -> ModelSource:
    """No local weights: the sizes come from the built-in configs of the real 13 B models."""
    return ModelSource(models_dir=tmp_path / "no-models", cache_dir=tmp_path / "no-cache", offline=True)


def _planner(source: ModelSource, vram_gb: float, ram_gb: float, device_type: str = "cuda") -> JobPlanner:
    return JobPlanner(source, "cuda" if device_type == "cuda" else "cpu",
                      probe=FakeHardwareProbe(fake_hardware(vram_gb, ram_gb, device_type=device_type)))


def _request(**settings) -> GenerationRequest:
    return GenerationRequest(image=Path("unused.png"), **settings).validated()


def test_the_real_models_fit_a_24_gib_card_and_not_a_2_gib_one_with_4_gib_of_ram(real_sizes):
    store = ModelStore(real_sizes, CPU)
    big = estimate_job(_request(), (480, 640), store, _planner(real_sizes, 24, 64), StageTimings())
    assert big.fits is True and big.warnings == ()
    assert 0 < big.peak_vram_gb <= big.vram_budget_gb < 24 and 0 < big.peak_ram_gb <= big.ram_budget_gb
    assert big.bucket == find_nearest_bucket(480, 640, 640) and "peak VRAM" in big.memory_text()

    small = estimate_job(_request(), (480, 640), store, _planner(real_sizes, 2, 4), StageTimings())
    assert small.fits is False
    assert any(w.startswith("This job may run out of memory:") and "GiB" in w for w in small.warnings)


def test_the_memory_plan_is_the_one_the_job_would_make(real_sizes):
    planner = _planner(real_sizes, 8, 32)
    request = _request(resolution=512, fp8=True, gpu_memory_preservation=2.0)
    estimate = estimate_job(request, (720, 1280), ModelStore(real_sizes, CPU), planner, StageTimings())
    plan = planner.plan(request, (720, 1280))
    assert estimate.peak_vram_gb == pytest.approx(plan.peak_vram_gb)
    assert estimate.peak_ram_gb == pytest.approx(plan.peak_ram_gb)
    assert estimate.bucket == (plan.workload.height, plan.workload.width)


def test_without_an_image_the_plan_holds_for_the_largest_bucket(real_sizes):
    planner = _planner(real_sizes, 24, 64)
    store = ModelStore(real_sizes, CPU)
    any_image = estimate_job(_request(), None, store, planner, StageTimings())
    landscape = estimate_job(_request(), (480, 640), store, planner, StageTimings())
    assert any_image.peak_vram_gb >= landscape.peak_vram_gb
    assert any_image.bucket[0] * any_image.bucket[1] >= 480 * 640


def test_above_640_the_estimate_warns_about_quality_and_not_at_640(real_sizes):
    store, planner = ModelStore(real_sizes, CPU), _planner(real_sizes, 80, 128)
    at_640 = estimate_job(_request(resolution=640), (480, 640), store, planner, StageTimings())
    above = estimate_job(_request(resolution=768), (480, 640), store, planner, StageTimings())
    assert not any("quality" in w for w in at_640.warnings)
    assert any("above the 640 the models were trained at" in w and "quality" in w for w in above.warnings)


def test_on_the_cpu_with_no_job_run_the_time_is_unknown(real_sizes):
    estimate = estimate_job(_request(), (480, 640), ModelStore(real_sizes, CPU),
                            _planner(real_sizes, 0, 64, device_type="cpu"), StageTimings())
    assert estimate.seconds is None and estimate.source == TimeSource.UNKNOWN
    assert estimate.peak_vram_gb is None and estimate.memory_text().endswith("(on the CPU)")
    assert estimate.time_text() == "unknown until the first job with these settings runs"


def test_on_cuda_with_no_job_run_the_first_guess_is_the_modelled_step_time_over_every_step(real_sizes):
    planner, store = _planner(real_sizes, 24, 64), ModelStore(real_sizes, CPU)
    request = _request(seconds=5.0, steps=25, cache="none")  # 4 sections at window 9
    estimate = estimate_job(request, (480, 640), store, planner, StageTimings())
    step = planner.plan(request, (480, 640)).step_time_s
    assert estimate.source == TimeSource.FIRST_GUESS and estimate.sections == 4
    assert estimate.seconds == pytest.approx(4 * 25 * step)
    assert "first guess" in estimate.time_text() and "RTX 4090" in estimate.time_text()
    cached = estimate_job(_request(seconds=5.0, steps=25, cache="teacache"), (480, 640), store, planner,
                          StageTimings())
    assert cached.seconds == pytest.approx(estimate.seconds / TEACACHE_SPEEDUP)


def test_after_a_job_the_estimate_uses_the_learned_speed_and_says_the_next_jobs_first_eta(
        tiny_models_dir, gradient_image, tmp_path):
    timings = StageTimings.load(tmp_path / "stage_timings.json")
    engine = FramePackEngine(ModelStore(ModelSource(models_dir=tiny_models_dir), CPU), timings=timings)
    request = GenerationRequest(image=gradient_image, prompt="a cat", output=tmp_path / "one.mp4",
                                **TWO_SECTIONS).validated()
    size = image_size_of(gradient_image)
    before = estimate_job(request, size, engine.models, engine.planner, engine.timings)
    assert before.source == TimeSource.UNKNOWN and before.fits is None  # no planner: memory not planned

    assert isinstance(list(engine.generate(request))[-1], JobFinished)
    learned = estimate_job(request, size, engine.models, engine.planner, engine.timings)
    assert learned.source == TimeSource.LEARNED and learned.seconds > 0
    assert learned.time_text().endswith("(estimate, from this PC's last jobs)")

    again = GenerationRequest(image=gradient_image, prompt="a cat", output=tmp_path / "two.mp4", **TWO_SECTIONS)
    first_eta = next(e for e in engine.generate(again) if isinstance(e, StageChanged)).eta_s
    # The job's first ETA is the same sum, counted a moment later (its first stage has begun).
    assert first_eta == pytest.approx(learned.seconds, rel=0.05, abs=0.05)

    # Speeds are learned per setting that changes a step's cost: another model is not known yet.
    other = estimate_job(_tiny_request(gradient_image, model="f1"), size, engine.models, None, engine.timings)
    assert other.source == TimeSource.UNKNOWN


def _tiny_request(image: Path, **settings) -> GenerationRequest:
    return GenerationRequest(image=image, **{**TWO_SECTIONS, **settings}).validated()


def test_image_size_is_read_from_the_header_as_the_job_sees_it(gradient_image, tmp_path):
    from PIL import Image

    assert image_size_of(gradient_image) == (300, 420)
    rotated = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # turned a quarter: the job sees it upright, 420 high
    Image.open(gradient_image).convert("RGB").save(rotated, exif=exif)
    assert image_size_of(rotated) == (420, 300)
    (tmp_path / "not.png").write_text("hello")
    assert image_size_of(tmp_path / "not.png") is None and image_size_of(None) is None


@pytest.mark.parametrize(("seconds", "text"), [(4.2, "4 s"), (42, "40 s"), (239, "4 min"), (4800, "1 h 20 min"),
                                               (3600, "1 h")])
def test_durations_are_rounded_as_an_estimate_deserves(seconds, text):
    assert rough_duration_text(seconds) == text


# The page's panel --------------------------------------------------------------------------------------------

def _page(models_dir: Path, planner: JobPlanner | None, timings: StageTimings | None = None) -> SimpleNamespace:
    engine = FramePackEngine(ModelStore(ModelSource(models_dir=models_dir), CPU), planner, timings)
    return SimpleNamespace(service=SimpleNamespace(engine=lambda: engine))


FORM = {"prompt": "", "model": "original", "seconds": 5, "seed": 31337, "steps": 25, "distilled_guidance": 10,
        "latent_window_size": 9, "cfg": 1, "cfg_rescale": 0, "negative_prompt": "", "cache": "teacache",
        "cache_threshold": 0.15, "crf": 16, "resolution": 640, "gpu_memory_preservation": None, "fp8": "auto"}


def test_the_panel_shows_memory_and_a_first_guess_for_any_image_before_one_is_chosen(real_sizes):
    page = _page(real_sizes.models_dir, _planner(real_sizes, 24, 64))
    started = time.perf_counter()
    panel = estimate_panel_html(page, None, FORM)
    elapsed = time.perf_counter() - started
    assert 'data-source="first_guess"' in panel and 'data-fits="true"' in panel
    assert "any start image (the largest size" in panel and "4 sections" in panel
    assert "peak VRAM" in panel and "first guess" in panel
    assert elapsed < 5.0  # no model is loaded (a few ms here; the bound only catches a load)


def test_the_panel_for_an_image_on_the_cpu_says_the_time_is_unknown(tiny_models_dir, gradient_image):
    page = _page(tiny_models_dir, _planner(ModelSource(models_dir=tiny_models_dir), 0, 64, device_type="cpu"))
    panel = estimate_panel_html(page, str(gradient_image), {**FORM, "resolution": 64, "seconds": 2})
    assert "a 64×48 video in 2 sections" in panel and "(on the CPU)" in panel
    assert 'data-source="unknown"' in panel and "unknown until the first job" in panel


def test_the_panel_warns_above_640_and_when_the_job_may_not_fit(real_sizes):
    page = _page(real_sizes.models_dir, _planner(real_sizes, 2, 4))
    panel = estimate_panel_html(page, None, {**FORM, "resolution": 768})
    assert 'data-fits="false"' in panel and "may not fit" in panel
    assert "above the 640 the models were trained at" in panel and "may run out of memory" in panel


def test_the_panel_names_a_bad_setting_by_its_label(real_sizes):
    page = _page(real_sizes.models_dir, _planner(real_sizes, 24, 64))
    panel = estimate_panel_html(page, None, {**FORM, "seconds": 0})
    assert 'data-source="invalid"' in panel and FIELD_LABELS["seconds"] in panel


def test_the_panel_survives_an_engine_that_cannot_be_made(caplog):
    def broken():
        raise RuntimeError("no engine")

    panel = estimate_panel_html(SimpleNamespace(service=SimpleNamespace(engine=broken)), None, FORM)
    assert 'data-source="error"' in panel and "Estimate unavailable" in panel
    assert "Could not estimate the job" in caplog.text


class _RecordingPlanner(JobPlanner):
    """A real planner that keeps each plan it made for a job, and the request's LoRAs."""

    def plan_job(self, request, image_size, models, loras=None):
        plan = super().plan_job(request, image_size, models, loras)
        self.made = [*getattr(self, "made", []), (request.loras, plan)]
        return plan


def test_the_panel_counts_the_lora_panels_loras_and_reads_each_file_once(tiny_models_dir, gradient_image, tmp_path):
    from app.ui.lora import lora_request_values
    from framepack_core.lora.library import LoraFolder
    from tests.lora_fixtures import write_tiny_lora

    write_tiny_lora(tmp_path / "loras" / "style.safetensors", tiny_models_dir, seed=1)
    planner = _RecordingPlanner(ModelSource(models_dir=tiny_models_dir), "cpu",
                                probe=FakeHardwareProbe(fake_hardware(0, 64, device_type="cpu")))
    page = _page(tiny_models_dir, planner)
    page.loras = LoraFolder(tmp_path / "loras")
    form = {**FORM, "resolution": 64, "seconds": 2}
    lora_panel = [["style.safetensors"], False, 0.8]  # LoraPanel.inputs(): the rows' names, fuse, the weights

    estimate_panel_html(page, str(gradient_image), form)
    for _ in range(2):
        panel = estimate_panel_html(page, str(gradient_image), form, lora_panel)
        assert "a 64×48 video in 2 sections" in panel
    (no_lora, without), *with_lora = planner.made
    assert no_lora == () and without.component(DIT).lora_bytes == 0
    expected = lora_request_values(page.loras, ["style.safetensors"], [0.8], False)["loras"]
    for loras, plan in with_lora:
        assert loras == expected and plan.component(DIT).lora_bytes > 0
        assert plan.component(DIT).weight_bytes == without.component(DIT).weight_bytes + plan.component(DIT).lora_bytes
    library = page.service.engine().models.lora_library
    assert (library.files_read, library.files_hashed) == (1, 1), "a LoRA is read and hashed once, not per change"


def test_the_panel_refuses_a_lora_file_gone_since_the_panel_was_drawn(tiny_models_dir, gradient_image, tmp_path):
    from framepack_core.lora.library import LoraFolder

    (tmp_path / "loras").mkdir()
    page = _page(tiny_models_dir, _planner(ModelSource(models_dir=tiny_models_dir), 0, 64, device_type="cpu"))
    page.loras = LoraFolder(tmp_path / "loras")
    panel = estimate_panel_html(page, str(gradient_image), {**FORM, "resolution": 64},
                                [["gone.safetensors"], False, 1.0])
    assert 'data-source="invalid"' in panel and FIELD_LABELS["loras"] in panel


def test_the_service_makes_its_engine_once_for_estimates_and_jobs(tiny_models_dir, tmp_path):
    made = []

    def factory() -> FramePackEngine:
        made.append(FramePackEngine(ModelStore(ModelSource(models_dir=tiny_models_dir), CPU)))
        return made[-1]

    service = GenerationService(factory, tmp_path)
    assert service.engine() is service.engine() is made[0] and len(made) == 1
    assert service.engine().models.held_bytes() == (0, 0)  # nothing loaded for an estimate


# ``plan`` on the command line ---------------------------------------------------------------------------------

def test_plan_prints_the_learned_time_for_this_machine_and_a_first_guess_for_a_simulated_gpu(
        capsys, monkeypatch, tmp_path):
    import json

    from huggingface_hub import constants

    from framepack_core.cli import main as cli
    from framepack_core.pipeline import timings as timings_module
    from framepack_core.pipeline.timings import Speeds, job_shape

    (tmp_path / "hf").mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    path = tmp_path / "stage_timings.json"
    monkeypatch.setattr(timings_module, "DEFAULT_TIMINGS_PATH", path)
    request = _request()  # generate's defaults: 5 s (4 sections at window 9), 25 steps
    shape = job_shape(request, (416, 960), ModelStore(ModelSource(), CPU))
    StageTimings(path).learn(shape.key, Speeds(step_s={shape.tokens: 2.0}))

    assert cli.main(["plan", "--device", "cpu", "--json"]) == 0
    estimate = json.loads(capsys.readouterr().out)["estimate"]
    assert estimate["source"] == TimeSource.LEARNED and estimate["seconds"] == pytest.approx(4 * 25 * 2.0)
    assert estimate["text"] == "about 3 min (estimate, from this PC's last jobs)"

    assert cli.main(["plan", "--vram-gb", "24"]) == 0  # another machine's GPU: this one's speed does not apply
    out = capsys.readouterr().out
    assert "Estimated time: about" in out and "first guess" in out and "a 5 s video, 25 steps" in out
