"""Benchmark (h): the speed options (step caches and compile) side by side on a medium random DiT.

One fixed job (one image, one prompt, one seed) runs in one process under each cache method and threshold, with
compile off and on: it reports the DiT wall time (the sum of the ``SectionFinished.dit_s``), how many transformer
calls were skipped, the speedup against the uncached run and how far each run's final latents (``save_latents``)
are from the uncached run's (relative L2). It also checks that the uncached run is deterministic (bit-identical to
a second one) and bit-identical to the engine's default path (a plain ``FramePackEngine`` without runtime options).

The model set is the tiny one with the "medium" transformer (about 79M parameters, ``tiny-models --transformer
medium``) so that the DiT dominates the time. Its weights are random: how much its output changes from step to
step, which is what every cache's skip decision reads, is not what a trained model does, so the skip counts and
errors here say that the machinery works and what it costs, not what quality a real video keeps.

Calls are counted with forward hooks: every call of the transformer, and every call that reached the attention of
the LAST single-stream block (a skipped call never gets there; for TaylorSeer, a call whose attention was
predicted). The counting hook is excluded from compilation (``torch.compiler.disable``): one graph break in the
last block of a compiled run. When the output's sidecar carries ``fingerprint.cache.transformer_calls`` and
``skipped_calls`` they are compared with the hooks' counts.

Reproduce (from the repository root; about 10 minutes on 2 CPU cores, builds the 600 MB model set first)::

    python -m bench.speed_options                                  # the full grid, 25 steps, 2 sections
    python -m bench.speed_options --models-dir /tmp/fp-medium      # keep the medium set for the next run
    python -m bench.speed_options --quick                          # tiny transformer, 3 steps, a reduced grid
    python -m bench.speed_options --grid none teacache:0.15 none+compile
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from framepack_core.pipeline.engine import FramePackEngine
    from framepack_core.request import GenerationRequest

REPO = Path(__file__).resolve().parents[1]
IMAGE = REPO / "assets" / "chelsea_landscape.jpg"
PROMPT = "a cat turns its head and looks around, soft daylight"
SEED = 31337
# Each entry: method[:threshold][+compile]. Thresholds per the issue; compile for none and one cache.
FULL_GRID = ("none", "teacache:0.1", "teacache:0.15", "teacache:0.25", "first-block:0.05", "first-block:0.1",
             "first-block:0.2", "first-block:0.4", "magcache:0.06", "magcache:0.12", "magcache:0.24", "taylorseer",
             "none+compile", "teacache:0.15+compile")
NO_CACHE, NO_COMPILE = "n/a (not on this branch)", "n/a (compile not on this branch)"
QUICK_GRID = ("none", "teacache:0.15", "first-block:0.1", "magcache:0.12", "taylorseer")


@dataclass(frozen=True)
class Variant:
    method: str
    threshold: float | None
    compile: bool

    @classmethod
    def parse(cls, text: str) -> Variant:
        body, _, flag = text.partition("+")
        if flag not in ("", "compile"):
            raise argparse.ArgumentTypeError(f"{text!r}: the only suffix is +compile")
        method, _, threshold = body.partition(":")
        try:
            return cls(method, float(threshold) if threshold else None, flag == "compile")
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: the threshold must be a number") from None

    @property
    def label(self) -> str:
        threshold = "" if self.threshold is None else f":{self.threshold:g}"
        return self.method + threshold + ("+compile" if self.compile else "")


@dataclass
class Run:
    """One job's measurements. ``error``: why the variant could not run (then nothing else is set)."""

    dit_s: float = 0.0
    sections: int = 0
    total_s: float = 0.0
    calls: int = 0
    computed: int = 0
    latents: torch.Tensor | None = None  # the final history latents
    cache_hooks: frozenset[str] = frozenset()
    sidecar_cache: dict = field(default_factory=dict)
    notices: list[str] = field(default_factory=list)
    error: str | None = None


class CallCounter:
    """Counts a transformer's calls and the ones that reached its last single-stream block's attention (a call a
    cache skipped never gets there), and notes the diffusers hooks (by name) on it at the first call."""

    def __init__(self, transformer: torch.nn.Module) -> None:
        import torch

        self.transformer = transformer
        self.calls = self.computed = 0
        self.hooks: frozenset[str] = frozenset()

        @torch.compiler.disable  # a Python counter inside a compiled block only counts while it is traced
        def reached(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> None:
            self.computed += 1

        last_attention = transformer.single_transformer_blocks[-1].attn.to_q
        self._handles = [transformer.register_forward_pre_hook(self._called),
                         last_attention.register_forward_hook(reached)]

    def _called(self, module: torch.nn.Module, args: tuple) -> None:
        if self.calls == 0:  # the job's cache is on by its first call
            self.hooks = frozenset(name for child in module.modules()
                                   for name in getattr(getattr(child, "_diffusers_hook", None), "hooks", None) or ())
        self.calls += 1

    def reset(self) -> None:
        self.calls = self.computed = 0
        self.hooks = frozenset()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def job_request(variant: Variant, work: Path, tag: str, steps: int, resolution: int, window: int,
                seconds: float) -> GenerationRequest:
    from framepack_core.request import GenerationRequest

    return GenerationRequest(image=IMAGE, prompt=PROMPT, seed=SEED, steps=steps, resolution=resolution,
                             latent_window_size=window, seconds=seconds, cache=variant.method,
                             cache_threshold=variant.threshold, output=work / f"{tag}.mp4",
                             save_latents=work / f"{tag}.safetensors")


def run_job(engine: FramePackEngine, request: GenerationRequest, counters: dict[int, CallCounter],
            check: Callable[[CallCounter], str | None] = lambda counter: None) -> Run:
    """Run one job to its end. The counter goes onto the transformer when sampling starts (a memory plan may
    reload one loaded before the job); after the first call ``check`` may stop the job, saying why."""
    from safetensors.torch import load_file

    from framepack_core.errors import InvalidInputError
    from framepack_core.events import JobFinished, Notice, SectionFinished, Stage, StageChanged
    from framepack_core.jobs.output_description import sidecar_path
    from framepack_core.models.components import ModelVariant

    counter, checked, events = None, False, []
    started = time.perf_counter()
    job = engine.generate(request)
    try:
        for event in job:
            events.append(event)
            if counter is None and isinstance(event, StageChanged) and event.stage == Stage.SAMPLING:
                transformer = engine.models.transformer(ModelVariant.ORIGINAL)
                counter = counters.get(id(transformer)) or counters.setdefault(id(transformer),
                                                                               CallCounter(transformer))
                counter.reset()
            if counter is not None and counter.calls and not checked:
                checked = True
                reason = check(counter)
                if reason:
                    job.close()  # the engine's own cleanup runs; this variant is reported as n/a
                    return Run(error=reason)
    except (InvalidInputError, ValueError) as error:  # a method this branch's request does not know
        return Run(error=str(error))
    total = time.perf_counter() - started
    if not isinstance(events[-1], JobFinished):
        return Run(error=getattr(events[-1], "message", repr(events[-1])))
    if counter is None or counter.calls == 0:
        raise RuntimeError("the call counter saw no transformer call")
    sidecar = json.loads(sidecar_path(events[-1].output_path).read_text(encoding="utf-8"))
    sections = [e for e in events if isinstance(e, SectionFinished)]
    return Run(dit_s=sum(e.dit_s for e in sections), sections=len(sections), total_s=total, calls=counter.calls,
               computed=counter.computed, latents=load_file(str(request.save_latents))["history_latents"],
               cache_hooks=counter.hooks, sidecar_cache=sidecar["fingerprint"].get("cache", {}),
               notices=[e.message for e in events if isinstance(e, Notice)])


def is_compiled(transformer: torch.nn.Module) -> bool:
    """Whether any part of the transformer runs compiled (``nn.Module.compile`` or a ``torch.compile`` wrapper)."""
    return any(getattr(m, "_compiled_call_impl", None) is not None or type(m).__name__ == "OptimizedModule"
               for m in transformer.modules())


def relative_l2(latents: torch.Tensor, reference: torch.Tensor) -> float:
    return float((latents.double() - reference.double()).norm() / reference.double().norm())


def machine() -> str:
    import diffusers
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"{cpu}, {os.cpu_count()} cores ({torch.get_num_threads()} torch threads), {platform.system()}, "
            f"Python {platform.python_version()}, torch {torch.__version__}, diffusers {diffusers.__version__}")


def skipped_text(run: Run, compiled: bool = False) -> str:
    """The engine's own count (the sidecar's) when it has one, checked against the hooks' count; in a compiled run
    the hook inside the compiled last block does not fire on every call, so there only the engine's count is used."""
    hooks = f"{run.calls - run.computed} of {run.calls}"
    sidecar_calls, sidecar_skipped = run.sidecar_cache.get("transformer_calls"), run.sidecar_cache.get("skipped_calls")
    if sidecar_calls is None:
        return hooks
    text = f"{sidecar_skipped} of {sidecar_calls}"
    if not compiled and (sidecar_calls, sidecar_skipped) != (run.calls, run.calls - run.computed):
        text += f" (hooks counted {hooks})"
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="tiny transformer, window 3, 3 steps, a grid without compile (a smoke run)")
    parser.add_argument("--grid", nargs="+", type=Variant.parse, default=None,
                        help="variants as method[:threshold][+compile] (default: the full grid)")
    parser.add_argument("--transformer", choices=["tiny", "medium"], default=None)
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default 25; 3 with --quick)")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=1, help="timed runs per variant, interleaved (median)")
    parser.add_argument("--models-dir", type=Path, default=None, help="build (or reuse) the model set here")
    args = parser.parse_args(argv)
    grid = args.grid or [Variant.parse(v) for v in (QUICK_GRID if args.quick else FULL_GRID)]
    size = args.transformer or ("tiny" if args.quick else "medium")
    steps = args.steps or (3 if args.quick else 25)
    window, seconds = (3, 0.8) if args.quick else (9, 2.4)  # 2 sections either way
    with tempfile.TemporaryDirectory(prefix="speed-options-") as work:
        return _bench(grid, size, steps, args.resolution, window, seconds, max(1, args.rounds),
                      args.models_dir or Path(work) / "models", Path(work))


def _bench(grid: list[Variant], size: str, steps: int, resolution: int, window: int, seconds: float, rounds: int,
           models_dir: Path, work: Path) -> int:
    from framepack_core.models.devices import resolve_device_config
    from framepack_core.models.loading import ModelSource
    from framepack_core.models.runtime import RuntimeOptions
    from framepack_core.models.store import ModelStore
    from framepack_core.models.tiny import build_tiny_models
    from framepack_core.pipeline.engine import FramePackEngine, create_engine

    bench_started = time.perf_counter()
    source = ModelSource(models_dir=build_tiny_models(models_dir, transformer=size))
    config = resolve_device_config("cpu")
    engines: dict[bool, FramePackEngine] = {}
    counters: dict[int, CallCounter] = {}
    baseline = Variant("none", None, False)
    if baseline not in grid:
        raise SystemExit("the grid must hold the uncached, uncompiled variant 'none'")
    grid = [baseline] + [v for v in grid if v != baseline]  # first in every round: the others compare with it
    baseline_hooks: frozenset[str] = frozenset()

    def not_here(variant: Variant) -> Callable[[CallCounter], str | None]:
        def check(counter: CallCounter) -> str | None:
            if variant.compile and not is_compiled(counter.transformer):
                return NO_COMPILE
            if variant.method != "none" and counter.hooks <= baseline_hooks:  # the request's cache did nothing
                return NO_CACHE
            return None
        return check

    def job(variant: Variant, tag: str) -> Run:
        if variant.compile not in engines:  # one engine, so one loaded transformer, per compile setting
            engines[variant.compile] = create_engine(source, config, timings_path=work / "timings.json",
                                                     runtime=RuntimeOptions(compile=variant.compile))
        return run_job(engines[variant.compile], job_request(variant, work, tag, steps, resolution, window, seconds),
                       counters, not_here(variant))

    warmup = job(baseline, "warmup")  # untimed: first-call allocations; also the determinism reference
    if warmup.error:
        raise SystemExit(f"the uncached job failed: {warmup.error}")
    baseline_hooks = warmup.cache_hooks
    transformer = next(iter(counters.values())).transformer
    parameters = sum(p.numel() for p in transformer.parameters())

    runs: dict[Variant, list[Run]] = {v: [] for v in grid}
    first_compiled: dict[Variant, Run] = {}
    unavailable: dict[Variant, str] = {}
    missing: dict[str, str] = {}  # a cache method, or "compile", that this branch lacks: no further run needed
    for round_ in range(rounds):
        for variant in grid:
            known = missing.get(variant.method) or (missing.get("compile") if variant.compile else None)
            if variant in unavailable or known:
                unavailable.setdefault(variant, known)
                continue
            if variant.compile and variant not in first_compiled:  # its compile warm-up, timed apart
                first_compiled[variant] = job(variant, f"{variant.label}-first")
            first = first_compiled.get(variant)
            run = first if first is not None and first.error else job(variant, f"{variant.label}-{round_}")
            if run.error is None:
                runs[variant].append(run)
                continue
            unavailable[variant] = run.error if run.error.startswith("n/a") else f"n/a ({run.error.splitlines()[0]})"
            if run.error in (NO_CACHE, NO_COMPILE):
                missing["compile" if run.error == NO_COMPILE else variant.method] = run.error

    default_engine = FramePackEngine(ModelStore(source, config))  # the engine's default path: no runtime options
    default_run = run_job(default_engine, job_request(baseline, work, "default-path", steps, resolution, window,
                                                      seconds), counters)

    import torch

    reference = runs[baseline]

    reference_latents = reference[0].latents
    reference_dit = statistics.median(r.dit_s for r in reference)
    deterministic = torch.equal(warmup.latents, reference_latents)
    default_equal = default_run.error is None and torch.equal(default_run.latents, reference_latents)

    print(f"Speed options: {size} random DiT ({parameters / 1e6:.1f}M parameters), {transformer.config.num_layers}"
          f"+{transformer.config.num_single_layers} blocks; job: {IMAGE.name} at resolution {resolution} "
          f"({warmup.latents.shape[-1] * 8}x{warmup.latents.shape[-2] * 8} px), window {window}, {seconds} s = "
          f"{warmup.sections} sections x {steps} steps, cfg 1, seed {SEED}; CPU fp32; {rounds} timed round(s), median\n")
    print(f"Machine: {machine()}\n")
    print("| method | threshold | compile | DiT s | speedup | calls skipped | rel-L2 vs uncached |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for variant in grid:
        threshold = "-" if variant.threshold is None else f"{variant.threshold:g}"
        compiled = "on" if variant.compile else "off"
        if variant in unavailable:
            print(f"| {variant.method} | {threshold} | {compiled} | {unavailable[variant]} | | | |")
            continue
        dit = statistics.median(r.dit_s for r in runs[variant])
        run = runs[variant][0]
        print(f"| {variant.method} | {threshold} | {compiled} | {dit:.2f} | x{reference_dit / dit:.2f} | "
              f"{skipped_text(run, variant.compile)} | {relative_l2(run.latents, reference_latents):.2e} |")
    for variant, first in first_compiled.items():
        if variant in unavailable or first.error:
            continue
        later = statistics.median(r.total_s for r in runs[variant])
        print(f"\nCompile warm-up, {variant.label}: first compiled job {first.total_s:.1f} s, later ones "
              f"{later:.1f} s: about {first.total_s - later:.1f} s of compilation"
              + "".join(f"\n  notice: {n}" for n in first.notices if "ompil" in n))
    print(f"\nUncached run bit-identical to a second uncached run: {'yes' if deterministic else 'NO'}")
    print("cache=none bit-identical to the engine's default path (FramePackEngine(ModelStore(...)), no runtime "
          f"options): {'yes' if default_equal else 'NO ' + (default_run.error or '')}")
    print(f"Bench wall time: {time.perf_counter() - bench_started:.0f} s")
    for counter in counters.values():
        counter.remove()
    return 0 if deterministic and default_equal else 1


if __name__ == "__main__":
    raise SystemExit(main())
