"""Foreground-probability thresholds on trained two-class runs, scored on their validation split
(LA: the dev split, last 16 ids of train.list); nothing is retrained.

For two classes the argmax is the threshold 0.5 on the foreground probability. For each run folder
(its selected model, ``train.selection``) every validation case is predicted once, then segmented as
``p(foreground) > t`` for each ``--thresholds`` value, without (``none``) and with
(``largest_component``) keeping the largest connected component, and scored: mean Dice over the
cases and the predicted / true foreground volume summed over them (voxels under nnU-Net's ignore
label left out of both). The thresholds are compared on the split that scores them, so the best one
is chosen on it: an optimistic number, not a held-out one.

Writes ``results/<name>.json|md`` (command, commit, machine, per run and threshold: Dice, volume
ratio, per-case Dice).

    python benchmarks/threshold_la.py runs/bench/sparse_la_l8_e10t2_i1200_full \\
        runs/bench/sparse_la_l8_e10t2_i1200_s2_ignore --name threshold_sparse_la
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from semi3d.atomic import write_text
from semi3d.data.postprocess import keep_largest_component
from semi3d.engine.rundir import RunDir
from semi3d.errors import InputError
from semi3d.evaluation.metrics import overlap
from semi3d.evaluation.summary import table_markdown
from semi3d.inference.predictor import load_models, model_file
from semi3d.losses import without_ignored

from benchlib import command_line, git_commit, machine, script

HERE = Path(__file__).resolve().parent
MODES = ("none", "largest_component")


def scan(run: Path, thresholds: list[float], which: str = "auto") -> dict:
    """``{"run", "model", "n_cases", "rows": [{"threshold", "postprocess", "dice", "volume_ratio",
    "dice_per_case"}]}`` for a two-class run's validation split; ``which``: auto (the run's
    selection), best, final, or the name of a model file in the run's ``checkpoints/``, e.g. the
    ``model_ensemble.pt`` that ``inference_la.py`` writes."""
    rd = RunDir(run).require()
    cfg = rd.load_config()
    ids = rd.load_splits()["validation"]
    if not ids:
        raise InputError(rd.splits, "the validation split is empty: nothing to score")
    model = model_file(rd.path, which if which in ("auto", "best", "final") else str(rd.path / "checkpoints" / which))
    predictor = load_models([model], cfg.device, cfg.precision, cfg.inference)
    if predictor.num_classes != 2:
        raise InputError(run, f"has {predictor.num_classes} classes; a foreground threshold needs two")
    reader = rd.data_reader(cfg, **dict(cfg.data.options))
    keys = [(t, pp) for t in thresholds for pp in MODES]
    dice: dict = {k: {} for k in keys}
    volume = dict.fromkeys(keys, 0)
    true_volume = 0
    for cid in ids:
        case = reader.load(cid)
        if case.label is None:
            raise InputError(case.source or cid, "has no label to score against")
        fg = predictor(case)[1].numpy()  # (X, Y, Z) foreground probability on the case's grid
        for t in thresholds:
            mask = (fg > t).astype(np.uint8)
            for pp in MODES:
                pred, ref = without_ignored(keep_largest_component(mask, 2) if pp != "none" else mask, case.label)
                dice[(t, pp)][cid] = overlap(pred == 1, ref == 1)[0]
                volume[(t, pp)] += int(np.count_nonzero(pred == 1))
        true_volume += int(np.count_nonzero(case.label == 1))  # ignored voxels hold IGNORE_INDEX, not 1
    rows = [{"threshold": t, "postprocess": pp, "dice": float(np.mean(list(dice[(t, pp)].values()))),
             "volume_ratio": volume[(t, pp)] / max(true_volume, 1), "dice_per_case": dice[(t, pp)]}
            for t, pp in keys]
    return {"run": rd.path.name, "model": str(model), "n_cases": len(ids), "rows": rows}


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+", type=Path, help="trained two-class run folders")
    ap.add_argument("--thresholds", nargs="+", type=float, default=[0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])
    ap.add_argument("--model", default="auto",
                    help="auto (the run's selection) / best / final / a model file's name in each run's checkpoints/")
    ap.add_argument("--name", default="threshold_la")
    ap.add_argument("--results", default=str(HERE / "results"))
    a = ap.parse_args(argv)
    if not all(0 < t < 1 for t in a.thresholds):
        raise InputError("--thresholds", f"each must lie strictly between 0 and 1, got {a.thresholds}")
    runs = [scan(r, sorted(a.thresholds), a.model) for r in a.runs]
    command, commit, out = command_line(__file__, argv), git_commit(), Path(a.results)
    write_text(out / f"{a.name}.json", json.dumps({"command": command, "commit": commit, "machine": machine(),
                                                   "runs": runs}, indent=1))
    flat = [{"run": r["run"], "threshold": row["threshold"], "postprocess": row["postprocess"], "dice": row["dice"],
             "volume": row["volume_ratio"]} for r in runs for row in r["rows"]]
    cols = ["run", "threshold", "postprocess", "dice", "volume"]
    write_text(out / f"{a.name}.md", f"# {a.name}\n\n`{command}` (commit {commit})\n\n"
                                      "Validation split of each run; `dice` = mean over its cases, `volume` = "
                                      "predicted / true foreground voxels summed over them; the threshold is on "
                                      "the foreground probability (0.5 = the argmax).\n\n" + table_markdown(flat, cols))
    print(table_markdown(flat, cols))
    return runs


if __name__ == "__main__":
    script(main)
