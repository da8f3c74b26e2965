"""The weight-free random-walker refiner."""
from __future__ import annotations

import numpy as np
import pytest

from semi3d.errors import InputError
from semi3d.mining.base import Prompt
from semi3d.mining.prompts import PromptOptions, prompts_from_mask
from semi3d.mining.refiners import RandomWalkerRefiner, random_walker_probability


def _dice(a, b):
    return 2 * (a & b).sum() / max(a.sum() + b.sum(), 1)


def _scene(seed=0, noise=0.25):
    rng = np.random.default_rng(seed)
    rr, cc = np.indices((48, 56))
    truth = (rr - 22) ** 2 / 144 + (cc - 30) ** 2 / 196 <= 1
    image = (truth * 1.0 + rng.normal(0, noise, truth.shape))[None].astype(np.float32)
    return image, truth


def test_probability_of_two_flat_regions():
    image = np.zeros((1, 10, 20), np.float32)
    image[:, :, 10:] = 5.0
    seeds = np.zeros((10, 20), np.int8)
    seeds[5, 2], seeds[5, 17] = 1, 2
    p = random_walker_probability(image, seeds)
    assert p[:, :10].min() > 0.95 and p[:, 10:].max() < 0.05
    assert p[5, 2] == 1.0 and p[5, 17] == 0.0


def test_box_and_points_recover_a_noisy_ellipse():
    image, truth = _scene()
    wrong = np.roll(truth, 3, 1)  # a shifted "small-model" mask
    [prompt] = prompts_from_mask(wrong, PromptOptions(jitter=0))
    seg = RandomWalkerRefiner().segment(image, prompt)
    assert seg.masks.shape == (1, 48, 56) and seg.probs.shape == (1, 48, 56) and seg.scores.shape == (1,)
    mask, score, prob = seg.best()
    assert _dice(mask, truth) > 0.9 > _dice(wrong, truth)
    assert 0.3 < score <= 1.0
    assert not mask[prob <= 0.5].any()
    x0, y0, x1, y1 = prompt.box  # everything outside the box is background
    rr, cc = np.indices(truth.shape)
    assert not mask[(cc < np.floor(x0)) | (cc > np.ceil(x1)) | (rr < np.floor(y0)) | (rr > np.ceil(y1))].any()


def test_mask_prompt_and_torch_input():
    torch = pytest.importorskip("torch")
    image, truth = _scene(1)
    [prompt] = prompts_from_mask(np.roll(truth, 2, 0), PromptOptions(jitter=0))
    ref = RandomWalkerRefiner()
    with_mask = ref.segment(torch.from_numpy(image), prompt).best()[0]
    assert _dice(with_mask, truth) > 0.9
    assert ref.calls == 1


def test_prompt_change_changes_the_output():
    image, truth = _scene(2)
    [p] = prompts_from_mask(truth, PromptOptions(jitter=0))
    p.mask = None
    ref = RandomWalkerRefiner()
    base = ref.segment(image, p).best()[0]
    # a negative point inside the object, at its left end, removes the region around it
    extra = Prompt(box=p.box, points=np.concatenate([p.points, [[19.0, 22.0]]]),
                   labels=np.concatenate([p.labels, [0]]))
    changed = ref.segment(image, extra).best()[0]
    assert base[22, 19] and not changed[22, 19]
    smaller = Prompt(box=np.array([30.0, 10, 45, 34], np.float32), points=p.positive[:1], labels=np.array([1]))
    assert ref.segment(image, smaller).best()[0].sum() < base.sum()


def test_seeds_and_degenerate_prompts():
    ref = RandomWalkerRefiner(point_radius=0)
    p = Prompt(box=np.array([2.0, 3, 6, 8], np.float32), points=np.array([[4.0, 5], [5, 7]], np.float32),
               labels=np.array([1, 0]))
    s = ref.seeds((12, 10), p)
    assert s[5, 4] == 1 and s[7, 5] == 2 and s[0, 0] == 2 and s[3, 2] == 0 and s[8, 6] == 0 and s[9, 6] == 2
    image = np.random.default_rng(0).normal(size=(1, 12, 10)).astype(np.float32)
    only_negative = Prompt(points=np.array([[4.0, 5]], np.float32), labels=np.array([0]))
    seg = ref.segment(image, only_negative)
    assert not seg.masks.any() and seg.scores[0] == 0.0
    whole = Prompt(box=np.array([0.0, 0, 9, 11], np.float32), points=np.array([[4.0, 5]], np.float32),
                   labels=np.array([1]))
    seg = ref.segment(image, whole)  # no background seed anywhere: undecided, score 0
    assert seg.scores[0] == 0.0
    with pytest.raises(InputError, match="outside"):
        ref.segment(image, Prompt(points=np.array([[40.0, 5]], np.float32), labels=np.array([1])))
    with pytest.raises(InputError, match="NaN"):
        ref.segment(np.full((1, 12, 10), np.nan, np.float32), p)
    with pytest.raises(Exception, match="beta"):
        RandomWalkerRefiner(beta=-1)


def test_matches_skimage_when_available():
    """Same weights and linear system as skimage's random_walker (mode "bf"), one or several channels."""
    seg_mod = pytest.importorskip("skimage.segmentation")
    image, truth = _scene(3)
    seeds = np.zeros(truth.shape, np.int8)
    seeds[22, 30] = 1
    seeds[2, 2] = seeds[45, 50] = 2
    ours = random_walker_probability(image, seeds, beta=130)
    theirs = seg_mod.random_walker(image[0], seeds, beta=130, mode="bf", return_full_prob=True)[0]
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    multi = np.concatenate([image, image ** 2, -image])
    ours = random_walker_probability(multi, seeds, beta=90)
    theirs = seg_mod.random_walker(multi, seeds, beta=90, mode="bf", return_full_prob=True, channel_axis=0)[0]
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
