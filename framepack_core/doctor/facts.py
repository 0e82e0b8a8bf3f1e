"""What ``doctor`` looks at, gathered once into plain data, so every check is a function of these facts and can be
tested with made-up ones (an RTX 50 card with a cu126 torch, no ffmpeg, a full disk) on any machine.

``gather_facts`` asks the real machine: torch, ``nvidia-smi`` (which sees a GPU even when torch cannot), the
memory planner for the default job, the model files' headers (never the weights), the drives and the PATH.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from framepack_core.memory.hardware import HardwareInfo
from framepack_core.memory.plan import MemoryPlan
from framepack_core.models.inventory import ModelInventory

# Optional attention packages: the module that must import, and the pip command that installs it.
ATTENTION_PACKAGES = {"flash": ("flash_attn", "pip install flash-attn --no-build-isolation"),
                      "sage": ("sageattention", "pip install sageattention"),
                      "xformers": ("xformers", "pip install xformers")}


@dataclass(frozen=True)
class TorchFacts:
    version: str  # "2.7.1+cu128"
    cuda_build: str | None  # torch.version.cuda: "12.8", or None for a CPU-only build
    arch_list: tuple[str, ...]  # the GPU architectures the build has kernels for: ("sm_80", ..., "sm_120")
    cuda_available: bool
    mps_available: bool = False


@dataclass(frozen=True)
class AttentionFacts:
    """One attention backend: whether its package imports (``None``: not installed) and why not."""

    backend: str
    imports: bool | None
    detail: str = ""


@dataclass(frozen=True)
class SystemFacts:
    python_version: tuple[int, int, int]
    system: str  # platform.system(): "Linux", "Windows", "Darwin"
    torch: TorchFacts | None  # None: torch does not import (``torch_error`` says why)
    torch_error: str = ""
    nvidia_gpus: tuple[str, ...] = ()  # names nvidia-smi lists
    driver_version: str | None = None  # from nvidia-smi
    hardware: HardwareInfo | None = None  # the device jobs run on, and the RAM
    swap_total_bytes: int = 0
    swap_free_bytes: int = 0
    ffmpeg: str | None = None  # path
    ffprobe: str | None = None
    attention: tuple[AttentionFacts, ...] = ()
    models: ModelInventory | None = None
    models_error: str = ""
    download_bytes: int = 0  # what the missing components would download
    demo: bool = False  # the tiny model set, not the real one
    output_dir: Path = Path("outputs")
    output_free_bytes: int = 0
    output_write_error: str | None = None  # None: a file could be written and removed there
    plan: MemoryPlan | None = None  # for the default job (original model, 640, window 9)
    plan_error: str = ""
    notes: tuple[str, ...] = field(default_factory=tuple)


def gather_facts(models_dir: Path | None, output_dir: Path, device: str = "auto", *, demo: bool = False,
                 read_models: bool = True) -> SystemFacts:
    """Ask this machine. ``read_models=False`` skips reading the model files' headers (the fast start-up check)."""
    torch_facts, torch_error = _torch_facts()
    gpus, driver = _nvidia_smi()
    hardware = _hardware(device) if torch_facts is not None else None
    swap_total, swap_free = _swap()
    models, models_error, download = (None, "", 0)
    if read_models:
        models, models_error, download = _models(models_dir)
    plan, plan_error = _default_plan(models_dir, device) if torch_facts is not None else (None, "")
    free, write_error = _output_dir(output_dir)
    return SystemFacts(
        python_version=tuple(sys.version_info[:3]), system=platform.system(), torch=torch_facts,
        torch_error=torch_error, nvidia_gpus=gpus, driver_version=driver, hardware=hardware,
        swap_total_bytes=swap_total, swap_free_bytes=swap_free, ffmpeg=shutil.which("ffmpeg"),
        ffprobe=shutil.which("ffprobe"), attention=_attention(hardware), models=models, models_error=models_error,
        download_bytes=download, demo=demo, output_dir=output_dir, output_free_bytes=free,
        output_write_error=write_error, plan=plan, plan_error=plan_error)


def _torch_facts() -> tuple[TorchFacts | None, str]:
    try:
        import torch
    except Exception as error:  # noqa: BLE001 - a broken install raises anything (OSError for a missing DLL)
        return None, f"{type(error).__name__}: {error}"
    cuda_available = torch.cuda.is_available()
    arch_list = tuple(torch.cuda.get_arch_list()) if cuda_available else ()
    mps = getattr(torch.backends, "mps", None)
    return TorchFacts(torch.__version__, torch.version.cuda, arch_list, cuda_available,
                      bool(mps is not None and mps.is_available())), ""


def _nvidia_smi() -> tuple[tuple[str, ...], str | None]:
    """GPU names and the driver version, from nvidia-smi (there whenever an NVIDIA driver is installed)."""
    if shutil.which("nvidia-smi") is None:
        return (), None
    try:
        listed = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return (), None
    rows = [[part.strip() for part in line.split(",")] for line in listed.splitlines() if line.strip()]
    return tuple(row[0] for row in rows), (rows[0][1] if rows and len(rows[0]) > 1 else None)


def _hardware(device: str) -> HardwareInfo | None:
    from framepack_core.memory.hardware import TorchHardwareProbe

    try:
        return TorchHardwareProbe().probe(device)
    except Exception:  # noqa: BLE001 - a device that cannot be asked is reported by the GPU checks
        return None


def _swap() -> tuple[int, int]:
    """Swap (Linux, macOS) or the page file (Windows), total and free bytes."""
    try:
        import psutil
    except ImportError:
        return _swap_from_proc()
    swap = psutil.swap_memory()
    return int(swap.total), int(swap.free)


def _swap_from_proc() -> tuple[int, int]:
    try:
        lines = Path("/proc/meminfo").read_text().splitlines()
    except OSError:
        return 0, 0
    values = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in lines if line.split()[1:2]}
    return values.get("SwapTotal", 0), values.get("SwapFree", 0)


def _attention(hardware: HardwareInfo | None) -> tuple[AttentionFacts, ...]:
    found = [AttentionFacts("native", True, "torch scaled_dot_product_attention")]
    for backend, (module, _) in ATTENTION_PACKAGES.items():
        if importlib.util.find_spec(module) is None:
            found.append(AttentionFacts(backend, None, "not installed"))
            continue
        try:  # installed is not enough: a wheel built for another torch fails here (undefined symbol ...)
            __import__(module)
        except Exception as error:  # noqa: BLE001
            found.append(AttentionFacts(backend, False, f"{type(error).__name__}: {error}"[:300]))
        else:
            found.append(AttentionFacts(backend, True, "imports"))
    return tuple(found)


def _models(models_dir: Path | None) -> tuple[ModelInventory | None, str, int]:
    from framepack_core.models.hub_files import download_bytes
    from framepack_core.models.inventory import inspect_models

    try:
        inventory = inspect_models("original", models_dir=models_dir)
    except Exception as error:  # noqa: BLE001 - a folder that cannot be read: the check says so
        return None, f"{type(error).__name__}: {error}", 0
    missing = tuple(status.files for status in inventory.incomplete)
    size = download_bytes(missing, True)[0] if missing else 0
    return inventory, "", size


def _default_plan(models_dir: Path | None, device: str) -> tuple[MemoryPlan | None, str]:
    from framepack_core.memory.job_planning import JobPlanner
    from framepack_core.models.loading import ModelSource
    from framepack_core.request import GenerationRequest

    try:
        planner = JobPlanner(ModelSource(models_dir=models_dir, offline=True), device)
        return planner.plan(GenerationRequest(image=Path("any.png")), None), ""
    except Exception as error:  # noqa: BLE001 - reported as the memory check's finding
        return None, f"{type(error).__name__}: {error}"


def _output_dir(folder: Path) -> tuple[int, str | None]:
    from framepack_core.models.inventory import free_bytes

    free = free_bytes(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".doctor-", delete=True) as probe:
            probe.write(b"x")
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as error:
        return free, f"{type(error).__name__}: {error}"
    return free, None
