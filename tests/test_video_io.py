"""Section-by-section mp4 writing: same pixels as the reference whole-video chain, each frame encoded once."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from framepack_core.errors import OutputWriteError
from framepack_core.media import video_io
from framepack_core.media.video_io import (
    SectionVideoWriter,
    frames_to_uint8,
    probe_video,
    read_video_frames,
    soft_append,
)

H, W = 32, 48


def chunk(frames: int, seed: int) -> torch.Tensor:
    """A smooth (1, 3, T, H, W) chunk, different per seed, slightly beyond [-1, 1] so clamping matters.

    Smooth because yuv420p halves chroma resolution: noise would make every comparison with raw RGB noisy.
    """
    t = torch.arange(frames, dtype=torch.float32).view(1, 1, -1, 1, 1)
    y = torch.arange(H, dtype=torch.float32).view(1, 1, 1, -1, 1)
    x = torch.arange(W, dtype=torch.float32).view(1, 1, 1, 1, -1)
    c = torch.arange(3, dtype=torch.float32).view(1, -1, 1, 1, 1)
    return 1.05 * torch.sin(x / 17 + y / 13 + t / 9 + 1.7 * seed + 0.4 * c)


def chunk_sizes(order: str, window: int, sections: int) -> list[int]:
    """Pixel frames per decoded chunk, as the official apps produce them."""
    middle = 8 * window - 3  # 2 * window latents
    if order == "prepend":  # first: window latents; last: 2 * window + 1 latents (start frame included)
        return [4 * window - 3] + [middle] * (sections - 2) + [4 * (2 * window + 1) - 3]
    return [4 * (window + 1) - 3] + [middle] * (sections - 1)  # F1: first chunk includes the start latent


def reference_chain(chunks: list[torch.Tensor], order: str, overlap: int) -> torch.Tensor:
    """What the reference app keeps in RAM: the whole video, cross-faded chunk by chunk."""
    video = chunks[0]
    for current in chunks[1:]:
        video = soft_append(current, video, overlap) if order == "prepend" else soft_append(video, current, overlap)
    return video


@pytest.fixture
def encoder_calls(monkeypatch: pytest.MonkeyPatch) -> list[np.ndarray]:
    """Record the frames handed to the encoder, call by call (still encoding for real)."""
    calls: list[np.ndarray] = []
    real = video_io.encode_segment

    def recording(frames: np.ndarray, path: Path, **kwargs) -> None:
        calls.append(frames.copy())
        real(frames, path, **kwargs)

    monkeypatch.setattr(video_io, "encode_segment", recording)
    return calls


def write_all(path: Path, order: str, overlap: int, sizes: list[int], crf: int) -> list[video_io.SectionWritten]:
    writer = SectionVideoWriter(path, order, overlap, crf=crf)
    results = [writer.add_section(chunk(n, seed)) for seed, n in enumerate(sizes)]
    writer.finalize()
    return results


def decoded_pts(path: Path) -> list[int]:
    with av.open(str(path)) as container:
        return [frame.pts for frame in container.decode(video=0)]


# --------------------------------------------------------------------------------------------- soft_append


@pytest.mark.parametrize("overlap", [1, 5, 33])
def test_soft_append_matches_direct_formula(overlap: int) -> None:
    torch.manual_seed(0)
    a, b = torch.randn(1, 3, overlap + 4, 4, 6), torch.randn(1, 3, overlap + 7, 4, 6)
    w = torch.linspace(1, 0, overlap).view(1, 1, -1, 1, 1)
    blended = w * a[:, :, -overlap:] + (1 - w) * b[:, :, :overlap]
    expected = torch.cat([a[:, :, :-overlap], blended, b[:, :, overlap:]], dim=2)
    out = soft_append(a, b, overlap)
    assert out.shape[2] == a.shape[2] + b.shape[2] - overlap
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_soft_append_refuses_inputs_shorter_than_overlap_and_bad_overlap() -> None:
    a = torch.zeros(1, 3, 4, 2, 2)
    with pytest.raises(ValueError, match="at least overlap=5"):
        soft_append(a, torch.zeros(1, 3, 9, 2, 2), 5)
    with pytest.raises(ValueError, match="overlap >= 1"):
        soft_append(a, a, 0)


def test_frames_to_uint8_clamps_scales_and_truncates_like_reference() -> None:
    values = torch.tensor([-1.5, -1.0, 0.0, 0.999, 1.0, 2.0])
    pixels = values.view(1, 1, -1, 1, 1).expand(1, 3, -1, 2, 2)
    out = frames_to_uint8(pixels)
    assert out.shape == (6, 2, 2, 3) and out.dtype == np.uint8
    assert out[:, 0, 0, 0].tolist() == [0, 0, 127, 254, 255, 255]


# --------------------------------------------------------------------------------------------- the writer


@pytest.mark.parametrize("order", ["prepend", "append"])
@pytest.mark.parametrize("window", [9, 2])
def test_sections_give_reference_frames_exactly(
    tmp_path: Path, encoder_calls: list[np.ndarray], order: str, window: int
) -> None:
    overlap = 4 * window - 3
    sizes = chunk_sizes(order, window, sections=4)
    out = tmp_path / "video.mp4"
    results = write_all(out, order, overlap, sizes, crf=0)

    reference = reference_chain([chunk(n, seed) for seed, n in enumerate(sizes)], order, overlap)
    expected_frames = {9: 145, 2: 33}[window]
    assert reference.shape[2] == expected_frames
    assert results[-1].total_frames == expected_frames

    # What went into the encoder, put in time order, is the reference video to the bit.
    segments = encoder_calls if order == "append" else encoder_calls[::-1]
    np.testing.assert_array_equal(np.concatenate(segments), frames_to_uint8(reference))

    info = probe_video(out)
    assert (info.frame_count, info.width, info.height, info.fps) == (expected_frames, W, H, 30.0)
    assert (info.codec, info.pix_fmt) == ("h264", "yuv420p")

    # The decoded file matches the reference chain encoded in one go (crf 0: only the RGB<->yuv420p round trip).
    whole = tmp_path / "whole.mp4"
    video_io.encode_segment(frames_to_uint8(reference), whole, fps=30, crf=0)
    decoded, decoded_whole = read_video_frames(out), read_video_frames(whole)
    assert decoded.shape == decoded_whole.shape == (expected_frames, H, W, 3)
    assert np.abs(decoded.astype(int) - decoded_whole).mean() < 0.5
    assert np.abs(decoded.astype(int) - frames_to_uint8(reference)).mean() < 3


@pytest.mark.parametrize(
    ("order", "first", "per_section", "last", "finalize"),
    [("prepend", 33, 36, 40, 33), ("append", 37, 36, 36, 33)],
)
def test_each_section_encodes_only_frames_that_became_final(
    tmp_path: Path, encoder_calls: list[np.ndarray], order: str, first: int, per_section: int, last: int, finalize: int
) -> None:
    sizes = chunk_sizes(order, 9, sections=6)
    writer = SectionVideoWriter(tmp_path / "v.mp4", order, 33, crf=16)
    results = [writer.add_section(chunk(n, seed)) for seed, n in enumerate(sizes)]
    first_encoded = sizes[0] - 33

    assert [r.segment_frames for r in results] == [first_encoded] + [per_section] * 4 + [last]
    # Frames handed to the encoder per call: the same count each section, never old frames again.
    assert [len(f) for f in encoder_calls] == ([first_encoded] if first_encoded else []) + [per_section] * 4 + [last]
    assert all(r.pending_frames == 33 for r in results)
    assert [r.total_frames for r in results] == list(np.cumsum([first] + [n - 33 for n in sizes[1:]]))

    writer.finalize()
    assert len(encoder_calls[-1]) == finalize
    assert sum(len(f) for f in encoder_calls) == results[-1].total_frames == probe_video(tmp_path / "v.mp4").frame_count


@pytest.mark.parametrize("order", ["prepend", "append"])
def test_writer_copies_the_edge_so_callers_may_reuse_their_buffers(
    tmp_path: Path, encoder_calls: list[np.ndarray], order: str
) -> None:
    # Holding a view into the caller's chunk would also keep the whole chunk in memory, not just the edge.
    sizes = chunk_sizes(order, 2, sections=3)
    writer = SectionVideoWriter(tmp_path / "v.mp4", order, 5)
    for seed, n in enumerate(sizes):
        buffer = chunk(n, seed)
        writer.add_section(buffer)
        buffer.fill_(0.5)  # the caller reuses its buffer
    writer.finalize()
    reference = reference_chain([chunk(n, seed) for seed, n in enumerate(sizes)], order, 5)
    segments = encoder_calls if order == "append" else encoder_calls[::-1]
    np.testing.assert_array_equal(np.concatenate(segments), frames_to_uint8(reference))


def test_joined_file_plays_continuously_with_b_frames_and_tiny_segments(tmp_path: Path) -> None:
    # crf 16 uses B-frames; chunks one or two frames longer than the overlap give 1-2 frame segments, which
    # libx264 encodes without B-frame delay while longer ones have it: the join must still be continuous.
    sizes = [5, 6, 7, 6, 7, 13, 17]
    out = tmp_path / "v.mp4"
    write_all(out, "prepend", 5, sizes, crf=16)
    expected = 5 + sum(n - 5 for n in sizes[1:])

    pts = decoded_pts(out)
    assert len(pts) == expected == probe_video(out).frame_count
    assert all(b > a for a, b in zip(pts, pts[1:])), "decoded pts must be strictly increasing"
    assert len(set(np.diff(pts))) == 1, "frames must be evenly spaced (no gaps or overlaps at joins)"
    with av.open(str(out)) as container:
        dts = [p.dts for p in container.demux(video=0) if p.size]
    assert all(b > a for a, b in zip(dts, dts[1:]))
    assert probe_video(out).fps == 30.0


def test_stream_copy_join_decodes_to_the_same_frames_as_its_segments(tmp_path: Path) -> None:
    out = tmp_path / "v.mp4"
    writer = SectionVideoWriter(out, "append", 5, crf=20)
    for seed, n in enumerate([9, 13, 6, 13]):
        writer.add_section(chunk(n, seed))
    writer.finalize(keep_segments=True)
    segments = sorted(writer.work_dir.glob("seg_*.mp4"))
    assert len(segments) == 5
    np.testing.assert_array_equal(read_video_frames(out), np.concatenate([read_video_frames(s) for s in segments]))


def test_finalize_after_one_section_writes_the_chunk(tmp_path: Path) -> None:
    out = tmp_path / "v.mp4"
    writer = SectionVideoWriter(out, "prepend", 33)
    writer.add_section(chunk(33, 0))
    assert writer.finalize() == out
    info = probe_video(out)
    assert (info.frame_count, info.codec, info.pix_fmt, info.profile) == (33, "h264", "yuv420p", "High")
    assert not writer.work_dir.exists()
    assert writer.finalize() == out  # idempotent


def test_finalize_without_sections_is_a_clear_error(tmp_path: Path) -> None:
    writer = SectionVideoWriter(tmp_path / "v.mp4", "append", 33)
    with pytest.raises(RuntimeError, match="before any section"):
        writer.finalize()
    assert not (tmp_path / "v.mp4").exists()


def test_write_snapshot_gives_video_so_far_and_writer_goes_on(tmp_path: Path) -> None:
    sizes = chunk_sizes("prepend", 2, sections=4)
    writer = SectionVideoWriter(tmp_path / "v.mp4", "prepend", 5, crf=0)
    writer.add_section(chunk(sizes[0], 0))
    writer.add_section(chunk(sizes[1], 1))
    snap = writer.write_snapshot(tmp_path / "preview.mp4")
    so_far = reference_chain([chunk(sizes[0], 0), chunk(sizes[1], 1)], "prepend", 5)
    assert probe_video(snap).frame_count == so_far.shape[2] == writer.total_frames
    assert np.abs(read_video_frames(snap).astype(int) - frames_to_uint8(so_far)).mean() < 3

    writer.add_section(chunk(sizes[2], 2))
    writer.add_section(chunk(sizes[3], 3))
    assert probe_video(writer.finalize()).frame_count == 33
    assert sorted(p.name for p in tmp_path.iterdir()) == ["preview.mp4", "v.mp4"]  # no temp files left


def test_keep_segments_and_caller_work_dir(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "other.txt").write_text("not ours")
    writer = SectionVideoWriter(tmp_path / "v.mp4", "append", 5, work_dir=work)
    writer.add_section(chunk(9, 0))
    writer.finalize()
    assert [p.name for p in work.iterdir()] == ["other.txt"]  # our segments gone, the caller's file kept


@pytest.mark.parametrize(("height", "width"), [(33, 48), (32, 47), (14, 48)])
def test_odd_or_tiny_frame_sizes_are_refused(tmp_path: Path, height: int, width: int) -> None:
    writer = SectionVideoWriter(tmp_path / "v.mp4", "append", 5)
    with pytest.raises(ValueError, match="even width and height"):
        writer.add_section(torch.zeros(1, 3, 9, height, width))


def test_chunk_shorter_than_overlap_or_resized_is_refused(tmp_path: Path) -> None:
    writer = SectionVideoWriter(tmp_path / "v.mp4", "append", 5)
    with pytest.raises(ValueError, match="at least overlap=5"):
        writer.add_section(torch.zeros(1, 3, 4, H, W))
    writer.add_section(torch.zeros(1, 3, 9, H, W))
    with pytest.raises(ValueError, match="frame size changed"):
        writer.add_section(torch.zeros(1, 3, 9, H, W + 2))


# --------------------------------------------------------------------------------------------- write failures


def test_disk_full_during_a_section_raises_output_write_error_and_loses_nothing_already_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "v.mp4"
    out.write_bytes(b"previous video")
    writer = SectionVideoWriter(out, "append", 5, crf=0)
    writer.add_section(chunk(9, 0))

    def disk_full(*args, **kwargs) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(video_io, "encode_segment", disk_full)
    with pytest.raises(OutputWriteError) as info:
        writer.add_section(chunk(13, 1))
    assert "No space left" in info.value.message and "disk space" in info.value.hint
    assert out.read_bytes() == b"previous video"

    # The failed section left no trace: salvaging gives exactly the first section.
    monkeypatch.undo()
    assert writer.total_frames == 9
    writer.finalize()
    assert probe_video(out).frame_count == 9


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full for a real ENOSPC")
def test_disk_full_while_joining_keeps_existing_output_intact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "v.mp4"
    out.write_bytes(b"previous video")
    writer = SectionVideoWriter(out, "prepend", 5, crf=0)
    writer.add_section(chunk(5, 0))
    writer.add_section(chunk(13, 1))

    real_open = av.open

    def open_on_full_disk(file, mode="r", **kwargs):
        # The joined file (a .part next to the output) goes to /dev/full: FFmpeg's own writes fail with ENOSPC.
        if mode == "w" and str(file).endswith(".part"):
            return real_open("/dev/full", mode, **kwargs)
        return real_open(file, mode, **kwargs)

    monkeypatch.setattr(video_io.av, "open", open_on_full_disk)
    with pytest.raises(OutputWriteError) as info:
        writer.finalize()
    assert "disk space" in info.value.hint
    assert out.read_bytes() == b"previous video"
    assert not list(tmp_path.glob("*.part")), "the partial file must be removed"

    monkeypatch.undo()  # space freed: retrying finalize writes the whole video
    writer.finalize()
    assert probe_video(out).frame_count == 13
