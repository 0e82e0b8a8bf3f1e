"""Benchmark (f): peak host RAM while loading a component, memory-mapped loading against eager loading.

The requirement: loading a component must not need more than 1.2x its size in its storage dtype in host RAM.
This script checks it on a randomly initialised component of about ``--size-gb`` GB, built on the fly into a
temporary folder (never committed) and saved with ``save_pretrained`` as 3 or 4 safetensors shards, like the
real repositories:

* ``--kind transformer`` (default): a ``HunyuanVideoFramepackTransformer3DModel`` with the real head size (128),
  embedder widths (text 4096, pooled 768, SigLIP 1152) and image/clean-latent embedders, but fewer heads and
  blocks, chosen to come closest to the requested size; stored in bfloat16 like lllyasviel's repositories.
* ``--kind llama``: a ``LlamaModel`` (GQA, head size 128, 32k vocabulary), stored in bfloat16.

Every method runs in a fresh ``python -m bench.load_rss --child ...`` under ``/usr/bin/time -v``; its "Maximum
resident set size" is the peak RSS. A baseline child does all the same imports (torch, diffusers, transformers,
accelerate, safetensors, the loading modules) and loads nothing; a method's own cost is peak - baseline.

After loading, every child reads every weight once (a chunked checksum) so that the weights are really resident:
a memory-mapped load maps the file lazily, and stopping there would measure almost nothing, while any real use
(inference, or moving the model to a GPU) reads every page. The checksums must agree between methods.

Methods (the dtype requested is the storage dtype unless said otherwise):

* ``ours``: ``framepack_core.models.loaders`` (``load_transformer`` for the transformer, ``lean_from_pretrained``
  for Llama): meta-device init, weights assigned as views of the memory-mapped safetensors.
* ``defaults``: ``from_pretrained(folder, dtype=...)`` with the libraries' defaults, as the loader did before.
* ``no-mmap``: ours with ``disable_mmap=True``: every shard is read into RAM, then turned into tensors.
* ``eager``: what a plain PyTorch script does: the model is built normally (every parameter allocated and
  randomly initialised, in the storage dtype), the shards are read with ``safetensors.torch.load_file`` into one
  state dict, and ``model.load_state_dict(state_dict)`` copies it in.
* ``diffusers-eager`` (transformer only): ``from_pretrained(..., low_cpu_mem_usage=False)``, diffusers' own eager
  path (full init, then ``load_state_dict`` from the memory-mapped files).
* ``ours-fp32``: ours asking for float32 from bfloat16 files: the up-cast copy cannot be a view of the file.

Reproduce (from the repository root, CPU only; about 3 minutes at 1 GB on 2 cores, most of it writing the files)::

    python -m bench.load_rss                        # transformer, 1 GB
    python -m bench.load_rss --kind llama --size-gb 0.5
    python -m bench.load_rss --methods ours eager --size-gb 0.15

Exits with status 1 if ``ours`` needs more than 1.2x the component's size (peak - baseline).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TIME = "/usr/bin/time"
LIMIT = 1.2  # the requirement: peak - baseline <= 1.2 x the size in the storage dtype
SHARDS = 3  # lllyasviel's transformer repositories have 3 shards; the Llama text encoder has 4
KINDS = ("transformer", "llama")
METHODS = ("ours", "defaults", "no-mmap", "eager", "diffusers-eager", "ours-fp32")
METHOD_NOTES = {
    "ours": "framepack loader: meta init + mmap views",
    "defaults": "library defaults (loader before)",
    "no-mmap": "ours with disable_mmap=True",
    "eager": "full init + load_file + load_state_dict",
    "diffusers-eager": "diffusers low_cpu_mem_usage=False",
    "ours-fp32": "ours, bf16 files loaded as fp32",
}
TRANSFORMER_REPO = "lllyasviel/FramePackI2V_HY"  # the folder layout load_transformer expects under models_dir
RESULT_MARK = "LOAD_RSS_RESULT "


# --------------------------------------------------------------------------------------------------------------
# Building the component
# --------------------------------------------------------------------------------------------------------------


def transformer_config(heads: int, depth: int) -> dict:
    """A reduced FramePack transformer: real head size and embedder widths, ``heads`` heads, ``depth`` blocks of
    each kind (the real model: 24 heads, 20 dual-stream and 40 single-stream blocks)."""
    return {
        "num_attention_heads": heads, "attention_head_dim": 128, "num_layers": depth, "num_single_layers": depth,
        "num_refiner_layers": 1, "has_image_proj": True, "has_clean_x_embedder": True,
    }


def llama_config(heads: int, depth: int) -> dict:
    """A reduced Llama-3-like encoder: head size 128, 4 query heads per key/value head, MLP 3.5x wide."""
    hidden = 128 * heads
    return {
        "vocab_size": 32_000, "hidden_size": hidden, "intermediate_size": int(hidden * 3.5),
        "num_hidden_layers": depth, "num_attention_heads": heads, "num_key_value_heads": max(1, heads // 4),
        "max_position_embeddings": 1024,
    }


def _meta_model(kind: str, config: dict):
    import torch

    with torch.device("meta"):
        if kind == "transformer":
            from diffusers import HunyuanVideoFramepackTransformer3DModel

            return HunyuanVideoFramepackTransformer3DModel(**config)
        from transformers import LlamaConfig, LlamaModel

        return LlamaModel(LlamaConfig(**config))


def pick_config(kind: str, size_bytes: int, itemsize: int = 2) -> dict:
    """The (heads, depth) config whose weights come closest to ``size_bytes``, counted on the meta device."""
    make = transformer_config if kind == "transformer" else llama_config
    best: tuple[float, dict] | None = None
    for depth in (1, 2, 4):
        for heads in range(4 if kind == "llama" else 1, 65, 4 if kind == "llama" else 1):
            config = make(heads, depth)
            size = sum(p.numel() for p in _meta_model(kind, config).parameters()) * itemsize
            error = abs(math.log(size / size_bytes))
            if best is None or error < best[0] - 1e-9:
                best = (error, config)
            if size > size_bytes:
                break
    assert best is not None
    return best[1]


@dataclass(frozen=True)
class Built:
    kind: str
    root: Path  # the models_dir for the framepack loader
    folder: Path  # the component's own folder (config + shards)
    size_bytes: int  # the tensors' bytes in the storage dtype, read from the safetensors headers
    shards: int
    config: dict


def safetensors_bytes(folder: Path) -> int:
    """Sum of the tensors' data sizes in every safetensors file of ``folder``, from the headers alone."""
    total = 0
    for path in folder.glob("*.safetensors"):
        with path.open("rb") as handle:
            (header_len,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(header_len))
        total += sum(e["data_offsets"][1] - e["data_offsets"][0] for k, e in header.items() if k != "__metadata__")
    return total


def build(kind: str, size_gb: float, root: Path, seed: int = 0) -> Built:
    """Save a randomly initialised ``kind`` component of about ``size_gb`` GB (bfloat16) under ``root``.

    The weights are drawn straight into bfloat16 storage (meta init, then ``to_empty`` and ``normal_``), so building
    a 1 GB component needs 1 GB of RAM rather than a float32 model first.
    """
    import torch

    config = pick_config(kind, int(size_gb * 1e9))
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        model = _meta_model(kind, config).to_empty(device="cpu")
    finally:
        torch.set_default_dtype(previous)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.02, generator=generator)
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    folder = root / TRANSFORMER_REPO if kind == "transformer" else root / "llama"
    shard_bytes = math.ceil(size / SHARDS) + 1  # a tensor never straddles shards, so this gives SHARDS files
    model.save_pretrained(folder, safe_serialization=True, max_shard_size=shard_bytes)
    del model
    return Built(kind, root, folder, safetensors_bytes(folder), len(list(folder.glob("*.safetensors"))), config)


# --------------------------------------------------------------------------------------------------------------
# The child: one load in a fresh process
# --------------------------------------------------------------------------------------------------------------


def _import_everything():
    """Every module any method uses, so the baseline and the methods differ by the load alone."""
    import accelerate.utils.modeling  # noqa: F401
    import diffusers.models.model_loading_utils  # noqa: F401
    import safetensors.torch  # noqa: F401
    import torch
    import transformers.core_model_loading  # noqa: F401
    from diffusers import HunyuanVideoFramepackTransformer3DModel
    from transformers import LlamaConfig, LlamaModel

    import framepack_core.models.loaders  # noqa: F401

    return torch, HunyuanVideoFramepackTransformer3DModel, LlamaModel, LlamaConfig


def _eager(model_class, config_class, folder: Path, dtype):
    """Build the model normally, then copy a fully loaded state dict into it (see the module docstring)."""
    import safetensors.torch
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # so the full init allocates the storage dtype, not float32
    try:
        config = json.loads((folder / "config.json").read_text())
        if config_class is None:
            model = model_class.from_config(config)
        else:
            model = model_class(config_class.from_pretrained(folder))
    finally:
        torch.set_default_dtype(previous)
    state_dict: dict = {}
    for shard in sorted(folder.glob("*.safetensors")):
        state_dict.update(safetensors.torch.load_file(shard))
    model.load_state_dict(state_dict, strict=True)
    del state_dict
    return model


def _checksum(model) -> tuple[float, int]:
    """Read every weight once, 1 M elements at a time (so the check itself allocates ~4 MB), and sum them."""
    total, nbytes = 0.0, 0
    for tensor in model.state_dict().values():
        flat = tensor.reshape(-1)
        nbytes += flat.numel() * flat.element_size()
        for start in range(0, flat.numel(), 1 << 20):
            total += float(flat[start : start + (1 << 20)].float().sum())
    return total, nbytes


def child(method: str, kind: str, root: Path) -> dict:
    torch, transformer_class, llama_class, llama_config_class = _import_everything()
    from framepack_core.models.loaders import lean_from_pretrained, load_transformer
    from framepack_core.models.loading import ModelSource

    model_class = transformer_class if kind == "transformer" else llama_class
    folder = root / TRANSFORMER_REPO if kind == "transformer" else root / "llama"
    dtype = torch.float32 if method == "ours-fp32" else torch.bfloat16
    started = time.perf_counter()
    if method == "baseline":
        return {"method": method, "load_s": 0.0, "checksum": None, "loaded_bytes": 0}
    if method in ("ours", "ours-fp32"):
        if kind == "transformer":
            model = load_transformer(ModelSource(models_dir=root), "original", "cpu", dtype)
        else:
            model = lean_from_pretrained(model_class, folder, dtype=dtype, device="cpu")
    elif method == "defaults":
        model = model_class.from_pretrained(folder, dtype=dtype, local_files_only=True)
    elif method == "no-mmap":
        extra = {"low_cpu_mem_usage": True} if kind == "transformer" else {}
        model = model_class.from_pretrained(folder, dtype=dtype, local_files_only=True, disable_mmap=True, **extra)
    elif method == "diffusers-eager":
        model = model_class.from_pretrained(folder, dtype=dtype, local_files_only=True, low_cpu_mem_usage=False)
    elif method == "eager":
        model = _eager(model_class, None if kind == "transformer" else llama_config_class, folder, dtype)
    else:
        raise SystemExit(f"unknown method {method!r}")
    load_s = time.perf_counter() - started
    checksum, nbytes = _checksum(model)
    return {"method": method, "load_s": load_s, "checksum": checksum, "loaded_bytes": nbytes}


# --------------------------------------------------------------------------------------------------------------
# The parent: run each method under /usr/bin/time -v
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    method: str
    peak_bytes: int  # /usr/bin/time's Maximum resident set size
    load_s: float
    checksum: float | None
    loaded_bytes: int


def measure(method: str, built: Built) -> Run:
    """Run one method in a fresh process under ``/usr/bin/time -v`` and read its peak RSS."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as report:
        env = {
            **os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TQDM_DISABLE": "1",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        }
        command = [TIME, "-v", "-o", report.name, sys.executable, "-m", "bench.load_rss",
                   "--child", method, "--kind", built.kind, "--root", str(built.root)]
        done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{method} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", report.read())
    if match is None:
        raise RuntimeError(f"no 'Maximum resident set size' in {TIME} -v output for {method}")
    line = next(ln for ln in done.stdout.splitlines() if ln.startswith(RESULT_MARK))
    result = json.loads(line[len(RESULT_MARK) :])
    return Run(method, int(match.group(1)) * 1024, result["load_s"], result["checksum"], result["loaded_bytes"])


@dataclass(frozen=True)
class Row:
    run: Run
    baseline_bytes: int
    size_bytes: int

    @property
    def load_bytes(self) -> int:
        return self.run.peak_bytes - self.baseline_bytes

    @property
    def ratio(self) -> float:
        """(peak - baseline) / size on disk in the storage dtype: the requirement's measure."""
        return self.load_bytes / self.size_bytes

    @property
    def ratio_loaded(self) -> float:
        """(peak - baseline) / size of the loaded weights (differs from ``ratio`` when the dtype changes)."""
        return self.load_bytes / self.run.loaded_bytes


def run_all(built: Built, methods: Sequence[str]) -> tuple[Run, list[Row]]:
    baseline = measure("baseline", built)
    rows = [Row(measure(m, built), baseline.peak_bytes, built.size_bytes) for m in methods]
    return baseline, rows


def table(built: Built, baseline: Run, rows: Sequence[Row]) -> str:
    gb = 1e9
    header = (
        "| method | what it does | size on disk (GB) | loaded (GB) | baseline RSS (GB) | peak RSS (GB) "
        "| peak - baseline (GB) | ratio to size | ratio to loaded | load s |"
    )
    lines = [header, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        run = row.run
        lines.append(
            f"| {run.method} | {METHOD_NOTES[run.method]} | {built.size_bytes / gb:.3f} | {run.loaded_bytes / gb:.3f} "
            f"| {baseline.peak_bytes / gb:.3f} | {run.peak_bytes / gb:.3f} | {row.load_bytes / gb:.3f} "
            f"| {row.ratio:.2f} | {row.ratio_loaded:.2f} | {run.load_s:.1f} |"
        )
    return "\n".join(lines)


def problems(rows: Sequence[Row]) -> list[str]:
    found = []
    by_method = {row.run.method: row for row in rows}
    ours = by_method.get("ours")
    if ours is not None and ours.ratio > LIMIT:
        found.append(f"ours needs {ours.ratio:.2f}x the component's size while loading (limit {LIMIT}x)")
    same_dtype = [r for r in rows if r.run.method != "ours-fp32"]
    if len({r.run.checksum for r in same_dtype}) > 1:
        found.append("the methods loaded different weights: " + ", ".join(
            f"{r.run.method}={r.run.checksum!r}" for r in same_dtype))
    return found


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-gb", type=float, default=1.0, help="approximate component size in GB (1e9 bytes)")
    parser.add_argument("--kind", choices=KINDS, default="transformer")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=None,
                        help="default: every method that applies to the kind")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.child:
        result = child(args.child, args.kind, args.root)
        print(RESULT_MARK + json.dumps(result), flush=True)
        return 0
    if not os.access(TIME, os.X_OK):
        print(f"{TIME} is needed (GNU time, e.g. apt-get install time)", file=sys.stderr)
        return 2
    methods = args.methods or [m for m in METHODS if args.kind == "transformer" or m != "diffusers-eager"]
    with tempfile.TemporaryDirectory(prefix="load_rss_") as work:
        started = time.perf_counter()
        built = build(args.kind, args.size_gb, Path(work))
        print(f"Built a random {args.kind} of {built.size_bytes / 1e9:.3f} GB (bfloat16, {built.shards} shards) "
              f"in {time.perf_counter() - started:.0f} s; config {built.config}\n")
        baseline, rows = run_all(built, methods)
    print(table(built, baseline, rows))
    by_method = {row.run.method: row for row in rows}
    if "ours" in by_method and "eager" in by_method:
        ours, eager = by_method["ours"], by_method["eager"]
        print(f"\nours / eager (peak - baseline): {ours.load_bytes / eager.load_bytes:.2f}; "
              f"ours {ours.ratio:.2f}x the size, eager {eager.ratio:.2f}x (limit for ours: {LIMIT}x)")
    found = problems(rows)
    if found:
        print("\nFAILED:\n" + "\n".join(f"- {p}" for p in found), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
