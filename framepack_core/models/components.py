"""The model set's vocabulary: its components and the two transformer checkpoints a job chooses between.

Every loadable part is a ``Component``. The memory planner places, the size reader measures and the model store
loads and moves only the ones that hold weights (``WEIGHT_COMPONENTS``): tokenizers and the image processor hold
none. The transformer is one component with two checkpoints of the same architecture, told apart by
``ModelVariant``; ``framepack_core.models.loading`` names their files "transformer:original" and "transformer:f1".
"""

from __future__ import annotations

from enum import Enum


class Component(str, Enum):
    """One loadable part of the model set; the value is its name in messages, plans and reports."""

    TOKENIZER = "tokenizer"
    TEXT_ENCODER = "text_encoder"  # LLaMA, 8 B parameters
    TOKENIZER_2 = "tokenizer_2"
    TEXT_ENCODER_2 = "text_encoder_2"  # CLIP-L text
    VAE = "vae"
    FEATURE_EXTRACTOR = "feature_extractor"  # SigLIP's image processor
    IMAGE_ENCODER = "image_encoder"  # SigLIP vision
    TRANSFORMER = "transformer"  # the packed 13 B DiT, of the job's ModelVariant


class ModelVariant(str, Enum):
    """Which FramePack checkpoint samples a job: the same architecture, trained to generate in opposite orders."""

    ORIGINAL = "original"  # FramePackI2V_HY: the end of the clip first ("inverted anti-drifting")
    F1 = "f1"  # FramePack-F1: forward from the start frame


# Short names for the code that handles all weight-holding components at once (the planner and the store).
TE, TE2, IMAGE, VAE, DIT = (Component.TEXT_ENCODER, Component.TEXT_ENCODER_2, Component.IMAGE_ENCODER,
                            Component.VAE, Component.TRANSFORMER)

# The components that hold weights, in the order plans and size listings show them.
WEIGHT_COMPONENTS: tuple[Component, ...] = (TE, TE2, VAE, IMAGE, DIT)
ENCODERS: tuple[Component, ...] = (TE, TE2, IMAGE)  # used once per job, before the section loop


def weight_component(name: Component | str) -> Component:
    """The weight-holding component called ``name``; ``ValueError`` for any other name."""
    component = Component(name)
    if component not in WEIGHT_COMPONENTS:
        raise ValueError(f"{component.value!r} holds no weights; use one of: "
                         + ", ".join(c.value for c in WEIGHT_COMPONENTS))
    return component
