"""Train one config on LA and evaluate it on the dev split (last 16 ids of train.list).

Writes benchmarks/results/<name>.json and .md with the metrics, wall times, the exact command and
the commit. Resumable: run the same command again after an interruption.

    python benchmarks/run_la.py configs/la_supervised_cpu.yaml --name la_supervised_l8
    python benchmarks/run_la.py configs/la_supervised_cpu.yaml --name la_supervised_l4 \
        --set data.splits.labelled.first=4
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from semi3d.atomic import write_text
from semi3d.config import load_config
from semi3d.engine.precision import resolve_precision, pick_device
from semi3d.evaluation.summary import table_markdown

# benchmarks/ (this script's folder) is sys.path[0] when run; the tests put it there
from benchlib import command_line, foreground, git_commit, machine, script, train_and_evaluate

HERE = Path(__file__).resolve().parent


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("--name", required=True)
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--runs", default="runs/bench")
    ap.add_argument("--results", default=str(HERE / "results"))
    a = ap.parse_args(argv)
    cfg = load_config(a.config, [f"name={a.name}", f"output_dir={a.runs}", *a.set])
    commit = git_commit()
    r = train_and_evaluate(cfg, "validation")
    fg = foreground(r["metrics"])
    result = {
        "name": a.name, "command": command_line(__file__, argv),
        "invoked_as": "python " + " ".join(shlex.quote(x) for x in sys.argv),  # e.g. compare_la.py, which ran this
        "config": a.config, "overrides": a.set, "commit": commit, "method": cfg.method.name,
        "labelled": len(json.loads((cfg.run_dir / "splits.json").read_text())["labelled"]),
        "eval_split": "validation (last 16 ids of train.list)",
        "dice": fg["dice"], "jaccard": fg["jaccard"], "hd95": fg["hd95"], "asd": fg["asd"],
        "dice_std": fg.get("dice_std"), "iterations": r["summary"]["iterations"],
        **{k: r[k] for k in ("train_wall_s_this_invocation", "train_wall_s_total", "eval_wall_s", "resumed")},
        "machine": machine(precision=resolve_precision(cfg.precision, pick_device(cfg.device))),
    }
    out = Path(a.results)
    write_text(out / f"{a.name}.json", json.dumps(result, indent=1))
    cols = ["name", "method", "labelled", "dice", "jaccard", "hd95", "asd", "iterations", "train_wall_s_total"]
    write_text(out / f"{a.name}.md", f"# {a.name}\n\n`{result['command']}` (commit {commit})\n\n"
                                      + table_markdown([result], cols) + "\n")
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    script(main)
