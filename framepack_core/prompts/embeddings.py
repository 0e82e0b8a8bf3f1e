"""The prompt embeddings each section is conditioned on: every distinct prompt text of a job encoded once (the
model store's prompt cache also reuses them across jobs), and the blend of two where a section mixes prompts.

A blend of prompts A and B with weights (1 - w, w) is linear in what the transformer receives:
- LLaMA hidden states: the two zero-padded (1, 512, dim) tensors mixed position by position,
  ``(1 - w) * A + w * B``, so a token position that only the longer prompt has carries that prompt's token
  scaled by its weight;
- their attention mask: the union of the two, so every real token of either prompt is attended;
- the CLIP-L pooled vector: ``(1 - w) * A + w * B``.
The mix is computed in float32 and stored in the encodings' dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from framepack_core.models.store import ModelStore
from framepack_core.models.text_encoding import PromptEmbeddings
from framepack_core.prompts.sections import PromptMix, section_prompt_mixes
from framepack_core.request import GenerationRequest


@dataclass(frozen=True)
class SectionPrompts:
    """A job's positive prompt embeddings, by section number (generation order, from 1)."""

    by_section: dict[int, PromptEmbeddings]
    truncated_texts: tuple[str, ...] = ()  # prompt texts longer than the encoder's 256 tokens

    @property
    def truncated(self) -> bool:
        return bool(self.truncated_texts)

    def for_section(self, number: int) -> PromptEmbeddings:
        return self.by_section[number]


def encode_section_prompts(models: ModelStore, request: GenerationRequest) -> SectionPrompts:
    """Encode each distinct prompt text of ``request`` once (a plain prompt: exactly as typed, as always) and give
    every section its embeddings."""
    mixes = section_prompt_mixes(request)
    encoded: dict[str, PromptEmbeddings] = {}
    for mix in mixes.values():
        for text in mix.texts:
            if text not in encoded:
                encoded[text] = models.encode_prompt(text)
    blends: dict[PromptMix, PromptEmbeddings] = {}
    by_section = {}
    for number, mix in mixes.items():
        if mix not in blends:
            blends[mix] = blend_prompt_embeddings(mix, encoded)
        by_section[number] = blends[mix]
    return SectionPrompts(by_section, tuple(text for text, e in encoded.items() if e.truncated))


def blend_prompt_embeddings(mix: PromptMix, encoded: dict[str, PromptEmbeddings]) -> PromptEmbeddings:
    """The embeddings of ``mix``: a single prompt's own (the very tensors), or the blend the module describes."""
    if len(mix.parts) == 1:
        return encoded[mix.parts[0][0]]
    (first_text, first_weight), (second_text, second_weight) = mix.parts
    first, second = encoded[first_text], encoded[second_text]

    def mixed(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a.float() * first_weight + b.float() * second_weight).to(a.dtype)

    return PromptEmbeddings(
        llama_vec=mixed(first.llama_vec, second.llama_vec),
        llama_attention_mask=first.llama_attention_mask | second.llama_attention_mask,
        clip_l_pooler=mixed(first.clip_l_pooler, second.clip_l_pooler),
        truncated=first.truncated or second.truncated,
    )
