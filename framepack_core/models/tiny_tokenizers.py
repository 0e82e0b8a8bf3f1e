"""The tiny model set's tokenizers: a LLaMA-3-style and a CLIP-style BPE tokenizer learned from a fixed corpus
with a merge construction written here, so that two builds give byte-identical files (the ``tokenizers`` trainer
breaks frequency ties in an unspecified order). The LLaMA one learns until every chunk of HunyuanVideo's prompt
template is a single token, as with the real Llama-3 vocabulary (see ``framepack_core.models.tiny``).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from framepack_core.models.text_encoding import PROMPT_TEMPLATE

# Llama-3's pre-tokenizer regex, as in its tokenizer.json.
LLAMA3_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)
# Llama-3 special tokens. The real ones sit at ids 128000+; here they come first so that bos=0, eos=1, pad=5.
LLAMA_SPECIAL_TOKENS = (
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|finetune_right_pad_id|>",
)
LLAMA_BOS, LLAMA_EOS, LLAMA_PAD = "<|begin_of_text|>", "<|end_of_text|>", "<|finetune_right_pad_id|>"
CLIP_BOS, CLIP_EOS = "<|startoftext|>", "<|endoftext|>"
CLIP_MAX_LENGTH = 77

# Text the tokenizers' merges are learned from. The template comes first and is what matters (see module doc);
# the sentences are FramePack-style prompts so that typical test prompts get multi-byte tokens too.
_CORPUS_SENTENCES = (
    "The girl dances gracefully, with clear movements, full of charm.",
    "A character doing some simple body movements.",
    "The man dances energetically, leaping mid-air with fluid arm swings and quick footwork.",
    "A cat walks slowly across the room, then sits down and looks at the camera.",
    "The woman smiles and waves her hand; the wind moves her hair.",
    "A dog runs on the beach at sunset, waves rolling in the background.",
    "The camera zooms in on a red car driving through the rainy city at night.",
    "Two people talk in a cafe, drinking coffee and laughing.",
)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map, which ByteLevel pre-tokenizers use.

    Printable Latin-1 bytes map to themselves; the other 68 bytes map to code points from 256 upwards, in byte
    order, so every byte has a visible, whitespace-free character.
    """
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def _train_bpe(words: Counter[tuple[str, ...]], max_merges: int | None = None) -> list[tuple[str, str]]:
    """Learn BPE merges with a fully specified tie-break, so that the result never depends on hash order.

    Each step merges the most frequent adjacent pair; among equally frequent pairs the lexicographically smallest
    wins. Runs until no word has two symbols left (every corpus word becomes one token) or ``max_merges``.
    The corpus is a few hundred words, so recounting every step is fast enough (tens of milliseconds).
    """
    state = [[list(symbols), count] for symbols, count in sorted(words.items())]
    merges: list[tuple[str, str]] = []
    while max_merges is None or len(merges) < max_merges:
        pairs: Counter[tuple[str, str]] = Counter()
        for symbols, count in state:
            for pair in zip(symbols, symbols[1:]):
                pairs[pair] += count
        if not pairs:
            break
        best = min(pairs.items(), key=lambda item: (-item[1], item[0]))[0]
        merges.append(best)
        joined = best[0] + best[1]
        for entry in state:
            symbols = entry[0]
            merged: list[str] = []
            i = 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    merged.append(joined)
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            entry[0] = merged
    return merges


def _corpus_texts() -> list[str]:
    return [PROMPT_TEMPLATE.replace("{}", sentence) for sentence in _CORPUS_SENTENCES]


def _vocab_from(base_tokens: Iterable[str], merges: list[tuple[str, str]]) -> dict[str, int]:
    """Ids in order: the base tokens, then each merge's result (two merges may spell the same token: one id)."""
    vocab: dict[str, int] = {}
    for token in list(base_tokens) + [a + b for a, b in merges]:
        vocab.setdefault(token, len(vocab))
    return vocab


def _llama_backend(vocab: dict[str, int], merges: list[tuple[str, str]]) -> Any:
    """A ``tokenizers.Tokenizer`` with Llama-3's structure (no normalizer, Split+ByteLevel, BOS template)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import BPE

    # ignore_merges: a word that is in the vocabulary is one token, as in Llama-3's tokenizer.json.
    tokenizer = Tokenizer(BPE(vocab=vocab, merges=merges, ignore_merges=True, fuse_unk=False, byte_fallback=False))
    tokenizer.normalizer = None
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    tokenizer.post_processor = processors.Sequence(
        [
            processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True),
            processors.TemplateProcessing(
                single=f"{LLAMA_BOS}:0 $A:0",
                pair=f"{LLAMA_BOS}:0 $A:0 {LLAMA_BOS}:1 $B:1",
                special_tokens=[(LLAMA_BOS, vocab[LLAMA_BOS])],
            ),
        ]
    )
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in LLAMA_SPECIAL_TOKENS])
    return tokenizer


def _llama_training_words(pre_tokenizer: Any) -> Counter[tuple[str, ...]]:
    """Pre-tokenize the corpus exactly as the tokenizer will (special tokens cut out first)."""
    specials = "|".join(re.escape(t) for t in LLAMA_SPECIAL_TOKENS)
    words: Counter[tuple[str, ...]] = Counter()
    for text in _corpus_texts():
        for segment in re.split(specials, text):
            for piece, _ in pre_tokenizer.pre_tokenize_str(segment):
                words[tuple(piece)] += 1
    return words


def build_llama_tokenizer(out_dir: Path) -> dict[str, int]:
    """Write a Llama-3 style byte-level BPE tokenizer; return its size and special ids for the LlamaConfig."""
    from transformers import PreTrainedTokenizerFast

    byte_chars = list(_bytes_to_unicode().values())
    bootstrap = _llama_backend(_vocab_from(LLAMA_SPECIAL_TOKENS + tuple(byte_chars), []), [])
    merges = _train_bpe(_llama_training_words(bootstrap.pre_tokenizer))
    vocab = _vocab_from(LLAMA_SPECIAL_TOKENS + tuple(byte_chars), merges)
    backend = _llama_backend(vocab, merges)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=LLAMA_BOS,
        eos_token=LLAMA_EOS,
        pad_token=LLAMA_PAD,
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )
    wrapped.save_pretrained(out_dir)
    # Real llava-llama-3 tokenizers name the generic fast class; transformers 5 writes its new backend name.
    patch_json(out_dir / "tokenizer_config.json", {"tokenizer_class": "PreTrainedTokenizerFast"})
    return {
        "vocab_size": len(vocab),
        "bos_token_id": vocab[LLAMA_BOS],
        "eos_token_id": vocab[LLAMA_EOS],
        "pad_token_id": vocab[LLAMA_PAD],
    }


def build_clip_tokenizer(out_dir: Path) -> dict[str, int]:
    """Write a CLIP BPE tokenizer whose vocabulary holds all 256 byte characters (with and without ``</w>``).

    With every byte in the vocabulary no input character is ever unknown. The merges are learned, with the
    deterministic trainer, from the corpus as CLIP's own normalizer and pre-tokenizer see it.
    """
    from transformers import CLIPTokenizer

    byte_chars = list(_bytes_to_unicode().values())
    base = byte_chars + [c + "</w>" for c in byte_chars]
    bootstrap = CLIPTokenizer(vocab=_vocab_from(base + [CLIP_BOS, CLIP_EOS], []), merges=[])
    backend = bootstrap.backend_tokenizer
    words: Counter[tuple[str, ...]] = Counter()
    for text in _corpus_texts():
        normalized = backend.normalizer.normalize_str(text)
        for piece, _ in backend.pre_tokenizer.pre_tokenize_str(normalized):
            if piece in (CLIP_BOS, CLIP_EOS):
                continue
            words[tuple(piece[:-1]) + (piece[-1] + "</w>",)] += 1
    merges = _train_bpe(words)
    vocab = _vocab_from(base, merges)
    vocab[CLIP_BOS] = len(vocab)
    vocab[CLIP_EOS] = len(vocab)
    # transformers 5 wants the merges as tuples; "a b" strings raise a TypeError.
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=CLIP_MAX_LENGTH, padding_side="right")
    tokenizer.save_pretrained(out_dir)
    return {
        "vocab_size": len(vocab),
        "bos_token_id": vocab[CLIP_BOS],
        "eos_token_id": vocab[CLIP_EOS],
        "pad_token_id": vocab[CLIP_EOS],
    }


def patch_json(path: Path, updates: dict[str, Any], sort_keys: bool = False) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    data.update(updates)
    path.write_text(json.dumps(data, indent=2, sort_keys=sort_keys, ensure_ascii=False) + "\n", encoding="utf-8")
