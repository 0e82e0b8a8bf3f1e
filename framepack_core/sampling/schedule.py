"""How many sections a video needs, and in which order the original model visits them.

These are the official app's numbers (demo_gradio.py / demo_gradio_f1.py): 30 fps, sections of
`latent_window_size` latent frames, 4 pixel frames per latent frame, and the causal VAE's first latent giving a
single pixel frame (hence the `- 3`).
"""

from __future__ import annotations

from dataclasses import dataclass

FPS = 30
VAE_TEMPORAL_COMPRESSION = 4
MAX_ORIGINAL_PADDING = 3


def total_latent_sections(total_second_length: float, latent_window_size: int) -> int:
    """Number of sections for a requested length.

    Python's `round` (half to even) is used on purpose: the official app does the same, and 2.4 s and 2.5 s
    must give the same section count as there.
    """
    sections = (total_second_length * FPS) / (latent_window_size * VAE_TEMPORAL_COMPRESSION)
    return int(max(round(sections), 1))


def original_latent_paddings(num_sections: int) -> list[int]:
    """Padding (in windows) between the start frame and each section, in generation order, original model.

    The official app caps the padding at 3 once there are more than 4 sections and repeats 2 in the middle;
    its authors found that looks better than the true growing gap.
    """
    if num_sections > 4:
        return [MAX_ORIGINAL_PADDING] + [2] * (num_sections - 3) + [1, 0]
    return list(reversed(range(num_sections)))


@dataclass(frozen=True)
class VideoLength:
    """What a request produces: sections, latent frames, pixel frames and real duration."""

    sections: int
    latent_frames: int
    pixel_frames: int

    @property
    def seconds(self) -> float:
        return self.pixel_frames / FPS


def video_length(total_second_length: float, latent_window_size: int) -> VideoLength:
    """Both models give `sections * window + 1` latents: the start latent is part of the final video."""
    sections = total_latent_sections(total_second_length, latent_window_size)
    latents = sections * latent_window_size + 1
    return VideoLength(sections=sections, latent_frames=latents, pixel_frames=pixel_frames_for_latents(latents))


def pixel_frames_for_latents(latent_frames: int) -> int:
    return latent_frames * VAE_TEMPORAL_COMPRESSION - 3


def overlap_pixel_frames(latent_window_size: int) -> int:
    """Frames cross-faded between neighbouring decoded sections (33 for the default window of 9)."""
    return latent_window_size * VAE_TEMPORAL_COMPRESSION - 3
