"""The timed-prompt grammar: ``[0s: a man walks] [3s: he turns and waves]``.

A prompt is *timed* when it holds at least one ``[TIME: text]`` tag, TIME being seconds of VIDEO time written
``3s`` or ``3.5s`` (the ``s`` is required: ``[16:9]`` in a plain prompt is not a time). A prompt without such a
tag is a plain prompt and is used exactly as typed, brackets and all, so every prompt that worked before still
means the same; one that looks like it meant times (``[3: ...]``) gets a note saying so. A timed prompt must be nothing but such blocks
(separated by white space), with times that increase, each inside the video, at most one per section, and each
with some text; anything else is refused with the faulty part quoted. The earliest prompt also covers the time
before it, so ``[1s: ...]`` first is allowed.

This module is pure text and arithmetic (no torch), so the request can check a prompt at the door.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from framepack_core.errors import InvalidInputError
from framepack_core.models.components import ModelVariant
from framepack_core.sampling.schedule import video_length
from framepack_core.sampling.timeline import section_at, section_spans

_TIME = r"(\d+(?:\.\d+)?)\s*s"
# What makes a prompt timed: one tag anywhere. A bracket that does not open with a time ("a [red] car") is not one.
_TAG = re.compile(r"\[\s*" + _TIME + r"\s*:")
_UNITLESS_TAG = re.compile(r"\[\s*\d+(?:\.\d+)?\s*:\s")
_BLOCK = re.compile(r"\[\s*" + _TIME + r"\s*:(.*)\]", re.DOTALL)
_QUOTE_CHARS = 60
_SYNTAX_HINT = "Write each prompt as [SECONDS: text], e.g. [0s: a man walks] [3s: he turns and waves]."


@dataclass(frozen=True)
class TimedPrompt:
    """One prompt of a timed prompt: in force from ``seconds`` (video time) until the next one."""

    seconds: float
    text: str  # stripped of surrounding white space
    block: str  # as typed, for messages


def is_timed(prompt: str) -> bool:
    """Whether ``prompt`` uses the timed grammar (holds a ``[TIME:`` tag)."""
    return _TAG.search(prompt) is not None


def timed_prompt_notes(prompt: str) -> tuple[str, ...]:
    """A note for a plain prompt that looks as if it meant times without their unit (``[0: a] [3: b]``)."""
    if is_timed(prompt):
        return ()
    match = _UNITLESS_TAG.search(prompt)
    if match is None:
        return ()
    note = (f'The prompt holds "{match.group(0).strip()}" but no time like [3s: ...], so it is one prompt for the '
            "whole video. To change the prompt over time, write the times in seconds with an s: "
            "[0s: a man walks] [3s: he waves].")
    return (note,)


def parse_timed_prompt(prompt: str) -> tuple[TimedPrompt, ...]:
    """The prompts of a timed prompt in time order, or ``InvalidInputError("prompt", ...)`` quoting the part that
    breaks the grammar. A plain prompt (``is_timed`` false) is one prompt at 0 s, exactly as typed."""
    if not is_timed(prompt):
        return (TimedPrompt(0.0, prompt, prompt),)
    prompts: list[TimedPrompt] = []
    position = 0
    while True:
        while position < len(prompt) and prompt[position].isspace():
            position += 1
        if position == len(prompt):
            break
        if prompt[position] != "[":
            outside = prompt[position:prompt.find("[", position) if "[" in prompt[position:] else len(prompt)]
            raise InvalidInputError("prompt", f"has text outside a [time: prompt] block: {_quote(outside.strip())}",
                                    "Put every part of a timed prompt inside a block. " + _SYNTAX_HINT)
        close = prompt.find("]", position)
        reopen = prompt.find("[", position + 1)
        if close == -1 or (reopen != -1 and reopen < close):
            unclosed = prompt[position:reopen if reopen != -1 and (close == -1 or reopen < close) else len(prompt)]
            raise InvalidInputError("prompt", f"has an unclosed bracket: {_quote(unclosed.strip())}",
                                    "Close each block with ]; a prompt's text cannot hold brackets.")
        block = prompt[position:close + 1]
        prompts.append(_parse_block(block, prompts[-1] if prompts else None))
        position = close + 1
    return tuple(prompts)


def _parse_block(block: str, previous: TimedPrompt | None) -> TimedPrompt:
    match = _BLOCK.fullmatch(block)
    if match is None:
        raise InvalidInputError("prompt", f"has a block that does not start with a time: {_quote(block)}",
                                _SYNTAX_HINT + " Times are in seconds with an s (90s, not 1:30); a prompt lasts "
                                "until the next one, so time ranges are not needed.")
    seconds, text = float(match.group(1)), match.group(2).strip()
    if not text:
        raise InvalidInputError("prompt", f"has a block with no prompt text: {_quote(block)}",
                                "Write what happens from that time on, or remove the block.")
    if previous is not None and seconds <= previous.seconds:
        raise InvalidInputError("prompt", f"has times out of order: {_quote(block)} comes after "
                                          f"{_quote(previous.block)}",
                                "Write the blocks in time order, each at a later time than the one before.")
    return TimedPrompt(seconds, text, block)


def check_prompt_times(prompts: Sequence[TimedPrompt], model: ModelVariant | str, seconds: float,
                       latent_window_size: int) -> list[int]:
    """Each prompt's section (its ``time_index``, 0 at the start of the video); refuses a time past the end of the
    video, and two prompts on one section (the earlier would never be seen)."""
    spans = section_spans(model, seconds, latent_window_size)
    video_s = video_length(seconds, latent_window_size).seconds
    anchors: list[int] = []
    for index, timed in enumerate(prompts):
        span = section_at(spans, timed.seconds)
        if span is None:
            raise InvalidInputError("prompt", f"has a block past the end of the {video_s:.2f} s video: "
                                              f"{_quote(timed.block)}",
                                    "Move the prompt earlier or make the video longer ({seconds}).")
        if anchors and anchors[-1] == span.time_index:
            raise InvalidInputError(
                "prompt", f"has two blocks on one section ({span.start_s:.2f}-{span.end_s:.2f} s): "
                          f"{_quote(prompts[index - 1].block)} and {_quote(timed.block)}",
                f"A section is {span.end_s - span.start_s:.2f} s long and has one prompt: space the prompt "
                "changes at least a section apart, or shorten the sections ({latent_window_size}).")
        anchors.append(span.time_index)
    return anchors


def format_timed_prompt(prompts: Sequence[tuple[float, str]]) -> str:
    """The timed prompt for ``(seconds, text)`` pairs (a per-section prompt list): ``[0s: a] [3s: b]``."""
    return " ".join(f"[{seconds:g}s: {text.strip()}]" for seconds, text in sorted(prompts))


def _quote(text: str) -> str:
    if len(text) > _QUOTE_CHARS:
        text = text[:_QUOTE_CHARS - 3] + "..."
    return f'"{text}"'
