"""Prompt conditioning as the official app builds it.

LLaMA: the prompt goes into HunyuanVideo's chat template, is tokenized to at most 256 real tokens after the
95-token template prefix, and the third-to-last hidden state of the real tokens is kept, zero-padded to 512
with a mask. CLIP-L: the pooled output of the 77-token prompt.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

logger = logging.getLogger(__name__)

PROMPT_TEMPLATE = (
    "<|start_header_id|>system<|end_header_id|>\n\nDescribe the video by detailing the following aspects: "
    "1. The main content and theme of the video."
    "2. The color, shape, size, texture, quantity, text, and spatial relationships of the objects."
    "3. Actions, events, behaviors temporal relationships, physical movement changes of the objects."
    "4. background environment, light, style and atmosphere."
    "5. camera angles, movements, and transitions used in the video:<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\n{}<|eot_id|>"
)
# Tokens of the template before the user's text in the real Llama-3 tokenizer; the official app hard-codes it.
TEMPLATE_CROP_START = 95
MAX_PROMPT_TOKENS = 256
PADDED_LENGTH = 512
CLIP_MAX_LENGTH = 77
LLAMA_HIDDEN_STATE_INDEX = -3


@dataclass(frozen=True)
class PromptEmbeddings:
    llama_vec: torch.Tensor  # (1, 512, text_dim), zero past the real tokens
    llama_attention_mask: torch.Tensor  # (1, 512) bool
    clip_l_pooler: torch.Tensor  # (1, clip_dim)
    truncated: bool = False

    def to(self, device: torch.device, dtype: torch.dtype) -> PromptEmbeddings:
        return PromptEmbeddings(
            llama_vec=self.llama_vec.to(device=device, dtype=dtype),
            llama_attention_mask=self.llama_attention_mask.to(device=device),
            clip_l_pooler=self.clip_l_pooler.to(device=device, dtype=dtype),
            truncated=self.truncated,
        )

    def zeros_like(self) -> PromptEmbeddings:
        """The official app's stand-in negative when real CFG is off (never used by the model)."""
        return PromptEmbeddings(
            llama_vec=torch.zeros_like(self.llama_vec),
            llama_attention_mask=torch.zeros_like(self.llama_attention_mask),
            clip_l_pooler=torch.zeros_like(self.clip_l_pooler),
        )


def crop_or_pad_with_mask(vectors: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    batch, count, dim = vectors.shape
    if count >= length:
        return vectors[:, :length], torch.ones(batch, length, dtype=torch.bool, device=vectors.device)
    padded = torch.zeros(batch, length, dim, dtype=vectors.dtype, device=vectors.device)
    padded[:, :count] = vectors
    mask = torch.zeros(batch, length, dtype=torch.bool, device=vectors.device)
    mask[:, :count] = True
    return padded, mask


def prompt_token_count(prompt: str, tokenizer) -> int:  # noqa: ANN001
    """Real prompt tokens the LLaMA would see without truncation (template prefix excluded)."""
    ids = tokenizer(PROMPT_TEMPLATE.format(prompt), truncation=False)["input_ids"]
    return max(len(ids) - TEMPLATE_CROP_START, 0)


@torch.no_grad()
def encode_prompt(prompt: str, tokenizer, text_encoder, tokenizer_2, text_encoder_2) -> PromptEmbeddings:  # noqa: ANN001
    truncated = prompt_token_count(prompt, tokenizer) > MAX_PROMPT_TOKENS
    if truncated:
        # The engine tells the user through a Notice event; this is for library callers' logs.
        logger.info("The prompt is longer than %d tokens; the rest is ignored, as in the official app.", MAX_PROMPT_TOKENS)

    llama_inputs = tokenizer(
        [PROMPT_TEMPLATE.format(prompt)],
        padding="max_length",
        max_length=MAX_PROMPT_TOKENS + TEMPLATE_CROP_START,
        truncation=True,
        return_tensors="pt",
        return_attention_mask=True,
    )
    input_ids = llama_inputs.input_ids.to(text_encoder.device)
    attention_mask = llama_inputs.attention_mask.to(text_encoder.device)
    real_length = int(attention_mask.sum())
    hidden = text_encoder(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True).hidden_states
    llama_vec = hidden[LLAMA_HIDDEN_STATE_INDEX][:, TEMPLATE_CROP_START:real_length]

    clip_ids = tokenizer_2(
        [prompt], padding="max_length", max_length=CLIP_MAX_LENGTH, truncation=True, return_tensors="pt"
    ).input_ids
    clip_l_pooler = text_encoder_2(clip_ids.to(text_encoder_2.device), output_hidden_states=False).pooler_output

    llama_vec, mask = crop_or_pad_with_mask(llama_vec, PADDED_LENGTH)
    return PromptEmbeddings(llama_vec=llama_vec, llama_attention_mask=mask, clip_l_pooler=clip_l_pooler, truncated=truncated)
