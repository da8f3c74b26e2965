"""The prepared checks for a lent GPU machine, in one run: every method trains on CUDA under AMP,
fp16 with its GradScaler, resume on CUDA, and A&D against labelled-only on LA for as many
iterations as a wall-clock budget allows (issue #22: A&D never trained to convergence on the CPU).

The GPU machine cannot read ../shared, so LA travels as a half-resolution copy made here first
(the CPU protocol's grid: scale 0.5, 8-bit h5, the UA-MT layout; z-scored there):

    PYTHONPATH=src .venv/bin/python benchmarks/gpu_check.py pack-la --out .gpu/la_half
    # on the GPU machine (python3 with CUDA torch; semi3d's pure-python deps carried as wheels):
    PYTHONPATH=src python3 benchmarks/gpu_check.py run --la .gpu/la_half --out $OUT --budget 330

``run`` writes ``gpu_check.json`` (environment, smoke results, calibration, the LA runs' final
validation Dice of the student and of A&D's monitors) and ``runs.tar.gz`` (each LA run's config,
log, summary and ``model_final.pt``, to evaluate at the original grid with ``semi3d evaluate``).
The LA runs' Dice here is the trainer's validation on the dev split (last 16 ids) at the training
grid; the final model is reported, never selected on.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch
import yaml

from semi3d.atomic import write_text

T0 = time.time()
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
LA_CONFIG = ROOT / "configs/la_ad_cpu.yaml"
DEVICE = "cuda"  # --device cpu: a dry run of the script here
SMOKE_ITERATIONS = 20
VAL_MAX_CASES = None  # --val-max-cases: fewer validation cases in a dry run
METHODS = ("supervised", "mean_teacher", "ua_mt", "cps", "bcp", "urpc", "ad", "mn")
TINY_SEGFORMER = dict(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1], num_attention_heads=[1, 1, 1, 1],
                      decoder_hidden_size=16, sr_ratios=[4, 2, 1, 1])


# ------------------------------------------------------------------------------------ pack-la
def pack_la(out: Path, root: Path = ROOT.parent / "shared/data/LA", scale: float = 0.5) -> None:
    """Write every case of LA's train.list at ``scale`` (resampled as the CPU protocol) to
    ``out/<id>/mri_norm2.h5`` with ``out/train.list``: image quantised to uint8 over its range (LA's
    MRI is 8-bit; the run z-scores it, so only the quantisation step, 1/255 of the range, is
    lost), label uint8, gzip.""" 
    import h5py

    from semi3d.data.preprocess import Preprocessor
    from semi3d.data.readers import UAMTH5Reader

    listed = root / "train.list"
    reader = UAMTH5Reader(root, list_file=listed if listed.is_file() else None)
    prep = Preprocessor(scale=scale, normalisation="zscore")
    out.mkdir(parents=True, exist_ok=True)
    ids = reader.case_ids()
    for cid in ids:
        case = prep(reader.load(cid))
        (out / cid).mkdir(exist_ok=True)
        with h5py.File(out / cid / "mri_norm2.h5", "w") as f:
            x = case.image[0]
            q = np.round((x - x.min()) / max(float(x.max() - x.min()), 1e-8) * 255).astype(np.uint8)
            f.create_dataset("image", data=q, compression="gzip")  # z-scored again there: the scale is moot
            if case.label is not None:
                f.create_dataset("label", data=case.label.astype(np.uint8), compression="gzip")
    write_text(out / "train.list", "\n".join(ids) + "\n")
    print(f"{len(ids)} cases -> {out} ({sum(p.stat().st_size for p in out.rglob('*.h5')) / 2**20:.1f} MiB)")


# ------------------------------------------------------------------------------------- smoke
def tiny_tree(method: str, root: Path, out: Path, precision: str, iterations: int | None = None) -> dict:
    iterations = iterations or SMOKE_ITERATIONS
    tree = {"name": f"smoke_{method}_{precision}", "output_dir": str(out), "seed": 0, "device": DEVICE,
            "precision": precision,
            "data": {"format": "nnunet", "root": str(root), "patch_size": [32, 32, 32],
                     "splits": {"labelled": {"first": 4}, "validation": {"last": 2},
                                "unlabelled": "none" if method == "supervised" else "rest"}},
            "model": {"net3d": {"name": "vnet" if method == "ua_mt" else "unet3d",
                                "options": {"n_filters": 8} if method == "ua_mt" else {"levels": 4, "base": 8}}},
            "method": {"name": method, "options": {}},
            "train": {"iterations": iterations, "batch_size": 2, "optimizer": {"name": "adamw", "lr": 3e-3},
                      "log_every": 1, "val_every": iterations, "checkpoint_every": iterations, "progress_bar": False}}
    if method == "ad":
        tree["method"]["options"] = {"width": 8, "depth": 4, "unlabelled_batch": 2}
    if method == "mn":
        tree["model"]["net2d"] = {"name": "segformer", "options": {"adaptation": "full", "config": TINY_SEGFORMER}}
        tree["method"]["options"] = {"epoch_length": 2}
        tree["train"]["schedule"] = {"name": "cosine", "cycles": [5]}
    return tree


def smoke(work: Path) -> dict:
    """Each method (and supervised in fp16) for 20 iterations on CUDA; then A&D resume vs uninterrupted."""
    from semi3d.config import load_config
    from semi3d.data.synthetic import write_dataset
    from semi3d.engine.trainer import Trainer

    root = write_dataset(work / "syn", n_labelled=6, n_unlabelled=4, n_test=0, seed=0, shape=(40, 40, 36), num_classes=2)
    out = {}
    for method, prec in [(m, "auto") for m in METHODS] + [("supervised", "fp16")]:
        key = f"{method}/{prec}"
        try:
            cfg = load_config(tree=tiny_tree(method, root, work / "runs", prec))
            t0 = time.time()
            tr = Trainer(cfg)
            summ = tr.fit()
            recs = [json.loads(x) for x in (cfg.run_dir / "log.jsonl").read_text().splitlines()]
            loss = [sum(v for k, v in r.items() if k.startswith("loss/")) for r in recs if any(k.startswith("loss/") for k in r)]
            val = [r["val/dice"] for r in recs if "val/dice" in r]
            out[key] = {"ok": True, "precision": tr.precision, "seconds": time.time() - t0,
                        "sec_per_it_last": recs[-2].get("sec_per_it") if len(recs) > 1 else None,
                        "loss_first3": statistics.mean(loss[:3]), "loss_last3": statistics.mean(loss[-3:]),
                        "val_dice": val[-1] if val else None, "iterations": summ["iterations"]}
        except Exception as e:  # recorded, the other checks go on
            out[key] = {"ok": False, "error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()[-2000:]}
        print(key, json.dumps({k: v for k, v in out[key].items() if k != "trace"}), flush=True)
    try:  # resume on CUDA: cudnn backward is not bitwise deterministic, so report the difference
        tree = tiny_tree("ad", root, work / "runs", "auto", iterations=8)
        tree["train"]["checkpoint_every"] = 4
        full = load_config(tree={**tree, "name": "resume_full"})
        Trainer(full).fit()
        part = load_config(tree={**tree, "name": "resume_part"})
        Trainer(part).fit(stop_at=4)
        Trainer(part, resume=True).fit()
        a = torch.load(full.run_dir / "checkpoints/last.pt", weights_only=False)["method"]
        b = torch.load(part.run_dir / "checkpoints/last.pt", weights_only=False)["method"]
        diff = max(float((a[k].float() - b[k].float()).abs().max()) for k in a if a[k].is_floating_point())
        out["ad/resume"] = {"ok": True, "max_abs_state_diff": diff}
    except Exception as e:
        out["ad/resume"] = {"ok": False, "error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()[-2000:]}
    print("ad/resume", json.dumps({k: v for k, v in out["ad/resume"].items() if k != "trace"}), flush=True)
    return out


# ------------------------------------------------------------------------------------ LA runs
def la_tree(la: Path, out: Path, method: str, labelled: int, iterations: int, seed: int = 0) -> dict:
    """``configs/la_ad_cpu.yaml`` on the packed copy (grid kept, z-scored again: a no-op), on CUDA;
    ``supervised``: the same student network (``ad_student``) and the same strong augmentation
    on the labelled patches only."""
    tree = yaml.safe_load(LA_CONFIG.read_text())
    tree.update(name=f"gpu_la_{method}_l{labelled}_s{seed}", output_dir=str(out), seed=seed, device=DEVICE,
                precision="auto", threads=3)
    d = tree["data"]
    d.update(root=str(la), options={"list_file": str(la / "train.list"), "spacing": [1.25, 1.25, 1.25]},
             preprocess={"normalisation": "zscore"})
    d["splits"]["labelled"] = {"first": labelled}
    t = tree["train"]
    t.update(iterations=iterations, val_every=max(iterations // 4, 1), checkpoint_every=max(iterations // 4, 1),
             log_every=25, channels_last=None, progress_bar=False)
    if VAL_MAX_CASES:
        t["val_max_cases"] = VAL_MAX_CASES
    if method == "supervised":
        opts = tree["method"]["options"]
        tree["model"]["net3d"] = {"name": "ad_student", "options": {k: opts[k] for k in
                                  ("width", "depth", "normalization", "dropout", "conv_dropout")}}
        tree["method"] = {"name": "supervised", "options": {"strong_augment": True}}
        d["splits"]["unlabelled"] = "none"
    return tree


def step_seconds(tree: dict, steps: int = 12) -> float:
    """Median seconds of one training step (after 4 warm-up steps) of the run ``tree`` describes."""
    from semi3d.config import load_config
    from semi3d.engine.trainer import Trainer

    tr = Trainer(load_config(tree={**tree, "name": tree["name"] + "_calib"}))
    ts = []
    sync = torch.cuda.synchronize if tr.device.type == "cuda" else (lambda: None)
    for s in range(steps + 4):
        sync()
        t0 = time.perf_counter()
        tr.train_step(s)
        sync()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts[4:])


def parse_variant(text: str) -> tuple[str, str, int, dict]:
    """``tag:method:labelled[:key=value,key=value]`` (dotted config keys, YAML values), e.g.
    ``mu0:ad:8:method.options.mu=0``."""
    parts = text.split(":", 3)
    if len(parts) < 3:
        raise SystemExit(f"--variants: expected tag:method:labelled[:key=value,...], got {text!r}")
    sets = dict(kv.split("=", 1) for kv in parts[3].split(",")) if len(parts) == 4 and parts[3] else {}
    return parts[0], parts[1], int(parts[2]), {k: yaml.safe_load(v) for k, v in sets.items()}


def set_dotted(tree: dict, key: str, value) -> None:
    *head, last = key.split(".")
    for k in head:
        tree = tree.setdefault(k, {})
    tree[last] = value


def la_runs(la: Path, work: Path, budget: float, labelled: list[int], cap: int, steps: int = 12,
            deadline: float = float("inf"), variants: list[str] | None = None, iterations: int | None = None) -> dict:
    """A&D and labelled-only for each labelled count (or the given ``variants``), all in parallel,
    iterations from the budget (or given); runs still going at ``deadline`` (a ``time.time()``) are
    killed (their log keeps the validations)."""
    probe = None
    if iterations is None:
        probe = {m: step_seconds(la_tree(la, work / "calib", m, labelled[0], 1000), steps) for m in ("ad", "supervised")}
        per_round = len(labelled) * (probe["ad"] + probe["supervised"])  # if the GPU serialised every process
        est = 0.5 * per_round + 0.5 * probe["ad"]  # launch-bound processes overlap: between the two
        iterations = max(int(min(cap, budget / (1.15 * est)) // 100 * 100), min(cap, 100))
    specs = [parse_variant(v) for v in variants] if variants else [("", m, n, {}) for n in labelled for m in ("ad", "supervised")]
    jobs = {}
    for tag, m, n, sets in specs:
        tree = la_tree(la, work / "runs", m, n, iterations)
        if tag:
            tree["name"] = f"gpu_la_{m}_l{n}_{tag}_s{tree['seed']}"
        for k, v in sets.items():
            set_dotted(tree, k, v)
        path = work / f"{tree['name']}.yaml"
        write_text(path, yaml.safe_dump(tree))
        log = open(work / f"{tree['name']}.log", "w")
        jobs[tree["name"]] = (subprocess.Popen([sys.executable, "-m", "semi3d", "train", str(path)], stdout=log,
                                               stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "3"}), tree)
    while any(p.poll() is None for p, _ in jobs.values()) and time.time() < deadline:
        time.sleep(5)
    res = {"step_seconds_alone": probe, "iterations": iterations, "runs": {}}
    for name, (p, tree) in jobs.items():
        if p.poll() is None:
            p.kill()
        run = Path(tree["output_dir"]) / name
        recs = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()] if (run / "log.jsonl").exists() else []
        val = [r for r in recs if "val/dice" in r]
        timing = [r for r in recs if "sec_per_it" in r]
        res["runs"][name] = {"returncode": p.returncode, "method": tree["method"]["name"],
                             "labelled": tree["data"]["splits"]["labelled"]["first"],
                             "validation": val, "sec_per_it": timing[-1]["sec_per_it"] if timing else None,
                             "summary": json.loads((run / "train_summary.json").read_text()) if (run / "train_summary.json").exists() else None}
        print(name, json.dumps({k: v for k, v in res["runs"][name].items() if k != "validation"}), val[-1:] , flush=True)
    return res


def pack_runs(work: Path, dest: Path, models: bool = False) -> None:
    """Each LA run's config, splits, log and summary into ``dest`` (tar.gz); with ``models`` its
    ``model_final.pt`` beside it as ``<run>.pt`` (the device returns files of 16 MiB at most)."""
    with tarfile.open(dest, "w:gz") as tar:
        for run in sorted((work / "runs").glob("gpu_la_*")):
            for rel in ("config.yaml", "splits.json", "log.jsonl", "train_summary.json"):
                if (run / rel).exists():
                    tar.add(run / rel, arcname=f"{run.name}/{rel}")
            if models and (run / "checkpoints/model_final.pt").exists():
                shutil.copy(run / "checkpoints/model_final.pt", dest.parent / f"{run.name}.pt")
        for log in sorted(work.glob("gpu_la_*.log")):
            tar.add(log, arcname=f"logs/{log.name}")


# ------------------------------------------------------------------------ after the GPU run
def bn_recalibration(run_config: Path, models: list[Path], la: Path, batches: int = 40) -> dict:
    """Dev Dice (training grid, CPU fp32) of each returned ``model_final.pt`` (an ``ad_student`` or
    the supervised comparator) as saved, then after re-estimating its BatchNorm statistics on
    ``batches`` x 8 plain-path training patches (labelled + unlabelled, no weight change): does
    A&D's student lose Dice to running statistics mixed over the diffusion path's passes?"""
    from semi3d.config import load_config
    from semi3d.engine.trainer import Trainer

    tree = yaml.safe_load(run_config.read_text())  # a supervised run's config: builds an ad_student
    tree.update(name="bn_recalibration", output_dir=str(Path("/tmp") / "semi3d_bn_recal"), device="cpu", precision="fp32")
    tree["data"].update(root=str(la), options={"list_file": str(la / "train.list"), "spacing": [1.25] * 3})
    tree["data"]["splits"]["unlabelled"] = "rest"
    tr = Trainer(load_config(tree=tree))
    net = tr.method.groups["net"]
    out = {}
    for path in models:
        net.load_state_dict(torch.load(path, weights_only=False, map_location="cpu")["state_dict"])
        before = tr.validate()["val/dice"]
        bns = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over the batches below
        net.eval()
        for m in bns:
            m.train()
        with torch.no_grad():
            for _ in range(batches):
                b = tr.make_batch(4, 4)
                net(torch.cat([b.image_l, b.image_u]))
        out[path.stem] = {"dice_as_saved": before, "dice_bn_reestimated": tr.validate()["val/dice"]}
        print(path.stem, json.dumps(out[path.stem]), flush=True)
    return out


def to_markdown(results: dict[str, dict]) -> str:
    """One table per GPU result file: each LA run's validations (student, and A&D's monitors)."""
    lines = []
    for name, res in results.items():
        la = res.get("la", {})
        lines += [f"## {name}", "", f"`{res.get('command', '(command in benchmarks/README.md)')}` (commit {res.get('commit')}, "
                  f"{res.get('device')}, torch {res.get('torch')}, precision bf16 AMP)", "",
                  "| run | iterations | s/it (parallel) | Dice @25 % | @50 % | @75 % | final student | final psi | final DDIM |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for run, r in la.get("runs", {}).items():
            v = r["validation"]
            f = v[-1] if v else {}
            cells = [f"{x['val/dice']:.4f}" for x in v[:-1]] + [""] * (3 - len(v[:-1]))
            lines.append(f"| {run} | {la.get('iterations')} | {r['sec_per_it']:.3f} | " + " | ".join(cells) +
                         f" | {f.get('val/dice', float('nan')):.4f} | {f.get('val/dice@psi', float('nan')):.4f} | "
                         f"{f.get('val/dice@ddim', float('nan')):.4f} |".replace("nan", "-"))
        lines.append("")
        smoke = res.get("smoke") or {}
        if smoke:
            lines += ["Smoke (tiny synthetic, 20 iterations each, CUDA):", "",
                      "| method / precision | ok | s/it | loss first 3 -> last 3 | val Dice | note |", "|---|---|---|---|---|---|"]
            for key, r in smoke.items():
                if not r.get("ok"):
                    lines.append(f"| {key} | no | | | | {r.get('error', '')} |")
                elif "max_abs_state_diff" in r:
                    lines.append(f"| {key} | yes | | | | resumed vs uninterrupted: max state difference {r['max_abs_state_diff']:g} |")
                else:
                    lines.append(f"| {key} | yes | {r['sec_per_it_last']:.3f} | {r['loss_first3']:.3f} -> {r['loss_last3']:.3f} | "
                                 f"{r['val_dice']:.3f} | {r['precision']} |")
            lines.append("")
    return "\n".join(lines)


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    except OSError:  # no git there: the caller passes SEMI3D_COMMIT
        return ""


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack-la")
    p.add_argument("--out", type=Path, required=True)
    r = sub.add_parser("run")
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--la", type=Path, help="the pack-la folder (no LA runs without it)")
    r.add_argument("--budget", type=float, default=330.0, help="seconds of parallel LA training")
    r.add_argument("--labelled", type=int, nargs="+", default=[8, 4])
    r.add_argument("--cap", type=int, default=8000, help="most LA iterations")
    r.add_argument("--work", type=Path, default=Path("/tmp/gpu_check"))
    r.add_argument("--device", default="cuda", help="cpu: a dry run of this script")
    r.add_argument("--smoke-iterations", type=int, default=20)
    r.add_argument("--calib-steps", type=int, default=12)
    r.add_argument("--val-max-cases", type=int)
    r.add_argument("--variants", nargs="+", help="tag:method:labelled[:key=value,...] instead of A&D and "
                   "supervised for each --labelled")
    r.add_argument("--iterations", type=int, help="LA iterations (default: from --budget)")
    r.add_argument("--skip-smoke", action="store_true")
    r.add_argument("--models", action="store_true", help="return each LA run's model_final.pt")
    r.add_argument("--deadline", type=float, default=520.0, help="seconds after start when LA runs are killed")
    c = sub.add_parser("recal", help="BatchNorm re-estimation check of returned models (CPU)")
    c.add_argument("--config", type=Path, required=True, help="a returned supervised run's config.yaml")
    c.add_argument("--la", type=Path, required=True)
    c.add_argument("--out", type=Path, required=True, help="JSON result file")
    c.add_argument("models", type=Path, nargs="+")
    t = sub.add_parser("table", help="markdown of result files")
    t.add_argument("--out", type=Path, required=True)
    t.add_argument("results", type=Path, nargs="+")
    a = ap.parse_args(argv)
    if a.cmd == "pack-la":
        return pack_la(a.out)
    if a.cmd == "recal":
        res = {"command": " ".join(["python", *sys.argv]), "commit": _commit(), "machine": "CPU, fp32",
               "models": bn_recalibration(a.config, a.models, a.la)}
        write_text(a.out, json.dumps(res, indent=1))
        return None
    if a.cmd == "table":
        write_text(a.out, to_markdown({p.stem: json.loads(p.read_text()) for p in a.results}))
        return None
    global DEVICE, SMOKE_ITERATIONS, VAL_MAX_CASES
    DEVICE, SMOKE_ITERATIONS, VAL_MAX_CASES = a.device, a.smoke_iterations, a.val_max_cases
    a.out.mkdir(parents=True, exist_ok=True)
    a.work.mkdir(parents=True, exist_ok=True)
    res = {"torch": torch.__version__, "cuda": torch.version.cuda,
           "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
           "commit": os.environ.get("SEMI3D_COMMIT") or _commit(), "command": " ".join(["python", *sys.argv])}
    print(json.dumps(res), flush=True)
    res["smoke"] = {} if a.skip_smoke else smoke(a.work)
    res["smoke_seconds"] = time.time() - T0
    write_text(a.out / "gpu_check.json", json.dumps(res, indent=1))
    if a.la is not None:
        res["la"] = la_runs(a.la, a.work, a.budget, a.labelled, a.cap, a.calib_steps, T0 + a.deadline,
                            a.variants, a.iterations)
        write_text(a.out / "gpu_check.json", json.dumps(res, indent=1))
        pack_runs(a.work, a.out / "runs.tar.gz", a.models)
    print("total seconds", time.time() - T0, flush=True)


if __name__ == "__main__":
    main()
