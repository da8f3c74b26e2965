"""Score a folder of predicted label maps against a folder of references, with the metrics of
``semi3d evaluate`` (nnU-Net's ``nnUNetv2_evaluate_folder``): to compare semi3d with another tool's
predictions (nnU-Net, MONAI) on the same cases under one definition of Dice and HD95.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Sequence

from ..data.nnunet import read_dataset_json
from ..data.readers import as_label, check_grid, check_ignore_value, index_cases
from ..data.volumes import SUFFIXES, h5_dataset, read_volume
from ..errors import InputError
from ..inference.predictor import PROBABILITIES
from .metrics import case_metrics
from .postprocessing import choose_postprocessing, postprocessing_dice
from .summary import summarise, write_metrics


def _label_files(folder: Path, what: str) -> dict[str, Path]:
    """``{case: file}`` for the volume files of ``folder`` (nnU-Net naming: ``<case><ending>``)."""
    if not folder.is_dir():
        raise InputError(folder, f"no such {what} folder")
    files = index_cases(folder, SUFFIXES)
    if not files:
        raise InputError(folder, f"no {what} files ({', '.join(SUFFIXES)})")
    return files


def evaluate_folder(pred_dir: Path, ref_dir: Path, dataset_json: Path | None = None, num_classes: int | None = None,
                    out: Path | None = None, subset: bool = False,
                    spacing: tuple[float, float, float] | None = None,
                    progress: Callable[[int, int, str], None] | None = None,
                    nsd_tolerance: float | Sequence[float] | None = None, determine_postprocessing: bool = False,
                    ignore_value: int | None = None) -> dict:
    """Dice / Jaccard / HD95 / ASD per case and foreground class of every prediction in ``pred_dir``
    against the reference of the same case in ``ref_dir`` (``<case><ending>`` in both, any format
    ``semi3d predict`` writes, an h5 file's ``label`` dataset when it has several; ``semi3d
    predict``'s ``<case>_prob`` files are skipped). Distances in voxels and in mm at the reference's
    spacing, as :func:`case_metrics`; ``spacing`` (X, Y, Z mm) for references that store none (h5,
    npy; their mm columns are in voxels without it). ``nsd_tolerance`` (mm, one or one per
    foreground class): also the normalised surface Dice at that tolerance.

    Classes: the ``labels`` of ``dataset_json`` (nnU-Net's ``dataset.json``; default
    ``ref_dir/../dataset.json`` when there, the nnU-Net layout ``labelsTr``/``labelsTs``), whose
    ``ignore`` label is left out of every metric, or ``num_classes`` K (names ``class1``...) with
    ``ignore_value`` the references' value of unannotated voxels (>= K; left out the same way).

    Every reference needs its prediction (``subset``: only the predicted cases are scored, as
    nnU-Net's ``--chill``) and every prediction its reference.
    Every file is read and checked (same case set, same grid as its reference, labels in 0..K-1)
    before ``metrics.json`` / ``metrics.csv`` are written into ``out`` (default ``pred_dir``), so bad
    input writes nothing. ``determine_postprocessing``: also decide, as nnU-Net does, whether keeping
    the largest component of all foreground, then of each class, would raise the mean Dice
    (:mod:`~semi3d.evaluation.postprocessing`; the decision is ``metrics.json``'s
    ``postprocessing``, the predictions are scored as they are).
    Returns the summary (mean per class and metric; with ``determine_postprocessing`` also
    ``"postprocessing"``: the decision)."""
    pred_dir, ref_dir = Path(pred_dir), Path(ref_dir)
    refs = _label_files(ref_dir, "reference")
    preds = {c: f for c, f in _label_files(pred_dir, "prediction").items()
             if not (c.endswith(PROBABILITIES) and c[: -len(PROBABILITIES)] in refs and c not in refs)}
    if dataset_json is None and num_classes is None and (ref_dir.parent / "dataset.json").is_file():
        dataset_json = ref_dir.parent / "dataset.json"
    if dataset_json is not None:
        if num_classes is not None:
            raise InputError("--num-classes", "give the classes once: a dataset.json or a number")
        if ignore_value is not None:
            raise InputError("--ignore-value", f"{dataset_json} names the ignore label; give --num-classes instead")
        class_names, ignore = read_dataset_json(Path(dataset_json))
        num_classes = len(class_names)
    elif num_classes is None:
        raise InputError(ref_dir, "no dataset.json beside this folder: give --dataset-json or --num-classes")
    else:
        class_names, ignore = [f"class{c}" for c in range(int(num_classes))], ignore_value
        check_ignore_value(ignore, int(num_classes), "--ignore-value")
    if num_classes < 2:
        raise InputError("--num-classes", f"must be >= 2 (background and a class), got {num_classes}")
    if subset:
        refs = {c: f for c, f in refs.items() if c in preds}
    for have, lack, folder, what, hint in ((refs, preds, pred_dir, "prediction", " (--subset: score only the predicted)"),
                                           (preds, refs, ref_dir, "reference", "")):
        if missing := sorted(set(have) - set(lack)):
            raise InputError(folder, f"no {what} for {len(missing)} case(s): {', '.join(missing[:5])}"
                                     + (" ..." if len(missing) > 5 else "") + hint)
    per_case, effects, t0 = {}, {}, time.time()
    for i, case in enumerate(sorted(refs)):
        ref_vol, pred_vol = (read_volume(f, h5_dataset(f, "label")) for f in (refs[case], preds[case]))
        check_grid(ref_vol, pred_vol, "prediction")
        ref = as_label(ref_vol, num_classes, ignore)
        pred = as_label(pred_vol, num_classes)
        per_case[case] = case_metrics(pred, ref, num_classes, ref_vol.spacing or spacing, class_names, nsd_tolerance)
        if determine_postprocessing:
            effects[case] = postprocessing_dice(pred, ref, num_classes)
        if progress:
            progress(i + 1, len(refs), case)
    decision = {"postprocessing": choose_postprocessing(effects, class_names[1:])} if determine_postprocessing else {}
    write_metrics(Path(out or pred_dir), per_case, {
        "predictions": str(pred_dir), "references": str(ref_dir), "n_cases": len(per_case),
        "classes": class_names[1:], "dataset_json": None if dataset_json is None else str(dataset_json),
        **({"nsd_tolerance_mm": nsd_tolerance} if nsd_tolerance is not None else {}),
        "eval_time_s": time.time() - t0, **decision})
    return {**summarise(per_case), **decision}
