"""Loads each model component on first use and keeps it for the next job.

One store per device. Prompt embeddings are cached by prompt text and model identity, so re-running with an
unchanged prompt never touches the text encoders again.
"""

from __future__ import annotations

import gc
import logging
from collections import OrderedDict
from typing import Any

import torch

from framepack_core.devices import DeviceConfig
from framepack_core.model_loading import (
    ModelSource,
    check_weights,
    load_image_encoder,
    load_text_encoders,
    load_transformer,
    load_vae,
)
from framepack_core.packing import ModelVariant
from framepack_core.precision import apply_fp32_output_projection
from framepack_core.text_encoding import PromptEmbeddings, encode_prompt

logger = logging.getLogger(__name__)

PROMPT_CACHE_SIZE = 16


class ModelStore:
    def __init__(self, source: ModelSource, config: DeviceConfig) -> None:
        self.source = source
        self.config = config
        self._text_encoders: Any = None
        self._vae: Any = None
        self._image_encoder: Any = None
        self._transformers: dict[ModelVariant, torch.nn.Module] = {}
        self._prompt_cache: OrderedDict[str, PromptEmbeddings] = OrderedDict()
        self._checked: set[ModelVariant] = set()

    def check_weights(self, variant: ModelVariant) -> None:
        if variant not in self._checked:
            check_weights(self.source, variant.value)
            self._checked.add(variant)

    def encode_prompt(self, prompt: str) -> PromptEmbeddings:
        cached = self._prompt_cache.get(prompt)
        if cached is not None:
            self._prompt_cache.move_to_end(prompt)
            return cached
        if self._text_encoders is None:
            self._text_encoders = load_text_encoders(self.source, self.config.device, self.config.text_encoder_dtype)
        te = self._text_encoders
        embeddings = encode_prompt(prompt, te.tokenizer, te.text_encoder, te.tokenizer_2, te.text_encoder_2)
        embeddings = PromptEmbeddings(
            llama_vec=embeddings.llama_vec.cpu(),
            llama_attention_mask=embeddings.llama_attention_mask.cpu(),
            clip_l_pooler=embeddings.clip_l_pooler.cpu(),
            truncated=embeddings.truncated,
        )
        self._prompt_cache[prompt] = embeddings
        while len(self._prompt_cache) > PROMPT_CACHE_SIZE:
            self._prompt_cache.popitem(last=False)
        return embeddings

    def release_text_encoders(self) -> None:
        """Drop the text encoders (the largest component after the transformer); cached prompts stay usable."""
        self._text_encoders = None

    def release_all(self) -> None:
        """Drop every loaded model (RAM and VRAM); cached prompt embeddings stay. Call between jobs, not during one."""
        self.release_text_encoders()
        self._vae = None
        self._image_encoder = None
        self._transformers.clear()
        gc.collect()
        if self.config.device.type == "cuda":
            torch.cuda.empty_cache()
        elif self.config.device.type == "mps":
            torch.mps.empty_cache()

    def vae(self) -> torch.nn.Module:
        if self._vae is None:
            self._vae = load_vae(self.source, self.config.device, self.config.vae_dtype)
        return self._vae

    def image_encoder(self) -> tuple[Any, torch.nn.Module]:
        if self._image_encoder is None:
            self._image_encoder = load_image_encoder(self.source, self.config.device, self.config.image_encoder_dtype)
        return self._image_encoder.feature_extractor, self._image_encoder.image_encoder

    def transformer(self, variant: ModelVariant) -> torch.nn.Module:
        if variant not in self._transformers:
            # One DiT at a time: both would not fit on a consumer GPU.
            self._transformers.clear()
            transformer = load_transformer(self.source, variant.value, self.config.device, self.config.transformer_dtype)
            apply_fp32_output_projection(transformer)  # as the official app, a no-op in fp32
            self._transformers[variant] = transformer
        return self._transformers[variant]
