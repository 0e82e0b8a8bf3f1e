"""Batches from the command line and in the queue: one job per image x prompt x seed, checked whole before any is
queued, named apart, listed and cancelled as a group; an old queue database gains the batch columns in place; and
each job of a batch gives the transformer exactly what the same job queued on its own would."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from framepack_core.cli import main as cli
from framepack_core.jobs.batch import (
    BatchJob,
    expand_batch,
    parse_seeds,
    prompt_lines,
    seed_run,
    submit_batch,
)
from framepack_core.jobs.output_naming import output_base, output_path
from framepack_core.jobs.queue import JobQueue, JobState, QueueLimitError
from framepack_core.jobs.spec import JobSpec, file_sha256
from framepack_core.request import GenerationRequest

TINY = ["--seconds", "0.8", "--window", "3", "--steps", "1", "--resolution", "64", "--no-teacache"]


def _image(path: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def images(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    _image(folder / "b cat.png", 1)
    _image(folder / "a.dog.jpg", 2)
    (folder / "readme.txt").write_text("not an image")
    return folder


@pytest.fixture
def prompt_file(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.txt"
    path.write_text("# the story\nfirst prompt\n\n   \nsecond prompt\n", encoding="utf-8")
    return path


def _jobs(capsys, output_dir: Path, *args) -> tuple[int, str, str]:
    code = cli.main(["jobs", "--output-dir", str(output_dir), *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _queued(output_dir: Path) -> list:
    return JobQueue.for_output_dir(output_dir).list(states=(JobState.QUEUED,))


def test_cli_batch_queues_one_job_per_image_prompt_and_seed(images, prompt_file, tmp_path, capsys):
    out_dir = tmp_path / "out"
    code, out, err = _jobs(capsys, out_dir, "submit", "--image-dir", images, "--prompt-file", prompt_file,
                           "--seeds", "5, 9", *TINY)
    assert code == cli.EXIT_OK, err
    jobs = _queued(out_dir)
    assert len(jobs) == 2 * 2 * 2
    batch_ids = {job.batch_id for job in jobs}
    assert len(batch_ids) == 1 and None not in batch_ids
    (batch_id,) = batch_ids
    assert out.startswith(f"batch {batch_id}: 8 jobs queued")
    # The folder's images by name (a.dog.jpg before b cat.png), then prompts in file order, then seeds.
    sha = {name: file_sha256(images / name) for name in ("a.dog.jpg", "b cat.png")}
    combos = [(job.spec.image_sha256, job.spec.settings["prompt"], job.spec.settings["seed"]) for job in jobs]
    assert combos == [(sha[name], prompt, seed) for name in ("a.dog.jpg", "b cat.png")
                      for prompt in ("first prompt", "second prompt") for seed in (5, 9)]
    assert [job.label for job in jobs] == [f"{stem}-p{n}" for stem in ("a-dog", "b-cat") for n in (1, 2)
                                           for _ in (5, 9)]
    assert all(job.spec.settings["resolution"] == 64 and job.spec.settings["steps"] == 1 for job in jobs)

    code, out, _ = _jobs(capsys, out_dir, "list")
    assert f"batch {batch_id}: 8 jobs, 8 waiting" in out
    assert all(batch_id in line for line in out.splitlines()[1:9])
    code, out, _ = _jobs(capsys, out_dir, "list", "--json")
    assert {json.loads(line)["batch_id"] for line in out.splitlines()} == {batch_id}


def test_seed_count_counts_up_from_the_seed_and_repeated_images_stay_apart(images, tmp_path, capsys):
    out_dir = tmp_path / "out"
    image = images / "b cat.png"
    code, _, err = _jobs(capsys, out_dir, "submit", "--image", image, "--image", image, "--seed", "7",
                           "--seed-count", "3", "--prompt", "one prompt", *TINY)
    assert code == cli.EXIT_OK, err
    jobs = _queued(out_dir)
    assert [job.spec.settings["seed"] for job in jobs] == [7, 8, 9, 7, 8, 9]
    assert {job.spec.settings["prompt"] for job in jobs} == {"one prompt"}
    assert {job.label for job in jobs} == {"b-cat"}  # one prompt: no prompt number in the name


def test_a_broken_image_refuses_the_whole_batch_naming_the_file(images, prompt_file, tmp_path, capsys):
    (images / "c broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out_dir = tmp_path / "out"
    code, out, err = _jobs(capsys, out_dir, "submit", "--image-dir", images, "--prompt-file", prompt_file, *TINY)
    assert code == cli.EXIT_BAD_INPUT and err.startswith("error: --image:") and "c broken.png" in err, err
    assert "Traceback" not in err and out == ""
    assert _queued(out_dir) == []
    assert not list((out_dir / ".queue" / "images").iterdir()), "nothing stored either"


@pytest.mark.parametrize(("args", "flag", "words"), [
    (["--seeds", "1,x"], "--seeds", "'x' is not a whole number"),
    (["--seeds", "1", "--seed-count", "2"], "--seeds", "not both"),
    (["--seed-count", "0"], "--seed-count", "out of range"),
    (["--seed", str(2**63 - 2), "--seed-count", "3"], "--seed-count", "largest seed"),
    (["--prompt-file", "{missing}"], "--prompt-file", "cannot read"),
    (["--prompt-file", "{comments}"], "--prompt-file", "holds no prompt"),
    (["--image-dir", "{empty}"], "--image-dir", "holds no .png"),
    (["--seeds", ",".join(map(str, range(600)))], "--image/--prompt-file/--seeds", "a batch makes at most"),
    (["--output", "x.mp4", "--seed-count", "2"], "--output", "cannot be used with a batch"),
])
def test_bad_batch_options_are_refused_by_their_flag_before_anything_is_queued(images, tmp_path, capsys, args,
                                                                                flag, words):
    (tmp_path / "comments.txt").write_text("# only\n\n# comments\n")
    (tmp_path / "empty").mkdir()
    args = [a.format(missing=tmp_path / "none.txt", comments=tmp_path / "comments.txt", empty=tmp_path / "empty")
            for a in args]
    out_dir = tmp_path / "out"
    code, _, err = _jobs(capsys, out_dir, "submit", "--image", images / "b cat.png", *args, *TINY)
    assert code == cli.EXIT_BAD_INPUT and err.startswith(f"error: {flag}:") and words in err, err
    assert "Traceback" not in err and _queued(out_dir) == []


def test_a_bad_prompt_is_named_by_its_number_in_the_file(images, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("fine\n" + "x" * 20_001 + "\n")
    code, _, err = _jobs(capsys, tmp_path / "out", "submit", "--image", images / "b cat.png", "--prompt-file",
                         prompts, *TINY)
    assert code == cli.EXIT_BAD_INPUT and err.startswith("error: --prompt-file: prompt 2:"), err


def test_one_image_without_batch_options_is_still_a_single_job(images, tmp_path, capsys):
    code, out, err = _jobs(capsys, tmp_path / "out", "submit", "--image", images / "b cat.png", *TINY)
    assert code == cli.EXIT_OK, err
    (job,) = _queued(tmp_path / "out")
    assert out == f"{job.id} queued (number 1)\n"
    assert job.batch_id is None and job.label is None
    code, _, err = _jobs(capsys, tmp_path / "out", "submit", *TINY)
    assert code == cli.EXIT_BAD_INPUT and err.startswith("error: --image:"), err


def test_cancel_batch_cancels_that_batch_and_nothing_else(images, tmp_path, capsys):
    out_dir = tmp_path / "out"
    image = images / "b cat.png"
    _jobs(capsys, out_dir, "submit", "--image", image, "--seed-count", "3", *TINY)
    _jobs(capsys, out_dir, "submit", "--image", image, "--seeds", "40,41", *TINY)
    _jobs(capsys, out_dir, "submit", "--image", image, *TINY)
    queue = JobQueue.for_output_dir(out_dir)
    first, second = dict.fromkeys(job.batch_id for job in queue.list() if job.batch_id)
    running = queue.claim_next()  # the first job of the first batch is running
    assert running.batch_id == first

    code, out, err = _jobs(capsys, out_dir, "cancel", "--batch", first)
    assert code == cli.EXIT_OK, err
    assert "cancelled 2 waiting jobs, asked 1 running one to stop" in out
    states = {job.id: (job.batch_id, job.state, job.cancel_requested) for job in queue.list()}
    assert {s[1:] for s in states.values() if s[0] == first} == {(JobState.CANCELLED, False),
                                                                 (JobState.RUNNING, True)}
    assert {s[1] for s in states.values() if s[0] != first} == {JobState.QUEUED}
    code, out, _ = _jobs(capsys, out_dir, "list")
    assert f"batch {first}: 3 jobs, 1 running, 2 cancelled" in out and f"batch {second}: 2 jobs, 2 waiting" in out

    code, _, err = _jobs(capsys, out_dir, "cancel", "--batch", "feedbeef")
    assert code == cli.EXIT_BAD_INPUT and err.startswith("error: --batch: there is no batch 'feedbeef'"), err


def test_batch_jobs_get_names_apart_through_the_one_naming_rule(gradient_image, tmp_path):
    base = GenerationRequest(image=gradient_image, seconds=0.8, latent_window_size=3, steps=1, resolution=64)
    same_name = tmp_path / "other" / gradient_image.name
    same_name.parent.mkdir()
    same_name.write_bytes(gradient_image.read_bytes())
    jobs = expand_batch(base, [gradient_image, gradient_image, same_name], ["a", "b", "a"], [1, 2])
    labels = [(job.label, job.request.seed) for job in jobs]
    assert len(set(labels)) == len(labels) // 3, "image stem + prompt number + seed: apart up to a repeated image"
    names = {output_path(tmp_path, seed=job.request.seed, job_id=f"job{i:08d}", label=job.label, when=0)
             for i, job in enumerate(jobs)}
    assert len(names) == len(jobs), "the job id keeps even a repeated image's jobs apart"
    name = output_path(tmp_path, seed=2, job_id="abc", label="input-p2", when=0)
    assert name.name.endswith("_input-p2_abc_seed2.mp4") and output_base(name) == name.stem
    assert output_base(output_path(tmp_path, seed=1, job_id="x", label=jobs[0].label)).count(".") == 0


def test_prompt_lines_and_seeds_parse_as_documented():
    assert prompt_lines("# c\n a \n\n#b\n[0s: walks] [2s: waves]\n") == ["a", "[0s: walks] [2s: waves]"]
    assert parse_seeds("1,2; 3 4") == [1, 2, 3, 4]
    assert seed_run(7, 3) == [7, 8, 9]


def test_a_batch_over_the_pending_limit_is_refused_before_any_job_is_queued_and_a_midway_failure_withdraws(
        gradient_image, tmp_path):
    queue = JobQueue(tmp_path / "queue")
    base = GenerationRequest(image=gradient_image, seconds=0.8, latent_window_size=3, steps=1, resolution=64)
    jobs = expand_batch(base, [gradient_image], [], [1, 2, 3])

    def submit_one(job: BatchJob, batch_id: str) -> str:
        spec = JobSpec.from_request(job.request, file_sha256(gradient_image))
        return queue.submit(spec, gradient_image, owner="ann", max_pending=4, batch_id=batch_id, label=job.label).id

    submit_batch(jobs[:2], submit_one, queue.delete, pending=0, max_pending=4)
    with pytest.raises(QueueLimitError, match="would queue 3 jobs and you already have 2 waiting"):
        submit_batch(jobs, submit_one, queue.delete, pending=2, max_pending=4)
    assert queue.count(states=(JobState.QUEUED,)) == 2
    # Told nothing of the others' jobs, the batch still ends whole or not at all: the 3rd submit is refused.
    with pytest.raises(QueueLimitError):
        submit_batch(jobs, submit_one, queue.delete, pending=0, max_pending=None)
    assert queue.count(states=(JobState.QUEUED,)) == 2


OLD_SCHEMA = """
CREATE TABLE jobs (id TEXT PRIMARY KEY, state TEXT NOT NULL, position REAL NOT NULL, spec TEXT NOT NULL,
    image TEXT NOT NULL, output TEXT, owner TEXT, created_at REAL NOT NULL, started_at REAL, ended_at REAL,
    attempts INTEGER NOT NULL DEFAULT 0, cancel_requested INTEGER NOT NULL DEFAULT 0,
    sections_done INTEGER NOT NULL DEFAULT 0, total_sections INTEGER, error TEXT, hint TEXT);
"""


def test_an_old_database_without_the_batch_columns_is_migrated_in_place(gradient_image, tmp_path):
    root = tmp_path / "queue"
    root.mkdir()
    spec = JobSpec.from_request(GenerationRequest(image=gradient_image, seconds=0.8, latent_window_size=3, steps=1,
                                                  resolution=64).validated(), file_sha256(gradient_image))
    with sqlite3.connect(root / "queue.sqlite3") as connection:
        connection.executescript(OLD_SCHEMA)
        connection.execute("INSERT INTO jobs (id, state, position, spec, image, created_at) VALUES "
                           "('old1', 'pending', 1, ?, ?, 1.0)", (spec.to_json(None), str(gradient_image)))
    connection.close()
    queue = JobQueue(root)
    (old,) = queue.list()
    assert (old.id, old.state, old.batch_id, old.label) == ("old1", JobState.QUEUED, None, None)
    with sqlite3.connect(root / "queue.sqlite3") as connection:
        columns = {row[1] for row in connection.execute("PRAGMA table_info(jobs)")}
    connection.close()
    assert {"batch_id", "label", "partial"} <= columns
    new = queue.submit(spec, gradient_image, batch_id="b1", label="input")
    assert (queue.get(new.id).batch_id, queue.get(new.id).label) == ("b1", "input")
    assert JobQueue(root).get("old1").batch_id is None, "opening it again changes nothing"


def test_each_batch_job_gives_the_transformer_its_own_prompt_and_seed(tiny_models_dir, images, prompt_file,
                                                                     tmp_path, capsys, monkeypatch):
    from diffusers import HunyuanVideoFramepackTransformer3DModel as Transformer

    calls: list[dict] = []
    forward = Transformer.forward

    def recording(self, *args, **kwargs):
        calls.append({name: kwargs[name].detach().clone() for name in ("hidden_states", "encoder_hidden_states")})
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(Transformer, "forward", recording)
    out_dir = tmp_path / "out"
    code, _, err = _jobs(capsys, out_dir, "submit", "--image", images / "b cat.png", "--prompt-file", prompt_file,
                         "--seeds", "3,4", *TINY)
    assert code == cli.EXIT_OK, err
    code, _, err = _jobs(capsys, out_dir, "submit", "--image", images / "b cat.png", "--prompt", "second prompt",
                         "--seed", "4", *TINY)  # the batch's last job, queued on its own
    assert code == cli.EXIT_OK, err
    code, _, err = _jobs(capsys, out_dir, "run", "--models-dir", tiny_models_dir, "--quiet")
    assert code == cli.EXIT_OK, err
    per_job = len(calls) // 5
    assert per_job * 5 == len(calls)
    first = [calls[i * per_job] for i in range(5)]  # each job's first transformer call
    text = [call["encoder_hidden_states"] for call in first]
    noise = [call["hidden_states"] for call in first]
    assert text[0].equal(text[1]) and text[2].equal(text[3]) and not text[0].equal(text[2])
    assert noise[0].equal(noise[2]) and noise[1].equal(noise[3]) and not noise[0].equal(noise[1])
    assert all(a["hidden_states"].equal(b["hidden_states"]) and
               a["encoder_hidden_states"].equal(b["encoder_hidden_states"])
               for a, b in zip(calls[3 * per_job:4 * per_job], calls[4 * per_job:])), \
        "a batch job reaches the transformer exactly as the same job queued alone"
    videos = sorted(out_dir.glob("*.mp4"))
    assert len(videos) == 5 and len({output_base(v) for v in videos}) == 5
    assert sum("_b-cat-p1_" in v.name for v in videos) == 2 and sum("_b-cat-p2_" in v.name for v in videos) == 2
