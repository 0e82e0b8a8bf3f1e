"""Choosing the device and the per-component dtypes, without touching CUDA at import time.

Defaults follow the official app on CUDA (bf16 transformer; fp16 text encoders, VAE and SigLIP) and use fp32
on CPU, where half-precision convolutions are slow or unsupported.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

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


def resolve_device_config(device: str = "auto", dtype: str = "auto") -> DeviceConfig:
    """``device``: auto, cpu, cuda, cuda:N or mps. ``dtype``: auto, or one dtype for every component."""
    if device == "auto":
        chosen = detect_device()
    else:
        try:
            chosen = torch.device(device)
        except RuntimeError as error:
            raise ValueError(f"--device: unknown device {device!r} (use auto, cpu, cuda, cuda:N or mps)") from error
        if chosen.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda: this torch build sees no CUDA GPU. Install a CUDA build of torch, "
                             "or use --device cpu")
        if chosen.type == "mps" and not torch.backends.mps.is_available():
            raise ValueError("--device mps: MPS is not available on this machine; use --device cpu")
        if chosen.type not in ("cpu", "cuda", "mps"):
            raise ValueError(f"--device: unsupported device type {chosen.type!r}")
    if dtype != "auto":
        if dtype not in DTYPES:
            raise ValueError(f"--dtype: unknown dtype {dtype!r} (use auto, float32, bfloat16 or float16)")
        one = DTYPES[dtype]
        return DeviceConfig(chosen, one, one, one, one)
    if chosen.type == "cpu":
        return DeviceConfig(chosen, torch.float32, torch.float32, torch.float32, torch.float32)
    return DeviceConfig(chosen, torch.bfloat16, torch.float16, torch.float16, torch.float16)
