"""Training and prediction of the small 2D model on :class:`~semi3d.mining.data2d.Slice2D` samples.

The small model trains with the package's one trainer (:class:`semi3d.engine.trainer.Trainer`),
so it has the same precision policy, gradient clipping, lr schedule, atomic checkpoints, exact
resume, log and progress as every other run. Each training (round) is a trainer run folder of its
own: the slices become cases one voxel thick (image ``(C, H, W, 1)``, label ``(H, W, 1)``), held
in memory, and the method is ``supervised2d`` with ``loss: dice_ce`` (Dice + cross-entropy
averaged over the heads of a deep-supervised network, ``forward_heads``) along axis 2. Its
``config.yaml`` names the mining source in ``data``; the slices themselves come from the mining
run, so the mining config (not the round's) is the one to rerun.

Batches draw labelled and pseudo-labelled slices with probabilities that give the pseudo-labels
``pseudo_fraction`` of the samples on average (uniform over the slices without pseudo-labels).
Each sample is a random ``patch`` crop (padded with the image minimum when the slice is smaller;
with probability ``fg_fraction`` centred on a random foreground pixel), mirrored along each
in-plane axis with probability 0.5 when ``flip`` (:func:`semi3d.data.augment.augment`). AdamW
with a poly learning-rate decay (power 0.9) over the iterations of each training.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from pydantic import Field
from torch import nn

from ..config import (AugmentConfig, DataConfig, MethodConfig, ModelConfig, NetSpec, OptimConfig, RunConfig,
                      ScheduleConfig, TrainConfig)
from ..data.case import Case
from ..data.dataset import DataBundle
from ..engine.precision import autocast
from ..engine.runlog import RunLog
from ..engine.trainer import Trainer
from .base import Strict
from .data2d import Slice2D

__all__ = ["TrainOptions", "predict_probabilities", "train_small_model"]


class TrainOptions(Strict):
    """Budget and sampling of the small model's training (see the module docstring)."""

    iterations: int = Field(600, ge=0)          # first training, labelled slices only
    finetune_iterations: int = Field(300, ge=0)  # after each mining round, labelled + pseudo-labels
    reinit: bool = False                         # retrain from scratch each round instead of fine-tuning
    batch_size: int = Field(8, ge=1)
    patch: tuple[int, int] | None = (96, 96)     # None: the largest slice (smaller ones padded)
    lr: float = Field(1e-3, gt=0)
    finetune_lr: float | None = Field(None, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    grad_clip: float | None = Field(12.0, gt=0)
    fg_fraction: float = Field(0.5, ge=0, le=1)
    flip: bool = True
    pseudo_fraction: float = Field(0.5, ge=0, le=1)
    predict_batch: int = Field(32, ge=1)
    log_every: int = Field(10, ge=1)
    checkpoint_every: int = Field(100, ge=1)


def _case(s: Slice2D) -> Case:
    return Case(s.id, s.image[..., None], None if s.label is None else s.label[..., None])


def slice_data(labelled: Sequence[Slice2D], pseudo: Sequence[Slice2D], num_classes: int, in_channels: int,
               pseudo_fraction: float) -> DataBundle:
    """The trainer's view of the slices: one labelled split (real and pseudo labels) in memory,
    weighted so the pseudo-labels make ``pseudo_fraction`` of the draws."""
    cases = {s.id: _case(s) for s in [*labelled, *pseudo]}
    if len(cases) != len(labelled) + len(pseudo):
        raise ValueError("slice ids must be unique across labelled and pseudo-labelled slices")
    weights = None
    if pseudo and labelled:
        weights = {s.id: (1 - pseudo_fraction) / len(labelled) for s in labelled}
        weights.update({s.id: pseudo_fraction / len(pseudo) for s in pseudo})
    splits = {"labelled": list(cases), "unlabelled": [], "validation": [], "test": []}
    names = ["background", *(f"class{k}" for k in range(1, num_classes))]
    return DataBundle(None, splits, cases, num_classes, names, {}, weights, in_channels)


def round_config(run_dir: Path, source: DataConfig, model: NetSpec, options: TrainOptions, iterations: int,
                 lr: float, patch: tuple[int, int], **run: object) -> RunConfig:
    """The trainer config of one training of the small model (``run``: seed, device, precision, threads)."""
    flips = AugmentConfig.none()
    if options.flip:
        flips = replace(flips, flip_axes=(0, 1), p_flip=0.5)
    o = options
    return RunConfig(
        name=run_dir.name, output_dir=run_dir.parent, **run,
        data=source.model_copy(update={"patch_size": (*patch, 1), "fg_oversample": o.fg_fraction, "augment": flips}),
        model=ModelConfig(net2d=model), method=MethodConfig(name="supervised2d", options={"axis": 2, "loss": "dice_ce"}),
        train=TrainConfig(iterations=iterations, batch_size=o.batch_size, grad_clip=o.grad_clip,
                          optimizer=OptimConfig(name="adamw", lr=lr, weight_decay=o.weight_decay),
                          schedule=ScheduleConfig(name="poly", power=0.9), log_every=o.log_every,
                          checkpoint_every=o.checkpoint_every, val_every=iterations))


def train_small_model(net: nn.Module, data: DataBundle, cfg: RunConfig, resume: bool = False) -> list[float]:
    """Train ``net`` (a 2D network, its weights the starting point) in place on ``data`` as the
    trainer run ``cfg`` (resuming it when ``resume``); returns the logged losses (every
    ``train.log_every`` steps)."""
    init = {"net2d": net.state_dict()}
    trainer = Trainer(cfg, resume=resume, data=data, init=init)
    trainer.fit()
    net.load_state_dict(trainer.method.groups["net2d"].state_dict())
    net.eval()
    return [r["loss/net2d"] for r in RunLog(cfg.run_dir, enabled=False).records() if "loss/net2d" in r]


def largest_slice(slices: Sequence[Slice2D]) -> tuple[int, int]:
    """``(H, W)``: the largest height and width among ``slices`` (the patch of ``patch: null``)."""
    return max(s.image.shape[1] for s in slices), max(s.image.shape[2] for s in slices)


@torch.no_grad()
def predict_probabilities(net: nn.Module, slices: Sequence[Slice2D], batch: int = 32,
                          device: torch.device | str = "cpu", precision: str = "fp32") -> list[np.ndarray]:
    """Softmax probabilities ``(K, H, W)`` float32 of every slice (runs of equal-sized slices
    batched), the forward passes in ``precision`` (resolved: fp32 / bf16 / fp16)."""
    device = torch.device(device)
    net.to(device).eval()
    out: list[np.ndarray] = []
    i = 0
    while i < len(slices):
        shape = slices[i].image.shape
        j = i
        while j < len(slices) and j - i < batch and slices[j].image.shape == shape:
            j += 1
        x = torch.from_numpy(np.stack([s.image for s in slices[i:j]])).to(device)
        with autocast(device, precision):
            logits = net(x)
        probs = torch.softmax(logits.float(), 1).cpu().numpy()
        out += list(probs)
        i = j
    return out
