"""What a worker needs to build its own engine, as plain data that crosses a process or a network boundary."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

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

    def on_device(self, device: str) -> EngineRecipe:
        return replace(self, device=device)

    def build(self) -> FramePackEngine:
        """The engine; loads no model (the first job does). ``InvalidInputError`` (field ``device``) for a device
        this machine does not have."""
        from framepack_core.models.devices import resolve_device_config
        from framepack_core.models.loading import ModelSource
        from framepack_core.models.runtime import RuntimeOptions
        from framepack_core.pipeline.engine import create_engine
        from framepack_core.pipeline.timings import StageTimings

        config = resolve_device_config(self.device, self.dtype)
        runtime = RuntimeOptions(attention=self.attention, compile=self.compile)
        source = ModelSource(models_dir=self.models_dir, offline=self.offline)
        if self.timings_path is None:
            engine = create_engine(source, config, runtime=runtime)
            engine.timings = StageTimings()
            return engine
        return create_engine(source, config, timings_path=self.timings_path, runtime=runtime)
