"""The queue under faults and sharing: damaged rows and files, a full disk, a second process, per-user limits,
pagination, and a retried job that keeps its earlier partial video and finishes under its normal name."""

from __future__ import annotations

import errno
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from framepack_core.cli import main as cli
from framepack_core.errors import DiskFullError
from framepack_core.events import SectionFinished
from framepack_core.jobs.queue import JobQueue, JobState, QueueBusyError, QueueError, QueueLimitError
from framepack_core.jobs.queue_database import ClosingConnection, connect
from framepack_core.jobs.runner import QueueRunner
from framepack_core.jobs.spec import JobSpec, file_sha256
from framepack_core.media.video_io import probe_video
from framepack_core.models.devices import resolve_device_config
from framepack_core.models.loading import ModelSource
from framepack_core.models.store import ModelStore
from framepack_core.pipeline.engine import FramePackEngine
from framepack_core.request import GenerationRequest

REPO_ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def image(gradient_image: Path) -> Path:
    return gradient_image


def _spec(image: Path, **settings) -> JobSpec:
    fast = dict(seconds=0.8, latent_window_size=3, steps=3, resolution=64, cache="none")
    request = GenerationRequest(image=image, **{**fast, **settings})
    return JobSpec.from_request(request, file_sha256(image))


def _jobs(capsys, output_dir: Path, *args) -> tuple[int, str, str]:
    code = cli.main(["jobs", "--output-dir", str(output_dir), *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def _sql(queue: JobQueue, statement: str, arguments: tuple = ()) -> None:
    with ClosingConnection(sqlite3.connect(queue.database, isolation_level=None)) as connection:
        connection.execute(statement, arguments)


# Per-user limit and pagination ---------------------------------------------------------------------------------

def test_a_user_at_the_pending_limit_is_refused_while_others_still_submit(image, tmp_path):
    queue = JobQueue(tmp_path / "q")
    first, _ = (queue.submit(_spec(image, seed=n), image, owner="alice", max_pending=2) for n in (1, 2))
    with pytest.raises(QueueLimitError, match="You already have 2 jobs waiting") as refused:
        queue.submit(_spec(image, seed=3), image, owner="alice", max_pending=2)
    assert refused.value.hint and isinstance(refused.value, QueueError)
    assert queue.submit(_spec(image, seed=4), image, owner="bob", max_pending=2).owner == "bob"
    queue.cancel(first.id)  # an ended job no longer counts
    assert queue.submit(_spec(image, seed=5), image, owner="alice", max_pending=2).state == JobState.QUEUED
    assert queue.count(owner="alice", states=(JobState.QUEUED,)) == 2


def test_concurrent_submits_never_pass_the_pending_limit(image, tmp_path):
    JobQueue(tmp_path / "q")
    accepted, refused, lock = [], [], threading.Lock()

    def submit(seed: int) -> None:
        mine = JobQueue(tmp_path / "q")  # its own connections, as another process would have
        try:
            job = mine.submit(_spec(image, seed=seed), image, owner="alice", max_pending=3)
            with lock:
                accepted.append(job.id)
        except QueueLimitError:
            with lock:
                refused.append(seed)

    threads = [threading.Thread(target=submit, args=(n,)) for n in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(accepted) == 3 and len(refused) == 7
    assert JobQueue(tmp_path / "q").count(owner="alice") == 3


def test_a_listing_pages_through_the_jobs_in_order_and_counts_them(image, tmp_path):
    queue = JobQueue(tmp_path / "q")
    ids = [queue.submit(_spec(image, seed=n), image, owner="alice" if n % 2 else "bob").id for n in range(5)]
    assert [j.id for j in queue.list(limit=2)] == ids[:2]
    assert [j.id for j in queue.list(limit=2, offset=2)] == ids[2:4]
    assert [j.id for j in queue.list(limit=2, offset=4)] == ids[4:]
    assert queue.list(limit=2, offset=6) == []
    assert queue.count() == 5 and queue.count(owner="alice") == 2
    assert [j.id for j in queue.list(owner="bob", offset=1)] == [ids[2], ids[4]]


# Damaged rows and files ----------------------------------------------------------------------------------------

def test_damaged_rows_are_left_out_of_listings_reported_and_can_be_deleted(image, tmp_path, capsys):
    queue = JobQueue.for_output_dir(tmp_path)
    good, bad_json, bad_bytes, bad_state, surrogate = (
        queue.submit(_spec(image, seed=n), image, owner="alice").id for n in range(5))
    _sql(queue, "UPDATE jobs SET spec = '{not json' WHERE id = ?", (bad_json,))
    _sql(queue, "UPDATE jobs SET spec = CAST(X'7B22ff80fe227D' AS TEXT) WHERE id = ?", (bad_bytes,))
    _sql(queue, "UPDATE jobs SET state = 'exploded' WHERE id = ?", (bad_state,))
    lone = _spec(image).to_dict()
    lone["settings"]["prompt"] = "\ud800"  # json.dumps escapes it; JSON allows it; UTF-8 cannot encode it
    _sql(queue, "UPDATE jobs SET spec = ? WHERE id = ?", (json.dumps(lone), surrogate))

    assert [j.id for j in queue.list()] == [good] and queue.count() == 1
    assert [j.id for j in queue.list(owner="alice")] == [good]
    reasons = {d.id: d.reason for d in queue.damaged()}
    assert set(reasons) == {bad_json, bad_bytes, bad_state, surrogate}
    assert "not valid JSON" in reasons[bad_json] and "not UTF-8" in reasons[bad_bytes]
    assert "'exploded' is unknown" in reasons[bad_state]
    assert {d.owner for d in queue.damaged(owner="alice")} == {"alice"} and queue.damaged(owner="bob") == []
    with pytest.raises(QueueError, match=f"Job {bad_json} is damaged") as error:
        queue.get(bad_json)
    assert "Delete it" in error.value.hint

    code, out, err = _jobs(capsys, tmp_path, "list")
    assert code == cli.EXIT_OK and good in out and f"job {bad_json} is damaged" in err, err
    code, out, err = _jobs(capsys, tmp_path, "list", "--json")
    states = {json.loads(line)["id"]: json.loads(line)["state"] for line in out.splitlines()}
    assert code == cli.EXIT_OK and states[good] == "queued" and states[bad_bytes] == "damaged", err

    assert queue.claim_next().id == good, "a worker passes damaged rows over"
    for job_id in reasons:
        queue.delete(job_id)
    assert queue.damaged() == [] and [j.id for j in queue.list()] == [good]


@pytest.mark.parametrize("damage", ["clobbered header", "clobbered page"])
def test_a_damaged_database_file_is_moved_aside_and_a_fresh_queue_starts(image, tmp_path, capsys, caplog, damage):
    queue = JobQueue.for_output_dir(tmp_path)
    for seed in range(40):  # a few pages of rows, so that one of them can be clobbered
        queue.submit(_spec(image, seed=seed, prompt="x" * 200), image)
    database = queue.database
    assert not database.with_name(database.name + "-wal").exists(), "the last connection checkpointed the log"
    with open(database, "r+b") as file:
        file.seek(0 if damage == "clobbered header" else 4096)
        file.write(os.urandom(100) if damage == "clobbered header" else b"\xff" * 4096)
    damaged_bytes = database.read_bytes()

    reopened = JobQueue.for_output_dir(tmp_path)
    moved = [p for p in database.parent.iterdir() if p.name.startswith("queue.sqlite3.damaged-")]
    assert len(moved) == 1 and moved[0].read_bytes() == damaged_bytes, "moved aside whole, nothing deleted"
    assert reopened.recovery_note and moved[0].name in reopened.recovery_note and ".recover" in reopened.recovery_note
    assert any(moved[0].name in record.getMessage() for record in caplog.records if record.levelname == "WARNING")
    assert reopened.list() == [] and reopened.submit(_spec(image), image).state == JobState.QUEUED

    code, out, err = _jobs(capsys, tmp_path, "list")
    assert code == cli.EXIT_OK and "Traceback" not in err


def test_a_database_from_before_the_partial_column_gains_it_when_opened(image, tmp_path):
    folder = tmp_path / "q"
    folder.mkdir()
    spec = _spec(image)
    with ClosingConnection(sqlite3.connect(folder / "queue.sqlite3", isolation_level=None)) as connection:
        connection.executescript(
            "CREATE TABLE jobs (id TEXT PRIMARY KEY, state TEXT NOT NULL, position REAL NOT NULL, spec TEXT NOT NULL,"
            " image TEXT NOT NULL, output TEXT, owner TEXT, created_at REAL NOT NULL, started_at REAL, ended_at REAL,"
            " attempts INTEGER NOT NULL DEFAULT 0, cancel_requested INTEGER NOT NULL DEFAULT 0,"
            " sections_done INTEGER NOT NULL DEFAULT 0, total_sections INTEGER, error TEXT, hint TEXT)")
        connection.execute("INSERT INTO jobs (id, state, position, spec, image, created_at) VALUES "
                           "('old', 'running', 1, ?, ?, 0)", (spec.to_json(None), str(image)))
    queue = JobQueue(folder)
    assert queue.get("old").partial is None
    ended = queue.end("old", JobState.CANCELLED, partial=tmp_path / "v.partial.mp4")
    assert ended.partial == tmp_path / "v.partial.mp4" and ended.summary()["partial"] == "v.partial.mp4"


def test_jobs_stored_as_pending_by_an_older_version_read_as_queued_and_run_in_their_order(image, tmp_path):
    older = JobQueue(tmp_path / "q")
    first, second = (older.submit(_spec(image, seed=seed), image).id for seed in (1, 2))
    older.move(second, 1)
    _sql(older, "UPDATE jobs SET state = 'pending' WHERE state = 'queued'")  # what versions before 'queued' stored

    queue = JobQueue(tmp_path / "q")
    assert [(job.id, job.state) for job in queue.list()] == [(second, JobState.QUEUED), (first, JobState.QUEUED)]
    assert queue.damaged() == [] and queue.pending_position(first) == 2
    with ClosingConnection(connect(queue.database)) as connection:
        assert {row[0] for row in connection.execute("SELECT state FROM jobs")} == {"queued"}, "migrated in place"
    assert queue.claim_next().id == second


# A full disk ---------------------------------------------------------------------------------------------------

class _FullDisk:
    """A connection whose writes fail as SQLite's do on a full disk, while ``full`` is set."""

    full = True

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection = connection

    def execute(self, statement: str, *arguments):  # noqa: ANN002, ANN201
        self._refuse_writes(statement)
        return self._connection.execute(statement, *arguments)

    def executemany(self, statement: str, *arguments):  # noqa: ANN002, ANN201
        self._refuse_writes(statement)
        return self._connection.executemany(statement, *arguments)

    @staticmethod
    def _refuse_writes(statement: str) -> None:
        if _FullDisk.full and statement.lstrip().upper().startswith(("INSERT", "UPDATE", "DELETE")):
            raise sqlite3.OperationalError("database or disk is full")

    def __getattr__(self, name: str):  # noqa: ANN204
        return getattr(self._connection, name)


def test_a_full_disk_while_the_queue_writes_is_a_disk_full_error_and_changes_nothing(image, tmp_path, monkeypatch):
    queue = JobQueue(tmp_path / "q")
    pending, running = queue.submit(_spec(image, seed=1), image).id, queue.submit(_spec(image, seed=2), image).id
    queue.move(running, 1)
    assert queue.claim_next().id == running
    before = {job.id: job for job in queue.list()}
    monkeypatch.setattr(_FullDisk, "full", True)
    monkeypatch.setattr(queue, "_connect", lambda: ClosingConnection(_FullDisk(connect(queue.database))))

    for attempt in (lambda: queue.submit(_spec(image, seed=3), image), lambda: queue.cancel(pending),
                    lambda: queue.claim_next(), lambda: queue.record_progress(running, 1, 2),
                    lambda: queue.end(running, JobState.FINISHED, output=tmp_path / "v.mp4"),
                    lambda: queue.move(pending, 1), lambda: queue.delete(pending)):
        with pytest.raises(DiskFullError, match="The disk is full: could not write the job queue") as error:
            attempt()
        assert "Free some disk space" in error.value.hint
    assert {job.id: job for job in queue.list()} == before, "every failed write left the rows as they were"

    monkeypatch.setattr(_FullDisk, "full", False)  # the disk has room again: the same queue carries on
    assert queue.end(running, JobState.FINISHED, output=tmp_path / "v.mp4").state == JobState.FINISHED
    assert queue.claim_next().id == pending


def test_sqlites_own_database_full_error_becomes_a_disk_full_error(image, tmp_path, monkeypatch):
    queue = JobQueue(tmp_path / "q")
    with queue._connect() as connection:
        pages = connection.execute("PRAGMA page_count").fetchone()[0]

    def capped() -> ClosingConnection:  # the file may not grow: SQLite itself reports SQLITE_FULL
        connection = connect(queue.database)
        connection.execute(f"PRAGMA max_page_count = {pages}")
        return ClosingConnection(connection)

    monkeypatch.setattr(queue, "_connect", capped)
    stored = []
    with pytest.raises(DiskFullError):
        for seed in range(500):
            stored.append(queue.submit(_spec(image, seed=seed, prompt="y" * 500), image).id)
    assert [j.id for j in queue.list()] == stored


def test_a_full_disk_while_storing_the_image_leaves_no_half_written_copy(image, tmp_path, monkeypatch):
    queue = JobQueue(tmp_path / "q")

    def copy_until_full(source, target):  # noqa: ANN001, ANN202
        Path(target).write_bytes(Path(source).read_bytes()[:100])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("framepack_core.jobs.queue.shutil.copyfile", copy_until_full)
    with pytest.raises(DiskFullError, match="could not write the input image") as error:
        queue.submit(_spec(image), image)
    assert "Free some disk space" in error.value.hint
    assert list((tmp_path / "q" / "images").iterdir()) == [] and queue.count() == 0


# One queue owner -----------------------------------------------------------------------------------------------

HOLD_THE_QUEUE = """
import sys, time
from framepack_core.jobs.queue import JobQueue
ownership = JobQueue.for_output_dir(sys.argv[1]).take_ownership()
print("owned" if ownership else "refused", flush=True)
time.sleep(120)
"""


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1"}


def test_a_second_process_is_refused_the_queue_and_told_which_process_owns_it(tmp_path, capsys):
    queue = JobQueue.for_output_dir(tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_THE_QUEUE, str(tmp_path), "--auth", "alice:s3cret"],
                              cwd=REPO_ROOT, env=_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "owned"
        assert queue.take_ownership() is None
        description = queue.owner_description()
        assert description is not None and description.startswith(f"process {holder.pid} on host ")
        assert "python" in description and " since " in description
        assert "s3cret" not in description, "options (logins) are never shown to other users"

        refused = subprocess.run([sys.executable, "-m", "framepack_core", "jobs", "--output-dir", str(tmp_path),
                                  "run"], cwd=REPO_ROOT, env=_env(), capture_output=True, text=True, timeout=120)
        assert refused.returncode == 1, refused.stderr
        assert f"Another process is already running this queue's jobs: process {holder.pid}" in refused.stderr
        assert "How to fix:" in refused.stderr and "Traceback" not in refused.stderr
        with pytest.raises(QueueBusyError, match=f"process {holder.pid}"):
            QueueRunner(queue, engine=None, output_dir=tmp_path).run_pending()  # type: ignore[arg-type]
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)

    ownership = queue.take_ownership()  # the OS let go of a killed owner's lock
    assert ownership is not None and queue.owner_description().startswith(f"process {os.getpid()} ")
    also = queue.take_ownership()
    assert also is not None, "inside one process the ownership is shared"
    ownership.release()
    assert queue.owner_description() is not None, "held until the last holder releases it"
    also.release()
    assert queue.owner_description() is None


# Retry keeps what was made -------------------------------------------------------------------------------------

def test_a_retried_job_keeps_its_earlier_partial_and_finishes_under_its_normal_name(tiny_models_dir, image,
                                                                                    tmp_path, capsys):
    outputs = tmp_path / "outputs"
    queue = JobQueue.for_output_dir(outputs)
    job_id = queue.submit(_spec(image, seconds=1.6), image).id  # 4 sections
    engine = FramePackEngine(ModelStore(ModelSource(models_dir=tiny_models_dir), resolve_device_config("cpu")))
    runner = QueueRunner(queue, engine, outputs)

    def stop_after_the_first_section(job, event) -> None:  # noqa: ANN001
        if isinstance(event, SectionFinished) and event.section == 1:
            queue.cancel(job.id)  # as another process would ask

    stopped = runner.run_pending(stop_after_the_first_section)[0]
    final = stopped.output
    assert stopped.state == JobState.CANCELLED and final.suffixes == [".mp4"] and not final.exists()
    assert stopped.partial == final.with_name(final.stem + ".partial.mp4") and stopped.partial.is_file()
    first_attempt = stopped.partial.read_bytes()
    assert probe_video(stopped.partial).frame_count < 49

    code, out, err = _jobs(capsys, outputs, "retry", job_id)
    kept = final.with_name(final.stem + ".attempt1.partial.mp4")
    assert code == cli.EXIT_OK and f"kept as {kept}" in out, err
    assert kept.read_bytes() == first_attempt and kept.with_suffix(".json").is_file()
    assert not stopped.partial.exists() and not stopped.partial.with_suffix(".json").exists()

    finished = runner.run_pending()[0]
    assert finished.state == JobState.FINISHED and finished.output == final and finished.attempts == 2
    assert probe_video(final).frame_count == 49 and final.with_suffix(".json").is_file()
    assert kept.read_bytes() == first_attempt, "the new attempt did not overwrite the earlier partial"
    assert not final.with_name(final.stem + ".partial.mp4").exists()
    code, out, _ = _jobs(capsys, outputs, "list", "--json")
    listed = json.loads(out.splitlines()[0])
    assert listed["output"] == final.name and listed["partial"] == kept.name


def test_retrying_a_row_from_the_old_version_moves_its_partial_out_of_the_output_name(image, tmp_path):
    queue = JobQueue(tmp_path / "q")
    job = queue.submit(_spec(image), image)
    queue.claim_next()
    partial = tmp_path / "clip.partial.mp4"
    partial.write_bytes(b"attempt one")
    partial.with_suffix(".json").write_text("{}")
    (tmp_path / "clip.attempt1.partial.mp4").write_bytes(b"already there")
    queue.end(job.id, JobState.CANCELLED, output=partial)  # what the old version stored on cancel

    retried = queue.retry(job.id)
    assert retried.output == tmp_path / "clip.mp4"
    assert retried.partial == tmp_path / "clip.attempt1-2.partial.mp4"
    assert retried.partial.read_bytes() == b"attempt one"
    assert (tmp_path / "clip.attempt1-2.partial.json").is_file() and not partial.exists()
    assert (tmp_path / "clip.attempt1.partial.mp4").read_bytes() == b"already there", "never overwritten"
