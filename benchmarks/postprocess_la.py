"""Trained LA runs evaluated on the dev split without and with largest-component post-processing.

For each run folder: ``evaluate_run`` on its validation split (last 16 ids of train.list) with
``inference.postprocess`` = none and = largest_component, each into ``RUN/eval_validation_<pp>``;
writes ``results/<name>.json|md`` with both summaries and how many cases the post-processing changed.
Nothing is retrained; the model is the run's selected one (its ``train.selection``).

    python benchmarks/postprocess_la.py runs/bench/la_mn_mbv2_l8 runs/bench/la_supervised_l8
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from semi3d.atomic import write_text
from semi3d.evaluation.evaluate import evaluate_run
from semi3d.evaluation.summary import table_markdown

from benchlib import command_line, git_commit, script

HERE = Path(__file__).resolve().parent
MODES = ("none", "largest_component")


def compare(run: Path) -> dict:
    """``{"run", "none": {metric: mean}, "largest_component": {...}, "cases_changed", "dice_per_case"}``
    for the first foreground class of ``run``."""
    row, per_case = {"run": run.name}, {}
    for pp in MODES:
        out = run / f"eval_validation_{pp}"
        summary = evaluate_run(run, "validation", overrides=[f"inference.postprocess={pp}"], out=out)
        fg = next(k for k in summary if k != "mean")
        row[pp] = {m: summary[fg][m] for m in ("dice", "jaccard", "hd95", "asd")}
        per_case[pp] = {c: v[fg]["dice"] for c, v in json.loads((out / "metrics.json").read_text())["per_case"].items()}
    row["cases_changed"] = sum(per_case["none"][c] != per_case["largest_component"][c] for c in per_case["none"])
    row["n_cases"] = len(per_case["none"])
    row["dice_per_case"] = per_case
    return row


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+", type=Path, help="trained run folders")
    ap.add_argument("--name", default="postprocess_la")
    ap.add_argument("--results", default=str(HERE / "results"))
    a = ap.parse_args(argv)
    rows = [compare(r) for r in a.runs]
    command = command_line(__file__, argv)
    commit, out = git_commit(), Path(a.results)
    write_text(out / f"{a.name}.json", json.dumps({"command": command, "commit": commit, "rows": rows}, indent=1))
    flat = [{"run": r["run"], **{f"{m}_{pp[:4]}": r[pp][m] for m in ("dice", "hd95", "asd") for pp in MODES},
             "changed": f"{r['cases_changed']}/{r['n_cases']}"} for r in rows]
    cols = ["run", "dice_none", "dice_larg", "hd95_none", "hd95_larg", "asd_none", "asd_larg", "changed"]
    write_text(out / f"{a.name}.md", f"# {a.name}\n\n`{command}` (commit {commit})\n\n"
                                      "Dev split (last 16 ids of train.list); `_none` = argmax, `_larg` = "
                                      "largest connected component kept; HD95 / ASD in voxels.\n\n"
                                      + table_markdown(flat, cols))
    print(table_markdown(flat, cols))
    return rows


if __name__ == "__main__":
    script(main)
