"""Pseudo-label selection: keep a refined slice (or case) when the refiner is confident and agrees
with the small model.

A slice with foreground in the small model's prediction or in the refined label is kept when

- the refiner's score (:attr:`RefinedSlice.score`) is ``>= min_score``, and
- the agreement, Dice between the small model's label and the refined label (mean over the
  foreground classes present in either), is ``>= min_agreement``.

A slice where the small model predicts no foreground (nothing to prompt) is kept as an
all-background pseudo-label when ``keep_empty`` and the model's largest foreground probability on
it is ``<= empty_max_prob`` (a confident "nothing here").

With ``unit="case"`` the decision is per case (group of slices) and applies to all its slices:
score = area-weighted mean of its non-empty slices' scores, agreement = Dice of the stacked labels
(over the whole case), and a case without any foreground follows the empty rule with the largest
probability over its slices.

What a kept candidate teaches (:func:`training_label`): with ``disagree="ignore"`` (the default)
the pixels where the refined label and the small model's label agree, every other pixel
:data:`~semi3d.losses.IGNORE_INDEX` (in no loss): only what both sources say becomes a
pseudo-label. With ``disagree="refined"`` (the paper's) its refined label, every pixel. LiteMedSAM
mining on Kvasir-SEG scored higher with ``ignore`` on all six runs measured (25 / 50 / 75 % labels,
two seeds each; ``benchmarks/README.md``).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import Field

from ..losses import IGNORE_INDEX
from .base import Strict
from .iterative import RefinedSlice, label_dice

__all__ = ["Candidate", "SelectOptions", "select_pseudo_labels", "training_label"]


class SelectOptions(Strict):
    """Thresholds of :func:`select_pseudo_labels` (see the module docstring)."""

    unit: Literal["slice", "case"] = "slice"
    min_score: float = Field(0.5, ge=0)
    min_agreement: float = Field(0.7, ge=0, le=1)
    keep_empty: bool = True
    empty_max_prob: float = Field(0.35, ge=0, le=1)
    disagree: Literal["refined", "ignore"] = "ignore"  # pixels where refiner and model differ (training_label)


@dataclass
class Candidate:
    """One unlabelled slice after refinement.

    Attributes:
        id: slice id; group: its case (or image) id.
        model_label: ``(H, W)`` the small model's label map.
        refined: the refinement result.
        max_fg_prob: the small model's largest foreground probability on the slice.
    """

    id: str
    group: str
    model_label: np.ndarray
    refined: RefinedSlice
    max_fg_prob: float

    @property
    def empty(self) -> bool:
        return self.refined.score is None


def training_label(candidate: Candidate, options: SelectOptions | None = None) -> np.ndarray:
    """The ``(H, W)`` uint8 label a kept candidate is fine-tuned on: with ``options.disagree ==
    "ignore"`` (the default) its refined label where it equals the small model's and
    :data:`~semi3d.losses.IGNORE_INDEX` elsewhere; with ``"refined"`` the refined label."""
    o = options or SelectOptions()
    label = candidate.refined.label
    if o.disagree == "refined":
        return label
    return np.where(label == candidate.model_label, label, IGNORE_INDEX).astype(np.uint8)


def _decide(score: float | None, agreement: float, max_prob: float, empty: bool, o: SelectOptions) -> str:
    if empty:
        return "kept_empty" if o.keep_empty and max_prob <= o.empty_max_prob else "uncertain_empty"
    if score is None or score < o.min_score:
        return "low_score"
    if agreement < o.min_agreement:
        return "low_agreement"
    return "kept"


def select_pseudo_labels(candidates: list[Candidate], num_classes: int,
                         options: SelectOptions | None = None) -> tuple[list[bool], dict]:
    """Which candidates become pseudo-labels.

    Returns:
        ``(keep, report)``: one bool per candidate and ``{"n_candidates", "n_kept", "n_kept_empty",
        "n_kept_foreground", "reasons": {reason: count}, "mean_score_kept", "unit", "n_units",
        "n_units_kept"}``; reasons are ``kept``, ``kept_empty``, ``low_score``, ``low_agreement``,
        ``uncertain_empty`` (counted per unit: slices, or cases for ``unit="case"``).
    """
    o = options or SelectOptions()
    reasons: Counter = Counter()
    keep = [False] * len(candidates)
    if o.unit == "slice":
        for i, c in enumerate(candidates):
            agree = label_dice(c.model_label, c.refined.label, num_classes)
            why = _decide(c.refined.score, agree, c.max_fg_prob, c.empty, o)
            reasons[why] += 1
            keep[i] = why.startswith("kept")
        n_units = len(candidates)
    else:
        groups: dict[str, list[int]] = {}
        for i, c in enumerate(candidates):
            groups.setdefault(c.group, []).append(i)
        for idx in groups.values():
            cs = [candidates[i] for i in idx]
            model = np.stack([c.model_label for c in cs])
            refined = np.stack([c.refined.label for c in cs])
            scored = [(c.refined.score, float((c.refined.label > 0).sum())) for c in cs if not c.empty]
            empty = not scored
            score = None
            if scored:
                s, w = np.array(scored, dtype=float).T
                score = float(np.average(s, weights=w)) if w.sum() > 0 else float(s.mean())
            agree = label_dice(model, refined, num_classes)
            why = _decide(score, agree, max(c.max_fg_prob for c in cs), empty, o)
            reasons[why] += 1
            for i in idx:
                keep[i] = why.startswith("kept")
        n_units = len(groups)
    kept = [c for c, k in zip(candidates, keep) if k]
    kept_scores = [c.refined.score for c in kept if c.refined.score is not None]
    report = {
        "unit": o.unit, "n_units": n_units, "n_units_kept": reasons["kept"] + reasons["kept_empty"],
        "n_candidates": len(candidates), "n_kept": len(kept),
        "n_kept_empty": sum(1 for c in kept if not (c.refined.label > 0).any()),
        "n_kept_foreground": sum(1 for c in kept if (c.refined.label > 0).any()),
        "reasons": dict(sorted(reasons.items())),
        "mean_score_kept": float(np.mean(kept_scores)) if kept_scores else None,
    }
    return keep, report
