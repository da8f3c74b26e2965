"""Is a simulated scanner domain a shift? Trained LA runs evaluated on their own dev cases as acquired
(domain A: the in-domain reference) and on the same cases rendered in the simulated domains
(``semi3d.data.domain_shift``: B, C, D) at several strengths (``ScannerShift.scaled``: 1 = the
domains ``domains_la.py`` trains on), through each run's own preprocessing (its z-score
normalisation included). Nothing is retrained: the drop from A to a domain is the shift's cost
to a model that never saw it, the gap a domain-adaptation method has to close.

    PYTHONPATH=src python benchmarks/shift_gap_la.py runs/bench/la_supervised_l8_s0_41min --strengths 1 2 3

Writes ``benchmarks/results/<name>.json|md`` (default name ``shift_gap_la``); the rendered cases go
to ``--data-root``/s<strength> (kept, reused when their parameters match) and each evaluation to
``RUN/eval_shift_<domain>_s<strength>``.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

from semi3d.atomic import write_text
from semi3d.data.domain_shift import DOMAINS, holds_domain_dataset, write_domain_dataset
from semi3d.engine.rundir import RunDir
from semi3d.evaluation.evaluate import evaluate_run
from semi3d.evaluation.summary import table_markdown

from benchlib import command_line, foreground, git_commit, machine, script

HERE = Path(__file__).resolve().parent


def render(run: RunDir, split: str, domains: list[str], strength: float, root: Path, seed: int) -> Path:
    """The ``split`` cases of ``run`` rendered in ``domains`` at ``strength`` under ``root``, in the
    run's data format (written unless ``root/domains.json`` already holds these cases with these
    parameters)."""
    cfg, ids = run.load_config(), run.load_splits()[split]
    shifts = {d: DOMAINS[d].scaled(strength) for d in domains}
    plan = {d: ids for d in domains}
    if holds_domain_dataset(root, plan, shifts, seed):
        return root
    print(f"rendering {len(ids)} cases in {', '.join(domains)} at strength {strength:g} -> {root}", flush=True)
    return write_domain_dataset(cfg.data.root, root, plan, src_format=cfg.data.format,
                                src_options=cfg.data.options, domains=shifts, seed=seed, format=cfg.data.format)


def _row(run: RunDir, domain: str, strength: float, metrics: dict, ref: dict | None) -> dict:
    fg = foreground(metrics)
    return {"run": run.path.name, "domain": domain, "strength": strength, "dice": fg["dice"], "hd95": fg["hd95"],
            "dice_drop": None if ref is None else ref["dice"] - fg["dice"]}


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", help="trained run folders (trained on the data as acquired)")
    ap.add_argument("--split", default="validation", help="the runs' split to evaluate (LA: the dev split)")
    ap.add_argument("--domains", nargs="+", default=["B", "C", "D"], choices=sorted(set(DOMAINS) - {"A"}))
    ap.add_argument("--strengths", nargs="+", type=float, default=[1.0])
    ap.add_argument("--seed", type=int, default=0, help="base seed of the rendered shifts")
    ap.add_argument("--data-root", default="runs/data/LA_shift")
    ap.add_argument("--results", default=str(HERE / "results"))
    ap.add_argument("--name", default="shift_gap_la")
    a = ap.parse_args(argv)
    runs = [RunDir(r).require() for r in a.runs]
    rows, t0 = [], time.time()
    for run in runs:
        ref = _row(run, "A", 0.0, evaluate_run(run.path, split=a.split), None)
        rows.append({**ref, "dice_drop": 0.0})
        for s in a.strengths:
            root = render(run, a.split, a.domains, s, Path(a.data_root) / f"s{s:g}", a.seed)
            for d in a.domains:
                m = evaluate_run(run.path, ids_list=root / f"{d}.list", data_root=root,
                                 out=run.eval_dir(f"shift_{d}_s{s:g}"))
                rows.append(_row(run, d, s, m, ref))
                print(json.dumps(rows[-1]), flush=True)
    command = command_line(__file__, argv)
    out = Path(a.results)
    out.mkdir(parents=True, exist_ok=True)
    shifts = {f"{d}@{s:g}": asdict(DOMAINS[d].scaled(s)) for s in a.strengths for d in a.domains}
    write_text(out / f"{a.name}.json", json.dumps(
        {"command": command, "commit": git_commit(), "machine": machine(), "split": a.split, "seed": a.seed,
         "shifts": shifts, "wall_s": time.time() - t0, "rows": rows}, indent=1))
    write_text(out / f"{a.name}.md",
        "# Simulated scanner shifts: in-domain (A) vs rendered domains, nothing retrained\n\n"
        f"`{command}`\n\n" + table_markdown(rows, ["run", "domain", "strength", "dice", "dice_drop", "hd95"]) + "\n")
    return rows


if __name__ == "__main__":
    script(main)
