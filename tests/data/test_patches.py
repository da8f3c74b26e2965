"""data/patches.py: the padding rule, foreground oversampling and the sampler's reproducibility."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from semi3d.data.case import Case
from semi3d.data.patches import PatchSampler, annotated_slices, pad_image, pad_spec, shared_annotation_offsets


def test_pad_spec_centres_and_is_zero_when_large_enough():
    assert pad_spec((10, 20, 5), (16, 16, 8)) == [1, 2, 0, 0, 3, 3]  # Z (3: 1 + 2), Y (0), X (6: 3 + 3)
    assert pad_spec((16, 16, 8), (16, 16, 8)) == [0] * 6


def test_pad_image_uses_each_channels_minimum_and_crops_back():
    img = torch.stack([torch.full((4, 6, 6), 2.0), torch.arange(144.0).reshape(4, 6, 6) - 7])
    padded, crop = pad_image(img, (8, 6, 6))
    assert padded.shape == (2, 8, 6, 6)
    assert torch.equal(padded[crop], img)
    assert (padded[0, :2] == 2.0).all() and (padded[1, :2] == -7.0).all() and (padded[1, 6:] == -7.0).all()


def _case(label_at=None, shape=(20, 20, 20)):
    label = np.zeros(shape, np.uint8)
    if label_at is not None:
        label[label_at] = 1
    return Case("c", np.random.default_rng(0).normal(size=(1, *shape)).astype(np.float32), label)


def test_foreground_oversampling_centres_crops_on_foreground():
    corner = (slice(0, 2), slice(0, 2), slice(0, 2))  # foreground only in one corner
    always = PatchSampler([_case(corner)], (8, 8, 8), 1.0, torch.Generator().manual_seed(0))
    for _ in range(20):
        _, lab, _ = always.sample(1)
        assert lab.sum() > 0  # every crop holds foreground
    never = PatchSampler([_case(corner)], (8, 8, 8), 0.0, torch.Generator().manual_seed(0))
    hits = sum(int(never.sample(1)[1].sum() > 0) for _ in range(200))
    assert hits < 40  # uniform corners: P(crop covers the corner) = (2/13)^3 ~ 0.4 %


def test_small_cases_are_padded_and_labels_padded_with_background():
    s = PatchSampler([_case((slice(0, 4),) * 3, shape=(6, 10, 10))], (8, 8, 8), 0.5, torch.Generator().manual_seed(0))
    img, lab, ids = s.sample(3)
    assert img.shape == (3, 1, 8, 8, 8) and lab.shape == (3, 8, 8, 8) and ids == ["c"] * 3
    assert s.vols[0].image.shape[1] == 8 and s.vols[0].label[0].sum() == 0  # X padded by 1 each side


@pytest.mark.parametrize("fg", [0.0, 0.5])
def test_a_sparsely_labelled_case_lands_anywhere_in_the_patch(fg):
    """A case with ignored voxels, 6 Z slices in an 8-slice patch, annotated on slice 2 only: its
    crops place it at every offset 0..2 along Z (so the annotated slice falls on patch slices 2, 3
    and 4); a fully labelled case stays centred (offset 1). Before, the sparse case was centred too
    and the network learnt on which patch slices labels exist (LA: over-segmented the others)."""
    from semi3d.losses import IGNORE_INDEX

    shape = (8, 8, 6)
    image = np.broadcast_to(np.arange(6, dtype=np.float32) + 1, (1, *shape)).copy()  # Z index + 1
    label = np.full(shape, IGNORE_INDEX, np.uint8)
    label[:, :, 2] = 0
    label[2:6, 2:6, 2] = 1
    sparse = PatchSampler([Case("s", image, label)], (8, 8, 8), fg, torch.Generator().manual_seed(0))
    full = PatchSampler([Case("f", image, np.zeros(shape, np.uint8))], (8, 8, 8), fg, torch.Generator().manual_seed(0))
    offsets = {"s": set(), "f": set()}
    for sampler in (sparse, full):
        for _ in range(30):
            img, lab, (cid,) = sampler.sample(1)
            z0 = int(torch.nonzero(img[0, 0, 0, 0] == 2.0)[0]) - 1  # where the case's first slice landed (padding: 1, its minimum)
            offsets[cid].add(z0)
            assert (img[0, 0, 0, 0, z0:z0 + 6] == torch.arange(1.0, 7.0)).all()  # the whole case, in order
            if cid == "s":
                assert (lab[0, :, :, z0 + 2] != IGNORE_INDEX).all() and (lab[0, :, :, z0 + 3:z0 + 6] == IGNORE_INDEX).all()
    assert offsets == {"s": {0, 1, 2}, "f": {1}}


def test_foreground_crops_place_a_sparse_case_uniformly_where_it_is_shorter_than_the_patch():
    """Annotated on its first Z slice only, 6 slices in an 8-slice patch, every crop foreground-
    centred: each crop holds the whole case along Z anyway, so its offset is drawn from 0..2 alike.
    Before, centring on the slice clamped every crop to one offset: [0, 0, 90]."""
    from semi3d.losses import IGNORE_INDEX

    shape = (8, 8, 6)
    image = np.broadcast_to(np.arange(6, dtype=np.float32) + 1, (1, *shape)).copy()
    label = np.full(shape, IGNORE_INDEX, np.uint8)
    label[:, :, 0] = 0
    label[2:6, 2:6, 0] = 1
    s = PatchSampler([Case("s", image, label)], (8, 8, 8), 1.0, torch.Generator().manual_seed(0))
    counts = [0, 0, 0]
    for _ in range(90):
        img, lab, _ = s.sample(1)
        z0 = int(torch.nonzero(img[0, 0, 0, 0] == 2.0)[0]) - 1  # padding holds the minimum, 1
        assert lab[0, 2:6, 2:6, z0].eq(1).all()  # still the case's own label, aligned
        counts[z0] += 1
    assert min(counts) >= 15, counts  # uniform: 30 each expected


@pytest.mark.parametrize("fg", [0.0, 0.5])
def test_same_generator_state_same_patches(fg):
    cases = [_case((slice(5, 9),) * 3)]
    a = PatchSampler(cases, (8, 8, 8), fg, torch.Generator().manual_seed(3))
    b = PatchSampler(cases, (8, 8, 8), fg, torch.Generator().manual_seed(3))
    for _ in range(5):
        (xa, ya, _), (xb, yb, _) = a.sample(2), b.sample(2)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_case_weights_steer_which_case_is_drawn():
    a, b = _case(), _case()
    b.id = "b"
    only_b = PatchSampler([a, b], (8, 8, 8), 0.0, torch.Generator().manual_seed(0), weights=[0.0, 1.0])
    assert {only_b.sample(1)[2][0] for _ in range(20)} == {"b"}
    mostly_b = PatchSampler([a, b], (8, 8, 8), 0.0, torch.Generator().manual_seed(0), weights=[1.0, 3.0])
    share = sum(mostly_b.sample(1)[2][0] == "b" for _ in range(400)) / 400
    assert 0.68 < share < 0.82  # 0.75 expected
    with pytest.raises(ValueError, match="non-negative"):
        PatchSampler([a, b], (8, 8, 8), 0.0, torch.Generator(), weights=[1.0])


def _slabs(first: int, n: int = 44):
    """A case (8, 8, n) annotated on every 5th Z slice from ``first``, the rest ignored."""
    from semi3d.losses import IGNORE_INDEX

    label = np.full((8, 8, n), IGNORE_INDEX, np.uint8)
    label[..., first::5] = 0
    label[2:4, 2:4, first::5] = 1
    return Case("c", np.zeros((1, 8, 8, n), np.float32), label)


def test_a_warning_when_most_sparse_cases_shorter_than_the_patch_share_their_annotated_slices():
    """LA's sparse benchmark: the same slabs in every case, each shorter than the patch along Z, and
    the network over-segments the slices between them. X and Y (every slice has a label) never warn."""
    note = shared_annotation_offsets([_slabs(2), _slabs(2, 40), _slabs(3)], (16, 16, 48))
    assert note.startswith("2 of the 3 sparsely annotated cases shorter than the patch along axis Z")
    assert "(2, 7, 12, 17, 22, 27, ...)" in note and "annotate each case from a different first slice" in note
    assert shared_annotation_offsets([_slabs(2), _slabs(0), _slabs(4)], (16, 16, 48)) is None  # each its own
    assert shared_annotation_offsets([_slabs(2), _slabs(2)], (16, 16, 44)) is None  # not shorter: crops move
    assert shared_annotation_offsets([_slabs(2)], (16, 16, 48)) is None
    full = Case("f", np.zeros((1, 8, 8, 44), np.float32), np.zeros((8, 8, 44), np.uint8))
    assert shared_annotation_offsets([full, full], (16, 16, 48)) is None


def test_annotated_slices_per_axis():
    """Z slabs every 5th slice from 2: those Z indices; every X and Y plane holds some of them (None)."""
    assert annotated_slices(_slabs(2, 14).label) == [None, None, [2, 7, 12]]
    assert annotated_slices(np.zeros((4, 4, 4), np.uint8)) == [None, None, None]  # no ignored voxel
