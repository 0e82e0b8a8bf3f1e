"""A clip to extend: decoded with PyAV (any container and codec it reads: mp4, mov, webm, ...), resampled to the
app's 30 fps, with every way it can be unusable reported as ``InvalidInputError`` naming ``extend_video`` or
``context_frames``. The source file is only ever opened for reading."""

from __future__ import annotations

import collections
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from framepack_core.errors import InvalidInputError
from framepack_core.files import atomic_path
from framepack_core.sampling.packing import HISTORY_CONTEXT_FRAMES
from framepack_core.sampling.schedule import FPS, VAE_TEMPORAL_COMPRESSION

# The causal VAE turns 4k+1 frames into k+1 latents: the 19 latents of the 1x/2x/4x context are 73 frames.
DEFAULT_CONTEXT_FRAMES = (HISTORY_CONTEXT_FRAMES - 1) * VAE_TEMPORAL_COMPRESSION + 1
_STILL_IMAGE_FORMATS = ("image2", "png_pipe", "jpeg_pipe", "webp_pipe", "bmp_pipe", "gif", "tiff_pipe")
_HINT = "Give a video file (mp4, mov or webm) that a player can open."


@dataclass(frozen=True)
class ExtendClip:
    """The part of a clip a job uses: its last frames at 30 fps (the context), and what the messages need."""

    path: Path
    context: np.ndarray  # (T, H, W, 3) uint8 RGB, the last T frames at 30 fps; T = 4k+1
    frame_count: int  # of the whole clip at 30 fps
    source_fps: float
    notes: tuple[str, ...] = ()

    @property
    def last_frame(self) -> np.ndarray:
        return self.context[-1]


def usable_context_frames(frames: int) -> int:
    """The most frames up to ``frames`` that the causal VAE encodes without dropping any (4k+1)."""
    return (frames - 1) // VAE_TEMPORAL_COMPRESSION * VAE_TEMPORAL_COMPRESSION + 1


def read_extend_clip(path: Path, context_frames: int | None) -> ExtendClip:
    """Decode ``path`` once, keeping only its last frames: ``context_frames`` (None: ``DEFAULT_CONTEXT_FRAMES``,
    or the whole clip when it is shorter, with a note), trimmed to 4k+1."""
    path = Path(path)
    asked = DEFAULT_CONTEXT_FRAMES if context_frames is None else int(context_frames)
    kept: collections.deque[np.ndarray] = collections.deque(maxlen=asked)
    count = 0
    for frame in clip_frames(path):
        kept.append(frame)
        count += 1
    fps = probe_clip_fps(path)
    if count < asked and context_frames is not None:
        raise InvalidInputError("context_frames", f"{context_frames} frames is more than {path} has "
                                f"({count} at {FPS} fps)",
                                f"Use at most {count}, or leave it empty for as much context as the clip has.")
    notes = []
    if count < asked:
        notes.append(f"{path} has {count} frames at {FPS} fps, fewer than the {asked} of a full context: "
                     "the rest of the model's context stays empty, as at the start of a new video")
    used = usable_context_frames(len(kept))
    if used != asked and context_frames is not None:
        notes.append(f"the context uses the last {used} frames ({context_frames} rounded down to 4k+1 for the "
                     "VAE's 4x time compression)")
    context = np.stack(list(kept)[len(kept) - used:])
    if abs(fps - FPS) > 0.01:
        notes.append(f"{path} plays at {fps:g} fps; its frames are resampled to {FPS} fps")
    return ExtendClip(path, context, count, fps, tuple(notes))


def clip_frames(path: Path, fps: int = FPS) -> Iterator[np.ndarray]:
    """Every frame of the clip's first video stream as (H, W, 3) uint8 RGB, resampled to ``fps`` (each output
    time shows the source frame on screen then). ``InvalidInputError("extend_video")`` for anything that is not
    a decodable video, also when decoding fails part way."""
    path = Path(path)
    container = _open(path)
    with container:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or Fraction(fps)
        tick = Fraction(stream.time_base) if stream.time_base else Fraction(1, fps)
        step = Fraction(1, fps)
        # Container timestamps are rounded (webm: to the millisecond); half a frame of slack absorbs that.
        slack = min(step, 1 / Fraction(rate)) / 2
        emitted = 0
        first_pts = previous_pts = None
        previous = None
        try:
            for frame in container.decode(stream):
                pts = frame.pts if frame.pts is not None else (previous_pts or 0) + int(1 / (rate * tick))
                if first_pts is None:
                    first_pts = pts
                image = frame.to_ndarray(format="rgb24")
                if previous is not None:
                    # The previous frame is on screen until this one: emit every output time before it.
                    until = (pts - first_pts) * tick - slack
                    while emitted * step < until:
                        yield previous
                        emitted += 1
                previous, previous_pts = image, pts
        except av.error.FFmpegError as error:
            raise InvalidInputError("extend_video", f"{path} is damaged: decoding stopped after {emitted} "
                                    f"frames ({error.strerror or error})", _HINT) from None
        if previous is None:
            raise InvalidInputError("extend_video", f"{path} holds no video frames", _HINT)
        until = (previous_pts - first_pts) * tick + 1 / Fraction(rate) - slack
        while emitted * step < until or emitted == 0:
            yield previous
            emitted += 1


def probe_clip_fps(path: Path) -> float:
    container = _open(Path(path))
    with container:
        stream = container.streams.video[0]
        return float(stream.average_rate or stream.guessed_rate or FPS)


def _open(path: Path) -> av.container.InputContainer:
    """The clip's container, its first video stream checked to be decodable."""
    if not path.exists():
        raise InvalidInputError("extend_video", f"{path} does not exist", "Check the path of the clip to extend.")
    if path.is_dir():
        raise InvalidInputError("extend_video", f"{path} is a folder", "Give the video file itself.")
    try:
        container = av.open(str(path), mode="r")
    except av.error.FFmpegError as error:
        raise InvalidInputError("extend_video", f"{path} is not a video that can be read: it is damaged or "
                                f"not a video file ({error.strerror or error})", _HINT) from None
    except OSError as error:
        raise InvalidInputError("extend_video", f"cannot read {path}: {error.strerror or error}") from None
    if container.format.name in _STILL_IMAGE_FORMATS or not container.streams.video:
        container.close()
        what = "a still image" if container.format.name in _STILL_IMAGE_FORMATS else "a file without a video stream"
        raise InvalidInputError("extend_video", f"{path} is {what}, not a video",
                                "Give a video file; a single image goes in the start image instead.")
    stream = container.streams.video[0]
    if stream.codec_context is None:
        container.close()
        raise InvalidInputError("extend_video", f"{path} uses a video codec that cannot be decoded here", "Convert it to H.264 or VP9, e.g. `ffmpeg -i IN -c:v libx264 OUT.mp4`.")
    return container


def write_last_frame(clip: Path, folder: Path) -> Path:
    """The clip's last frame as a PNG in ``folder``: the start image a job uses when none is given. The same clip
    gives the same file, byte for byte, so a spec's image SHA-256 can be checked against it again."""
    import hashlib

    from PIL import Image

    last = None
    for last in clip_frames(clip):
        pass
    assert last is not None  # clip_frames raises for a clip without frames
    folder.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(Path(clip).read_bytes()).hexdigest()[:12]
    target = folder / f"{Path(clip).stem[:40]}.{digest}.last-frame.png"
    with atomic_path(target) as temporary:
        Image.fromarray(last).save(temporary, format="PNG")
    return target
