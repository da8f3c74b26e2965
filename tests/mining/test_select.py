"""Pseudo-label selection thresholds."""
from __future__ import annotations

import numpy as np
import pytest

from semi3d.losses import IGNORE_INDEX
from semi3d.mining.iterative import RefinedSlice
from semi3d.mining.select import Candidate, SelectOptions, select_pseudo_labels, training_label


def _mask(c0, c1):
    m = np.zeros((10, 10), np.uint8)
    m[2:8, c0:c1] = 1
    return m


def _cand(i, score, refined, model=None, group="a", max_prob=0.9):
    model = _mask(2, 8) if model is None else model
    return Candidate(f"{group}:{i}", group, model, RefinedSlice(refined, score, 1), max_prob)


def test_score_and_agreement_thresholds():
    cands = [
        _cand(0, 0.9, _mask(2, 8)),   # agrees (Dice 1), confident -> kept
        _cand(1, 0.3, _mask(2, 8)),   # low score
        _cand(2, 0.9, _mask(5, 8)),   # Dice 2*18/(36+18) = 0.667 -> low agreement
        _cand(3, 0.6, _mask(3, 8)),   # Dice 2*30/66 = 0.909 -> kept
    ]
    keep, rep = select_pseudo_labels(cands, 2, SelectOptions(min_score=0.5, min_agreement=0.7))
    assert keep == [True, False, False, True]
    assert rep["n_kept"] == 2 and rep["n_candidates"] == 4 and rep["n_kept_foreground"] == 2
    assert rep["reasons"] == {"kept": 2, "low_agreement": 1, "low_score": 1}
    assert rep["mean_score_kept"] == pytest.approx(0.75)
    # moving the thresholds moves the decisions
    keep, _ = select_pseudo_labels(cands, 2, SelectOptions(min_score=0.2, min_agreement=0.6))
    assert keep == [True, True, True, True]
    keep, _ = select_pseudo_labels(cands, 2, SelectOptions(min_score=0.95, min_agreement=0.0))
    assert keep == [False] * 4
    keep, _ = select_pseudo_labels(cands, 2, SelectOptions(min_score=0.0, min_agreement=0.95))
    assert keep == [True, True, False, False]


def test_empty_predictions():
    empty = np.zeros((10, 10), np.uint8)
    cands = [_cand(0, None, empty, empty, max_prob=0.1), _cand(1, None, empty, empty, max_prob=0.45),
             _cand(2, 0.0, empty, _mask(2, 8))]  # the refiner erased the model's object
    keep, rep = select_pseudo_labels(cands, 2, SelectOptions(empty_max_prob=0.35, min_score=0.0, min_agreement=0.5))
    assert keep == [True, False, False]
    assert rep["n_kept_empty"] == 1 and rep["reasons"] == {"kept_empty": 1, "low_agreement": 1, "uncertain_empty": 1}
    keep, _ = select_pseudo_labels(cands, 2, SelectOptions(keep_empty=False, min_score=0.0))
    assert keep == [False, False, False]


def test_case_unit():
    good = [_cand(i, 0.9, _mask(2, 8), group="good") for i in range(3)]
    bad = [_cand(0, 0.9, _mask(2, 8), group="bad"), _cand(1, 0.9, _mask(6, 8), group="bad")]  # stacked Dice 0.8
    keep, rep = select_pseudo_labels(good + bad, 2, SelectOptions(unit="case", min_agreement=0.85))
    assert keep == [True] * 3 + [False] * 2
    assert rep["n_units"] == 2 and rep["n_units_kept"] == 1 and rep["n_kept"] == 3
    keep, _ = select_pseudo_labels(good + bad, 2, SelectOptions(unit="case", min_agreement=0.75))
    assert all(keep)


def test_training_label_ignores_disagreeing_pixels():
    c = _cand(0, 0.9, _mask(3, 9))  # model: columns 2..7, refined: columns 3..8
    assert training_label(c, SelectOptions(disagree="refined")) is c.refined.label  # the paper's: every pixel
    taught = training_label(c)  # the default: ignore where the two disagree
    assert taught.dtype == np.uint8
    expect = np.where(c.model_label == c.refined.label, c.refined.label, IGNORE_INDEX)
    np.testing.assert_array_equal(taught, expect)
    assert (taught[2:8, 2] == IGNORE_INDEX).all() and (taught[2:8, 8] == IGNORE_INDEX).all()
    assert (taught[2:8, 3:8] == 1).all() and (taught[0] == 0).all()
