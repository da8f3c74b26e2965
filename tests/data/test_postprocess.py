import numpy as np
import pytest
import torch

from semi3d.data.postprocess import (check_classes, keep_largest_component, keep_largest_foreground,
                                     largest_component_per_class, largest_component_share,
                                     largest_component_shares)
from semi3d.errors import InputError


def _two_blobs():
    lab = np.zeros((10, 10, 10), np.uint8)
    lab[0:4, 0:4, 0:4] = 1  # 64 voxels
    lab[7:9, 7:9, 7:9] = 1  # 8 voxels: removed
    lab[4, 4, 4] = 1        # touches the big blob only diagonally (26-connected): kept
    lab[0:2, 7:9, 0:2] = 2  # the only class-2 component stays
    return lab


def test_keeps_the_largest_26_connected_component_per_class():
    lab = _two_blobs()
    before = lab.copy()
    out = keep_largest_component(lab, 3)
    assert np.array_equal(lab, before)  # the input is not modified
    assert (out == 1).sum() == 65 and (out == 2).sum() == 8 and out[8, 8, 8] == 0 and out[4, 4, 4] == 1
    assert out.dtype == lab.dtype
    assert np.array_equal(keep_largest_component(np.zeros_like(lab), 3), np.zeros_like(lab))


def test_only_the_chosen_classes_lose_components():
    lab = _two_blobs()
    lab[0:2, 0:2, 8:10] = 2  # a second class-2 component (8 voxels): a tie, the first in C order stays
    out = keep_largest_component(lab, 3, classes=[2])
    assert np.array_equal(out == 1, lab == 1)  # class 1 keeps its stray blob
    assert (out == 2).sum() == 8 and out[0, 0, 8] == 2 and out[0, 7, 0] == 0
    assert np.array_equal(keep_largest_component(lab, 3, classes=[1, 2]), keep_largest_component(lab, 3))


def test_keeps_the_largest_component_of_all_foreground_together():
    """Classes 1 and 2 touching form one region: both keep all of it (class 2 has two components
    there); the stray class-1 blob and a lone class-2 voxel go."""
    lab = _two_blobs()
    lab[4:6, 0:4, 0:4] = 2    # touches the big class-1 blob
    lab[0:2, 0:2, 4:5] = 2    # a second class-2 component (4 voxels), also touching it
    lab[9, 0, 9] = 2          # alone
    before = lab.copy()
    out = keep_largest_foreground(lab)
    assert np.array_equal(lab, before)
    assert (out == 1).sum() == 65 and out[8, 8, 8] == 0 and out[4, 4, 4] == 1
    assert (out == 2).sum() == 32 + 4 and out[9, 0, 9] == 0 and out[0, 7, 0] == 0  # its own separate class-2 blob too
    assert (keep_largest_component(lab, 3, classes=[2]) == 2).sum() == 32  # per class: one of them only
    assert np.array_equal(keep_largest_foreground(np.zeros_like(lab)), np.zeros_like(lab))


def test_a_class_outside_the_model_is_refused():
    check_classes(None, 3, "x")
    check_classes([1, 2], 3, "x")
    with pytest.raises(InputError, match="inference.largest_component_classes: class 3 is not a foreground class"):
        check_classes([1, 3], 3, "inference.largest_component_classes")


def test_batched_version_matches_per_sample():
    lab = torch.from_numpy(np.stack([_two_blobs(), _two_blobs()[::-1].copy()]).astype(np.int64))
    out = largest_component_per_class(lab, 3)
    for a, b in zip(lab.numpy(), out.numpy()):
        assert np.array_equal(keep_largest_component(a, 3), b)


def test_largest_component_shares_known_answers():
    lab = _two_blobs()
    lab[9, 0, 9] = 4  # class 4: one voxel; class 3 absent
    # class 1: 65 of 73 voxels in the largest component (the diagonal voxel joins it); class 2: one component
    assert largest_component_shares(lab, 5) == [65 / 73, 1.0, None, 1.0]
    assert largest_component_shares(np.zeros_like(lab), 3) == [None, None]


def test_largest_component_share_of_a_mask_known_answers():
    """All foreground of the two-blob map: 65 class-1 voxels, the 8-voxel blob and the separate class-2
    block (8): the largest component holds 65 of 81; a mask of one component 1.0; empty None."""
    lab = _two_blobs()
    assert largest_component_share(lab > 0) == 65 / 81
    assert largest_component_share(lab == 2) == 1.0
    assert largest_component_share(np.zeros_like(lab, bool)) is None
    assert largest_component_share(keep_largest_foreground(lab) > 0) == 1.0
