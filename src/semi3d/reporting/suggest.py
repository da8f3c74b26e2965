"""``semi3d suggest RUN --k N``: which unlabelled cases of a run would be most useful to label next.

Scores (higher = label first), computed on the preprocessed training grid, labels never read:

- **M&N** (a method with ``net2d`` and ``net3d`` groups): the disagreement of the two co-trained
  models, ``1 - mean_k>=1 softDice_k(p2d, p3d)`` with ``softDice_k = 2 sum(a b) / (sum a^2 + sum b^2)``
  over the volume's voxels (:func:`soft_dice_disagreement`): 0 when the two probability maps
  agree exactly, 1 when their foregrounds do not overlap. The 2D model predicts slice by slice
  along the method's ``views`` with the same sliding window as the 3D model.
- **other methods**: the predictive entropy of the inference model (the one the run's selection
  policy designates), normalised by ``log K`` to [0, 1], averaged over the *candidate region*:
  voxels with foreground probability ``1 - p_background >= 0.1`` dilated by ``margin`` voxels
  (:func:`region_entropy`). Averaging over the whole volume would rank cases by how much
  background they have; the region keeps the score on the structure and its boundary. A case
  with no candidate voxel scores the volume mean (close to 0).

:func:`rank_cases` orders the scores (ties by case id). Written into ``out`` (default
``RUN/suggest``): ``suggestions.json`` (criterion, the top ``k`` and every case's score and
evidence), ``suggestions.csv`` (every unlabelled case, ``suggested`` = 1 for the top ``k``) and
``overlays/<rank>_<case>.png`` for the suggested cases.
"""
from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from ..engine.rundir import RunDir
from ..errors import InputError
from ..models.slicing import SliceWise2D
from .common import draw_heat, draw_image, draw_labels, pyplot, richest_slice, save_figure

__all__ = ["entropy_map", "region_entropy", "soft_dice_disagreement", "js_divergence_map", "rank_cases",
           "suggest_cases"]

FG_THRESHOLD = 0.1


# ---------------------------------------------------------------------------------- scores (pure)
def _check_probs(p: np.ndarray, name: str = "probs") -> np.ndarray:
    p = np.asarray(p, dtype=np.float64)
    if p.ndim < 2 or p.shape[0] < 2:
        raise ValueError(f"{name}: expected probabilities (K, ...) with K >= 2, got shape {p.shape}")
    return p


def entropy_map(probs: np.ndarray) -> np.ndarray:
    """Normalised predictive entropy ``-sum_k p log p / log K`` in [0, 1]: (K, ...) -> (...)."""
    p = _check_probs(probs)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.where(p > 0, p * np.log(p), 0.0).sum(0)
    return np.clip(h / math.log(p.shape[0]), 0.0, 1.0)


def candidate_region(probs: np.ndarray, threshold: float = FG_THRESHOLD, margin: int = 2) -> np.ndarray:
    """Bool (X, Y, Z): voxels with foreground probability ``1 - p[0] >= threshold``, dilated by
    ``margin`` voxels (6-connected steps). Contains every voxel predicted as foreground for
    ``threshold <= 0.5``."""
    from scipy.ndimage import binary_dilation, generate_binary_structure

    p = _check_probs(probs)
    region = (1.0 - p[0]) >= threshold
    if margin > 0 and region.any():
        region = binary_dilation(region, generate_binary_structure(region.ndim, 1), iterations=int(margin))
    return region


def region_entropy(probs: np.ndarray, threshold: float = FG_THRESHOLD, margin: int = 2) -> float:
    """Mean normalised entropy of ``probs`` (K, X, Y, Z) over :func:`candidate_region`; the volume
    mean when the region is empty."""
    h = entropy_map(probs)
    region = candidate_region(probs, threshold, margin)
    return float(h[region].mean() if region.any() else h.mean())


def soft_dice_disagreement(p_a: np.ndarray, p_b: np.ndarray, eps: float = 1e-6) -> float:
    """``1 - mean over foreground classes k >= 1 of 2 sum(a_k b_k) / (sum a_k^2 + sum b_k^2)`` for two
    probability maps (K, ...) of the same shape, sums over all voxels. In [0, 1]; 0 when ``p_a ==
    p_b``. A class both maps leave empty (denominator < ``eps``) counts as agreement."""
    a, b = _check_probs(p_a, "p_a"), _check_probs(p_b, "p_b")
    if a.shape != b.shape:
        raise ValueError(f"probability maps differ in shape: {a.shape} vs {b.shape}")
    dices = []
    for k in range(1, a.shape[0]):
        den = float((a[k] ** 2).sum() + (b[k] ** 2).sum())
        dices.append(1.0 if den < eps else 2.0 * float((a[k] * b[k]).sum()) / den)
    return float(np.clip(1.0 - np.mean(dices), 0.0, 1.0))


def js_divergence_map(p_a: np.ndarray, p_b: np.ndarray) -> np.ndarray:
    """Jensen-Shannon divergence per voxel, normalised by ``log 2`` to [0, 1]: (K, ...) x2 -> (...)."""
    a, b = _check_probs(p_a, "p_a"), _check_probs(p_b, "p_b")
    m = 0.5 * (a + b)

    def kl(p, q):
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(p > 0, p * (np.log(np.where(p > 0, p, 1.0)) - np.log(np.where(q > 0, q, 1.0))), 0.0).sum(0)

    return np.clip(0.5 * (kl(a, m) + kl(b, m)) / math.log(2.0), 0.0, 1.0)


def rank_cases(scores: Mapping[str, float], k: int | None = None) -> list[tuple[str, float]]:
    """``[(case, score)]`` by score descending (ties: case id ascending), the first ``k`` (all when
    ``k`` is None or larger than the pool).

    Raises:
        ValueError: a score is NaN, or ``k`` < 1.
    """
    if k is not None and k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    bad = [c for c, s in scores.items() if not math.isfinite(float(s))]
    if bad:
        raise ValueError(f"case {bad[0]!r} has a non-finite score {scores[bad[0]]}")
    ranked = sorted(((c, float(s)) for c, s in scores.items()), key=lambda cs: (-cs[1], cs[0]))
    return ranked if k is None else ranked[:k]


# ---------------------------------------------------------------------------------- models
def load_method(run_dir: Path, cfg=None):
    """The run's method (all its networks, averaged under ``train.weight_average``) rebuilt from
    ``checkpoints/last.pt``, in eval mode on CPU."""
    from ..engine import checkpoint as ckpt
    from ..methods.base import MethodContext
    from ..registry import METHODS

    run = RunDir(run_dir)
    cfg = cfg or run.load_config()
    last = run.last
    if not last.is_file():
        raise InputError(last, "no checkpoint: the run has not been trained (or was moved)")
    state = ckpt.load(last)
    io = _io_of(run, state)
    ctx = MethodContext(cfg, io[0], io[1], cfg.train.iterations)
    method = METHODS.get(cfg.method.name)(ctx, **cfg.method.options)
    try:
        ckpt.load_method_state(method, cfg, state, last)
    except (KeyError, RuntimeError) as e:
        raise InputError(last, f"does not match the run's method/networks ({type(e).__name__})") from None
    return method.eval()


def _io_of(run: RunDir, state: dict) -> tuple[int, int]:
    """(in_channels, num_classes) from the inference model file, else from the method state."""
    saved = run.saved_model(("final", "best"))
    if saved is not None:
        from ..engine import checkpoint as ckpt

        m = ckpt.load(saved)
        return int(m["in_channels"]), int(m["num_classes"])
    convs = [v for k, v in state["method"].items() if k.endswith("weight") and v.ndim == 5]
    if not convs:
        raise InputError(run.path, "cannot tell the number of channels and classes: no model_final.pt")
    return int(convs[0].shape[1]), int(convs[-1].shape[0])


# ---------------------------------------------------------------------------------- the verb
def suggest_cases(run_dir: Path, k: int = 5, out: Path | None = None, data_root: Path | None = None,
                  margin: int = 2, progress=None) -> dict:
    """Score every unlabelled case of the run (see the module docstring), write the ranking and
    evidence into ``out`` (default ``RUN/suggest``) and return the JSON payload."""
    from ..data.case import Case
    from ..data.dataset import make_preprocessor
    from ..engine.precision import channels_last_3d, pick_device, resolve_precision, use_channels_last
    from ..inference.predictor import Predictor, model_file, predict_probs

    run = RunDir(run_dir).require()
    run_dir = run.path
    if k < 1:
        raise InputError("--k", f"must be >= 1, got {k}")
    cfg = run.load_config([f"data.root={data_root}"] if data_root else [])
    pool = run.load_splits()["unlabelled"]
    if not pool:
        raise InputError(run.splits, "the run has no unlabelled cases to rank")
    device = pick_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    two_models = False
    if cfg.model.net2d is not None:  # a method with a 2D network: M&N's two models disagree
        method = load_method(run_dir, cfg)
        groups = dict(method.groups.items())
        two_models = "net2d" in groups and "net3d" in groups
    if two_models:
        net3d = groups["net3d"].to(device).eval()
        if use_channels_last(cfg.train.channels_last, device):
            channels_last_3d(net3d)
        net2d = SliceWise2D(groups["net2d"], getattr(method, "views", (2,))).to(device).eval()
        num_classes = method.num_classes
    else:  # the inference model the run's selection policy designates
        predictor = Predictor(model_file(run_dir), cfg.device, cfg.precision)
        net3d, num_classes = predictor.net, predictor.num_classes
    criterion = ("mn_disagreement: 1 - mean foreground soft Dice (squared denominator) between the 2D and 3D "
                 "models' probabilities over the volume" if two_models else
                 f"entropy: mean normalised predictive entropy over voxels with foreground probability >= "
                 f"{FG_THRESHOLD} dilated by {margin} voxels")
    reader = run.data_reader(cfg)
    pre = make_preprocessor(cfg.data)
    out = Path(out) if out else run_dir / "suggest"
    entries: dict[str, dict] = {}
    maps: dict[str, tuple] = {}
    for i, cid in enumerate(pool):
        c = reader.load(cid)
        case = pre(Case(c.id, c.image, None, c.spacing, c.affine, c.domain, c.source))  # the label is never read
        image = torch.from_numpy(case.image)
        p3 = predict_probs(net3d, image, cfg.data.patch_size, cfg.inference, device, precision).numpy()
        ent = region_entropy(p3, margin=margin)
        e = {"case": cid, "entropy_3d": ent, "foreground_fraction_3d": float((p3.argmax(0) > 0).mean())}
        if two_models:
            p2 = predict_probs(net2d, image, cfg.data.patch_size, cfg.inference, device, precision).numpy()
            js = js_divergence_map(p2, p3)
            e.update(score=soft_dice_disagreement(p2, p3), mean_js=float(js.mean()),
                     foreground_fraction_2d=float((p2.argmax(0) > 0).mean()))
            heat = js
        else:
            e["score"] = ent
            heat = entropy_map(p3) * candidate_region(p3, margin=margin)
        entries[cid] = e
        # keep only what the overlay needs: one slice per case (the volumes can be large)
        z = richest_slice(heat)
        maps[cid] = (z, case.image[0, :, :, z].copy(), p3.argmax(0)[:, :, z].copy(),
                     None if not two_models else p2.argmax(0)[:, :, z].copy(), heat[:, :, z].copy())
        if progress:
            progress(i + 1, len(pool), cid, e["score"])
    ranked = rank_cases({c: e["score"] for c, e in entries.items()})
    top = [c for c, _ in ranked[:k]]
    ranking = [{"rank": r, "suggested": r <= k, **entries[c]} for r, (c, _) in enumerate(ranked, 1)]
    try:
        (out / "overlays").mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(out, f"cannot create the output folder: {err.strerror}") from None
    for stale in (out / "overlays").glob("[0-9][0-9]_*.png"):  # from an earlier call with another k
        stale.unlink()
    for row in ranking[:k]:
        row["overlay"] = str(_overlay(out / "overlays" / f"{row['rank']:02d}_{row['case']}.png", row,
                                      maps[row["case"]], num_classes, two_models).relative_to(out))
    payload = {"run": str(run_dir), "method": cfg.method.name, "criterion": criterion, "k": k,
               "suggested": top, "ranking": ranking}
    (out / "suggestions.json").write_text(json.dumps(payload, indent=1))
    cols = ["rank", "case", "suggested", "score", "entropy_3d", "foreground_fraction_3d"]
    if two_models:
        cols += ["mean_js", "foreground_fraction_2d"]
    with (out / "suggestions.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, cols + ["overlay"], extrasaction="ignore")
        w.writeheader()
        w.writerows({**r, "suggested": int(r["suggested"])} for r in ranking)
    return payload


def _overlay(path: Path, row: dict, slices: tuple, num_classes: int, two_models: bool) -> Path:
    z, img, pred3, pred2, heat = slices
    plt = pyplot()
    n = 4 if two_models else 3
    fig, axes = plt.subplots(1, n, figsize=(3.3 * n + 0.6, 3.9), layout="constrained")
    draw_image(axes[0], img, f"#{row['rank']} {row['case']} (z={z})")
    draw_labels(axes[1], img, pred3, num_classes, "3D model prediction")
    if two_models:
        draw_labels(axes[2], img, pred2, num_classes, "2D model prediction")
        art = draw_heat(axes[3], img, heat, f"2D/3D disagreement (JS, this slice)\ncase score {row['score']:.3f}")
    else:
        art = draw_heat(axes[2], img, heat, f"entropy in candidate region\ncase score {row['score']:.3f}")
    fig.colorbar(art, ax=axes[-1], shrink=0.85)
    return save_figure(fig, path)
