"""Decide the largest-component post-processing from a run's own predictions, as nnU-Net's
``determine_postprocessing`` does on its cross-validation results.

``semi3d evaluate RUN --determine-postprocessing`` predicts the split without post-processing
(``metrics.json`` scores those label maps; ``semi3d evaluate-folder ... --determine-postprocessing``
takes any tool's predictions as they are) and decides in nnU-Net's two steps:

1. With several foreground classes: keep only the largest 26-connected component of all foreground
   classes together (:func:`~semi3d.data.postprocess.keep_largest_foreground`) when that raises the
   mean over the foreground classes of their mean Dice (strictly) and lowers no class's mean Dice.
2. Then, for every foreground class c, on the maps of step 1 (as predicted when step 1 is left):
   keep only class c's largest component (:func:`~semi3d.data.postprocess.keep_largest_component`
   for ``[c]``) when that raises class c's mean Dice over the cases (strictly; a tie leaves it).

With one foreground class the two steps are the same maps; it is decided as step 2 alone.
``metrics.json``'s ``postprocessing`` entry holds the mean Dice of each step and the ``--set``
values that apply the decision to ``predict`` / ``evaluate`` (or go into the config's ``inference``
block). Choosing on the validation split makes its scores optimistic, as for any choice made on it.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ..data.postprocess import keep_largest_component, keep_largest_foreground
from ..losses import without_ignored
from .metrics import overlap

__all__ = ["choose_postprocessing", "format_decision", "postprocessing_dice"]

VARIANTS = ("none", "class", "foreground", "foreground_class")


def postprocessing_dice(pred: np.ndarray, ref: np.ndarray, num_classes: int) -> dict[str, dict[int, float]]:
    """Each foreground class's Dice of the label map ``pred`` against ``ref`` (X, Y, Z; ignore-label
    voxels of ``ref`` left out as in :func:`~semi3d.evaluation.metrics.case_metrics`) under each
    post-processing: ``{"none": {c: dice}, "class": ..., "foreground": ..., "foreground_class": ...}``
    = as predicted, every class's largest component kept, the largest component of all foreground
    together kept, and that followed by every class's largest component. (Keeping class c's largest
    component changes no other class, so all classes are kept at once.)"""
    pred, ref = without_ignored(np.asarray(pred), np.asarray(ref))
    merged = keep_largest_foreground(pred)
    maps = {"none": pred, "class": keep_largest_component(pred, num_classes), "foreground": merged,
            "foreground_class": keep_largest_component(merged, num_classes)}
    return {v: {c: overlap(m == c, ref == c)[0] for c in range(1, num_classes)} for v, m in maps.items()}


def choose_postprocessing(per_case: Mapping[str, Mapping[str, Mapping[int, float]]],
                          class_names: Sequence[str]) -> dict:
    """The decision (module docstring) from :func:`postprocessing_dice` of every case
    (``class_names``: the K-1 foreground names): ``foreground`` (step 1, None with one class: the
    mean foreground Dice without / with, ``keep``, the classes it would make ``worse``), ``classes``
    (step 2, per class: ``dice_none`` as predicted, ``dice_before`` after step 1,
    ``dice_largest_component`` with its largest component kept, ``keep``), the ``inference``
    settings and their ``--set`` form."""
    cs = range(1, len(class_names) + 1)
    mean = {v: {c: float(np.mean([d[v][c] for d in per_case.values()])) for c in cs} for v in VARIANTS}
    first, foreground = "none", None
    if len(class_names) > 1:
        before, after = (float(np.mean(list(mean[v].values()))) for v in ("none", "foreground"))
        worse = [class_names[c - 1] for c in cs if mean["foreground"][c] < mean["none"][c]]
        foreground = {"dice_none": before, "dice_largest_component": after, "keep": after > before and not worse,
                      "worse": worse}
        first = "foreground" if foreground["keep"] else "none"
    then = "foreground_class" if first == "foreground" else "class"
    classes = {name: {"class": c, "dice_none": mean["none"][c], "dice_before": mean[first][c],
                      "dice_largest_component": mean[then][c], "keep": mean[then][c] > mean[first][c]}
               for c, name in enumerate(class_names, start=1)}
    keep = [c["class"] for c in classes.values() if c["keep"]]
    merged = first == "foreground"
    sets = [f"inference.largest_foreground_component={str(merged).lower()}"]
    if not keep:
        inference = {"postprocess": "none", "largest_component_classes": None}
        sets.append("inference.postprocess=none")
    else:
        every = len(keep) == len(class_names)
        inference = {"postprocess": "largest_component", "largest_component_classes": None if every else keep}
        sets += ["inference.postprocess=largest_component",
                 f"inference.largest_component_classes={'null' if every else keep}"]
    return {"n_cases": len(per_case), "foreground": foreground, "classes": classes,
            "inference": {"largest_foreground_component": merged, **inference}, "set": sets}


def format_decision(decision: Mapping) -> str:
    """The decision as lines for the terminal: step 1's mean foreground Dice without / with (with
    several classes), each class's mean Dice before / after step 2, then the ``--set`` values."""
    lines = [f"largest component ({decision['n_cases']} cases):"]
    fg = decision.get("foreground")
    if fg:
        why = "keep" if fg["keep"] else "leave" + (f", lowers {', '.join(fg['worse'])}" if fg["worse"] else "")
        lines.append(f"  all foreground classes as one region: mean Dice {_change(fg, why)}")
    before = "after the foreground region's" if fg and fg["keep"] else "as predicted"
    lines.append(f"  per class: mean Dice {before} -> its own largest component kept")
    for name, c in decision["classes"].items():
        lines.append(f"    {name}: {_change({**c, 'dice_none': c['dice_before']}, 'keep' if c['keep'] else 'leave')}")
    return "\n".join(lines + ["apply with: " + " ".join(f"--set {s}" for s in decision["set"])])


def _change(d: Mapping, verdict: str) -> str:
    none, largest = 100 * d["dice_none"], 100 * d["dice_largest_component"]
    return f"{none:.2f} -> {largest:.2f} ({largest - none:+.3f}: {verdict})"
