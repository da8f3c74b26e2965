"""The DICOM SEG writer's refusals (its output is checked end to end in tests/test_cli.py)."""
import importlib.util

import numpy as np
import pytest

from semi3d.data.dicom_seg import require_highdicom, write_dicom_seg
from semi3d.errors import InputError


def test_a_label_off_the_series_grid_is_named_and_nothing_written(tmp_path):
    pytest.importorskip("highdicom")
    from dicom_series import write_series

    write_series(tmp_path / "s", np.zeros((12, 10, 4), np.int16))
    with pytest.raises(InputError, match=r"s: label shape \(10, 12, 4\) is not the series' .* \(12, 10, 4\)"):
        write_dicom_seg(tmp_path / "o" / "x.seg.dcm", np.zeros((10, 12, 4), np.uint8), tmp_path / "s",
                        ["background", "organ"], "semi3d", "0")
    assert not (tmp_path / "o").exists()


def test_without_highdicom_the_option_says_what_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "highdicom" else real(name, *a))
    with pytest.raises(InputError, match="--dicom-seg: needs the highdicom package: pip install highdicom"):
        require_highdicom()
