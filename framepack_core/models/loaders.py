"""Loading each model component with the diffusers and transformers classes, from the folder
``framepack_core.models.loading`` resolved and checked, needing about one copy of the weights in host RAM."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from framepack_core.errors import MissingWeightsError
from framepack_core.models.components import Component, ModelVariant
from framepack_core.models.loading import (
    ComponentFiles,
    ImageEncoder,
    ModelSource,
    TextEncoders,
    checked_folder,
    component_files,
    fix_hint,
)


def _load(source: ModelSource, files: ComponentFiles, load: Callable[[Path], Any]) -> Any:
    """Check the folder, then run ``load(folder)``, turning any loading failure into a ``MissingWeightsError``."""
    folder = checked_folder(source, files)
    try:
        return load(folder)
    except Exception as error:  # noqa: BLE001 - config/version mismatches and corrupt files all land here
        raise MissingWeightsError(
            files.name,
            [str(folder)],
            f"from_pretrained failed: {type(error).__name__}: {error}",
            fix_hint(source, files, folder, exists=True),
        ) from error


def _ready(model: Any, device: torch.device | str) -> Any:
    # Inference only: eval mode (no dropout) and no autograd bookkeeping on any parameter. lean_from_pretrained
    # already put the weights on ``device``, so ``to`` is a no-op that just makes the placement certain.
    model = model.to(device)
    model.eval()
    model.requires_grad_(False)
    return model


def lean_from_pretrained(model_class: Any, folder: Path, *, dtype: torch.dtype, device: torch.device | str) -> Any:
    """``model_class.from_pretrained(folder)`` needing about one copy of the weights in host RAM, not two.

    Measured with ``bench/load_rss.py`` (docs/benchmarks.md, section (f)): peak - baseline is 1.01x the size for
    a 1 GB transformer or Llama, against 2.0x for building the model and then ``load_state_dict``. How:

    * the model is built on the meta device (no init, no memory), then each parameter is *assigned* a tensor
      read from the memory-mapped safetensors file instead of being copied into a preallocated one. When the
      file already has the requested dtype, CPU parameters are views of the mapping itself: pages count in RSS
      once read, and nothing else does. transformers 5 always loads this way (it ignores ``low_cpu_mem_usage``);
      diffusers does only with ``low_cpu_mem_usage=True``, its default only when accelerate is installed, so it
      is passed explicitly. ``disable_mmap`` stays at the libraries' defaults: off, except that transformers
      turns it on by itself on an hf-mount filesystem;
    * for any device but the CPU, ``device_map={"": device}``: each tensor is copied from the mapping straight to
      the device, so no CPU copy of the model is ever built and moved afterwards. (Pages read stay mapped, as
      clean page cache the kernel may drop, until diffusers closes each shard or transformers closes all files.)

    A dtype different from the file's cannot be a view: each tensor is converted into new memory while the
    file's pages stay mapped. bf16 files loaded as fp32 (1 GB on disk, 2 GB loaded) peak at 2.2x the file
    size in diffusers (converted model + one shard) and 3.0x in transformers (converted model + all files).
    """
    import torch

    target = torch.device(device)
    options: dict[str, Any] = {"dtype": dtype, "local_files_only": True}
    if target.type != "cpu":
        options["device_map"] = {"": target}
    if model_class.__module__.startswith("diffusers."):
        options["low_cpu_mem_usage"] = True
    return model_class.from_pretrained(folder, **options)


def load_text_encoders(source: ModelSource, device: torch.device | str, dtype: torch.dtype) -> TextEncoders:
    """LLaMA + CLIP-L text encoders and their tokenizers.

    Tokenizers load through ``AutoTokenizer``: in transformers 5 ``LlamaTokenizerFast.from_pretrained`` rebuilds
    a SentencePiece-style tokenizer and silently mis-tokenizes the Llama-3 (ByteLevel) tokenizer.json.
    """
    from transformers import AutoTokenizer, CLIPTextModel, LlamaModel

    def model(cls: Any) -> Callable[[Path], Any]:
        return lambda folder: lean_from_pretrained(cls, folder, dtype=dtype, device=device)

    def load_tokenizer(folder: Path) -> Any:
        return AutoTokenizer.from_pretrained(folder, local_files_only=True)

    tokenizer = _load(source, component_files(Component.TOKENIZER), load_tokenizer)
    text_encoder = _load(source, component_files(Component.TEXT_ENCODER), model(LlamaModel))
    tokenizer_2 = _load(source, component_files(Component.TOKENIZER_2), load_tokenizer)
    text_encoder_2 = _load(source, component_files(Component.TEXT_ENCODER_2), model(CLIPTextModel))
    return TextEncoders(
        tokenizer=tokenizer,
        text_encoder=_ready(text_encoder, device),
        tokenizer_2=tokenizer_2,
        text_encoder_2=_ready(text_encoder_2, device),
    )


def load_vae(source: ModelSource, device: torch.device | str, dtype: torch.dtype) -> Any:
    """HunyuanVideo's causal 3D VAE (``AutoencoderKLHunyuanVideo``)."""
    from diffusers import AutoencoderKLHunyuanVideo

    vae = _load(
        source,
        component_files(Component.VAE),
        lambda folder: lean_from_pretrained(AutoencoderKLHunyuanVideo, folder, dtype=dtype, device=device),
    )
    return _ready(vae, device)


def load_image_encoder(source: ModelSource, device: torch.device | str, dtype: torch.dtype) -> ImageEncoder:
    """SigLIP vision tower from FLUX Redux and its image processor."""
    import transformers
    from transformers import SiglipVisionModel

    # The official app's processor is the PIL one. transformers 5 renamed it SiglipImageProcessorPil and gave the old
    # name to a torchvision backend, falling back to the PIL class with a warning on every run when torchvision is
    # missing; naming the PIL class keeps the tensors the official app's and the log quiet. transformers 4 has
    # only the old name, which there is the PIL processor.
    processor_class = getattr(transformers, "SiglipImageProcessorPil", None) or transformers.SiglipImageProcessor
    feature_extractor = _load(
        source,
        component_files(Component.FEATURE_EXTRACTOR),
        lambda folder: processor_class.from_pretrained(folder, local_files_only=True),
    )
    image_encoder = _load(
        source,
        component_files(Component.IMAGE_ENCODER),
        lambda folder: lean_from_pretrained(SiglipVisionModel, folder, dtype=dtype, device=device),
    )
    return ImageEncoder(feature_extractor=feature_extractor, image_encoder=_ready(image_encoder, device))


def load_transformer(source: ModelSource, variant: ModelVariant | str, device: torch.device | str, dtype: torch.dtype) -> Any:
    """The packed FramePack DiT for ``variant`` ("original" or "f1").

    lllyasviel's configs name the original code's class (``HunyuanVideoTransformer3DModelPacked``); diffusers'
    ``HunyuanVideoFramepackTransformer3DModel`` has the same parameters and loads them as they are.
    """
    from diffusers import HunyuanVideoFramepackTransformer3DModel

    transformer = _load(
        source,
        component_files(Component.TRANSFORMER, variant),
        lambda folder: lean_from_pretrained(
            HunyuanVideoFramepackTransformer3DModel, folder, dtype=dtype, device=device
        ),
    )
    return _ready(transformer, device)
