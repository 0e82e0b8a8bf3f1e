"""What a worker needs to build its own engine, as plain data that crosses a process or a network boundary."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the CLI imports this module to parse its options: torch loads only when an engine is built
    from framepack_core.pipeline.engine import FramePackEngine


@dataclass(frozen=True)
class EngineRecipe:
    """The settings ``create_engine`` is given, for a worker to build its engine where it runs.

    ``models_dir`` None: the Hugging Face cache of the machine the worker runs on. ``timings_path`` None: speeds
    are learned in memory only (a remote machine's speeds would not describe this one's)."""

    device: str = "auto"
    dtype: str = "auto"
    models_dir: Path | None = None
    offline: bool = False
    attention: str = "auto"
    compile: bool = False
    timings_path: Path | None = None
    ram_share: float = 1.0  # the part of its machine's RAM its jobs plan for (several workers on one machine)

    def on_device(self, device: str, ram_share: float = 1.0) -> EngineRecipe:
        return replace(self, device=device, ram_share=ram_share)

    def build(self) -> FramePackEngine:
        """The engine; loads no model (the first job does). ``InvalidInputError`` (field ``device``) for a device
        this machine does not have."""
        from framepack_core.models.devices import resolve_device_config
        from framepack_core.models.loading import ModelSource
        from framepack_core.models.runtime import RuntimeOptions
        from framepack_core.pipeline.engine import create_engine

        config = resolve_device_config(self.device, self.dtype)
        runtime = RuntimeOptions(attention=self.attention, compile=self.compile)
        source = ModelSource(models_dir=self.models_dir, offline=self.offline)
        return create_engine(source, config, timings_path=self.timings_path, runtime=runtime,
                             ram_share=self.ram_share)


def worker_devices(devices: str) -> list[str]:
    """The devices named by ``--devices``: a comma-separated list (``cuda:0,cuda:1``; a device may repeat, for
    several CPU workers), or ``auto`` for every visible GPU (the CPU when there is none). ``InvalidInputError``
    (field ``devices``) for a name that is not a device of this machine."""
    import torch

    from framepack_core.errors import InvalidInputError
    from framepack_core.models.devices import detect_device, resolve_device_config

    text = devices.strip()
    if text == "auto":
        if torch.cuda.is_available():
            return [f"cuda:{index}" for index in range(torch.cuda.device_count())]
        return [str(detect_device())]
    names = [name.strip() for name in text.split(",")]
    if not text or any(not name for name in names):
        raise InvalidInputError("devices", f"{devices!r} is not a list of devices",
                                "Give devices separated by commas, e.g. cuda:0,cuda:1, or auto for every GPU.")
    for name in names:
        if name == "auto":
            raise InvalidInputError("devices", "auto stands alone: it means every GPU",
                                    "Give either auto or a list of devices such as cuda:0,cuda:1.")
        try:
            resolve_device_config(name)
        except InvalidInputError as error:
            raise InvalidInputError("devices", error.message.removeprefix("device: "),
                                    error.hint.replace("set {device} to cpu", "list cpu devices")) from error
    return names
