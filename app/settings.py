"""How the app is run: one frozen ``Settings`` object, built once by ``launch.py`` and passed down.

Values come from, in order of precedence: command-line flags, ``FRAMEPACK_*`` environment variables, the
defaults below. Nothing in ``app/`` or ``framepack_core/`` reads the environment or module globals for its
configuration; they receive this object (or the pieces of it they need).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, get_args, get_type_hints

from framepack_core.jobs.output_naming import DEFAULT_OUTPUT_DIR as _CORE_DEFAULT_OUTPUT_DIR
from framepack_core.models.runtime import ATTENTION_CHOICES

ENV_PREFIX = "FRAMEPACK_"
SCHEMA_VERSION = 1
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT_DIR = _CORE_DEFAULT_OUTPUT_DIR  # the one default, shared with ``generate`` and ``jobs``

# What the job inputs start at in demo mode: a run on the tiny random models takes seconds on a laptop CPU.
DEMO_JOB_DEFAULTS: Mapping[str, Any] = {"resolution": 128, "latent_window_size": 9, "steps": 8, "seconds": 2.0}

MAX_LOGIN_CHARS = 64
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _describe(text: str, default: Any = MISSING, **kwargs: Any) -> Any:
    """A dataclass field with a description (shown by ``launch.py --help`` and ``Settings.describe``)."""
    return field(default=default, metadata={"description": text}, **kwargs)


@dataclass(frozen=True)
class Settings:
    """Everything that decides how the app runs. Frozen: build a new one with ``dataclasses.replace``."""

    host: str = _describe("Interface to listen on. 127.0.0.1 keeps the app private to this computer.",
                          "127.0.0.1")
    port: int | None = _describe("Port to listen on (default: 7860, or the next free one).", None)
    share: bool = _describe("Create a public *.gradio.live link (needs internet; use auth with it).", False)
    auth: tuple[tuple[str, str], ...] = field(  # repr=False: credentials never reach a log line
        default=(), repr=False,
        metadata={"description": "Login credentials (USER, PASSWORD) pairs; empty means no login page."})
    admins: tuple[str, ...] = _describe(
        "Logins that see and manage every user's jobs and outputs (each must be one of the auth users).", ())
    max_pending_per_user: int = _describe(
        "With logins: how many jobs one user may have waiting at once (more are refused with HTTP 429).", 20)
    inbrowser: bool = _describe("Open the app in the default browser once it is up.", False)
    output_dir: Path = field(
        default=DEFAULT_OUTPUT_DIR,
        metadata={"description": "Folder for finished videos, their input images and settings JSON."})
    models_dir: Path | None = field(
        default=None,
        metadata={"description": "Folder with the models in org/name/subfolder layout (None: the Hugging Face cache)."})
    loras_dir: Path | None = field(
        default=None,
        metadata={"description": "Folder of the LoRA .safetensors files that the page's LoRA panel and "
                                 "GET /api/v1/loras offer."})
    offline: bool = _describe("Never download weights; use local files only.", False)
    demo: bool = _describe("Run offline on CPU with the tiny random-weight models (the video is noise).", False)
    device: str = _describe("auto, cpu, cuda, cuda:N or mps.", "auto")
    dtype: str = _describe("auto, float32, bfloat16 or float16 (one dtype for every component).", "auto")
    devices: str | None = _describe(
        "Run jobs side by side, a worker process per device, each with its own copy of the models: a list such as "
        "cuda:0,cuda:1 (a device may repeat), or auto for every GPU. None: one job at a time on the device.", None)
    ray: str | None = _describe(
        "Run jobs on a Ray cluster's actors: local (a private Ray on this PC), auto, or an address such as "
        "ray://host:10001. Needs pip install -r requirements-ray.txt. None: no Ray.", None)
    ray_workers: int | None = _describe("How many Ray actors run jobs (None: one per GPU of the cluster).", None)
    attention: str = _describe(
        "The transformer's attention kernel: auto (the fastest one installed for this GPU), native, flash, sage or "
        "xformers.", "auto")
    compile: bool = _describe("Compile the transformer's blocks with torch.compile once per process (a slow first "
                              "job, faster steps after).", False)
    keep_intermediates: bool = _describe("Keep the per-section snapshot videos after a job ends.", False)
    max_file_size_mb: float = _describe("Largest upload accepted, in MB.", 50.0)
    concurrency_limit: int = _describe(
        "How many browser tabs or API clients may stream progress at once (jobs still run one at a time).", 16)
    idle_release_minutes: float | None = _describe(
        "Free the models' RAM and VRAM after this many minutes without a job (None: keep them loaded).", None)
    gallery_size: int = _describe("How many past generations the outputs gallery shows.", 24)
    schema_version: int = _describe("Version of this settings layout.", SCHEMA_VERSION)

    def __post_init__(self) -> None:
        limits = (("port", 1, 65535), ("max_file_size_mb", 0.001, None), ("concurrency_limit", 1, None),
                  ("gallery_size", 1, None), ("idle_release_minutes", 0, None), ("max_pending_per_user", 1, None))
        for name, low, high in limits:
            value = getattr(self, name)
            if value is None:
                continue
            if value < low or (high is not None and value > high):
                allowed = f"from {low} to {high}" if high is not None else f"at least {low}"
                raise ValueError(f"{name.replace('_', '-')}: {value} is out of range; use a value {allowed}")
        if self.attention not in ATTENTION_CHOICES:
            raise ValueError(f"attention: {self.attention!r} is not an attention backend; use one of "
                             + ", ".join(ATTENTION_CHOICES))
        users = {user for user, _ in self.auth}
        for admin in self.admins:
            if admin not in users:
                raise ValueError(f"admin: {admin!r} is not one of the auth users; add it with --auth {admin}:PASSWORD")

    # Derived values ------------------------------------------------------------------------------------------

    @property
    def is_loopback(self) -> bool:
        """True when only this computer can reach the server."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    @property
    def exposed_without_auth(self) -> bool:
        """Other people could reach the app and nothing asks them to log in."""
        return not self.auth and (self.share or not self.is_loopback)

    @property
    def logins_on(self) -> bool:
        return bool(self.auth)

    @property
    def lora_folder(self) -> Path:
        """Where the LoRA files are: ``loras_dir``, else ``loras/`` beside the models folder or the code."""
        if self.loras_dir is not None:
            return Path(self.loras_dir)
        return (Path(self.models_dir).parent if self.models_dir is not None else REPO_ROOT) / "loras"

    @property
    def max_file_size_bytes(self) -> int:
        return int(self.max_file_size_mb * 1024 * 1024)

    def job_defaults(self) -> dict[str, Any]:
        """The values the job inputs start at: the official app's (the request's defaults), lowered in demo mode."""
        from framepack_core.request import GenerationRequest  # here: importing the request imports torch

        defaults = {f.name: f.default for f in fields(GenerationRequest) if f.default is not MISSING}
        if self.demo:
            defaults.update(DEMO_JOB_DEFAULTS)
        return defaults

    @classmethod
    def describe(cls) -> dict[str, str]:
        """Field name -> description, e.g. for ``--help`` texts."""
        return {f.name: f.metadata.get("description", "") for f in fields(cls)}

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Defaults, then ``FRAMEPACK_<FIELD>`` variables, then ``overrides`` (flags; ``None`` means not given).

        ``FRAMEPACK_AUTH`` is one or more ``USER:PASS`` separated by commas; ``FRAMEPACK_AUTH_FILE`` names a file
        of ``USER:PASS`` lines. Raises ``ValueError`` naming the variable for a value that does not parse.
        """
        environ = os.environ if environ is None else environ
        hints = get_type_hints(cls)
        values: dict[str, Any] = {}
        for f in fields(cls):
            name = ENV_PREFIX + f.name.upper()
            if name in environ and f.name not in ("auth", "admins"):
                values[f.name] = _parse(name, environ[name], hints[f.name])
        auth: list[tuple[str, str]] = []
        if environ.get(ENV_PREFIX + "AUTH"):
            auth += [parse_credentials(item, ENV_PREFIX + "AUTH") for item in environ[ENV_PREFIX + "AUTH"].split(",")]
        if environ.get(ENV_PREFIX + "AUTH_FILE"):
            auth += read_auth_file(Path(environ[ENV_PREFIX + "AUTH_FILE"]))
        if auth:
            values["auth"] = tuple(auth)
        if environ.get(ENV_PREFIX + "ADMINS"):
            values["admins"] = tuple(name.strip() for name in environ[ENV_PREFIX + "ADMINS"].split(",") if name.strip())
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = cls(**values)
        return replace(settings, output_dir=Path(settings.output_dir).expanduser().resolve(),
                       models_dir=None if settings.models_dir is None
                       else Path(settings.models_dir).expanduser().resolve(),
                       loras_dir=None if settings.loras_dir is None
                       else Path(settings.loras_dir).expanduser().resolve())


def parse_credentials(text: str, where: str) -> tuple[str, str]:
    """``USER:PASS`` -> (user, password); the password may contain colons."""
    user, sep, password = text.strip().partition(":")
    if not sep or not user or not password:
        raise ValueError(f"{where}: expected USER:PASS with a non-empty user and password")
    if len(user) > MAX_LOGIN_CHARS or not user.isprintable() or any(c.isspace() for c in user):
        raise ValueError(f"{where}: the user name must be 1 to {MAX_LOGIN_CHARS} printable characters without spaces")
    for part in (user, password):
        try:
            part.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"{where}: the user name and password must be valid text (UTF-8)") from None
    return user, password


def read_auth_file(path: Path) -> list[tuple[str, str]]:
    """Credentials from a file of ``USER:PASS`` lines (blank lines and ``#`` comments are skipped)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise ValueError(f"auth file {path}: cannot read it ({error.strerror or error})") from error
    pairs = [parse_credentials(line, f"auth file {path}, line {number}")
             for number, line in enumerate(lines, start=1) if line.strip() and not line.lstrip().startswith("#")]
    if not pairs:
        raise ValueError(f"auth file {path}: no USER:PASS lines in it")
    return pairs


def _parse(name: str, text: str, hint: Any) -> Any:
    kinds = set(get_args(hint)) or {hint}
    text = text.strip()
    if type(None) in kinds and text.lower() in ("", "none"):
        return None
    if bool in kinds:
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise ValueError(f"{name}: expected true or false, got {text!r}")
    try:
        if int in kinds:
            return int(text)
        if float in kinds:
            return float(text)
    except ValueError:
        raise ValueError(f"{name}: expected a number, got {text!r}") from None
    if Path in kinds:
        return Path(text)
    return text
