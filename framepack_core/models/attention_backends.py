"""Which attention kernel the packed transformer runs: a choice of ``ATTENTION_CHOICES`` becomes one of diffusers'
attention dispatcher backends (``diffusers.models.attention_dispatch.AttentionBackendName``).

Only the processors that call diffusers' ``dispatch_attention_fn`` follow the choice: the
``HunyuanVideoAttnProcessor2_0`` of all 60 transformer blocks (almost all of the attention work). The token
refiner's small self-attention over the prompt (``AttnProcessor2_0``) calls torch's SDPA itself and keeps doing so
whatever is chosen; the fingerprint lists it as "torch sdpa (direct)".

``auto`` takes the first of ``AUTO_ORDER`` that is installed, importable and able to run on this GPU and dtype:

- ``sage`` first, as the official FramePack app does (it tries sageattention, then flash-attn, then xformers): its
  INT8/FP8-quantised kernels are the fastest on Ampere, Ada and Hopper, at the cost of slightly different numbers.
- ``_flash_3`` (FlashAttention 3) on Hopper (sm_90) only, where it is faster than FlashAttention 2.
- ``flash`` (FlashAttention 2) on Ampere and newer.
- ``xformers`` (memory-efficient attention) on Volta and newer.
- ``native`` (torch's ``scaled_dot_product_attention``) everywhere else, on the CPU and on Apple GPUs, and when the
  transformer computes in float32 (the FlashAttention and SageAttention kernels take float16/bfloat16 only).

Nothing here imports a kernel package or touches CUDA at import time; ``AttentionEnvironment.detect`` asks.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from framepack_core.errors import InvalidInputError
from framepack_core.models.runtime import ATTENTION_CHOICES

if TYPE_CHECKING:
    import torch

NATIVE = "native"
AUTO_ORDER = ("sage", "_flash_3", "flash", "xformers")
# What an explicit choice may become: "flash" is FlashAttention 3 where its Hopper build is installed.
DISPATCHER_BACKENDS: Mapping[str, tuple[str, ...]] = {
    "native": ("native",), "flash": ("_flash_3", "flash"), "sage": ("sage",), "xformers": ("xformers",)}
# Compute capabilities each kernel runs on, as its project documents them.
_RUNS_ON: Mapping[str, Callable[[tuple[int, int]], bool]] = {
    "sage": lambda capability: capability >= (8, 0),
    "_flash_3": lambda capability: capability[0] == 9,
    "flash": lambda capability: capability >= (8, 0),
    "xformers": lambda capability: capability >= (7, 0),
}
_CAPABILITY_WORDS = {"sage": "8.0 (Ampere) or newer", "_flash_3": "9.0 (Hopper)", "flash": "8.0 (Ampere) or newer",
                     "xformers": "7.0 (Volta) or newer"}
_HALF_PRECISION_ONLY = frozenset({"sage", "_flash_3", "flash"})


@dataclass(frozen=True)
class KernelPackage:
    """The package a backend needs: its distribution name, the oldest version diffusers accepts, how to get it."""

    distribution: str
    minimum: str | None
    install: str


PACKAGES: Mapping[str, KernelPackage] = {
    "flash": KernelPackage("flash-attn", "2.6.3", "pip install flash-attn --no-build-isolation"),
    "_flash_3": KernelPackage("flash-attn-3", None, "build FlashAttention 3 from the hopper/ folder of "
                                                    "https://github.com/Dao-AILab/flash-attention"),
    # The package index holds only SageAttention 1 (1.0.6); diffusers needs 2.1.1 or newer, built from source.
    "sage": KernelPackage("sageattention", "2.1.1",
                          "pip install git+https://github.com/thu-ml/SageAttention.git --no-build-isolation"),
    "xformers": KernelPackage("xformers", "0.0.29", "pip install xformers"),
}


@dataclass(frozen=True)
class AttentionEnvironment:
    """What decides which backends can run: the device, the CUDA compute capability, the transformer's dtype, the
    backends whose packages diffusers can use (``usable``) and the installed versions of their packages."""

    device_type: str
    capability: tuple[int, int] | None = None
    dtype: str = "bfloat16"
    usable: frozenset[str] = frozenset()
    versions: Mapping[str, str | None] = field(default_factory=dict)

    @classmethod
    def detect(cls, device: torch.device, dtype: torch.dtype) -> AttentionEnvironment:
        capability = None
        if device.type == "cuda":
            import torch

            capability = tuple(torch.cuda.get_device_capability(device))
        return cls(device.type, capability, str(dtype).removeprefix("torch."),
                   frozenset(name for name in AUTO_ORDER if _diffusers_can_use(name)),
                   {name: _installed_version(package.distribution) for name, package in PACKAGES.items()})

    def runs(self, backend: str) -> bool:
        """Whether ``backend`` is installed and can run on this device and dtype."""
        return backend == NATIVE or not self.problems(backend)

    def problems(self, backend: str) -> list[str]:
        """Why ``backend`` cannot run here (empty when it can)."""
        if backend == NATIVE:
            return []
        found = []
        if backend not in self.usable:
            package = PACKAGES[backend]
            version = self.versions.get(backend)
            if version is not None and package.minimum is not None:
                found.append(f"{package.distribution} {version} is installed, diffusers needs {package.minimum} or "
                             "newer")
            else:
                found.append(f"the {package.distribution} package is not installed (or does not import)")
        if self.device_type != "cuda":
            found.append(f"it runs only on an NVIDIA GPU (CUDA), this process runs on the {self.device_type}")
        elif self.capability is not None and not _RUNS_ON[backend](self.capability):
            major, minor = self.capability
            found.append(f"it needs a GPU of compute capability {_CAPABILITY_WORDS[backend]}, this one is "
                         f"{major}.{minor}")
        if self.device_type == "cuda" and backend in _HALF_PRECISION_ONLY and self.dtype not in ("float16",
                                                                                                  "bfloat16"):
            found.append(f"it computes in float16 or bfloat16 only, the transformer runs in {self.dtype} ({{dtype}})")
        return found


def auto_attention_backend(environment: AttentionEnvironment) -> str:
    """The fastest dispatcher backend that runs in ``environment`` (see the module's docstring for the order)."""
    return next((name for name in AUTO_ORDER if environment.runs(name)), NATIVE)


def resolve_attention(choice: str, environment: AttentionEnvironment) -> str:
    """The dispatcher backend for ``choice`` (one of ``ATTENTION_CHOICES``). An explicit choice that cannot run
    here is refused with what is missing and the exact command that installs it."""
    if choice not in ATTENTION_CHOICES:
        raise InvalidInputError("attention", f"{choice!r} is not an attention backend",
                                "Use one of: " + ", ".join(ATTENTION_CHOICES) + ".")
    if choice == "auto":
        return auto_attention_backend(environment)
    candidates = DISPATCHER_BACKENDS[choice]
    for backend in candidates:
        if environment.runs(backend):
            return backend
    asked = candidates[-1]  # "flash": FlashAttention 2, what most machines can install
    problems = environment.problems(asked)
    hint = ""
    if asked not in environment.usable:
        hint = f"Install it with: {PACKAGES[asked].install} (then start again). "
    hint += "Or use {attention} auto (the fastest one installed here) or native."
    raise InvalidInputError("attention", f"{choice} attention cannot run here: " + "; ".join(problems), hint)


def choice_words(choice: str, backend: str) -> str:
    """How a job is told what it runs: "sage (auto)", "flash (FlashAttention 3)", "native"."""
    named = {"_flash_3": "flash (FlashAttention 3)", "flash": "flash (FlashAttention 2)"}.get(backend, backend)
    return f"{named} (auto)" if choice == "auto" else named


def _diffusers_can_use(backend: str) -> bool:
    """The same check ``ModelMixin.set_attention_backend`` makes (package present, recent enough, importable)."""
    try:
        from diffusers.models.attention_dispatch import AttentionBackendName, _check_attention_backend_requirements

        _check_attention_backend_requirements(AttentionBackendName(backend))
    except (ImportError, AttributeError, ValueError, RuntimeError):
        return False
    return True


def _installed_version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None
