"""The hardware probe against fake torch.cuda / torch.mps modules: no GPU is needed, and none is touched."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from framepack_core.memory.hardware import (
    GIB,
    FakeHardwareProbe,
    HardwareInfo,
    TorchHardwareProbe,
    fake_hardware,
    simulated_gpu,
    with_ram,
)


@dataclass
class _Properties:
    name: str


class FakeCuda:
    """What TorchHardwareProbe asks of ``torch.cuda``; records the device indices it was asked about."""

    def __init__(self, free_total: list[tuple[int, int]], names: list[str], capability: tuple[int, int] = (8, 9),
                 current: int = 0) -> None:
        self.free_total, self.names, self.capability, self.current = free_total, names, capability, current
        self.asked: list[int] = []

    def is_available(self) -> bool:
        return bool(self.free_total)

    def device_count(self) -> int:
        return len(self.free_total)

    def current_device(self) -> int:
        return self.current

    def mem_get_info(self, index: int) -> tuple[int, int]:
        self.asked.append(index)
        return self.free_total[index]

    def get_device_properties(self, index: int) -> _Properties:
        return _Properties(self.names[index])

    def get_device_capability(self, index: int) -> tuple[int, int]:
        return self.capability


class FakeMps:
    def __init__(self, available: bool, recommended: int = 0, allocated: int = 0) -> None:
        self.available, self.recommended, self.allocated = available, recommended, allocated

    def is_available(self) -> bool:
        return self.available

    def recommended_max_memory(self) -> int:
        return self.recommended

    def driver_allocated_memory(self) -> int:
        return self.allocated


def _ram() -> tuple[int, int]:
    return 64 * GIB, 40 * GIB


NO_CUDA = FakeCuda([], [])
NO_MPS = FakeMps(False)


def test_cuda_probe_reads_free_and_total_memory_name_and_capability():
    cuda = FakeCuda([(20 * GIB, 24 * GIB)], ["NVIDIA GeForce RTX 4090"])
    info = TorchHardwareProbe(cuda=cuda, mps=NO_MPS, ram=_ram).probe()
    assert info == HardwareInfo("cuda", "NVIDIA GeForce RTX 4090", (8, 9), 24 * GIB, 20 * GIB, 64 * GIB, 40 * GIB,
                                supports_streams=True)
    assert info.vram_free_gb == 20 and info.ram_available_gb == 40


def test_cuda_index_picks_that_gpu_and_a_missing_one_is_refused():
    cuda = FakeCuda([(1 * GIB, 8 * GIB), (11 * GIB, 12 * GIB)], ["small", "big"], current=0)
    probe = TorchHardwareProbe(cuda=cuda, mps=NO_MPS, ram=_ram)
    assert probe.probe("cuda:1").device_name == "big"
    assert probe.probe("cuda").device_name == "small"  # the current device
    assert cuda.asked == [1, 0]
    with pytest.raises(ValueError, match="no GPU cuda:2"):
        probe.probe("cuda:2")


def test_asking_for_cuda_without_it_is_a_clear_error():
    with pytest.raises(ValueError, match="no CUDA GPU"):
        TorchHardwareProbe(cuda=NO_CUDA, mps=NO_MPS, ram=_ram).probe("cuda")


def test_auto_prefers_cuda_then_mps_then_cpu():
    cuda = FakeCuda([(GIB, 2 * GIB)], ["gpu"])
    mps = FakeMps(True, recommended=48 * GIB, allocated=8 * GIB)
    assert TorchHardwareProbe(cuda=cuda, mps=mps, ram=_ram).probe().device_type == "cuda"
    info = TorchHardwareProbe(cuda=NO_CUDA, mps=mps, ram=_ram).probe()
    assert (info.device_type, info.vram_total_bytes, info.vram_free_bytes) == ("mps", 48 * GIB, 40 * GIB)
    assert info.supports_streams is False and info.capability is None
    cpu = TorchHardwareProbe(cuda=NO_CUDA, mps=NO_MPS, ram=_ram).probe()
    assert (cpu.device_type, cpu.vram_total_bytes, cpu.vram_free_bytes, cpu.supports_streams) == ("cpu", 0, 0, False)
    assert cpu.device_name  # from the platform
    assert (cpu.ram_total_bytes, cpu.ram_available_bytes) == (64 * GIB, 40 * GIB)


def test_an_explicit_cpu_asks_nothing_of_cuda():
    class Exploding:
        def __getattr__(self, name: str):
            raise AssertionError(f"torch.cuda.{name} was used")

    assert TorchHardwareProbe(cuda=Exploding(), mps=Exploding(), ram=_ram).probe("cpu").device_type == "cpu"


def test_unknown_device_names_are_refused():
    probe = TorchHardwareProbe(cuda=NO_CUDA, mps=NO_MPS, ram=_ram)
    for device in ("tpu", "cuda:x", "mps:1", ""):
        with pytest.raises(ValueError, match="unknown device"):
            probe.probe(device)


def test_the_real_probe_reads_this_machine_without_failing():
    info = TorchHardwareProbe().probe()
    assert info.ram_total_bytes > 0 and 0 < info.ram_available_bytes <= info.ram_total_bytes
    assert info.device_type in ("cuda", "mps", "cpu")


def test_fake_hardware_is_all_free_and_in_gib():
    info = fake_hardware(8, 32)
    assert (info.vram_total_bytes, info.vram_free_bytes, info.ram_available_bytes) == (8 * GIB, 8 * GIB, 32 * GIB)
    assert (info.device_type, info.device_name, info.capability, info.supports_streams) == (
        "cuda", "Fake GPU", (8, 9), True)
    assert FakeHardwareProbe(info).probe("cuda:0") is info
    cpu = fake_hardware(8, 16, device_type="cpu")
    assert (cpu.vram_total_bytes, cpu.capability, cpu.supports_streams) == (0, None, False)
    partly = fake_hardware(24, 64, vram_free_gb=22.5, ram_available_gb=50)
    assert (partly.vram_free_gb, partly.ram_available_gb) == (22.5, 50)


def test_simulated_gpu_keeps_the_host_and_with_ram_replaces_it():
    host = fake_hardware(0, 32, device_type="cpu")
    gpu = simulated_gpu(host, 6)
    assert (gpu.device_type, gpu.vram_free_gb, gpu.ram_available_gb, gpu.supports_streams) == ("cuda", 6, 32, True)
    assert simulated_gpu(host, 16, "mps").supports_streams is False
    assert with_ram(gpu, 16).ram_total_gb == 16 and with_ram(gpu, 16).vram_total_gb == 6


def test_invalid_records_are_refused():
    with pytest.raises(ValueError, match="device_type"):
        HardwareInfo("tpu", "x", None, 0, 0, 1, 1, False)
    with pytest.raises(ValueError, match="negative"):
        HardwareInfo("cpu", "x", None, 0, 0, -1, 1, False)
