"""Knowledge mining from a promptable model into a small 2D model (Mao et al. 2025).

Round 0 trains the small 2D model (default U-Net++, any registered 2D network works) on the
labelled slices (slices of the labelled volumes along ``axis``, or labelled 2D images). Each mining
round ``r = 1..rounds`` then

1. predicts every unlabelled slice with the small model,
2. turns each prediction into prompts (per connected component: box, positive and negative
   points, :mod:`~semi3d.mining.prompts`), lets the promptable segmenter (weight-free random
   walker or SAM) refine them, iteratively (:mod:`~semi3d.mining.iterative`),
3. keeps the refined slices whose refiner score and agreement with the small model pass the
   thresholds (:mod:`~semi3d.mining.select`) as pseudo-labels (regenerated every round; with
   ``select.disagree: ignore``, the default, only their pixels where refiner and model agree
   teach, and the exported pseudo-labels stay the refined ones),
4. fine-tunes the small model on labelled + pseudo-labelled slices (or retrains it, ``reinit``),
   with the package's trainer (:mod:`~semi3d.mining.train2d`).

Every round logs (``<run>/log.jsonl``, and ``train_summary.json`` at the end): how many pseudo-labels were
kept, their Dice against the hidden ground truth of the unlabelled cases when the dataset has it
(pooled over the kept slices; the small model's own Dice on the same slices for comparison; and
per case over all slices; with ``select.disagree: ignore`` (the default) also ``pseudo_dice_taught``, the Dice on
the agreed pixels, and ``ignored_fraction_kept``), and the small model's Dice on the dev
(validation) split: per case on the stacked slice predictions, on the original voxel grid by
default (``eval.original_grid``).
For volumes the pseudo-labels of every round are also written as 3D volumes
(:mod:`~semi3d.mining.export`), the extra targets of a 3D model; with ``dataset_3d: {enabled:
true}`` also as a 3D training dataset (real labels + accepted pseudo-labels, in the source's
layout, ``<run>/pseudo/round<r>/dataset/``; :mod:`~semi3d.mining.dataset3d`) that ``semi3d
train`` reads with any 3D method.

Entry point: :func:`run_mining` (a :class:`MiningConfig`, a dict or a YAML path; ``semi3d mine``
passes :func:`~semi3d.mining.config.load_mining_config`'s, with its ``key=value`` overrides).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from ..config import DataConfig
from ..data.case import Case
from ..atomic import write_text
from ..engine import checkpoint as ckpt
from ..engine.rundir import RunDir
from ..engine.runlog import RunLog, console, eta_text
from ..errors import InputError
from ..losses import IGNORE_INDEX
from ..registry import NETS2D
from .base import PromptableSegmenter
from .config import MiningConfig, build_refiner, load_mining_config
from .data2d import IMAGE_CHANNELS, IMAGE_CLASSES, Slice2D, read_image_folder, volume_slices
from .dataset3d import write_pseudo_dataset
from .export import write_masks_png, write_pseudo_volumes
from .iterative import refine_iteratively
from .prompts import confident_label
from .select import Candidate, select_pseudo_labels, training_label
from .evaluation import evaluate_dev, pooled_dice
from .train2d import largest_slice, predict_probabilities, round_config, slice_data, train_small_model

__all__ = ["load_mining_data", "mine_round", "run_mining"]

PROGRESS_EVERY_S = 30.0  # a refinement progress line at most this often (the first after this long)


# ------------------------------------------------------------------------------------------- data
@dataclass
class MiningData:
    """The 2D samples of a run. ``truth`` holds the hidden labels of the unlabelled samples (for
    reporting only); ``dev_cases`` the dev volumes (volumes only), ``unlabelled_cases`` the
    unlabelled volumes without label (grid and affine for the 3D export)."""

    labelled: list[Slice2D]
    unlabelled: list[Slice2D]
    truth: dict[str, np.ndarray]
    dev: list[Slice2D]
    num_classes: int
    in_channels: int
    splits: dict[str, list[str]]
    volumes: bool
    dev_cases: dict[str, Case] = field(default_factory=dict)
    unlabelled_cases: dict[str, Case] = field(default_factory=dict)
    reader: Any = None
    raw_labels: dict[str, tuple[np.ndarray, np.ndarray] | None] = field(default_factory=dict)  # dev (label, affine) as read


def load_mining_data(cfg: MiningConfig) -> MiningData:
    """Slices of the configured volumes, or the configured 2D images, by split."""
    if cfg.data is not None:
        from ..data.dataset import prepare_data

        bundle = prepare_data(cfg.data)
        splits = {k: list(v) for k, v in bundle.splits.items()}
        unl_ids = splits["unlabelled"][: cfg.unlabelled_max] if cfg.unlabelled_max is not None else splits["unlabelled"]
        labelled = [s for cid in splits["labelled"] for s in volume_slices(bundle.cache.get(cid), cfg.axis)]
        unlabelled, truth, unl_cases = [], {}, {}
        for cid in unl_ids:
            case = bundle.cache.get(cid)
            unl_cases[cid] = Case(case.id, case.image, None, case.spacing, case.affine, case.domain, case.source)
            for s in volume_slices(case, cfg.axis)[:: cfg.slice_step]:
                if s.label is not None:
                    truth[s.id] = s.label
                unlabelled.append(Slice2D(s.id, s.image, None, s.group, s.index))
        dev_cases = {cid: bundle.cache.get(cid) for cid in splits["validation"]}
        dev = [s for case in dev_cases.values() for s in volume_slices(case, cfg.axis)]
        splits["unlabelled"] = unl_ids
        return MiningData(labelled, unlabelled, truth, dev, bundle.num_classes, bundle.in_channels, splits, True,
                          dev_cases, unl_cases, bundle.reader)
    from ..data.splits import resolve_splits

    samples, ids, with_mask = read_image_folder(cfg.images)  # type: ignore[arg-type]
    splits = resolve_splits(cfg.images.splits, ids, with_mask)  # type: ignore[union-attr]
    if cfg.unlabelled_max is not None:
        splits["unlabelled"] = splits["unlabelled"][: cfg.unlabelled_max]
    labelled = [samples[i] for i in splits["labelled"]]
    unlabelled = [Slice2D(i, samples[i].image, None, i, 0) for i in splits["unlabelled"]]
    truth = {i: samples[i].label for i in splits["unlabelled"] if samples[i].label is not None}
    dev = [samples[i] for i in splits["validation"]]
    return MiningData(labelled, unlabelled, truth, dev, IMAGE_CLASSES, IMAGE_CHANNELS, splits, False)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------- mining
def mine_round(net: torch.nn.Module, refiner: PromptableSegmenter, data: MiningData, cfg: MiningConfig,
               round_index: int, device: torch.device, precision: str = "fp32"
               ) -> tuple[list[Candidate], list[bool], dict]:
    """Predict, prompt, refine and select on every unlabelled slice. Returns the candidates, the
    keep flags and the round's statistics (selection report + Dice against hidden truth). Prints a
    progress line every ``PROGRESS_EVERY_S`` seconds of refinement (a SAM encoder takes about a
    second per new slice on a 2-core CPU), and a last one when it printed any."""
    k = data.num_classes
    probs = predict_probabilities(net, data.unlabelled, cfg.train.predict_batch, device, precision)
    cands, n = [], len(data.unlabelled)
    t0 = last = time.time()
    printed = False
    for i, (s, p) in enumerate(zip(data.unlabelled, probs)):
        model_label = confident_label(p, cfg.prompts.min_confidence)
        rng = np.random.default_rng([cfg.seed, round_index, i])
        refined = refine_iteratively(refiner, s.image, model_label, k, cfg.prompts, cfg.iterate, rng, key=s.id)
        cands.append(Candidate(s.id, s.group, model_label, refined, float(p[1:].max()) if k > 1 else 0.0))
        now = time.time()
        if now - last >= PROGRESS_EVERY_S or (i + 1 == n and printed):
            last, printed, each = now, True, (now - t0) / (i + 1)
            console.print(f"round {round_index}: refined {i + 1}/{n} samples ({100 * (i + 1) / n:.1f} %)  {each:.2f} s each  "
                          f"ETA {eta_text(i + 1, n, each)}", highlight=False, soft_wrap=True)
    keep, report = select_pseudo_labels(cands, k, cfg.select)
    stats: dict[str, Any] = {**report, "refine_rounds_mean": float(np.mean([c.refined.rounds for c in cands]))
                             if cands else None}
    if data.truth and all(c.id in data.truth for c in cands):
        kept = [c for c, f in zip(cands, keep) if f]
        t_all = [data.truth[c.id] for c in cands]
        t_kept = [data.truth[c.id] for c in kept]
        stats.update({
            "pseudo_dice_kept": pooled_dice([c.refined.label for c in kept], t_kept, k),
            "model_dice_kept": pooled_dice([c.model_label for c in kept], t_kept, k),
            "pseudo_dice_all": pooled_dice([c.refined.label for c in cands], t_all, k),
            "model_dice_all": pooled_dice([c.model_label for c in cands], t_all, k),
        })
        if cfg.select.disagree == "ignore" and kept:  # what the kept pseudo-labels teach: their agreed pixels
            taught = [training_label(c, cfg.select) for c in kept]
            refs = [np.where(a == IGNORE_INDEX, IGNORE_INDEX, t) for a, t in zip(taught, t_kept)]
            stats["pseudo_dice_taught"] = pooled_dice(taught, refs, k)  # on the pixels neither ignores
            stats["ignored_fraction_kept"] = float(np.mean([(t == IGNORE_INDEX).mean() for t in taught]))
        groups: dict[str, list[Candidate]] = {}
        for c in cands:
            groups.setdefault(c.group, []).append(c)
        if data.volumes:
            stats["pseudo_case_dice"] = float(np.mean([
                pooled_dice([c.refined.label for c in g], [data.truth[c.id] for c in g], k) for g in groups.values()]))
    return cands, keep, stats


def _by_case(cands: list[Candidate], keep: list[bool], data: MiningData
             ) -> tuple[dict[str, dict[int, np.ndarray]], dict[str, dict[int, bool]]]:
    labels: dict[str, dict[int, np.ndarray]] = {}
    kept: dict[str, dict[int, bool]] = {}
    for s, c, f in zip(data.unlabelled, cands, keep):
        labels.setdefault(s.group, {})[s.index] = c.refined.label
        kept.setdefault(s.group, {})[s.index] = f
    return labels, kept


def _export(cands: list[Candidate], keep: list[bool], data: MiningData, cfg: MiningConfig, out: Path,
            round_index: int) -> dict | None:
    """Write the round's pseudo-labels; returns a summary of the 3D dataset when one was written."""
    if data.volumes:
        labels, kept = _by_case(cands, keep, data)
        if cfg.save_pseudo != "none":
            write_pseudo_volumes(out, data.unlabelled_cases, labels, kept, cfg.axis % 3, "." + cfg.save_pseudo)
        d3 = cfg.dataset_3d
        if d3.enabled and (d3.every_round or round_index == cfg.rounds):
            rec = write_pseudo_dataset(out / "dataset", data.reader, data.splits, data.unlabelled_cases, labels, kept,
                                       data.num_classes, cfg.axis % 3, d3.min_kept_fraction,
                                       info={"mining_run": str(cfg.run_dir), "round": round_index},
                                       orientation=cfg.data.preprocess.orientation, not_kept=d3.not_kept)
            return {"path": rec["path"], "n_real": len(rec["real"]), "n_pseudo": len(rec["pseudo"]),
                    "n_rejected": len(rec["rejected"]), "n_validation": len(rec["validation"])}
    elif cfg.save_pseudo != "none":
        write_masks_png(out, [(c.id, c.refined.label) for c, f in zip(cands, keep) if f])
    return None


def _build_net(cfg: MiningConfig, data: MiningData) -> torch.nn.Module:
    return NETS2D.build(cfg.model.name, in_channels=data.in_channels, num_classes=data.num_classes,
                        **cfg.model.options)


def _check_run(cfg: MiningConfig, run: RunDir, resume: bool) -> set[int]:
    """The rounds already done (resume: the run folder must hold this config's run; a new run:
    it must not hold one)."""
    if not resume:
        if run.config.is_file():
            raise InputError(run.path, "holds a mining run already; pass --resume to continue it or choose another name")
        return set()
    if not run.config.is_file():
        raise InputError(run.path, "nothing to resume: no mining run in this folder")
    if run.config.read_text() != _config_text(cfg):
        raise InputError(run.config, "differs from the config given; resume with the same config, or start "
                                     "another run (name=...)")
    return {rec["round"] for rec in RunLog(run).records()}


def _config_text(cfg: MiningConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def run_mining(cfg: MiningConfig | dict | str | Path, resume: bool = False) -> dict:
    """Run the mining loop (see the module docstring) and return its summary; ``resume``
    continues an interrupted run of the same config (rounds done are kept, an interrupted
    training resumes from its checkpoint, a round's pseudo-labels are mined again: the same ones).

    Writes into ``<output_dir>/<name>/``: ``config.yaml``, ``splits.json``, ``log.jsonl`` (one
    record per round), ``train_summary.json``, ``checkpoints/small_round<r>.pt`` (the small
    model's state dict after round ``r``), ``round<r>/`` (the trainer run folder of round ``r``'s
    training, seed ``seed + r``: :mod:`~semi3d.mining.train2d`) and ``pseudo/round<r>/``
    (pseudo-labels, and with ``dataset_3d.enabled`` the 3D training dataset
    ``pseudo/round<r>/dataset/``, see :mod:`~semi3d.mining.dataset3d`).

    Returns:
        ``{"name", "run_dir", "refiner", "model", "num_classes", "splits": {split: count},
        "rounds": [record per round], "wall_s"}``; a round record has ``round``,
        ``train_iterations``, ``train_loss`` (mean logged loss of its last 20 steps), ``train_s``,
        ``dev_dice``, ``dev_dice_std``, ``dev_cases`` and, for mining rounds, the selection report
        (``n_candidates``, ``n_kept``, ``reasons``, ...), ``pseudo_dice_kept`` /
        ``model_dice_kept`` / ``pseudo_dice_all`` / ``model_dice_all`` (and ``pseudo_case_dice``
        for volumes) when the hidden truth is known, ``mine_s`` and, when a 3D dataset was written
        that round, ``dataset_3d`` (``path``, ``n_real``, ``n_pseudo``, ``n_rejected``,
        ``n_validation``).
    """
    if not isinstance(cfg, MiningConfig):
        cfg = load_mining_config(tree=cfg) if isinstance(cfg, dict) else load_mining_config(cfg)
    from ..engine.distributed import env_world_size
    from ..engine.precision import pick_device, resolve_precision

    if env_world_size() > 1:
        raise InputError("semi3d mine", "runs in one process: launch it without torchrun")
    t_start = time.time()
    device = pick_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    run = RunDir(cfg.run_dir)
    done = _check_run(cfg, run, resume)
    data = load_mining_data(cfg)
    if resume and json.loads(run.splits.read_text()) != data.splits:
        raise InputError(run.splits, "differs from the splits of the data given")
    if not data.labelled:
        raise InputError("splits.labelled", "no labelled sample to train the small model on")
    refiner = build_refiner(cfg.refiner, device)

    def fresh_net(r: int) -> torch.nn.Module:
        torch.manual_seed(cfg.seed + r)
        return _build_net(cfg, data)

    net = fresh_net(0)  # a bad model option ends here, before the run folder
    if not resume:  # every input checked: now the run folder
        try:
            run.checkpoints.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise InputError(run.path, f"cannot create folder: {e.strerror or e}") from None
        write_text(run.config, _config_text(cfg))
        write_text(run.splits, json.dumps(data.splits, indent=1))
        write_text(run.log, "")
    note = refiner.plan_cache(len(data.unlabelled), run / "embedding_cache")
    if note:
        console.print(note, highlight=False, markup=False, soft_wrap=True)
    source = cfg.data or DataConfig(format="folder", root=cfg.images.root)  # type: ignore[union-attr]
    patch = cfg.train.patch or largest_slice([*data.labelled, *data.unlabelled])

    def train(r: int, net: torch.nn.Module, pseudo: list[Slice2D], iterations: int, lr: float) -> dict:
        t0, losses = time.time(), []
        if iterations:
            sub = RunDir(run / f"round{r}")
            rc = round_config(sub.path, source, cfg.model, cfg.train, iterations, lr, patch, seed=cfg.seed + r,
                              device=cfg.device, precision=cfg.precision, threads=cfg.threads)
            bundle = slice_data(data.labelled, pseudo, data.num_classes, data.in_channels, cfg.train.pseudo_fraction)
            losses = train_small_model(net, bundle, rc, resume=sub.last.is_file())
        last = losses[-max(1, 20 // cfg.train.log_every):]
        return {"train_iterations": iterations, "train_loss": float(np.mean(last)) if last else None,
                "train_s": time.time() - t0}

    def finish_round(net: torch.nn.Module, rec: dict) -> None:
        rec.update(evaluate_dev(net, data, cfg, device, precision))
        ckpt.save_atomic(net.state_dict(), run.checkpoints / f"small_round{rec['round']}.pt")
        RunLog(run).write(rec["round"], rec)  # after the checkpoint: a logged round is a finished one

    for r in range(0, cfg.rounds + 1):
        if r in done:
            net.load_state_dict(ckpt.load(run.checkpoints / f"small_round{r}.pt"))
            continue
        if r == 0:
            finish_round(net, {"round": 0, "n_labelled_slices": len(data.labelled),
                               **train(0, net, [], cfg.train.iterations, cfg.train.lr)})
            continue
        t0 = time.time()
        cands, keep, stats = mine_round(net, refiner, data, cfg, r, device, precision)
        dataset_3d = _export(cands, keep, data, cfg, run / "pseudo" / f"round{r}", r)
        if dataset_3d is not None:
            stats["dataset_3d"] = dataset_3d
        pseudo = [Slice2D(s.id, s.image, training_label(c, cfg.select), s.group, s.index)
                  for s, c, f in zip(data.unlabelled, cands, keep) if f]
        mine_s = time.time() - t0
        if cfg.train.reinit:
            net = fresh_net(r)
            iters, lr = cfg.train.iterations, cfg.train.lr
        else:
            iters, lr = cfg.train.finetune_iterations, cfg.train.finetune_lr or cfg.train.lr
        finish_round(net, {"round": r, **stats, "mine_s": mine_s, **train(r, net, pseudo, iters, lr)})
    records = [{k: v for k, v in rec.items() if k != "step"} for rec in RunLog(run).records()]
    summary = {"name": cfg.name, "run_dir": str(run.path), "refiner": cfg.refiner.name, "model": cfg.model.name,
               "num_classes": data.num_classes, "splits": {k: len(v) for k, v in data.splits.items()},
               "rounds": records, "wall_s": time.time() - t_start}
    write_text(run.summary, json.dumps(summary, indent=1))
    return summary
