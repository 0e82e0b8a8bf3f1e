"""The one atomic write: the old file or the new one, never half; normal permissions unless private."""

from __future__ import annotations

import os
import stat

import pytest

from framepack_core.files import atomic_path, write_bytes_atomically, write_text_atomically


def test_a_write_replaces_the_file_whole_with_the_users_normal_permissions(tmp_path):
    target = tmp_path / "video.json"
    target.write_text("old")
    write_text_atomically(target, "new")
    assert target.read_text() == "new" and list(tmp_path.iterdir()) == [target]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask
    private = write_bytes_atomically(tmp_path / "queue-image.png", b"x", private=True)
    assert stat.S_IMODE(private.stat().st_mode) == 0o600


def test_a_failed_write_leaves_the_old_file_and_no_temporary_file(tmp_path):
    target = tmp_path / "latents.safetensors"
    target.write_bytes(b"previous")
    with pytest.raises(OSError, match="No space left"):
        with atomic_path(target) as temporary:
            temporary.write_bytes(b"half")
            raise OSError(28, "No space left on device")
    assert target.read_bytes() == b"previous" and list(tmp_path.iterdir()) == [target]
