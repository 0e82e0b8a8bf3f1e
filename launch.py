#!/usr/bin/env python3
"""One-click entry point: check the machine, build the settings, start the job service and serve the page.

    python launch.py                 # real models (downloaded on the first job), http://127.0.0.1:7860
    python launch.py --demo          # offline, CPU, tiny random-weight models: try the app in a minute

Checks run first and say plainly what is missing and how to fix it. Models load lazily on the first job.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import fields, replace
from pathlib import Path
from typing import TYPE_CHECKING

MIN_PYTHON = (3, 10)
REPO_ROOT = Path(__file__).resolve().parent
DEFAULT_TINY_MODELS = REPO_ROOT / "tiny_models"  # framepack_core.models.tiny.DEFAULT_TINY_MODELS_DIR

if TYPE_CHECKING:
    from app.service.generation import GenerationService
    from app.service.outputs import ServedFiles
    from app.settings import Settings
    from framepack_core.memory.hardware import HardwareInfo
    from framepack_core.models.devices import DeviceConfig
    from framepack_core.pipeline.engine import FramePackEngine
    from framepack_core.workers.recipe import EngineRecipe
    from framepack_core.workers.remote import Worker

logger = logging.getLogger("launch")
# "(None: the Hugging Face cache)" or "None: no Ray." in a setting's description.
_WHAT_NONE_MEANS = re.compile(r" ?\(None: [^)]*\)| ?None: [^.]*\.")


def build_parser() -> argparse.ArgumentParser:
    from app.settings import Settings
    from framepack_core.models.runtime import ATTENTION_CHOICES

    about = Settings.describe()

    def described(name: str, default: str | None = None) -> str:
        """The setting's description and its default (``Settings``' own unless ``default`` words it)."""
        if default is None:
            value = next(f.default for f in fields(Settings) if f.name == name)
            default = f"{value:g}" if isinstance(value, float) else str(value)
        # What None means is the default here, said once: "Default: no Ray", not "None: no Ray. Default: no Ray".
        return f"{_WHAT_NONE_MEANS.sub('', about[name])} Default: {default}."

    p = argparse.ArgumentParser(prog="launch.py", description="FramePack image-to-video app (Gradio).",
                                epilog="Every option can also be set as an environment variable FRAMEPACK_<NAME>, "
                                       "e.g. FRAMEPACK_PORT=7861; flags win over the environment.")
    # Defaults are None so that "not given" falls through to the environment, then to Settings' defaults.
    p.add_argument("--server", dest="host", default=None, help=about["host"] + " Default 127.0.0.1.")
    p.add_argument("--port", type=int, default=None, help=about["port"])
    p.add_argument("--share", action="store_true", default=None, help=described("share", "off"))
    p.add_argument("--auth", action="append", default=None, metavar="USER:PASS",
                   help="Ask for this login (repeat for more users). Default: no login.")
    p.add_argument("--auth-file", type=Path, default=None, metavar="FILE",
                   help="A file of USER:PASS lines. Default: none.")
    p.add_argument("--admin", action="append", default=None, metavar="USER", dest="admins",
                   help=about["admins"] + " Repeat for more. Default: none.")
    p.add_argument("--max-pending-per-user", type=int, default=None, metavar="N",
                   help=described("max_pending_per_user"))
    p.add_argument("--inbrowser", action="store_true", default=None, help=described("inbrowser", "off"))
    p.add_argument("--output-dir", type=Path, default=None, help=about["output_dir"] + " Default: outputs/ beside launch.py.")
    p.add_argument("--models-dir", type=Path, default=None, help=described("models_dir", "the Hugging Face cache"))
    p.add_argument("--loras-dir", type=Path, default=None, metavar="DIR",
                   help=described("loras_dir", "loras/ next to the --models-dir folder when one is given, else "
                                               "loras/ beside launch.py"))
    p.add_argument("--offline", action="store_true", default=None, help=described("offline", "off"))
    p.add_argument("--demo", action="store_true", default=None,
                   help=about["demo"] + f" Builds them into {DEFAULT_TINY_MODELS.name}/ on first use. Default: off.")
    p.add_argument("--device", default=None, help=described("device", "auto, the CUDA or MPS GPU if there is one"))
    p.add_argument("--devices", default=None, metavar="LIST",
                   help=described("devices", "one job at a time on --device"))
    p.add_argument("--ray", default=None, metavar="ADDRESS",
                   help=described("ray", "no Ray") + " See docs/scaling.md.")
    p.add_argument("--ray-workers", type=int, default=None, metavar="N", help=described("ray_workers", "one per GPU "
                                                                                       "of the cluster"))
    p.add_argument("--dtype", default=None,
                   help=described("dtype", "auto: the official app's dtypes on a GPU, float32 on the CPU"))
    p.add_argument("--attention", default=None, choices=ATTENTION_CHOICES,
                   help=described("attention"))
    p.add_argument("--compile", action="store_true", default=None, help=described("compile", "off"))
    p.add_argument("--keep-intermediates", action="store_true", default=None,
                   help=described("keep_intermediates", "off"))
    p.add_argument("--max-file-size-mb", type=float, default=None, help=described("max_file_size_mb"))
    p.add_argument("--concurrency-limit", type=int, default=None, help=described("concurrency_limit"))
    p.add_argument("--idle-release-minutes", type=float, default=None, metavar="MIN",
                   help=described("idle_release_minutes", "keep them loaded"))
    return p


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Flags over FRAMEPACK_* variables over defaults; --demo forces offline CPU tiny models."""
    from app.settings import Settings, parse_credentials, read_auth_file

    auth: list[tuple[str, str]] = [parse_credentials(item, "--auth") for item in args.auth or []]
    if args.auth_file is not None:
        auth += read_auth_file(args.auth_file)
    settings = Settings.from_env(
        host=args.host, port=args.port, share=args.share, auth=tuple(auth) or None, inbrowser=args.inbrowser,
        admins=tuple(args.admins) if args.admins else None, max_pending_per_user=args.max_pending_per_user,
        output_dir=args.output_dir, models_dir=args.models_dir, loras_dir=args.loras_dir, offline=args.offline,
        demo=args.demo, device=args.device, devices=args.devices, ray=args.ray,
        ray_workers=args.ray_workers, dtype=args.dtype, attention=args.attention, compile=args.compile,
        keep_intermediates=args.keep_intermediates,
        max_file_size_mb=args.max_file_size_mb, concurrency_limit=args.concurrency_limit,
        idle_release_minutes=args.idle_release_minutes,
    )
    if settings.demo:
        settings = replace(settings, device="cpu", dtype="auto", offline=True,
                           models_dir=settings.models_dir or DEFAULT_TINY_MODELS)
    return settings


# Checks ---------------------------------------------------------------------------------------------------------

def check_environment(settings: Settings) -> tuple[list[str], list[str]]:
    """(problems that stop the app, warnings). Each message says what is wrong and how to fix it."""
    problems: list[str] = []
    warnings: list[str] = []
    if sys.version_info < MIN_PYTHON:
        problems.append(f"Python {sys.version.split()[0]} is too old: this app needs Python "
                        f"{'.'.join(map(str, MIN_PYTHON))} or newer (3.10 or 3.11 recommended). "
                        "Fix: install a newer Python and create the virtual environment with it.")
    try:
        import torch  # noqa: F401
    except ImportError:
        problems.append("PyTorch is not installed. Fix: install a CUDA build for your GPU first, e.g. "
                        "'pip install torch --index-url https://download.pytorch.org/whl/cu128' "
                        "(or 'pip install torch' for CPU only), then 'pip install -r requirements.txt'.")
    if not problems:  # doctor's fast part: the GPU and torch build, driver, memory, disk, ffmpeg, output folder
        from framepack_core.doctor import fast_checks

        prepare_models(settings)  # demo mode: checks measure the tiny set, not the real one it stands in for
        report = fast_checks(settings.models_dir, settings.output_dir, settings.device, demo=settings.demo)
        # Only what makes every job fail stops the app; memory and disk may suit smaller jobs. "No GPU" is said by
        # the Device line already.
        stopping = [r for r in report.failed if r.name in ("GPU support", "NVIDIA driver", "Output folder")]
        problems += [f"{r.name}: {r.found} Fix: {r.fix}" for r in stopping]
        warnings += [f"{r.name}: {r.found} Fix: {r.fix}" for r in (*report.failed, *report.warnings)
                     if r not in stopping and r.name != "GPU support"]
    if settings.exposed_without_auth:
        where = "a public share link" if settings.share else f"every network interface of {settings.host}"
        warnings.append(f"SECURITY: the app is reachable through {where} and asks for NO login. Anyone who can "
                        "reach it can run jobs on your GPU and see your outputs. Fix: add --auth USER:PASS (or "
                        "--auth-file FILE), or use --server 127.0.0.1 without --share.")
    return problems, warnings


def resolve_device(settings: Settings) -> DeviceConfig:
    from framepack_core.models.devices import resolve_device_config

    return resolve_device_config(settings.device, settings.dtype)


def check_attention(settings: Settings, config: DeviceConfig) -> None:
    """An explicit attention backend that cannot run here stops the start (``InvalidInputError``, with the command
    that installs it), rather than every job."""
    from framepack_core.models.acceleration import check_runtime_options
    from framepack_core.models.runtime import RuntimeOptions

    check_runtime_options(RuntimeOptions(attention=settings.attention), config.device, config.transformer_dtype)


def describe_device(config: DeviceConfig, demo: bool = False, models_dir: Path | None = None) -> str:
    import torch

    text = config.describe()
    if config.device.type == "cuda":
        properties = torch.cuda.get_device_properties(config.device)
        text += f", {properties.name}, {properties.total_memory / 2**30:.0f} GiB"
    elif config.device.type == "cpu" and not demo:
        text += (f". No GPU in use: {real_models_on_cpu(models_dir)}. --demo shows the app in seconds with tiny "
                 "random weights.")
    return text


def real_models_on_cpu(models_dir: Path | None, hardware: HardwareInfo | None = None) -> str:
    """Whether the real models can run on this CPU (``hardware``: the probed machine by default), by the same plan
    as ``python -m framepack_core plan --device cpu``, so the two never disagree."""
    from framepack_core.memory.hardware import TorchHardwareProbe
    from framepack_core.memory.plan import GIB, Workload
    from framepack_core.memory.planner import plan_memory
    from framepack_core.models.sizes import find_sizes

    sizes, _ = find_sizes(models_dir=models_dir)  # the original model at the default settings, as `plan` has it
    plan = plan_memory(sizes, hardware or TorchHardwareProbe().probe("cpu"), Workload.from_resolution())
    if plan.fits:
        return "the real models fit in RAM here, but would take hours per video"
    return (f"the real models do not fit here: they need {plan.peak_ram_gb:.1f} GiB of RAM, "
            f"{plan.ram_budget_bytes / GIB:.1f} GiB available (`python -m framepack_core plan --device cpu` "
            "shows why)")


# Composition ----------------------------------------------------------------------------------------------------

def prepare_models(settings: Settings) -> None:
    """Demo mode: build the tiny model set on first use (a few seconds, a few MB); a complete one is reused."""
    if settings.demo and settings.models_dir is not None:
        from framepack_core.models.tiny import build_tiny_models

        build_tiny_models(settings.models_dir)


def engine_factory(settings: Settings) -> Callable[[], FramePackEngine]:
    """What the service calls on the first job: nothing heavy is loaded before someone asks for a video."""
    return engine_recipe(settings).build


def engine_recipe(settings: Settings) -> EngineRecipe:
    """The app's engine, as a recipe that this process or a worker process builds on its device. Each job plans
    where the models live from the machine's free memory and the page's memory settings; the learned stage times
    live beside the app's queue, in the output folder it was given."""
    from framepack_core.jobs.queue import QUEUE_FOLDER
    from framepack_core.pipeline.timings import TIMINGS_FILE_NAME
    from framepack_core.workers.recipe import EngineRecipe

    return EngineRecipe(device=settings.device, dtype=settings.dtype, models_dir=settings.models_dir,
                        offline=settings.offline, attention=settings.attention, compile=settings.compile,
                        timings_path=settings.output_dir / QUEUE_FOLDER / TIMINGS_FILE_NAME)


def build_workers(settings: Settings) -> list[Worker]:
    """The workers ``--devices`` or ``--ray`` ask for (none: the app runs one job at a time itself).
    ``InvalidInputError`` (field ``devices``, ``ray`` or ``ray_workers``) for a device this machine does not have,
    both at once, Ray missing or its cluster out of reach."""
    from framepack_core.workers.selection import make_workers

    return make_workers(engine_recipe(settings), devices=settings.devices, ray=settings.ray,
                        ray_workers=settings.ray_workers)


def build_service(settings: Settings, workers: Sequence[Worker] = ()) -> GenerationService:
    from app.service.generation import GenerationService
    from framepack_core.jobs.queue import JobQueue
    from framepack_core.workers.process import ProcessWorker

    idle = settings.idle_release_minutes
    # Estimates plan as a worker of this machine does, for its share of the RAM (a Ray actor's device and RAM are
    # another machine's: those are estimated for this one's).
    local = [worker for worker in workers if isinstance(worker, ProcessWorker)]
    factory = local[0].recipe.build if local else engine_factory(settings)
    # The queue persists under the output folder: queued jobs survive a restart, interrupted ones resume.
    return GenerationService(factory, settings.output_dir,
                             keep_intermediates=settings.keep_intermediates,
                             idle_release_s=None if idle is None else idle * 60,
                             queue=JobQueue.for_output_dir(settings.output_dir), workers=workers)


def serve(settings: Settings, service: GenerationService) -> None:
    """Build the page and block serving it until Ctrl-C."""
    from app.service.outputs import ServedFiles

    served = ServedFiles()
    try:
        _serve(settings, service, served)
    finally:
        served.close()  # the links to users' videos go with the app


def _serve(settings: Settings, service: GenerationService, served: ServedFiles) -> None:
    from app.api.routes import API_PREFIX, build_api
    from app.logins import LoginGuard
    from app.ui.page import build_app, page_style
    from framepack_core.lora.library import LoraFolder

    # One LoRA folder for the page and the API, so each file is hashed once.
    loras = LoraFolder(settings.lora_folder)
    demo = build_app(settings, service, served, loras=loras)
    demo.queue(default_concurrency_limit=settings.concurrency_limit)
    # One guard for the page's login and the API's: failed logins back off, whichever door they knock on.
    guard = LoginGuard(settings.auth)
    demo.launch(
        server_name=settings.host, server_port=settings.port, share=settings.share,
        auth=guard.gradio_auth if settings.auth else None, auth_message="FramePack: log in to continue.",
        inbrowser=settings.inbrowser,
        # Gradio serves no folder of ours by path: the output folder holds every user's videos and the queue, so
        # it is blocked outright, and each file a page shows reaches it as a served copy (app.outputs.ServedFiles)
        # in Gradio's cache. See docs/security.md.
        allowed_paths=[], blocked_paths=[str(settings.output_dir)], max_file_size=settings.max_file_size_bytes,
        # No run history: it would keep every prompt and output in the browser's storage.
        ssr_mode=False, mcp_server=False, footer_links=["api"], run_history=False, prevent_thread_lock=True,
        # Gradio's own start-up lines tell the user to "set `share=True` in `launch()`", code they never see; the
        # lines below say the same with our flags. (A share link and its failures are printed even when quiet.)
        quiet=True,
        **page_style(),
    )
    # The job API on the same server (and share link), with the same logins; see app/api/routes.py.
    demo.app.mount(API_PREFIX, build_api(service, settings, guard=guard, loras=loras))
    print(startup_lines(demo.local_url, f"{demo.local_url.rstrip('/')}{API_PREFIX}/docs", settings.share), flush=True)
    demo.block_thread()


def startup_lines(local_url: str, api_docs_url: str, share: bool) -> str:
    """Where the page and the job API are, and how to share them (with this launcher's flags, not Gradio's code)."""
    lines = [f"* Running on local URL:  {local_url.rstrip('/')}", f"* Job API: {api_docs_url}"]
    if not share:
        lines.append("* To create a public link, restart with --share (add --auth USER:PASS so that it asks for a "
                     "login).")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if sys.version_info < MIN_PYTHON:  # before importing anything that needs a newer Python
        print(f"error: Python {'.'.join(map(str, MIN_PYTHON))} or newer is needed, this is "
              f"{sys.version.split()[0]}. Install a newer Python and recreate the virtual environment.")
        return 2
    # Gradio reads these when imported; set them before anything imports it.
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    args = build_parser().parse_args(argv)
    try:
        settings = settings_from_args(args)
    except ValueError as error:
        print(f"error: {error}")
        return 2
    if settings.offline:
        os.environ["HF_HUB_OFFLINE"] = "1"

    problems, warnings = check_environment(settings)
    for warning in warnings:
        _banner(warning) if warning.startswith("SECURITY") else print(f"warning: {warning}")
    if problems:
        for problem in problems:
            print(f"error: {problem}")
        return 1
    try:
        config = resolve_device(settings)
        check_attention(settings, config)
        workers = build_workers(settings)
    except ValueError as error:
        from framepack_core.cli.options import with_option_name  # --device, --dtype, --attention: the CLI's too

        print(f"error: {with_option_name(error)}")
        return 2
    print(f"Device: {describe_device(config, settings.demo, settings.models_dir)}")
    if workers:
        print(f"Workers: {', '.join(worker.name for worker in workers)} (one job at a time each, side by side)")
    if settings.demo:
        print(f"Demo mode: tiny random-weight models in {settings.models_dir} (the video is noise).")
    settings.output_dir.mkdir(parents=True, exist_ok=True)
    print(f"Outputs: {settings.output_dir}")
    prepare_models(settings)

    from framepack_core.errors import FramePackError

    try:
        service = build_service(settings, workers)
    except FramePackError as error:  # e.g. an output folder that cannot hold the queue
        print(f"error: {error}")
        return 1
    if service.store.recovery_note:
        _banner(service.store.recovery_note)
    service.start()
    health = service.health()
    if health.queue_owner:
        print(f"note: {health.problem} This app queues jobs and shows them; it runs them once that process ends.")
    # SIGTERM (a service manager, a test harness) ends the app like Ctrl-C: the running job is stopped after
    # its current step and keeps its partial video.
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        serve(settings, service)
    except KeyboardInterrupt:
        pass
    finally:
        service.stop(timeout=10)
    return 0


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _banner(text: str) -> None:
    line = "!" * 100
    print(f"\n{line}\n{text}\n{line}\n", flush=True)
    logger.warning(text)


if __name__ == "__main__":
    sys.exit(main())
