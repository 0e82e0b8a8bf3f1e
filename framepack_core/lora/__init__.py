"""LoRA files read and understood without loading the base model.

A LoRA for FramePack comes in one of three key families (diffusers/PEFT, musubi-tuner/kohya, and HunyuanVideo's
original module names with ``lora_A``/``lora_B``). ``inspect_lora`` reads a safetensors file, maps every key onto
the FramePack transformer's module names (splitting HunyuanVideo's fused projections), checks each against the
transformer's layer shapes (built from its config on the meta device, so no weights are read), and describes what
matched. ``LoraDescription.converted`` is the same LoRA in diffusers/PEFT keys with alpha folded into ``lora_B``,
ready for diffusers' ``load_lora_adapter``. Wiring LoRAs into jobs comes later.
"""

from framepack_core.lora.files import LoraDescription, inspect_lora, transformer_layers, weight_deltas

__all__ = ["LoraDescription", "inspect_lora", "transformer_layers", "weight_deltas"]
