"""Run a list of methods on LA under one config/budget and seed list, then write one table.

Each (method, labelled, seed) run is resumable and skipped when its result file exists, so a long
table can be built in parts (run the same command again).

    python benchmarks/compare_la.py --methods supervised mean_teacher ua_mt cps bcp urpc \
        --labelled 4 8 --seeds 0 --table la_table
    python benchmarks/compare_la.py --table la_table --only-table     # rebuild the table from results
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from semi3d.evaluation.report import table_markdown

HERE = Path(__file__).resolve().parent
CONFIGS = {"mn": "configs/la_mn_cpu.yaml", "ad": "configs/la_ad_cpu.yaml"}  # own configs; the rest share the base


def run_name(method: str, labelled: int, seed: int) -> str:
    return f"la_{method}_l{labelled}_s{seed}"


def result_file(results: Path, method: str, labelled: int, seed: int) -> Path | None:
    """The result of (method, labelled, seed); for seed 0 also ``la_<method>_l<N>.json``, the name
    ``run_la.py`` runs of the same config (default seed 0) were given."""
    names = [run_name(method, labelled, seed)] + ([f"la_{method}_l{labelled}"] if seed == 0 else [])
    return next((p for n in names if (p := results / f"{n}.json").is_file()), None)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--methods", nargs="+", default=["supervised", "mean_teacher", "ua_mt", "cps", "bcp", "urpc", "mn"])
    ap.add_argument("--labelled", nargs="+", type=int, default=[4, 8])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--base-config", default="configs/la_supervised_cpu.yaml")
    ap.add_argument("--set", action="append", default=[], help="override for every run (e.g. the budget)")
    ap.add_argument("--table", default="la_table")
    ap.add_argument("--only-table", action="store_true")
    a = ap.parse_args(argv)
    results = HERE / "results"
    if not a.only_table:
        from run_la import main as run_one

        for m in a.methods:
            for n in a.labelled:
                for s in a.seeds:
                    name = run_name(m, n, s)
                    if result_file(results, m, n, s):
                        continue
                    sets = [f"method.name={m}", f"data.splits.labelled.first={n}", f"seed={s}", *a.set]
                    if m != "supervised":
                        sets.append("data.splits.unlabelled=rest")
                    run_one([CONFIGS.get(m, a.base_config), "--name", name, *sum((["--set", x] for x in sets), [])])
    rows = []
    for m in a.methods:
        for n in a.labelled:
            rs = [json.loads(p.read_text()) for s in a.seeds if (p := result_file(results, m, n, s))]
            if not rs:
                continue
            row = {"method": m, "labelled": n, "seeds": len(rs)}
            for k in ("dice", "jaccard", "hd95", "asd", "iterations", "train_wall_s_total"):
                row[k] = float(np.mean([r[k] for r in rs]))
            rows.append(row)
    cols = ["method", "labelled", "seeds", "dice", "jaccard", "hd95", "asd", "iterations", "train_wall_s_total"]
    (results / f"{a.table}.json").write_text(json.dumps(rows, indent=1))
    (results / f"{a.table}.md").write_text(
        "# LA dev split (last 16 ids of train.list), CPU budget\n\n"
        "Dice/Jaccard as fractions, HD95/ASD in voxels of the original grid (medpy convention).\n\n"
        + table_markdown(rows, cols) + "\n")
    print(table_markdown(rows, cols))


if __name__ == "__main__":
    main()
