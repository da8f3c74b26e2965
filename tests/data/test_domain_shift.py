"""Simulated scanner domains: the shift is seeded and does what its documentation says, and the
domain dataset writer produces a readable dataset with per-domain id lists."""
from __future__ import annotations

import json

import numpy as np
import pytest

from semi3d.data.domain_shift import (DOMAINS, ScannerShift, apply_shift, case_seed, domain_of, holds_domain_dataset,
                                      interleave, write_domain_dataset)
from semi3d.data.readers import UAMTH5Reader
from semi3d.data.synthetic import write_dataset
from semi3d.errors import InputError

SHAPE = (20, 18, 12)


def ramp(shape=SHAPE, axis=0, lo=-1.0, hi=3.0) -> np.ndarray:
    """A volume rising linearly from lo to hi along ``axis``, constant along the others."""
    v = np.linspace(lo, hi, shape[axis])
    sh = [1, 1, 1]
    sh[axis] = shape[axis]
    return np.broadcast_to(v.reshape(sh), shape).astype(np.float32).copy()


def unit(x: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """``x`` in the [0, 1] units of ``ref``'s range (where the shift works)."""
    return (x.astype(np.float64) - ref.min()) / (ref.max() - ref.min())


def test_seeded_and_deterministic():
    img = np.random.default_rng(0).normal(size=SHAPE).astype(np.float32)
    for name in ("B", "C", "D"):
        a, b = apply_shift(img, DOMAINS[name], seed=5), apply_shift(img, DOMAINS[name], seed=5)
        assert a.dtype == np.float32 and a.shape == img.shape
        np.testing.assert_array_equal(a, b)
        assert not np.array_equal(a, apply_shift(img, DOMAINS[name], seed=6))  # noise and bias follow the seed
        assert not np.allclose(a, img, atol=1e-2)
    assert case_seed(0, "B", "x") == case_seed(0, "B", "x") != case_seed(0, "C", "x") != case_seed(1, "B", "x")
    # domain A is the data as acquired: an exact copy, also for multi-channel images
    multi = np.stack([img, 2 * img])
    out = apply_shift(multi, DOMAINS["A"], seed=1)
    np.testing.assert_array_equal(out, multi)
    assert out is not multi and apply_shift(multi, DOMAINS["B"], seed=1).shape == multi.shape


def test_gamma_keeps_the_range_and_bends_mid_grey():
    img = ramp()
    bright, dark = apply_shift(img, ScannerShift(gamma=0.5)), apply_shift(img, ScannerShift(gamma=2.0))
    for out in (bright, dark):  # 0 -> 0, 1 -> 1 in [0, 1] units: min and max unchanged
        assert out.min() == pytest.approx(img.min(), abs=1e-5) and out.max() == pytest.approx(img.max(), abs=1e-5)
    np.testing.assert_allclose(unit(bright, img), unit(img, img) ** 0.5, atol=1e-5)
    assert unit(bright, img).mean() > unit(img, img).mean() > unit(dark, img).mean()


def test_contrast_scales_the_bright_half_around_the_median():
    img = ramp()
    out = apply_shift(img, ScannerShift(contrast=1.5))
    u, v = unit(img, img), unit(out, img)
    med = np.median(u)
    hi = u > med
    np.testing.assert_allclose(v[hi] - med, 1.5 * (u[hi] - med), atol=1e-5)
    np.testing.assert_allclose(v[~hi], u[~hi], atol=1e-5)


@pytest.mark.parametrize("part", [dict(gamma=0.6), dict(bias=0.3), dict(contrast=1.3), dict(contrast=0.75),
                                  dict(blur=(0.5, 0.5, 1.5)), dict(noise=0.03), dict(noise=0.05, rician=True)])
def test_every_shift_survives_the_z_score(part):
    """Each documented step changes the image the network sees after the configs' z-score (a
    global contrast about the mean used to be removed exactly by it)."""
    rng = np.random.default_rng(0)
    img = (ramp() + 0.2 * rng.random(ramp().shape)).astype(np.float32)

    def z(x):
        return (x - x.mean()) / x.std()

    diff = np.abs(z(apply_shift(img, ScannerShift(**part), seed=1)) - z(img)).mean()
    assert diff > 0.02, diff


def test_bias_field_is_smooth_multiplicative_and_seeded():
    img = ramp(lo=0.0, hi=1.0) + 0.5  # no voxel at the minimum except the first plane
    out = apply_shift(img, ScannerShift(bias=0.3), seed=3)
    u, v = unit(img, img), unit(out, img)
    field = v[1:] / u[1:]
    assert np.abs(np.log(field)).max() < 9 * 0.3 * 2  # |b| <= sum of |coefficients| (centred)
    assert field.std() > 0.01  # spatially varying
    assert np.abs(np.diff(np.log(field), axis=1)).max() < 0.2  # smooth
    assert not np.allclose(out, apply_shift(img, ScannerShift(bias=0.3), seed=4))


def test_resolution_blur_acts_per_axis():
    img = (np.random.default_rng(1).random(SHAPE) > 0.5).astype(np.float32)
    out = apply_shift(img, ScannerShift(blur=(0.0, 0.0, 1.5)))
    grad = lambda x, ax: float(np.square(np.diff(x, axis=ax)).mean())
    assert grad(out, 2) < 0.3 * grad(img, 2)  # thick slices: Z detail is gone
    along_x = ramp(axis=0)
    np.testing.assert_allclose(apply_shift(along_x, ScannerShift(blur=(0.0, 0.0, 1.5))), along_x, atol=1e-5)
    assert grad(apply_shift(img, ScannerShift(blur=(1.0, 1.0, 0.0))), 0) < 0.5 * grad(img, 0)


@pytest.mark.parametrize("rician", [False, True])
def test_noise_level(rician):
    img = ramp(shape=(40, 40, 30))
    out = apply_shift(img, ScannerShift(noise=0.05, rician=rician), seed=2)
    resid = unit(out, img) - unit(img, img)
    if rician:  # magnitude noise: biased upward where the signal is low
        assert resid[:2].mean() > resid[-2:].mean() + 0.005
        assert resid[-5:].std() == pytest.approx(0.05, rel=0.15)
    else:
        assert resid.mean() == pytest.approx(0.0, abs=0.005) and resid.std() == pytest.approx(0.05, rel=0.05)


def test_bad_parameters_are_input_errors():
    with pytest.raises(InputError):
        ScannerShift(gamma=0)
    with pytest.raises(InputError):
        ScannerShift(blur=(1.0, -1.0, 0.0))
    with pytest.raises(InputError):
        apply_shift(np.zeros((4, 4)), DOMAINS["B"])


def test_scaled_moves_the_shift_away_from_the_identity():
    b = DOMAINS["B"]
    assert b.scaled(1) == b and b.scaled(0).is_identity and DOMAINS["C"].scaled(0).is_identity
    b2 = b.scaled(2)
    assert b2.gamma == pytest.approx(b.gamma ** 2) and b2.contrast == pytest.approx(b.contrast ** 2)
    assert (b2.bias, b2.noise, *b2.blur) == pytest.approx((2 * b.bias, 2 * b.noise, *(2 * x for x in b.blur)))
    # a stronger shift moves the image further from the original (same seed)
    img = np.random.default_rng(0).normal(size=SHAPE).astype(np.float32)
    dist = [np.abs(unit(apply_shift(img, b.scaled(s), seed=3), img) - unit(img, img)).mean() for s in (0.5, 1, 2)]
    assert dist[0] < dist[1] < dist[2]
    with pytest.raises(InputError):
        b.scaled(-1)


def test_interleave_and_domain_of():
    assert interleave(["a0", "a1", "a2"], ["b0"], ["c0", "c1"]) == ["a0", "b0", "c0", "a1", "c1", "a2"]
    assert domain_of("B_syn_001") == "B" and domain_of("syn_001") == "default"


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("src") / "LA", n_labelled=6, n_unlabelled=0, n_test=0, seed=1,
                         shape=(20, 20, 12), num_classes=2, format="uamt_h5")


def test_write_domain_dataset(src, tmp_path):
    ids = [f"syn_{i:03d}" for i in range(6)]
    plan = {"A": ids[:3], "B": ids[3:], "D": ids[4:]}
    out = write_domain_dataset(src, tmp_path / "dom", plan, src_options={"list_file": "train.list"}, seed=0,
                               n_test={"B": 1}, lists={"mixed": interleave(["A_syn_000", "A_syn_001"], ["B_syn_003"])})
    lst = lambda name: (out / f"{name}.list").read_text().split()
    assert lst("all") == [f"{d}_{i}" for d, v in plan.items() for i in v]
    assert lst("A") == lst("A_train") == ["A_syn_000", "A_syn_001", "A_syn_002"] and lst("A_test") == []
    assert lst("B_train") == ["B_syn_003", "B_syn_004"] and lst("B_test") == ["B_syn_005"]
    assert lst("mixed") == ["A_syn_000", "B_syn_003", "A_syn_001"]
    info = json.loads((out / "domains.json").read_text())
    assert info["cases"]["D_syn_004"] == {"domain": "D", "source_id": "syn_004"}
    assert info["domains"]["B"]["gamma"] == DOMAINS["B"].gamma and info["seed"] == 0
    # what was written is recognised; another plan, seed or shift is not
    assert holds_domain_dataset(out, plan, DOMAINS, 0) and not holds_domain_dataset(tmp_path / "none", plan, DOMAINS, 0)
    assert not holds_domain_dataset(out, plan, DOMAINS, 1)
    assert not holds_domain_dataset(out, {**plan, "D": ids[5:]}, DOMAINS, 0)
    assert not holds_domain_dataset(out, plan, {**DOMAINS, "B": DOMAINS["B"].scaled(2)}, 0)

    reader, source = UAMTH5Reader(out, list_file="all.list"), UAMTH5Reader(src, list_file="train.list")
    for new_id in lst("all"):
        case, orig = reader.load(new_id), source.load(new_id.split("_", 1)[1])
        np.testing.assert_array_equal(case.label, orig.label)  # labels are never changed
        if domain_of(new_id) == "A":
            np.testing.assert_array_equal(case.image, orig.image)
        else:
            np.testing.assert_allclose(case.image, apply_shift(orig.image, DOMAINS[domain_of(new_id)],
                                                               case_seed(0, domain_of(new_id), orig.id)), atol=1e-6)
            assert not np.allclose(case.image, orig.image, atol=1e-2)
    # the same patient in two domains: same anatomy, different images
    assert not np.allclose(reader.load("B_syn_004").image, reader.load("D_syn_004").image)

    # a run on the new dataset selects by domain tag (read from its domains.json) and records the tags
    from semi3d.config import DataConfig
    from semi3d.data.dataset import prepare_data
    from semi3d.data.splits import load_domains, save_splits

    cfg = DataConfig.model_validate({"format": "uamt_h5", "root": str(out), "options": {"list_file": "all.list"},
                                     "num_classes": 2, "splits": {"labelled": {"domain": "A"},
                                                                  "unlabelled": {"domain": ["B", "D"]}}})
    data = prepare_data(cfg)
    assert data.splits["labelled"] == lst("A") and data.splits["unlabelled"] == lst("B") + lst("D")
    assert [c.domain for c in data.cases("unlabelled")] == ["B"] * 3 + ["D"] * 2
    save_splits(tmp_path / "splits.json", data.splits, data.domains)
    assert load_domains(tmp_path / "splits.json")["D_syn_005"] == "D"


def test_write_domain_dataset_refuses_bad_plans(src, tmp_path):
    with pytest.raises(InputError, match="unknown domain"):
        write_domain_dataset(src, tmp_path / "x", {"Z": ["syn_000"]}, src_options={"list_file": "train.list"})
    with pytest.raises(InputError, match="hold out"):
        write_domain_dataset(src, tmp_path / "y", {"A": ["syn_000"]}, src_options={"list_file": "train.list"}, n_test=2)


def test_write_domain_dataset_nnunet_layout(src, tmp_path):
    from semi3d.data.nnunet import NnUNetRawReader

    out = write_domain_dataset(src, tmp_path / "nn", {"A": ["syn_000"], "C": ["syn_000", "syn_001"]},
                               src_options={"list_file": "train.list"}, format="nnunet")
    reader = NnUNetRawReader(out)
    assert reader.case_ids() == ["A_syn_000", "C_syn_000", "C_syn_001"] and reader.num_classes == 2
    orig = UAMTH5Reader(src, list_file="train.list").load("syn_000")
    case = reader.load("C_syn_000")
    np.testing.assert_array_equal(case.label, orig.label)
    np.testing.assert_allclose(case.image, apply_shift(orig.image, DOMAINS["C"], case_seed(0, "C", "syn_000")), atol=1e-6)
