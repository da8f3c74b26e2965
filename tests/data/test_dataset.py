"""prepare_data: the reader, the splits and the classes of a run's data."""
import numpy as np
import pytest

from semi3d.config import DataConfig
from semi3d.data.dataset import prepare_data
from semi3d.data.volumes import write_volume
from semi3d.errors import InputError


def test_folder_labels_are_checked_against_data_num_classes(tmp_path):
    """The folder format declares no classes: its labels are checked against data.num_classes
    (one voxel of class 3 with 2 classes used to train silently)."""
    img, lab = tmp_path / "img", tmp_path / "lab"
    for i in range(3):
        write_volume(img / f"c{i}.nii.gz", np.random.default_rng(i).random((8, 8, 8)).astype(np.float32))
        label = np.zeros((8, 8, 8), np.uint8)
        label[2:5, 2:5, 2:5] = 1
        write_volume(lab / f"c{i}.nii.gz", label)
    bad = np.zeros((8, 8, 8), np.uint8)
    bad[0, 0, 0] = 3
    write_volume(lab / "c1.nii.gz", bad)
    cfg = DataConfig(format="folder", root=str(img), options={"labels": str(lab)}, num_classes=2,
                     splits={"labelled": {"first": 3}}, patch_size=[8, 8, 8])
    with pytest.raises(InputError, match=r"c1\.nii\.gz: label values 3 are not in 0\.\.1"):
        prepare_data(cfg).cases("labelled")
