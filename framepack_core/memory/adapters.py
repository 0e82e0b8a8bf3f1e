"""The LoRA adapter layers in the transformer, as the memory planner counts them.

A loaded LoRA adds PEFT ``lora_A``/``lora_B`` layers beside the transformer's linear layers
(``framepack_core.lora.adapters``). They are kept in the transformer's compute dtype (bf16 on a GPU, fp32 on the
CPU), also over fp8-stored blocks, where the fp8 casting skips them. Each lives with the layer it wraps: one in a
repeated block is placed and moved with that block when the blocks are offloaded, one on a top-level layer stays
with the non-block layers. Under fp8 storage the adapters of the top-level ``proj_in``/``proj_out`` are not
loaded at all, so they occupy nothing then.

Adapters stay loaded in the transformer for the process's life (only switched off between jobs), so what a job
occupies is every adapter in the transformer it runs on, not only the LoRAs at a weight other than 0.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AdapterParameters:
    """Parameters of the LoRA adapter layers in the transformer, by where they live."""

    block_parameters: tuple[int, ...]  # per repeated block, in forward order (``ComponentSize.block_sizes()``)
    remainder_parameters: int = 0  # on the non-block layers, loaded whatever the storage dtype
    fp8_left_out_parameters: int = 0  # on the top-level proj_in/proj_out: not loaded under fp8 storage

    def block_bytes(self, compute_dtype_bytes: int) -> tuple[int, ...]:
        return tuple(count * compute_dtype_bytes for count in self.block_parameters)

    def remainder_bytes(self, compute_dtype_bytes: int, fp8: bool) -> int:
        loaded = self.remainder_parameters + (0 if fp8 else self.fp8_left_out_parameters)
        return loaded * compute_dtype_bytes

    def total_bytes(self, compute_dtype_bytes: int, fp8: bool) -> int:
        """What the adapters occupy in all, with the transformer computing in a dtype of ``compute_dtype_bytes``."""
        return sum(self.block_bytes(compute_dtype_bytes)) + self.remainder_bytes(compute_dtype_bytes, fp8)
