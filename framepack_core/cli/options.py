"""The command line's shared pieces: the options of ``generate``, ``jobs submit`` and ``jobs run``, and how their
values become a request or an engine, and how an error names the option the user typed.

``main`` dispatches; ``generate``, ``from_output`` (``generate --from``), ``plan`` and ``jobs`` build on these, so
none of them imports another. Heavy modules (torch) are imported inside the functions that need them, so ``--help`` stays instant.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from framepack_core.errors import FramePackError, InvalidInputError, render_fields
from framepack_core.models.runtime import ATTENTION_CHOICES
from framepack_core.sampling.cache_methods import CacheMethod

CACHE_CHOICES = tuple(CacheMethod)

# The exit status of every command.
EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_CANCELLED = 0, 1, 2, 130

if TYPE_CHECKING:
    from framepack_core.pipeline.engine import FramePackEngine
    from framepack_core.request import GenerationRequest
    from framepack_core.workers.recipe import EngineRecipe


def add_setting_options(p: argparse.ArgumentParser) -> None:
    """The generation settings (a job spec's ``settings``), shared by ``generate`` and ``jobs submit``."""
    p.add_argument("--prompt", default="",
                   help="Motion prompt (default empty: the video follows only the image). Prompts that change over "
                        "time: '[0s: a man walks] [3s: he turns and waves]' (times in seconds of the video).")
    p.add_argument("--prompt-blend-sections", type=int, default=0, metavar="N",
                   help="With a timed --prompt, the N sections before each change blend into the next prompt "
                        "(0 to 16; default 0: the prompt changes at once).")
    p.add_argument("--negative-prompt", default="", help="Used only when --cfg > 1 (default empty).")
    p.add_argument("--model", choices=["original", "f1"], default="original",
                   help="original: FramePackI2V_HY (generates the end first); f1: FramePack-F1 (forward). "
                        "Default original.")
    p.add_argument("--seconds", type=float, default=5.0,
                   help="Video length in seconds, up to 120 (default 5). It is rounded to whole sections of "
                        "4 x --window frames at 30 fps: 5 gives 4.83 s, 3 gives 2.43 s (a note says so).")
    p.add_argument("--seed", type=int, default=31337,
                   help="Random seed, 0 to 2**63-1; the same seed and settings give the same video (default 31337).")
    p.add_argument("--steps", type=int, default=25, help="Denoising steps per section, 1 to 200 (default 25).")
    p.add_argument("--window", type=int, default=9, help="Latent window size (default 9, the trained value).")
    p.add_argument("--gs", type=float, default=10.0, help="Distilled guidance scale (default 10).")
    p.add_argument("--cfg", type=float, default=1.0,
                   help="Real CFG scale; 1 turns it off, above 1 doubles the model calls per step (default 1).")
    p.add_argument("--rs", type=float, default=0.0, help="CFG rescale, 0 to 1; used only when --cfg > 1 (default 0).")
    p.add_argument("--cache", choices=[m.value for m in CACHE_CHOICES], default=None,
                   help="Skip transformer work between steps: teacache (the official app's, the default), "
                        "first-block, magcache or taylorseer (diffusers' caches), or none (the full model at every "
                        "step, exactly). Caches are faster and change the result slightly.")
    p.add_argument("--cache-threshold", type=float, default=None,
                   help="How much change the cache lets accumulate before running the model again: higher is "
                        "faster and drifts more (default: the method's own, 0.15 for teacache).")
    p.add_argument("--teacache", action=argparse.BooleanOptionalAction, default=None,
                   help="Same as --cache teacache / --cache none (kept for the official app's users).")
    p.add_argument("--teacache-threshold", dest="cache_threshold", type=float, default=None,
                   help="Same as --cache-threshold, kept for the official app's users: TeaCache's threshold "
                        "(default 0.15).")
    p.add_argument("--lora", dest="loras", action="append", type=lora_argument, default=None,
                   metavar="PATH[:WEIGHT]",
                   help="Apply this LoRA (.safetensors: diffusers, musubi-tuner or kohya keys) at WEIGHT (default "
                        "1); repeat for several. Default: none.")
    p.add_argument("--lora-fuse", action="store_true", default=False,
                   help="Merge the LoRAs into the transformer's weights for the job: faster steps, results equal "
                        "within float tolerance; they are unmerged after it (default off).")
    p.add_argument("--sampler-variant", choices=["bh1", "bh2"], default="bh1",
                   help="The UniPC sampler's B(h): bh1 (B(h) = h, the official app's) or bh2 (B(h) = e^h - 1); "
                        "default bh1.")
    p.add_argument("--crf", type=int, default=16, help="MP4 quality, 0-51, lower is better (default 16).")
    p.add_argument("--resolution", type=int, default=640, help="Base resolution of the buckets (default 640).")
    p.add_argument("--preserve-gb", type=float, default=None,
                   help="GPU memory (GB) to leave for other programs; the memory plan offloads more the higher it "
                        "is (default: automatic, max(0.5, 5%% of the card)).")
    p.add_argument("--fp8", action=argparse.BooleanOptionalAction, default=None,
                   help="Store the transformer in fp8 (half the memory, slightly different results); default: "
                        "only when the plan needs it. See `python -m framepack_core plan`.")
    p.add_argument("--extend", dest="extend_video", type=Path, default=None, metavar="VIDEO",
                   help="Continue this clip (mp4, mov, webm): F1 continues from its last frames, the original model "
                        "bridges from its last frame (to --end-image if given). Without --image the start image is "
                        "the clip's last frame. The file is only read. Default: no clip.")
    p.add_argument("--context-frames", type=int, default=None, metavar="N",
                   help="With --extend: how many of the clip's last frames F1 sees as context (default: 73, enough "
                        "for the model's full 1x/2x/4x context, or the whole clip when shorter).")
    p.add_argument("--extend-output", choices=["new", "joined"], default="new",
                   help="With --extend: write only the new part (new, the default) or the clip followed by it "
                        "(joined).")
    add_story_options(p)


def add_story_options(p: argparse.ArgumentParser) -> None:
    """End frame, loop and keyframes (original model; docs/controls.md)."""
    p.add_argument("--end-image", type=Path, default=None, metavar="PATH",
                   help="Original model: the image the video ends at, bucketed to the start image's size "
                        "(default: none).")
    p.add_argument("--end-strength", type=float, default=1.0,
                   help="How strongly the video heads for the end image, 0 to 1 (default 1).")
    p.add_argument("--end-image-embedding-weight", type=float, default=0.0,
                   help="Mix the end image's SigLIP embedding into the start image's, 0 to 1; 0.5 averages them "
                        "(default 0).")
    p.add_argument("--loop", action="store_true", default=False,
                   help="Original model: end at the start image, for a seamless loop (default off).")
    p.add_argument("--keyframe", dest="keyframes", action="append", type=keyframe_argument, default=None,
                   metavar="SECONDS:PATH",
                   help="Original model: pin an image to the section that covers SECONDS, as the image it leads "
                        "into; repeat for more, one per section (default: none).")


def keyframe_argument(text: str) -> tuple[float, Path]:
    """``3:pose.png`` -> (3.0, Path("pose.png")); the path may hold colons (``2.5:C:/img.png``)."""
    seconds, _, path = text.partition(":")
    try:
        value = float(seconds)
    except ValueError:
        value = None
    if value is None or not path:
        raise argparse.ArgumentTypeError(f"{text!r} is not SECONDS:PATH, such as 3:pose.png")
    return value, Path(path)


def lora_argument(text: str) -> tuple[Path, float]:
    """``style.safetensors:0.8`` -> (Path("style.safetensors"), 0.8); without a weight it is 1. The path may hold
    colons (``C:/loras/style.safetensors``): only a number after the last colon is a weight."""
    path, colon, weight = text.rpartition(":")
    if colon:
        try:
            return Path(path), float(weight)
        except ValueError:
            pass
    if not text:
        raise argparse.ArgumentTypeError("names no file; give PATH or PATH:WEIGHT, such as style.safetensors:0.8")
    return Path(text), 1.0


def cache_from_args(args: argparse.Namespace) -> str:
    """``--cache``, or ``--teacache``/``--no-teacache`` as the older way to say teacache or none."""
    if args.teacache is not None and args.cache is not None:
        raise InvalidInputError("cache", "is given together with --teacache/--no-teacache",
                                "Give only --cache (--cache teacache or --cache none).")
    if args.cache is not None:
        return args.cache
    return "none" if args.teacache is False else "teacache"


def add_batch_options(p: argparse.ArgumentParser) -> None:
    """``jobs submit``'s batch: one job per image x prompt x seed (``framepack_core.jobs.batch``)."""
    p.add_argument("--image-dir", type=Path, default=None,
                   help="Batch: every .png, .jpg, .jpeg and .webp image in this folder, by name (with or "
                        "without --image). Default: only the --image files.")
    p.add_argument("--prompt-file", type=Path, default=None,
                   help="Batch: one prompt a line (UTF-8; blank lines and lines starting with # are skipped), "
                        "one job per prompt. Default: --prompt.")
    p.add_argument("--seeds", default=None,
                   help="Batch: these seeds, e.g. 1,2,3, one job per seed. Default: --seed.")
    p.add_argument("--seed-count", type=int, default=None,
                   help="Batch: N seeds counting up from --seed (--seed 7 --seed-count 3: 7, 8, 9), one job "
                        "per seed. Default: --seed only.")


def add_runtime_options(p: argparse.ArgumentParser) -> None:
    """Where the models come from and what runs them, shared by ``generate`` and ``jobs run``."""
    p.add_argument("--models-dir", type=Path, default=None,
                   help="Folder with the models in org/name/subfolder layout (default: the Hugging Face cache).")
    p.add_argument("--offline", action="store_true",
                   help="Never download; use the local cache only (default: download what is missing).")
    p.add_argument("--device", default="auto",
                   help="auto, cpu, cuda, cuda:N or mps (default auto: the CUDA or MPS GPU if there is one).")
    p.add_argument("--dtype", default="auto",
                   help="auto, float32, bfloat16 or float16 for every component (default auto: the official app's "
                        "bf16 transformer and fp16 encoders and VAE on a GPU, float32 on the CPU).")
    p.add_argument("--attention", choices=ATTENTION_CHOICES, default="auto",
                   help="The transformer's attention kernel: sage (SageAttention 2), flash (FlashAttention 3 on "
                        "Hopper, else 2), xformers, or native (PyTorch's SDPA). Default auto: the fastest one "
                        "installed that runs on this GPU, in that order; native on the CPU and on Apple GPUs.")
    p.add_argument("--compile", action="store_true", default=False,
                   help="Compile the transformer's blocks with torch.compile once per process: faster steps after "
                        "a slow first job (default off).")


def recipe_from_args(args: argparse.Namespace) -> EngineRecipe:
    """The engine ``add_runtime_options``' values describe, as a recipe that this process or a worker builds."""
    from framepack_core.pipeline.timings import DEFAULT_TIMINGS_PATH
    from framepack_core.workers.recipe import EngineRecipe

    return EngineRecipe(device=args.device, dtype=args.dtype, models_dir=args.models_dir, offline=args.offline,
                        attention=args.attention, compile=args.compile, timings_path=DEFAULT_TIMINGS_PATH)


def engine_from_args(args: argparse.Namespace) -> FramePackEngine | None:
    """The engine ``add_runtime_options``' values describe, or None after printing why the device or the attention
    backend is refused."""
    from framepack_core.models.acceleration import check_runtime_options
    from framepack_core.models.devices import resolve_device_config
    from framepack_core.models.runtime import RuntimeOptions

    runtime = RuntimeOptions(attention=args.attention, compile=args.compile)
    try:
        config = resolve_device_config(args.device, args.dtype)
        check_runtime_options(runtime, config.device, config.transformer_dtype)  # before any model loads
    except ValueError as error:  # InvalidInputError is one too
        print(f"error: {with_option_name(error)}", file=sys.stderr)
        return None
    return recipe_from_args(args).build()


def request_from_args(args: argparse.Namespace, image: Path, output: Path | None = None,
                      save_latents: Path | None = None) -> GenerationRequest:
    """The request that ``add_setting_options``' values describe (not yet validated)."""
    from framepack_core.request import GenerationRequest

    return GenerationRequest(
        image=Path(image), prompt=args.prompt, negative_prompt=args.negative_prompt, model=args.model,
        seconds=args.seconds, seed=args.seed, steps=args.steps, latent_window_size=args.window,
        distilled_guidance=args.gs, cfg=args.cfg, cfg_rescale=args.rs, cache=cache_from_args(args),
        cache_threshold=args.cache_threshold, crf=args.crf, resolution=args.resolution,
        sampler_variant=args.sampler_variant, output=output, save_latents=save_latents,
        gpu_memory_preservation=args.preserve_gb, fp8=args.fp8,
        prompt_blend_sections=args.prompt_blend_sections,
        extend_video=args.extend_video, context_frames=args.context_frames, extend_output=args.extend_output,
        **_story_settings(args),
    )


def _story_settings(args: argparse.Namespace) -> dict:
    from framepack_core.request import Keyframe, LoraChoice

    return {"loras": tuple(LoraChoice(path, weight) for path, weight in args.loras or ()),
            "lora_fuse": args.lora_fuse, "end_image": args.end_image, "end_strength": args.end_strength,
            "end_image_embedding_weight": args.end_image_embedding_weight, "loop": args.loop,
            "keyframes": tuple(Keyframe(seconds, path) for seconds, path in args.keyframes or ())}


def request_notes(request: GenerationRequest, *, with_request_notes: bool = True) -> list[str]:
    """What to tell the user about a valid ``request`` before it runs: the video's true length, and the request's
    own notes (an empty prompt) unless the engine is about to say them itself (``with_request_notes=False``)."""
    from framepack_core.sampling.schedule import FPS, VAE_TEMPORAL_COMPRESSION, video_length

    notes = []
    length = video_length(request.seconds, request.latent_window_size)
    # A video is the start frame plus whole sections, so the length asked for is rounded; the page says so too.
    if f"{length.seconds:.2f}" != f"{request.seconds:.2f}":
        block = request.latent_window_size * VAE_TEMPORAL_COMPRESSION
        blocks = f"{length.sections} block{'s' if length.sections != 1 else ''}"
        notes.append(f"--seconds {request.seconds:g} gives a {length.seconds:.2f} s video: {length.pixel_frames} "
                     f"frames at {FPS} fps (the start frame and {blocks} of {block}, as --window "
                     f"{request.latent_window_size} sets)")
    return notes + ([option_text(note) for note in request.notes()] if with_request_notes else [])


def add_generate_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("generate", help="Generate a video from one image and a prompt.")
    p.add_argument("--image", default=None,
                   help="Input image (PNG, JPEG, WebP, ...); required unless --extend is given (default: the clip's "
                        "last frame).")
    p.add_argument("--from", dest="from_video", type=Path, default=None, metavar="VIDEO.mp4",
                   help="Take the settings from a video this app made (its mp4 metadata or .json sidecar); setting "
                        "options given as well override them. --image must be the video's own input image. "
                        "Default: the settings come from the options.")
    add_setting_options(p)
    add_runtime_options(p)
    p.add_argument("--output", type=Path, default=None, help="Output .mp4 (default <time>_<model>_seed<N>.mp4 in outputs/ beside the code, as the app's).")
    p.add_argument("--save-latents", type=Path, default=None,
                   help="Also write the final latents to this .safetensors file (default: not written).")
    p.add_argument("--job-dir", type=Path, default=None,
                   help="Keep the job's checkpoints in this folder: run the same command again after a crash or "
                        "Ctrl-C and it resumes from the last finished section (bit-identical result). Default: "
                        "no checkpoints.")
    p.add_argument("--reroll-from", type=int, default=None, metavar="K",
                   help="Re-roll the job in --job-dir from section K (numbered in generation order, as progress "
                        "shows them; the original model makes the END of the clip first) into a new folder "
                        "<job-dir>-r<N> and video <name>_r<N>.mp4: the sections before K are kept bit-identical, "
                        "K and later are sampled with --seed (default: a new random one) and, if given, --prompt. "
                        "Every other setting comes from the job folder; the same command with the same --seed "
                        "resumes an interrupted re-roll. Default: no re-roll.")
    p.add_argument("--quiet", action="store_true", help="No progress bar (default: a progress bar on stderr).")
    return p


# Request fields whose command-line option is not simply "--" + the field name with dashes.
OPTION_FOR_FIELD = {"latent_window_size": "--window", "distilled_guidance": "--gs", "cfg_rescale": "--rs",
                     "gpu_memory_preservation": "--preserve-gb",
                     "extend_video": "--extend", "keyframes": "--keyframe",
                     "batch_size": "--image/--prompt-file/--seeds", "loras": "--lora"}


def option_for_field(field: str) -> str:
    """The option that sets ``field`` (``latent_window_size`` -> ``--window``, ``job_dir`` -> ``--job-dir``)."""
    return OPTION_FOR_FIELD.get(field, "--" + field.replace("_", "-"))


def option_text(text: str) -> str:
    """An engine text (an event's message or hint) with each setting it points at named by its option."""
    return render_fields(text, option_for_field)


def with_option_name(error: Exception) -> str:
    """The error as text, naming the options the user typed (``--window``) rather than the request fields."""
    if not isinstance(error, FramePackError):
        return str(error)
    text = error.render(option_for_field)
    if not isinstance(error, InvalidInputError) or not error.field.replace("_", "").isalnum():
        return text  # "settings.steps": a field of a spec, not an option
    prefix = f"{error.field}: "
    return option_for_field(error.field) + ": " + text[len(prefix):] if text.startswith(prefix) else text
