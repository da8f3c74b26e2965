"""Where a training step's time goes: full step vs the networks' own forward+backward (the limit),
the data pipeline on its own, peak memory, and sliding-window inference per volume.

For each config (default: the M&N CPU config and the supervised CPU baseline on LA) one trainer is
built (run folder under runs/speed) and, per phase of the method's schedule (M&N: stage 1, a 2D-student
step, a 3D-student step of stage 2):
- ``step``: ``Trainer.train_step`` as training runs it (patch sampling + augmentation, the method's
  losses and pseudo-targets, backward, gradient clipping, optimiser steps, logging scalars);
- ``raw``: the same network calls replayed on the same tensors: every forward the step made into one
  of the method's networks (teachers included, with the step's grad mode and train/eval mode) and one
  backward through the outputs that needed gradients. This is the hardware limit of that step;
- ``overhead = step / raw``;
- ``data``: ``Trainer.make_batch`` alone (sampling + augmentation), as batches/s and how many times
  faster than the step consumes them.
Then peak RSS (CPU; max allocated on CUDA) of the steps and the sliding-window inference time of one
LA volume at its original grid (preprocessing, windows, resampling back).

    python benchmarks/speed.py                      # LA (../shared), writes results/speed_la.json|md
    python benchmarks/speed.py --synthetic --repeats 2 --name speed_smoke   # tiny smoke run
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from semi3d.atomic import write_text
from semi3d.config import load_config
from semi3d.engine.precision import autocast
from semi3d.engine.trainer import Trainer

# benchmarks/ (this script's folder) is sys.path[0] when run; the tests put it there
from benchlib import git_commit, machine, script

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CONFIGS = {"mn": ROOT / "configs/la_mn_cpu.yaml", "supervised": ROOT / "configs/la_supervised_cpu.yaml"}


def peak_rss_reset() -> None:
    try:  # Linux: writing 5 resets VmHWM (the peak resident set) of this process
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_steal() -> float:
    """CPU seconds per core stolen by the hypervisor since boot (``steal`` of /proc/stat, USER_HZ
    100); NaN where unavailable. Its increase over a measurement is how long, per core, this
    virtual machine was runnable but not running: timings of that stretch are inflated."""
    try:
        f = Path("/proc/stat").read_text().split("\n")[0].split()
        return int(f[8]) / 100 / (os.cpu_count() or 1)
    except (OSError, IndexError, ValueError):
        return float("nan")


def _detach(x):
    if isinstance(x, torch.Tensor):
        return x.detach().clone()
    if isinstance(x, (list, tuple)):
        return type(x)(_detach(v) for v in x)
    return x


class Recorder:
    """Records every outermost forward call into the method's networks during one step: the module,
    its inputs (detached), whether autograd was on and whether the module was in training mode.
    Outermost: a call into any sub-module of the networks that no other recorded call encloses
    (the networks themselves for most methods; A&D's stems, encoder, decoders and time MLP, which
    it calls directly)."""

    def __init__(self, nets: list[torch.nn.Module]):
        self.calls: list[tuple] = []
        self.depth = 0
        mods = {id(m): m for n in nets for m in n.modules()}.values()
        self.handles = [h for m in mods for h in (m.register_forward_pre_hook(self._enter),
                                                   m.register_forward_hook(self._leave))]

    def _enter(self, mod, args):
        if self.depth == 0:
            self.calls.append((mod, _detach(args), torch.is_grad_enabled() and not torch.is_inference_mode_enabled(),
                               mod.training))
        self.depth += 1

    def _leave(self, mod, args, out):
        self.depth -= 1

    def remove(self):
        for h in self.handles:
            h.remove()


def top_networks(method) -> list[torch.nn.Module]:
    """The networks a method calls: its optimised groups and any other direct sub-network (teachers)."""
    nets = list(method.groups.values())
    nets += [m for n, m in method.named_children() if n != "groups" and any(True for _ in m.parameters())]
    return nets


def _tensors(o):
    if isinstance(o, torch.Tensor):
        return [o]
    if isinstance(o, (list, tuple)):
        return [t for v in o for t in _tensors(v)]
    return []


def replay(calls, device, precision) -> None:
    outs = []
    with autocast(device, precision):
        for mod, args, grad, training in calls:
            was = mod.training
            mod.train(training)
            with torch.set_grad_enabled(grad):
                o = mod(*args)
            mod.train(was)
            if grad:
                outs += [t.float().mean() for t in _tensors(o) if t.requires_grad]
    if outs:
        torch.stack(outs).sum().backward()


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, repeats: int, device) -> list[float]:
    ts = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        ts.append(time.perf_counter() - t0)
    return ts


def phases(trainer) -> dict[str, int]:
    """A representative step index per phase of the method's schedule."""
    m = trainer.method
    if trainer.cfg.method.name != "mn":
        return {"train": 0}
    w, e = m.warmup, m.epoch_length
    out = {"stage1": 0}
    for s in range(w, w + 2 * e):  # first 2D-student and 3D-student steps of stage 2, p ~ 0.5 for n_u
        out.setdefault(f"stage2_{m.student(s)}", s)
    # with LRG sampling n_u grows along the cycle: measure at mid-cycle so unlabelled patches are in
    mid = w + (trainer.cfg.train.iterations - w) // 2
    return {k: (v if k == "stage1" else mid + (v - w)) for k, v in out.items()}


def bench_config(name: str, cfg, repeats: int, warmup: int) -> dict:
    tr = Trainer(cfg)
    dev, prec = tr.device, tr.precision
    res = {"config": name, "device": str(dev), "precision": prec, "channels_last": tr.channels_last,
           "threads": torch.get_num_threads(), "batch_size": cfg.train.batch_size,
           "patch_size": list(cfg.data.patch_size), "phases": {}}
    nets = top_networks(tr.method)
    for phase, step in phases(tr).items():
        n_l, n_u = tr.method.batch_plan(step)
        rec = Recorder(nets)
        tr.train_step(step)
        rec.remove()
        calls = rec.calls

        def raw():
            for n in nets:
                n.zero_grad(set_to_none=True)
            replay(calls, dev, prec)

        for _ in range(warmup):
            tr.train_step(step)
            raw()
        peak_rss_reset()
        steal0 = cpu_steal()
        t_step, t_raw = [], []
        for _ in range(repeats):  # interleaved, so drifts of the (shared) machine hit both alike
            t_step += timed(lambda: tr.train_step(step), 1, dev)
            t_raw += timed(raw, 1, dev)
        steal = cpu_steal() - steal0
        mem = peak_memory_mb(dev)
        t_data = timed(lambda: tr.make_batch(n_l, n_u), repeats * 3, dev)
        s, r, d = statistics.median(t_step), statistics.median(t_raw), statistics.median(t_data)
        res["phases"][phase] = {
            "step_index": step, "n_labelled": n_l, "n_unlabelled": n_u,
            "active": tr.method.active_groups(step),
            "net_calls": [f"{type(c[0]).__name__}{'(grad)' if c[2] else '(no grad)'}{tuple(_tensors(c[1])[0].shape)}" for c in calls],
            "step_s": s, "raw_s": r, "overhead": s / r,
            "overhead_pairs_median": statistics.median(a / b for a, b in zip(t_step, t_raw)),
            "data_s": d, "data_speedup": s / d, "samples_per_s": (n_l + n_u) / s, "peak_mem_mb": mem,
            "cpu_steal_fraction": steal, "step_s_all": t_step, "raw_s_all": t_raw,
        }
        print(name, phase, json.dumps({k: v for k, v in res["phases"][phase].items() if not k.endswith("_all")}), flush=True)
    # inference on one volume of the original grid (preprocess -> windows -> back)
    from semi3d.inference.predictor import Predictor

    tr.save_model("final")
    pred = Predictor(tr.run.model("final"), device=cfg.device, precision=cfg.precision)
    cid = tr.data.splits.get("validation") or tr.data.splits["labelled"]
    case = tr.data.reader.load(cid[0])
    pred(case)  # warm-up
    t_inf = timed(lambda: pred(case), max(1, repeats // 2), dev)
    res["inference"] = {"case": cid[0], "shape": list(case.shape), "seconds": statistics.median(t_inf)}
    print(name, "inference", json.dumps(res["inference"]), flush=True)
    return res


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), help="names in CONFIGS or YAML paths")
    ap.add_argument("--set", action="append", default=[], help="override applied to every config")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--precisions", nargs="+", default=["auto"], help="auto | fp32 | bf16 (each measured)")
    ap.add_argument("--synthetic", action="store_true", help="tiny synthetic data instead of LA (smoke test)")
    ap.add_argument("--name", default="speed_la")
    ap.add_argument("--results", default=str(HERE / "results"))
    a = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="semi3d_speed_"))
    extra, extra_mn = [], []
    if a.synthetic:
        from semi3d.data.synthetic import write_dataset

        root = write_dataset(work / "LA", 3, 3, 0, seed=0, shape=(40, 40, 36), num_classes=2, format="uamt_h5")
        extra = [f"data.root={root}", f"data.options.list_file={root / 'train.list'}", "data.splits.labelled.first=2",
                 "data.splits.validation.last=1", "data.patch_size=[32,32,32]",
                 "train.iterations=40"]
        extra_mn = ["model.net2d.options.pretrained=null", "method.options.warmup_iterations=8",
                    "train.schedule.cycles=[8]", "train.schedule.warmup=2"]
    results = []
    try:
        for c in a.configs:
            path = CONFIGS.get(c, c)
            for p in a.precisions:
                sets = [f"output_dir={work / 'runs'}", f"name={Path(path).stem}_{p}", "train.progress_bar=false",
                        f"precision={p}", *extra, *(extra_mn if "_mn_" in str(path) else []), *a.set]
                results.append(bench_config(f"{Path(path).stem} [{p}]", load_config(path, sets), a.repeats, a.warmup))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out = {"command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
           "commit": git_commit(), "machine": machine(), "results": results}
    dest = Path(a.results)
    write_text(dest / f"{a.name}.json", json.dumps(out, indent=1))
    write_text(dest / f"{a.name}.md", to_markdown(out))
    print(to_markdown(out))
    return out


def to_markdown(out: dict) -> str:
    env = "".join(f", {k}={v}" for k, v in out["machine"].get("env", {}).items())
    lines = [f"# Training-step speed\n\n`{out['command']}` (commit {out['commit']}, torch {out['machine']['torch']}, "
             f"{out['machine']['threads']} threads{env})\n",
             "| config | phase | batch (l+u) | step s | raw fwd+bwd s | overhead | overhead (pairs) | data s | data x faster | samples/s | peak MB | CPU steal s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in out["results"]:
        for ph, v in r["phases"].items():
            lines.append(f"| {r['config']} | {ph} | {v['n_labelled']}+{v['n_unlabelled']} | {v['step_s']:.3f} | "
                         f"{v['raw_s']:.3f} | {v['overhead']:.3f} | {v['overhead_pairs_median']:.3f} | {v['data_s']:.4f} | "
                         f"{v['data_speedup']:.1f} | {v['samples_per_s']:.2f} | {v['peak_mem_mb']:.0f} | "
                         f"{v['cpu_steal_fraction']:.1f} |")
    lines.append("\n| config | inference: case | shape | seconds |\n|---|---|---|---|")
    for r in out["results"]:
        i = r["inference"]
        lines.append(f"| {r['config']} | {i['case']} | {'x'.join(map(str, i['shape']))} | {i['seconds']:.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    script(main)
