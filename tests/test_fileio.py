"""The atomic writer: the old file or the new one, never half of one, with the usual permissions."""

import os

import numpy as np
import pytest

from piti.data.imageio import save_png
from piti.fileio import atomic_write


def test_written_files_get_the_umask_permissions_not_mkstemps_0600(tmp_path):
    umask = os.umask(0o022)
    try:
        save_png(tmp_path / "a.png", np.zeros((4, 4), np.uint8))
        atomic_write(tmp_path / "b.txt", lambda tmp: open(tmp, "w").write("x"))
    finally:
        os.umask(umask)
    for name in ("a.png", "b.txt"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "f.txt"
    path.write_text("old")

    def broken(tmp):
        open(tmp, "w").write("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_write(path, broken)
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["f.txt"]
