"""The progress bars huggingface_hub, transformers and diffusers draw while they download and load weights."""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator


@contextlib.contextmanager
def library_progress_bars_off() -> Iterator[None]:
    """Hide the download and weight-loading bars of huggingface_hub, transformers and diffusers: for ``--quiet``,
    and in worker processes that share one terminal.

    Their state is global, so it is put back on exit (the CLI can be called in-process, e.g. by tests).
    """
    restore = []
    # Import them all before changing anything: transformers copies huggingface_hub's setting when first imported.
    modules = []
    for name in ("transformers.utils.logging", "diffusers.utils.logging"):
        with contextlib.suppress(ImportError):
            modules.append(importlib.import_module(name))
    with contextlib.suppress(ImportError, AttributeError):
        from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

        if not are_progress_bars_disabled():
            disable_progress_bars()
            restore.append(enable_progress_bars)
    for module in modules:
        with contextlib.suppress(AttributeError):
            if module.is_progress_bar_enabled():
                module.disable_progress_bar()
                restore.append(module.enable_progress_bar)
    try:
        yield
    finally:
        for undo in reversed(restore):
            undo()
