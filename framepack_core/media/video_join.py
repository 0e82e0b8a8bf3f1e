"""An extended video "joined": the source clip's frames, re-encoded at the job's size and frame rate, followed by
the generated part, in one mp4. The generated part is not re-encoded: the clip becomes one more segment, encoded
with the section writer's settings, and the two are joined by stream copy (``video_io.join_segments``)."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import av
import numpy as np

from framepack_core.media.buckets import resize_and_center_crop
from framepack_core.media.video_input import clip_frames
from framepack_core.media.video_io import DEFAULT_PRESET, join_segments
from framepack_core.sampling.schedule import FPS


def encode_frame_stream(frames: Iterable[np.ndarray], path: Path, *, fps: int, crf: int) -> int:
    """``video_io.encode_segment`` for frames that arrive one at a time (a long clip never sits in memory whole);
    the same encoder settings, so the result joins with the writer's segments. Returns the frame count."""
    count = 0
    with av.open(str(path), "w", format="mp4") as container:
        stream = None
        for rgb in frames:
            if stream is None:
                # The section writer's settings (asm=0 included: see encode_segment), so the SPS/PPS match.
                options = {"crf": str(crf), "preset": DEFAULT_PRESET, "x264-params": "asm=0"}
                stream = container.add_stream("libx264", rate=fps, options=options)
                stream.width, stream.height, stream.pix_fmt = rgb.shape[1], rgb.shape[0], "yuv420p"
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")):
                container.mux(packet)
            count += 1
        if stream is not None:
            for packet in stream.encode():
                container.mux(packet)
    return count


def _without_last(frames: Iterable[np.ndarray]) -> Iterable[np.ndarray]:
    previous = None
    for frame in frames:
        if previous is not None:
            yield previous
        previous = frame


def join_clip_before(clip: Path, video: Path, output: Path, *, crf: int, drop_last_clip_frame: bool,
                     metadata: Mapping[str, str] | None = None) -> int:
    """Write ``output``: every frame of ``clip`` (at 30 fps, resized and centre-cropped to ``video``'s size), then
    ``video``'s frames. ``drop_last_clip_frame`` when ``video`` starts with the clip's last frame itself. ``clip``
    is only read; ``output`` may be ``video`` (it is replaced atomically). Returns the clip frames written."""
    with av.open(str(video)) as container:
        context = container.streams.video[0].codec_context
        height, width = context.height, context.width
    resized = (resize_and_center_crop(frame, target_height=height, target_width=width) for frame in clip_frames(clip))
    if drop_last_clip_frame:
        resized = _without_last(resized)
    with tempfile.TemporaryDirectory(prefix=".join-", dir=Path(output).parent) as work:
        segment = Path(work) / "clip.mp4"
        count = encode_frame_stream(resized, segment, fps=FPS, crf=crf)
        segments = [segment, Path(video)] if count else [Path(video)]
        join_segments(segments, Path(output), metadata=metadata)
        with contextlib.suppress(OSError):
            segment.unlink()
    return count
