"""The one description of a generation job, validated before any model loads.

The CLI, the UI and the HTTP API all build a ``GenerationRequest``; defaults are the official app's.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from framepack_core.errors import InvalidInputError
from framepack_core.models.components import ModelVariant
from framepack_core.prompts.timed import check_prompt_times, parse_timed_prompt, timed_prompt_notes
from framepack_core.sampling.cache_methods import DEFAULT_CACHE_THRESHOLDS, CacheMethod

MAX_SECONDS = 120.0
MAX_STEPS = 200
MAX_WINDOW = 33
MIN_RESOLUTION, MAX_RESOLUTION = 32, 1536
MAX_SEED = 2**63 - 1
MAX_PROMPT_CHARS = 20_000
MAX_PRESERVED_GB = 1024.0
MAX_KEYFRAMES = 64
MAX_CONTEXT_FRAMES = 1024
MAX_BLEND_SECTIONS = 16
MAX_LORAS = 16
MAX_LORA_WEIGHT = 10.0
EXTEND_OUTPUTS = ("new", "joined")
# The request's fields that name files on this machine: a spec holds their SHA-256 instead (``jobs.spec``).
FILE_FIELDS = ("image", "end_image", "extend_video", "keyframes", "loras", "output", "save_latents")


@dataclass(frozen=True)
class Keyframe:
    """An image pinned to the section that covers ``seconds`` (original model), as that section's nearest clean
    context."""

    seconds: float
    image: Path


@dataclass(frozen=True)
class Reroll:
    """From section ``from_section`` on (numbered from 1 in generation order, as progress shows them), sample
    with a generator reseeded with ``seed`` and, when given, ``prompt``; the sections before it are kept as they
    were."""

    from_section: int
    seed: int
    prompt: str | None = None


@dataclass(frozen=True)
class LoraChoice:
    """A LoRA file applied to the transformer at ``weight`` (1 is the strength it was trained at, 0 is none)."""

    path: Path
    weight: float = 1.0


@dataclass(frozen=True)
class GenerationRequest:
    image: Path
    prompt: str = ""
    negative_prompt: str = ""
    model: ModelVariant = ModelVariant.ORIGINAL
    seconds: float = 5.0
    seed: int = 31337
    steps: int = 25
    latent_window_size: int = 9
    distilled_guidance: float = 10.0  # "gs": fed to the model, HunyuanVideo is guidance-distilled
    cfg: float = 1.0  # real classifier-free guidance; 1 = off, one model call per step
    cfg_rescale: float = 0.0  # "rs"
    # TeaCache is the official app's default; NONE reproduces the full model exactly. The threshold's None is the
    # method's default (``DEFAULT_CACHE_THRESHOLDS``).
    cache: CacheMethod = CacheMethod.TEACACHE
    cache_threshold: float | None = None
    crf: int = 16
    resolution: int = 640
    sampler_variant: str = "bh1"
    # Memory: how much VRAM (GB) the plan leaves free for other programs (None: chosen automatically), and fp8
    # weight storage for the transformer (None: only when bf16 cannot fit; True/False: always/never). Offloading is
    # exact, so the first never changes the video; fp8 storage does, slightly.
    gpu_memory_preservation: float | None = None
    fp8: bool | None = None
    # Story controls (docs/controls.md). End frame (original model): its latent times ``end_strength`` fills the
    # first generated section's clean_latents_post; ``end_image_embedding_weight`` mixes its SigLIP embedding in.
    end_image: Path | None = None
    end_strength: float = 1.0
    end_image_embedding_weight: float = 0.0
    loop: bool = False  # the start image is also the end image
    keyframes: tuple[Keyframe, ...] = ()
    prompt_blend_sections: int = 0  # sections over which the embeddings blend at each prompt change
    extend_video: Path | None = None  # continue this clip
    context_frames: int | None = None  # the clip's last frames encoded into the history (None: enough context)
    extend_output: str = "new"  # "new": only the generated part; "joined": the clip and the new part
    rerolls: tuple[Reroll, ...] = ()
    loras: tuple[LoraChoice, ...] = ()  # applied to the transformer together, each at its weight
    lora_fuse: bool = False  # merge the LoRAs into the weights for the job (faster steps), unmerged after it
    output: Path | None = None
    save_latents: Path | None = None

    def validated(self) -> GenerationRequest:
        """Return a normalised copy, or raise ``InvalidInputError`` naming the first bad field."""
        _check_number("seconds", self.seconds, 0.0, MAX_SECONDS, low_open=True,
                      hint=f"Use a length above 0 and at most {MAX_SECONDS:g} seconds.")
        _check_int("steps", self.steps, 1, MAX_STEPS, hint="25 steps is the official default.")
        _check_int("latent_window_size", self.latent_window_size, 1, MAX_WINDOW, hint="9 is the trained value.")
        _check_int("seed", self.seed, 0, MAX_SEED, hint="Use a whole number from 0 to 2**63-1.")
        _check_number("distilled_guidance", self.distilled_guidance, 0.0, 100.0, hint="10 is the official default.")
        _check_number("cfg", self.cfg, 1.0, 100.0, hint="1 turns real CFG off (the default).")
        _check_number("cfg_rescale", self.cfg_rescale, 0.0, 1.0, hint="Use a value from 0 to 1.")
        _check_int("crf", self.crf, 0, 51, hint="libx264 CRF goes from 0 (lossless) to 51; 16 is the default.")
        _check_int("resolution", self.resolution, MIN_RESOLUTION, MAX_RESOLUTION,
                   hint="640 is the official resolution; smaller is faster.")
        if self.gpu_memory_preservation is not None:
            _check_number("gpu_memory_preservation", self.gpu_memory_preservation, 0.0, MAX_PRESERVED_GB,
                          hint="Give the GB of GPU memory to leave free, or leave it empty for automatic.")
        if self.fp8 not in (None, True, False):
            raise InvalidInputError("fp8", f"must be true, false or empty (automatic), got {self.fp8!r}")
        if self.sampler_variant not in ("bh1", "bh2"):
            raise InvalidInputError("sampler_variant", f"must be 'bh1' or 'bh2', got {self.sampler_variant!r}")
        for name in ("prompt", "negative_prompt"):
            check_text(name, getattr(self, name), MAX_PROMPT_CHARS,
                       hint="Shorten it: only the first 256 tokens are used anyway.")
        cache = _cache_method(self.cache)
        if self.cache_threshold is not None:
            if DEFAULT_CACHE_THRESHOLDS[cache] is None:
                raise InvalidInputError("cache_threshold", f"is not used by the cache {cache.value!r}",
                                        "Leave it empty, or choose teacache, first-block or magcache.")
            _check_number("cache_threshold", self.cache_threshold, 0.0, 10.0, low_open=True,
                          hint="Higher is faster and drifts more; leave it empty for the method's default.")
        if not isinstance(self.lora_fuse, bool):
            raise InvalidInputError("lora_fuse", f"must be true or false, got {self.lora_fuse!r}",
                                    "Use the JSON values true or false, without quotes.")
        try:
            model = ModelVariant(self.model)
        except ValueError:
            raise InvalidInputError("model", f"unknown model {self.model!r}", "Use 'original' or 'f1'.") from None
        for name in ("output", "save_latents"):
            path = getattr(self, name)
            if path is not None and Path(path).is_dir():
                raise InvalidInputError(name, f"{path} is a folder", "Give a file name, e.g. out/video.mp4.")
        if self.output is not None and Path(self.output).suffix.lower() != ".mp4":
            raise InvalidInputError("output", f"{self.output} does not end in .mp4", "Name the output file *.mp4.")
        story = self._validated_story_controls()
        # A timed prompt's grammar and times need only the video's length: refused here, before any model loads.
        for prompt in (self.prompt, *(r.prompt for r in story["rerolls"] if r.prompt is not None)):
            check_prompt_times(parse_timed_prompt(prompt), model, float(self.seconds), int(self.latent_window_size))
        return replace(self, model=model, image=Path(self.image), cache=cache, loras=_loras(self.loras),
                       cache_threshold=None if self.cache_threshold is None else float(self.cache_threshold), seed=int(self.seed), steps=int(self.steps),
                        latent_window_size=int(self.latent_window_size), crf=int(self.crf),
                        resolution=int(self.resolution), seconds=float(self.seconds), **story)

    def _validated_story_controls(self) -> dict[str, Any]:
        """Check the story controls' types and ranges; what depends on the model or the video's length is checked
        where the sections are known (the engine)."""
        _check_number("end_strength", self.end_strength, 0.0, 1.0, hint="1 is the full end image, 0 none.")
        _check_number("end_image_embedding_weight", self.end_image_embedding_weight, 0.0, 1.0,
                      hint="0 keeps the start image's embedding; 0.5 averages the two.")
        for name in ("loop",):
            if not isinstance(getattr(self, name), bool):
                raise InvalidInputError(name, f"must be true or false, got {getattr(self, name)!r}")
        _check_int("prompt_blend_sections", self.prompt_blend_sections, 0, MAX_BLEND_SECTIONS,
                   hint="0 switches prompts at once; 1-3 sections blend smoothly.")
        if self.context_frames is not None:
            _check_int("context_frames", self.context_frames, 1, MAX_CONTEXT_FRAMES,
                       hint="Leave it empty for enough frames for the model's full context.")
        if self.extend_output not in EXTEND_OUTPUTS:
            raise InvalidInputError("extend_output", f"must be 'new' or 'joined', got {self.extend_output!r}")
        if self.loop and self.end_image is not None:
            raise InvalidInputError("end_image", "is set together with loop, which uses the start image as the end",
                                    "Leave the end image empty for a loop, or turn loop off.")
        keyframes = _keyframes(self.keyframes)
        rerolls = _rerolls(self.rerolls)
        return {"keyframes": keyframes, "rerolls": rerolls,
                "end_image": None if self.end_image is None else Path(self.end_image),
                "extend_video": None if self.extend_video is None else Path(self.extend_video),
                "end_strength": float(self.end_strength),
                "end_image_embedding_weight": float(self.end_image_embedding_weight),
                "prompt_blend_sections": int(self.prompt_blend_sections),
                "context_frames": None if self.context_frames is None else int(self.context_frames)}

    def notes(self) -> tuple[str, ...]:
        """What the user should know about these (valid) settings that is not an error; each edge shows them."""
        if not self.prompt.strip():
            # Allowed, as in the official app, but easy to do by accident: say what it means for the video.
            return ("The prompt is empty: the video will follow only the image, with no motion described.",)
        return timed_prompt_notes(self.prompt)

    @property
    def effective_cache_threshold(self) -> float | None:
        """The threshold the cache runs with: the one given, or the method's default (None: it takes none)."""
        if self.cache_threshold is not None:
            return float(self.cache_threshold)
        return DEFAULT_CACHE_THRESHOLDS[CacheMethod(self.cache)]

    @property
    def end_image_path(self) -> Path | None:
        """The image the video ends at: the end image, or the start image for a loop."""
        return self.image if self.loop else self.end_image

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["model"] = ModelVariant(self.model).value
        data["cache"] = CacheMethod(self.cache).value
        data["loras"] = [{"path": str(lora.path), "weight": lora.weight} for lora in self.loras]
        for name in ("image", "output", "save_latents", "end_image", "extend_video"):
            data[name] = None if data[name] is None else str(data[name])
        data["keyframes"] = [{"seconds": k.seconds, "image": str(k.image)} for k in self.keyframes]
        data["rerolls"] = [asdict(r) for r in self.rerolls]
        return data


def _keyframes(value: Any) -> tuple[Keyframe, ...]:
    if not isinstance(value, (list, tuple)):
        raise InvalidInputError("keyframes", f"must be a list of (seconds, image) pairs, got {type(value).__name__}")
    if len(value) > MAX_KEYFRAMES:
        raise InvalidInputError("keyframes", f"has {len(value)} keyframes; at most {MAX_KEYFRAMES} are accepted")
    keyframes = []
    for item in value:
        if isinstance(item, Keyframe):
            seconds, image = item.seconds, item.image
        elif isinstance(item, dict) and set(item) == {"seconds", "image"}:
            seconds, image = item["seconds"], item["image"]
        elif isinstance(item, (list, tuple)) and len(item) == 2:
            seconds, image = item
        else:
            raise InvalidInputError("keyframes", f"holds {item!r}, which is not a (seconds, image) pair",
                                    "Give each keyframe as SECONDS:PATH, such as 3:pose.png.")
        _check_number("keyframes", seconds, 0.0, MAX_SECONDS, hint="Give the keyframe's time in seconds.")
        if not isinstance(image, (str, Path)) or not str(image):
            raise InvalidInputError("keyframes", f"the keyframe at {seconds:g}s names no image")
        keyframes.append(Keyframe(float(seconds), Path(image)))
    return tuple(sorted(keyframes, key=lambda k: k.seconds))


def _cache_method(value: Any) -> CacheMethod:
    try:
        return CacheMethod(value)
    except ValueError:
        raise InvalidInputError("cache", f"unknown cache {value!r}",
                                f"Use one of: {', '.join(m.value for m in CacheMethod)}.") from None


def _loras(value: Any) -> tuple[LoraChoice, ...]:
    if not isinstance(value, (list, tuple)):
        raise InvalidInputError("loras", f"must be a list of (path, weight) pairs, got {type(value).__name__}",
                                'Give a list, such as [{"path": "style.safetensors", "weight": 0.8}].')
    if len(value) > MAX_LORAS:
        raise InvalidInputError("loras", f"has {len(value)} LoRAs; at most {MAX_LORAS} are applied at once",
                                "Leave out the ones that matter least.")
    loras = []
    for item in value:
        if isinstance(item, LoraChoice):
            path, weight = item.path, item.weight
        elif isinstance(item, dict) and set(item) <= {"path", "weight"} and "path" in item:
            path, weight = item["path"], item.get("weight", 1.0)
        elif isinstance(item, (list, tuple)) and len(item) == 2:
            path, weight = item
        else:
            raise InvalidInputError("loras", f"holds {item!r}, which is not a (path, weight) pair",
                                    "Give each LoRA as PATH or PATH:WEIGHT, such as style.safetensors:0.8.")
        if not isinstance(path, (str, Path)) or not str(path):
            raise InvalidInputError("loras", "names no file", "Give the LoRA's .safetensors file.")
        _check_number("loras", weight, -MAX_LORA_WEIGHT, MAX_LORA_WEIGHT,
                      hint="1 is the strength the LoRA was trained at, 0 turns it off; most work from 0.5 to 1.2.")
        loras.append(LoraChoice(Path(path), float(weight)))
    if len({lora.path for lora in loras}) != len(loras):
        raise InvalidInputError("loras", "names the same file twice", "Give each LoRA once, with one weight.")
    return tuple(loras)


def _rerolls(value: Any) -> tuple[Reroll, ...]:
    if not isinstance(value, (list, tuple)):
        raise InvalidInputError("rerolls", f"must be a list of re-rolls, got {type(value).__name__}")
    rerolls = []
    for item in value:
        if isinstance(item, dict):
            unknown = set(item) - {"from_section", "seed", "prompt"}
            if unknown or not {"from_section", "seed"} <= set(item):
                raise InvalidInputError("rerolls", f"holds {item!r}; a re-roll has from_section, seed and prompt")
            item = Reroll(item["from_section"], item["seed"], item.get("prompt"))
        if not isinstance(item, Reroll):
            raise InvalidInputError("rerolls", f"holds {item!r}, which is not a re-roll")
        _check_int("reroll_from", item.from_section, 1, 10_000, hint="Give the section number to re-roll from.")
        _check_int("seed", item.seed, 0, MAX_SEED, hint="Use a whole number from 0 to 2**63-1.")
        if item.prompt is not None:
            check_text("prompt", item.prompt, MAX_PROMPT_CHARS)
        rerolls.append(Reroll(int(item.from_section), int(item.seed), item.prompt))
    if [r.from_section for r in rerolls] != sorted({r.from_section for r in rerolls}):
        raise InvalidInputError("rerolls", "must re-roll from later and later sections, each once")
    return tuple(rerolls)


def check_text(name: str, text: Any, max_chars: int, hint: str = "") -> None:
    """Refuse anything but valid Unicode text within ``max_chars``, naming the field.

    A lone surrogate (JSON ``"\\ud800"``) is a Python str but cannot be encoded as UTF-8: stored, it would break
    every later listing, page and response that includes it, so it is refused here, at the door. NUL and other
    control characters (but tab and newline) are refused too: they are never part of a prompt and break tools.
    """
    if not isinstance(text, str):
        raise InvalidInputError(name, f"must be text, got {type(text).__name__}")
    if len(text) > max_chars:
        raise InvalidInputError(name, f"is {len(text)} characters long; at most {max_chars} are accepted", hint)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise InvalidInputError(name, f"holds a character that is not valid Unicode at position {error.start} "
                                      f"({text[error.start]!a})",
                                "Retype or paste the text again; an editor or a script produced a broken character."
                                ) from None
    for position, character in enumerate(text):
        if character < " " and character not in "\t\n\r":
            raise InvalidInputError(name, f"holds a control character at position {position} ({character!a})",
                                    "Remove it; prompts are plain text.")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_number(name: str, value: Any, low: float, high: float, *, low_open: bool = False, hint: str = "") -> None:
    if not _is_number(value) or math.isnan(value) or math.isinf(value):
        raise InvalidInputError(name, f"must be a finite number, got {value!r}", hint)
    if value < low or (low_open and value == low) or value > high:
        low_text = f"above {low:g}" if low_open else f"at least {low:g}"
        raise InvalidInputError(name, f"{value:g} is out of range: it must be {low_text} and at most {high:g}", hint)


def _check_int(name: str, value: Any, low: int, high: int, hint: str = "") -> None:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidInputError(name, f"must be a whole number, got {value!r}", hint)
    if not low <= value <= high:
        raise InvalidInputError(name, f"{value} is out of range: it must be from {low} to {high}", hint)
