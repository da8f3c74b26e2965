"""Volumes <-> 2D slices, and a 2D network run over a 3D batch slice by slice ("views").

Axis convention: a volume batch is ``(N, C, X, Y, Z)``; ``axis`` names a *spatial* axis, ``0`` = X,
``1`` = Y, ``2`` = Z (negative values count from the end, ``-1`` = Z). Slicing along ``axis``
gives ``S`` = the size of that axis slices per volume, each of the two remaining spatial axes in
their original order ``(A, B)``:

- axis 2 (Z, the default): slices ``(X, Y)``;
- axis 1 (Y): slices ``(X, Z)``;
- axis 0 (X): slices ``(Y, Z)``.

Slices are ordered volume-major: slice ``i`` of volume ``n`` is row ``n * S + i``.

:class:`SliceWise2D` wraps a 2D network as a 3D segmenter (registered in ``NETS3D`` as
``slicewise2d``, the saved inference model of the ``supervised2d`` method).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["SliceWise2D", "predict_2d_volume", "slices_to_volume", "spatial_axes", "volume_to_slices"]


def spatial_dim(axis: int) -> int:
    """The tensor dim of spatial ``axis`` (0..2 or -3..-1) in ``(N, C, X, Y, Z)``."""
    if isinstance(axis, bool) or not isinstance(axis, int) or not -3 <= axis <= 2:
        raise ValueError(f"axis must be a spatial axis 0, 1 or 2 (or -3..-1), got {axis!r}")
    return axis % 3 + 2


def volume_to_slices(x: torch.Tensor, axis: int = 2) -> torch.Tensor:
    """``(N, C, X, Y, Z)`` -> ``(N * S, C, A, B)``: every slice along spatial ``axis`` as a 2D image.

    Works for any channel count ``C`` (images, logits, probabilities, one-hot targets).
    """
    if x.ndim != 5:
        raise ValueError(f"expected a volume batch (N, C, X, Y, Z), got shape {tuple(x.shape)}")
    d = spatial_dim(axis)
    y = x.movedim(d, 1)  # (N, S, C, A, B)
    n, s = y.shape[:2]
    return y.reshape(n * s, *y.shape[2:])


def slices_to_volume(y: torch.Tensor, n: int, axis: int = 2) -> torch.Tensor:
    """The exact inverse of :func:`volume_to_slices`: ``(N * S, K, A, B)`` -> ``(N, K, X, Y, Z)``."""
    if y.ndim != 4:
        raise ValueError(f"expected a slice batch (N*S, K, A, B), got shape {tuple(y.shape)}")
    if n < 1 or y.shape[0] % n:
        raise ValueError(f"{y.shape[0]} slices cannot be split into {n} volumes")
    d = spatial_dim(axis)
    v = y.reshape(n, y.shape[0] // n, *y.shape[1:])  # (N, S, K, A, B)
    return v.movedim(1, d)


def predict_2d_volume(net2d: nn.Module, x: torch.Tensor, axes: Sequence[int] | int = (2,),
                      chunk: int | None = None) -> torch.Tensor:
    """Softmax probabilities ``(N, K, X, Y, Z)`` (float32) of a 2D network applied slice by slice.

    Args:
        net2d: maps ``(M, C, A, B)`` to logits ``(M, K, A, B)``.
        x: volume batch ``(N, C, X, Y, Z)``.
        axes: the spatial axis (or axes) to slice along. With several axes ("views", e.g.
            ``(0, 1, 2)``) the result is the mean of the per-axis probabilities.
        chunk: at most this many slices per forward pass (None: all slices of one axis at once).
            Chunking changes nothing in eval mode; in train mode BatchNorm statistics are per chunk.

    Gradients flow through when called with autograd enabled; wrap the call in
    ``torch.no_grad()`` for a teacher's prediction. The network's mode (train/eval) is left as is.
    """
    axes = (axes,) if isinstance(axes, int) else tuple(axes)
    if not axes:
        raise ValueError("axes must name at least one spatial axis")
    if chunk is not None and chunk < 1:
        raise ValueError(f"chunk must be a positive number of slices, got {chunk!r}")
    n = x.shape[0]
    total = None
    for axis in axes:
        s = volume_to_slices(x, axis)
        if chunk is None or chunk >= s.shape[0]:
            logits = net2d(s)
        else:
            logits = torch.cat([net2d(s[i:i + chunk]) for i in range(0, s.shape[0], chunk)])
        probs = slices_to_volume(torch.softmax(logits.float(), 1), n, axis)
        total = probs if total is None else total + probs
    return total / len(axes)


def spatial_axes(axes: Sequence[int] | int) -> tuple[int, ...]:
    """``axes`` (one spatial axis or several, distinct) as a tuple of 0, 1, 2; ``ValueError`` otherwise."""
    axes = [axes] if isinstance(axes, int) and not isinstance(axes, bool) else axes
    if not isinstance(axes, (list, tuple)) or not axes:
        raise ValueError(f"expected a spatial axis 0, 1 or 2 or a list of them, got {axes!r}")
    out = tuple(spatial_dim(a) - 2 for a in axes)
    if len(set(out)) != len(out):
        raise ValueError(f"axes must be distinct, got {axes!r}")
    return out


class SliceWise2D(nn.Module):
    """A 2D network as a 3D segmenter: ``(N, C, X, Y, Z)`` -> logits ``(N, K, X, Y, Z)``.

    Every slice along each of ``axes`` goes through ``net2d`` (all slices of the batch in one
    forward pass per axis) and the slice outputs are stacked back into the volume. One axis: the
    output is exactly the stacked 2D logits. Several axes ("views"): the output is
    ``log(mean over axes of softmax(2D logits))`` (probabilities clamped to the smallest positive
    float first), a log-probability whose softmax is the fused probability of
    :func:`predict_2d_volume`. Any spatial size is accepted (``divisor`` is ``(1, 1, 1)``): the 2D
    networks pad their slices themselves. The state dict is ``net2d``'s under the prefix ``net2d.``.
    """

    divisor: tuple[int, int, int] = (1, 1, 1)

    def __init__(self, net2d: nn.Module, axes: Sequence[int] | int = (2,)):
        super().__init__()
        self.net2d = net2d
        self.axes = spatial_axes(axes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(self.axes) == 1:
            a = self.axes[0]
            return slices_to_volume(self.net2d(volume_to_slices(x, a)), x.shape[0], a)
        probs = predict_2d_volume(self.net2d, x, self.axes)
        return probs.clamp_min(torch.finfo(probs.dtype).tiny).log()
