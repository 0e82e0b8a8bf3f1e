"""Reading mp4 files: a video's properties from its container (no decoding), and all its frames decoded."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np


@dataclass(frozen=True)
class VideoInfo:
    """What a video file holds, read from the container (no decoding)."""

    frame_count: int
    width: int
    height: int
    fps: float
    codec: str
    pix_fmt: str
    profile: str | None
    # The container's duration. It can be a fraction of a millisecond short of frame_count / fps: FFmpeg's mp4
    # muxer trims the last sample's duration when the last decoded frame is not the last shown (B-frames).
    duration_s: float


def probe_video(path: Path) -> VideoInfo:
    """Read the first video stream's properties. Frame count is the mp4's sample count, i.e. exact."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        ctx = stream.codec_context
        frames = stream.frames
        if not frames:  # containers without a sample table: count packets (still no decoding)
            frames = sum(1 for packet in container.demux(stream) if packet.size)
        rate = stream.average_rate or stream.guessed_rate or 0
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        else:
            duration = (container.duration or 0) / av.time_base
        return VideoInfo(
            frame_count=int(frames),
            width=ctx.width,
            height=ctx.height,
            fps=float(rate),
            codec=ctx.name,
            pix_fmt=ctx.pix_fmt or "",
            profile=ctx.profile,
            duration_s=duration,
        )


def read_video_frames(path: Path) -> np.ndarray:
    """Decode every frame of the first video stream as (T, H, W, 3) uint8 RGB."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
        if not frames:
            return np.zeros((0, stream.codec_context.height, stream.codec_context.width, 3), dtype=np.uint8)
        return np.stack(frames)
