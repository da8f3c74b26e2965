"""Random patch crops from preprocessed volumes held in memory.

All randomness comes from one ``torch.Generator`` owned by the sampler, whose state is
checkpointed, so a resumed run draws exactly the patches an uninterrupted run would.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..losses import IGNORE_INDEX
from .case import Case


def pad_spec(shape, patch) -> list[int]:
    """``F.pad`` widths (last axis first) that centre a spatial ``shape`` (X, Y, Z) in at least
    ``patch`` voxels per axis; all zeros when it is large enough."""
    spec: list[int] = []
    for p in reversed([max(int(p) - int(s), 0) for p, s in zip(patch, shape)]):
        spec += [p // 2, p - p // 2]
    return spec


def pad_image(image: torch.Tensor, patch) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """The one padding rule of training and inference: an image (C, X, Y, Z) smaller than
    ``patch`` along an axis is centred and padded with each channel's minimum (a z-scored image's
    background, not 0 = its mean). Returns the padded image and the slices (C, X, Y, Z) that crop
    it back to the input."""
    spec = pad_spec(image.shape[1:], patch)
    if not any(spec):
        return image, (slice(None),) * 4
    lo = image.flatten(1).amin(1)
    out = torch.stack([F.pad(ch, spec, value=float(m)) for ch, m in zip(image, lo)])
    before = spec[::2][::-1]  # X, Y, Z
    crop = (slice(None),) + tuple(slice(b, b + s) for b, s in zip(before, image.shape[1:]))
    return out, crop


class _Volume:
    """A case padded (once) to at least the patch size, with its foreground voxel coordinates.

    A sparsely labelled case (a label holding ignored voxels) shorter than the patch along an axis
    is padded there by the shortfall on both sides, so its crops place it anywhere within the
    patch: centred, as others are, its annotated slices would always fall on the same patch
    positions, and the network would learn those positions (measured on LA, ``sparse_la.py``).
    Along those axes (``free``) every crop holds the whole case, so foreground-centred crops place
    it uniformly too: centring there only pushed it to the two extreme offsets (LA: 84 % of them)."""

    def __init__(self, case: Case, patch: tuple[int, int, int]):
        img = torch.from_numpy(np.ascontiguousarray(case.image, dtype=np.float32))
        lab = None if case.label is None else torch.from_numpy(case.label.astype(np.int64))
        self.free = (False,) * 3
        if lab is not None and bool((lab == IGNORE_INDEX).any()):
            self.free = tuple(s < p for p, s in zip(patch, img.shape[1:]))
            patch = tuple(2 * p - s if s < p else p for p, s in zip(patch, img.shape[1:]))
        spec = pad_spec(img.shape[1:], patch)
        img, _ = pad_image(img, patch)
        if lab is not None and any(spec):
            lab = F.pad(lab, spec, value=0)
        self.id, self.image, self.label = case.id, img, lab
        self.fg = None if lab is None else torch.nonzero((lab > 0) & (lab != IGNORE_INDEX)).to(torch.int32)  # (M, 3)

    def set_guide(self, mask: np.ndarray | None) -> None:
        """Foreground coordinates for guided crops of an unlabelled case (mask (X, Y, Z), padded like
        the image by the caller's preprocessing; None removes the guide)."""
        if mask is None:
            self.fg = None
            return
        m = torch.as_tensor(mask > 0)
        spec = pad_spec(m.shape, self.image.shape[1:])
        if any(spec):
            m = F.pad(m, spec, value=False)
        self.fg = torch.nonzero(m).to(torch.int32)


class PatchSampler:
    """Draws patches of ``patch_size`` (X, Y, Z) voxels.

    Args:
        cases: preprocessed cases (image (C, X, Y, Z), label (X, Y, Z) or None).
        patch_size: crop size in voxels.
        fg_oversample: probability that a crop is centred on a random foreground voxel (label > 0,
            or the guide mask of an unlabelled case) rather than placed uniformly.
            A case smaller than the patch is centred in it, but a sparsely labelled one (see
            ``_Volume``) is placed anywhere in it, by foreground-centred crops too.
        generator: the source of all randomness.
        weights: relative sampling weight of each case (None: every case equally likely).

    ``sample(n)`` returns ``(image (n, C, X, Y, Z) float32, label (n, X, Y, Z) int64 or None, ids)``.
    """

    def __init__(self, cases: list[Case], patch_size, fg_oversample: float, generator: torch.Generator,
                 weights: list[float] | None = None):
        self.patch = tuple(int(p) for p in patch_size)
        self.vols = [_Volume(c, self.patch) for c in cases]
        self.fg_oversample = fg_oversample
        self.g = generator
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        if self.weights is not None and (len(self.weights) != len(self.vols) or not (self.weights >= 0).all()
                                         or self.weights.sum() <= 0):
            raise ValueError(f"weights: {len(self.vols)} non-negative values with a positive sum expected")

    def __len__(self) -> int:
        return len(self.vols)

    def set_guide(self, case_id: str, mask: np.ndarray | None) -> None:
        for v in self.vols:
            if v.id == case_id:
                v.set_guide(mask)

    def _rand(self, hi: int) -> int:
        return int(torch.randint(0, max(hi, 1), (1,), generator=self.g))

    def _corner(self, v: _Volume) -> tuple[int, ...]:
        shape = v.image.shape[1:]
        use_fg = v.fg is not None and len(v.fg) > 0 and torch.rand(1, generator=self.g).item() < self.fg_oversample
        if use_fg:
            centre = v.fg[self._rand(len(v.fg))].tolist()
            return tuple(self._rand(s - p + 1) if free else min(max(c - p // 2, 0), s - p)
                         for c, p, s, free in zip(centre, self.patch, shape, v.free))
        return tuple(self._rand(s - p + 1) for p, s in zip(self.patch, shape))

    def sample(self, n: int):
        if n == 0:
            return None, None, []
        imgs, labs, ids = [], [], []
        for _ in range(n):
            pick = self._rand(len(self.vols)) if self.weights is None else \
                int(torch.multinomial(self.weights, 1, generator=self.g))
            v = self.vols[pick]
            x, y, z = self._corner(v)
            px, py, pz = self.patch
            imgs.append(v.image[:, x:x + px, y:y + py, z:z + pz])
            if v.label is not None:
                labs.append(v.label[x:x + px, y:y + py, z:z + pz])
            ids.append(v.id)
        label = torch.stack(labs) if len(labs) == n else None
        return torch.stack(imgs), label, ids


def annotated_slices(label: np.ndarray) -> list[list[int] | None]:
    """Per axis of a label (X, Y, Z): the indices of the slices along it that hold any annotation
    (a value other than :data:`IGNORE_INDEX`) when some hold none, i.e. a sparse annotation along
    that axis; None for an axis every slice of which holds some (all three None for a label without
    ignored voxels)."""
    ignored = label == IGNORE_INDEX
    if not ignored.any():
        return [None, None, None]
    out: list[list[int] | None] = []
    for axis in range(3):
        unlabelled = ignored.all(axis=tuple(a for a in range(3) if a != axis))  # slices without a label
        out.append(np.flatnonzero(~unlabelled).tolist() if unlabelled.any() else None)
    return out


def same_slices_warning(slices: list[list[list[int] | None]], lengths: list[tuple[int, int, int]],
                        shorter: list[tuple[bool, bool, bool]]) -> str | None:
    """A warning when most sparsely annotated cases that are shorter than the patch along an axis are
    annotated on the same slices of that axis, counted from their first one; None otherwise. Per
    case: ``slices``, its :func:`annotated_slices`; ``lengths``, its shape (X, Y, Z) in the grid of
    those indices; ``shorter``, per axis whether it is shorter than the patch. Such a case lies whole
    in every crop along that axis (``_Volume``), its first slice in view, so the network can learn
    which slices carry labels from their distance to it and leave the others unconstrained: on LA
    (2-slice slabs every 10 slices, the same in every case) the dev predictions over-segment the
    more, the farther a slice lies from the slabs (``benchmarks/sparse_la.py``: 0.98-1.03x the true
    volume on the slabs' offsets, up to 1.19-1.31x between them, against 0.97-1.04x everywhere fully
    annotated)."""
    for axis in range(3):
        found = [(s[axis], n[axis]) for s, n, short in zip(slices, lengths, shorter)
                 if short[axis] and s[axis] is not None]
        if len(found) < 2:
            continue
        least = min(n for _, n in found)
        cut = [tuple(int(i) for i in s if i < least) for s, _ in found]  # over the slices all cases have
        top = max(set(cut), key=cut.count)
        if cut.count(top) * 2 > len(cut):
            shown = ", ".join(map(str, top[:6])) + (", ..." if len(top) > 6 else "")
            return (f"{cut.count(top)} of the {len(cut)} sparsely annotated cases shorter than the patch along "
                    f"axis {'XYZ'[axis]} are annotated on the same slices of it, counted from their first one "
                    f"({shown}); every crop shows such a case whole, so the network can learn which slices carry "
                    "labels and over-segment the others: annotate each case from a different first slice")
    return None


def shared_annotation_offsets(cases: list[Case], patch) -> str | None:
    """:func:`same_slices_warning` for preprocessed ``cases`` and a training ``patch`` (X, Y, Z
    voxels of their grid)."""
    labels = [c.label for c in cases if c.label is not None]
    return same_slices_warning([annotated_slices(y) for y in labels], [y.shape for y in labels],
                               [tuple(n < p for n, p in zip(y.shape, patch)) for y in labels])
