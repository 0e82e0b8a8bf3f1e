"""A worker per Ray actor: jobs run on the nodes of a Ray cluster, each actor with its own engine and models.

No file system is shared with the nodes: the request's input files and the job folder go to the actor as bytes,
the actor runs the engine in a temporary folder of its own, and what the engine writes (checkpoints, segments,
snapshots, the videos and their sidecars) comes back as bytes after every section and at the end
(``ray_files``). The app writes those into its own folders before it passes each event on, with the event's paths
rewritten to the app's, so the runner and the pages only ever see the app's files. A job started on one actor
thus resumes on any other from its last finished section.

Ray is imported only here, and only when a Ray worker is asked for: the app runs without it.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import socket
import tempfile
import threading
import traceback
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any

from framepack_core.errors import InvalidInputError
from framepack_core.events import CancelToken, EngineEvent, JobCancelled, JobFailed, JobFinished, SectionFinished
from framepack_core.jobs.checkpoint import JobDirectory
from framepack_core.jobs.output_naming import DEFAULT_OUTPUT_DIR, output_path
from framepack_core.request import GenerationRequest
from framepack_core.workers.ray_files import (
    JOB,
    SNAPSHOTS,
    AppLayout,
    FolderWatch,
    RemoteJob,
    map_request_paths,
    outbound_job,
    write_received,
)
from framepack_core.workers.recipe import EngineRecipe
from framepack_core.workers.remote import WorkerLostError

logger = logging.getLogger(__name__)

CANCEL_POLL_S = 0.1  # how often the app looks for a cancel to pass on to the actor
CANCEL_ANSWER_S = 10.0  # how long it waits for the actor to take a cancel before it asks again
TERMINAL = (JobFinished, JobCancelled, JobFailed)
ACTOR_FOLDER_PREFIX = "framepack-ray-actor-"  # then the actor's process id: see _remove_folders_of_dead_actors
REACH_TIMEOUT_S = 5.0  # for the cluster's address to answer at all
INSTALL_HINT = "Install Ray on this machine: pip install -r requirements-ray.txt"
CONNECT_HINT = ("Check that the cluster runs (ray status on its head node) and that this machine can reach that "
                "address, or set {ray} to local to start Ray here.")


def import_ray() -> ModuleType:
    """The ``ray`` module; ``InvalidInputError`` (field ``ray``) saying how to install it when it is missing."""
    try:
        import ray
    except ImportError:
        raise InvalidInputError("ray", "Ray is not installed", INSTALL_HINT) from None
    return ray


def connect_ray(address: str, num_cpus: int | None = None) -> None:
    """Connect this process to Ray, once: ``local`` starts a private Ray instance on this machine (``num_cpus``:
    the CPUs it may use, default all); anything else joins a running cluster (``auto``, ``host:port``,
    ``ray://host:port``). The actors import this package from the copy Ray ships from here, so the nodes need
    only its dependencies. ``InvalidInputError`` (field ``ray``) when Ray is missing or the cluster cannot be
    reached."""
    ray = import_ray()
    if ray.is_initialized():
        return
    import framepack_core

    # Quiet: the actors' logs stay in Ray's session folder instead of interleaving with this process's output.
    options: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING,
                               "log_to_driver": False, "runtime_env": {"py_modules": [framepack_core]}}
    text = address.strip()
    if not text:
        raise InvalidInputError("ray", "no address given",
                                "Set {ray} to local to start Ray on this machine, or to the address of a Ray "
                                "cluster (auto, host:port or ray://host:port).")
    if text != "local" and text != "auto":
        _check_reachable(text)
    try:
        if text == "local":
            ray.init(num_cpus=num_cpus, **options)
        else:
            ray.init(address=text, **options)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as error:
        reason = str(error).strip().split(". ")[0]  # Ray's advice after it names its own options
        raise InvalidInputError("ray", f"cannot connect to the Ray cluster at {text}: {reason}",
                                CONNECT_HINT) from None


def _check_reachable(address: str) -> None:
    """Refuse an address nothing listens on at once: Ray itself retries it for minutes before it gives up."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise InvalidInputError("ray", f"{address!r} is not a Ray address",
                                "Set {ray} to local, auto, host:port (the head node's GCS port, 6379 by "
                                "default) or ray://host:port (Ray Client, 10001 by default).")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=REACH_TIMEOUT_S).close()
    except OSError as error:
        raise InvalidInputError("ray", f"cannot reach the Ray cluster at {address}: {error.strerror or error}",
                                CONNECT_HINT) from None


def ray_workers(recipe: EngineRecipe, address: str, count: int | None = None) -> list[RayWorker]:
    """Connect to Ray at ``address`` and return ``count`` workers (named ``ray-1``, ``ray-2``, ...), each of
    which makes its actor on the first job. ``count`` None: one per GPU of the cluster for a GPU recipe, one for
    a CPU recipe (or a GPU-less cluster with the device ``auto``). ``InvalidInputError`` (field ``ray``) for a
    count below 1 or a GPU device on a cluster without GPUs."""
    if count is not None and count < 1:
        raise InvalidInputError("ray_workers", f"asks for {count} workers", "Give at least 1 worker.")
    connect_ray(address)
    gpus = int(import_ray().cluster_resources().get("GPU", 0))
    device = recipe.device.split(":")[0]
    if device == "cuda" and gpus == 0:
        raise InvalidInputError("ray", f"the Ray cluster at {address} has no GPU for the device {recipe.device}",
                                "Add GPU nodes to the cluster, or run the workers with the device cpu.")
    on_gpu = device == "cuda" or (device == "auto" and gpus > 0)
    actor_recipe = recipe.on_device("cuda" if on_gpu else ("cpu" if device == "auto" else recipe.device))
    if count is None:
        count = gpus if on_gpu else 1
    return [RayWorker(actor_recipe, f"ray-{index}") for index in range(1, count + 1)]


class EngineActor:
    """The Ray actor (made with ``ray.remote``): an engine built from the recipe where the actor runs, one job
    at a time. Threaded, so ``cancel`` arrives while ``run`` streams a job's events."""

    def __init__(self, recipe: EngineRecipe) -> None:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s ray actor %(process)d %(levelname)s %(message)s")
        self.engine = recipe.build()
        _remove_folders_of_dead_actors()
        self.work_root = Path(tempfile.mkdtemp(prefix=f"{ACTOR_FOLDER_PREFIX}{os.getpid()}-"))
        self._tokens: dict[str, CancelToken] = {}
        self._lock = threading.Lock()

    def work_folder(self) -> str:
        """The folder under which this actor makes each job's folder (on its node's file system)."""
        return str(self.work_root)

    def cancel(self, job_id: str) -> bool:
        """Cancel job ``job_id`` if it runs here; the engine sees it before its next step."""
        with self._lock:
            token = self._tokens.get(job_id)
        if token is not None:
            token.cancel()
        return token is not None

    def run(self, job: RemoteJob) -> Iterator[tuple]:
        """Stream ``("root", path)``, then ``("event", event, files)`` per engine event (``files``: what changed
        under the job root, after each section and at the end), or ``("refused", field, message, hint)`` for a
        request the engine refuses, or ``("crashed", traceback)``. The job's folder is removed at the end."""
        root = Path(tempfile.mkdtemp(prefix=f"job-{job.job_id}-", dir=self.work_root))
        token = CancelToken()
        if job.cancelled:
            token.cancel()
        with self._lock:
            self._tokens[job.job_id] = token
        try:
            yield ("root", str(root))
            write_received(root, job.files)
            request = map_request_paths(job.request, lambda path: path if path.is_absolute() else root / path)
            watch = FolderWatch(root)
            events = self.engine.generate(request, cancel=token, job_id=job.job_id,
                                          job_dir=root / JOB if job.has_job_dir else None,
                                          snapshot_dir=root / SNAPSHOTS if job.has_snapshot_dir else None)
            for event in events:
                files = watch.changes() if isinstance(event, (SectionFinished, *TERMINAL)) else {}
                yield ("event", event, files)
        except InvalidInputError as error:
            yield ("refused", error.field, error.message.removeprefix(f"{error.field}: "), error.hint)
        except Exception:  # noqa: BLE001 - reported to the app, which fails the job as a bug
            yield ("crashed", traceback.format_exc())
        finally:
            with self._lock:
                self._tokens.pop(job.job_id, None)
            shutil.rmtree(root, ignore_errors=True)


class RayWorker:
    """A ``Worker`` (``framepack_core.workers.remote``) backed by one ``EngineActor`` that Ray places wherever
    the cluster has room. Thread-safe for one job at a time, which is how the pool and the service use it."""

    def __init__(self, recipe: EngineRecipe, name: str) -> None:
        self.recipe = recipe
        self.name = name
        self.last_remote_root: str | None = None  # the actor's folder for the last job (on its node)
        self._actor: Any = None
        self._lock = threading.Lock()

    @property
    def actor(self) -> Any:
        """The current actor's handle (None before the first job and after it was lost or released)."""
        return self._actor

    def actor_options(self) -> dict[str, Any]:
        """Ray's resources for the actor: a GPU for a CUDA engine, else a CPU."""
        on_gpu = self.recipe.device.startswith("cuda")
        # max_concurrency 2: ``cancel`` runs beside ``run``; no restarts: a lost actor's job moves on instead.
        return {"num_gpus": 1 if on_gpu else 0, "num_cpus": 1, "max_concurrency": 2, "max_restarts": 0}

    def generate(self, request: GenerationRequest, cancel: CancelToken | None = None, job_id: str | None = None,
                 snapshot_dir: Path | None = None, job_dir: Path | None = None) -> Iterator[EngineEvent]:
        ray = import_ray()
        import uuid

        cancel = cancel or CancelToken()
        job_id = job_id or uuid.uuid4().hex[:12]
        output = Path(request.output) if request.output is not None else _default_output(request, job_dir)
        layout = AppLayout(output, job_dir, snapshot_dir, request.save_latents)
        held_folder = _hold_job_folder(job_dir)
        try:
            job = replace(outbound_job(replace(request, output=output), job_id, layout, job_dir, snapshot_dir),
                          cancelled=cancel.cancelled)
            with self._lock:
                actor = self._ensure_actor(ray)
            yield from self._stream(ray, actor, job, layout, cancel)
        finally:
            if held_folder is not None:
                held_folder.close()

    def _stream(self, ray: ModuleType, actor: Any, job: RemoteJob, layout: AppLayout,
                cancel: CancelToken) -> Iterator[EngineEvent]:
        ended = threading.Event()
        watcher = threading.Thread(target=_pass_cancel_on, args=(ray, actor, job.job_id, cancel, ended),
                                   name=f"framepack-ray-cancel-{self.name}", daemon=True)
        remote_root = ""
        finished = False
        try:
            stream = actor.run.options(num_returns="streaming").remote(job)
            watcher.start()
            for reference in stream:
                message = ray.get(reference)
                kind = message[0]
                if kind == "root":
                    remote_root = self.last_remote_root = message[1]
                elif kind == "event":
                    _, event, files = message
                    layout.write(files, remote_root)
                    yield layout.event_for_app(event, remote_root)
                    if isinstance(event, TERMINAL):
                        finished = True
                        _wait_for_the_end(ray, stream)
                        return
                elif kind == "refused":
                    finished = True
                    raise InvalidInputError(message[1], layout.text_for_app(message[2], remote_root), message[3])
                else:  # "crashed": the engine raised what it should have reported; the caller treats it as a bug
                    finished = True
                    raise RuntimeError(f"The engine on worker {self.name} crashed:\n{message[1]}")
            raise self._lost("its job stream ended early")
        except ray.exceptions.RayTaskError as error:
            finished = True
            raise RuntimeError(f"The actor of worker {self.name} failed:\n{error}") from error
        except ray.exceptions.RayError as error:  # the actor, its node or an object is gone
            finished = True
            raise self._lost(_first_line(error)) from error
        finally:
            ended.set()
            if not finished and self._actor is actor:  # the caller stopped reading: stop the remote job too
                _quietly(lambda: actor.cancel.remote(job.job_id))

    def release(self) -> None:
        """Kill the actor: its models' memory goes with it; the next job makes a new one."""
        self.close()

    def close(self) -> None:
        with self._lock:
            actor, self._actor = self._actor, None
        if actor is not None:
            ray = import_ray()
            _quietly(lambda: ray.kill(actor, no_restart=True))

    def _ensure_actor(self, ray: ModuleType) -> Any:
        if self._actor is None:
            self._actor = _engine_actor_class().options(**self.actor_options()).remote(self.recipe)
            logger.info("Started Ray actor for worker %s", self.name)
        return self._actor

    def _lost(self, why: str) -> WorkerLostError:
        """Forget the actor (the next job makes a fresh one, wherever Ray has room) and say why."""
        with self._lock:
            actor, self._actor = self._actor, None
        if actor is not None:
            ray = import_ray()
            _quietly(lambda: ray.kill(actor, no_restart=True))
        return WorkerLostError(self.name, f"its Ray actor is gone ({why})")


@functools.cache
def _engine_actor_class() -> Any:
    """``ray.remote(EngineActor)``, made once Ray is imported (only when a Ray worker is asked for)."""
    return import_ray().remote(EngineActor)


def _wait_for_the_end(ray: ModuleType, stream: Any) -> None:
    """Read the actor's stream to its end, which comes after the actor has removed the job's folder: the worker is
    free, and its node tidy, once ``generate`` returns. The job has ended already, so a loss now changes nothing."""
    try:
        for reference in stream:
            ray.get(reference)
    except ray.exceptions.RayError:
        logger.debug("The actor went away after its job ended", exc_info=True)


def _pass_cancel_on(ray: ModuleType, actor: Any, job_id: str, cancel: CancelToken, ended: threading.Event) -> None:
    """The app's cancel, passed on to the actor while the job runs. Asked again until the actor has the job (a
    cancel that arrives while the actor still starts, or still receives the files, would otherwise be lost)."""
    while not ended.is_set():
        if cancel.cancelled:
            try:
                if ray.get(actor.cancel.remote(job_id), timeout=CANCEL_ANSWER_S):
                    return
            except ray.exceptions.GetTimeoutError:
                pass
            except ray.exceptions.RayError:  # the actor is gone: the job's stream says so
                return
        ended.wait(CANCEL_POLL_S)


def _hold_job_folder(job_dir: Path | None) -> JobDirectory | None:
    """The app-side job folder, held while the job runs elsewhere, so the queue knows the job is alive (and a
    second run of it here is refused, as the engine refuses one)."""
    if job_dir is None:
        return None
    folder = JobDirectory(job_dir)
    folder.hold()
    return folder


def _default_output(request: GenerationRequest, job_dir: Path | None) -> Path:
    """The video's path when the request names none: the one the job folder recorded, else a new default name
    (as the engine picks them)."""
    import json

    record = None if job_dir is None else Path(job_dir) / "job.json"
    if record is not None and record.is_file():
        try:
            recorded = json.loads(record.read_text(encoding="utf-8")).get("output")
        except (OSError, ValueError, AttributeError):
            recorded = None
        if recorded:
            return Path(recorded)
    request = request.validated()
    return output_path(DEFAULT_OUTPUT_DIR, seed=request.seed, model=request.model.value)


def _remove_folders_of_dead_actors() -> None:
    """A killed actor cannot clean up: the next actor on the node removes the folders of actors whose process is
    gone (each folder's name holds its actor's process id), with whatever job files they still held."""
    for folder in Path(tempfile.gettempdir()).glob(f"{ACTOR_FOLDER_PREFIX}*-*"):
        pid = folder.name.removeprefix(ACTOR_FOLDER_PREFIX).split("-")[0]
        if not pid.isdigit() or not folder.is_dir():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except OSError:
            continue  # alive, under another user


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _quietly(call: Any) -> None:
    """Best effort: used on an actor that may already be gone."""
    try:
        call()
    except Exception:  # nothing to do about an actor that is gone
        logger.debug("Ray call on a gone actor failed", exc_info=True)
