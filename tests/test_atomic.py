"""The one atomic-write helper: whole files or none, with the user's umask (not tempfile's 0600)."""
import os
import stat

import numpy as np
import pytest
import torch

from semi3d.atomic import atomic_file, write_text
from semi3d.data.volumes import write_volume
from semi3d.engine.checkpoint import save_atomic


@pytest.fixture
def umask():
    old = os.umask(0o022)
    yield lambda m: os.umask(m)
    os.umask(old)


def _mode(p):
    return stat.S_IMODE(p.stat().st_mode)


def test_files_get_the_users_umask(tmp_path, umask):
    ck, txt, vol = tmp_path / "c" / "last.pt", tmp_path / "m.json", tmp_path / "p" / "a.nii.gz"
    save_atomic({"x": torch.ones(2)}, ck)
    write_text(txt, "{}")
    write_volume(vol, np.zeros((4, 4, 4), np.uint8))
    assert [_mode(p) for p in (ck, txt, vol)] == [0o644] * 3  # checkpoints used to be 0600
    umask(0o077)
    write_text(txt, "{}")
    assert _mode(txt) == 0o600


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = write_text(tmp_path / "a.txt", "old")
    with pytest.raises(RuntimeError):
        with atomic_file(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk full")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.txt"]
