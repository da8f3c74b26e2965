"""Class-imbalanced semi-supervised segmentation on synthetic data: A&D vs supervised, and A&D
without its difficulty-aware class weights.

1. Writes (seeded; skipped when it exists with the same plan) a synthetic nnU-Net raw dataset
   (``semi3d.data.synthetic.write_dataset``) of ``--classes`` K classes whose structures shrink
   geometrically (``imbalanced_class_scale(K, --smallest)``): organ, lesion, blob3, ..., the last
   class the rarest. Splits: labelled = the first ``--labelled`` labelled training cases,
   unlabelled = the last ``--unlabelled`` training cases (no label files on disk), test = the
   ``--test-cases`` cases of ``imagesTs``, sealed. No validation split: the final model is evaluated.
2. Trains, with the same data, patch, batch, seed and iteration budget:
   ``supervised`` (labelled only; its network is A&D's inference network, ``ad_student``, with the
   same width / depth / normalization / dropouts, and the trainer's augmentation set to about
   A&D's strength), ``ad`` (A&D) and ``ad_uniform`` (A&D with ``method.options.difficulty=false``:
   uniform class weights, everything else equal). One resumable run each. For this CPU budget the
   network is small (width 8, depth 4) and trained without dropout, AdamW lr 3e-3 (see ``run_config``).
3. Evaluates each run on the test split and writes ``<results>/imbalance_synthetic<tag>.json`` and
   ``.md``: per-class Dice (classes ordered by voxel share, the rarest last), mean Dice, HD95,
   iterations and training wall time per method, the command and the commit.

    PYTHONPATH=src python benchmarks/imbalance_synthetic.py                       # the benchmark
    PYTHONPATH=src python benchmarks/imbalance_synthetic.py --methods ad ad_uniform
    PYTHONPATH=src python benchmarks/imbalance_synthetic.py --set train.iterations=600  # every run
    PYTHONPATH=src python benchmarks/imbalance_synthetic.py --smoke               # tiny, seconds

Rerun the same command after an interruption: finished runs are skipped, unfinished ones resume
from ``checkpoints/last.pt``. ``--smoke`` trains a tiny version (tiny volumes, 2 iterations) into
``--runs`` (default a new temporary folder) and writes its results there, not to ``benchmarks/results``.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from semi3d.atomic import write_text
from semi3d.config import load_config
from semi3d.data.synthetic import class_names, imbalanced_class_scale, make_cases, write_dataset
from semi3d.evaluation.summary import table_markdown

# benchmarks/ (this script's folder) is sys.path[0] when run; the tests put it there
from benchlib import git_commit, machine, script, train_and_evaluate

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
NAME = "imbalance_synthetic"
VARIANTS = {"supervised": "labelled only, the A&D student network (ad_student), Dice + CE",
            "ad": "A&D, difficulty-aware class weights",
            "ad_uniform": "A&D, difficulty weights off (method.options.difficulty=false)"}
# sizes: volumes, cases, patch, network, iterations. One A&D step of the default measured 0.95 s on one
# thread of the 2-core Xeon (supervised: 0.12 s): 400 iterations, about 4-6 min (2 threads not measured).
PROFILES = {
    "default": {"shape": [48, 48, 32], "labelled": 4, "unlabelled": 16, "test_cases": 8, "patch": [32, 32, 32],
                "net": {"width": 8, "depth": 4, "temb_dim": 32}, "iterations": 400, "batch_size": 2,
                "extra": {}},
    "smoke": {"shape": [24, 24, 16], "labelled": 2, "unlabelled": 2, "test_cases": 2, "patch": [16, 16, 16],
              "net": {"width": 2, "depth": 3, "temb_dim": 8}, "iterations": 2, "batch_size": 2,
              "extra": {"device": "cpu", "threads": 1, "train": {"progress_bar": False},
                        "inference": {"overlap": 0.0}}},
}
# the trainer's augmentation for `supervised`, about A&D's strong augmentation (which A&D applies itself)
SUPERVISED_AUGMENT = {"p_scale": 0.35, "scale_range": [1.0, 1.43], "p_gamma": 0.35, "gamma_range": [0.7, 1.3],
                      "p_contrast": 0.35, "contrast_range": [0.7, 1.3], "p_brightness": 0.35,
                      "brightness_range": [0.7, 1.3]}
NET_KEYS = ("width", "depth", "normalization", "dropout", "conv_dropout")


def make_data(root: Path, plan: dict) -> dict:
    """Write the dataset of ``plan`` into ``root`` unless ``root/plan.json`` already holds the same
    plan; returns the plan with ``class_fraction`` (voxel share of each class over all cases)."""
    info = root / "plan.json"
    if info.is_file():
        old = json.loads(info.read_text())
        if {k: old.get(k) for k in plan} == plan:
            print(f"data: {root} exists with this plan", flush=True)
            return old
        raise SystemExit(f"{root} holds another synthetic dataset ({info}); choose another --data folder")
    n = plan["labelled"] + plan["unlabelled"]
    gen = dict(seed=plan["seed"], shape=plan["shape"], num_classes=plan["classes"], class_scale=plan["class_scale"])
    print(f"data: writing {n + plan['test_cases']} synthetic volumes to {root} ...", flush=True)
    write_dataset(root, n_labelled=plan["labelled"], n_unlabelled=plan["unlabelled"], n_test=plan["test_cases"], **gen)
    labels = np.stack([c.label for c in make_cases(n + plan["test_cases"], **gen)])  # the same cases
    share = np.bincount(labels.ravel(), minlength=plan["classes"]) / labels.size
    out = {**plan, "class_fraction": dict(zip(class_names(plan["classes"]), share.tolist()))}
    write_text(info, json.dumps(out, indent=1))  # last: a half-written dataset is written again
    return out


def run_config(variant: str, a, profile: dict, data: Path):
    """The resolved config of one variant: A&D's config with ``--set`` applied, then (supervised)
    the same network built as ``ad_student`` and the trainer's augmentation on."""
    tree = {
        "name": f"{NAME}_{variant}{a.tag}", "output_dir": str(a.runs), "seed": a.seed,
        "data": {"format": "nnunet", "root": str(data),
                 "splits": {"labelled": {"first": a.labelled}, "unlabelled": {"last": a.unlabelled},
                            "test": {"first": a.test_cases}},
                 "patch_size": profile["patch"], "fg_oversample": 0.5,
                 "augment": {"p_flip": 0.0, "p_rot90": 0.0, "p_scale": 0.0, "p_gamma": 0.0, "p_contrast": 0.0}},
        # no dropout and AdamW 3e-3 (A&D: 0.5 / 0.1, SGD 1e-2). Measured with supervised, --smallest 0.6: with
        # the paper's dropouts (lr 1e-3) even the lesion had Dice 0 after 400 iterations, without (3e-3) by 200
        "method": {"name": "ad", "options": {**profile["net"], "normalization": "batchnorm", "dropout": 0.0,
                                             "conv_dropout": 0.0, "unlabelled_batch": profile["batch_size"],
                                             "difficulty": variant != "ad_uniform"}},
        "train": {"iterations": a.iterations, "batch_size": profile["batch_size"],
                  "optimizer": {"name": "adamw", "lr": 3e-3, "weight_decay": 1e-4},
                  "schedule": {"name": "poly", "power": 0.9}, "log_every": 10, "checkpoint_every": 20},
        "inference": {"overlap": 0.5, "sw_batch_size": 2},
    }
    for k, v in profile["extra"].items():
        tree[k] = {**tree.get(k, {}), **v} if isinstance(v, dict) else v
    cfg = load_config(tree=tree, overrides=a.set)
    if variant != "supervised":
        return cfg
    sup = cfg.model_dump(mode="json")
    net = {k: sup["method"]["options"][k] for k in NET_KEYS if k in sup["method"]["options"]}
    sup["model"]["net3d"] = {"name": "ad_student", "options": net}
    sup["method"] = {"name": "supervised", "options": {}}
    sup["data"]["splits"]["unlabelled"] = "none"
    sup["data"]["augment"].update(SUPERVISED_AUGMENT)
    return load_config(tree=sup)


def run_one(variant: str, a, profile: dict, data: Path) -> dict:
    """Train (or resume, or skip when finished) and evaluate one variant; the row is cached in the run folder."""
    cfg = run_config(variant, a, profile, data)
    saved = cfg.run_dir / "config.yaml"
    if saved.is_file() and load_config(saved).model_dump() != cfg.model_dump():
        raise SystemExit(f"{cfg.run_dir} was trained with another config; use --tag or another --runs")
    row_file = cfg.run_dir / "benchmark_row.json"
    if row_file.is_file():
        print(f"{cfg.name}: finished, reusing {row_file}", flush=True)
        return json.loads(row_file.read_text())
    print(f"{cfg.name}: {VARIANTS[variant]}", flush=True)
    r = train_and_evaluate(cfg, "test")
    metrics = r["metrics"]
    splits = json.loads((cfg.run_dir / "splits.json").read_text())
    per_class = {c: {m: v[m] for m in ("dice", "jaccard", "hd95", "asd")} for c, v in metrics.items() if c != "mean"}
    row = {"variant": variant, "method": cfg.method.name, "description": VARIANTS[variant], "run_dir": str(cfg.run_dir),
           "labelled": len(splits["labelled"]), "unlabelled": len(splits["unlabelled"]),
           "test_cases": len(splits["test"]),
           "per_class": per_class, "dice": metrics["mean"]["dice"], "hd95": metrics["mean"]["hd95"],
           "dice_std": metrics["mean"]["dice_std"], "iterations": r["summary"]["iterations"],
           "train_wall_s": r["train_wall_s_total"], "eval_wall_s": r["eval_wall_s"], "resumed": r["resumed"],
           "threads": torch.get_num_threads()}
    write_text(row_file, json.dumps(row, indent=1))
    print(json.dumps({k: row[k] for k in ("variant", "dice", "hd95", "iterations", "train_wall_s", "resumed")}), flush=True)
    return row


def write_results(out: Path, rows: list[dict], plan: dict, command: str, overrides: list[str],
                  name: str = NAME) -> dict:
    """``out/<name>.json`` and ``.md`` (``imbalance_synthetic<tag>``): per-class Dice (rarest class
    last), mean Dice, HD95 (voxels), iterations and wall time per method."""
    frac = plan["class_fraction"]
    classes = sorted((c for c in frac if c != "background"), key=lambda c: -frac[c])
    commit = git_commit()
    note = ("The data are synthetic (semi3d.data.synthetic, seeded): blurred, noisy, bias-field-corrupted "
            "piecewise-constant volumes, not medical images; numbers compare methods on this data only.")
    res = {"benchmark": NAME, "command": command, "commit": commit, "overrides": overrides, "note": note,
           "dataset": plan, "classes_by_share": classes, "runs": rows,
           "machine": machine()}
    write_text(out / f"{name}.json", json.dumps(res, indent=1))
    cols = ["method", *[f"Dice {c} ({100 * frac[c]:.2f} %)" for c in classes], "mean Dice", "HD95 (vox)",
            "iterations", "train wall (s)"]
    table = [{"method": r["variant"], **{col: r["per_class"][c]["dice"] for col, c in zip(cols[1:], classes)},
              "mean Dice": r["dice"], "HD95 (vox)": r["hd95"], "iterations": r["iterations"],
              "train wall (s)": round(r["train_wall_s"])} for r in rows]
    write_text(out / f"{name}.md",
        "# A&D on class-imbalanced synthetic data\n\n" + note + "\n\n"
        + f"{plan['classes']} classes, volumes {'x'.join(map(str, plan['shape']))}, {plan['labelled']} labelled + "
        f"{plan['unlabelled']} unlabelled training cases, {plan['test_cases']} sealed test cases (data seed "
        f"{plan['seed']}); column headers give each class's voxel share. HD95: mean over the foreground "
        "classes, in voxels.\n\n"
        + "".join(f"- `{k}`: {v}\n" for k, v in VARIANTS.items() if k in {r['variant'] for r in rows})
        + f"\n`{command}` (commit {commit})\n\n" + table_markdown(table, cols) + "\n")
    return res


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny volumes and 2 iterations, results under --runs")
    ap.add_argument("--methods", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    ap.add_argument("--classes", type=int, default=5, help="K, background included")
    ap.add_argument("--smallest", type=float, default=0.5, help="size factor of the rarest class")
    ap.add_argument("--labelled", type=int, default=None)
    ap.add_argument("--unlabelled", type=int, default=None)
    ap.add_argument("--test-cases", type=int, default=None)
    ap.add_argument("--iterations", type=int, default=None)
    ap.add_argument("--data-seed", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0, help="training seed")
    ap.add_argument("--set", action="append", default=[], help="config override for every run (A&D's keys)")
    ap.add_argument("--data", default=None,
                    help="dataset folder (default <runs>/data/imbalance_synthetic_K<K>_S<smallest>_..., one per plan)")
    ap.add_argument("--runs", default=None, help="run folders (default runs/bench; --smoke: a new temporary folder)")
    ap.add_argument("--results", default=None, help="default benchmarks/results (--smoke: <runs>/results)")
    ap.add_argument("--tag", default="", help="suffix of the run names and the results files")
    args = sys.argv[1:] if argv is None else list(argv)
    a = ap.parse_args(args)
    profile = PROFILES["smoke" if a.smoke else "default"]
    for key in ("labelled", "unlabelled", "test_cases", "iterations"):
        if getattr(a, key) is None:
            setattr(a, key, profile[key])
    a.runs = Path(a.runs or (tempfile.mkdtemp(prefix="imbalance_smoke_") if a.smoke else "runs/bench"))
    results = Path(a.results or (a.runs / "results" if a.smoke else HERE / "results"))
    plan = {"classes": a.classes, "smallest": a.smallest, "class_scale": imbalanced_class_scale(a.classes, a.smallest),
            "shape": profile["shape"], "labelled": a.labelled, "unlabelled": a.unlabelled,
            "test_cases": a.test_cases, "seed": a.data_seed}
    data = Path(a.data or a.runs / "data" / (f"{NAME}_K{a.classes}_S{a.smallest:g}_L{a.labelled}_U{a.unlabelled}"
                                             f"_T{a.test_cases}_D{a.data_seed}"))  # every plan its own folder
    plan = make_data(data, plan)
    rows = [run_one(v, a, profile, data) for v in a.methods]
    command = f"PYTHONPATH=src python {Path(__file__).resolve().relative_to(ROOT)} {shlex.join(args)}".rstrip()
    res = write_results(results, rows, plan, command, a.set, NAME + a.tag)
    print(f"results: {results / (NAME + a.tag)}.json, .md", flush=True)
    return res


if __name__ == "__main__":
    script(main)
