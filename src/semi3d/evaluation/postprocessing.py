"""Decide the largest-component post-processing from a run's own predictions, per class, as
nnU-Net's ``determine_postprocessing`` does on its cross-validation results.

``semi3d evaluate RUN --determine-postprocessing`` predicts the split without post-processing
(``metrics.json`` scores those label maps; ``semi3d evaluate-folder ... --determine-postprocessing``
takes any tool's predictions as they are) and, for every foreground class c, also scores the
prediction with only class c's largest 26-connected component kept
(:func:`~semi3d.data.postprocess.keep_largest_component` for ``[c]``). A class keeps the
post-processing when it raises that class's mean Dice over the cases (strictly; a tie keeps the
prediction as it is). ``metrics.json``'s ``postprocessing`` entry holds the per-class means and
the ``--set`` values that apply the decision to ``predict`` / ``evaluate`` (or go into the
config's ``inference`` block). Choosing on the validation split makes its scores optimistic, as
for any choice made on it.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ..data.postprocess import keep_largest_component
from ..losses import without_ignored
from .metrics import overlap

__all__ = ["choose_largest_component", "format_decision", "largest_component_dice"]


def largest_component_dice(pred: np.ndarray, ref: np.ndarray, num_classes: int) -> dict[int, tuple[float, float]]:
    """For each foreground class c of the label maps ``pred`` and ``ref`` (X, Y, Z; ignore-label
    voxels of ``ref`` left out as in :func:`~semi3d.evaluation.metrics.case_metrics`): class c's
    Dice as predicted and with only its largest component kept, ``{c: (dice, dice_largest)}``."""
    pred, ref = without_ignored(np.asarray(pred), np.asarray(ref))
    out = {}
    for c in range(1, num_classes):
        kept = keep_largest_component(pred, num_classes, [c])
        out[c] = (overlap(pred == c, ref == c)[0], overlap(kept == c, ref == c)[0])
    return out


def choose_largest_component(per_case: Mapping[str, Mapping[int, tuple[float, float]]],
                             class_names: Sequence[str]) -> dict:
    """The decision from :func:`largest_component_dice` of every case: per foreground class its mean
    Dice without and with the largest component (``class_names``: the K-1 foreground names), whether
    it keeps it, and the ``inference`` settings (``postprocess``, ``largest_component_classes``) with
    their ``--set`` form."""
    classes, keep = {}, []
    for c, name in enumerate(class_names, start=1):
        none = float(np.mean([d[c][0] for d in per_case.values()]))
        largest = float(np.mean([d[c][1] for d in per_case.values()]))
        classes[name] = {"class": c, "dice_none": none, "dice_largest_component": largest, "keep": largest > none}
        if largest > none:
            keep.append(c)
    if not keep:
        inference = {"postprocess": "none", "largest_component_classes": None}
        sets = ["inference.postprocess=none"]
    else:
        every = len(keep) == len(class_names)
        inference = {"postprocess": "largest_component", "largest_component_classes": None if every else keep}
        sets = ["inference.postprocess=largest_component",
                f"inference.largest_component_classes={'null' if every else keep}"]
    return {"n_cases": len(per_case), "classes": classes, "inference": inference, "set": sets}



def format_decision(decision: Mapping) -> str:
    """The decision as lines for the terminal: each class's mean Dice without / with its largest
    component, then the ``--set`` values."""
    lines = [f"largest component ({decision['n_cases']} cases): class: mean Dice as predicted -> largest component kept"]
    for name, c in decision["classes"].items():
        none, largest = 100 * c["dice_none"], 100 * c["dice_largest_component"]
        lines.append(f"  {name}: {none:.2f} -> {largest:.2f} ({largest - none:+.3f}: {'keep' if c['keep'] else 'leave'})")
    return "\n".join(lines + ["apply with: " + " ".join(f"--set {s}" for s in decision["set"])])
