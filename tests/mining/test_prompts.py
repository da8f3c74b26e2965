"""Prompts from masks of known shapes: boxes, interior positive points, ring negative points."""
from __future__ import annotations

import numpy as np
import pytest

from semi3d.errors import InputError
from semi3d.mining.base import Prompt
from semi3d.mining.prompts import (PromptOptions, confident_label, mask_components, prompts_from_label,
                                   prompts_from_mask)
from scipy import ndimage

EXACT = PromptOptions(margin=0, margin_px=0, jitter=0)


def _square(h=40, w=50, r0=10, r1=20, c0=15, c1=30):
    m = np.zeros((h, w), bool)
    m[r0:r1 + 1, c0:c1 + 1] = True
    return m


def _disc(h=48, w=48, cy=24, cx=20, r=9):
    rr, cc = np.indices((h, w))
    return (rr - cy) ** 2 + (cc - cx) ** 2 <= r * r


def test_square_box_is_exact_and_points_are_inside_and_outside():
    m = _square()
    [p] = prompts_from_mask(m, EXACT)
    np.testing.assert_array_equal(p.box, [15, 10, 30, 20])  # x0, y0, x1, y1 inclusive
    pos, neg = p.positive, p.negative
    assert len(pos) == 3 and len(neg) == 4
    for x, y in pos:
        assert m[int(y), int(x)]
    assert m[int(pos[0, 1]), int(pos[0, 0])] and 14 <= pos[0, 1] <= 16  # deepest row of an 11-row square
    dist = ndimage.distance_transform_edt(~m)
    for x, y in neg:
        assert not m[int(y), int(x)]
        assert EXACT.ring_inner <= dist[int(y), int(x)] <= EXACT.ring_outer
    assert p.mask is not None and np.array_equal(p.mask, m)
    p.validate(m.shape)


def test_disc_points_spread_and_margin():
    m = _disc()
    [p] = prompts_from_mask(m, PromptOptions(margin=0.1, margin_px=1, jitter=0, n_positive=4, n_negative=6))
    # tight box of the disc: x 11..29, y 15..33 (19 px); margin 0.1 * 19 + 1 = 2.9 px
    np.testing.assert_allclose(p.box, [11 - 2.9, 15 - 2.9, 29 + 2.9, 33 + 2.9], atol=1e-5)
    pos = p.positive
    assert np.array_equal(pos[0], [20, 24])  # the centre is the deepest pixel
    assert all(m[int(y), int(x)] for x, y in pos)
    d = np.linalg.norm(pos[:, None] - pos[None], axis=-1)[np.triu_indices(len(pos), 1)]
    assert d.min() > 0.5 * 9  # greedy suppression spreads them
    neg = p.negative
    assert len(neg) == 6 and not any(m[int(y), int(x)] for x, y in neg)
    assert len({tuple(q) for q in neg.tolist()}) == 6


def test_jitter_is_seeded_bounded_and_clipped():
    m = _square()
    boxes = [prompts_from_mask(m, PromptOptions(margin=0, margin_px=0, jitter=0.1), np.random.default_rng(s))[0].box
             for s in (0, 0, 1)]
    np.testing.assert_array_equal(boxes[0], boxes[1])
    assert not np.array_equal(boxes[0], boxes[2])
    for b in boxes:
        assert np.all(np.abs(b - [15, 10, 30, 20]) <= 0.1 * np.array([16, 11, 16, 11]) + 1e-5)
    edge = np.zeros((20, 20), bool)
    edge[0:5, 15:20] = True  # touches the top-right corner
    [p] = prompts_from_mask(edge, PromptOptions(margin=0.5, margin_px=3, jitter=0.2), np.random.default_rng(3))
    assert p.box.min() >= 0 and p.box[2] <= 19 and p.box[3] <= 19
    p.validate(edge.shape)


def test_components_largest_first_small_ones_dropped():
    m = _square(h=60, w=60, r0=2, r1=6, c0=2, c1=6) | _square(h=60, w=60, r0=20, r1=40, c0=20, c1=45)
    m[55, 55] = True  # a single pixel: below min_area
    comps = mask_components(m, min_area=8)
    assert [int(c.sum()) for c in comps] == [21 * 26, 25]
    prompts = prompts_from_mask(m, EXACT)
    assert len(prompts) == 2
    np.testing.assert_array_equal(prompts[0].box, [20, 20, 45, 40])
    np.testing.assert_array_equal(prompts[1].box, [2, 2, 6, 6])
    # negatives of one component stay outside every predicted component
    for p in prompts:
        assert not any(m[int(y), int(x)] for x, y in p.negative)
    assert len(prompts_from_mask(m, PromptOptions(max_components=1))) == 1
    assert prompts_from_mask(np.zeros((8, 8), bool)) == []


def test_confident_label_drops_doubtful_components():
    prob = np.zeros((3, 20, 20), np.float32)
    prob[0] = 1.0
    prob[:, 2:6, 2:6] = np.array([0.05, 0.9, 0.05])[:, None, None]    # class 1, sure
    prob[:, 10:14, 10:14] = np.array([0.4, 0.55, 0.05])[:, None, None]  # class 1, doubtful
    prob[:, 15:18, 2:5] = np.array([0.3, 0.1, 0.6])[:, None, None]      # class 2, doubtful
    assert (confident_label(prob, 0.0) == prob.argmax(0)).all()  # off: the plain argmax
    lab = confident_label(prob, 0.7)
    assert (lab[2:6, 2:6] == 1).all() and (lab[10:14, 10:14] == 0).all() and (lab[15:18, 2:5] == 0).all()
    assert (confident_label(prob, 0.5)[15:18, 2:5] == 2).all() and lab.dtype == np.uint8


def test_label_map_gives_prompts_per_class():
    lab = np.zeros((40, 40), np.uint8)
    lab[5:15, 5:15] = 1
    lab[20:35, 20:30] = 2
    ps = prompts_from_label(lab, 3, EXACT)
    assert [p.cls for p in ps] == [1, 2]
    np.testing.assert_array_equal(ps[1].box, [20, 20, 29, 34])


def test_thin_shape_points_inside():
    m = np.zeros((30, 30), bool)
    m[10:13, 2:28] = True  # a 3-pixel-thick bar
    [p] = prompts_from_mask(m, EXACT)
    assert len(p.positive) >= 1 and all(m[int(y), int(x)] for x, y in p.positive)


def test_prompt_validation():
    with pytest.raises(InputError, match="outside"):
        Prompt(points=np.array([[50.0, 3.0]]), labels=np.array([1])).validate((20, 20))
    with pytest.raises(InputError, match="x0 <= x1"):
        Prompt(box=np.array([5.0, 5, 2, 8])).validate((20, 20))
    with pytest.raises(InputError, match="empty prompt"):
        Prompt().validate((20, 20))
    with pytest.raises(InputError, match="labels"):
        Prompt(points=np.array([[1.0, 1.0]]), labels=np.array([1, 0])).validate((20, 20))
    with pytest.raises(ValueError, match="ring_outer"):
        PromptOptions(ring_inner=5, ring_outer=2)
