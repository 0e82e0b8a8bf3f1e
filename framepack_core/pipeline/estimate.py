"""What a job will take before it starts: its memory plan's peaks and an estimated run time, with warnings.

One function for every edge (the page's panel under Start, ``plan``'s "Estimated time" line), built from the
pieces the job itself uses, so the estimate never disagrees with the job: the memory plan is the ``JobPlanner``'s
(the engine plans the same way at the start of the job), and the time is the ``ProgressClock``'s ETA at the
job's first moment, from the speeds this machine learned (``StageTimings``). Nothing is loaded: the planner reads
sizes only, and an image is only opened for its size.

Without learned speeds for these settings, a CUDA device gets a first guess: the plan's modelled step time
(``compute_cost``'s FLOPs at the cost model's RTX 4090 rate) over every step; elsewhere the time is unknown until
a job has run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from framepack_core.durations import rough_duration_text
from framepack_core.memory.plan import GIB, MemoryPlan, Workload
from framepack_core.pipeline.progress import ProgressClock
from framepack_core.pipeline.timings import StageTimings, job_shape
from framepack_core.sampling.cache_methods import CacheMethod

if TYPE_CHECKING:
    from framepack_core.memory.job_planning import JobPlanner
    from framepack_core.models.store import ModelStore
    from framepack_core.request import GenerationRequest

TRAINED_RESOLUTION = 640  # the models were trained on the 640 buckets
# The README's RTX 4090 speeds: 2.5 s per frame without TeaCache, 1.5 s with it.
TEACACHE_SPEEDUP = 2.5 / 1.5
# A first guess of each cache's speed-up at its default threshold, until this machine has run one (then the learned
# speed, kept per method, replaces it). MagCache: MagCache4FramePack's table gives 9 min -> 4 min 20 s at 0.1, less
# at our 0.06; TaylorSeer: 12 of 25 steps computed (sampling/caches.py); first-block: no published FramePack number,
# a cautious guess.
FIRST_GUESS_SPEEDUPS = {CacheMethod.NONE: 1.0, CacheMethod.TEACACHE: TEACACHE_SPEEDUP, CacheMethod.FIRST_BLOCK: 1.5,
                        CacheMethod.MAGCACHE: 1.8, CacheMethod.TAYLORSEER: 1.9}


class TimeSource:
    """Where an estimated time comes from."""

    LEARNED = "learned"  # this machine's measured speeds for these settings
    FIRST_GUESS = "first_guess"  # modelled FLOPs at the cost model's GPU rate; no job has run with these settings
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class JobEstimate:
    device_type: str  # "cuda", "mps", "cpu"; "" without a memory plan
    device_name: str
    fits: bool | None  # None: no planner, nothing known about memory
    peak_vram_gb: float | None  # None on the CPU or without a plan
    vram_budget_gb: float | None
    peak_ram_gb: float | None
    ram_budget_gb: float | None
    seconds: float | None  # the whole job, setup included when learned
    source: str  # a TimeSource value
    warnings: tuple[str, ...]  # quality and memory warnings, each a sentence
    bucket: tuple[int, int]  # the video's (height, width)
    sections: int
    cost_model: str = ""  # the GPU a first guess is modelled for (the memory plan's cost model)

    def time_text(self) -> str:
        """The time in words, always saying that it is an estimate and what from."""
        if self.seconds is None:
            return "unknown until the first job with these settings runs"
        about = f"about {rough_duration_text(self.seconds)}"
        if self.source == TimeSource.LEARNED:
            return f"{about} (estimate, from this PC's last jobs)"
        return (f"{about} of sampling (first guess, modelled for an {self.cost_model}; this PC's real speed is "
                "learned from its first job)")

    def memory_text(self) -> str:
        """The peaks against what the device and the host have free, in words."""
        if self.fits is None:
            return "memory not planned (no planner)"
        ram = f"peak RAM {self.peak_ram_gb:.1f} of {self.ram_budget_gb:.1f} GiB"
        if self.peak_vram_gb is None:
            return f"{ram} (on the CPU)"
        return f"peak VRAM {self.peak_vram_gb:.1f} of {self.vram_budget_gb:.1f} GiB, {ram}"


def estimate_job(request: GenerationRequest, image_size: tuple[int, int] | None, models: ModelStore,
                 planner: JobPlanner | None, timings: StageTimings, *, plan: MemoryPlan | None = None) -> JobEstimate:
    """The estimate for ``request`` (validated) on a start image of ``image_size`` (height, width; None before an
    image is chosen: the resolution's largest bucket, the most memory any image can take), run by ``models``.
    ``plan``: a memory plan made already (``plan`` for a simulated GPU), instead of asking ``planner``."""
    plan = plan or _plan(request, image_size, models, planner)
    workload = plan.workload if plan is not None and plan.workload is not None else Workload.from_resolution(
        request.resolution, image_size=image_size, latent_window_size=request.latent_window_size,
        variant=request.model, real_cfg=request.cfg != 1.0)
    bucket = (workload.height, workload.width)
    shape = job_shape(request, image_size or bucket, models)
    learned = timings.speeds(shape.key)
    seconds, source = None, TimeSource.UNKNOWN
    if learned.step_seconds(shape.tokens) is not None:
        # The job's own clock at its first moment: what its ETA will say, plus the setup it has not begun yet.
        seconds = (ProgressClock(shape, learned, started=0.0).eta(0.0) or 0.0) \
            + sum(learned.setup_seconds(shape.warm) or [])
        source = TimeSource.LEARNED
    elif plan is not None and plan.device_type == "cuda" and plan.step_time_s > 0:
        speedup = FIRST_GUESS_SPEEDUPS[CacheMethod(request.cache)]
        seconds, source = shape.sections * shape.steps * plan.step_time_s / speedup, TimeSource.FIRST_GUESS
    warnings = []
    if request.resolution > TRAINED_RESOLUTION:
        warnings.append(f"Base resolution {request.resolution} is above the {TRAINED_RESOLUTION} the models were "
                        f"trained at: expect worse quality (and more time and memory); {TRAINED_RESOLUTION} or "
                        "less is recommended.")
    if plan is not None and not plan.fits:
        short = [note.removeprefix("does not fit: ") for note in plan.notes if note.startswith("does not fit")]
        warnings.append("This job may run out of memory: " + ("; ".join(short) or "the plan does not fit") + ".")
    return JobEstimate(
        device_type=plan.device_type if plan else "", device_name=plan.device_name if plan else "",
        fits=plan.fits if plan else None,
        peak_vram_gb=plan.peak_vram_gb if plan and plan.device_type != "cpu" else None,
        vram_budget_gb=plan.vram_budget_bytes / GIB if plan and plan.device_type != "cpu" else None,
        peak_ram_gb=plan.peak_ram_gb if plan else None,
        ram_budget_gb=plan.ram_budget_bytes / GIB if plan else None,
        seconds=seconds, source=source, warnings=tuple(warnings), bucket=bucket, sections=shape.sections,
        cost_model=plan.cost_model.name.partition(",")[0] if plan else "")


def image_size_of(path: Path | str | None) -> tuple[int, int] | None:
    """(height, width) of the image at ``path`` as the job will see it (EXIF rotation applied), from its header
    alone; None when there is no readable image (the estimate then holds for any image)."""
    if not path:
        return None
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            width, height = image.size
            # Orientations 5-8 turn the picture a quarter: the job sees it the other way up.
            if image.getexif().get(0x0112, 1) in (5, 6, 7, 8):
                width, height = height, width
    except (OSError, UnidentifiedImageError, ValueError):
        return None
    return (height, width) if height > 0 and width > 0 else None


def _plan(request: GenerationRequest, image_size: tuple[int, int] | None, models: ModelStore,
          planner: JobPlanner | None) -> MemoryPlan | None:
    if planner is None:
        return None
    return planner.plan_job(request, image_size, models)  # as the engine plans, LoRA adapters included
