"""atomic_path: a killed writer's temporary is removed by the next; a failed write names its file."""

from __future__ import annotations

import errno

import pytest

from class2d.io.atomic import atomic_path


def test_the_next_writer_removes_what_a_killed_one_left(tmp_path):
    stale = [tmp_path / ".classes.tmp4242.mrcs", tmp_path / ".classes.tmp17.mrcs"]
    kept = [tmp_path / ".classes.tmp4242.star",       # another output's temporary
            tmp_path / ".classes.tmpx.mrcs",          # not a process id
            tmp_path / ".other.tmp4242.mrcs", tmp_path / "classes.star"]
    for path in stale + kept:
        path.write_bytes(b"half")
    with atomic_path(tmp_path / "classes.mrcs") as tmp:
        with open(tmp, "wb") as handle:
            handle.write(b"whole")
    assert (tmp_path / "classes.mrcs").read_bytes() == b"whole"
    assert [p for p in stale if p.exists()] == []
    assert all(p.exists() for p in kept)


def test_a_full_disk_names_the_file_and_leaves_nothing(tmp_path):
    target = tmp_path / "stack.mrcs"
    with pytest.raises(OSError) as caught, atomic_path(target) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(b"part")
        raise OSError(errno.ENOSPC, "No space left on device")     # as a write() raises it
    assert caught.value.errno == errno.ENOSPC
    assert caught.value.filename == str(target)
    assert list(tmp_path.iterdir()) == []
