"""Knowledge mining on LA, slice-wise, with the weight-free random-walker refiner.

Protocol: labelled = the first N ids of ``train.list``, dev = its last 16 ids (never trained on),
unlabelled = the rest (their labels are hidden from training and used only to score the
pseudo-labels). Half resolution (``scale 0.5``), axial slices (Z). A small U-Net++ is trained on
the labelled slices (round 0), then 3 mining rounds: predict the unlabelled slices -> prompts ->
random-walker refinement -> selection -> fine-tuning on labelled + pseudo-labelled slices. For
every round: Dice / HD95 (voxels) on the dev split on the original grid, how many pseudo-labels
were kept and their Dice against the hidden ground truth. Budget: about 10-15 minutes per N on the
2-core development CPU (see BUDGET), so both N fit in about 30 minutes.

    PYTHONPATH=src .venv/bin/python benchmarks/mine_la.py                 # N = 4 and 8
    PYTHONPATH=src .venv/bin/python benchmarks/mine_la.py --labelled 4
    PYTHONPATH=src .venv/bin/python benchmarks/mine_la.py --smoke --results /tmp/r   # tiny synthetic check

Writes ``benchmarks/results/mine_la_l<N>.json`` and ``.md`` (``--results`` elsewhere).
"""
from __future__ import annotations

import argparse
import copy
import json
import shlex
import sys
import tempfile
from pathlib import Path

from semi3d.atomic import write_text
from semi3d.mining.config import load_mining_config

# benchmarks/ (this script's folder) is sys.path[0] when run; the tests put it there
from benchlib import git_commit, machine, merge_tree, mine, mining_round_row

HERE = Path(__file__).resolve().parent
LA = HERE.parent.parent / "shared" / "data" / "LA"

BUDGET = {  # the LA run; --set key=value overrides any of it
    "seed": 0,
    "device": "cpu",
    "data": {
        "format": "uamt_h5",
        "root": str(LA),
        "options": {"list_file": str(LA / "train.list")},
        "num_classes": 2,
        "class_names": ["background", "left_atrium"],
        "splits": {"labelled": {"first": 4}, "validation": {"last": 16}, "unlabelled": "rest"},
        "preprocess": {"scale": 0.5, "normalisation": "zscore"},
    },
    "axis": 2,
    "model": {"name": "unetpp2d", "options": {"widths": [8, 16, 32, 64]}},
    "train": {"iterations": 600, "finetune_iterations": 200, "batch_size": 8, "patch": None, "lr": 0.002,
              "finetune_lr": 0.001, "pseudo_fraction": 0.5, "fg_fraction": 0.5},
    "rounds": 3,
    "refiner": {"name": "random_walker", "options": {"beta": 130, "smooth_sigma": 1.0}},
    "prompts": {"n_positive": 3, "n_negative": 4, "margin": 0.05, "margin_px": 2, "jitter": 0.05},
    "iterate": {"rounds": 2, "tol": 0.01, "feed_mask": True, "feed_model_mask": True},
    "select": {"unit": "slice", "min_score": 0.5, "min_agreement": 0.8, "keep_empty": True, "empty_max_prob": 0.35},
    "eval": {"original_grid": True, "hd95": True},
    "save_pseudo": "nii.gz",
}

SMOKE = {  # tiny synthetic dataset in the same layout, a few seconds
    "data": {"splits": {"validation": {"last": 2}}, "preprocess": {"scale": 1.0}},
    "model": {"options": {"widths": [4, 8]}},
    "train": {"iterations": 20, "finetune_iterations": 5, "batch_size": 4, "predict_batch": 16},
    "rounds": 2,
    "eval": {"hd95": False},
}


def _smoke_dataset(folder: Path) -> Path:
    from semi3d.data.synthetic import write_dataset

    # every case labelled: the splits hide the unlabelled ones' labels, kept only to score pseudo-labels
    return write_dataset(folder / "LA_synthetic", n_labelled=7, n_unlabelled=0, seed=0, shape=(24, 24, 8),
                         num_classes=2, format="uamt_h5", noise=0.2)


def _markdown(result: dict) -> str:
    cols = ["round", "dev_dice", "dev_hd95", "n_kept", "n_candidates", "pseudo_dice_kept", "model_dice_kept",
            "pseudo_case_dice", "train_s", "mine_s"]

    def fmt(v):
        return "" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)

    lines = [f"# {result['name']}", "", f"`{result['command']}` (commit {result['commit']})", "",
             f"{'Synthetic smoke data' if result['smoke'] else 'LA'}, {result['labelled']} labelled, dev = last "
             f"{result['dev']} ids of train.list, {result['unlabelled']} unlabelled cases mined slice-wise (axis "
             f"{result['config']['axis']}, preprocess scale {result['config']['data']['preprocess']['scale']}) "
             "with the "
             f"`{result['refiner']}` refiner and a `{result['model']}` small model; "
             "round 0 = small model on labelled data only. Dev Dice / HD95 (voxels) on the original grid; "
             "pseudo-label Dice against the hidden ground truth, pooled over the kept slices "
             "(`model_dice_kept`: the small model's own masks on the same slices; `pseudo_case_dice`: "
             "all refined slices, per case).", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in result["rounds"]:
        lines.append("| " + " | ".join(fmt(r.get(c)) for c in cols) + " |")
    lines += ["", f"Wall time: {result['wall_s']:.0f} s ({result['machine']['threads']} threads, "
                  f"torch {result['machine']['torch']})."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--labelled", type=int, nargs="+", default=None, help="default: 4 8 (2 with --smoke)")
    ap.add_argument("--set", action="append", default=[], help="key=value override of the run config")
    ap.add_argument("--runs", default="runs/bench_mine")
    ap.add_argument("--results", default=None, help="default: benchmarks/results (a temp folder with --smoke)")
    ap.add_argument("--smoke", action="store_true", help="tiny synthetic dataset and budget: checks the pipeline")
    a = ap.parse_args(argv)
    argv_used = list(argv) if argv is not None else sys.argv[1:]
    commit = git_commit()
    tmp = None
    tree = copy.deepcopy(BUDGET)
    if a.smoke:
        tmp = Path(tempfile.mkdtemp(prefix="mine_la_smoke_"))
        root = _smoke_dataset(tmp)
        tree = merge_tree(tree, SMOKE)
        tree["data"]["root"] = str(root)
        tree["data"]["options"]["list_file"] = str(root / "train.list")
    results_dir = Path(a.results) if a.results else (tmp / "results" if a.smoke else HERE / "results")
    runs = Path(a.runs) if not a.smoke or a.runs != "runs/bench_mine" else tmp / "runs"  # type: ignore[operator]
    out = []
    for n in a.labelled or ([2] if a.smoke else [4, 8]):
        name = f"mine_la_l{n}"
        t = merge_tree(tree, {"name": name, "output_dir": str(runs), "data": {"splits": {"labelled": {"first": n}}}})
        cfg = load_mining_config(tree=t, overrides=a.set)
        summary = mine(cfg)  # resumes an interrupted run
        result = {
            "name": name, "command": "python " + " ".join(shlex.quote(x) for x in [sys.argv[0], *argv_used]),
            "commit": commit, "smoke": a.smoke, "labelled": summary["splits"]["labelled"],
            "unlabelled": summary["splits"]["unlabelled"], "dev": summary["splits"]["validation"],
            "refiner": summary["refiner"], "model": summary["model"],
            "rounds": [mining_round_row(r) for r in summary["rounds"]],
            "selection": [r.get("reasons") for r in summary["rounds"][1:]],
            "dev_dice_per_round": [r["dev_dice"] for r in summary["rounds"]],
            "wall_s": summary["wall_s"], "run_dir": summary["run_dir"],
            "config": cfg.model_dump(mode="json"),
            "machine": machine(),
        }
        results_dir.mkdir(parents=True, exist_ok=True)
        write_text(results_dir / f"{name}.json", json.dumps(result, indent=1))
        write_text(results_dir / f"{name}.md", _markdown(result))
        print(_markdown(result))
        out.append(result)
    return out


if __name__ == "__main__":
    main()
