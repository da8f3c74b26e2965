"""Training and prediction of the small 2D model on :class:`~semi3d.mining.data2d.Slice2D` samples.

Batches mix labelled and pseudo-labelled slices (``pseudo_fraction`` of each batch from the
pseudo-labels when there are any). Each sample is a random ``patch`` crop (zero-padded when the
slice is smaller; with probability ``fg_fraction`` centred near a random foreground pixel), with
random flips when ``flip``. Loss: Dice + cross-entropy (:func:`semi3d.losses.dice_ce_loss`),
averaged over the heads of a deep-supervised network (``forward_heads``). AdamW with a poly
learning-rate decay over the iterations of each call.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from pydantic import Field
from torch import nn

from ..losses import dice_ce_loss
from .base import Strict
from .data2d import Slice2D

__all__ = ["TrainOptions", "predict_probabilities", "train_small_model"]


class TrainOptions(Strict):
    """Budget and sampling of the small model's training (see the module docstring)."""

    iterations: int = Field(600, ge=0)          # first training, labelled slices only
    finetune_iterations: int = Field(300, ge=0)  # after each mining round, labelled + pseudo-labels
    reinit: bool = False                         # retrain from scratch each round instead of fine-tuning
    batch_size: int = Field(8, ge=1)
    patch: tuple[int, int] | None = (96, 96)
    lr: float = Field(1e-3, gt=0)
    finetune_lr: float | None = Field(None, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    fg_fraction: float = Field(0.5, ge=0, le=1)
    flip: bool = True
    pseudo_fraction: float = Field(0.5, ge=0, le=1)
    predict_batch: int = Field(32, ge=1)


def _crop(s: Slice2D, patch: tuple[int, int] | None, rng: np.random.Generator, fg: bool,
          flip: bool) -> tuple[np.ndarray, np.ndarray]:
    img, lab = s.image, s.label
    _, h, w = img.shape
    ph, pw = patch if patch is not None else (h, w)
    if fg and lab is not None and lab.any():
        rows, cols = np.nonzero(lab)
        k = int(rng.integers(len(rows)))
        cy, cx = rows[k] + int(rng.integers(-ph // 4, ph // 4 + 1)), cols[k] + int(rng.integers(-pw // 4, pw // 4 + 1))
        r0, c0 = cy - ph // 2, cx - pw // 2
    else:
        r0 = int(rng.integers(min(0, h - ph), max(0, h - ph) + 1))
        c0 = int(rng.integers(min(0, w - pw), max(0, w - pw) + 1))
    # clip so the crop stays on the slice where it can (a smaller slice is padded around)
    r0 = min(max(r0, min(0, h - ph)), max(0, h - ph))
    c0 = min(max(c0, min(0, w - pw)), max(0, w - pw))
    out_i = np.zeros((img.shape[0], ph, pw), np.float32)
    out_l = np.zeros((ph, pw), np.int64)
    sr, sc = slice(max(r0, 0), min(r0 + ph, h)), slice(max(c0, 0), min(c0 + pw, w))
    dr, dc = slice(sr.start - r0, sr.stop - r0), slice(sc.start - c0, sc.stop - c0)
    out_i[:, dr, dc] = img[:, sr, sc]
    if lab is not None:
        out_l[dr, dc] = lab[sr, sc]
    if flip:
        if rng.random() < 0.5:
            out_i, out_l = out_i[:, ::-1], out_l[::-1]
        if rng.random() < 0.5:
            out_i, out_l = out_i[:, :, ::-1], out_l[:, ::-1]
    return np.ascontiguousarray(out_i), np.ascontiguousarray(out_l)


def _batch(labelled: Sequence[Slice2D], pseudo: Sequence[Slice2D], o: TrainOptions,
           rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    n_pseudo = int(round(o.batch_size * o.pseudo_fraction)) if pseudo else 0
    if not labelled:
        n_pseudo = o.batch_size
    picks = [labelled[int(rng.integers(len(labelled)))] for _ in range(o.batch_size - n_pseudo)]
    picks += [pseudo[int(rng.integers(len(pseudo)))] for _ in range(n_pseudo)]
    patch = o.patch
    if patch is None:  # whole slices, padded to the largest of the batch
        patch = (max(s.image.shape[1] for s in picks), max(s.image.shape[2] for s in picks))
    pairs = [_crop(s, patch, rng, rng.random() < o.fg_fraction, o.flip) for s in picks]
    return torch.from_numpy(np.stack([p[0] for p in pairs])), torch.from_numpy(np.stack([p[1] for p in pairs]))


def train_small_model(net: nn.Module, labelled: Sequence[Slice2D], pseudo: Sequence[Slice2D], iterations: int,
                      options: TrainOptions, rng: np.random.Generator, device: torch.device | str = "cpu",
                      lr: float | None = None) -> list[float]:
    """Train ``net`` in place for ``iterations`` steps; returns the loss of every step."""
    if iterations == 0:
        return []
    device = torch.device(device)
    net.to(device).train()
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr or options.lr, weight_decay=options.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: (1 - t / iterations) ** 0.9)
    heads = getattr(net, "forward_heads", None)
    losses = []
    for _ in range(iterations):
        x, y = _batch(labelled, pseudo, options, rng)
        x, y = x.to(device), y.to(device)
        outs = heads(x) if heads is not None else [net(x)]
        loss = sum(dice_ce_loss(o, y) for o in outs) / len(outs)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 12.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    net.eval()
    return losses


@torch.no_grad()
def predict_probabilities(net: nn.Module, slices: Sequence[Slice2D], batch: int = 32,
                          device: torch.device | str = "cpu") -> list[np.ndarray]:
    """Softmax probabilities ``(K, H, W)`` float32 of every slice (runs of equal-sized slices batched)."""
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
        probs = torch.softmax(net(x).float(), 1).cpu().numpy()
        out += list(probs)
        i = j
    return out
