"""Run a list of methods on LA under one CPU budget and seed list, then write one table.

The budget is wall time per run (``--minutes``), turned into an iteration count per method: before
the runs start, each method's training step is timed on this machine (a few steps at the
representative points of its schedule, weighted by how much of the run each takes) and
``iterations = (minutes * 60 - fixed costs) / seconds_per_step`` (fixed costs: the validations and
M&N's pseudo-mask passes). Schedule settings counted in iterations (validation interval, lr warm-up
and cycles, M&N's stage 1 and pseudo-mask passes) are scaled with it, so every method runs its
whole schedule within the budget. The counts are kept in ``results/<table>_budget.json`` and
reused; a run whose result exists is skipped and an interrupted one resumes, so a long table (more
labelled settings, seeds, methods, one ``--tag`` per ablation) is built in parts by running the
command again: the table lists the results of every (method, tag) budgeted in it, and of ``--methods``
with this invocation's ``--tag``.

    python benchmarks/compare_la.py                                   # the default table (8 methods, 8 labelled), ~2 h
    python benchmarks/compare_la.py --labelled 4 --table la_table     # add the 4-labelled rows
    python benchmarks/compare_la.py --methods supervised2d            # add M&N's 2D model alone
    python benchmarks/compare_la.py --table la_table --only-table     # rebuild the table from results
    python benchmarks/compare_la.py --methods mn --tag _fixed --set method.options.sampling=fixed \
        --set method.options.fixed_unlabelled=2 --table la_mn_ablations   # an ablation row
    python benchmarks/compare_la.py --table la_table_41min --only-table --reference la_mn_l8_b16_s21
        # also list a run_la.py result (a method's own config; e.g. the run whose wall time is the budget)

Every row names its result files, their commits and commands below the table.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from semi3d.atomic import write_text
from semi3d.config import load_config
from semi3d.evaluation.summary import table_markdown

# benchmarks/ (this script's folder) is sys.path[0] when run; the tests put it there
from benchlib import script
from speed import phases

HERE = Path(__file__).resolve().parent
CONFIGS = {"mn": "configs/la_mn_cpu.yaml", "ad": "configs/la_ad_cpu.yaml",  # own configs; the rest share the base
           "supervised2d": "configs/la_mn_cpu.yaml"}  # M&N's 2D model alone, labelled-only schedule below
LABELLED_ONLY = {"supervised": [], "supervised2d": [
    "method.options={}", "train.schedule={name: poly, power: 0.9}", "train.group_optimizers={net2d: {lr: 0.001}}"]}
METHODS = ["supervised", "mean_teacher", "ua_mt", "cps", "bcp", "urpc", "mn", "ad"]  # the default table
LISTED = ["supervised", "supervised2d", *METHODS[1:]]  # the table's rows (a part run later is listed too)
SCALED = ("train.val_every", "train.schedule.warmup", "train.schedule.cycles",
          "method.options.warmup_iterations", "method.options.guide_every")


def run_name(method: str, labelled: int, seed: int, minutes: float, tag: str = "") -> str:
    return f"la_{method}{tag}_l{labelled}_s{seed}_{minutes:g}min"


def method_sets(method: str, labelled: int, seed: int) -> list[str]:
    sets = [f"method.name={method}", f"data.splits.labelled.first={labelled}", f"seed={seed}"]
    if method in LABELLED_ONLY:
        return sets + ["data.splits.unlabelled=none", *LABELLED_ONLY[method]]
    return sets + ["data.splits.unlabelled=rest"]


def _get(tree: dict, key: str):
    for p in key.split("."):
        tree = tree.get(p) if isinstance(tree, dict) else None
    return tree


def budget_sets(tree: dict, iterations: int) -> list[str]:
    """Overrides that run the config's schedule in ``iterations`` steps: ``train.iterations`` and
    every iteration-valued schedule setting in ``SCALED`` present in ``tree``, scaled alike."""
    total = tree["train"]["iterations"]
    out = [f"train.iterations={iterations}"]

    def scale(x):  # x * iterations first: exact for integers, so an exact half rounds as round() does
        return max(1, round(x * iterations / total))

    for key in SCALED:
        v = _get(tree, key)
        if isinstance(v, list):
            out.append(f"{key}={json.dumps([scale(x) for x in v])}")
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0:
            out.append(f"{key}={scale(v)}")
    return out


def step_seconds(config: str, sets: list[str], steps: int = 5, warmup: int = 3) -> dict:
    """Seconds per training step of ``config`` on this machine (median of ``steps``), averaged over
    the phases of its schedule weighted by their share of the run (M&N: stage 1, 2D- and 3D-student
    epochs of stage 2 at mid-cycle; other methods: the middle of the run, past any pre-training
    stage), and the fixed costs of the run: its validations and M&N's pseudo-mask passes, whose
    counts do not change when the schedule is scaled. ``warmup`` untimed steps first at each point:
    with one, BCP's 16-filter stage-2 step on a bf16 CPU measured 1.78 s where its run stepped at
    1.2-1.5 s (tests sharing the CPU); with three, 1.01 s against the run's median of 1.04 s."""
    from semi3d.engine.trainer import Trainer

    with tempfile.TemporaryDirectory() as tmp:
        # no TensorBoard: its writer thread would still be writing into tmp while it is removed
        cfg = load_config(config, [*sets, f"output_dir={tmp}", "name=calibrate", "train.tensorboard=false"])
        tr = Trainer(cfg)
        n = cfg.train.iterations
        if cfg.method.name == "mn":
            w = tr.method.warmup
            at = phases(tr)
            share = {"stage1": w / n, **{k: (1 - w / n) / 2 for k in at if k != "stage1"}}
        else:
            at, share = {"train": n // 2}, {"train": 1.0}
        per = {}
        for k, s in at.items():
            for _ in range(warmup):
                tr.train_step(s)
            per[k] = statistics.median(_timed(lambda: tr.train_step(s)) for _ in range(steps))
        fixed = {}
        if cfg.train.val_every:
            fixed["validation"] = (n // cfg.train.val_every, _timed(tr.validate))
        g = getattr(tr.method, "guide_every", 0)
        if g and getattr(tr, "sampler_u", None) is not None:
            fixed["guide_pass"] = (1 + (n - tr.method.warmup - 1) // g,
                                  _timed(lambda: tr.method.guide_pass(tr.services, tr.method.warmup)))
    return {"step_s": sum(per[k] * share[k] for k in per), "phases_s": per, "shares": share,
            "fixed": fixed, "fixed_s": sum(c * t for c, t in fixed.values())}


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def budget_key(method: str, tag: str, minutes: float) -> str:
    """The key of a run's iteration budget in a table's budget file: ``<method><tag>_<minutes>min``."""
    return f"{method}{tag}_{minutes:g}min"


def load_book(path: Path) -> dict:
    """A table's budget file (``{}`` before its first measurement)."""
    return json.loads(path.read_text()) if path.is_file() else {}


def budget(path: Path, method: str, config: str, sets: list[str], minutes: float, tag: str = "") -> int:
    """The iteration count of ``method`` for ``minutes`` per run, measured once and kept in ``path``:
    (budget - fixed costs) / seconds per step."""
    book, key = load_book(path), budget_key(method, tag, minutes)
    if key not in book:
        m = step_seconds(config, sets)
        iters = max(1, int((minutes * 60 - m["fixed_s"]) / m["step_s"]))
        book[key] = {**m, "minutes": minutes, "iterations": iters, "measured": time.strftime("%Y-%m-%d %H:%M")}
        write_text(path, json.dumps(book, indent=1))
        print(f"budget {method}: {m['step_s']:.2f} s/step + {m['fixed_s']:.0f} s fixed -> {iters} iterations", flush=True)
    return book[key]["iterations"]


def variants(book: dict, minutes: float, methods: list[str], tag: str = "") -> list[tuple[str, str]]:
    """The (method, tag) pairs of a table: those with a ``minutes`` budget in ``book`` (the table's
    earlier invocations, e.g. one per ablation) and ``methods`` x ``tag``; ordered by method (as the
    table's ``LISTED`` rows), untagged first, then tags as first seen. A key is
    ``<method><tag>_<minutes>min``; the longest method name that fits a key wins."""
    suffix, names = budget_key("", "", minutes), sorted(set(LISTED + methods), key=len, reverse=True)
    out = {}
    for key in book:
        if key.endswith(suffix):
            stem = key[:-len(suffix)]
            m = next((m for m in names if stem == m or stem.startswith(m + "_")), None)
            if m is not None:
                out[(m, stem[len(m):])] = None
    out.update({(m, tag): None for m in methods})
    order = list(dict.fromkeys(LISTED + methods))
    return sorted(out, key=lambda mt: (order.index(mt[0]), mt[1] != ""))


def _row(method: str, labelled: int, rs: list[dict]) -> dict:
    """A table row: the metrics, iterations and training minutes averaged over the results ``rs``."""
    row = {"method": method, "labelled": labelled, "seeds": len(rs)}
    for k in ("dice", "jaccard", "hd95", "asd"):
        row[k] = float(np.mean([r[k] for r in rs]))
    row["iterations"] = round(float(np.mean([r["iterations"] for r in rs])))
    row["train_min"] = float(np.mean([r["train_wall_s_total"] for r in rs])) / 60
    row["runs"] = [{"name": r["name"], "commit": r["commit"], "command": r["command"]} for r in rs]
    row["commit"] = ", ".join(dict.fromkeys(str(r["commit"])[:7] for r in rs))
    return row


def table_rows(results: Path, book: dict, methods: list[str], tag: str, labelled: list[int],
               seeds: list[int], minutes: float) -> list[dict]:
    """One row per (method, tag, labelled) of :func:`variants` with a result in ``results`` (averaged
    over the ``seeds`` found), then one per (method, labelled) of the book's ``references``
    (``run_la.py`` results of a method's own config, named ``<method> (own config)``)."""
    rows = []
    for m, t in variants(book, minutes, methods, tag):
        for n in sorted(set(labelled) | {4, 8}):
            rs = [json.loads(p.read_text()) for s in seeds
                  if (p := results / f"{run_name(m, n, s, minutes, t)}.json").is_file()]
            if rs:
                rows.append(_row(m + t, n, rs))
    refs: dict[tuple[str, int], list[dict]] = {}
    for name in book.get("references", []):
        r = json.loads((results / f"{name}.json").read_text())
        refs.setdefault((r["method"], r["labelled"]), []).append(r)
    rows += [_row(f"{m} (own config)", n, rs) for (m, n), rs in sorted(refs.items(), key=lambda kv: -kv[0][1])]
    return rows


def table_text(rows: list[dict], minutes: float, book_name: str) -> str:
    """The table's Markdown: the rows, then every row's runs with their commits and commands."""
    cols = ["method", "labelled", "seeds", "dice", "jaccard", "hd95", "asd", "iterations", "train_min", "commit"]
    runs = [f"- `{x['name']}` (commit {x['commit']}): `{x['command']}`" for r in rows for x in r["runs"]]
    return (f"# LA dev split (last 16 ids of train.list), {minutes:g} CPU minutes of training per run\n\n"
            "Dice/Jaccard as fractions, HD95/ASD in voxels of the original grid (medpy convention); "
            f"iteration counts per method from `{book_name}` (its step time measured on this machine); "
            "a method marked (own config) ran its own config and schedule (`run_la.py`).\n\n"
            + table_markdown(rows, cols) + "\nRuns:\n\n" + "\n".join(runs) + "\n")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--methods", nargs="+", default=METHODS)
    ap.add_argument("--labelled", nargs="+", type=int, default=[8])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--minutes", type=float, default=14.0, help="training wall time per run (the CPU budget)")
    ap.add_argument("--base-config", default="configs/la_supervised_cpu.yaml")
    ap.add_argument("--set", action="append", default=[], help="override for every run")
    ap.add_argument("--tag", default="", help="variant suffix of run names and budget keys (ablations: "
                    "e.g. --methods mn --tag _fixed --set method.options.sampling=fixed)")
    ap.add_argument("--table", default="la_table")
    ap.add_argument("--only-table", action="store_true")
    ap.add_argument("--reference", nargs="+", default=[], help="run_la.py result names (results/<name>.json) "
                    "to list in the table, kept in its budget file")
    a = ap.parse_args(argv)
    results = HERE / "results"
    book = results / f"{a.table}_budget.json"
    if a.reference:
        for name in a.reference:
            if not (results / f"{name}.json").is_file():
                raise SystemExit(f"--reference {name}: no result file {results / name}.json")
        kept = load_book(book)
        kept["references"] = sorted(set(kept.get("references", [])) | set(a.reference))
        write_text(book, json.dumps(kept, indent=1))
    if not a.only_table:
        from run_la import main as run_one

        todo = [(m, n, s) for m in a.methods for n in a.labelled for s in a.seeds
                if not (results / f"{run_name(m, n, s, a.minutes, a.tag)}.json").is_file()]
        iters = {}  # every budget measured first, so the runs' own load never skews a measurement
        for m, n, s in todo:
            iters[m] = budget(book, m, CONFIGS.get(m, a.base_config), method_sets(m, n, s) + a.set, a.minutes, a.tag)
        for m, n, s in todo:
            config, sets = CONFIGS.get(m, a.base_config), method_sets(m, n, s) + a.set
            sets += budget_sets(load_config(config, sets).model_dump(mode="json"), iters[m])
            run_one([config, "--name", run_name(m, n, s, a.minutes, a.tag), *sum((["--set", x] for x in sets), [])])
    rows = table_rows(results, load_book(book), a.methods, a.tag,
                      a.labelled, a.seeds, a.minutes)
    write_text(results / f"{a.table}.json", json.dumps(rows, indent=1))
    text = table_text(rows, a.minutes, book.name)
    write_text(results / f"{a.table}.md", text)
    print(text)


if __name__ == "__main__":
    script(main)
