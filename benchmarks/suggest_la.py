"""Does labelling the cases `semi3d suggest` picks beat labelling random ones? (LA, dev split)

From a trained base run (e.g. M&N with 4 labelled LA volumes), take the top-k suggested cases of its
unlabelled pool and, as the baseline, k random cases of the same pool (one draw per seed). LA's
"unlabelled" cases have labels on disk (hidden from training): each strategy retrains the base
config with ``data.splits.labelled.ids`` = the base labelled cases + the k new ones (validation
split unchanged, the rest stays unlabelled), then evaluates on the dev split. Writes
``<results>/suggest_la_<name>.json`` and ``.md``. Resumable: finished runs are skipped.

    python benchmarks/suggest_la.py --base-run runs/bench/la_mn_cpu_l4 --k 4 --random-seeds 0 1 2
    python benchmarks/suggest_la.py --smoke --runs /tmp/suggest_smoke     # tiny synthetic check
"""
from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import yaml

from semi3d.atomic import write_text
from semi3d.config import load_config, parse_overrides, set_dotted
from semi3d.data.formats import build_reader
from semi3d.data.splits import load_splits
from semi3d.engine.rundir import RunDir
from semi3d.engine.trainer import train
from semi3d.errors import InputError
from semi3d.evaluation.summary import table_markdown
from semi3d.reporting.common import case_means, foreground_mean
from semi3d.reporting.suggest import suggest_cases

# benchmarks/ (this script's folder) is sys.path[0] when run; the tests put it there
from benchlib import command_line, git_commit, script, train_and_evaluate

HERE = Path(__file__).resolve().parent


def random_picks(pool: list[str], k: int, seed: int) -> list[str]:
    """k distinct cases of ``pool`` drawn with ``seed``, in pool order."""
    idx = np.random.default_rng(seed).choice(len(pool), size=k, replace=False)
    return [pool[i] for i in sorted(idx)]


def retrain_tree(base_tree: dict, splits: dict, extra: list[str], name: str, runs: Path) -> dict:
    """The base run's config with ``extra`` cases added to the labelled split (explicit ids, the
    validation split pinned to the base run's ids, the rest of the pool unlabelled)."""
    tree = copy.deepcopy(base_tree)
    tree["name"], tree["output_dir"] = name, str(runs)
    sp = tree["data"]["splits"]
    sp["labelled"] = {"ids": list(splits["labelled"]) + list(extra)}
    if splits["validation"]:
        sp["validation"] = {"ids": list(splits["validation"])}
    sp["unlabelled"] = "rest"
    return tree


def retrain_and_evaluate(tree: dict) -> dict:
    cfg = load_config(tree=tree)
    run = cfg.run_dir
    train_and_evaluate(cfg, "validation")
    m = json.loads((run / "eval_validation" / "metrics.json").read_text())  # per case too
    fg = foreground_mean(m["mean"])
    return {"run": str(run), "labelled": len(load_splits(run / "splits.json")["labelled"]),
            **{k: fg.get(k) for k in ("dice", "dice_std", "jaccard", "hd95", "asd")},
            "per_case_dice": {c: v["dice"] for c, v in case_means(m["per_case"]).items()}}


def smoke_base(runs: Path) -> Path:
    """A tiny synthetic setting: every case labelled on disk, 2 labelled + 2 validation in the run,
    4 'unlabelled' with hidden labels; trains the base run (a few seconds)."""
    from semi3d.data.synthetic import write_dataset

    root = write_dataset(runs / "data", n_labelled=8, n_unlabelled=0, seed=1, shape=(24, 24, 16), num_classes=2)
    tree = {"name": "smoke_base", "output_dir": str(runs), "seed": 0, "threads": 1,
            "data": {"format": "nnunet", "root": str(root), "patch_size": [16, 16, 16], "fg_oversample": 0.5,
                     "splits": {"labelled": {"first": 2}, "validation": {"last": 2}, "unlabelled": "rest"}},
            "model": {"net3d": {"name": "unet3d", "options": {"levels": 3, "base": 4}}},
            "method": {"name": "supervised"},
            "train": {"iterations": 2, "batch_size": 2, "optimizer": {"lr": 0.01}, "val_every": 1000,
                      "log_every": 1, "checkpoint_every": 1000, "progress_bar": False},
            "inference": {"overlap": 0.25}}
    cfg = load_config(tree=tree)
    run = RunDir(cfg.run_dir)
    if not run.summary.is_file():
        train(cfg, resume=run.last.is_file())
    return cfg.run_dir


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base-run", type=Path, help="a trained run folder (its config, splits and model)")
    ap.add_argument("--k", type=int, default=4, help="cases to add to the labelled split")
    ap.add_argument("--random-seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--name", default=None, help="result name (default <base run>_k<k>)")
    ap.add_argument("--set", action="append", default=[], help="override for the retrained runs (key=value)")
    ap.add_argument("--runs", type=Path, default=Path("runs/bench"))
    ap.add_argument("--results", type=Path, default=None, help="default benchmarks/results (smoke: <runs>/results)")
    ap.add_argument("--smoke", action="store_true", help="tiny synthetic setting, seconds on a CPU")
    a = ap.parse_args(argv)
    if a.smoke:
        a.base_run = smoke_base(a.runs)
        a.k = min(a.k, 2)
    if a.base_run is None:
        ap.error("--base-run is required (or --smoke)")
    results = a.results or (a.runs / "results" if a.smoke else HERE / "results")
    base = Path(a.base_run)
    base_tree = yaml.safe_load((base / "config.yaml").read_text())
    base_cfg = load_config(tree=copy.deepcopy(base_tree))
    splits = load_splits(base / "splits.json")
    pool = splits["unlabelled"]
    if len(pool) < a.k:
        raise InputError(base / "splits.json", f"only {len(pool)} unlabelled cases for k={a.k}")
    reader = build_reader(base_cfg.data.format, base_cfg.data.root, **base_cfg.data.options)
    nolabel = [c for c in pool if not reader.has_label(c)]
    if nolabel:
        raise InputError(nolabel[0], "unlabelled case without a hidden label on disk: this benchmark needs "
                                     "every pool case to be labelled (as LA's train.list is)")
    name = a.name or f"{base_cfg.name}_k{a.k}"
    commit = git_commit()

    t0 = time.time()
    sug_dir = a.runs / f"{name}_suggestions"
    sug_file = sug_dir / "suggestions.json"
    sug = json.loads(sug_file.read_text()) if sug_file.is_file() else None
    if sug is None or sug.get("k") != a.k or sug.get("run") != str(base):
        sug = suggest_cases(base, a.k, sug_dir)
    t_suggest = time.time() - t0
    strategies = {"suggest": sug["suggested"]}
    strategies.update({f"random_s{s}": random_picks(pool, a.k, s) for s in a.random_seeds})

    outcome = {}
    for strat, ids in strategies.items():
        tree = retrain_tree(base_tree, splits, ids, f"{name}_{strat}", a.runs)
        for key, value in parse_overrides(a.set):
            set_dotted(tree, key, value)
        t0 = time.time()
        outcome[strat] = {"added": ids, **retrain_and_evaluate(tree), "wall_s_this_invocation": time.time() - t0}

    rand = [v["dice"] for s, v in outcome.items() if s.startswith("random")]
    result = {
        "name": name, "command": command_line(__file__, argv),
        "commit": commit, "base_run": str(base), "method": base_cfg.method.name, "k": a.k,
        "base_labelled": len(splits["labelled"]), "pool": len(pool), "criterion": sug["criterion"],
        "suggestion_scores": {r["case"]: r["score"] for r in sug["ranking"]}, "suggest_wall_s": t_suggest,
        "eval_split": "validation of the base run (LA: last 16 ids of train.list)",
        "strategies": outcome,
        "dice_suggest": outcome["suggest"]["dice"], "dice_random_mean": float(np.mean(rand)),
        "dice_gain_vs_random": outcome["suggest"]["dice"] - float(np.mean(rand)),
    }
    results.mkdir(parents=True, exist_ok=True)
    stem = f"suggest_la_{name}" if not a.smoke else f"suggest_smoke_{name}"
    write_text(results / f"{stem}.json", json.dumps(result, indent=1))
    rows = [{"strategy": s, "added": " ".join(v["added"]), "labelled": v["labelled"], "dice": v["dice"],
             "jaccard": v["jaccard"], "hd95": v["hd95"], "asd": v["asd"]} for s, v in outcome.items()]
    write_text(results / f"{stem}.md",
        f"# {stem}\n\n`{result['command']}` (commit {commit})\n\nBase run `{base}` ({base_cfg.method.name}, "
        f"{len(splits['labelled'])} labelled); +{a.k} cases per strategy; criterion: {sug['criterion']}.\n\n"
        + table_markdown(rows, ["strategy", "labelled", "dice", "jaccard", "hd95", "asd", "added"]) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("strategies", "suggestion_scores")}, indent=1))
    return result


if __name__ == "__main__":
    script(main)
