"""Regional compilation of the packed transformer: ``torch.compile`` on each of its repeated blocks, once per
loaded transformer, so a process compiles its kernels once and every later job reuses them.

Compiling the 60 blocks rather than the whole model keeps the compile short (blocks of one kind share their
compiled graphs, since dynamo caches by code and guards, not by module: the tiny model's 4 blocks gave 3 graphs,
the first single-stream block's input having other strides) and leaves the irregular parts, the packing of the
clean latents and the token refiner, eager.

What runs where (``compile_skip_reason``): dynamo needs a Python it supports; inductor needs a C++ compiler on the
CPU and Triton on a CUDA GPU (on Windows the ``triton-windows`` package); on Apple GPUs its support is a prototype,
so it is not used there. Where it cannot run, the blocks are left as they are and the job is told why.
"""

from __future__ import annotations

import platform
import shutil
from dataclasses import dataclass

import torch

BLOCK_LISTS = ("transformer_blocks", "single_transformer_blocks")


@dataclass(frozen=True)
class CompileEnvironment:
    """What ``torch.compile`` needs and this machine has. ``dynamo_problem``: why dynamo cannot run (a Python too
    new, for one), None when it can; ``cxx_compiler``: the C++ compiler inductor would build CPU kernels with;
    ``has_triton``: whether Triton imports with a GPU it can compile for; ``system``: ``platform.system()``."""

    dynamo_problem: str | None
    cxx_compiler: str | None
    has_triton: bool
    system: str

    @classmethod
    def detect(cls) -> CompileEnvironment:
        return cls(_dynamo_problem(), _cxx_compiler(), _has_triton(), platform.system())


def compile_skip_reason(device_type: str, environment: CompileEnvironment) -> str | None:
    """Why the transformer cannot be compiled on ``device_type`` here (None when it can)."""
    if environment.dynamo_problem is not None:
        return f"torch.compile does not run here: {environment.dynamo_problem}"
    if device_type == "mps":
        return "torch.compile's Apple GPU (MPS) support is a prototype in PyTorch; running eagerly"
    if device_type == "cuda" and not environment.has_triton:
        package = "triton-windows" if environment.system == "Windows" else "triton"
        return f"torch.compile needs Triton for CUDA and it is not installed (pip install {package})"
    if device_type == "cpu" and environment.cxx_compiler is None:
        tool = "Visual Studio's C++ build tools (cl.exe)" if environment.system == "Windows" else "g++ or clang++"
        return f"torch.compile needs a C++ compiler on the CPU and none was found; install {tool}"
    return None


def repeated_blocks(transformer: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer's repeated blocks, in the order they run."""
    return [block for name in BLOCK_LISTS for block in getattr(transformer, name, ())]


def compile_repeated_blocks(transformer: torch.nn.Module) -> int:
    """Compile each repeated block in place with ``Module.compile`` and return how many were compiled.

    diffusers' ``ModelMixin.compile_repeated_blocks`` does the same but finds the blocks through the class's
    ``_repeated_blocks``, which ``HunyuanVideoFramepackTransformer3DModel`` leaves empty in diffusers 0.42; setting
    it on the class would change every instance in the process, so the two block lists are named here instead.
    ``Module.compile`` compiles the module's call, forward hooks included: hooks added later (group offloading,
    a cache) are traced with the block, and dynamo recompiles when they change.
    """
    blocks = repeated_blocks(transformer)
    for block in blocks:
        if not is_compiled(block):
            block.compile()
    return len(blocks)


def compiled_block_count(transformer: torch.nn.Module) -> int:
    """How many of the transformer's repeated blocks are compiled (the fingerprint records it)."""
    return sum(is_compiled(block) for block in repeated_blocks(transformer))


def is_compiled(module: torch.nn.Module) -> bool:
    # ``Module.compile`` keeps the compiled call in this attribute (torch 2.2 and later).
    return getattr(module, "_compiled_call_impl", None) is not None


def _dynamo_problem() -> str | None:
    try:
        from torch._dynamo.eval_frame import check_if_dynamo_supported

        check_if_dynamo_supported()
    except ImportError:
        return f"this PyTorch ({torch.__version__}) has no dynamo"
    except RuntimeError as error:  # e.g. "Python 3.15+ not yet supported for torch.compile"
        return str(error)
    return None


def _cxx_compiler() -> str | None:
    """The compiler inductor would use: its configured one, else the usual names on PATH."""
    try:
        from torch._inductor import config

        configured = config.cpp.cxx
        names = [name for name in (configured if isinstance(configured, (list, tuple)) else (configured,)) if name]
    except (ImportError, AttributeError):
        names = []
    names += ["cl"] if platform.system() == "Windows" else ["g++", "clang++"]
    return next((found for found in map(shutil.which, names) if found), None)


def _has_triton() -> bool:
    try:
        from torch.utils._triton import has_triton

        return bool(has_triton())
    except ImportError:
        return False
