"""Knowledge mining on LA, slice-wise: a refiner (random walker, LiteMedSAM, or the small model's own
masks) against the labelled-only small model at the same total iterations.

Protocol: labelled = the first N ids of ``train.list``, dev = its last 16 ids (never trained on),
unlabelled = the rest (their labels are hidden from training and used only to score the
pseudo-labels). Half resolution (``scale 0.5``), axial slices (Z). A small 2D model (``--small``:
the paper's U-Net++ from scratch, or a U-Net on ImageNet MobileNetV2) is trained on the labelled
slices (round 0), then 3 mining rounds: predict the unlabelled slices -> prompts -> refinement ->
selection -> fine-tuning on labelled + pseudo-labelled slices. Variants (``--variants``):

- ``random_walker``: the weight-free refiner (points + box, 2 refinement passes);
- ``litemedsam``: LiteMedSAM with one box per component of the model's mask, as on Kvasir
  (``mine_kvasir.py``); image embeddings are cached on disk in ``<runs>/la_embeddings`` and shared
  by every run (about 1.2 s per slice once on the 2-core CPU);
- ``identity``: self-training on the model's own masks, the same selection and fine-tuning;
- ``labelled``: no mining, the mining runs' total iterations (600 + 3 x 200) in one schedule;
- ``schedule``: the mining runs' exact schedule (600, then 3 x 200 fine-tuning iterations) with no
  unlabelled slice (``unlabelled_max: 0``), so only the labelled slices: what the rounds' learning
  rate restarts give without any pseudo-label (on Kvasir this alone moved the dev Dice by -5 to +7).

For every round: Dice / HD95 (voxels) of the small model on the dev split on the original grid,
how many pseudo-labels were kept and their Dice against the hidden ground truth.

The 3D route (the issue's "mined slices stacked into pseudo-labelled volumes, then a 3D model"):
``--tag _case3d --set dataset_3d.enabled=true --set select.unit=case`` writes, after the last round, the real +
accepted pseudo-labelled cases as a UA-MT dataset in ``<run>/pseudo/round3/dataset`` (see
``semi3d.mining.export``); train and score a 3D model on it with ``run_la.py``::

    D=runs/bench_mine/mine_la_mbv2_litemedsam_case3d_l8_s0/pseudo/round3/dataset
    PYTHONPATH=src .venv/bin/python benchmarks/run_la.py configs/la_supervised_cpu.yaml --name NAME \
        --set data.root=$D --set data.options.list_file=$D/train.list \
        --set data.splits.labelled.list=$D/labelled.list --set data.splits.labelled.first=null \
        --set data.splits.validation.list=$D/dev.list

(``labelled.first=null``: the config's ``first: 8`` would otherwise keep only the first 8 ids of the list.)

Commands::

    PYTHONPATH=src .venv/bin/python benchmarks/mine_la.py                 # random walker, N = 4 and 8
    PYTHONPATH=src .venv/bin/python benchmarks/mine_la.py --small mbv2 --variants labelled identity litemedsam
    PYTHONPATH=src .venv/bin/python benchmarks/mine_la.py --smoke --results /tmp/r   # tiny synthetic check

Writes ``benchmarks/results/<run name>.json`` and ``.md`` (``--results`` elsewhere): ``mine_la_l<N>``
for the random walker with the U-Net++ and seed 0 (the first benchmark), else
``mine_la_[<small>_]<variant><tag>_l<N>_s<seed>``.
"""
from __future__ import annotations

import argparse
import copy
import itertools
import json
import tempfile
from pathlib import Path

from semi3d.atomic import write_text
from semi3d.mining.config import load_mining_config

# benchmarks/ (this script's folder) is sys.path[0] when run; the tests put it there
from benchlib import (SMALL_MODELS, command_line, git_commit, machine, merge_tree, mine, mining_round_row,
                      mining_variant, script, small_prefix)

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
    "train": {"iterations": 600, "finetune_iterations": 200, "batch_size": 8, "patch": None, "lr": 0.002,
              "finetune_lr": 0.001, "pseudo_fraction": 0.5, "fg_fraction": 0.5},
    "rounds": 3,
    "select": {"unit": "slice", "min_score": 0.5, "min_agreement": 0.8, "keep_empty": True, "empty_max_prob": 0.35,
               "disagree": "refined"},  # the paper's and the default when the results ran (now "ignore")
    "eval": {"original_grid": True, "hd95": True},
    "save_pseudo": "nii.gz",
    # LiteMedSAM's prompting, as on Kvasir (mine_kvasir.py): one box per component of the model's mask
    "prompts": {"n_positive": 0, "n_negative": 0, "margin": 0.05, "margin_px": 2, "jitter": 0.0, "min_area": 8},
    "iterate": {"rounds": 1, "feed_mask": False, "feed_model_mask": True},
}

VARIANTS = {  # benchlib.mining_variant's variants, and the weight-free refiner (points + box, 2 passes)
    "random_walker": {"refiner": {"name": "random_walker", "options": {"beta": 130, "smooth_sigma": 1.0}},
                      "prompts": {"n_positive": 3, "n_negative": 4, "margin": 0.05, "margin_px": 2, "jitter": 0.05},
                      "iterate": {"rounds": 2, "tol": 0.01, "feed_mask": True, "feed_model_mask": True}},
    **{v: {} for v in ("litemedsam", "identity", "labelled", "schedule")},
}


def run_tree(variant: str, n: int, seed: int, runs: Path, small: str = "unetpp", base: dict | None = None,
             tag: str = "", overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """The mining config tree of one run, built on ``base`` (default ``BUDGET``), ``--set`` overrides
    applied before the variant's own settings (:func:`benchlib.mining_variant`)."""
    tree = merge_tree(BUDGET if base is None else base, {"name": run_name(variant, n, seed, small, tag), "seed": seed,
                                                         "output_dir": str(runs),
                                                         "data": {"splits": {"labelled": {"first": n}}}})
    tree = {**tree, "model": copy.deepcopy(SMALL_MODELS[small]), **copy.deepcopy(VARIANTS[variant])}
    return mining_variant(tree, variant, runs / "la_embeddings", overrides)


def run_name(variant: str, n: int, seed: int, small: str = "unetpp", tag: str = "") -> str:
    """``mine_la_[<small>_]<variant><tag>_l<N>_s<seed>``; ``mine_la_l<N>`` for the first benchmark's
    (random walker, U-Net++, seed 0, no tag), so its results keep their name."""
    if (variant, small, seed, tag) == ("random_walker", "unetpp", 0, ""):
        return f"mine_la_l{n}"
    return f"mine_la_{small_prefix(small)}{variant}{tag}_l{n}_s{seed}"


SMOKE = {  # tiny synthetic dataset in the same layout, a few seconds
    "data": {"splits": {"validation": {"last": 2}}, "preprocess": {"scale": 1.0}},
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
    ap.add_argument("--variants", nargs="+", default=["random_walker"], choices=list(VARIANTS))
    ap.add_argument("--small", default="unetpp", choices=list(SMALL_MODELS), help="the small 2D model")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--set", action="append", default=[], help="key=value override of the run config, e.g. "
                    "dataset_3d.enabled=true for the 3D route (module docstring)")
    ap.add_argument("--tag", default="", help="suffix of the runs' names for an ablation or the 3D route, e.g. "
                    "--tag _case3d --set dataset_3d.enabled=true --set select.unit=case")
    ap.add_argument("--runs", default="runs/bench_mine")
    ap.add_argument("--results", default=None, help="default: benchmarks/results (a temp folder with --smoke)")
    ap.add_argument("--smoke", action="store_true", help="tiny synthetic dataset and budget: checks the pipeline")
    a = ap.parse_args(argv)
    if a.smoke and a.small != "unetpp":
        ap.error("--smoke trains a tiny U-Net++ only (no --small)")
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
    for n, variant, seed in itertools.product(a.labelled or ([2] if a.smoke else [4, 8]), a.variants, a.seeds):
        t = run_tree(variant, n, seed, runs, a.small, base=tree, tag=a.tag,
                     overrides=[*(["model.options.widths=[4, 8]"] if a.smoke else []), *a.set])
        name = t["name"]
        cfg = load_mining_config(tree=t)
        summary = mine(cfg)  # resumes an interrupted run
        result = {
            "name": name, "variant": variant, "small": a.small, "seed": seed,
            "command": command_line(__file__, argv),
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
        write_text(results_dir / f"{name}.json", json.dumps(result, indent=1))
        write_text(results_dir / f"{name}.md", _markdown(result))
        print(_markdown(result))
        out.append(result)
    return out


if __name__ == "__main__":
    script(main)
