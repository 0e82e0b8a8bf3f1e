"""The job API's LoRAs (under ``/api/v1``, beside the job routes of ``app.api.routes``):

    GET    /loras                   the LoRA folder's files: name, size and SHA-256

A job names its LoRAs in ``settings`` as ``"loras": [{"name": "style.safetensors", "weight": 0.8}]``, a spec by
the files' SHA-256 (``inputs.loras``). Either way they are looked up **only in the LoRA folder**
(``framepack_core.lora.library``): a path, ``..`` or a name the folder lacks is refused with 422 naming ``loras``,
so no login can make the server read any other file. The folder is shared read-only: every user sees the same
list, and nobody can add to it through the API.
"""

# No ``from __future__ import annotations``: FastAPI reads the routes' annotations, some of them local to
# ``add_lora_routes``.
import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI
from pydantic import BaseModel, Field

from app.access import Viewer
from framepack_core.errors import InvalidInputError
from framepack_core.jobs.spec import JobSpec
from framepack_core.lora.library import LoraFolder

LORAS_HINT = "GET /loras lists the LoRA folder's files; put the file there (whoever runs the app can)."


class LoraEntry(BaseModel):
    name: str = Field(description='The file name to give in settings: {"loras": [{"name": ..., "weight": 0.8}]}.')
    size: int = Field(description="Its size in bytes.")
    sha256: str = Field(description="Its SHA-256, as a job's spec names it (inputs.loras).")


class LoraList(BaseModel):
    loras: list[LoraEntry]


def add_lora_routes(api: FastAPI, folder: LoraFolder, viewer: Callable[..., Viewer],
                    errors: dict[int | str, dict[str, Any]]) -> None:
    """``GET /loras`` on ``api``; ``viewer`` is the routes' login dependency."""
    Who = Annotated[Viewer, Depends(viewer)]

    @api.get("/loras", response_model=LoraList, responses=errors, summary="List the LoRA files jobs may use")
    async def list_loras(who: Who) -> LoraList:
        files = await asyncio.to_thread(folder.files)  # the first listing hashes each file once
        return LoraList(loras=[LoraEntry(name=lora.name, size=lora.size, sha256=lora.sha256 or "") for lora in files])


def lora_settings(folder: LoraFolder, values: dict[str, Any]) -> dict[str, Any]:
    """``settings``' ``loras`` (by name) resolved in ``folder`` as the request's field; the other settings as
    they are."""
    if "loras" not in values:
        return values
    return {**values, "loras": folder.named_choices(values["loras"])}


def spec_lora_files(folder: LoraFolder, spec: JobSpec) -> dict[str, Path]:
    """The files of ``spec``'s LoRAs, by SHA-256, found in ``folder``; a LoRA the folder lacks is refused."""
    wanted = [lora["sha256"] for lora in spec.inputs.get("loras", ())]
    if not wanted:
        return {}
    found = folder.by_sha256(wanted)
    for sha256 in wanted:
        if sha256 not in found:
            raise InvalidInputError("loras", f"the spec's LoRA with SHA-256 {sha256[:12]}... is not in the LoRA "
                                    "folder", LORAS_HINT)
    return {sha256: lora.path for sha256, lora in found.items()}
