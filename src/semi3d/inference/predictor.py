"""Sliding-window prediction at the training resolution, then back to the original grid.

``predict_probs`` works on a preprocessed (C, X, Y, Z) volume; ``Predictor`` wraps a trained model
file (``checkpoints/model_*.pt``) or an exported bundle folder (``semi3d export``: TorchScript
``models/model.ts`` + ``configs/metadata.json``) with its preprocessing, and ``predict_files`` is
the CLI verb.
"""
from __future__ import annotations

import warnings
from importlib.metadata import version
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..config import InferenceConfig, RunConfig, parse_overrides, set_dotted, validate
from ..data.case import Case
from ..engine.rundir import RunDir
from ..engine.precision import channels_last_3d, pick_device, resolve_precision, use_channels_last
from ..engine.sliding_window import predict_probs
from ..errors import InputError
from ..losses import class_argmax

BUNDLE_METADATA = Path("configs") / "metadata.json"
BUNDLE_TORCHSCRIPT = Path("models") / "model.ts"
BUNDLE_STATE_DICT = Path("models") / "model.pt"


def is_bundle(path: Path) -> bool:
    """True for a model bundle folder written by ``semi3d export`` (holds configs/metadata.json)."""
    return Path(path).is_dir() and (Path(path) / BUNDLE_METADATA).is_file()


def read_bundle_metadata(folder: Path) -> tuple[dict, RunConfig]:
    """The ``semi3d`` part of a bundle's ``configs/metadata.json`` and the run config inside it."""
    import json

    meta_path = Path(folder) / BUNDLE_METADATA
    try:
        m = json.loads(meta_path.read_text())["semi3d"]
        return m, RunConfig.model_validate(m["config"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(meta_path, f"not a semi3d bundle metadata file ({type(e).__name__}: {e})") from None


PROBABILITIES = "_prob"  # predict_files' <case>_prob<ending> beside <case><ending>


def label_map(probs: torch.Tensor, inference: InferenceConfig) -> np.ndarray:
    """Probabilities (K, X, Y, Z) -> label map (X, Y, Z) uint8: the argmax, then
    ``inference.largest_foreground_component``, then ``inference.postprocess`` (for
    ``inference.largest_component_classes``)."""
    from ..data.postprocess import postprocess_label

    label = class_argmax(probs, 0).numpy().astype(np.uint8)
    return postprocess_label(label, probs.shape[0], inference.postprocess, inference.largest_component_classes,
                             inference.largest_foreground_component)


class Predictor:
    """A trained model plus the preprocessing and patch size it was trained with.

    ``model_path``: a model file (``checkpoints/model_*.pt``) or a bundle folder from ``semi3d
    export``. A bundle's network is rebuilt from the spec in ``configs/metadata.json`` and the state
    dict ``models/model.pt``, so it computes exactly what the run computes (the TorchScript
    ``models/model.ts`` is for other runtimes; it is used only when the bundle has no state dict). ``inference``: replaces the model's
    ``inference`` settings (an ``InferenceConfig``) or updates some of its fields (a dict, validated;
    an error names the ``--set inference.<field>`` it came from).
    """

    def __init__(self, model_path: Path, device: str = "auto", precision: str = "auto",
                 inference: InferenceConfig | dict | None = None):
        from ..data.dataset import make_preprocessor
        from ..data.postprocess import check_classes

        self.device = pick_device(device)
        self.precision = resolve_precision(precision, self.device)
        if is_bundle(model_path):
            m = self._load_bundle(Path(model_path))
        else:
            m = self._load_checkpoint(Path(model_path))
        self.net.eval()
        self.num_classes, self.class_names = m["num_classes"], m["class_names"]
        self.in_channels = m["in_channels"]
        self.preprocessor = make_preprocessor(self.cfg.data)
        self.step = m["step"]
        if isinstance(inference, dict):  # field updates from the command line: errors name the --set
            tree, updates = self.cfg.model_dump(mode="json"), [(f"inference.{k}", v) for k, v in inference.items()]
            for key, value in updates:
                set_dotted(tree, key, value)
            self.cfg = validate(tree, str(model_path), updates)
        elif inference is not None:  # e.g. the run's config.yaml with --set overrides
            self.cfg = self.cfg.model_copy(update={"inference": inference})
        check_classes(self.cfg.inference.largest_component_classes, self.num_classes,
                      "inference.largest_component_classes")

    def _load_checkpoint(self, path: Path) -> dict:
        from ..engine import checkpoint as ckpt

        m = ckpt.load(path)
        self.cfg = RunConfig.model_validate(m["config"])
        self._build(m, m["state_dict"])
        return m

    def _build(self, m: dict, state_dict: dict) -> None:
        """The eager network of spec ``m["net"]`` with ``state_dict``, on the device, channels-last
        where the run trained so."""
        from ..registry import NETS3D

        self.net = NETS3D.build(m["net"]["name"], in_channels=m["in_channels"], num_classes=m["num_classes"],
                                **m["net"]["options"])
        self.net.load_state_dict(state_dict)
        self.net.to(self.device)
        if use_channels_last(self.cfg.train.channels_last, self.device):
            channels_last_3d(self.net)

    def _load_bundle(self, folder: Path) -> dict:
        m, self.cfg = read_bundle_metadata(folder)
        state = folder / BUNDLE_STATE_DICT
        if state.is_file() and "net" in m:  # the run's own network and weights: identical predictions
            try:
                self._build(m, torch.load(state, map_location="cpu", weights_only=True))
            except Exception as e:
                raise InputError(state, f"cannot load the bundle's network ({type(e).__name__}: {e})") from None
            return m
        ts = folder / BUNDLE_TORCHSCRIPT
        if not ts.is_file():
            raise InputError(ts, "missing: the bundle has no TorchScript model")
        try:
            with warnings.catch_warnings():  # recent torch marks TorchScript deprecated; it still works
                warnings.filterwarnings("ignore", r".*torch\.jit.*deprecated", DeprecationWarning)
                self.net = torch.jit.load(str(ts), map_location=self.device)
        except Exception as e:  # truncated / not a TorchScript archive
            raise InputError(ts, f"cannot load the TorchScript model ({type(e).__name__})") from None
        return m

    def __call__(self, case: Case) -> torch.Tensor:
        """Probabilities (K, X, Y, Z) on the case's original grid."""
        if case.image.shape[0] != self.in_channels:
            raise InputError(case.source or case.id, f"image has {case.image.shape[0]} channel(s), the model expects {self.in_channels}")
        pre = self.preprocessor(Case(case.id, case.image, None, case.spacing, case.affine, case.domain, case.source))
        probs = predict_probs(self.net, torch.from_numpy(pre.image), self.cfg.data.patch_size, self.cfg.inference,
                              self.device, self.precision)
        return self.preprocessor.restore(probs, case.shape, case.affine)

    def segment(self, case: Case, probs: torch.Tensor | None = None) -> np.ndarray:
        """The label map (X, Y, Z) uint8 on the case's original grid: the argmax of ``probs``
        (default ``self(case)``), then ``inference.postprocess``."""
        return label_map(self(case) if probs is None else probs, self.cfg.inference)


class MeanOfModels:
    """Several trained models as one: the mean of their class probabilities on the case's original
    grid (nnU-Net's ensembling of folds or configurations, MONAI's ``MeanEnsemble``). Each member
    keeps its own preprocessing, patch and inference settings; the label map uses the first
    member's ``inference.postprocess``. ``members`` (``Predictor``) must predict the same classes
    from the same channels; ``paths``: their model files, for the error naming the odd one."""

    def __init__(self, members: list[Predictor], paths: list[Path]):
        first = members[0]
        for p, path in zip(members[1:], paths[1:]):
            if (p.num_classes, list(p.class_names), p.in_channels) != (first.num_classes, list(first.class_names), first.in_channels):
                raise InputError(path, f"predicts {list(p.class_names)} from {p.in_channels} channel(s), {paths[0]} "
                                       f"{list(first.class_names)} from {first.in_channels}: they cannot be averaged")
        self.members, self.cfg, self.step = members, first.cfg, [p.step for p in members]
        self.num_classes, self.class_names, self.in_channels = first.num_classes, first.class_names, first.in_channels

    def __call__(self, case: Case) -> torch.Tensor:
        """Mean probabilities (K, X, Y, Z) of the members on the case's original grid."""
        return sum(p(case) for p in self.members) / len(self.members)

    segment = Predictor.segment


def load_models(models: list[Path], device: str = "auto", precision: str = "auto",
                inference: InferenceConfig | dict | None = None) -> Predictor | MeanOfModels:
    """One ``Predictor`` per model file or bundle folder; several become their :class:`MeanOfModels`."""
    members = [Predictor(m, device, precision, inference) for m in models]
    return members[0] if len(members) == 1 else MeanOfModels(members, list(models))


def model_file(run_dir: Path, which: str = "auto") -> Path:
    """The model a run's selection policy designates (:meth:`RunDir.selected_model`; ``which`` =
    auto / best / final / a file path). A bundle folder (``semi3d export``) is its own model."""
    if is_bundle(Path(run_dir)):
        return Path(run_dir)
    return RunDir(run_dir).selected_model(which)


def member_file(path: Path, which: str = "auto") -> Path:
    """The model of an ensemble member (``--ensemble``): a model file or bundle as it is, a run
    folder's per ``which`` (auto / best / final; a file path given as ``which`` is the first
    model's, so a member run folder then follows its own selection policy). A missing path: one
    error naming it."""
    if not Path(path).exists():
        raise InputError(path, "no such run folder, bundle folder or model file")
    if not Path(path).is_dir():
        return Path(path)
    return model_file(path, which if which in ("auto", "best", "final") else "auto")


def _expand_inputs(inputs: list[Path]) -> list[Path]:
    """The image files of ``inputs`` (files, folders of files); a folder without image files but
    with one DICOM series is that series' input."""
    from ..data.dicom import dicom_series
    from ..data.volumes import SUFFIXES, split_suffix

    files = []
    for p in map(Path, inputs):
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if split_suffix(f, SUFFIXES)[1])
            if not found and dicom_series(p):
                found = [p]  # read as a DICOM series (read_volume), written as <folder name>.nii.gz
            if not found:
                hint = "; give the series folders themselves (e.g. DIR/*/)" if any(map(Path.is_dir, p.iterdir())) else ""
                raise InputError(p, f"no image files ({' '.join(SUFFIXES)}) and no DICOM series in this folder{hint}")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise InputError(p, "no such file or folder")
    return files


def group_channels(files: list[Path], in_channels: int) -> list[tuple[str, list[Path]]]:
    """``[(case name, channel files)]``. When every file is named nnU-Net style
    (``<case>_<XXXX>.<ext>``, XXXX the 4-digit channel index) the files are grouped by case, each case
    needing exactly the channels ``0000 .. in_channels - 1``, and outputs are named by case; otherwise
    every file is its own single-file case (named as :func:`_case_names` says)."""
    import re
    from collections import defaultdict

    from ..data.volumes import split_suffix

    parsed = [re.fullmatch(r"(.+)_(\d{4})", split_suffix(f)[0]) for f in files]
    if not files or not all(parsed):
        return [(n, [f]) for n, f in zip(_case_names(files), files)]
    cases: dict[str, dict[int, Path]] = defaultdict(dict)
    for m, f in zip(parsed, files):
        ch = cases[m.group(1)]
        if int(m.group(2)) in ch:
            raise InputError(f, f"channel {m.group(2)} of case {m.group(1)!r} given twice ({ch[int(m.group(2))]})")
        ch[int(m.group(2))] = f
    out = []
    for case, ch in cases.items():
        if sorted(ch) != list(range(in_channels)):
            have = ", ".join(f"{c:04d}" for c in sorted(ch))
            want = ", ".join(f"{c:04d}" for c in range(in_channels))
            raise InputError(ch[min(ch)], f"case {case!r} has channel file(s) {have}; the model expects {want}")
        out.append((case, [ch[c] for c in range(in_channels)]))
    return out


def _case_names(files: list[Path]) -> list[str]:
    """Output names: the file stems; where stems repeat (UA-MT's ``<id>/mri_norm2.h5``) the parent
    folder names. Two inputs that would still write the same output are an error, not an overwrite."""
    from collections import Counter

    from ..data.volumes import split_suffix

    stems = [split_suffix(f)[0] for f in files]
    counts = Counter(stems)
    names = [f.parent.name if counts[s] > 1 else s for s, f in zip(stems, files)]
    seen: dict[str, Path] = {}
    for n, f in zip(names, files):
        if n in seen:
            raise InputError(f, f"would write the same output name {n!r} as {seen[n]}; predict them into separate folders")
        seen[n] = f
    return names


def predict_files(model: Path, inputs: list[Path], out: Path, probabilities: bool = False,
                  which: str = "auto", postprocess: str | None = None, precision: str = "auto",
                  ensemble: list[Path] = (), skip_existing: bool = False, overrides: list[str] = (),
                  progress: Callable[[int, int, list[Path]], None] | None = None, dicom_seg: bool = False) -> list[Path]:
    """Segment each input image; writes ``<out>/<case>.<file ending>`` in the input's own format
    (NIfTI, NRRD, MHA, h5, npy; nnU-Net's naming) with the input's affine; a folder holding one DICOM
    series is one case, written as ``<folder name>.nii.gz`` with the series' geometry. nnU-Net style names
    (``<case>_0000.nii.gz``, ``<case>_0001...``) are grouped into one multi-channel case per
    ``<case>`` (:func:`group_channels`); a 4D NIfTI (channels last) or a vector NRRD / MHA is one case of its
    channels (:func:`~semi3d.data.volumes.read_channels`); post-processed as ``postprocess`` (default: the model's
    ``inference.postprocess``) says, and, with ``probabilities``, ``<case>_prob`` (K, X, Y, Z)
    float32 (a K-component vector image in NRRD/MHA). ``precision``: auto (bf16 where native,
    as training) or fp32 / bf16 / fp16. ``ensemble``: more run folders, model files or bundles whose
    probabilities are averaged with ``model``'s (:class:`MeanOfModels`). Every input is read and
    checked before anything is written; then each case is read again, predicted and written, one in
    memory at a time. ``skip_existing``: leave out the cases whose outputs are all there (nnU-Net's
    ``--continue_prediction``: rerun a stopped prediction of a folder). ``overrides``:
    ``inference.<field>=<YAML value>`` settings for this prediction (as ``evaluate --set``; e.g.
    ``inference.mirror_axes=[0,1]``), ``postprocess`` the same for one field. ``progress(i, n, paths)``:
    called after the i-th of n cases with its files. ``dicom_seg``: every input is a DICOM series
    folder, and its mask is also written as ``<name>.seg.dcm``, a DICOM Segmentation object over the
    series (:func:`~semi3d.data.dicom_seg.write_dicom_seg`). Returns the files written."""
    from ..data.postprocess import POSTPROCESS
    from ..data.volumes import h5_dataset, read_channels, split_suffix, write_volume
    from ..data.readers import assemble_case

    model = Path(model)  # a run folder follows ``which`` (a file path included); a file: member_file's check
    first = model_file(model, which) if model.is_dir() else member_file(model)
    members = [member_file(Path(m), which) for m in ensemble]
    if postprocess is not None and postprocess not in POSTPROCESS:
        raise InputError("--postprocess", f"unknown {postprocess!r}; choose from {', '.join(POSTPROCESS)}")
    if precision not in ("auto", "bf16", "fp16", "fp32"):
        raise InputError("--precision", f"unknown {precision!r}; choose auto, bf16, fp16 or fp32")
    updates = {}
    for key, value in parse_overrides(list(overrides)):
        if not key.startswith("inference.") or key.count(".") != 1:
            raise InputError(f"--set {key}", "predict takes the model's inference settings only: inference.<field>=...")
        updates[key.split(".", 1)[1]] = value
    if postprocess is not None:
        updates["postprocess"] = postprocess
    pred = load_models([first, *members], precision=precision, inference=updates or None)
    spacing = pred.cfg.data.options.get("spacing")
    files = _expand_inputs(inputs)

    groups = group_channels(files, pred.in_channels)
    if dicom_seg:
        from ..data.dicom_seg import check_seg_source, require_highdicom, write_dicom_seg

        require_highdicom()
        for _, fs in groups:
            if not fs[0].is_dir():
                raise InputError(fs[0], "not a DICOM series folder: --dicom-seg writes segmentations of DICOM series only")
            check_seg_source(fs[0])

    def read(name: str, fs: list[Path]) -> Case:
        return assemble_case(name, [v for f in fs for v in read_channels(f, h5_dataset(f, "image"))], None, spacing=spacing)

    def outputs(name: str, fs: list[Path]) -> list[Path]:  # in the input's format
        ext = {".hdf5": ".h5", None: ".nii.gz"}.get(split_suffix(fs[0])[1], split_suffix(fs[0])[1])  # DICOM: NIfTI
        return [Path(out) / f"{name}{ext}", *([Path(out) / f"{name}{PROBABILITIES}{ext}"] if probabilities else []),
                *([Path(out) / f"{name}.seg.dcm"] if dicom_seg else [])]

    if skip_existing:  # the outputs are written atomically: one that exists is complete
        groups = [(n, fs) for n, fs in groups if not all(p.is_file() for p in outputs(n, fs))]
    for name, fs in groups:  # every input checked first, then read again: one case in memory at a time
        read(name, fs)
    written: list[Path] = []
    for i, (name, fs) in enumerate(groups):
        case, paths = read(name, fs), outputs(name, fs)
        probs = pred(case)
        mask = pred.segment(case, probs)
        written.append(write_volume(paths[0], mask, affine=case.affine))
        if probabilities:
            written.append(write_volume(paths[1], probs.numpy(), affine=case.affine))
        if dicom_seg:
            written.append(write_dicom_seg(paths[-1], mask, fs[0], pred.class_names,
                                           f"semi3d {pred.cfg.method.name} ({pred.cfg.name})", version("semi3d")))
        if progress:
            progress(i + 1, len(groups), paths)
    return written
