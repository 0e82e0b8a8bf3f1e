"""How this process runs the transformer, beyond the device and dtypes: the attention backend and regional
compilation. Chosen once per process (``launch.py``, ``generate``, ``jobs run``) and recorded in every output's
environment fingerprint; a job spec never holds them, since they change speed and, at most, float rounding."""

from __future__ import annotations

from dataclasses import dataclass

ATTENTION_CHOICES = ("auto", "native", "flash", "sage", "xformers")


@dataclass(frozen=True)
class RuntimeOptions:
    """``attention``: one of ``ATTENTION_CHOICES`` ("auto" picks the fastest one installed for this GPU).
    ``compile``: compile the transformer's repeated blocks once per process (``torch.compile``)."""

    attention: str = "auto"
    compile: bool = False
