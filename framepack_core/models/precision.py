"""Keep the transformer's output projection in fp32 when the rest runs in half precision.

The official app sets ``high_quality_fp32_output_for_inference``: the last linear layer (3072 -> 64 per token)
and its result are computed in fp32, so the velocity is not rounded to bf16 before the sampler uses it. The
diffusers class has no such switch, so this attaches an instance-level hook (removable, nothing patched on the
class) that feeds ``proj_out`` fp32 input, after moving its small weight to fp32.
"""

from __future__ import annotations

import torch
from diffusers.hooks import HookRegistry, ModelHook

_HOOK_NAME = "framepack_fp32_output"


class _Fp32InputHook(ModelHook):
    def pre_forward(self, module: torch.nn.Module, *args, **kwargs):  # noqa: ANN002, ANN003
        args = tuple(a.float() if torch.is_tensor(a) else a for a in args)
        return args, kwargs


def apply_fp32_output_projection(transformer: torch.nn.Module) -> bool:
    """Run ``transformer.proj_out`` in fp32. Returns False (and does nothing) for an fp32 model."""
    projection = transformer.proj_out
    if projection.weight.dtype == torch.float32:
        return False
    projection.to(torch.float32)
    HookRegistry.check_if_exists_or_initialize(projection).register_hook(_Fp32InputHook(), _HOOK_NAME)
    return True


def remove_fp32_output_projection(transformer: torch.nn.Module, dtype: torch.dtype) -> None:
    projection = transformer.proj_out
    registry = HookRegistry.check_if_exists_or_initialize(projection)
    if _HOOK_NAME in registry.hooks:
        registry.remove_hook(_HOOK_NAME, recurse=False)
        projection.to(dtype)
