"""What the machine has: the compute device, its memory, and host RAM, as one immutable record.

The memory planner (``framepack_core.memory.plan``) decides from a :class:`HardwareInfo` alone, so plans can be
made for machines other than this one (``fake_hardware``) and tested without a GPU. :class:`TorchHardwareProbe`
fills one in from torch; the ``torch.cuda`` / ``torch.mps`` modules and the RAM function are constructor
arguments, so tests hand it fakes. Nothing here touches CUDA before ``probe`` is called: importing this module
does not even import torch.
"""

from __future__ import annotations

import platform
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

GIB = 1024**3
DEVICE_TYPES = ("cuda", "mps", "cpu")


@dataclass(frozen=True)
class HardwareInfo:
    """One device and the host it sits in. Byte counts are bytes; the ``*_gb`` properties are GiB.

    On the CPU the VRAM figures are 0. On MPS the "VRAM" is the share of the unified memory Metal recommends
    for one process (``torch.mps.recommended_max_memory``), which is the same physical memory as the RAM.
    """

    device_type: str  # "cuda", "mps" or "cpu"
    device_name: str
    capability: tuple[int, int] | None  # CUDA compute capability, e.g. (8, 9) for an RTX 4090; None elsewhere
    vram_total_bytes: int
    vram_free_bytes: int
    ram_total_bytes: int
    ram_available_bytes: int
    supports_streams: bool  # CUDA streams, for prefetching offloaded blocks while others compute (CUDA only)

    def __post_init__(self) -> None:
        if self.device_type not in DEVICE_TYPES:
            raise ValueError(f"device_type must be one of {DEVICE_TYPES}, got {self.device_type!r}")
        for name in ("vram_total_bytes", "vram_free_bytes", "ram_total_bytes", "ram_available_bytes"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")

    @property
    def vram_total_gb(self) -> float:
        return self.vram_total_bytes / GIB

    @property
    def vram_free_gb(self) -> float:
        return self.vram_free_bytes / GIB

    @property
    def ram_total_gb(self) -> float:
        return self.ram_total_bytes / GIB

    @property
    def ram_available_gb(self) -> float:
        return self.ram_available_bytes / GIB

    def describe(self) -> str:
        ram = f"RAM {self.ram_available_gb:.1f} of {self.ram_total_gb:.1f} GiB available"
        if self.device_type == "cpu":
            return f"{self.device_name} (CPU, no GPU memory), {ram}"
        capability = f", compute capability {self.capability[0]}.{self.capability[1]}" if self.capability else ""
        return (f"{self.device_name} ({self.device_type}{capability}), VRAM {self.vram_free_gb:.1f} of "
                f"{self.vram_total_gb:.1f} GiB free, {ram}")


class HardwareProbe(Protocol):
    """Anything that can say what a device looks like: the real :class:`TorchHardwareProbe` or a fake."""

    def probe(self, device: str = "auto") -> HardwareInfo:
        """``device``: "auto", "cpu", "cuda", "cuda:N" or "mps". Raises ``ValueError`` if it is not available."""
        ...


RamFunction = Callable[[], tuple[int, int]]  # () -> (total bytes, available bytes)


def system_ram() -> tuple[int, int]:
    """(total, available) host RAM in bytes. ``available`` is what can be allocated without swapping."""
    try:
        import psutil  # installed with accelerate, which the app requires
    except ImportError:  # pragma: no cover - only without accelerate
        import os

        page = os.sysconf("SC_PAGE_SIZE")
        return os.sysconf("SC_PHYS_PAGES") * page, os.sysconf("SC_AVPHYS_PAGES") * page
    memory = psutil.virtual_memory()
    return int(memory.total), int(memory.available)


def cpu_name() -> str:
    return platform.processor() or platform.machine() or "CPU"


def _split_device(device: str) -> tuple[str, int | None]:
    kind, _, index = device.partition(":")
    if kind not in ("auto", *DEVICE_TYPES) or (index and (kind != "cuda" or not index.isdigit())):
        raise ValueError(f"unknown device {device!r}: use auto, cpu, cuda, cuda:N or mps")
    return kind, int(index) if index else None


class TorchHardwareProbe:
    """Reads the real machine through torch. ``cuda`` and ``mps`` default to ``torch.cuda`` / ``torch.mps``
    (imported when first needed, not at construction), ``ram`` to :func:`system_ram`.

    A fake ``cuda`` needs ``is_available()``, ``device_count()``, ``current_device()``, ``mem_get_info(index)``
    (free, total), ``get_device_properties(index).name`` and ``get_device_capability(index)``; a fake ``mps``
    needs ``is_available()``, ``recommended_max_memory()`` and ``driver_allocated_memory()``.
    """

    def __init__(self, cuda: Any = None, mps: Any = None, ram: RamFunction | None = None) -> None:
        self._cuda = cuda
        self._mps = mps
        self._ram = ram if ram is not None else system_ram

    def _cuda_module(self) -> Any:
        if self._cuda is None:
            import torch

            self._cuda = torch.cuda
        return self._cuda

    def _mps_module(self) -> Any:
        if self._mps is None:
            import torch

            self._mps = torch.mps
        return self._mps

    def _mps_available(self) -> bool:
        mps = self._mps_module()
        available = getattr(mps, "is_available", None)
        return bool(available()) if available is not None else False

    def probe(self, device: str = "auto") -> HardwareInfo:
        kind, index = _split_device(device)
        if kind == "auto":
            if self._cuda_module().is_available():
                kind = "cuda"
            elif self._mps_available():
                kind = "mps"
            else:
                kind = "cpu"
        ram_total, ram_available = self._ram()
        if kind == "cuda":
            return self._probe_cuda(index, ram_total, ram_available)
        if kind == "mps":
            return self._probe_mps(ram_total, ram_available)
        return HardwareInfo("cpu", cpu_name(), None, 0, 0, ram_total, ram_available, supports_streams=False)

    def _probe_cuda(self, index: int | None, ram_total: int, ram_available: int) -> HardwareInfo:
        cuda = self._cuda_module()
        if not cuda.is_available():
            raise ValueError("this torch build sees no CUDA GPU (install a CUDA build of torch, or plan for the CPU)")
        count = cuda.device_count()
        index = cuda.current_device() if index is None else index
        if index >= count:
            raise ValueError(f"there is no GPU cuda:{index}; this machine has {count}")
        free, total = cuda.mem_get_info(index)
        name = cuda.get_device_properties(index).name
        major, minor = cuda.get_device_capability(index)
        return HardwareInfo("cuda", str(name), (int(major), int(minor)), int(total), int(free), ram_total,
                            ram_available, supports_streams=True)

    def _probe_mps(self, ram_total: int, ram_available: int) -> HardwareInfo:
        if not self._mps_available():
            raise ValueError("MPS is not available on this machine")
        mps = self._mps_module()
        # recommended_max_memory appeared in torch 2.3; before it, Metal's usual limit is about 3/4 of the RAM.
        recommended = getattr(mps, "recommended_max_memory", None)
        total = int(recommended()) if recommended is not None else ram_total * 3 // 4
        allocated = getattr(mps, "driver_allocated_memory", None)
        used = int(allocated()) if allocated is not None else 0
        return HardwareInfo("mps", f"Apple GPU ({platform.machine() or 'arm64'})", None, total, max(0, total - used),
                            ram_total, ram_available, supports_streams=False)


@dataclass(frozen=True)
class FakeHardwareProbe:
    """Returns the same :class:`HardwareInfo` whatever device is asked for (for tests and simulations)."""

    info: HardwareInfo

    def probe(self, device: str = "auto") -> HardwareInfo:
        _split_device(device)
        return self.info


def fake_hardware(
    vram_gb: float,
    ram_gb: float,
    device_type: str = "cuda",
    name: str = "Fake GPU",
    capability: tuple[int, int] | None = (8, 9),
    vram_free_gb: float | None = None,
    ram_available_gb: float | None = None,
) -> HardwareInfo:
    """A machine with ``vram_gb`` GiB of device memory and ``ram_gb`` GiB of RAM, all of it free by default.

    Card and RAM sizes are sold in GiB ("24 GB" is 24 GiB on an RTX 4090), so the figures are GiB. For
    ``device_type="cpu"`` the VRAM is 0 and there is no capability; only CUDA supports streams.
    """
    is_gpu = device_type != "cpu"
    vram = int(vram_gb * GIB) if is_gpu else 0
    free = int(vram_free_gb * GIB) if (vram_free_gb is not None and is_gpu) else vram
    ram = int(ram_gb * GIB)
    available = int(ram_available_gb * GIB) if ram_available_gb is not None else ram
    return HardwareInfo(
        device_type=device_type,
        device_name=name if is_gpu else cpu_name(),
        capability=capability if device_type == "cuda" else None,
        vram_total_bytes=vram,
        vram_free_bytes=min(free, vram),
        ram_total_bytes=ram,
        ram_available_bytes=min(available, ram),
        supports_streams=device_type == "cuda",
    )


def simulated_gpu(host: HardwareInfo, vram_gb: float, device_type: str = "cuda") -> HardwareInfo:
    """``host``'s RAM with a GPU of ``vram_gb`` GiB, all of it free: for planning for a card this machine lacks."""
    if device_type not in ("cuda", "mps"):
        raise ValueError(f"a simulated GPU is cuda or mps, not {device_type!r}")
    vram = int(vram_gb * GIB)
    return HardwareInfo(device_type, f"Simulated GPU ({vram_gb:g} GiB)", (8, 9) if device_type == "cuda" else None,
                        vram, vram, host.ram_total_bytes, host.ram_available_bytes,
                        supports_streams=device_type == "cuda")


def with_ram(info: HardwareInfo, ram_gb: float) -> HardwareInfo:
    """``info`` with ``ram_gb`` GiB of RAM, all of it available."""
    ram = int(ram_gb * GIB)
    return HardwareInfo(info.device_type, info.device_name, info.capability, info.vram_total_bytes,
                        info.vram_free_bytes, ram, ram, info.supports_streams)
