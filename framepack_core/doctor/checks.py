"""Each check of ``doctor``: a pure function of the gathered ``SystemFacts`` that says what it found and, when
something is wrong, the exact fix. The wording answers the install problems FramePack users report most: an RTX 50
card with a torch that has no kernels for it ("no kernel image is available"), a crash at "Loading checkpoint
shards" from too little RAM and page file, a missing ffmpeg, attention packages built for another torch."""

from __future__ import annotations

from collections.abc import Callable

from framepack_core.doctor.facts import ATTENTION_PACKAGES, SystemFacts
from framepack_core.memory.plan import Placement
from framepack_core.models.components import Component
from framepack_core.doctor.report import CheckResult, CheckStatus

GIB = 1024**3
MIN_PYTHON = (3, 10)
MIN_TORCH = (2, 5)
# The CUDA build of torch to install: 12.8 has kernels for every card from the GTX 16/RTX 20 series to the RTX 50
# series (sm_120, torch 2.7 and newer); 12.6 still has them for older cards (sm_50 to sm_90).
TORCH_CU128 = "pip install --upgrade --force-reinstall torch --index-url https://download.pytorch.org/whl/cu128"
TORCH_CU126 = "pip install --upgrade --force-reinstall torch --index-url https://download.pytorch.org/whl/cu126"
DRIVER_DOWNLOAD = "https://www.nvidia.com/Download/index.aspx"
# The oldest driver (Linux, Windows) each CUDA major version's torch builds run on (NVIDIA's minor-version
# compatibility table); RTX 50 cards need the R570 drivers whatever the build.
MIN_DRIVER = {11: ((450, 80), (452, 39)), 12: ((525, 60), (527, 41))}
BLACKWELL_DRIVER = (570, 0)
OUTPUT_FAIL_BYTES, OUTPUT_WARN_BYTES = GIB // 2, 5 * GIB
FFMPEG_INSTALL = {"Windows": "winget install ffmpeg", "Darwin": "brew install ffmpeg"}


def check_python(facts: SystemFacts) -> CheckResult:
    version = ".".join(map(str, facts.python_version))
    if facts.python_version[:2] < MIN_PYTHON:
        return CheckResult("Python", CheckStatus.FAILED, f"Python {version} is too old: the app needs 3.10 or newer.",
                           "Install Python 3.10 or 3.11 and create the virtual environment again with it.")
    return CheckResult("Python", CheckStatus.OK, f"Python {version}")


def check_torch(facts: SystemFacts) -> CheckResult:
    if facts.torch is None:
        return CheckResult("PyTorch", CheckStatus.FAILED, f"PyTorch does not import ({facts.torch_error}).",
                           f"Install a CUDA build for your GPU first ({TORCH_CU128}; plain 'pip install torch' for "
                           "CPU only), then 'pip install -r requirements.txt'.")
    numbers = tuple(int(part) for part in facts.torch.version.split("+")[0].split(".")[:2] if part.isdigit())
    build = f"CUDA {facts.torch.cuda_build}" if facts.torch.cuda_build else "CPU-only build"
    if numbers < MIN_TORCH:
        return CheckResult("PyTorch", CheckStatus.FAILED, f"torch {facts.torch.version} ({build}) is too old: the "
                           "app needs 2.5 or newer.", TORCH_CU128)
    return CheckResult("PyTorch", CheckStatus.OK, f"torch {facts.torch.version} ({build})")


def check_gpu_support(facts: SystemFacts) -> CheckResult:
    """Whether torch can run kernels on this GPU: the build's architectures against the card's compute capability."""
    name = "GPU support"
    torch = facts.torch
    if torch is None:
        return CheckResult(name, CheckStatus.SKIPPED, "PyTorch does not import (see above).")
    hardware = facts.hardware
    if torch.cuda_available and hardware is not None and hardware.capability is not None:
        major, minor = hardware.capability
        arch = f"sm_{major}{minor}"
        card = f"{hardware.device_name} (compute capability {major}.{minor}, {arch})"
        if torch.arch_list and arch not in torch.arch_list:
            built = f"{torch.arch_list[0]} to {torch.arch_list[-1]}"
            series = "RTX 50 series cards need" if major >= 12 else "This card needs"
            fix = (f"{series} a torch built with CUDA 12.8 (torch 2.7 or newer): {TORCH_CU128}" if major >= 10
                   else f"Install a build that still has kernels for this card: {TORCH_CU126}")
            return CheckResult(name, CheckStatus.FAILED,
                               f"{card} is not supported by the installed torch {torch.version} (built for {built}): "
                               "jobs fail with 'CUDA error: no kernel image is available for execution on the "
                               "device'.", fix)
        return CheckResult(name, CheckStatus.OK, f"{card}; torch {torch.version} has kernels for it")
    if facts.nvidia_gpus:
        gpus = ", ".join(facts.nvidia_gpus)
        if torch.cuda_build is None:
            return CheckResult(name, CheckStatus.FAILED, f"This PC has an NVIDIA GPU ({gpus}) but torch "
                               f"{torch.version} is a CPU-only build, so jobs would run on the CPU.", TORCH_CU128)
        return CheckResult(name, CheckStatus.FAILED, f"torch {torch.version} (CUDA {torch.cuda_build}) cannot use "
                           f"the NVIDIA GPU ({gpus}): the driver is too old for this build or is not loaded.",
                           f"Update the NVIDIA driver ({DRIVER_DOWNLOAD}) and restart, or install a torch for an "
                           f"older CUDA: {TORCH_CU126}")
    if torch.mps_available:
        return CheckResult(name, CheckStatus.OK, "Apple GPU (MPS)")
    return CheckResult(name, CheckStatus.WARNING, "No GPU that torch can use: jobs run on the CPU. That is fine for "
                       "demo mode; the real 13B model would take hours per second of video.",
                       "On a PC with an NVIDIA GPU, install its driver, then a CUDA build of torch: " + TORCH_CU128)


def check_driver(facts: SystemFacts) -> CheckResult:
    name = "NVIDIA driver"
    if not facts.nvidia_gpus:
        return CheckResult(name, CheckStatus.SKIPPED, "no NVIDIA GPU found (nvidia-smi lists none)")
    if facts.driver_version is None:
        return CheckResult(name, CheckStatus.WARNING, "nvidia-smi did not report a driver version.",
                           f"Reinstall the NVIDIA driver: {DRIVER_DOWNLOAD}")
    driver = _version_tuple(facts.driver_version)
    needed: tuple[int, int] | None = None
    why = ""
    cuda = facts.torch.cuda_build if facts.torch is not None else None
    if cuda:
        linux, windows = MIN_DRIVER.get(int(cuda.split(".")[0]), MIN_DRIVER[12])
        needed, why = (windows if facts.system == "Windows" else linux), f"torch's CUDA {cuda} build"
    capability = facts.hardware.capability if facts.hardware is not None else None
    if (capability is not None and capability[0] >= 12) or any("RTX 50" in gpu for gpu in facts.nvidia_gpus):
        if needed is None or BLACKWELL_DRIVER > needed:
            needed, why = BLACKWELL_DRIVER, "an RTX 50 series card"
    if needed is not None and driver < needed:
        wanted = ".".join(map(str, needed))
        return CheckResult(name, CheckStatus.FAILED, f"driver {facts.driver_version} is older than the {wanted} "
                           f"that {why} needs.", f"Install the latest NVIDIA driver ({DRIVER_DOWNLOAD}) and restart.")
    return CheckResult(name, CheckStatus.OK, f"driver {facts.driver_version}")


def check_memory(facts: SystemFacts) -> CheckResult:
    """The default job's planned peaks against the free VRAM, the RAM and the swap or page file."""
    name = "Memory"
    plan = facts.plan
    if plan is None:
        return CheckResult(name, CheckStatus.WARNING, f"could not plan the default job ({facts.plan_error}).",
                           "Run 'python -m framepack_core plan' to see why.")
    ram = facts.hardware.ram_available_bytes if facts.hardware is not None else plan.ram_budget_bytes
    swap = facts.swap_free_bytes
    vram = f"{plan.peak_vram_gb:.1f} GiB VRAM and " if plan.device_type != "cpu" else ""
    summary = (f"the default job (640, window 9) peaks at {vram}{plan.peak_ram_gb:.1f} GiB RAM; "
               f"{ram / GIB:.1f} GiB RAM free, {swap / GIB:.1f} GiB swap/page file")
    if plan.peak_ram_bytes > ram + swap:
        short = (plan.peak_ram_bytes - ram - swap) / GIB
        return CheckResult(name, CheckStatus.FAILED, summary + f": {short:.1f} GiB short, so loading the models "
                           "would crash ('Loading checkpoint shards', or the process killed).",
                           _more_swap_fix(facts.system, plan.peak_ram_bytes - ram + GIB))
    if plan.peak_ram_bytes > ram:
        return CheckResult(name, CheckStatus.WARNING, summary + ": it will swap, which is slow.",
                           "Close other programs, or add RAM.")
    if not plan.fits:
        return CheckResult(name, CheckStatus.WARNING, summary + ". " + " ".join(plan.notes),
                           "See 'python -m framepack_core plan' for what fits; a lower resolution needs less.")
    if plan.component(Component.TRANSFORMER).placement == Placement.DISK:
        return CheckResult(name, CheckStatus.WARNING, summary + ": too little RAM to hold the transformer, so its "
                           "weights are read from disk at every step, several times slower.",
                           "Close other programs, or add RAM (32 GB holds the transformer in RAM).")
    return CheckResult(name, CheckStatus.OK, summary)


def _more_swap_fix(system: str, needed_bytes: int) -> str:
    size = -(-needed_bytes // GIB)
    if system == "Windows":
        return (f"Give Windows a page file of at least {size} GB: Settings > System > About > Advanced system "
                "settings > Performance: Settings > Advanced > Virtual memory: Change, 'System managed size' on the "
                "drive with the models (or a custom size), then restart. Or add RAM.")
    if system == "Darwin":
        return "Close other programs and free disk space on the system drive (macOS swaps there), or add RAM."
    return (f"Add a swap file of at least {size} GB: sudo fallocate -l {size}G /swapfile && sudo chmod 600 "
            "/swapfile && sudo mkswap /swapfile && sudo swapon /swapfile. Or add RAM.")


def check_disk(facts: SystemFacts) -> CheckResult:
    name = "Disk space"
    found = [f"{facts.output_free_bytes / GIB:.1f} GiB free for outputs"]
    if facts.models is not None:
        found.append(f"{facts.models.free_bytes / GIB:.1f} GiB free where the weights go ({facts.models.target})")
        if facts.download_bytes and facts.models.free_bytes < facts.download_bytes + GIB:
            return CheckResult(name, CheckStatus.FAILED, "; ".join(found) + f": the missing weights need "
                               f"{facts.download_bytes / GIB:.1f} GiB.",
                               "Free space on that drive, or keep the weights on another drive (the models folder setting).")
    if facts.output_free_bytes < OUTPUT_FAIL_BYTES:
        return CheckResult(name, CheckStatus.FAILED, "; ".join(found) + ": the drive of the output folder is full.",
                           "Free space on that drive, or choose an output folder on another drive.")
    if facts.output_free_bytes < OUTPUT_WARN_BYTES:
        return CheckResult(name, CheckStatus.WARNING, "; ".join(found) + ": a few long videos will fill it.",
                           "Free space on that drive, or choose an output folder on another drive.")
    return CheckResult(name, CheckStatus.OK, "; ".join(found))


def check_ffmpeg(facts: SystemFacts) -> CheckResult:
    missing = [tool for tool, path in (("ffmpeg", facts.ffmpeg), ("ffprobe", facts.ffprobe)) if path is None]
    if missing:
        install = FFMPEG_INSTALL.get(facts.system, "sudo apt-get install ffmpeg")
        return CheckResult("FFmpeg", CheckStatus.WARNING, f"{' and '.join(missing)} not found on PATH: videos are "
                           "still written (with PyAV), but the page cannot check or convert them for the browser.",
                           f"Install FFmpeg ({install}) and open a new terminal so PATH has it.")
    return CheckResult("FFmpeg", CheckStatus.OK, f"ffmpeg {facts.ffmpeg}, ffprobe {facts.ffprobe}")


def check_attention(facts: SystemFacts) -> CheckResult:
    name = "Attention"
    broken = [found for found in facts.attention if found.imports is False]
    working = [found.backend for found in facts.attention if found.imports]
    absent = [found.backend for found in facts.attention if found.imports is None]
    text = f"works: {', '.join(working)}" + (f"; not installed (optional): {', '.join(absent)}" if absent else "")
    if broken:
        torch_version = facts.torch.version if facts.torch is not None else "the installed torch"
        details = "; ".join(f"{found.backend}: {found.detail}" for found in broken)
        fixes = "; ".join(f"pip uninstall -y {ATTENTION_PACKAGES[found.backend][0]}, then "
                          f"{ATTENTION_PACKAGES[found.backend][1]} (a build for torch {torch_version})"
                          for found in broken)
        return CheckResult(name, CheckStatus.WARNING, f"{text}; installed but broken, so not used: {details}",
                           fixes + ". Or leave it: the native attention works.")
    return CheckResult(name, CheckStatus.OK, text)


def check_models(facts: SystemFacts) -> CheckResult:
    name = "Model files" + (" (demo set)" if facts.demo else "")
    if facts.models is None:
        return CheckResult(name, CheckStatus.FAILED, f"could not look at the model files ({facts.models_error}).",
                           "Check that the models folder setting names a folder you can read.")
    damaged = [s for s in facts.models.incomplete if s.present]
    missing = [s for s in facts.models.incomplete if not s.present]
    if damaged:
        listed = "; ".join(f"{s.name}: {s.problem}" for s in damaged)
        return CheckResult(name, CheckStatus.FAILED, f"damaged: {listed}",
                           "python -m framepack_core models download (fetches what is missing or damaged again)"
                           if not facts.demo else "Delete the demo folder; the next start builds it again.")
    if missing:
        listed = ", ".join(s.name for s in missing)
        return CheckResult(name, CheckStatus.WARNING, f"not downloaded yet: {listed} "
                           f"(about {facts.download_bytes / GIB:.1f} GiB); the first job downloads them.",
                           "python -m framepack_core models download (now, with a progress bar and resume)")
    return CheckResult(name, CheckStatus.OK, f"all {len(facts.models.components)} components whole (headers read) "
                       f"in {facts.models.target}")


def check_output_folder(facts: SystemFacts) -> CheckResult:
    if facts.output_write_error is not None:
        return CheckResult("Output folder", CheckStatus.FAILED, f"cannot write in {facts.output_dir} "
                           f"({facts.output_write_error}).",
                           "Choose an output folder you can write (the output folder setting, FRAMEPACK_OUTPUT_DIR).")
    return CheckResult("Output folder", CheckStatus.OK, f"{facts.output_dir} is writable")


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".") if part.isdigit())


# In the order the table shows them; the fast ones (launch.py at start) are those that read no model files.
CHECKS: tuple[Callable[[SystemFacts], CheckResult], ...] = (
    check_python, check_torch, check_gpu_support, check_driver, check_memory, check_disk, check_ffmpeg,
    check_attention, check_models, check_output_folder)


def run_checks(facts: SystemFacts) -> list[CheckResult]:
    """Every check whose facts were gathered (the model check only when the model files were read)."""
    return [check(facts) for check in CHECKS if check is not check_models or facts.models is not None
            or facts.models_error]
