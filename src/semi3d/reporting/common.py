"""Shared helpers of the reporting verbs: reading a run's evaluation metrics and drawing
label overlays with matplotlib (Agg backend, no display needed).

Arrays follow the project's convention: images ``(C, X, Y, Z)``, labels ``(X, Y, Z)`` of class
indices, probabilities ``(K, X, Y, Z)``. Slices are taken along Z (axis 2, the through-plane axis
for LA) and drawn with X horizontal and Y vertical (``origin="lower"``).
"""
from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..errors import InputError

SLICE_AXIS = 2


# ---------------------------------------------------------------------------------- metrics
def load_metrics(path: Path) -> dict:
    """A ``metrics.json`` written by :func:`semi3d.evaluation.summary.write_metrics`."""
    try:
        m = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise InputError(path, f"cannot read evaluation metrics: {e}") from None
    if not isinstance(m, dict) or not isinstance(m.get("per_case"), dict) or not m["per_case"]:
        raise InputError(path, "not an evaluation metrics file (no per-case metrics)")
    return m


def case_means(per_case: Mapping[str, Mapping[str, Mapping[str, float]]]) -> dict[str, dict[str, float]]:
    """``{case: {metric: mean over the case's foreground classes}}`` from ``per_case``
    (``{case: {class: {metric: value}}}``)."""
    out = {}
    for cid, classes in per_case.items():
        metrics = {m for row in classes.values() for m in row}
        out[cid] = {m: float(np.mean([row[m] for row in classes.values() if m in row])) for m in sorted(metrics)}
    return out


def foreground_mean(summary: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """The row of a :func:`summarise` result averaged over foreground classes: ``"mean"`` when
    there are several classes, else the only class."""
    if "mean" in summary:
        return dict(summary["mean"])
    if len(summary) != 1:
        raise InputError("metrics", "summary has no 'mean' row")
    return dict(next(iter(summary.values())))


# ---------------------------------------------------------------------------------- plotting
def pyplot():
    """matplotlib.pyplot on the Agg backend (files only, works without a display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path, dpi: int = 90) -> Path:
    """Write ``fig`` as PNG (via a temporary file) and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=dpi)
    pyplot().close(fig)
    tmp.replace(path)
    return path


def png_base64(path: Path) -> str:
    """``data:`` URI of a PNG file, for a self-contained HTML page."""
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def richest_slice(mask: np.ndarray, fallback: np.ndarray | None = None) -> int:
    """Index along Z of the slice of ``mask`` (X, Y, Z; bool or weights) with the largest sum;
    ``fallback`` is used when ``mask`` is empty, the middle slice when both are."""
    for m in (mask, fallback):
        if m is not None:
            s = np.asarray(m, dtype=np.float64).sum(axis=(0, 1))
            if s.max() > 0:
                return int(s.argmax())
    return int(mask.shape[SLICE_AXIS] // 2)


def _window(img2d: np.ndarray) -> tuple[float, float]:
    lo, hi = np.percentile(img2d, [1, 99]) if img2d.size else (0.0, 1.0)
    return float(lo), float(hi if hi > lo else lo + 1.0)


CLASS_COLOURS = ["#e6194b", "#3cb44b", "#ffe119", "#4363d8", "#f58231", "#911eb4", "#46f0f0", "#f032e6"]


def draw_image(ax, image2d: np.ndarray, title: str = "") -> None:
    """Grey-scale slice (X, Y), windowed at its 1st-99th percentiles."""
    lo, hi = _window(image2d)
    ax.imshow(image2d.T, cmap="gray", vmin=lo, vmax=hi, origin="lower", interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])


def draw_labels(ax, image2d: np.ndarray, labels2d: np.ndarray, num_classes: int, title: str = "",
                alpha: float = 0.45) -> None:
    """Slice (X, Y) with class indices ``labels2d`` (X, Y) overlaid, one colour per class >= 1."""
    from matplotlib.colors import ListedColormap

    draw_image(ax, image2d, title)
    k = max(int(num_classes), 2)
    cmap = ListedColormap([CLASS_COLOURS[(i - 1) % len(CLASS_COLOURS)] for i in range(1, k)])
    masked = np.ma.masked_where(labels2d.T == 0, labels2d.T)
    ax.imshow(masked, cmap=cmap, vmin=0.5, vmax=k - 0.5, alpha=alpha, origin="lower", interpolation="nearest")


def draw_errors(ax, image2d: np.ndarray, truth2d: np.ndarray, pred2d: np.ndarray, title: str = "") -> None:
    """Slice with disagreement voxels: red where the prediction marks foreground with the wrong
    class or on background (false positive), blue where a foreground voxel was predicted as
    background (missed)."""
    from matplotlib.colors import ListedColormap

    draw_image(ax, image2d, title)
    err = np.zeros(truth2d.shape, dtype=np.int8)
    err[(pred2d != truth2d) & (pred2d > 0)] = 1
    err[(pred2d == 0) & (truth2d > 0)] = 2
    ax.imshow(np.ma.masked_where(err.T == 0, err.T), cmap=ListedColormap(["#ff2020", "#2080ff"]),
              vmin=0.5, vmax=2.5, alpha=0.7, origin="lower", interpolation="nearest")


def draw_heat(ax, image2d: np.ndarray, heat2d: np.ndarray, title: str = "", vmax: float | None = None):
    """Slice with a heat map (e.g. entropy or disagreement, X, Y) blended over it; returns the image
    artist (for a colour bar)."""
    draw_image(ax, image2d, title)
    vmax = float(vmax if vmax is not None else max(float(heat2d.max()), 1e-6))
    return ax.imshow(np.ma.masked_where(heat2d.T <= 0.02 * vmax, heat2d.T), cmap="inferno", vmin=0, vmax=vmax,
                     alpha=0.75, origin="lower", interpolation="nearest")
