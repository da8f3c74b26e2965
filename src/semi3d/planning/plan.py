"""``semi3d plan``: fingerprint a dataset and write a complete, commented training config, so a
user never picks a spacing, patch or network by hand (nnU-Net's experiment planning, adapted to
semi3d's methods and to a CPU or GPU budget).

The rules, in the order they are applied (axes X, Y, Z; spacing in mm):

0. **Orientation**: when the cases are stored in more than one voxel-axis orientation, every case
   is reoriented to RAS (``data.preprocess.orientation``) and the rules below see RAS axes;
   otherwise each file's voxel order is kept, as nnU-Net keeps it.
1. **Target spacing**: the median spacing. When the coarsest axis is more than 3x the finest
   (anisotropic data), that axis takes the 10th percentile of its spacings instead, as nnU-Net does,
   so thin-slice cases are not thrown away.
2. **Resolution for the budget** (CPU only): when the patch the budget allows would cover less
   than half of the median case, every axis is coarsened by the same factor until it covers half
   (LA: 0.625 mm -> ~1.1 mm). A GPU budget keeps the target spacing.
3. **Patch**: the median case shape at that spacing, shrunk with its aspect ratio kept until it
   fits the budget's voxel count, then rounded to multiples of the network divisor (the longest
   axis in mm trimmed while the rounding overshoots the budget).
4. **Network**: a U-Net whose levels halve an axis only while its feature map stays >= 4 voxels and
   its spacing is within 2x the finest axis (nnU-Net's anisotropic pooling), at most 5 (CPU) /
   6 (GPU) levels; 16 / 32 filters at full resolution.
5. **Normalisation** per the ``dataset.json`` modality: CT -> clip to the foreground's 0.5-99.5th
   percentiles, then z-score with the foreground mean/std; anything else -> z-score per case.
6. **M&N's 2D model** slices the high-resolution plane: the slicing axis is the coarsest one.
7. **Batch size and iterations** from the budget: the CPU values are those of the measured LA CPU
   schedule (1840 iterations, ~41 min on a 2-core CPU with native bf16; ``configs/la_mn_cpu.yaml``
   now spends 2560 with copy-paste, ~47 min, for +0.4 Dice with 8 labelled); the GPU values
   follow the paper-scale configs and are not measured by semi3d.
8. **Augmentation**: M&N gets its reference's (:data:`MN_AUGMENT`: a +-10 % zoom on every patch,
   no flips or rotations, mild gamma); on LA it scored 0.904 Dice against 0.875 with the package's
   default augmentation (flips, rot90, stronger gamma), 8 labelled, one seed each
   (``benchmarks/results/la_mn_planned_l8_refaug.json`` vs ``la_mn_planned_l8.json``). The other
   methods keep the package defaults.
9. **Post-processing**, per class: keep a foreground class's largest connected component when, in
   every labelled case, that component holds at least :data:`ONE_STRUCTURE` (99 %) of the class's
   voxels: the labels say the class is one structure, so a second predicted component is an error
   (LA: 75 of 80 ground truths are one component, the other five lose at most 0.15 %; +0.05 to +0.18
   Dice on every measured run). A class spread over several structures (two kidneys, metastases)
   keeps every component. With several foreground classes, nnU-Net's first step comes before it
   by the same rule: when all foreground classes together are one structure (a liver with its
   tumours, a pancreas with its tumour), foreground outside its largest component is removed
   (``inference.largest_foreground_component``). nnU-Net decides both by cross-validation, which
   planning does not run; a trained run decides them from its predictions with ``semi3d evaluate
   RUN --determine-postprocessing`` (:mod:`semi3d.evaluation.postprocessing`).

Warnings (``warning`` notes; the config is written all the same): a method that trains on
unlabelled cases planned on a dataset without any, and sparsely annotated cases shorter than the
patch that are all annotated on the same slices (:func:`~semi3d.data.patches.same_slices_warning`,
what training would warn of after preprocessing).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.formats import build_reader
from ..data.msd import is_msd_json
from ..data.nnunet import read_meta
from ..data.orientation import stored_in
from ..data.patches import same_slices_warning
from ..data.preprocess import Preprocessor
from ..engine.precision import pick_device, resolve_precision
from ..errors import InputError
from ..registry import METHODS
from .fingerprint import Fingerprint, fingerprint

__all__ = ["BUDGETS", "Budget", "Plan", "make_plan", "plan_dataset"]

ANISOTROPY = 3.0
LOOKS_LIKE_HU = -500.0  # a channel minimum this low (air: -1000 HU) hints at CT not named so
NAME_CT = {"folder": "--modality CT", "nnunet": 'dataset.json channel_names {"0": "CT"}',
           "msd": 'dataset.json modality {"0": "CT"}'}  # how each format names a channel CT
ONE_STRUCTURE = 0.99  # the largest component's least share of a class's voxels for largest_component


FP32_NOTE = ("this machine has no GPU and no native bf16 (AVX512-BF16 / AMX), so training runs in fp32 on "
             "its CPU, slower than the bf16 CPU the schedule was measured on (LA, M&N: 35-41 min on a 2-core "
             "Xeon with AMX). On a 2-core AMD EPYC in fp32, LA's planned M&N config stepped in 10.1 / 4.2 / "
             "7.7 s (stage 1 / 2D student / 3D student; 400 + 720 + 720 steps: about 3.5 h, pseudo-mask "
             "passes not counted), and in 6.4 / 3.7 / 2.5 s (about 1.9 h) with --set "
             "model.net3d.options.base=8, whose 8 filters scored 0.28 Dice points below 16 with "
             "configs/la_mn_cpu.yaml (8 labelled, two seeds; benchmarks/README.md, "
             "results/speed_la_mn_planned_b16_fp32.md, _b8_fp32.md)")
MN_AUGMENT = {"p_flip": 0.0, "p_rot90": 0.0, "scale_range": [0.9, 1.1], "p_scale": 1.0,
              "gamma_range": [0.8, 1.2], "p_gamma": 0.1, "p_contrast": 0.0}


@dataclass(frozen=True)
class Budget:
    patch_voxels: int     # the most voxels in one training patch
    batch_size: int
    base: int             # U-Net filters at full resolution
    max_levels: int
    min_coverage: float   # coarsen the spacing until the patch covers this share of the median case
    iterations: int
    warmup_iterations: int  # M&N's stage 1


BUDGETS = {"cpu": Budget(64 * 64 * 48, 4, 16, 5, 0.5, 1840, 400),
           "gpu": Budget(160 * 160 * 64, 2, 32, 6, 0.0, 16000, 2000)}


@dataclass
class Plan:
    """What :func:`make_plan` decided; ``config`` is the RunConfig tree, ``notes`` the why of each value."""
    target_spacing: tuple[float, float, float]
    patch_size: tuple[int, int, int]
    strides: list[tuple[int, int, int]]
    slicing_axis: int
    config: dict
    notes: dict[str, str]
    written: Path | None = None  # the config file plan_dataset wrote


def _target_spacing(fp: Fingerprint) -> tuple[np.ndarray, str]:
    t = fp.median_spacing.copy()
    worst = int(np.argmax(t))
    if t[worst] > ANISOTROPY * t.min():
        t[worst] = float(np.percentile(np.asarray(fp.spacings)[:, worst], 10))
        return t, f"median spacing; anisotropic (>{ANISOTROPY:g}x), so axis {worst} takes its 10th percentile"
    return t, "median spacing of the cases"


def _postprocess(fp: Fingerprint) -> tuple[dict, str]:
    """The ``inference`` post-processing for the labels' connectivity (rule 9), and why."""
    post, why = _postprocess_per_class(fp)
    share = fp.foreground_component_share
    if len(fp.class_names) < 3 or share is None:  # one foreground class: step 1 is step 2
        return post, why
    if share >= ONE_STRUCTURE:
        step1 = (f"all foreground classes together are one structure (in every labelled case their largest "
                 f"connected component holds >= {ONE_STRUCTURE:.0%} of the foreground, least {share:.2%}), so "
                 "predicted foreground outside its largest component is removed first")
    else:
        step1 = (f"the foreground classes together spread over several components (their largest holds "
                 f"{share:.1%} of the foreground in one labelled case), so no foreground component is removed "
                 "as a whole")
    return {"largest_foreground_component": share >= ONE_STRUCTURE, **post}, f"{step1}; {why}"


def _sparse_note(fp: Fingerprint) -> str:
    """What the post-processing note adds when some labelled cases are sparsely annotated."""
    if 0 < fp.sparse_cases < fp.n_labelled:
        return (f" (connectivity measured on the {fp.n_labelled - fp.sparse_cases} fully annotated labelled "
                f"cases; the {fp.sparse_cases} sparsely annotated ones, with nnU-Net's ignore label, left out)")
    return ""


def _postprocess_per_class(fp: Fingerprint) -> tuple[dict, str]:
    shares = [(c, s, n) for c, (s, n) in enumerate(zip(fp.largest_component_share, fp.class_names[1:]), 1)
              if s is not None]
    one = [(c, s, n) for c, s, n in shares if s >= ONE_STRUCTURE]
    many = [f"{n}, which spreads over several components (its largest holds {s:.1%} of it in one labelled case)"
            for c, s, n in shares if s < ONE_STRUCTURE]
    keep = f"every predicted component is kept for {'; '.join(many)}"
    if not shares and fp.sparse_cases and fp.sparse_cases == fp.n_labelled:
        return {"postprocess": "none"}, ("every labelled case is sparsely annotated (nnU-Net's ignore label), so "
                                         "whether a class is one structure is unknown: every predicted component "
                                         "is kept (set inference.postprocess: largest_component when it is)")
    if not shares:
        return {"postprocess": "none"}, "no labelled case has a foreground class"
    if not one:
        return {"postprocess": "none"}, keep
    low, name = min((s, n) for c, s, n in one)
    why = (f"{', '.join(n for c, s, n in one)}: in every labelled case the largest connected component holds "
           f">= {ONE_STRUCTURE:.0%} of the class (least {low:.2%}{f', {name}' if len(one) > 1 else ''}), so smaller "
           "predicted components are removed")
    if len(one) == len(fp.class_names) - 1:
        return {"postprocess": "largest_component"}, why
    return ({"postprocess": "largest_component", "largest_component_classes": [c for c, s, n in one]},
            f"{why}; {keep}" if many else why)


def _same_slices(fp: Fingerprint, spacing: np.ndarray, patch: np.ndarray) -> str | None:
    """:func:`same_slices_warning` on the sparsely annotated cases as training will crop them: their
    slices counted at the stored spacing, shorter than ``patch`` in the shape preprocessing gives
    them at ``spacing`` (mm; :meth:`Preprocessor.output_shape`)."""
    idx = [k for k, s in enumerate(fp.annotated_slices) if s is not None]
    grid = Preprocessor(target_spacing=[float(t) for t in spacing])
    return same_slices_warning([fp.annotated_slices[k] for k in idx], [fp.shapes[k] for k in idx],
                               [tuple(n < p for n, p in zip(grid.output_shape(fp.shapes[k], fp.spacings[k]), patch))
                                for k in idx])


def _strides(patch: np.ndarray, spacing: np.ndarray, max_levels: int) -> list[tuple[int, int, int]]:
    size, sp, out = patch.astype(float), spacing.astype(float), []
    while len(out) < max_levels - 1:
        s = tuple(int(size[a] / 2 >= 4 and sp[a] <= 2 * sp.min()) + 1 for a in range(3))
        if s == (1, 1, 1):
            break
        out.append(s)
        size, sp = size / s, sp * s
    return out


def make_plan(fp: Fingerprint, budget: str = "cpu", method: str = "mn", root: str = ".",
              data_format: str = "nnunet", options: dict | None = None, pretrained2d: str | None = None,
              has_test: bool = False, fp32_cpu: bool = False) -> Plan:
    """The plan for a fingerprinted dataset (the rules are in the module docstring). ``fp32_cpu``:
    the machine planning it trains in fp32 on its CPU (no GPU, no native bf16), which a ``cpu``
    budget's note then says costs (the plan itself does not depend on the machine)."""
    if budget not in BUDGETS:
        raise InputError("--budget", f"unknown budget {budget!r}; choose one of {', '.join(BUDGETS)}")
    b = BUDGETS[budget]
    orientations = fp.orientations
    if len(orientations) > 1:  # the spacings and shapes the network will see, reoriented
        fp = fp.reoriented("RAS")
    spacing, why_spacing = _target_spacing(fp)
    median = fp.median_shape_at(spacing)
    need = float(np.prod(median)) * b.min_coverage
    if need > b.patch_voxels:
        f = (need / b.patch_voxels) ** (1 / 3)
        spacing, median = spacing * f, median / f
        why_spacing += f"; coarsened {f:.2f}x so a {b.patch_voxels}-voxel patch covers {b.min_coverage:.0%} of the median case"
    shrink = min(1.0, (b.patch_voxels / float(np.prod(median))) ** (1 / 3))
    patch0 = np.maximum(median * shrink, 4)
    strides = _strides(patch0, spacing, b.max_levels)
    divisor = np.prod(np.asarray(strides or [(1, 1, 1)]), axis=0)
    patch = np.maximum(np.round(patch0 / divisor), 1).astype(int) * divisor
    while np.prod(patch) > b.patch_voxels and (patch > divisor).any():  # rounding up overshot: trim the longest axis (mm)
        a = int(np.argmax(np.where(patch > divisor, patch * spacing, -1)))
        patch[a] -= divisor[a]
    axis = int(np.argmax(spacing)) if spacing.max() > 1.01 * spacing.min() else 2
    ct = [c for c in fp.channels if c.name.upper() == "CT"]
    if ct:
        c = ct[0]
        pre = {"target_spacing": [round(float(s), 4) for s in spacing], "normalisation": "ct",
               "ct_window": [round(c.p00_5, 2), round(c.p99_5, 2)], "ct_stats": [round(c.mean, 3), round(c.std, 3)]}
        why_norm = "CT: clip to the foreground's 0.5-99.5th percentiles, z-score with its mean/std"
    else:
        pre = {"target_spacing": [round(float(s), 4) for s in spacing], "normalisation": "zscore"}
        why_norm = f"{', '.join(c.name for c in fp.channels)}: z-score per case and channel"
        hu = [c for c in fp.channels if c.minimum is not None and c.minimum <= LOOKS_LIKE_HU]
        if hu and data_format in NAME_CT:
            why_norm += (f"; but channel {hu[0].name!r} goes down to {hu[0].minimum:g}, like CT in HU: if it is CT, "
                         f"name it CT ({NAME_CT[data_format]}) and plan again for CT normalisation")
    if len(orientations) > 1:
        pre["orientation"] = "RAS"
    net3d = {"name": "unet3d", "options": {"levels": len(strides) + 1, "base": b.base, "norm": "instance",
                                           "strides": [list(s) for s in strides]}}
    model: dict = {"net3d": net3d}
    method_options: dict = {}
    if method == "mn":
        model["net2d"] = {"name": "unet2d_mobilenet_v2",
                          "options": {"pretrained": pretrained2d, "decoder_channels": [128, 64, 32, 16, 16]}}
        method_options = {"warmup_iterations": b.warmup_iterations, "epoch_length": 8, "sampling": "lrg",
                          "views": [axis], "guide_every": max(8, (b.iterations - b.warmup_iterations) // 3),
                          "loss_weights": [1.0, 1.0], "predict": "net3d"}
    n_val = max(1, round(0.2 * fp.n_labelled)) if fp.n_labelled > 1 else 0
    n_unlabelled = fp.n_cases - fp.n_labelled
    postprocess, why_post = _postprocess(fp)
    config = {
        "name": f"plan_{method}_{budget}", "output_dir": "runs", "seed": 0,
        "data": {"format": data_format, "root": str(root), "options": dict(options or {}),
                 "num_classes": len(fp.class_names), "class_names": fp.class_names,
                 "splits": {"labelled": {"first": fp.n_labelled - n_val}, "validation": {"last": n_val},
                            "unlabelled": "rest", **({"test": {}} if has_test else {})},
                 "preprocess": pre, "patch_size": [int(p) for p in patch], "fg_oversample": 0.33,
                 **({"augment": dict(MN_AUGMENT)} if method == "mn" else {})},
        "model": model,
        "method": {"name": method, "options": method_options},
        "train": {"iterations": b.iterations, "batch_size": b.batch_size,
                  "optimizer": {"name": "adamw", "lr": 0.001, "weight_decay": 0.01},
                  "schedule": ({"name": "cosine", "warmup": 40, "cycles": [b.warmup_iterations], "min_factor": 0.0}
                               if method == "mn" else {"name": "poly", "power": 0.9}),
                  "val_every": max(1, b.iterations // 4), "selection": "final"},
        "inference": {"overlap": 0.5, "mirror_axes": [], **postprocess},
    }
    notes = {
        "target_spacing": why_spacing,
        "normalisation": why_norm,
        "patch_size": f"median case {np.round(median).astype(int).tolist()} voxels at the target spacing, scaled "
                      f"to <= {b.patch_voxels} voxels, multiples of the divisor {divisor.astype(int).tolist()}",
        "strides": "halve an axis while its feature map stays >= 4 and its spacing <= 2x the finest",
        "views": f"M&N slices across axis {axis} (the coarsest; Z when isotropic)",
        "augment": ("M&N's reference augmentation (zoom on every patch, no flips): 0.904 vs 0.875 Dice with "
                    "the package defaults on LA, 8 labelled" if method == "mn" else "the package defaults"),
        "splits": f"{fp.n_labelled} labelled cases: the last {n_val} validate, the rest train; unlabelled: the rest "
                  f"({n_unlabelled} cases without a label)" + ("; test: the dataset's test cases (imagesTs)" if has_test else ""),
        "postprocess": why_post + _sparse_note(fp),
        "orientation": _why_orientation(orientations),
        "budget": f"{budget}: batch {b.batch_size}, {b.iterations} iterations"
                  + (" (measured LA CPU schedule)" if budget == "cpu" else " (paper scale, not measured)"),
    }
    if budget == "cpu" and fp32_cpu:
        notes["speed"] = FP32_NOTE
    if n_unlabelled == 0 and METHODS.get(method).needs_unlabelled:
        notes["warning"] = (f"method {method} trains on unlabelled cases and every case read has a label, so the "
                            "unlabelled split is empty and training refuses it: add unlabelled images (nnU-Net "
                            "layout: imagesUnlabelled/) or set data.splits.labelled.first lower (the labelled cases "
                            "left over then train as unlabelled ones, their labels unused)")
    if same := _same_slices(fp, spacing, patch):
        notes["warning (sparse annotation)"] = same
    return Plan(tuple(float(s) for s in spacing), tuple(int(p) for p in patch), strides, axis, config, notes)


def _why_orientation(counts: dict[str, int]) -> str:
    """The plan's note on the cases' voxel-axis orientations (:attr:`Fingerprint.orientations`)."""
    if len(counts) <= 1:
        return f"every case's voxel axes point {next(iter(counts), 'RAS')} (the files' voxel order is kept)"
    return (f"{stored_in(counts)}: every case is reoriented to "
            "RAS (the spacing, patch and slicing axis are planned on RAS axes) and predictions are written "
            "back in each file's voxel order")


def _detect_format(root: Path, labels: Path | None = None, modality: list[str] | None = None,
                   ignore_value: int | None = None) -> tuple[str, dict]:
    for flag, given in (("--modality", modality), ("--ignore-value", ignore_value is not None)):
        if given and labels is None:
            raise InputError(flag, "describes a plain folder of images (with --labels); a dataset folder "
                                   "describes itself (dataset.json channel_names and labels)")
    if labels is not None:  # a folder of images (files or DICOM series folders) and one of labels
        if (root / "dataset.json").is_file() or (root / "train.list").is_file():
            raise InputError("--labels", f"is for a plain folder of images; {root} is a dataset folder "
                                         "(dataset.json / train.list) whose labels are found without it")
        if not Path(labels).is_dir():
            raise InputError(labels, "no such labels folder")
        return "folder", {"labels": str(labels), **({"channel_names": list(modality)} if modality else {}),
                          **({"ignore_value": ignore_value} if ignore_value is not None else {})}
    if (root / "dataset.json").is_file():
        return ("msd" if is_msd_json(read_meta(root / "dataset.json", keys=())) else "nnunet"), {}
    if (root / "train.list").is_file():
        return "uamt_h5", {"list_file": str(root / "train.list")}
    raise InputError(root, "cannot tell the dataset format: expected dataset.json (nnU-Net v2, or a Medical "
                           "Segmentation Decathlon task) or train.list (UA-MT h5); for a plain folder of "
                           "images give its labels folder with --labels")


def plan_dataset(root: Path, out: Path | None = None, budget: str = "cpu", method: str = "mn",
                 pretrained2d: str | None = None, progress=None, labels: Path | None = None,
                 modality: list[str] | None = None, ignore_value: int | None = None) -> Plan:
    """Fingerprint the dataset at ``root`` (nnU-Net v2 raw, a Decathlon task or UA-MT h5, detected;
    with ``labels``, ``root`` is a plain folder of images or DICOM series folders, the ``folder``
    format, and ``labels`` its folder of label files named by case; ``modality`` names its channels,
    e.g. ``["CT"]`` for CT normalisation, and ``ignore_value`` the label value of its unannotated
    voxels, nnU-Net's ignore label), plan it, and write the
    commented config to ``out`` (default ``<root>/semi3d_plan_<method>_<budget>.yaml``) and the
    fingerprint beside it (``.fingerprint.json``). Returns the :class:`Plan`."""
    from ..atomic import write_text

    root = Path(root)
    if budget not in BUDGETS:
        raise InputError("--budget", f"unknown budget {budget!r}; choose one of {', '.join(BUDGETS)}")
    if not root.is_dir():
        raise InputError(root, "no such dataset folder")
    if method not in METHODS.names():
        raise InputError("--method", f"unknown method {method!r}; choose one of {', '.join(METHODS.names())}")
    fmt, options = _detect_format(root, labels, modality, ignore_value)
    reader = build_reader(fmt, root, **options)
    fp = fingerprint(reader, progress=progress)
    if fp.n_labelled == 0:
        hint = ""
        if fmt == "folder":
            ids = reader.case_ids()[:2]
            hint = (f"; no file in {options['labels']} is named as an image's case ({', '.join(ids)}, ...: "
                    f"a label is <case>.nii.gz (or .nrrd, .mha, .seg.dcm ...))")
        raise InputError(root, f"no labelled case: planning needs labels for the foreground statistics{hint}")
    has_test = bool(getattr(reader, "test_case_ids", list)())
    plan = make_plan(fp, budget, method, str(root), fmt, options, pretrained2d, has_test,
                     fp32_cpu=resolve_precision("auto", pick_device("auto")) == "fp32")  # what the config's auto picks here
    out = Path(out) if out else root / f"semi3d_plan_{method}_{budget}.yaml"
    write_text(out, render(plan))
    write_text(out.with_suffix(".fingerprint.json"), json.dumps(fp.to_dict(), indent=1))
    plan.written = out
    return plan


def render(plan: Plan) -> str:
    """The config as YAML with a header that says why each planned value is what it is."""
    import yaml

    head = ["# Written by `semi3d plan`; edit freely. Why each planned value is what it is:"]
    head += [f"#   {k}: {v}" for k, v in plan.notes.items()]
    if plan.config["method"]["name"] == "mn" and not plan.config["model"]["net2d"]["options"]["pretrained"]:
        head.append("#   net2d.options.pretrained: set it to ImageNet MobileNetV2 weights (torchvision's "
                    "mobilenet_v2-b0353104.pth); M&N's 2D model is meant to start pretrained")
    body = yaml.safe_dump(plan.config, sort_keys=False, default_flow_style=None, width=110)
    return "\n".join(head) + "\n" + body

