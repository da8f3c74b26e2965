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
block); ``semi3d postprocess PREDICTIONS -o OUT --decision metrics.json`` applies it to a folder of
label files, any tool's (:func:`apply_postprocessing`, nnU-Net's ``apply_postprocessing``).
Choosing on the validation split makes its scores optimistic, as for any choice made on it.
"""
from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
from pydantic import ValidationError

from ..config import InferenceConfig, parse_overrides
from ..data.postprocess import keep_largest_component, keep_largest_foreground, postprocess_label
from ..data.readers import as_label, index_cases
from ..data.volumes import SUFFIXES, h5_dataset, read_volume, write_volume
from ..errors import InputError
from ..inference.predictor import PROBABILITIES
from ..losses import without_ignored
from .metrics import overlap

__all__ = ["apply_postprocessing", "choose_postprocessing", "format_decision", "postprocessing_dice",
           "postprocessing_settings"]

VARIANTS = ("none", "class", "foreground", "foreground_class")


def postprocessing_dice(pred: np.ndarray, ref: np.ndarray, num_classes: int) -> dict[str, dict[int, float]]:
    """Each foreground class's Dice of the label map ``pred`` against ``ref`` (X, Y, Z; ignore-label
    voxels of ``ref`` left out as in :func:`~semi3d.evaluation.metrics.case_metrics`) under each
    post-processing: ``{"none": {c: dice}, "class": ..., "foreground": ..., "foreground_class": ...}``
    = as predicted, every class's largest component kept, the largest component of all foreground
    together kept, and that followed by every class's largest component. The components are those
    of the prediction as it is (ignored voxels included), as applying the post-processing finds
    them; only the scoring leaves the ignored voxels out. (Keeping class c's largest component
    changes no other class, so all classes are kept at once.)"""
    pred, ref = np.asarray(pred), np.asarray(ref)
    merged = keep_largest_foreground(pred)
    maps = {"none": pred, "class": keep_largest_component(pred, num_classes), "foreground": merged,
            "foreground_class": keep_largest_component(merged, num_classes)}
    scored = {v: without_ignored(m, ref) for v, m in maps.items()}  # once per map, not per class
    return {v: {c: overlap(p == c, r == c)[0] for c in range(1, num_classes)} for v, (p, r) in scored.items()}


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


FIELDS = ("largest_foreground_component", "postprocess", "largest_component_classes")  # what a decision sets


def postprocessing_settings(settings: Sequence[str] = (), decision: Path | None = None) -> InferenceConfig:
    """The post-processing to apply: the ``inference`` settings of ``decision`` (a ``metrics.json``
    written by ``--determine-postprocessing``), then ``settings`` on top (``inference.<field>=<YAML
    value>``, as the decision prints them; the fields of :data:`FIELDS` only)."""
    fields: dict = {}
    if decision is not None:
        try:
            fields.update(json.loads(Path(decision).read_text())["postprocessing"]["inference"])
        except (OSError, ValueError, KeyError, TypeError):
            raise InputError(decision, "not a metrics.json with a post-processing decision "
                                       "(evaluate / evaluate-folder --determine-postprocessing)") from None
    allowed = [f"inference.{f}" for f in FIELDS]
    for key, value in parse_overrides(list(settings)):
        if key not in allowed:
            raise InputError(f"--set {key}", f"postprocess sets {', '.join(allowed)} only")
        fields[key.removeprefix("inference.")] = value
    if not fields:
        raise InputError("postprocess", "nothing to apply: give --decision METRICS_JSON or --set inference.<field>=...")
    try:
        return InferenceConfig.model_validate({k: v for k, v in fields.items() if k in FIELDS})
    except ValidationError as e:
        raise InputError(decision if not settings else "--set", "; ".join(
            f"inference.{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())) from None


def apply_postprocessing(pred_dir: Path, out_dir: Path, inference: InferenceConfig,
                         progress: Callable[[int, int, str], None] | None = None) -> list[Path]:
    """Post-process every label file of ``pred_dir`` (``<case><ending>``, any format ``semi3d
    predict`` writes, an h5 file's ``label`` dataset; ``<case>_prob`` files skipped) as ``inference``
    says (:func:`~semi3d.data.postprocess.postprocess_label`, K = the file's largest label + 1) and
    write it under the same name into ``out_dir`` with the file's affine. The predictions are only
    read; ``out_dir`` must be another folder. The files are written into a hidden folder beside
    ``out_dir`` and moved into place when every one is done, so bad input writes nothing.
    ``progress(i, n, case)`` after each file. Returns the files written."""
    pred_dir, out_dir = Path(pred_dir), Path(out_dir)
    if not pred_dir.is_dir():
        raise InputError(pred_dir, "no such prediction folder")
    files = index_cases(pred_dir, SUFFIXES)
    files = {c: f for c, f in files.items() if not (c.endswith(PROBABILITIES) and c[: -len(PROBABILITIES)] in files)}
    if not files:
        raise InputError(pred_dir, f"no label files ({', '.join(SUFFIXES)})")
    if out_dir.resolve() == pred_dir.resolve():
        raise InputError(out_dir, "is the prediction folder: write the post-processed files into another one")
    tmp = out_dir.parent / f".{out_dir.name}.postprocess.tmp{os.getpid()}"
    try:
        for i, (case, f) in enumerate(files.items()):
            vol = read_volume(f, h5_dataset(f, "label"))
            if vol.array.ndim != 3:
                raise InputError(f, f"not a label map (X, Y, Z): shape {tuple(vol.array.shape)}")
            label = as_label(vol, None)
            k = max(int(label.max(initial=0)) + 1, 2)
            write_volume(tmp / f.name, postprocess_label(label, k, inference.postprocess, inference.largest_component_classes,
                                                         inference.largest_foreground_component), affine=vol.affine)
            if progress:
                progress(i + 1, len(files), case)
        out_dir.mkdir(parents=True, exist_ok=True)
        for f in files.values():
            os.replace(tmp / f.name, out_dir / f.name)
        return [out_dir / f.name for f in files.values()]
    except OSError as e:
        raise InputError(out_dir, f"cannot write: {e.strerror or e}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
