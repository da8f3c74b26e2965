"""Knowledge mining from LiteMedSAM on Kvasir-SEG (the mining paper's own dataset), with its controls.

Protocol: dev = the last 100 ids of ``train.list`` (never trained on), labelled = the first
``P %`` of the remaining 800 ids, unlabelled = the rest (their masks hidden from training, used
only to score the pseudo-labels). Images resized to a longest side of 256 px, RGB. Variants, each
one run per (P, seed), all with the same small model (``--small``: the paper's U-Net++ from scratch,
or a U-Net on an ImageNet-pretrained MobileNetV2) and the same total training iterations:

- ``labelled``: the small model on the labelled images only (``rounds: 0``, the mining runs' total
  iterations: first training + every fine-tuning);
- ``litemedsam``: mining, box prompts per connected component -> LiteMedSAM -> selection ->
  fine-tuning, ``rounds`` times;
- ``identity``: the same mining with the ``identity`` refiner (self-training on the small model's
  own masks: what mining gains without SAM);
- ``schedule``: the mining runs' exact schedule (first training, then ``rounds`` fine-tunings) with
  no unlabelled image (``unlabelled_max: 0``), so on the labelled images only: separates what the
  rounds' learning-rate restarts do from what the pseudo-labels do (at 25 % it scored -5 to +7 Dice
  from ``labelled`` per seed; it reproduced bit for bit the earlier ``identity --tag _nopseudo --set
  select.min_score=2 --set select.keep_empty=false`` runs, which rejected every pseudo-label);
- ``full``: the small model on all 800 images (P = 100, run once per seed).

Dev Dice and IoU per image, averaged; per round the pseudo-label Dice of the kept masks against
their hidden masks, refined vs the small model's own. LiteMedSAM's image embeddings are cached on
disk (``--runs``/kvasir_embeddings) and shared by every run.

    PYTHONPATH=src .venv/bin/python benchmarks/mine_kvasir.py --percent 25 --seeds 0
    PYTHONPATH=src .venv/bin/python benchmarks/mine_kvasir.py --only-table

Writes ``benchmarks/results/mine_kvasir_<variant>_p<P>_s<seed>.json`` per run (a run whose file
exists is skipped) and the table ``mine_kvasir.md|json``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from semi3d.atomic import write_text
from semi3d.evaluation.summary import table_markdown
from semi3d.mining.config import load_mining_config

# benchmarks/ (this script's folder) is sys.path[0] when run; the tests put it there
from benchlib import (SMALL_MODELS, command_line, git_commit, machine, merge_tree, mine, mining_round_row,
                      mining_variant, script, small_prefix)

HERE = Path(__file__).resolve().parent
KVASIR = HERE.parent.parent / "shared" / "data" / "Kvasir-SEG"
POOL = 800  # train.list minus the 100 dev ids
VARIANTS = ["labelled", "identity", "litemedsam", "full", "schedule"]
BUDGET = {  # every run; --set key=value overrides any of it
    "device": "cpu",
    "images": {"root": str(KVASIR), "images": "images", "masks": "masks", "max_size": 256,
               "splits": {"validation": {"last": 100}, "labelled": {"first": 200}, "unlabelled": "rest"}},
    "model": SMALL_MODELS["unetpp"],
    "train": {"iterations": 600, "finetune_iterations": 200, "batch_size": 8, "patch": [128, 128], "lr": 0.002,
              "finetune_lr": 0.001, "pseudo_fraction": 0.5, "fg_fraction": 0.5, "predict_batch": 16},
    "rounds": 2,
    "refiner": {"name": "litemedsam", "options": {}},
    "prompts": {"n_positive": 0, "n_negative": 0, "margin": 0.05, "margin_px": 3, "jitter": 0.0, "min_area": 32},
    "iterate": {"rounds": 1, "feed_mask": False, "feed_model_mask": True},
    "select": {"unit": "slice", "min_score": 0.5, "min_agreement": 0.7, "keep_empty": True, "empty_max_prob": 0.35,
               "disagree": "refined"},  # the paper's and the default when the results ran (now "ignore")
    "save_pseudo": "none",
}


def run_tree(variant: str, percent: int, seed: int, runs: Path, small: str = "unetpp", tag: str = "",
             overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """The mining config tree of one run, ``--set`` overrides applied before the variant's own settings
    (:func:`benchlib.mining_variant`)."""
    n = POOL if variant == "full" else round(POOL * percent / 100)
    tree = merge_tree(BUDGET, {"name": run_name(variant, percent, seed, small, tag), "output_dir": str(runs), "seed": seed,
                               "images": {"splits": {"labelled": {"first": n}}}})
    return mining_variant({**tree, "model": SMALL_MODELS[small]}, variant, runs / "kvasir_embeddings", overrides)


def run_name(variant: str, percent: int, seed: int, small: str = "unetpp", tag: str = "") -> str:
    """``mine_kvasir_[<small>_]<variant><tag>_p<P>_s<seed>`` (no prefix for the default U-Net++)."""
    return f"mine_kvasir_{small_prefix(small)}{variant}{tag}_p{100 if variant == 'full' else percent}_s{seed}"


def image_metrics(dev_cases: dict) -> dict:
    """Mean Dice and IoU per image (one foreground class: IoU = Dice / (2 - Dice) per image)."""
    d = np.array([v["dice"] for v in dev_cases.values()])
    return {"dice": float(d.mean()), "iou": float((d / (2 - d)).mean()), "n_images": len(d)}


def table(results: Path) -> list[dict]:
    """One row per (variant, P): metrics averaged over the seeds found."""
    groups: dict[tuple[str, int, str], list[dict]] = {}
    for p in sorted(results.glob("mine_kvasir_*_p*_s*.json")):
        r = json.loads(p.read_text())
        groups.setdefault((r["variant"], r["percent"], r.get("small", "unetpp"), r.get("tag", "")), []).append(r)
    rows = []
    order = list(SMALL_MODELS)
    for (v, pc, sm, tag), rs in sorted(groups.items(), key=lambda kv: (order.index(kv[0][2]), kv[0][1],
                                                                      VARIANTS.index(kv[0][0]), kv[0][3])):
        row = {"small": sm, "percent": pc, "variant": v + tag, "seeds": len(rs)}
        for k in ("dice", "iou"):
            row[k] = float(np.mean([r[k] for r in rs]))
        row["dice_per_seed"] = " / ".join(f"{r['dice']:.4f}" for r in rs)
        last = [r["rounds"][-1] for r in rs if len(r["rounds"]) > 1]
        for k in ("pseudo_dice_kept", "model_dice_kept", "n_kept"):
            vals = [x[k] for x in last if x.get(k) is not None]
            row[k] = float(np.mean(vals)) if vals else None
        row["wall_min"] = float(np.mean([r["wall_s"] for r in rs])) / 60
        rows.append(row)
    return rows


def write_table(results: Path) -> str:
    rows = table(results)
    cols = ["small", "percent", "variant", "seeds", "dice", "iou", "dice_per_seed", "pseudo_dice_kept", "model_dice_kept",
            "n_kept", "wall_min"]
    text = ("# Knowledge mining on Kvasir-SEG (dev = last 100 ids of train.list)\n\n"
            "Dice / IoU per image, averaged over the dev images, then over seeds. `pseudo_dice_kept` / "
            "`model_dice_kept`: the last round's kept pseudo-labels (refined) and the small model's own masks on the "
            "same images, pooled Dice against the hidden masks. Per-run files: `mine_kvasir_<variant>_p<P>_s<seed>"
            ".json` (command, commit, machine, config, every round).\n\n" + table_markdown(rows, cols) + "\n")
    write_text(results / "mine_kvasir.json", json.dumps(rows, indent=1))
    write_text(results / "mine_kvasir.md", text)
    return text


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--percent", type=int, nargs="+", default=[25, 75])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--variants", nargs="+", default=VARIANTS, choices=VARIANTS)
    ap.add_argument("--small", default="unetpp", choices=list(SMALL_MODELS), help="the small model (module docstring)")
    ap.add_argument("--set", action="append", default=[], help="key=value override of every run's config")
    ap.add_argument("--tag", default="", help="suffix of the variants' names for an ablation, e.g. --tag _conf "
                    "--set prompts.min_confidence=0.8")
    ap.add_argument("--runs", default="runs/bench_kvasir")
    ap.add_argument("--results", default=str(HERE / "results"))
    ap.add_argument("--only-table", action="store_true")
    a = ap.parse_args(argv)
    results, runs = Path(a.results), Path(a.runs)
    command = command_line(__file__, argv)
    todo = [] if a.only_table else [(v, p, s) for s in a.seeds for p in a.percent for v in a.variants]
    done = set()
    for v, p, s in todo:
        name = run_name(v, p, s, a.small, a.tag)
        if name in done or (results / f"{name}.json").is_file():
            continue
        done.add(name)
        cfg = load_mining_config(tree=run_tree(v, p, s, runs, a.small, a.tag, a.set))
        summary = mine(cfg)  # resumes an interrupted run
        last = summary["rounds"][-1]
        result = {"name": name, "small": a.small, "variant": v, "tag": a.tag, "percent": 100 if v == "full" else p, "seed": s,
                  **image_metrics(last["dev_cases"]), "command": command, "commit": git_commit(),
                  "splits": summary["splits"], "rounds": [mining_round_row(r) for r in summary["rounds"]],
                  "dev_dice_per_round": [r["dev_dice"] for r in summary["rounds"]],
                  "wall_s": summary["wall_s"], "config": cfg.model_dump(mode="json"), "machine": machine()}
        write_text(results / f"{name}.json", json.dumps(result, indent=1))
        print(f"{name}: dev Dice {result['dice']:.4f} IoU {result['iou']:.4f} "
              f"({summary['wall_s'] / 60:.1f} min)", flush=True)
    print(write_table(results))


if __name__ == "__main__":
    script(main)
