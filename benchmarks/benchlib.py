"""What the benchmark scripts share: the commit and machine a result records, and one resumable
train -> evaluate of a run."""
from __future__ import annotations

import copy
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch

from semi3d.config import parse_overrides, set_dotted
from semi3d.engine.interrupt import one_line_exits
from semi3d.engine.resume import check_resume_config
from semi3d.engine.rundir import RunDir
from semi3d.engine.trainer import train
from semi3d.evaluation.evaluate import evaluate_run

ROOT = Path(__file__).resolve().parent.parent
WEIGHTS = ROOT.parent / "shared" / "weights"
SMALL_MODELS = {  # mining's small 2D model: the paper's U-Net++ (from scratch), or a U-Net on an ImageNet MobileNetV2
    "unetpp": {"name": "unetpp2d", "options": {"widths": [8, 16, 32, 64]}},  # Kvasir: 0.32 s/step on the 2-core CPU
    "mbv2": {"name": "unet2d_mobilenet_v2", "options": {"pretrained": str(WEIGHTS / "mobilenet_v2-b0353104.pth"),
                                                         "decoder_channels": [128, 64, 32, 16, 16]}},  # 0.36 s/step
}


def small_prefix(small: str) -> str:
    """The run-name prefix of a small model: none for the paper's U-Net++, else ``<small>_``."""
    return "" if small == "unetpp" else small + "_"


def command_line(script: str, argv: list[str] | None = None) -> str:
    """The command a result records: ``python benchmarks/<script's file name> ARGS``, with ``argv``
    (the arguments a script's ``main`` was given) or, when None, the process's own, quoted for a shell."""
    args = sys.argv[1:] if argv is None else argv
    return " ".join(["python", f"benchmarks/{Path(script).name}", *map(shlex.quote, args)])


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], capture_output=True, text=True, cwd=ROOT).stdout.strip()


#: HEAD when the script started, i.e. the code it loaded (a commit made while a long run goes on
#: is not the code that produced it), with "+uncommitted" when the code differed from HEAD then
STARTED_AT = _git("rev-parse", "--short", "HEAD") + (
    "+uncommitted" if _git("status", "--porcelain", "--", "src", "configs", "benchmarks/*.py") else "")


def git_commit() -> str:
    """The commit of the code a result was produced with: :data:`STARTED_AT`."""
    return STARTED_AT


# environment variables that change speed (allocator, thread pools), recorded with the machine
SPEED_ENV = ("MALLOC_", "OMP_", "MKL_", "KMP_", "DNNL_", "ONEDNN_", "LD_PRELOAD")


def machine(**extra) -> dict:
    """CPU, torch threads and torch version (plus ``extra``, and the :data:`SPEED_ENV` variables
    set) for a result file."""
    from semi3d.engine.precision import cpu_has_native_bf16

    model = platform.processor() or platform.machine()
    try:
        model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    env = {k: v for k, v in sorted(os.environ.items()) if k.startswith(SPEED_ENV)}
    return {"cpu": model, "native_bf16": cpu_has_native_bf16(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, **({"env": env} if env else {}), **extra}


def train_seconds(run_dir: Path) -> float:
    """Training wall time summed over invocations (``log.jsonl``'s ``time`` restarts on resume)."""
    total, last = 0.0, 0.0
    for line in RunDir(run_dir).log.read_text().splitlines():
        t = json.loads(line).get("time") if line.strip() else None
        if t is not None:
            if t < last:
                total += last
            last = t
    return total + last


def foreground(metrics: dict) -> dict:
    """The summary a result reports from ``evaluate_run``'s ``{class or "mean": {metric: value}}``
    (foreground classes only): the ``"mean"`` over them when there are several, else the one class's."""
    if "mean" in metrics:
        return metrics["mean"]
    if len(metrics) != 1:
        raise ValueError(f"expected one foreground class or a 'mean' summary, got {sorted(metrics)}")
    return next(iter(metrics.values()))


def script(main) -> None:
    """A benchmark script's entry point: ``main()``, where bad input (an ``InputError``: a config, run
    folder or result file named with its problem) ends with one ``error:`` line and exit code 2, as
    in the CLI, and a Ctrl-C / SIGTERM (training stops at a resumable checkpoint of its step;
    preprocessing, evaluation or mining's refinement at once) with one ``stopped:`` line and the
    signal's exit code (130 / 143), instead of a traceback. Rerunning the same command goes on from
    the run's last checkpoint, or starts the run again when there is none."""
    with one_line_exits(lambda head, text: print(head, text, file=sys.stderr, flush=True),
                        "\nrerun the same command to continue"):
        main()


def train_and_evaluate(cfg, split: str, save_predictions: bool = False) -> dict:
    """Train the run of ``cfg`` (resumed from ``checkpoints/last.pt`` when there; not retrained when
    ``train_summary.json`` says it finished) and evaluate its model on ``split``.

    A finished run is held to its saved config as a resume is (``check_resume_config``): a change to
    what was trained (data, splits, networks, method, seed) is refused with one error, an allowed
    change is recorded and used (inference settings for the evaluation; more ``train.iterations``
    train on), so a rerun never reports a run under a config it did not have. ``save_predictions``:
    also write them (``RUN/eval_<split>/predictions/<case>.nii.gz``).

    Returns ``{"summary", "metrics", "resumed", "train_wall_s_this_invocation", "train_wall_s_total",
    "eval_wall_s"}``: the trainer's summary, ``evaluate_run``'s summary (``{class or "mean": {metric:
    value}}``; per case in ``RUN/eval_<split>/metrics.json``), wall times in seconds."""
    run = RunDir(cfg.run_dir)
    finished = json.loads(run.summary.read_text()) if run.summary.is_file() else None
    if finished is not None:
        check_resume_config(run, cfg, finished["iterations"])
        if cfg.train.iterations > finished["iterations"]:
            finished = None
    resume = finished is None and run.last.is_file()
    t0 = time.time()
    summary = finished or train(cfg, resume=resume)
    t_train = time.time() - t0
    t0 = time.time()
    metrics = evaluate_run(cfg.run_dir, split=split, save_predictions=save_predictions)
    return {"summary": summary, "metrics": metrics, "resumed": resume, "train_wall_s_this_invocation": t_train,
            "train_wall_s_total": train_seconds(cfg.run_dir), "eval_wall_s": time.time() - t0}


def mine(cfg) -> dict:
    """Run a mining config (``MiningConfig``), resuming its run folder when it holds this run."""
    from semi3d.mining.loop import run_mining

    return run_mining(cfg, resume=RunDir(cfg.run_dir).config.is_file())


def merge_tree(a: dict, b: dict) -> dict:
    """``a`` with ``b`` merged in recursively (mappings merge, everything else replaces); copies."""
    out = copy.deepcopy(a)
    for k, v in b.items():
        out[k] = merge_tree(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def mining_variant(tree: dict, variant: str, embeddings: Path, overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """The mining benchmarks' shared variants, applied to one run's config tree (a copy is returned).

    ``overrides`` (``key=value``, as ``--set``) apply to the tree first, so what a variant derives
    from it follows them (``--set train.iterations=N`` also lengthens the controls' schedule).
    ``labelled`` / ``full``: no mining, the mining runs' total iterations (first training + every
    fine-tuning) in one schedule, no unlabelled split; ``identity``: self-training on the small
    model's own masks, the same prompts, selection and fine-tuning; ``schedule``: the same with no
    unlabelled image (``unlabelled_max: 0``), mining's schedule alone; ``litemedsam``: LiteMedSAM,
    its image embeddings cached in ``embeddings`` (options set for a ``litemedsam`` refiner are kept).
    Any other variant leaves the tree as it is.
    The tree's splits sit under ``data`` (volumes) or ``images`` (2D images), whichever it has.
    """
    tree = copy.deepcopy(tree)
    for k, v in parse_overrides(list(overrides)):
        set_dotted(tree, k, v)
    if variant in ("labelled", "full"):
        total = tree["train"]["iterations"] + tree["rounds"] * tree["train"]["finetune_iterations"]
        source = "images" if "images" in tree else "data"
        return merge_tree(tree, {"rounds": 0, "train": {"iterations": total}, source: {"splits": {"unlabelled": "none"}}})
    if variant in ("identity", "schedule"):
        tree["refiner"] = {"name": "identity", "options": {}}
        if variant == "schedule":
            tree["unlabelled_max"] = 0
    elif variant == "litemedsam":
        own = tree.get("refiner", {})
        options = dict(own.get("options", {})) if own.get("name") == "litemedsam" else {}
        tree["refiner"] = {"name": "litemedsam", "options": {**options, "cache_dir": str(embeddings)}}
    return tree


def mining_round_row(rec: dict) -> dict:
    """The fields of one mining round (``semi3d mine``'s summary) that the mining benchmarks record."""
    keys = ("round", "dev_dice", "dev_dice_std", "dev_hd95", "n_candidates", "n_kept", "n_kept_foreground",
            "n_kept_empty", "pseudo_dice_kept", "model_dice_kept", "pseudo_dice_all", "model_dice_all",
            "pseudo_case_dice", "train_iterations", "train_s", "mine_s")
    extra = ("pseudo_dice_taught", "ignored_fraction_kept")  # only with select.disagree: ignore
    return {k: rec.get(k) for k in keys} | {k: rec[k] for k in extra if k in rec}
