import math

import numpy as np
import pytest
from medpy.metric import binary as mb

from semi3d.errors import InputError
from semi3d.evaluation.metrics import binary_metrics, case_metrics


def _sphere(shape, center, radius):
    grid = np.indices(shape, dtype=np.float64)
    dist2 = sum((g - c) ** 2 for g, c in zip(grid, center))
    return dist2 <= radius**2


def _cube(shape, lo, hi):
    m = np.zeros(shape, bool)
    m[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
    return m


def _medpy(pred, ref, spacing=None):
    return {
        "dice": mb.dc(pred, ref),
        "jaccard": mb.jc(pred, ref),
        "hd95": mb.hd95(pred, ref, voxelspacing=spacing, connectivity=1),
        "asd": mb.asd(pred, ref, voxelspacing=spacing, connectivity=1),
    }


def _assert_matches_medpy(pred, ref, spacing=None):
    got = binary_metrics(pred, ref, spacing)
    want = _medpy(pred, ref, spacing)
    assert set(got) == {"dice", "jaccard", "hd95", "asd"}
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-6), key
    return got


SHAPE = (24, 22, 18)


def _multi_component():
    a = _sphere(SHAPE, (6, 6, 6), 3.5) | _cube(SHAPE, (14, 12, 9), (20, 19, 15))
    b = _sphere(SHAPE, (7, 5, 6), 3.0) | _cube(SHAPE, (15, 12, 8), (21, 18, 14)) | _cube(SHAPE, (2, 17, 2), (4, 19, 4))
    return a, b


CASES = {
    "spheres_offset": (_sphere(SHAPE, (11, 10, 9), 6), _sphere(SHAPE, (13, 11, 8), 5)),
    "cube_shifted": (_cube(SHAPE, (4, 4, 4), (12, 12, 12)), _cube(SHAPE, (7, 5, 4), (15, 13, 12))),
    "touching_border": (_cube(SHAPE, (0, 0, 3), (10, 22, 12)), _cube(SHAPE, (0, 2, 0), (13, 20, 18))),
    "border_vs_inner": (_sphere(SHAPE, (0, 11, 9), 7), _sphere(SHAPE, (3, 11, 9), 5)),
    "multi_component": _multi_component(),
}


@pytest.mark.parametrize("spacing", [None, (0.625, 0.625, 2.5), (1.3, 0.7, 1.0)])
@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_medpy(name, spacing):
    pred, ref = CASES[name]
    _assert_matches_medpy(pred, ref, spacing)
    _assert_matches_medpy(ref, pred, spacing)  # asd is directed: check both orders


def test_random_masks_match_medpy():
    rng = np.random.default_rng(0)
    for _ in range(5):
        shape = tuple(int(s) for s in rng.integers(6, 16, size=3))
        pred = rng.random(shape) > 0.7
        ref = rng.random(shape) > 0.8
        _assert_matches_medpy(pred, ref, tuple(rng.uniform(0.4, 2.5, size=3)))


def test_other_ndim_and_dtypes():
    pred2d = _sphere((30, 25), (12, 12), 7)
    ref2d = _sphere((30, 25), (15, 11), 6)
    _assert_matches_medpy(pred2d.astype(np.uint8), ref2d.astype(np.int64), (0.5, 2.0))


def test_identical_masks():
    m = _sphere(SHAPE, (11, 10, 9), 6)
    got = binary_metrics(m, m, (0.625, 0.625, 2.5))
    assert got == {"dice": 1.0, "jaccard": 1.0, "hd95": 0.0, "asd": 0.0}


def test_cube_shifted_two_voxels_along_x():
    a = _cube(SHAPE, (4, 4, 4), (12, 12, 12))
    b = np.roll(a, 2, axis=0)
    got = _assert_matches_medpy(a, b)
    # 8x8x8 cubes overlapping on 6 of 8 slices
    assert got["dice"] == pytest.approx(2 * 6 / 16)
    assert got["jaccard"] == pytest.approx(6 / 10)
    assert got["hd95"] == pytest.approx(2.0)
    # with spacing the x distances scale by the x spacing
    assert binary_metrics(a, b, (0.5, 1.0, 1.0))["hd95"] == pytest.approx(1.0)


@pytest.mark.parametrize("spacing", [None, (0.625, 0.625, 2.5)])
def test_empty_mask_policy(spacing):
    s = np.ones(3) if spacing is None else np.asarray(spacing)
    worst = math.sqrt(sum((n * v) ** 2 for n, v in zip(SHAPE, s)))
    present = _sphere(SHAPE, (11, 10, 9), 4)
    empty = np.zeros(SHAPE, bool)
    miss = {"dice": 0.0, "jaccard": 0.0, "hd95": pytest.approx(worst), "asd": pytest.approx(worst)}
    assert binary_metrics(empty, present, spacing) == miss  # missed structure
    assert binary_metrics(present, empty, spacing) == miss  # hallucinated structure
    assert binary_metrics(empty, empty, spacing) == {"dice": 1.0, "jaccard": 1.0, "hd95": 0.0, "asd": 0.0}
    for got in (binary_metrics(empty, present), binary_metrics(present, empty)):
        assert all(np.isfinite(v) for v in got.values())


def test_bad_input():
    with pytest.raises(InputError):
        binary_metrics(np.zeros((4, 4, 4), bool), np.zeros((4, 4, 5), bool))
    with pytest.raises(InputError):
        binary_metrics(np.ones((4, 4, 4), bool), np.ones((4, 4, 4), bool), (1.0, 1.0))
    with pytest.raises(InputError):
        binary_metrics(np.ones((4, 4, 4), bool), np.ones((4, 4, 4), bool), (1.0, 0.0, 1.0))


def _label_maps():
    ref = np.zeros(SHAPE, np.int64)
    ref[_sphere(SHAPE, (7, 7, 7), 4)] = 1
    ref[_cube(SHAPE, (13, 11, 6), (21, 19, 14))] = 2
    pred = np.zeros(SHAPE, np.int64)
    pred[_sphere(SHAPE, (8, 7, 6), 4)] = 1
    pred[_cube(SHAPE, (14, 11, 6), (22, 18, 14))] = 2
    pred[1:3, 18:21, 1:3] = 2  # false-positive island
    return pred, ref


def test_case_metrics_three_classes():
    pred, ref = _label_maps()
    spacing = (0.625, 0.625, 2.5)
    got = case_metrics(pred, ref, 3, spacing, class_names=["liver", "tumour"])
    assert list(got) == ["liver", "tumour"]
    for c, name in ((1, "liver"), (2, "tumour")):
        p, r = pred == c, ref == c
        vox, mm = _medpy(p, r), _medpy(p, r, spacing)
        row = got[name]
        assert set(row) == {"dice", "jaccard", "hd95", "asd", "hd95_mm", "asd_mm"}
        for key in ("dice", "jaccard", "hd95", "asd"):
            assert row[key] == pytest.approx(vox[key], abs=1e-6)
        assert row["hd95_mm"] == pytest.approx(mm["hd95"], abs=1e-6)
        assert row["asd_mm"] == pytest.approx(mm["asd"], abs=1e-6)


def test_case_metrics_defaults_and_missing_class():
    pred, ref = _label_maps()
    pred[pred == 2] = 0  # class 2 predicted nowhere
    got = case_metrics(pred, ref, 4, None)
    assert list(got) == ["class1", "class2", "class3"]
    assert got["class1"]["hd95_mm"] == got["class1"]["hd95"]
    assert got["class2"]["dice"] == 0.0 and got["class2"]["hd95"] == pytest.approx(math.sqrt(sum(n * n for n in SHAPE)))
    assert got["class3"] == {"dice": 1.0, "jaccard": 1.0, "hd95": 0.0, "asd": 0.0, "hd95_mm": 0.0, "asd_mm": 0.0}
    with_bg = case_metrics(pred, ref, 3, None, class_names=["background", "a", "b"])
    assert list(with_bg) == ["a", "b"]


def test_case_metrics_bad_input():
    pred, ref = _label_maps()
    with pytest.raises(InputError):
        case_metrics(pred, ref[:-1], 3, None)
    with pytest.raises(InputError):
        case_metrics(pred, ref, 2, None)  # label 2 out of range
    with pytest.raises(InputError):
        case_metrics(pred, ref, 3, None, class_names=["only_one"])


@pytest.mark.parametrize("tolerance", [0.0, 1.0, 2.5])
@pytest.mark.parametrize("spacing", [None, (0.625, 0.625, 2.5), (1.3, 0.7, 1.0)])
@pytest.mark.parametrize("name", sorted(CASES))
def test_normalised_surface_dice_matches_monai(name, spacing, tolerance):
    """``nsd`` is MONAI's ``compute_surface_dice`` (the same surfaces and Euclidean distances)."""
    import torch
    from monai.metrics import compute_surface_dice

    a, b = CASES[name]
    onehot = [torch.from_numpy(np.stack([~m, m]))[None].float() for m in (a, b)]
    want = compute_surface_dice(*onehot, class_thresholds=[tolerance], spacing=spacing).item()
    got = case_metrics(a.astype(np.uint8), b.astype(np.uint8), 2, spacing, nsd_tolerance=tolerance)["class1"]
    assert got["nsd"] == pytest.approx(want, abs=1e-6)
    assert "nsd" not in case_metrics(a.astype(np.uint8), b.astype(np.uint8), 2, spacing)["class1"]


def test_normalised_surface_dice_known_answers_and_empty_masks():
    a = _cube(SHAPE, (4, 4, 4), (12, 12, 12))
    nsd = lambda p, r, t, sp=None: case_metrics(p.astype(np.uint8), r.astype(np.uint8), 2, sp, nsd_tolerance=t)["class1"]["nsd"]  # noqa: E731
    assert nsd(a, a, 0.0) == 1.0
    shifted = np.roll(a, 2, axis=0)  # every surface voxel within 2 voxels of the other surface
    assert nsd(a, shifted, 2.0) == 1.0 and nsd(a, shifted, 1.9) < 1.0
    assert nsd(a, shifted, 1.0, (0.5, 1.0, 1.0)) == 1.0  # 2 voxels of 0.5 mm
    empty = np.zeros(SHAPE, bool)
    assert nsd(empty, empty, 1.0) == 1.0 and nsd(a, empty, 1.0) == 0.0 and nsd(empty, a, 1.0) == 0.0
    with pytest.raises(InputError, match="nsd_tolerance"):
        nsd(a, a, -1.0)


def test_normalised_surface_dice_with_one_tolerance_per_class():
    a, b = CASES["spheres_offset"]
    c, d = CASES["cube_shifted"]
    pred, ref = (a + 2 * (c & ~a)).astype(np.uint8), (b + 2 * (d & ~b)).astype(np.uint8)
    per_class = case_metrics(pred, ref, 3, (1.0, 1.0, 2.0), nsd_tolerance=[1.0, 3.0])
    for name, tol in (("class1", 1.0), ("class2", 3.0)):
        assert per_class[name]["nsd"] == case_metrics(pred, ref, 3, (1.0, 1.0, 2.0), nsd_tolerance=tol)[name]["nsd"]
    assert per_class["class1"]["nsd"] != per_class["class2"]["nsd"]
    with pytest.raises(InputError, match=r"one per foreground class \(2\)"):
        case_metrics(pred, ref, 3, None, nsd_tolerance=[1.0, 2.0, 3.0])
