"""Atomic writes leave files with the permissions a plain open would give them; several
files are written all or none."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from sparseavg.utils import files
from sparseavg.utils.files import all_or_nothing, atomic_write_text


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_atomic_writes_get_the_umask_permissions_not_the_temporary_files(
    tmp_path: Path, umask: int
) -> None:
    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        with open(tmp_path / "b.txt", "w") as f:
            f.write("x")
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "a.txt").stat().st_mode)
    assert mode == stat.S_IMODE((tmp_path / "b.txt").stat().st_mode) == 0o666 & ~umask


def test_all_or_nothing_writes_every_file_or_puts_each_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b, c = tmp_path / "a.txt", tmp_path / "b.txt", tmp_path / "c.txt"
    a.write_text("old a")
    with all_or_nothing([a, b]) as (ta, tb):
        ta.write_text("new a")
        tb.write_text("new b")
    assert (a.read_text(), b.read_text()) == ("new a", "new b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt"]

    real = os.replace

    def fail_on_c(src, dst):
        if str(dst) == str(c):
            raise PermissionError(13, "Permission denied", str(dst))
        real(src, dst)

    monkeypatch.setattr(files.os, "replace", fail_on_c)  # the third move fails
    with pytest.raises(PermissionError), all_or_nothing([a, b, c]) as temps:
        for t in temps:
            t.write_text("newer")
    assert (a.read_text(), b.read_text()) == ("new a", "new b")  # both put back
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt"]  # no temporary
    monkeypatch.undo()
    with pytest.raises(KeyboardInterrupt), all_or_nothing([c]) as (tc,):
        tc.write_text("half")
        raise KeyboardInterrupt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt"]


def test_a_raw_pickle_is_refused_in_one_line_without_torchs_warning(tmp_path):
    """torch.load(weights_only=True) warned in two lines about the pickle protocol before our
    one-line refusal of a raw pickle (e.g. as model.pretrained)."""
    import pickle
    import warnings

    path = tmp_path / "raw.pkl"
    path.write_bytes(pickle.dumps({"a": {1, 2}}, protocol=4))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(files.CorruptFileError, match=r"raw\.pkl: refused by torch\.load"):
            files.safe_torch_load(path)
    assert [str(w.message) for w in caught] == []
