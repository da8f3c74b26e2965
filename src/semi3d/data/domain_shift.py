"""Simulated scanner / site domains for domain-adaptation (UDA) and -generalisation (SemiDG) runs.

Offline we have one domain (the LA MRIs). :class:`ScannerShift` turns a volume into what a
different scanner or protocol might have produced; :data:`DOMAINS` names a few such domains and
:func:`write_domain_dataset` writes domain copies of a dataset as a new dataset folder, with id
lists per domain, so that the splits of a run pick domains by configuration:

    labelled:   {list: <root>/A_train.list}     # UDA: source domain labelled
    unlabelled: {list: <root>/B_train.list}     #      target domain unlabelled
    test:       {list: <root>/B_test.list}      #      evaluated on the target domain

Every case of the new dataset has the id ``<domain>_<source id>`` (see :func:`domain_of`);
``domains.json`` records the domain of every case and the parameters of every domain.

The shift, on each image channel, in this order (intensities first rescaled to [0, 1] by the
channel's min / max, mapped back to the original min / max at the end, so a following z-score
normalisation does not simply undo it):

1. gamma: ``u ** gamma`` (< 1 brightens mid-grey, > 1 darkens it);
2. bias field: ``u * exp(b)``, ``b`` a smooth random field, a quadratic polynomial of the
   coordinates normalised to [-1, 1] with coefficients uniform in ``[-bias, bias]`` (drawn from the
   seed), then centred to mean 0 (multiplicative inhomogeneity, as MRI coil shading);
3. contrast: tissue contrast of the bright half, ``u' = med + (u - med) * contrast`` for the
   voxels above the median ``med``, the others unchanged (a piecewise-linear curve with its kink at
   the median: a global ``(u - mean) * c + mean`` would be undone exactly by the z-score that
   follows in every config);
4. resolution blur: Gaussian filter with ``blur`` sigmas in voxels per axis (thick slices / lower
   in-plane resolution);
5. noise: additive Gaussian noise of std ``noise`` (in units of the [0, 1] range), or Rician
   (``sqrt((u + n1)^2 + n2^2)``, magnitude MRI) with ``rician``.

Labels are never changed. The same (shift, seed) gives bit-identical output; the seed of a case
is derived from (base seed, domain name, case id) with CRC32, never Python's salted ``hash``.
"""
from __future__ import annotations

import json
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
from scipy.ndimage import gaussian_filter

from ..errors import InputError
from ..losses import IGNORE_INDEX
from .formats import build_reader
from .volumes import write_h5, write_volume
from .readers import PathLike, UAMTH5Reader

__all__ = ["ScannerShift", "DOMAINS", "apply_shift", "case_seed", "domain_of", "holds_domain_dataset",
           "interleave", "write_domain_dataset", "write_id_list"]


@dataclass(frozen=True)
class ScannerShift:
    """Parameters of one simulated scanner (see the module docstring for the exact transform).

    Attributes:
        gamma: intensity gamma on the [0, 1]-rescaled image (1 = none).
        bias: amplitude of the log bias-field coefficients (0 = none; 0.3 gives roughly +-30 %).
        contrast: factor on the intensities above the median, around it (1 = none).
        blur: Gaussian sigma in voxels along (X, Y, Z) (0 = none).
        noise: noise std in units of the image's intensity range (0 = none).
        rician: Rician instead of Gaussian noise.
    """

    gamma: float = 1.0
    bias: float = 0.0
    contrast: float = 1.0
    blur: tuple[float, float, float] = (0.0, 0.0, 0.0)
    noise: float = 0.0
    rician: bool = False

    def __post_init__(self) -> None:
        if not self.gamma > 0 or not self.contrast > 0:
            raise InputError("domain shift", f"gamma and contrast must be > 0, got {self.gamma}, {self.contrast}")
        if self.bias < 0 or self.noise < 0 or len(self.blur) != 3 or min(self.blur) < 0:
            raise InputError("domain shift", "bias, noise and the three blur sigmas must be >= 0")
        object.__setattr__(self, "blur", tuple(float(b) for b in self.blur))

    @property
    def is_identity(self) -> bool:
        return self == ScannerShift()

    def scaled(self, strength: float) -> "ScannerShift":
        """The same kind of shift, ``strength`` times as far from the identity: gamma and contrast
        raised to the power ``strength`` (factors, so 2 = squared), bias, blur and noise multiplied
        by it. ``scaled(1)`` is the shift itself, ``scaled(0)`` the identity."""
        if not strength >= 0:
            raise InputError("domain shift", f"strength must be >= 0, got {strength}")
        s = float(strength)
        return ScannerShift(gamma=self.gamma ** s, bias=self.bias * s, contrast=self.contrast ** s,
                            blur=tuple(b * s for b in self.blur), noise=self.noise * s,
                            rician=self.rician and s > 0)


#: Named simulated domains. ``A`` is the data as acquired; ``B`` .. ``D`` differ in the ways
#: scanners / protocols do: intensity response (gamma), coil shading (bias), contrast, resolution
#: (blur, ``B`` and ``D`` with thicker slices along Z) and noise level.
DOMAINS: dict[str, ScannerShift] = {
    "A": ScannerShift(),
    "B": ScannerShift(gamma=0.6, bias=0.3, contrast=1.3, blur=(0.5, 0.5, 1.5), noise=0.03),
    "C": ScannerShift(gamma=1.6, bias=0.2, contrast=0.75, blur=(1.0, 1.0, 0.0), noise=0.05, rician=True),
    "D": ScannerShift(gamma=0.8, bias=0.45, contrast=1.15, blur=(0.8, 0.8, 2.0), noise=0.07),
}


def case_seed(seed: int, domain: str, case_id: str) -> int:
    """A reproducible per-case seed from (base seed, domain, case id)."""
    return int(np.random.SeedSequence([seed, zlib.crc32(domain.encode()), zlib.crc32(case_id.encode())]).generate_state(1)[0])


def _bias_field(shape: Sequence[int], strength: float, rng: np.random.Generator) -> np.ndarray:
    """``exp(b)``, ``b`` = a zero-mean quadratic polynomial (with cross terms) of the coordinates
    normalised to [-1, 1], coefficients uniform in ``[-strength, strength]``."""
    u = np.meshgrid(*[np.linspace(-1.0, 1.0, n) for n in shape], indexing="ij", sparse=True)
    terms = [u[0], u[1], u[2], u[0] ** 2, u[1] ** 2, u[2] ** 2, u[0] * u[1], u[0] * u[2], u[1] * u[2]]
    coef = rng.uniform(-strength, strength, len(terms))
    b = sum(c * t for c, t in zip(coef, terms))
    b = np.broadcast_to(b, tuple(shape))
    return np.exp(b - b.mean())


def apply_shift(image: np.ndarray, shift: ScannerShift, seed: int = 0) -> np.ndarray:
    """Apply ``shift`` to ``image`` ((X, Y, Z) or (C, X, Y, Z)); returns a new float32 array of
    the same shape, deterministic in (``shift``, ``seed``). The identity shift returns an exact copy."""
    img = np.asarray(image, dtype=np.float32)
    if img.ndim not in (3, 4):
        raise InputError("apply_shift", f"expected (X, Y, Z) or (C, X, Y, Z), got shape {img.shape}")
    if shift.is_identity:
        return img.copy()
    chans = img[None] if img.ndim == 3 else img
    rng = np.random.default_rng(seed)
    out = np.empty_like(chans)
    for c, ch in enumerate(chans):
        x = ch.astype(np.float64)
        lo, hi = float(x.min()), float(x.max())
        span = hi - lo if hi > lo else 1.0
        u = (x - lo) / span
        if shift.gamma != 1.0:
            u = u ** shift.gamma
        if shift.bias > 0:
            u = u * _bias_field(u.shape, shift.bias, rng)
        if shift.contrast != 1.0:
            med = float(np.median(u))
            u = np.where(u > med, med + (u - med) * shift.contrast, u)
        if any(shift.blur):
            u = gaussian_filter(u, sigma=shift.blur, mode="nearest")
        if shift.noise > 0:
            n1 = rng.normal(0.0, shift.noise, u.shape)
            if shift.rician:
                u = np.sqrt((u + n1) ** 2 + rng.normal(0.0, shift.noise, u.shape) ** 2)
            else:
                u = u + n1
        out[c] = (u * span + lo).astype(np.float32)
    return out[0] if img.ndim == 3 else out


def domain_of(case_id: str, domains: Iterable[str] = DOMAINS) -> str:
    """The domain of a case written by :func:`write_domain_dataset` (its ``<domain>_`` prefix), or
    ``"default"``."""
    for d in sorted(domains, key=len, reverse=True):
        if case_id.startswith(f"{d}_"):
            return d
    return "default"


def interleave(*lists: Sequence[str]) -> list[str]:
    """Round-robin merge (``a0, b0, c0, a1, b1, ...``), so the first N of the result draw evenly
    from every list (e.g. ``labelled: {list: ..., first: N}`` over several source domains)."""
    out: list[str] = []
    for i in range(max((len(x) for x in lists), default=0)):
        out += [x[i] for x in lists if i < len(x)]
    return out


def write_id_list(path: PathLike, ids: Sequence[str]) -> Path:
    """Write ids one per line (the ``list`` file of a split, or a reader's ``list_file``)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f"{i}\n" for i in ids))
    except OSError as e:
        raise InputError(path, f"cannot write: {e.strerror or e}") from None
    return path


def holds_domain_dataset(root: PathLike, plan: Mapping[str, Sequence[str]], domains: Mapping[str, ScannerShift],
                         seed: int) -> bool:
    """Whether ``root`` holds what :func:`write_domain_dataset` writes for ``plan`` (the same source
    ids per domain, in order), the shifts ``domains`` of the planned domains and ``seed``, by its
    ``domains.json`` (so a caller can reuse it instead of rendering again)."""
    info = Path(root) / "domains.json"
    if not info.is_file():
        return False
    old = json.loads(info.read_text())
    have = {d: [c["source_id"] for c in old["cases"].values() if c["domain"] == d] for d in plan}
    params = json.loads(json.dumps({d: asdict(domains[d]) for d in plan}))
    return have == {d: list(v) for d, v in plan.items()} and old.get("seed") == seed and old.get("domains") == params


def write_domain_dataset(src_root: PathLike, out_root: PathLike, plan: Mapping[str, Sequence[str]], *,
                         src_format: str = "uamt_h5", src_options: Mapping | None = None,
                         domains: Mapping[str, ScannerShift] | None = None, seed: int = 0,
                         n_test: Mapping[str, int] | int = 0, lists: Mapping[str, Sequence[str]] | None = None,
                         format: str = "uamt_h5") -> Path:
    """Write domain copies of cases of a dataset as a new dataset.

    Args:
        src_root, src_format, src_options: the source dataset (as ``data.root`` / ``data.format`` /
            ``data.options`` of a config; e.g. ``uamt_h5`` with ``{"list_file": ...}``).
        out_root: the new dataset folder (created; files of the same names are replaced).
        plan: ``{domain: [source ids]}``: every listed case is rendered in that domain with id
            ``<domain>_<source id>`` (a source id may appear in several domains). Labels are copied
            unchanged, so any case can serve as labelled, unlabelled or test case; nnU-Net's ignore
            label keeps its value and its ``dataset.json`` entry (``nnunet`` output only).
        domains: the shifts by name (default :data:`DOMAINS`).
        seed: base seed of the per-case randomness (:func:`case_seed`).
        n_test: per domain (or for all), how many of its cases (the last ones of its plan list)
            form ``<domain>_test.list``; the others form ``<domain>_train.list``.
        lists: extra id lists to write as ``<name>.list``, in the new ids.
        format: ``"uamt_h5"`` (``2018LA_Seg_Training Set/<id>/mri_norm2.h5`` with ``image`` and
            ``label``; geometry is the reader's ``spacing`` option) or ``"nnunet"`` (``imagesTr``,
            ``labelsTr``, ``dataset.json``; the source affine is kept).

    Writes ``all.list`` (every new id, in plan order), ``<domain>.list``, ``<domain>_train.list``,
    ``<domain>_test.list``, the extra lists and ``domains.json`` (``{"cases": {id: {"domain",
    "source_id"}}, "domains": {name: parameters}, "seed": seed}``). Returns ``out_root``.
    """
    domains = dict(DOMAINS if domains is None else domains)
    unknown = sorted(set(plan) - set(domains))
    if unknown:
        raise InputError("write_domain_dataset", f"unknown domain {unknown[0]!r}; known: {', '.join(domains)}")
    if format not in ("uamt_h5", "nnunet"):
        raise InputError(format, "unknown output format; choose uamt_h5 or nnunet")
    out = Path(out_root)
    reader = build_reader(src_format, src_root, **dict(src_options or {}))
    cases: dict[str, dict] = {}
    per_domain: dict[str, list[str]] = {}
    class_names = getattr(reader, "class_names", None)
    num_classes = reader.num_classes
    ignore = getattr(reader, "ignore_value", None)  # the source's value of nnU-Net's ignore label, read as IGNORE_INDEX
    if ignore is not None and format != "nnunet":
        raise InputError(src_root, "has nnU-Net's ignore label, which the UA-MT h5 layout cannot hold; "
                                   "write format='nnunet'")
    max_label = 0
    for dom, ids in plan.items():
        shift = domains[dom]
        per_domain[dom] = []
        for sid in ids:
            case = reader.load(sid)
            if case.label is None:
                raise InputError(case.source or sid, "has no label: domain copies keep the labels of their source")
            new_id = f"{dom}_{sid}"
            if new_id in cases:
                raise InputError("write_domain_dataset", f"case {sid!r} listed twice for domain {dom!r}")
            image = apply_shift(case.image, shift, case_seed(seed, dom, sid))
            label = case.label if ignore is None else np.where(case.label == IGNORE_INDEX, ignore, case.label)
            max_label = max(max_label, int(label.max()))
            if format == "uamt_h5":
                if image.shape[0] != 1:
                    raise InputError(case.source or sid, "the UA-MT h5 layout holds one image channel")
                write_h5(out / UAMTH5Reader.SUBDIR / new_id / "mri_norm2.h5", {"image": image[0], "label": label})
            else:
                for c in range(image.shape[0]):
                    write_volume(out / "imagesTr" / f"{new_id}_{c:04d}.nii.gz", image[c], case.affine)
                write_volume(out / "labelsTr" / f"{new_id}.nii.gz", label, case.affine)
            cases[new_id] = {"domain": dom, "source_id": sid}
            per_domain[dom].append(new_id)
    write_id_list(out / "all.list", list(cases))
    for dom, ids in per_domain.items():
        k = n_test if isinstance(n_test, int) else int(n_test.get(dom, 0))
        if not 0 <= k <= len(ids):
            raise InputError("n_test", f"domain {dom!r} has {len(ids)} cases, cannot hold out {k}")
        write_id_list(out / f"{dom}.list", ids)
        write_id_list(out / f"{dom}_train.list", ids[: len(ids) - k])
        write_id_list(out / f"{dom}_test.list", ids[len(ids) - k:])
    for name, ids in (lists or {}).items():
        missing = [i for i in ids if i not in cases]
        if missing:
            raise InputError(f"lists.{name}", f"id {missing[0]!r} is not a case of the new dataset")
        write_id_list(out / f"{name}.list", ids)
    if format == "nnunet":
        k = num_classes or max_label + 1
        names = class_names or ["background", *[f"class{i}" for i in range(1, k)]]
        meta = {"name": "Domains", "description": "semi3d simulated scanner domains",
                "channel_names": {str(i): n for i, n in enumerate(getattr(reader, "channel_names", ["image"]))},
                "labels": {**{n: i for i, n in enumerate(names)}, **({"ignore": ignore} if ignore is not None else {})},
                "numTraining": len(cases), "file_ending": ".nii.gz"}
        (out / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
    info = {"cases": cases, "domains": {d: asdict(domains[d]) for d in plan}, "seed": seed,
            "source": {"root": str(src_root), "format": src_format}}
    (out / "domains.json").write_text(json.dumps(info, indent=1) + "\n")
    return out
