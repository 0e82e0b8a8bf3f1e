"""The model components that hold weights: what the memory planner places, the size reader measures and the
model store loads and moves (tokenizers and the image processor hold none)."""

from __future__ import annotations

from enum import Enum


class PlannedComponent(str, Enum):
    """The five model components the planner places (tokenizers and the image processor hold no weights)."""

    TEXT_ENCODER = "text_encoder"  # LLaMA, 8 B parameters
    TEXT_ENCODER_2 = "text_encoder_2"  # CLIP-L text
    IMAGE_ENCODER = "image_encoder"  # SigLIP vision
    VAE = "vae"
    TRANSFORMER = "transformer"  # the packed 13 B DiT (original or F1)
