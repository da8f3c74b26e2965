"""A dataset's fingerprint: what planning needs to know about the cases (nnU-Net's
``DatasetFingerprintExtractor``, for every format semi3d reads).

Geometry comes from every case (spacing and shape are cheap); intensity statistics and class shares
from the labelled cases, reading each image once; voxels under nnU-Net's ignore label count as
neither a class nor foreground. Axis order is the :class:`~semi3d.data.case.Case`
one: spacing in mm and shapes along (X, Y, Z).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field, replace

import numpy as np
from nibabel.orientations import aff2axcodes

from ..data.orientation import codes_transform, source_axes
from ..data.patches import annotated_slices
from ..data.postprocess import largest_component_share, largest_component_shares
from ..data.readers import Reader
from ..losses import IGNORE_INDEX

__all__ = ["Fingerprint", "ChannelStats", "fingerprint"]

SAMPLES_PER_CASE = 10_000  # foreground intensities kept per case and channel (nnU-Net: 10,000)


@dataclass
class ChannelStats:
    """Foreground intensity statistics of one channel, over the labelled cases (raw units, e.g. HU),
    and ``minimum``: its lowest value over every voxel of every case read (None: not measured)."""
    name: str
    mean: float
    std: float
    p00_5: float
    p99_5: float
    minimum: float | None = None


@dataclass
class Fingerprint:
    """Attributes:
        n_cases, n_labelled: cases read, of which labelled.
        spacings: per case (X, Y, Z) mm; shapes: per case (X, Y, Z) voxels.
        channels: one :class:`ChannelStats` per image channel (foreground voxels of labelled cases).
        class_names: K names, background first; class_share: fraction of labelled voxels per class.
        largest_component_share: per foreground class (K - 1 entries), the lowest share over the
            fully annotated labelled cases of its voxels in its largest 26-connected component (1.0:
            the class is one connected structure in every case), None for a class none of them has.
        foreground_component_share: the same for all foreground classes together (1.0: the
            foreground is one connected structure in every case, e.g. a liver with its tumours),
            None when no fully annotated labelled case has foreground.
        sparse_cases: labelled cases with ignored voxels (nnU-Net's ignore label), left out of the
            component shares: the unannotated gaps of a sparse annotation split a structure.
        axcodes: per case its voxel-axis orientation: the world direction (RAS) each array axis
            X, Y, Z points to most closely, e.g. ``"RAS"`` or ``"LPS"``.
        annotated_slices: per case, for a sparsely annotated labelled case its
            :func:`~semi3d.data.patches.annotated_slices` (per axis the indices of the slices holding
            a label, or None), None for any other case.
    """
    n_cases: int
    n_labelled: int
    spacings: list[tuple[float, float, float]]
    shapes: list[tuple[int, int, int]]
    channels: list[ChannelStats]
    class_names: list[str]
    class_share: list[float] = field(default_factory=list)
    largest_component_share: list[float | None] = field(default_factory=list)
    axcodes: list[str] = field(default_factory=list)
    foreground_component_share: float | None = None
    sparse_cases: int = 0
    annotated_slices: list[list[list[int] | None] | None] = field(default_factory=list)

    @property
    def orientations(self) -> dict[str, int]:
        """Number of cases per orientation (:attr:`axcodes`), e.g. ``{"RAS": 60, "LPS": 4}``."""
        return dict(Counter(self.axcodes))

    def reoriented(self, codes: str = "RAS") -> "Fingerprint":
        """This fingerprint with every case's spacing and shape along the axes of orientation ``codes``
        (what ``data.preprocess.orientation: codes`` trains on)."""
        spacings, shapes, slices = [], [], []
        for k, (case, sp, sh) in enumerate(zip(self.axcodes, self.spacings, self.shapes)):
            ornt = codes_transform(case, codes)
            perm = source_axes(ornt)
            spacings.append(tuple(sp[i] for i in perm))
            shapes.append(tuple(sh[i] for i in perm))
            if k < len(self.annotated_slices):  # a flipped axis counts its slices from the other end
                s = self.annotated_slices[k]
                slices.append(None if s is None else [
                    None if s[i] is None else sorted(sh[i] - 1 - j for j in s[i]) if ornt[i, 1] < 0 else s[i]
                    for i in perm])
        return replace(self, spacings=spacings, shapes=shapes, axcodes=[codes] * len(self.axcodes),
                       annotated_slices=slices)

    @property
    def median_spacing(self) -> np.ndarray:
        return np.median(np.asarray(self.spacings, dtype=float), axis=0)

    def median_shape_at(self, spacing) -> np.ndarray:
        """Median case shape (X, Y, Z) once resampled to ``spacing`` mm."""
        extent = np.asarray(self.shapes, dtype=float) * np.asarray(self.spacings, dtype=float)
        return np.median(extent / np.asarray(spacing, dtype=float), axis=0)

    def to_dict(self) -> dict:
        return asdict(self)


def fingerprint(reader: Reader, ids: list[str] | None = None, seed: int = 0, progress=None) -> Fingerprint:
    """Read every case of ``reader`` (or ``ids``) once and summarise it (see :class:`Fingerprint`).
    Foreground intensities are subsampled to :data:`SAMPLES_PER_CASE` per case with ``seed``."""
    rng = np.random.default_rng(seed)
    ids = list(ids if ids is not None else reader.case_ids())
    spacings, shapes, samples, n_lab, axcodes = [], [], None, 0, []
    names = list(reader.channel_names)
    minima = np.full(len(names), np.inf)
    counts = np.zeros(0, dtype=np.int64)
    sparse, slices = 0, []
    lowest: dict[int, float] = {}  # foreground class (0: all together) -> lowest largest-component share so far
    for i, cid in enumerate(ids):
        case = reader.load(cid)
        spacings.append(tuple(float(s) for s in case.spacing))
        shapes.append(tuple(int(s) for s in case.image.shape[1:]))
        axcodes.append("".join(aff2axcodes(case.affine)))
        slices.append(None)
        minima = np.minimum(minima, case.image.reshape(len(case.image), -1).min(1))
        if case.label is not None:
            n_lab += 1
            known = case.label != IGNORE_INDEX  # nnU-Net's ignore label: neither a class nor foreground
            c = np.bincount(case.label[known].astype(np.int64), minlength=max(len(counts), reader.num_classes or 0))
            counts = np.pad(counts, (0, len(c) - len(counts))) + c
            fg = known & (case.label > 0)
            if not known.all():
                sparse += 1
                slices[-1] = annotated_slices(case.label)
            else:
                for k, share in enumerate(largest_component_shares(case.label, len(c)), 1):
                    if share is not None:
                        lowest[k] = min(share, lowest.get(k, 1.0))
                if (share := largest_component_share(fg)) is not None:
                    lowest[0] = min(share, lowest.get(0, 1.0))
            if not fg.any():
                fg = known
            vox = case.image[:, fg]  # (C, N) raw intensities of the foreground
            pick = rng.choice(vox.shape[1], min(SAMPLES_PER_CASE, vox.shape[1]), replace=False)
            samples = [[] for _ in range(len(vox))] if samples is None else samples
            for ch, s in zip(samples, vox[:, pick]):
                ch.append(s)
        if progress:
            progress(i + 1, len(ids), cid)
    channels = []
    for j, name in enumerate(names):
        v = np.concatenate(samples[j]) if samples else np.zeros(1)
        channels.append(ChannelStats(name, float(v.mean()), float(v.std()), float(np.percentile(v, 0.5)),
                                     float(np.percentile(v, 99.5)), float(minima[j]) if ids else None))
    k = max(len(counts), reader.num_classes or 2)
    class_names = list(reader.class_names or ["background", *(f"class_{c}" for c in range(1, k))])
    share = (counts / counts.sum()).tolist() if counts.sum() else []
    return Fingerprint(len(ids), n_lab, spacings, shapes, channels, class_names, share,
                       [lowest.get(k) for k in range(1, len(class_names))], axcodes, lowest.get(0), sparse,
                       slices)
