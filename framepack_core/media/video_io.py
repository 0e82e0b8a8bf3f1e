"""Pixel chunks in, a playable H.264 mp4 out, at a cost per section that does not grow with the video.

The reference app cross-fades every decoded section onto the whole pixel video kept in RAM and re-encodes the
entire mp4 after each section. That is O(length) memory and time per section: a two-minute 640 px video is about
17 GB of float32 pixels. Here we use one fact about the cross-fade instead: once a chunk has been blended in, only
the `overlap` frames at the growing edge (the front for the original "prepend" model, the tail for the F1
"append" model) can still change. Every other frame is final, so it is converted to 8 bits, encoded once into its
own small mp4 segment and forgotten. Only the edge stays in memory. Joining the segments is a remux (stream copy
of compressed packets, no decoding or encoding), which is cheap compared with encoding and only happens when a
playable file is asked for.

Besides the writer this module holds the small helpers around it: the cross-fade itself and the reference 8-bit
conversion. Probing and decoding mp4 files is ``framepack_core.media.video_probe`` (re-exported here).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import shutil
import tempfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Literal, Mapping, Sequence

import av
import numpy as np
import torch

from framepack_core.errors import OutputWriteError
from framepack_core.files import atomic_path
from framepack_core.media.video_probe import VideoInfo, probe_video, read_video_frames  # noqa: F401 - re-exported

logger = logging.getLogger(__name__)

Order = Literal["prepend", "append"]

# libx264 preset: "veryfast" encodes small sections in milliseconds and loses little at the CRFs people use.
DEFAULT_PRESET = "veryfast"
MIN_FRAME_SIDE = 16


# --------------------------------------------------------------------------------------------- blending


def soft_append(a: torch.Tensor, b: torch.Tensor, overlap: int) -> torch.Tensor:
    """Join `b` after `a` on the time axis (dim 2 of (B, C, T, H, W)), cross-fading `overlap` frames.

    Result: `a[:-n] ++ (w * a[-n:] + (1 - w) * b[:n]) ++ b[n:]` with `w = linspace(1, 0, n)` in `a`'s dtype,
    cast to `a`'s dtype and device, exactly as the reference app does, so blending piecewise here gives the
    same numbers as its whole-video chain.
    """
    if overlap < 1:
        raise ValueError(f"soft_append needs overlap >= 1, got {overlap}")
    if a.dim() != 5 or b.dim() != 5:
        raise ValueError(f"soft_append needs (B, C, T, H, W) tensors, got shapes {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape[2] < overlap or b.shape[2] < overlap:
        raise ValueError(
            f"soft_append needs both inputs to have at least overlap={overlap} frames, "
            f"got {a.shape[2]} and {b.shape[2]}"
        )
    w = torch.linspace(1, 0, overlap, dtype=a.dtype, device=a.device).view(1, 1, -1, 1, 1)
    blended = w * a[:, :, -overlap:] + (1 - w) * b[:, :, :overlap]
    return torch.cat([a[:, :, :-overlap], blended, b[:, :, overlap:]], dim=2).to(a)


def frames_to_uint8(pixels: torch.Tensor) -> np.ndarray:
    """(1, 3, T, H, W) floats in [-1, 1] -> (T, H, W, 3) uint8, the reference way (clamp, scale, truncate)."""
    if pixels.dim() != 5 or pixels.shape[0] != 1 or pixels.shape[1] != 3:
        raise ValueError(f"expected pixels of shape (1, 3, T, H, W), got {tuple(pixels.shape)}")
    x = torch.clamp(pixels.detach().to("cpu").float(), -1.0, 1.0) * 127.5 + 127.5
    x = x.to(torch.uint8)[0].permute(1, 2, 3, 0)  # C T H W -> T H W C
    return np.ascontiguousarray(x.numpy())


# --------------------------------------------------------------------------------------------- writing


def encode_segment(frames: np.ndarray, path: Path, *, fps: int, crf: int, preset: str = DEFAULT_PRESET) -> None:
    """Encode (T, H, W, 3) uint8 RGB frames as a standalone H.264 yuv420p mp4.

    yuv420p is forced even for CRF 0 (where libx264 would otherwise be happy with 4:4:4) because browsers only
    play 4:2:0. Every segment starts with its own IDR frame, which is what lets segments be joined by stream copy.
    """
    height, width = frames.shape[1:3]
    with av.open(str(path), "w", format="mp4") as container:
        # asm=0: with its SIMD kernels, libx264 (as bundled with PyAV 18) encoded identical frames differently from
        # run to run (seen at 64x48 and 144x112, several distinct files in 10 runs; one file with asm=0). The same
        # seed must give the same video, also after a resume, so we pay the plain-C speed: about 1.8 s instead of
        # 0.5 s per 36 frames at 640x608 on a 2-core CPU, small next to a section's minutes of sampling.
        options = {"crf": str(crf), "preset": preset, "x264-params": "asm=0"}
        stream = container.add_stream("libx264", rate=fps, options=options)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for rgb in frames:
            # PyAV converts rgb24 -> yuv420p with swscale, the same path torchvision's write_video takes.
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():  # flush delayed (B-frame) packets
            container.mux(packet)


def join_segments(segments: Sequence[Path], output_path: Path, *, faststart: bool = True,
                  metadata: Mapping[str, str] | None = None) -> Path:
    """Concatenate mp4 segments (in the given time order) into `output_path` by stream copy.

    `metadata`: container-level tags to write (the mp4 muxer keeps only the keys it knows, e.g. "comment"; see
    ``framepack_core.jobs.output_description``).

    Cost: reads and writes every compressed packet once, so O(total file size) in I/O but no decoding. The file
    is written to a temporary name in the same folder and atomically renamed, so an existing `output_path` is
    only ever replaced by a complete file. `faststart` moves the index to the front so browsers can start playing
    before the whole file arrives (one extra pass over the file).

    Timestamps: every segment starts with an IDR frame at its own pts 0; its pts are shifted by the end time of
    the segments before it, so presentation is continuous. Decode timestamps need one more step: with B-frames
    libx264 starts a segment's dts a reorder delay (2 frames) before its pts, but 1-2 frame segments get no
    delay, and naive shifting would then make dts go backwards at the join. So every segment's dts are moved to
    the largest delay among the segments (dts only get earlier, so dts <= pts still holds), which leaves one
    uniform dts spacing through the whole file and keeps the frame rate in the container exact.
    """
    if not segments:
        raise ValueError("join_segments needs at least one segment")
    timings = [_segment_timing(path) for path in segments]
    time_base = timings[0][0]
    if any(tb != time_base for tb, _, _ in timings):
        raise RuntimeError("segments have different time bases; they were not written by one writer")
    max_delay = max(delay for _, _, delay in timings)
    options = {"movflags": "+faststart"} if faststart else {}
    with atomic_path(output_path) as tmp_path:
        with av.open(str(tmp_path), "w", format="mp4", options=options) as out:
            out.metadata.update(metadata or {})  # before the first packet: the header is written with it
            out_stream = None
            reference: tuple | None = None
            offset = 0  # start of the segment being copied, in time_base ticks
            last_dts: int | None = None
            for segment, (_, first_pts, delay) in zip(segments, timings):
                with av.open(str(segment)) as inp:
                    in_stream = inp.streams.video[0]
                    ctx = in_stream.codec_context
                    params = (ctx.name, ctx.width, ctx.height, ctx.pix_fmt, bytes(ctx.extradata or b""))
                    if out_stream is None:
                        out_stream = out.add_stream_from_template(in_stream)
                        reference = params
                    elif params != reference:
                        # All segments come from one writer with fixed settings; a mismatch (e.g. different
                        # SPS/PPS) would silently corrupt decoding after the join, so refuse loudly.
                        raise RuntimeError(f"segment {segment} was encoded with different parameters than the first")
                    frame_ticks = _frame_ticks(in_stream)
                    pts_shift = offset - first_pts
                    dts_shift = pts_shift - (max_delay - delay)
                    end = offset
                    for packet in inp.demux(in_stream):
                        if not packet.size:  # the demuxer's end-of-stream flush packet
                            continue
                        packet.pts += pts_shift
                        packet.dts += dts_shift
                        if last_dts is not None and packet.dts <= last_dts:
                            # Cannot happen with aligned delays; refuse rather than write a file players choke on.
                            raise RuntimeError(f"decode timestamps of {segment} overlap the previous segment")
                        last_dts = packet.dts
                        end = max(end, packet.pts + (packet.duration or frame_ticks))
                        packet.stream = out_stream
                        out.mux(packet)
                    offset = end
    return output_path


def _segment_timing(path: Path) -> tuple[Fraction, int, int]:
    """(time base, pts of the first packet, its pts - dts decode delay) of an encoded segment.

    The first packet is the segment's IDR frame, the earliest presented one; its pts - dts is the encoder's
    reorder delay for that segment.
    """
    with av.open(str(path)) as inp:
        stream = inp.streams.video[0]
        for packet in inp.demux(stream):
            if packet.size:
                return stream.time_base, packet.pts, packet.pts - packet.dts
    raise RuntimeError(f"segment {path} holds no video packets")


def _frame_ticks(stream: av.video.stream.VideoStream) -> int:
    """One frame's duration in the stream's time base (a fallback for packets without a duration)."""
    rate = stream.average_rate or stream.guessed_rate
    return round(1 / (Fraction(rate) * stream.time_base)) if rate else 1


def _write_error(what: str, path: Path, exc: OSError) -> OutputWriteError:
    """Turn an OSError into a user-facing error with a hint that fits its cause."""
    code = getattr(exc, "errno", None)
    if code in (errno.ENOSPC, errno.EDQUOT):
        hint = f"Free some disk space on the drive holding '{path.parent}', or choose another output folder."
    elif code in (errno.EACCES, errno.EPERM, errno.EROFS):
        hint = f"Choose an output folder you can write to ('{path.parent}' is not writable)."
    else:
        hint = "Check that the output folder exists and is writable with free space, or choose another output folder."
    return OutputWriteError(f"Could not {what} '{path}': {exc}", hint)


@dataclass(frozen=True)
class SectionWritten:
    """What one `add_section` call did."""

    section_index: int  # 0-based, in generation order
    segment_path: Path | None  # None when no frame became final (e.g. a first chunk of exactly `overlap` frames)
    segment_frames: int  # frames encoded for this section (each frame is encoded once, ever)
    final_frames: int  # frames encoded so far, all segments
    pending_frames: int  # edge frames still held in memory because the next section may blend into them
    total_frames: int  # final + pending: the length of the reference app's video at this point


@dataclass(frozen=True)
class _Segment:
    path: Path
    frames: int


@dataclass(frozen=True)
class WriterState:
    """What a ``SectionVideoWriter`` needs to carry on in another process: its segments (file names in its work
    folder and frame counts, in creation order), the pending edge frames and the counters."""

    segments: tuple[tuple[str, int], ...]
    pending: torch.Tensor | None  # (1, 3, overlap, H, W) float, or None before the first section
    size: tuple[int, int] | None
    sections: int
    final_frames: int


class SectionVideoWriter:
    """Writes a growing video section by section; each section costs the same however long the video already is.

    "prepend" (original/inverted model): each chunk lies before the video so far in time, and its last `overlap`
    frames are blended with the video's first `overlap`. "append" (F1): each chunk lies after the video, its first
    `overlap` frames blended with the video's last. The pixels encoded equal the reference app's
    whole-video `soft_append` chain (given chunks of one dtype), frame for frame.

    Memory: the `overlap` pending edge frames only. Disk: one mp4 segment per section in `work_dir` until
    `finalize` joins them. Not thread-safe; one writer per job.
    """

    def __init__(
        self,
        output_path: Path,
        order: Order,
        overlap_frames: int,
        fps: int = 30,
        crf: int = 16,
        work_dir: Path | None = None,
        *,
        preset: str = DEFAULT_PRESET,
    ) -> None:
        if order not in ("prepend", "append"):
            raise ValueError(f"order must be 'prepend' or 'append', got {order!r}")
        if overlap_frames < 1:
            raise ValueError(f"overlap_frames must be >= 1, got {overlap_frames}")
        if not isinstance(fps, int) or fps < 1:
            raise ValueError(f"fps must be a positive integer, got {fps!r}")
        if not isinstance(crf, int) or not 0 <= crf <= 51:
            raise ValueError(f"crf must be an integer from 0 to 51, got {crf!r}")
        if crf == 0:
            # Lossless needs the High 4:4:4 Predictive profile even in yuv420p; many browsers refuse it.
            logger.warning("crf=0 gives lossless H.264 (High 4:4:4 Predictive profile), which some browsers cannot play")
        self.output_path = Path(output_path)
        self.order: Order = order
        self.overlap = overlap_frames
        self.fps = fps
        self.crf = crf
        self.preset = preset
        self._owns_work_dir = work_dir is None
        try:
            self.output_path.parent.mkdir(parents=True, exist_ok=True)
            if work_dir is None:
                # Hidden and next to the output: same disk as the final file, and easy to spot if left behind.
                prefix = f".{self.output_path.stem}.segments-"
                work_dir = Path(tempfile.mkdtemp(prefix=prefix, dir=self.output_path.parent))
            else:
                work_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _write_error("create the working folder for", self.output_path, exc) from exc
        self.work_dir = Path(work_dir)
        self._segments: list[_Segment] = []  # in creation order; time order depends on `order`
        self._pending: torch.Tensor | None = None  # (1, 3, overlap, H, W), the still-changeable edge
        self._size: tuple[int, int] | None = None
        self._sections = 0
        self._final_frames = 0
        self._state: Literal["open", "finalized", "discarded"] = "open"

    # -- state -----------------------------------------------------------------------------------------

    @property
    def sections_added(self) -> int:
        return self._sections

    @property
    def pending_frames(self) -> int:
        return 0 if self._pending is None else int(self._pending.shape[2])

    @property
    def total_frames(self) -> int:
        return self._final_frames + self.pending_frames

    def state(self) -> WriterState:
        """A copy of the writer's progress, for a section checkpoint (see ``open``)."""
        if self._state != "open":
            raise RuntimeError(f"state() called on a writer that is already {self._state}")
        return WriterState(segments=tuple((s.path.name, s.frames) for s in self._segments),
                           pending=None if self._pending is None else self._pending.clone(), size=self._size,
                           sections=self._sections, final_frames=self._final_frames)

    @classmethod
    def open(cls, output_path: Path, order: Order, overlap_frames: int, *, work_dir: Path | None = None,
             resume: WriterState | None = None, **options) -> SectionVideoWriter:
        """A writer for a new video, or with ``resume`` one that continues from that state.

        New: its segments go to ``work_dir`` (a job folder's) or, without one, to a hidden temporary folder next
        to the output. Resumed: the state's segments must be in ``work_dir``; segment files there that the state
        does not list (from a section that was being written when the process died) are deleted.
        """
        if resume is not None and work_dir is None:
            raise ValueError("resuming a writer needs the work_dir that holds its segments")
        writer = cls(output_path, order, overlap_frames, work_dir=work_dir, **options)
        if resume is not None:
            writer._restore(resume)
        return writer

    def _restore(self, state: WriterState) -> None:
        missing = [name for name, _ in state.segments if not (self.work_dir / name).is_file()]
        if missing:
            raise FileNotFoundError(f"the checkpoint's video segments {', '.join(missing)} are missing from "
                                    f"{self.work_dir}")
        listed = {name for name, _ in state.segments}
        for leftover in self.work_dir.glob("seg_*.mp4"):
            if leftover.name not in listed:
                leftover.unlink()
        self._segments = [_Segment(self.work_dir / name, frames) for name, frames in state.segments]
        self._pending = None if state.pending is None else state.pending.clone()
        self._size = None if state.size is None else (int(state.size[0]), int(state.size[1]))
        self._sections = state.sections
        self._final_frames = state.final_frames

    # -- writing ---------------------------------------------------------------------------------------

    def add_section(self, pixels: torch.Tensor) -> SectionWritten:
        """Blend a decoded chunk (1, 3, T, H, W) in [-1, 1] into the video and encode the frames that became final.

        If encoding fails the writer is left as it was before the call, so `finalize` still gives a playable
        video of the earlier sections.
        """
        if self._state != "open":
            raise RuntimeError(f"add_section called on a writer that is already {self._state}")
        self._check_chunk(pixels)
        n = self.overlap
        # CPU, like the reference (it decodes with .cpu()); also frees the caller's GPU tensor sooner.
        chunk = pixels.detach().to("cpu")
        if self._pending is None:
            merged = chunk
        elif self.order == "prepend":
            merged = soft_append(chunk, self._pending, n)
        else:
            merged = soft_append(self._pending, chunk, n)
        if self.order == "prepend":
            edge, final = merged[:, :, :n], merged[:, :, n:]
        else:
            edge, final = merged[:, :, -n:], merged[:, :, :-n]

        segment = self._encode(final, f"seg_{len(self._segments):05d}.mp4") if final.shape[2] else None

        # Commit only after the encode succeeded. clone(): a view would keep the whole chunk's storage alive.
        self._pending = edge.clone()
        if segment is not None:
            self._segments.append(segment)
            self._final_frames += segment.frames
        self._size = (int(chunk.shape[3]), int(chunk.shape[4]))
        index = self._sections
        self._sections += 1
        logger.debug(
            "section %d: encoded %d final frames, %d pending, %d total", index,
            segment.frames if segment else 0, self.pending_frames, self.total_frames,
        )
        return SectionWritten(
            section_index=index,
            segment_path=segment.path if segment else None,
            segment_frames=segment.frames if segment else 0,
            final_frames=self._final_frames,
            pending_frames=self.pending_frames,
            total_frames=self.total_frames,
        )

    def finalize(self, keep_segments: bool = False, metadata: Mapping[str, str] | None = None) -> Path:
        """Encode the pending edge and join all segments into `output_path`; also the way to salvage a cancelled
        or failed job. Calling it again after success returns the path; after a failed join it retries the join.
        `metadata`: container tags for the mp4 (see ``join_segments``).
        """
        if self._state == "finalized":
            return self.output_path
        if self._state == "discarded":
            raise RuntimeError("finalize called on a discarded writer")
        if self._sections == 0:
            raise RuntimeError("finalize called before any section was added: there is no video to write")
        if self._pending is not None:
            segment = self._encode(self._pending, f"seg_{len(self._segments):05d}.mp4")
            self._segments.append(segment)
            self._final_frames += segment.frames
            self._pending = None
        self._join(self._time_ordered(self._segments), self.output_path, metadata)
        self._state = "finalized"
        logger.info("wrote %s (%d frames, %d segments)", self.output_path, self._final_frames, len(self._segments))
        if not keep_segments:
            self._remove_segments()
        return self.output_path

    def write_snapshot(self, path: Path, metadata: Mapping[str, str] | None = None) -> Path:
        """Write a playable mp4 of everything so far to `path` without ending the writer.

        Cost: the pending edge is encoded into a throwaway segment, then every segment is remuxed, so this is
        O(video length) in I/O (no re-encoding of old frames). Call it for previews every few sections, not
        necessarily every section of a very long video.
        """
        if self._state != "open":
            raise RuntimeError(f"write_snapshot called on a writer that is already {self._state}")
        if self._sections == 0:
            raise RuntimeError("write_snapshot called before any section was added: there is no video to write")
        path = Path(path)
        segments = list(self._segments)
        throwaway = None
        try:
            if self._pending is not None:
                throwaway = self._encode(self._pending, "snapshot_pending.mp4")
                segments.append(throwaway)
            self._join(self._time_ordered(segments), path, metadata)
        finally:
            if throwaway is not None:
                with contextlib.suppress(OSError):
                    throwaway.path.unlink()
        return path

    def discard(self) -> None:
        """Abandon the job: delete the segments without writing a video. The writer cannot be used afterwards."""
        self._remove_segments()
        self._pending = None
        self._state = "discarded"

    # -- internals -------------------------------------------------------------------------------------

    def _remove_segments(self) -> None:
        if self._owns_work_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)
            return
        for segment in self._segments:  # a caller-given work dir may hold other things: remove only ours
            with contextlib.suppress(OSError):
                segment.path.unlink()
        with contextlib.suppress(OSError):
            self.work_dir.rmdir()  # only succeeds if now empty

    def _check_chunk(self, pixels: torch.Tensor) -> None:
        if pixels.dim() != 5 or pixels.shape[0] != 1 or pixels.shape[1] != 3:
            raise ValueError(f"expected a pixel chunk of shape (1, 3, T, H, W), got {tuple(pixels.shape)}")
        if not pixels.is_floating_point():
            raise ValueError(f"expected floating point pixels in [-1, 1], got dtype {pixels.dtype}")
        frames, height, width = (int(s) for s in pixels.shape[2:])
        if height % 2 or width % 2 or height < MIN_FRAME_SIDE or width < MIN_FRAME_SIDE:
            raise ValueError(
                f"frame size {width}x{height} cannot be encoded: H.264 yuv420p needs even width and height "
                f"of at least {MIN_FRAME_SIDE}"
            )
        if self._size is not None and (height, width) != self._size:
            raise ValueError(f"frame size changed from {self._size[1]}x{self._size[0]} to {width}x{height}")
        if frames < self.overlap:
            raise ValueError(f"a chunk needs at least overlap={self.overlap} frames, got {frames}")

    def _encode(self, pixels: torch.Tensor, name: str) -> _Segment:
        path = self.work_dir / name
        frames = frames_to_uint8(pixels)
        try:
            encode_segment(frames, path, fps=self.fps, crf=self.crf, preset=self.preset)
        except OSError as exc:  # includes av.error.OSError and friends (ENOSPC, EACCES, ...)
            with contextlib.suppress(OSError):
                path.unlink()
            raise _write_error("write a video segment to", path, exc) from exc
        return _Segment(path=path, frames=len(frames))

    def _join(self, segments: Sequence[_Segment], path: Path, metadata: Mapping[str, str] | None = None) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            join_segments([s.path for s in segments], path, metadata=metadata)
        except OSError as exc:
            raise _write_error("write the video", path, exc) from exc

    def _time_ordered(self, segments: Sequence[_Segment]) -> list[_Segment]:
        # Prepend: every new segment lies before all earlier ones in time.
        return list(segments) if self.order == "append" else list(reversed(segments))
