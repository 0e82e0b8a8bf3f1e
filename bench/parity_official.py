"""Run the official FramePack app's own ``worker`` on our tiny models and save its final latents.

This is how the parity fixtures under ``tests/data/parity/`` were made. It needs a checkout of
https://github.com/lllyasviel/FramePack (not part of this repository, never copied into it) and a Python
environment with that code's extra imports (einops, opencv-python-headless; torchvision is stubbed because
only its video writer is referenced). Usage::

    python bench/parity_official.py --official ~/src/FramePack --models-dir tiny_models \
        --image assets/<image> --model original --cfg 1 --out official_original_cfg1.safetensors

The worker function is taken from ``demo_gradio.py`` / ``demo_gradio_f1.py`` unchanged and executed with
its module globals replaced by the tiny components. Three documented substitutions, all outside the
worker's code:

* ``vae_encode`` returns the posterior mean instead of a global-RNG sample (the official start latent is not
  repeatable otherwise; the issue's parity target asks for the mean);
* ``find_nearest_bucket`` uses the 640 table scaled to ``--resolution`` (the official only knows 640);
* ``sample_hunyuan`` is called with ``dtype`` = the transformer's dtype, since the worker hard-codes bf16
  and the parity target is fp32 on CPU.

The final ``history_latents`` are read from the worker's locals when it writes its last mp4.
"""

from __future__ import annotations

import argparse
import ast
import sys
import types
from pathlib import Path

import numpy as np
import torch


def _load_worker_source(official: Path, model: str) -> str:
    script = official / ("demo_gradio.py" if model == "original" else "demo_gradio_f1.py")
    tree = ast.parse(script.read_text())
    worker = next(node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "worker")
    return ast.get_source_segment(script.read_text(), worker, padded=False)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--official", type=Path, required=True)
    parser.add_argument("--models-dir", type=Path, required=True)
    parser.add_argument("--image", type=Path, required=True)
    parser.add_argument("--model", choices=["original", "f1"], default="original")
    parser.add_argument("--prompt", default="The girl dances gracefully, with clear movements, full of charm.")
    parser.add_argument("--negative-prompt", default="blurry, static")
    parser.add_argument("--seed", type=int, default=31337)
    parser.add_argument("--seconds", type=float, default=3.6)
    parser.add_argument("--window", type=int, default=9)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--cfg", type=float, default=1.0)
    parser.add_argument("--gs", type=float, default=10.0)
    parser.add_argument("--rs", type=float, default=0.0)
    parser.add_argument("--teacache", action="store_true")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--transformer-dtype", choices=["float32", "bfloat16"], default="float32",
                        help="bfloat16 runs the DiT as the official app does on a GPU (the rest stays fp32)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    # Import the libraries first, so they record that torchvision is absent before the stub below exists.
    from diffusers import AutoencoderKLHunyuanVideo
    from safetensors.torch import save_file
    from transformers import AutoTokenizer, CLIPTextModel, LlamaModel, SiglipImageProcessor, SiglipVisionModel

    # The official utils import torchvision only for write_video, which the worker reaches through
    # save_bcthw_as_mp4, replaced below.
    sys.modules.setdefault("torchvision", types.ModuleType("torchvision"))
    sys.path.insert(0, str(args.official))
    from diffusers_helper import hunyuan as official_hunyuan
    from diffusers_helper import utils as official_utils
    from diffusers_helper.clip_vision import hf_clip_vision_encode
    from diffusers_helper.models.hunyuan_video_packed import HunyuanVideoTransformer3DModelPacked
    from diffusers_helper.pipelines.k_diffusion_hunyuan import sample_hunyuan

    from framepack_core.media.buckets import find_nearest_bucket
    from framepack_core.media.image_input import load_input_image

    root = args.models_dir
    base = root / "hunyuanvideo-community/HunyuanVideo"
    redux = root / "lllyasviel/flux_redux_bfl"
    transformer_dir = root / ("lllyasviel/FramePackI2V_HY" if args.model == "original"
                              else "lllyasviel/FramePack_F1_I2V_HY_20250503")
    dtype = torch.float32
    text_encoder = LlamaModel.from_pretrained(base / "text_encoder", torch_dtype=dtype).eval()
    text_encoder_2 = CLIPTextModel.from_pretrained(base / "text_encoder_2", torch_dtype=dtype).eval()
    # transformers 5's LlamaTokenizerFast mis-tokenizes ByteLevel tokenizers; the official app ran on
    # transformers 4.46 where that class was correct, so AutoTokenizer gives the ids it saw.
    tokenizer = AutoTokenizer.from_pretrained(base / "tokenizer")
    tokenizer_2 = AutoTokenizer.from_pretrained(base / "tokenizer_2")
    vae = AutoencoderKLHunyuanVideo.from_pretrained(base / "vae", torch_dtype=dtype).eval()
    feature_extractor = SiglipImageProcessor.from_pretrained(redux / "feature_extractor")
    image_encoder = SiglipVisionModel.from_pretrained(redux / "image_encoder", torch_dtype=dtype).eval()
    transformer_dtype = getattr(torch, args.transformer_dtype)
    transformer = HunyuanVideoTransformer3DModelPacked.from_pretrained(transformer_dir, torch_dtype=transformer_dtype)
    transformer = transformer.eval()
    transformer.high_quality_fp32_output_for_inference = True
    for model in (text_encoder, text_encoder_2, vae, image_encoder, transformer):
        model.requires_grad_(False)

    captured: dict[str, torch.Tensor] = {}

    def vae_encode_mean(image, vae_model):  # noqa: ANN001
        posterior = vae_model.encode(image.to(device=vae_model.device, dtype=vae_model.dtype)).latent_dist
        return posterior.mode() * vae_model.config.scaling_factor

    def sample_in_model_dtype(**kwargs):  # noqa: ANN003
        kwargs["dtype"] = kwargs["transformer"].dtype
        return sample_hunyuan(**kwargs)

    def record_video(history_pixels, filename, fps=30, crf=0):  # noqa: ANN001
        worker_locals = sys._getframe(1).f_locals
        captured["history_latents"] = worker_locals["real_history_latents"].clone()
        captured["start_latent"] = worker_locals["start_latent"].clone()
        captured["history_pixels"] = history_pixels.clone()

    class _Queue:
        def push(self, item):  # noqa: ANN001
            pass

        def top(self):
            return None

    stream = types.SimpleNamespace(input_queue=_Queue(), output_queue=_Queue())
    namespace = dict(
        torch=torch, np=np, os=__import__("os"), traceback=__import__("traceback"), einops=__import__("einops"),
        Image=__import__("PIL.Image", fromlist=["Image"]),
        text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer, tokenizer_2=tokenizer_2,
        vae=vae, feature_extractor=feature_extractor, image_encoder=image_encoder, transformer=transformer,
        high_vram=True, gpu=torch.device("cpu"), cpu=torch.device("cpu"), stream=stream,
        outputs_folder=str(args.out.parent), generate_timestamp=lambda: "parity",
        encode_prompt_conds=official_hunyuan.encode_prompt_conds, vae_decode=official_hunyuan.vae_decode,
        vae_encode=vae_encode_mean, vae_decode_fake=official_hunyuan.vae_decode_fake,
        crop_or_pad_yield_mask=official_utils.crop_or_pad_yield_mask,
        soft_append_bcthw=official_utils.soft_append_bcthw,
        resize_and_center_crop=official_utils.resize_and_center_crop,
        find_nearest_bucket=lambda h, w, resolution=640: find_nearest_bucket(h, w, resolution=args.resolution),
        hf_clip_vision_encode=hf_clip_vision_encode, sample_hunyuan=sample_in_model_dtype,
        save_bcthw_as_mp4=record_video, make_progress_bar_html=lambda *a: "",
    )
    exec(compile(_load_worker_source(args.official, args.model), "official_worker", "exec"), namespace)  # noqa: S102

    pixels = load_input_image(args.image).pixels
    namespace["worker"](pixels, args.prompt, args.negative_prompt, args.seed, args.seconds, args.window,
                        args.steps, args.cfg, args.gs, args.rs, 6.0, args.teacache, 16)
    if "history_latents" not in captured:
        raise SystemExit("the official worker did not finish; see the traceback above")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.float().contiguous() for k, v in captured.items()}, str(args.out))
    print(f"wrote {args.out}: history_latents {tuple(captured['history_latents'].shape)}")


if __name__ == "__main__":
    main()
