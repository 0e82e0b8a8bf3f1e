"""Benchmark (b): per-section wall time on a long tiny-model run, split into DiT, VAE decode and mp4 write.

FramePack's packed context has the same size in every section (benchmark (a)), and this project's writer encodes
each frame once (the official app re-encodes the whole video after every section). So section 2 and section N
of a long video should cost the same. This runs the real engine on the tiny model set for a 40-section video and
reads the per-section timings the engine reports in its ``SectionFinished`` events.

Reproduce (from the repository root; about 1 minute on 2 CPU cores at the default base resolution 64)::

    python -m bench.section_times                       # 40 sections, original model
    python -m bench.section_times --model f1 --sections 40
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(model: str, sections: int, steps: int, resolution: int, models_dir: Path | None) -> list:
    from framepack_core.events import JobFinished, SectionFinished
    from framepack_core.models.devices import resolve_device_config
    from framepack_core.models.loading import ModelSource
    from framepack_core.models.store import ModelStore
    from framepack_core.models.tiny import build_tiny_models
    from framepack_core.pipeline.engine import FramePackEngine
    from framepack_core.request import GenerationRequest

    with tempfile.TemporaryDirectory() as work:
        root = build_tiny_models(models_dir or Path(work) / "tiny")
        engine = FramePackEngine(ModelStore(ModelSource(models_dir=root), resolve_device_config("cpu")))
        # window 9 -> 36 frames per section: seconds = sections * 36 / 30
        request = GenerationRequest(image=REPO / "assets" / "chelsea_landscape.jpg", prompt="a cat", model=model,
                                    seconds=sections * 36 / 30, steps=steps, resolution=resolution,
                                    cache="none", output=Path(work) / "long.mp4")
        started = time.perf_counter()
        finished = [e for e in engine.generate(request) if isinstance(e, (SectionFinished, JobFinished))]
        total = time.perf_counter() - started
    done = [e for e in finished if isinstance(e, SectionFinished)]
    final = finished[-1]
    if not isinstance(final, JobFinished) or len(done) != sections:
        raise SystemExit(f"run did not finish: {final}")
    print(f"{model}: {sections} sections, {final.video_frames} frames ({final.width}x{final.height}), "
          f"{steps} steps, total {total:.1f} s\n")
    return done


def _frame_size(resolution: int) -> tuple[int, int]:
    from framepack_core.media.buckets import find_nearest_bucket

    height, width = find_nearest_bucket(300, 451, resolution=resolution)  # chelsea_landscape.jpg
    return width, height


def report(done: list) -> bool:
    print("| section | DiT s | decode s | write s | total s |")
    print("|---:|---:|---:|---:|---:|")
    for e in done:
        if e.section in (1, 2, 3, len(done) // 2, len(done) - 1, len(done)):
            print(f"| {e.section} | {e.dit_s:.3f} | {e.decode_s:.3f} | {e.write_s:.3f} | "
                  f"{e.dit_s + e.decode_s + e.write_s:.3f} |")

    def med(part: str, picks: list) -> float:
        return statistics.median(getattr(e, part) for e in picks)

    # Medians over the first and the last five middle sections, so one noisy sample does not decide.
    middle = done[1:-1]
    early, late = middle[:5], middle[-5:]
    print("\n| part | sections 2-6 median s | last 5 middle median s | late / early |")
    print("|---|---:|---:|---:|")
    flat = True
    for part in ("dit_s", "decode_s", "write_s"):
        a, b = med(part, early), med(part, late)
        ratio = b / a if a else float("nan")
        flat &= ratio < 1.5
        print(f"| {part[:-2]} | {a:.3f} | {b:.3f} | {ratio:.2f} |")
    return flat


def reference_rewrite_cost(done: list, width: int, height: int) -> None:
    """What the official app's writer would pay at sections 2 and N: re-encoding the whole video so far."""
    import numpy as np

    from framepack_core.media.video_io import encode_segment

    rng = np.random.default_rng(0)
    print("\n| section | frames so far | re-encode whole video s (official way) | this writer s |")
    print("|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as work:
        for e in (done[1], done[-1]):
            frames = rng.integers(0, 255, (e.video_frames, height, width, 3), dtype=np.uint8)
            started = time.perf_counter()
            encode_segment(frames, Path(work) / "whole.mp4", fps=30, crf=16)
            print(f"| {e.section} | {e.video_frames} | {time.perf_counter() - started:.3f} | {e.write_s:.3f} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["original", "f1"], default="original")
    parser.add_argument("--sections", type=int, default=40)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--models-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    done = run(args.model, args.sections, args.steps, args.resolution, args.models_dir)
    flat = report(done)
    reference_rewrite_cost(done, *_frame_size(args.resolution))
    print(f"\nflat (late/early < 1.5 for every part): {flat}")
    return 0 if flat else 1


if __name__ == "__main__":
    raise SystemExit(main())
