"""Evaluate a trained run on one of its splits or on another id list, on the original grid."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

from ..data.volumes import write_volume
from ..data.splits import read_id_list
from ..engine.rundir import RunDir
from ..errors import InputError
from ..inference.predictor import is_bundle, load_models, member_file, model_file
from .metrics import case_metrics
from .postprocessing import choose_postprocessing, postprocessing_dice
from .summary import summarise, write_metrics


def evaluate_run(run_dir: Path, split: str = "validation", ids_list: Path | None = None,
                 data_root: Path | None = None, overrides: list[str] = (), which: str = "auto",
                 save_predictions: bool = False, out: Path | None = None, progress=None,
                 ensemble: Sequence[Path] = (), nsd_tolerance: float | Sequence[float] | None = None,
                 determine_postprocessing: bool = False) -> dict:
    """Predict every case of ``split`` (or of ``ids_list``) with the run's selected model and write
    ``metrics.json`` / ``metrics.csv`` into ``out`` (default ``run_dir/eval_<split or list name>``).

    Cases of an external id list must not have been used by the run (labelled, unlabelled or
    validation): the command refuses them, so a test evaluation can never touch training data.
    Inference settings come from the run's ``config.yaml`` and ``overrides`` (e.g.
    ``inference.postprocess=largest_component``).
    ``ensemble``: more run folders, model files or bundles (``which`` picks a run folder's model)
    whose probabilities are averaged with the run's (:class:`MeanOfModels`); default ``out`` then
    ``run_dir/eval_<name>_mean_of_<N>`` (N models). A member's run must not have trained (labelled
    or unlabelled) on a held-out case evaluated here. ``nsd_tolerance`` (mm, one or one per
    foreground class): also the normalised surface Dice at that tolerance (:func:`case_metrics`).
    ``determine_postprocessing``: predict without post-processing and decide, as nnU-Net does,
    whether keeping the largest component of all foreground, then of each class, raises the mean
    Dice (:mod:`~semi3d.evaluation.postprocessing`; the decision is ``metrics.json``'s
    ``postprocessing``). Returns the summary (mean per class and metric; with
    ``determine_postprocessing`` also ``"postprocessing"``: the decision).
    """
    run = RunDir(run_dir).require()
    overrides = [*overrides, *([f"data.root={data_root}"] if data_root else []),
                 *(["inference.postprocess=none", "inference.largest_foreground_component=false"]
                   if determine_postprocessing else [])]
    cfg = run.load_config(overrides)
    run_splits = run.load_splits()
    options = dict(cfg.data.options)
    if ids_list is not None:
        ids = read_id_list(ids_list)
        if not ids:
            raise InputError(ids_list, "lists no case ids: nothing to evaluate")
        if "list_file" in options:
            options["list_file"] = str(ids_list)
        used = {i for s in ("labelled", "unlabelled", "validation") for i in run_splits[s]}
        clash = [i for i in ids if i in used]
        if clash:
            raise InputError(ids_list, f"case {clash[0]!r} was used by the run (training or validation); "
                             "a test list must be disjoint from them")
        name, held_out = Path(ids_list).stem, True
    else:
        if split not in run_splits:
            raise InputError("--split", f"unknown split {split!r}")
        ids, name, held_out = run_splits[split], split, split not in ("labelled", "unlabelled")
        if not ids:
            raise InputError(run.splits, f"the {split} split is empty")
    members = [model_file(run.path, which), *(_member(Path(m), which, ids if held_out else ()) for m in ensemble)]
    out = Path(out) if out else run.eval_dir(f"{name}_mean_of_{len(members)}" if ensemble else name)
    reader = run.data_reader(cfg, **options)
    predictor = load_models(members, cfg.device, cfg.precision, cfg.inference)
    k = predictor.num_classes
    per_case, effects, t0 = {}, {}, time.time()
    for i, cid in enumerate(ids):
        case = reader.load(cid)
        if case.label is None:
            raise InputError(case.source or cid, "has no label to evaluate against")
        pred = predictor.segment(case)
        per_case[cid] = case_metrics(pred, case.label, k, case.spacing, predictor.class_names[1:], nsd_tolerance)
        if determine_postprocessing:
            effects[cid] = postprocessing_dice(pred, case.label, k)
        if save_predictions:
            write_volume(out / "predictions" / f"{cid}.nii.gz", pred, affine=case.affine)
        if progress:
            progress(i + 1, len(ids), cid, per_case[cid])
    extra = {"run": str(run.path), "split": name, "model_step": predictor.step, "n_cases": len(ids),
             "largest_foreground_component": cfg.inference.largest_foreground_component,
             "postprocess": cfg.inference.postprocess,
             "largest_component_classes": cfg.inference.largest_component_classes,  # null: every class
             **({"ensemble": [str(m) for m in members]} if ensemble else {}),
             **({"nsd_tolerance_mm": nsd_tolerance} if nsd_tolerance is not None else {}),
             "eval_time_s": time.time() - t0}
    decision = {"postprocessing": choose_postprocessing(effects, list(per_case[ids[0]]))} if determine_postprocessing else {}
    write_metrics(out, per_case, {**extra, **decision})
    return {**summarise(per_case), **decision}


def _member(model: Path, which: str, held_out: Sequence[str]) -> Path:
    """The model file of an ensemble member (:func:`member_file`), after checking that its run
    (when there is one) did not train on a ``held_out`` case."""
    file = member_file(model, which)
    run = RunDir(model if model.is_dir() and not is_bundle(model) else model.parent.parent)
    if run.splits.is_file():
        splits = run.load_splits()
        clash = sorted(set(held_out) & (set(splits["labelled"]) | set(splits["unlabelled"])))
        if clash:
            raise InputError(model, f"its run trained on case {clash[0]!r}, which is evaluated here: "
                                    "an ensemble member must not have seen the evaluated cases")
    return file
