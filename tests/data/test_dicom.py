"""DICOM series folders (data/dicom.py): the series a folder holds and their files, each folder's
headers scanned once while it is unchanged."""
import os

import numpy as np
import pytest
import SimpleITK as sitk
from dicom_series import write_series

from semi3d.data.dicom import dicom_modality, dicom_series, series_files
from semi3d.data.volumes import read_volume
from semi3d.errors import InputError


@pytest.fixture
def scans(monkeypatch):
    """Count GDCM's header scans (series ids, and file names of a series)."""
    calls = {"ids": 0, "files": 0}
    ids, files = sitk.ImageSeriesReader.GetGDCMSeriesIDs, sitk.ImageSeriesReader.GetGDCMSeriesFileNames

    def count_ids(*a, **k):
        calls["ids"] += 1
        return ids(*a, **k)

    def count_files(*a, **k):
        calls["files"] += 1
        return files(*a, **k)

    monkeypatch.setattr(sitk.ImageSeriesReader, "GetGDCMSeriesIDs", staticmethod(count_ids))
    monkeypatch.setattr(sitk.ImageSeriesReader, "GetGDCMSeriesFileNames", staticmethod(count_files))
    return calls


def test_a_folder_is_scanned_once_until_it_changes(tmp_path, scans):
    folder = tmp_path / "patient1"
    image = np.arange(8 * 6 * 4, dtype=np.int16).reshape(8, 6, 4)
    write_series(folder, image)
    assert len(dicom_series(folder)) == 1 and dicom_modality(folder) == "CT"
    files = series_files(folder)
    assert [f.rsplit("/", 1)[1] for f in files] == [f"s{z:03d}.dcm" for z in range(4)]
    for _ in range(2):
        assert np.array_equal(read_volume(folder).array, image)  # listed, checked, read: no new scan
    assert scans == {"ids": 1, "files": 1}
    (folder / "s003.dcm").unlink()  # the folder changed: scanned again
    assert len(series_files(folder)) == 3 and scans == {"ids": 2, "files": 2}


def test_a_folder_of_two_series_or_none(tmp_path):
    folder = tmp_path / "mixed"
    write_series(folder, np.zeros((4, 4, 2), np.int16))
    write_series(tmp_path / "b", np.ones((4, 4, 2), np.int16), uid="1.2.826.0.1.3680043.2.1125.8")
    for f in (tmp_path / "b").iterdir():
        f.rename(folder / f"b_{f.name}")
    with pytest.raises(InputError, match=r"mixed: 2 DICOM series in this folder"):
        series_files(folder)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"empty: no DICOM series in this folder"):
        series_files(tmp_path / "empty")


def test_a_series_rewritten_in_place_is_scanned_again(tmp_path, scans):
    """The same file names written over (the folder's own mtime and entry count unchanged): the
    cached answers are those of the new files, not the old ones."""
    folder = tmp_path / "patient1"
    write_series(folder, np.zeros((4, 4, 3), np.int16))
    before = {f.name: f.stat().st_mtime_ns for f in folder.iterdir()}
    dir_mtime = folder.stat().st_mtime_ns
    assert dicom_series(folder) == ("1.2.826.0.1.3680043.2.1125.7",)
    image = np.arange(4 * 4 * 3, dtype=np.int16).reshape(4, 4, 3)
    write_series(folder, image, uid="1.2.826.0.1.3680043.2.1125.8")
    for f in folder.iterdir():  # later in time, as a re-export minutes later would be
        t = max(f.stat().st_mtime_ns, before[f.name] + 10**9)
        os.utime(f, ns=(t, t))
    os.utime(folder, ns=(dir_mtime, dir_mtime))
    assert dicom_series(folder) == ("1.2.826.0.1.3680043.2.1125.8",) and scans["ids"] == 2
    assert np.array_equal(read_volume(folder).array, image)
