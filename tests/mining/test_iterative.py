"""Iterative refinement with fake promptable segmenters."""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from semi3d.mining.base import PromptableSegmenter, Segmentation
from semi3d.mining.iterative import IterateOptions, label_dice, refine_iteratively


class Grow(PromptableSegmenter):
    """Returns the prompt's component (from its box) dilated by one pixel, a fixed score; records prompts."""

    def __init__(self, score=0.9):
        self.prompts, self.score = [], score

    def segment(self, image, prompt, key=None):
        self.prompts.append(prompt)
        h, w = image.shape[-2:]
        m = np.zeros((h, w), bool)
        x0, y0, x1, y1 = np.round(prompt.box).astype(int)
        m[y0:y1 + 1, x0:x1 + 1] = True
        m = ndimage.binary_dilation(m)
        return Segmentation(m[None], np.array([self.score]), None)


class Fixed(PromptableSegmenter):
    def __init__(self, mask, score=0.8):
        self.mask, self.score, self.calls = mask, score, 0

    def segment(self, image, prompt, key=None):
        self.calls += 1
        return Segmentation(self.mask[None], np.array([self.score]), self.mask[None].astype(np.float32))


EXACT = dict(margin=0, margin_px=0, jitter=0)


def _label(r0=10, r1=20, c0=10, c1=20, shape=(40, 40)):
    lab = np.zeros(shape, np.uint8)
    lab[r0:r1, c0:c1] = 1
    return lab


def test_stops_after_the_given_rounds():
    from semi3d.mining.prompts import PromptOptions

    seg = Grow()
    res = refine_iteratively(seg, np.zeros((1, 40, 40)), _label(), 2, PromptOptions(**EXACT),
                             IterateOptions(rounds=3, tol=0.0))
    assert res.rounds == 3 and len(seg.prompts) == 3 and len(res.changes) == 3
    assert res.label.sum() == 16 * 16 - 4  # each round: the box filled and dilated by 1 (a cross: corners stay 0)
    assert all(c > 0 for c in res.changes)
    assert res.score == 0.9 and res.n_prompts == 1


def test_stops_when_masks_stop_changing():
    target = _label(12, 22, 12, 22)
    seg = Fixed(target.astype(bool))
    res = refine_iteratively(seg, np.zeros((1, 40, 40)), _label(), 2, options=IterateOptions(rounds=5, tol=0.01))
    # round 1 moves the mask to the target, round 2 reproduces it: change 0 < tol -> stop
    assert res.rounds == 2 and seg.calls == 2
    assert res.changes[0] == 1 - label_dice(target, _label(), 2) and res.changes[1] == 0.0
    np.testing.assert_array_equal(res.label, target)
    assert res.score == 0.8


def test_mask_feedback():
    from semi3d.mining.prompts import PromptOptions

    seg = Grow()
    refine_iteratively(seg, np.zeros((1, 40, 40)), _label(), 2, PromptOptions(**EXACT),
                       IterateOptions(rounds=2, tol=0, feed_mask=True, feed_model_mask=False))
    assert seg.prompts[0].mask is None and seg.prompts[1].mask is not None
    # the mask fed back is the previous round's refined mask (here: the model box dilated by 1)
    assert seg.prompts[1].mask.sum() == (10 + 2) * (10 + 2) - 4
    seg = Grow()
    refine_iteratively(seg, np.zeros((1, 40, 40)), _label(), 2, PromptOptions(**EXACT),
                       IterateOptions(rounds=2, tol=0, feed_mask=False, feed_model_mask=True))
    assert np.array_equal(seg.prompts[0].mask, _label() == 1) and seg.prompts[1].mask is None


def test_empty_prediction_and_vanishing_object():
    seg = Grow()
    res = refine_iteratively(seg, np.zeros((1, 20, 20)), np.zeros((20, 20), np.uint8), 2)
    assert res.score is None and res.rounds == 0 and not res.label.any() and not seg.prompts
    gone = Fixed(np.zeros((40, 40), bool), score=0.7)
    res = refine_iteratively(gone, np.zeros((1, 40, 40)), _label(), 2, options=IterateOptions(rounds=4, tol=0))
    assert not res.label.any() and res.score == 0.0 and gone.calls == 1 and res.rounds == 2


def test_overlaps_go_to_the_more_probable_class():
    class TwoClass(PromptableSegmenter):
        def segment(self, image, prompt, key=None):
            m = np.zeros((30, 30), bool)
            m[5:20, 5:20] = True  # both classes claim the same square
            p = m * (0.9 if prompt.cls == 2 else 0.6)
            return Segmentation(m[None], np.array([0.5 * prompt.cls]), p[None].astype(np.float32))

    lab = np.zeros((30, 30), np.uint8)
    lab[5:10, 5:10] = 1
    lab[15:20, 15:20] = 2
    res = refine_iteratively(TwoClass(), np.zeros((1, 30, 30)), lab, 3, options=IterateOptions(rounds=1))
    assert set(np.unique(res.label)) == {0, 2}
    assert res.n_prompts == 2 and abs(res.score - 1.0) < 1e-9  # area-weighted: class 1's mask lost all pixels


def test_label_dice():
    a, b = _label(), _label(10, 20, 15, 25)
    assert label_dice(a, a, 2) == 1.0 and label_dice(a, b, 2) == 0.5
    assert label_dice(np.zeros((4, 4)), np.zeros((4, 4)), 2) == 1.0


def test_scores_leave_the_ignored_pixels_of_the_truth_out():
    """nnU-Net's ignore label in a hidden truth: a prediction there is neither right nor wrong
    (before: a foreground prediction on ignored pixels counted as a false positive)."""
    from semi3d.losses import IGNORE_INDEX
    from semi3d.mining.evaluation import pooled_dice

    truth = _label()
    truth[:, :8] = IGNORE_INDEX
    pred = _label()
    pred[:, :8] = 1                                   # anything under the ignored pixels
    assert label_dice(pred, truth, 2) == 1.0
    assert pooled_dice([pred, _label()], [truth, _label()], 2) == 1.0
    assert label_dice(pred, _label(), 2) == 2 * 100 / (100 + 100 + 40 * 8)  # the same pixels, not ignored
