"""Device and dtype choice: fp32 on CPU, the official app's table on CUDA/MPS, clear errors for bad strings.

The CUDA and MPS tables are checked through the pure ``default_config`` (constructing ``torch.device("cuda")``
asks the hardware nothing), so this file runs the same on a CPU-only machine and on a GPU one.
"""

from __future__ import annotations

import pytest
import torch

from framepack_core.models import devices
from framepack_core.models.devices import DeviceConfig, default_config, resolve_device_config


def _dtypes(config: DeviceConfig) -> tuple[torch.dtype, ...]:
    return (config.transformer_dtype, config.text_encoder_dtype, config.vae_dtype, config.image_encoder_dtype)


cuda_available = torch.cuda.is_available()
mps_available = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def test_cpu_uses_float32_for_every_component():
    config = resolve_device_config("cpu")
    assert config.device == torch.device("cpu")
    assert _dtypes(config) == (torch.float32,) * 4
    assert config.describe() == "cpu (transformer float32, encoders/VAE float32)"


@pytest.mark.skipif(cuda_available or mps_available, reason="this machine has an accelerator")
def test_auto_picks_the_cpu_on_a_machine_without_an_accelerator():
    config = resolve_device_config("auto")
    assert config.device.type == "cpu"
    assert _dtypes(config) == (torch.float32,) * 4


@pytest.mark.parametrize("name, expected", [("bfloat16", torch.bfloat16), ("bf16", torch.bfloat16),
                                            ("float16", torch.float16), ("fp16", torch.float16),
                                            ("float32", torch.float32), ("fp32", torch.float32)])
def test_an_explicit_dtype_is_used_for_every_component(name, expected):
    assert _dtypes(resolve_device_config("cpu", name)) == (expected,) * 4
    assert _dtypes(default_config(torch.device("cuda"), name)) == (expected,) * 4


def test_the_cuda_default_is_bf16_transformer_and_fp16_encoders_and_vae():
    config = default_config(torch.device("cuda"))
    assert config.device == torch.device("cuda")
    assert _dtypes(config) == (torch.bfloat16, torch.float16, torch.float16, torch.float16)
    assert default_config("cuda:1").device == torch.device("cuda", 1)
    assert config.describe() == "cuda (transformer bfloat16, encoders/VAE float16)"


def test_the_mps_default_is_the_same_table_as_cuda():
    assert _dtypes(default_config(torch.device("mps"))) == (torch.bfloat16, torch.float16, torch.float16,
                                                            torch.float16)


@pytest.mark.parametrize("device", ["gpu", "CPU", "cuda:x", "", "meta", "xla"])
def test_an_unknown_device_is_refused_with_the_choices(device):
    with pytest.raises(ValueError, match=r"^device: .*use auto, cpu, cuda, cuda:N or mps"):
        resolve_device_config(device)


@pytest.mark.parametrize("dtype", ["int8", "float64", "half", "bfloat"])
def test_an_unknown_dtype_is_refused_with_the_choices(dtype):
    with pytest.raises(ValueError, match=r"^dtype: unknown dtype .*use auto, float32, bfloat16 or float16"):
        resolve_device_config("cpu", dtype)
    with pytest.raises(ValueError, match="^dtype: "):
        default_config(torch.device("cuda"), dtype)


@pytest.mark.skipif(cuda_available, reason="CUDA is available here")
@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_cuda_without_a_cuda_gpu_is_refused_with_a_way_out(device):
    with pytest.raises(ValueError, match=r"(?s)sees no CUDA GPU.*set device to cpu"):
        resolve_device_config(device)


@pytest.mark.skipif(mps_available, reason="MPS is available here")
def test_mps_where_there_is_none_is_refused():
    with pytest.raises(ValueError, match=r"(?s)MPS is not available.*Set device to cpu"):
        resolve_device_config("mps")


def test_a_gpu_index_past_the_last_gpu_is_refused(monkeypatch):
    # Pretend to have one GPU: only resolve_device_config's own checks run, nothing touches a real device.
    monkeypatch.setattr(devices.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(devices.torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match=r"device: 'cuda:1': there is no such GPU; this machine has 1"):
        resolve_device_config("cuda:1")
    config = resolve_device_config("cuda:0")
    assert config.device == torch.device("cuda", 0)
    assert _dtypes(config) == (torch.bfloat16, torch.float16, torch.float16, torch.float16)
    auto = resolve_device_config("auto", "float32")
    assert auto.device == torch.device("cuda") and _dtypes(auto) == (torch.float32,) * 4
