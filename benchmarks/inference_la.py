"""Inference-time levers on trained LA runs, evaluated on the dev split; nothing is retrained.

For each run folder and each variant, the run's method is rebuilt from ``checkpoints/last.pt``
with the variant's overrides, its predictor saved as ``RUN/checkpoints/model_<variant>.pt``
(``resave_inference_model``) and evaluated on the validation split (last 16 ids of train.list)
into ``RUN/eval_validation_<variant>``. Variants:

- ``net3d``: the 3D model alone (M&N's published inference; equals ``model_final.pt``);
- ``net3d_tta``: the same with mirror test-time augmentation over ``--mirror-axes``;
- ``ensemble``: M&N's 2D + 3D mean probability (``method.options.predict=ensemble``);
- ``ensemble_tta``: both.

With ``--across``, one more row: each variant's models of all the given runs averaged
(``semi3d evaluate --ensemble``: the mean of their probabilities), e.g. two seeds' 3D models.

Writes ``results/<name>.json|md`` (dev-split Dice, Jaccard, HD95, ASD per variant and run, per-case
Dice, evaluation seconds, command, commit, machine).

    python benchmarks/inference_la.py runs/bench/la_mn_l8_b16_s21 --name inference_la_l8
    python benchmarks/inference_la.py RUN --name inference_la_ovl75 --variants net3d --set inference.overlap=0.75 --tag _ovl75
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from semi3d.atomic import write_text
from semi3d.engine.checkpoint import resave_inference_model
from semi3d.evaluation.evaluate import evaluate_run
from semi3d.evaluation.summary import table_markdown

from benchlib import command_line, git_commit, machine, script

HERE = Path(__file__).resolve().parent


def variants(mirror_axes: str, extra: list[str] = ()) -> dict[str, list[str]]:
    """Each variant's config overrides, ``extra`` (``--set``) appended to every one."""
    tta = f"inference.mirror_axes=[{mirror_axes}]"
    ens = "method.options.predict=ensemble"
    return {v: [*ov, *extra] for v, ov in
            {"net3d": [], "net3d_tta": [tta], "ensemble": [ens], "ensemble_tta": [ens, tta]}.items()}


def _evaluate(run: Path, overrides: list[str], model: Path, out: Path, ensemble: list[Path] = ()) -> dict:
    t0 = time.time()
    summary = evaluate_run(run, "validation", overrides=overrides, which=str(model), out=out, ensemble=ensemble)
    fg = next(k for k in summary if k != "mean")
    per_case = json.loads((out / "metrics.json").read_text())["per_case"]
    return {**{m: summary[fg][m] for m in ("dice", "jaccard", "hd95", "asd")}, "eval_s": time.time() - t0,
            "dice_per_case": {c: r[fg]["dice"] for c, r in per_case.items()}}


def run_variants(run: Path, chosen: list[str], mirror_axes: str, extra: list[str] = (), tag: str = "") -> dict:
    """Writes ``RUN/checkpoints/model_<variant><tag>.pt`` and ``RUN/eval_validation_<variant><tag>``."""
    row = {"run": run.name}
    for v in chosen:
        ov = variants(mirror_axes, extra)[v]
        model = resave_inference_model(run, ov, run / "checkpoints" / f"model_{v}{tag}.pt")
        row[v] = _evaluate(run, ov, model, run / f"eval_validation_{v}{tag}")
    return row


def across_runs(runs: list[Path], chosen: list[str], mirror_axes: str, extra: list[str] = (), tag: str = "") -> dict:
    """Each variant's models of all ``runs`` as one (``--ensemble``: their mean probability), on the
    first run's dev split; needs ``run_variants`` first (it writes the model files)."""
    row = {"run": "+".join(r.name for r in runs)}
    for v in chosen:
        models = [r / "checkpoints" / f"model_{v}{tag}.pt" for r in runs]
        row[v] = _evaluate(runs[0], variants(mirror_axes, extra)[v], models[0],
                           runs[0] / f"eval_validation_{v}{tag}_across", models[1:])
    return row


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+", type=Path, help="trained M&N run folders")
    ap.add_argument("--name", default="inference_la")
    ap.add_argument("--variants", default="net3d,net3d_tta,ensemble,ensemble_tta")
    ap.add_argument("--mirror-axes", default="0,1,2")
    ap.add_argument("--across", action="store_true",
                    help="also every variant as the mean of all the runs' models (seeds, configs), on the first run's dev split")
    ap.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE",
                    help="one more config override for every variant, e.g. inference.overlap=0.75 (needs --tag)")
    ap.add_argument("--tag", default="", help="suffix of the model files and evaluation folders written")
    ap.add_argument("--results", default=str(HERE / "results"))
    a = ap.parse_args(argv)
    if a.extra and not a.tag:
        ap.error("--set needs --tag, so the variants' files of the run's own settings are not overwritten")
    chosen = a.variants.split(",")
    rows = [run_variants(r, chosen, a.mirror_axes, a.extra, a.tag) for r in a.runs]
    if a.across:
        rows.append(across_runs(a.runs, chosen, a.mirror_axes, a.extra, a.tag))
    command = command_line(__file__, argv)
    commit, out = git_commit(), Path(a.results)
    write_text(out / f"{a.name}.json", json.dumps({"command": command, "commit": commit, "machine": machine(),
                                                    "rows": rows}, indent=1))
    flat = [{"run": r["run"], "variant": v, **{m: r[v][m] for m in ("dice", "jaccard", "hd95", "asd", "eval_s")}}
            for r in rows for v in chosen]
    cols = ["run", "variant", "dice", "jaccard", "hd95", "asd", "eval_s"]
    write_text(out / f"{a.name}.md", f"# {a.name}\n\n`{command}` (commit {commit})\n\n"
                                      f"Dev split (last 16 ids of train.list), final model; mirror axes of the "
                                      f"`_tta` variants [{a.mirror_axes}]; overrides {a.extra or 'none'}; HD95 / ASD in voxels.\n\n" + table_markdown(flat, cols))
    print(table_markdown(flat, cols))
    return rows


if __name__ == "__main__":
    script(main)
