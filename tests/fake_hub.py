"""A local stand-in for the Hugging Face hub, serving the repositories of a tiny model set.

It answers ``model_info(files_metadata=True)`` with the files and their sizes, and ``hf_hub_download`` by sending a
file in chunks through the caller's ``tqdm_class``, keeping a half-sent file in an ``.incomplete`` file and going on
from it next time, as huggingface_hub does in a ``local_dir``.
"""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import pytest

CHUNK = 64 * 1024


class FakeHub:
    """Serves the repositories of a tiny set; ``interrupt_at`` bytes into the transfer, the connection drops."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.interrupt_at: int | None = None
        self.chunk_bytes = CHUNK
        self.chunk_delay_s = 0.0  # a slow line, to see progress reported while a file arrives
        self.served = 0  # bytes sent since the last interruption
        self.fetched: list[str] = []  # files fetched to the end, "repo/path"

    def model_info(self, repo_id: str, *, files_metadata: bool = False, timeout: float | None = None) -> SimpleNamespace:
        assert files_metadata, "the sizes come from the files' metadata"
        repo = self.root / repo_id
        siblings = [SimpleNamespace(rfilename=path.relative_to(repo).as_posix(), size=path.stat().st_size)
                    for path in sorted(repo.rglob("*")) if path.is_file()]
        return SimpleNamespace(sha="1" * 40, siblings=siblings)

    def hf_hub_download(self, repo_id: str, filename: str, *, local_dir: Path, revision: str | None = None,
                        force_download: bool = False, tqdm_class: type | None = None, **_: object) -> str:
        data = (self.root / repo_id / filename).read_bytes()
        partial = Path(local_dir) / ".cache" / "huggingface" / "download" / f"{filename}.incomplete"
        partial.parent.mkdir(parents=True, exist_ok=True)
        if force_download:
            partial.unlink(missing_ok=True)
        done = partial.stat().st_size if partial.exists() else 0
        bar = tqdm_class(total=len(data), initial=done, unit="B")
        with partial.open("ab") as handle:
            while done < len(data):
                chunk = data[done:done + self.chunk_bytes]
                if self.interrupt_at is not None and self.served + len(chunk) > self.interrupt_at:
                    cut = self.interrupt_at - self.served
                    handle.write(chunk[:cut])
                    self.interrupt_at, self.served = None, 0
                    raise ConnectionError("Connection reset by peer")
                time.sleep(self.chunk_delay_s)
                handle.write(chunk)
                done += len(chunk)
                self.served += len(chunk)
                bar.update(len(chunk))
        target = Path(local_dir) / filename
        target.parent.mkdir(parents=True, exist_ok=True)
        partial.replace(target)
        self.fetched.append(f"{repo_id}/{filename}")
        return str(target)

    @classmethod
    def installed(cls, root: Path, monkeypatch: pytest.MonkeyPatch) -> FakeHub:
        """A fake serving ``root``, standing in for huggingface_hub's ``HfApi`` and ``hf_hub_download``."""
        fake = cls(root)
        monkeypatch.setattr("huggingface_hub.HfApi", lambda: fake)
        monkeypatch.setattr("huggingface_hub.hf_hub_download", fake.hf_hub_download)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        return fake
