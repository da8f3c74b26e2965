"""Where do a mining run's pseudo-labels lose: in the prompts or in the refiner? For finished mining
runs, the small model of round ``--round`` (default 0, the model the first mining round prompts
from) predicts the unlabelled images whose hidden labels are known, and its masks are scored
against those labels next to the run's refiner prompted four ways, each with the run's prompt
options (margin, minimum area, ...) and refinement settings:

- ``model``: the small model's own masks (what self-training learns from);
- ``refined``: prompts from every component of the model's mask, as the run mined;
- ``largest``: prompts from the model's largest component only (drops small false positives);
- ``hit``: prompts only from the model's components that touch the hidden label (an oracle that
  removes every false-positive box, keeps the model's box sizes);
- ``oracle``: prompts from the hidden label itself, drawn as the run draws them from the model's
  mask (one box per true component; with the run's mask prompt too, which LiteMedSAM ignores): the
  ceiling of better prompts with this refiner (with the ``identity`` refiner: the label itself).

Dice pooled over the images, and the mean per image. Nothing is trained and no selection is
applied: every unlabelled image counts. The refiner's embedding cache (the run's ``cache_dir``) is
reused, so a probe costs its decoder passes.

    PYTHONPATH=src python benchmarks/mine_probe.py runs/bench_kvasir/mine_kvasir_mbv2_litemedsam_p25_s0
    ... --set prompts.margin=0.2 --name mine_probe_margin20   # the same model, other prompts

``--set`` overrides the run's mining config for the probe (prompt options, refiner options); the
model, data and images stay the run's.

Writes ``benchmarks/results/<name>.json|md`` (default name ``mine_probe``).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from semi3d.atomic import write_text
from semi3d.engine import checkpoint as ckpt
from semi3d.engine.precision import pick_device, resolve_precision
from semi3d.engine.rundir import RunDir
from semi3d.evaluation.summary import table_markdown
from semi3d.mining.config import build_refiner, load_mining_config
from semi3d.mining.evaluation import pooled_dice
from semi3d.mining.iterative import label_dice, refine_iteratively
from semi3d.mining.loop import load_mining_data
from semi3d.mining.prompts import confident_label, mask_components
from semi3d.mining.train2d import predict_probabilities
from semi3d.registry import NETS2D

from benchlib import command_line, git_commit, machine, script

HERE = Path(__file__).resolve().parent
VARIANTS = ("model", "refined", "largest", "hit", "oracle")


def _hit(label: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """``label`` without its 8-connected components (per class) that share no pixel with ``truth``'s class."""
    out = np.zeros_like(label)
    for c in np.unique(label[label > 0]):
        for comp in mask_components(label == c):
            if (comp & (truth == c)).any():
                out[comp] = c
    return out


def probe(run_path: Path, round_index: int = 0, limit: int | None = None, overrides: list[str] = ()) -> dict:
    """The probe of one mining run (see the module docstring): ``{"run", "round", "n_images",
    "rows": [{"variant", "dice_pooled", "dice_mean", "n_prompted"}], "seconds"}``."""
    run = RunDir(run_path).require()
    cfg = load_mining_config(run.config, list(overrides))
    device = pick_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    data = load_mining_data(cfg)
    images = [s for s in data.unlabelled if s.id in data.truth][:limit]
    if not images:
        raise SystemExit(f"{run.path}: no unlabelled image with a hidden label to probe")
    k = data.num_classes
    net = NETS2D.build(cfg.model.name, in_channels=data.in_channels, num_classes=k, **cfg.model.options)
    net.load_state_dict(ckpt.load(run.checkpoints / f"small_round{round_index}.pt"))
    refiner = build_refiner(cfg.refiner, device)
    t0 = time.time()
    probs = predict_probabilities(net, images, cfg.train.predict_batch, device, precision)
    largest = cfg.prompts.model_copy(update={"max_components": 1})
    labels: dict[str, list[np.ndarray]] = {v: [] for v in VARIANTS}
    prompted = dict.fromkeys(VARIANTS, 0)
    for i, (s, p) in enumerate(zip(images, probs)):
        truth = data.truth[s.id]
        model = confident_label(p, cfg.prompts.min_confidence)
        sources = {"refined": (model, cfg.prompts, cfg.iterate), "largest": (model, largest, cfg.iterate),
                   "hit": (_hit(model, truth), cfg.prompts, cfg.iterate), "oracle": (truth, cfg.prompts, cfg.iterate)}
        labels["model"].append(model)
        for v, (source, prompts, iterate) in sources.items():
            rng = np.random.default_rng([cfg.seed, 1, i])  # the run's first mining round draws the same
            r = refine_iteratively(refiner, s.image, source, k, prompts, iterate, rng, key=s.id)
            labels[v].append(r.label)
            prompted[v] += r.n_prompts > 0
        if (i + 1) % 100 == 0:
            print(f"{run.path.name}: {i + 1}/{len(images)} images, {time.time() - t0:.0f} s", flush=True)
    truths = [data.truth[s.id] for s in images]
    rows = [{"variant": v, "dice_pooled": pooled_dice(labels[v], truths, k),
             "dice_mean": float(np.mean([label_dice(a, t, k) for a, t in zip(labels[v], truths)])),
             "n_prompted": prompted[v] if v != "model" else None} for v in VARIANTS]
    return {"run": run.path.name, "round": round_index, "n_images": len(images), "rows": rows,
            "seconds": time.time() - t0}


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", help="finished mining run folders (semi3d mine / mine_kvasir.py)")
    ap.add_argument("--round", type=int, default=0, help="the small model after this round prompts")
    ap.add_argument("--limit", type=int, default=None, help="probe the first N unlabelled images only")
    ap.add_argument("--set", action="append", default=[], help="key=value override of the runs' mining config")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--results", default=str(HERE / "results"))
    ap.add_argument("--name", default="mine_probe")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    probes = [probe(Path(r), a.round, a.limit, a.set) for r in a.runs]
    for p in probes:
        print(json.dumps(p), flush=True)
    command = command_line(__file__, argv)
    rows = [{"run": p["run"], "images": p["n_images"], **r} for p in probes for r in p["rows"]]
    out = Path(a.results)
    write_text(out / f"{a.name}.json", json.dumps({"command": command, "commit": git_commit(), "machine": machine(),
                                                    "round": a.round, "overrides": a.set, "probes": probes}, indent=1))
    write_text(out / f"{a.name}.md",
               "# Mining probe: the small model's masks vs the refiner prompted from them, from their true "
               "components only, and from the hidden labels\n\n"
               f"`{command}`\n\n"
               + table_markdown(rows, ["run", "images", "variant", "dice_pooled", "dice_mean", "n_prompted"]) + "\n")
    return rows


if __name__ == "__main__":
    script(main)
