"""Checkpoint archives: the same arrays give the same bytes whenever they are written."""

import time
import zipfile

import numpy as np
import pytest

from class2d.io.npz import ZIP_DATE, write_npz


def _arrays() -> dict:
    rng = np.random.default_rng(3)
    return {"references": rng.normal(size=(3, 8, 8)).astype(np.float32),
            "stats_num": rng.normal(size=(3, 2, 4, 4)) + 1j * rng.normal(size=(3, 2, 4, 4)),
            "classes": np.arange(5, dtype=np.int32), "iteration": 7, "apix": 1.5,
            "history": '[{"iteration": 1, "seconds": 0.25}]'}


def test_same_arrays_same_bytes_at_another_time(tmp_path, monkeypatch):
    arrays = _arrays()
    write_npz(tmp_path / "a.npz", arrays)
    later = time.time() + 400 * 86400.0
    monkeypatch.setattr(time, "time", lambda: later)
    write_npz(tmp_path / "b.npz", arrays)
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    with zipfile.ZipFile(tmp_path / "b.npz") as archive:
        assert [m.filename for m in archive.infolist()] == [f"{k}.npy" for k in arrays]
        assert {m.date_time for m in archive.infolist()} == {ZIP_DATE}
    # written by zipfile's own time-stamping call instead, the bytes would differ
    with zipfile.ZipFile(tmp_path / "c.npz", "w") as archive:
        archive.writestr("x.npy", b"")
    assert zipfile.ZipFile(tmp_path / "c.npz").infolist()[0].date_time != ZIP_DATE


def test_np_load_reads_back_every_array(tmp_path):
    arrays = _arrays()
    write_npz(tmp_path / "s.npz", arrays)
    with np.load(tmp_path / "s.npz") as data:
        assert data.files == list(arrays)
        for name, value in arrays.items():
            np.testing.assert_array_equal(data[name], np.asarray(value))
            assert data[name].dtype == np.asarray(value).dtype
    assert [p.name for p in tmp_path.iterdir()] == ["s.npz"]      # no temporary file left


def test_object_arrays_are_refused_and_leave_nothing(tmp_path):
    with pytest.raises(ValueError, match="allow_pickle"):
        write_npz(tmp_path / "o.npz", {"bad": np.array([{"a": 1}], dtype=object)})
    assert list(tmp_path.iterdir()) == []
