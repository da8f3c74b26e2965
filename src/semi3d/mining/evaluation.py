"""Scores of a mining run: the small model on the dev split (per case on stacked slices, or per
image), and pseudo-labels against hidden labels (Dice pooled over samples)."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..losses import without_ignored
from ..models.slicing import spatial_dim
from .iterative import label_dice
from .train2d import predict_probabilities

__all__ = ["evaluate_dev", "pooled_dice"]


def pooled_dice(preds: list[np.ndarray], truths: list[np.ndarray], num_classes: int) -> float | None:
    """Dice pooled over samples (sum of intersections / sum of sizes), mean over the foreground
    classes present in either; 1.0 when no sample has foreground; None without samples. Pixels
    where a truth holds :data:`~semi3d.losses.IGNORE_INDEX` are left out."""
    if not preds:
        return None
    preds, truths = zip(*(without_ignored(np.asarray(p), np.asarray(t)) for p, t in zip(preds, truths)))
    scores = []
    for c in range(1, num_classes):
        inter = sum(int(((p == c) & (t == c)).sum()) for p, t in zip(preds, truths))
        size = sum(int((p == c).sum()) + int((t == c).sum()) for p, t in zip(preds, truths))
        if size:
            scores.append(2.0 * inter / size)
    return float(np.mean(scores)) if scores else 1.0


def _stack_probs(probs: list[np.ndarray], axis: int) -> np.ndarray:
    """Slice probabilities ``(K, A, B)`` in index order -> ``(K, X, Y, Z)``."""
    return np.moveaxis(np.stack(probs), 0, spatial_dim(axis) - 1)


def evaluate_dev(net: torch.nn.Module, data: Any, cfg: Any, device: torch.device, precision: str = "fp32") -> dict:
    """Dice (and HD95) of the small model on the dev split: per case (volumes) or image.
    ``data``: the run's :class:`~semi3d.mining.loop.MiningData`; ``cfg``: its ``MiningConfig``;
    ``precision``: of the forward passes (resolved)."""
    if not data.dev:
        return {"dev_dice": None, "dev_cases": {}}
    probs = predict_probabilities(net, data.dev, cfg.train.predict_batch, device, precision)
    per: dict[str, dict[str, float]] = {}
    k = data.num_classes
    if data.volumes:
        from ..data.preprocess import restore_probabilities
        from ..evaluation.metrics import case_metrics

        by_case: dict[str, list[np.ndarray]] = {}
        for s, p in zip(data.dev, probs):
            by_case.setdefault(s.group, []).append(p)
        for cid, plist in by_case.items():
            vol = _stack_probs(plist, cfg.axis)
            truth = data.dev_cases[cid].label
            if cfg.eval.original_grid and data.reader is not None:
                if cid not in data.raw_labels:
                    raw = data.reader.load(cid)
                    data.raw_labels[cid] = None if raw.label is None else (raw.label, raw.affine)
                if data.raw_labels[cid] is not None:
                    truth, affine = data.raw_labels[cid]
                    vol = restore_probabilities(torch.from_numpy(vol), truth.shape, affine,
                                                cfg.data.preprocess.orientation).numpy()
            pred = vol.argmax(0).astype(np.uint8)
            rec = {"dice": label_dice(pred, truth, k)}
            if cfg.eval.hd95:
                m = case_metrics(pred, np.asarray(truth), k, None)
                rec["hd95"] = float(np.mean([v["hd95"] for v in m.values()]))
            per[cid] = rec
    else:
        for s, p in zip(data.dev, probs):
            per[s.id] = {"dice": label_dice(p.argmax(0).astype(np.uint8), s.label, k)}  # type: ignore[arg-type]
    dice = [v["dice"] for v in per.values()]
    out = {"dev_dice": float(np.mean(dice)), "dev_dice_std": float(np.std(dice)), "dev_cases": per}
    if cfg.eval.hd95 and data.volumes:
        out["dev_hd95"] = float(np.mean([v["hd95"] for v in per.values()]))
    return out
