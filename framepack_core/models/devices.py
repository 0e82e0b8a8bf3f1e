"""Choosing the device and the per-component dtypes, without touching CUDA at import time.

Defaults follow the official app on CUDA (bf16 transformer; fp16 text encoders, VAE and SigLIP) and use fp32
on CPU, where half-precision convolutions are slow or unsupported.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from framepack_core.errors import InvalidInputError

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


@dataclass(frozen=True)
class DeviceConfig:
    device: torch.device
    transformer_dtype: torch.dtype
    text_encoder_dtype: torch.dtype
    vae_dtype: torch.dtype
    image_encoder_dtype: torch.dtype

    def describe(self) -> str:
        return (f"{self.device} (transformer {str(self.transformer_dtype).removeprefix('torch.')}, "
                f"encoders/VAE {str(self.vae_dtype).removeprefix('torch.')})")


def detect_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


_DEVICE_CHOICES = "use auto, cpu, cuda, cuda:N or mps"
_DTYPE_CHOICES = "use auto, float32, bfloat16 or float16"


def parse_dtype(dtype: str) -> torch.dtype | None:
    """``None`` for "auto", else the torch dtype named by ``dtype``; ``InvalidInputError`` for an unknown name."""
    if dtype == "auto":
        return None
    if dtype not in DTYPES:
        raise InvalidInputError("dtype", f"unknown dtype {dtype!r} ({_DTYPE_CHOICES})")
    return DTYPES[dtype]


def default_config(device: torch.device | str, dtype: str = "auto") -> DeviceConfig:
    """The per-component dtypes for an already chosen ``device``. Pure: asks the hardware nothing.

    ``dtype`` "auto" gives fp32 everywhere on CPU and the official app's table elsewhere (bf16 transformer,
    fp16 text encoders, VAE and SigLIP); any other ``dtype`` is used for every component.
    """
    device = torch.device(device)
    one = parse_dtype(dtype)
    if one is not None:
        return DeviceConfig(device, one, one, one, one)
    if device.type == "cpu":
        return DeviceConfig(device, torch.float32, torch.float32, torch.float32, torch.float32)
    return DeviceConfig(device, torch.bfloat16, torch.float16, torch.float16, torch.float16)


def resolve_device_config(device: str = "auto", dtype: str = "auto") -> DeviceConfig:
    """``device``: auto, cpu, cuda, cuda:N or mps. ``dtype``: auto, or one dtype for every component.

    Raises ``InvalidInputError`` (a ``ValueError``; field ``device`` or ``dtype``) for an unknown or unavailable
    device or dtype.
    """
    if device == "auto":
        chosen = detect_device()
    else:
        try:
            chosen = torch.device(device)
        except (RuntimeError, TypeError) as error:
            raise InvalidInputError("device", f"unknown device {device!r} ({_DEVICE_CHOICES})") from error
        if chosen.type not in ("cpu", "cuda", "mps"):
            raise InvalidInputError("device", f"unsupported device type {chosen.type!r} ({_DEVICE_CHOICES})")
        if chosen.type == "cuda":
            if not torch.cuda.is_available():
                raise InvalidInputError("device", f"{device!r}: this torch build sees no CUDA GPU",
                                        "Install a CUDA build of torch, or set {device} to cpu.")
            count = torch.cuda.device_count()
            if chosen.index is not None and chosen.index >= count:
                raise InvalidInputError("device", f"{device!r}: there is no such GPU; this machine has {count} "
                                        f"(cuda:0 to cuda:{count - 1})")
        if chosen.type == "mps" and not torch.backends.mps.is_available():
            raise InvalidInputError("device", "'mps': MPS is not available on this machine", "Set {device} to cpu.")
    return default_config(chosen, dtype)
