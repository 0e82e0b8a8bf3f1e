"""How a Ray job's files travel as bytes (``workers.ray_files``): no Ray needed, so these run everywhere."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load, save

from framepack_core.events import JobCancelled, SectionFinished
from framepack_core.request import GenerationRequest, Keyframe, LoraChoice
from framepack_core.workers.ray_files import (
    AppLayout,
    FolderWatch,
    outbound_job,
    rewrite_finished_output,
    write_received,
)


def _checkpoint(finished: str | None) -> bytes:
    state = {"version": 1, "sections_done": 3, "finished_output": finished}
    return save({"history_latents": torch.arange(24.0).reshape(2, 3, 4)}, metadata={"state": json.dumps(state)})


def _finished_output(data: bytes, tmp_path: Path) -> str | None:
    path = tmp_path / "check.safetensors"
    path.write_bytes(data)
    with safe_open(str(path), framework="pt") as handle:
        return json.loads(handle.metadata()["state"])["finished_output"]


def test_a_finished_checkpoint_names_another_video_with_its_tensors_untouched(tmp_path):
    data = _checkpoint("/actor/root/output/video.mp4")
    moved = rewrite_finished_output(data, lambda path: path.replace("/actor/root", "/app/a/much/longer/folder"))
    assert _finished_output(moved, tmp_path) == "/app/a/much/longer/folder/output/video.mp4"
    assert torch.equal(load(moved)["history_latents"], load(data)["history_latents"])
    unfinished = _checkpoint(None)
    assert rewrite_finished_output(unfinished, lambda path: "elsewhere") == unfinished
    assert rewrite_finished_output(b"not a checkpoint", lambda path: "elsewhere") == b"not a checkpoint"


def test_inputs_and_the_job_folder_go_out_and_what_comes_back_lands_in_the_app_s_folders(tmp_path):
    app, actor = tmp_path / "app", tmp_path / "actor"
    (app / "in").mkdir(parents=True)
    for name in ("start.png", "end.png", "key.png", "style.safetensors"):
        (app / "in" / name).write_bytes(name.encode())
    job_dir = app / "jobs" / "j1"
    (job_dir / "segments").mkdir(parents=True)
    (job_dir / "segments" / "seg_00000.mp4").write_bytes(b"segment")
    (job_dir / ".lock").write_bytes(b"")
    (job_dir / "job.json").write_text(json.dumps({"spec": {}, "output": "/elsewhere/video.mp4"}))
    request = GenerationRequest(image=app / "in" / "start.png", end_image=app / "in" / "end.png",
                                keyframes=(Keyframe(1.0, app / "in" / "key.png"),),
                                loras=(LoraChoice(app / "in" / "style.safetensors", 0.5),),
                                output=app / "out" / "video.mp4", save_latents=app / "lat" / "video.safetensors")
    layout = AppLayout(request.output, job_dir, app / "snaps", request.save_latents)
    job = outbound_job(request, "j1", layout, job_dir, app / "snaps")

    assert job.request.image == Path("inputs/0/start.png") and job.request.output == Path("output/video.mp4")
    assert job.request.loras[0] == LoraChoice(Path("inputs/3/style.safetensors"), 0.5)
    assert job.request.save_latents == Path("latents/video.safetensors")
    assert "job/.lock" not in job.files and job.files["job/segments/seg_00000.mp4"] == b"segment"
    write_received(actor, job.files)
    assert (actor / "inputs" / "2" / "key.png").read_bytes() == b"key.png"

    watch = FolderWatch(actor)
    (actor / "job" / "segments" / "seg_00000.mp4").unlink()
    (actor / "output").mkdir()
    (actor / "output" / "video.partial.mp4").write_bytes(b"partial")
    (actor / "output" / ".video.mp4.tmp").write_bytes(b"half written")
    (actor / "snapshots").mkdir()
    (actor / "snapshots" / "j1_001.mp4").write_bytes(b"snapshot")
    (actor / "job" / "job.json").write_text(json.dumps({"spec": {}, "output": str(actor / "output/video.mp4")}))
    changes = watch.changes()
    assert changes == {"job/segments/seg_00000.mp4": None, "output/video.partial.mp4": b"partial",
                       "snapshots/j1_001.mp4": b"snapshot", "job/job.json": changes["job/job.json"]}
    assert watch.changes() == {}, "nothing changed since"

    layout.write(changes, str(actor))
    assert not (job_dir / "segments" / "seg_00000.mp4").exists()
    assert (app / "out" / "video.partial.mp4").read_bytes() == b"partial"
    assert (app / "snaps" / "j1_001.mp4").read_bytes() == b"snapshot"
    assert json.loads((job_dir / "job.json").read_text())["output"] == str(app / "out" / "video.mp4")
    event = layout.event_for_app(JobCancelled("j1", partial_path=actor / "output" / "video.partial.mp4",
                                              sections_done=1), str(actor))
    assert event.partial_path == app / "out" / "video.partial.mp4"
    section = layout.event_for_app(SectionFinished("j1", 1, 2, actor / "job" / "segments" / "seg_00001.mp4", 9, 1,
                                                   0.1, 0.1, 0.1, snapshot_path=None), str(actor))
    assert section.segment_path == job_dir / "segments" / "seg_00001.mp4" and section.snapshot_path is None


def test_a_name_that_climbs_out_of_its_folder_is_never_written_here(tmp_path):
    from framepack_core.workers.ray_files import AppLayout

    layout = AppLayout(tmp_path / "out" / "video.mp4", tmp_path / "job", None, None)
    layout.write({"job/../../escaped.txt": b"x", "/etc/escaped.txt": b"x", "job/segments/ok.mp4": b"ok"}, "/remote")
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path.parent / "escaped.txt").exists()
    assert (tmp_path / "job" / "segments" / "ok.mp4").read_bytes() == b"ok"
