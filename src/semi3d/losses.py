"""Segmentation losses on logits (N, K, *spatial). Computed in float32 whatever the autocast dtype."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def one_hot(label: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(N, *spatial) int -> (N, K, *spatial) float32."""
    return F.one_hot(label.long(), num_classes).movedim(-1, 1).float()


def class_argmax(scores: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Index of the largest score along the class axis ``dim`` (the first one on ties), int64:
    ``scores.argmax(dim)`` computed as ``scores.max(dim).indices``, the same result ~40x faster on
    CPU for a few classes on a non-last axis (measured on (4, 2, 64, 64, 48): 0.144 vs 0.0033 s;
    on a (2, 192, 146, 88) volume's ``argmax(0)``: 0.45 vs 0.009 s)."""
    return scores.max(dim).indices


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, squared: bool = True,
                   include_background: bool = True, eps: float = 1e-5) -> torch.Tensor:
    """1 - mean over classes of the soft Dice computed over the whole batch.

    Args:
        logits: (N, K, *spatial).
        target: (N, K, *spatial) probabilities (one-hot or soft), same shape.
        squared: squared terms in the denominator (V-Net style), as M&N uses.
    """
    p = torch.softmax(logits.float(), 1)
    t = target.float()
    dims = [0] + list(range(2, p.ndim))
    inter = (p * t).sum(dims)
    den = (p * p).sum(dims) + (t * t).sum(dims) if squared else p.sum(dims) + t.sum(dims)
    dice = (2 * inter + eps) / (den + eps)
    if not include_background:
        dice = dice[1:]
    return 1 - dice.mean()


def kl_soft(logits: torch.Tensor, target: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """KL(target || softmax(logits)) averaged over all elements (N*K*voxels), as
    ``F.kl_div(log_softmax(logits), target, reduction="mean")``."""
    t = target.float().clamp_min(0)
    return (torch.special.xlogy(t, t) - t * torch.log_softmax(logits.float(), 1)).mean()


def dice_ce_loss(logits: torch.Tensor, label: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Soft Dice (plain denominator, foreground classes) + cross-entropy; label (N, *spatial) int."""
    k = logits.shape[1]
    ce = F.cross_entropy(logits.float(), label.long(), weight=weight)
    return ce + soft_dice_loss(logits, one_hot(label, k), squared=False, include_background=k == 1)
