"""Sparse annotation: the labelled volumes annotated on a slab of slices every k slices only,
trained with the slices between as nnU-Net's ignore label (``ignore``), the same slices called
background (``background``: what a label file without an ignore label says) and full annotation
(``full``).

    python benchmarks/sparse_la.py configs/la_supervised_cpu.yaml --every 10 --thickness 2 \
        --name sparse_la_l8_e10t2 --set train.iterations=600 --set train.val_every=600

(LA trains at half resolution: 2-slice slabs every 10 slices are every 5th slice of the training
grid; a single annotated slice would be averaged with an unannotated neighbour.) The config names
the source dataset and its splits (LA: the first 8 ids labelled, the last 16 the dev split). Per
variant a nnU-Net v2 dataset of the labelled and validation cases is written under ``--data``
(reused when its ``sparse.json`` matches): the labelled cases' labels thinned along ``--axis``
(:func:`annotated`), the validation cases fully annotated, and the images of the config's
unlabelled split, if it has one (``imagesUnlabelled/``: a semi-supervised method such as M&N then
trains on the sparse labels plus the unlabelled volumes). The config then trains on it with the
same labelled / validation / unlabelled ids and the final model is evaluated on the validation
split, also slice by slice (:func:`slice_agreement`: Dice on the slices an annotation of the
validation cases by the same rule would keep, and on the others, where a network that learnt where
the labels lie over-segments; and the predicted / true volume by the slice's offset from the rule's
slabs). ``--phase``: where each labelled case's slabs start: ``fixed``, every case at the same
slice (:func:`first_slab`), so a network can tell the annotated slices from their distance to the
case's first slice (LA, where a case is shorter than the patch along Z and its edge is in every
crop, does: it over-segments more the farther a slice lies from the slabs); ``per_case``, at an
offset drawn from the case id, as annotators starting anywhere would, which gives that distance
nothing to learn. Writes results/<name>.json and .md.
Resumable: rerun the same command (a finished run is evaluated again, not retrained).
"""
from __future__ import annotations

import argparse
import json
import shutil
import zlib
from pathlib import Path

import numpy as np

from semi3d.atomic import write_text
from semi3d.config import load_config
from semi3d.data.formats import build_reader
from semi3d.data.dataset import data_splits
from semi3d.data.volumes import read_volume, write_volume
from semi3d.engine.precision import pick_device, resolve_precision
from semi3d.errors import InputError
from semi3d.evaluation.summary import table_markdown

from benchlib import command_line, foreground, git_commit, machine, script, train_and_evaluate

HERE = Path(__file__).resolve().parent
VARIANTS = ("full", "ignore", "background")


PHASES = ("fixed", "per_case")


def first_slab(case_id: str, every: int, thickness: int = 1, phase: str = "fixed") -> int:
    """The first annotated slice of a case, a multiple of ``thickness`` (so that a downsampling by
    ``thickness`` turns each slab into one slice, never half of two): ``fixed``, ``every // 2``
    rounded down to one for every case; ``per_case``, one of the ``every // thickness`` such starts
    below ``every``, drawn from the case id (CRC-32, the same on every machine and run)."""
    if phase == "fixed":
        return every // 2 // thickness * thickness
    return zlib.crc32(case_id.encode()) % (every // thickness) * thickness


def annotated(n: int, every: int, thickness: int = 1, start: int | None = None) -> np.ndarray:
    """Which of ``n`` slices keep their annotation: slabs of ``thickness`` slices every ``every``
    slices from ``start`` (default: :func:`first_slab`'s ``fixed`` start)."""
    keep = np.zeros(n, bool)
    for s in range(first_slab("", every, thickness) if start is None else start, n, every):
        keep[s:s + thickness] = True
    return keep


def thinned(label: np.ndarray, keep: np.ndarray, axis: int, variant: str, ignore_value: int) -> np.ndarray:
    """``label`` (X, Y, Z) with the slices along ``axis`` that ``keep`` leaves out set to
    ``ignore_value`` (``ignore``) or 0 (``background``); ``full``: unchanged."""
    if variant == "full":
        return label
    out = np.array(label, copy=True)
    np.moveaxis(out, axis, 0)[~keep] = ignore_value if variant == "ignore" else 0
    return out


def slice_agreement(pred_dir: Path, reader, ids: list[str], every: int, thickness: int, axis: int,
                    phase: str = "fixed") -> dict:
    """Foreground agreement of the predictions ``pred_dir/<id>.nii.gz`` with ``reader``'s labels of
    ``ids`` (both on the files' grids), pooled over the cases, on the slices along ``axis`` that
    :func:`annotated` keeps (from each case's :func:`first_slab` of ``phase``) and on the others:
    ``dice_kept_slices``, ``dice_other_slices`` (``2 |P & T| / (|P| + |T|)``), ``volume_other_slices``
    (``|P| / |T|`` on the others: > 1 over-segments) and ``volume_by_offset`` (``|P| / |T|`` of the
    slices at each offset 0 .. every - 1 from the slabs' starts: the slabs are offsets below
    ``thickness``)."""
    inter, pred_n, true_n = np.zeros(2), np.zeros(2), np.zeros(2)  # [kept, other]
    off_pred, off_true = np.zeros(every), np.zeros(every)
    for cid in ids:
        truth = reader.load(cid).label
        pred = read_volume(pred_dir / f"{cid}.nii.gz").array
        if pred.shape != truth.shape:
            raise InputError(pred_dir / f"{cid}.nii.gz", f"shape {pred.shape}, the label's {truth.shape}")
        start = first_slab(cid, every, thickness, phase)
        keep = annotated(truth.shape[axis], every, thickness, start)
        p, t = np.moveaxis(pred > 0, axis, 0), np.moveaxis(truth > 0, axis, 0)
        for j, rows in enumerate((keep, ~keep)):
            inter[j] += np.count_nonzero(p[rows] & t[rows])
            pred_n[j] += np.count_nonzero(p[rows])
            true_n[j] += np.count_nonzero(t[rows])
        offset = (np.arange(keep.size) - start) % every
        np.add.at(off_pred, offset, p.reshape(keep.size, -1).sum(1))
        np.add.at(off_true, offset, t.reshape(keep.size, -1).sum(1))
    dice = 2 * inter / np.maximum(pred_n + true_n, 1)
    return {"dice_kept_slices": float(dice[0]), "dice_other_slices": float(dice[1]),
            "volume_other_slices": float(pred_n[1] / max(true_n[1], 1)),
            "volume_by_offset": [round(float(x), 4) for x in off_pred / np.maximum(off_true, 1)]}


def write_sparse(cfg, reader, splits: dict[str, list[str]], variant: str, every: int, thickness: int, axis: int,
                 out: Path, phase: str = "fixed") -> dict:
    """Write (or reuse) the nnU-Net v2 dataset of ``variant`` at ``out`` from ``reader`` (the
    config's dataset); returns its ``sparse.json`` (the spec, plus the share of the labelled cases'
    slices and foreground voxels annotated)."""
    # "unlabelled" and "phase" only when there are any / not fixed, so the datasets written before
    # they existed still match
    spec = {"source": {"format": cfg.data.format, "root": str(cfg.data.root), "options": cfg.data.options},
            "variant": variant, "every": every, "thickness": thickness, "axis": axis, "labelled": splits["labelled"],
            "validation": splits["validation"], **({"unlabelled": splits["unlabelled"]} if splits["unlabelled"] else {}),
            **({"phase": phase} if phase != "fixed" else {})}
    done = out / "sparse.json"
    if done.is_file() and {k: v for k, v in json.loads(done.read_text()).items() if k in spec} == spec:
        return json.loads(done.read_text())
    if getattr(reader, "ignore_value", None) is not None:
        raise InputError(cfg.data.root, "already has an ignore label; give a fully annotated source")
    k = cfg.data.num_classes or reader.num_classes
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    slices = kept_slices = fg = kept_fg = 0
    for cid in splits["labelled"] + splits["validation"]:
        case = reader.load(cid)
        label = case.label
        if cid in splits["labelled"]:
            keep = (annotated(label.shape[axis], every, thickness, first_slab(cid, every, thickness, phase))
                    if variant != "full" else np.ones(label.shape[axis], bool))
            label = thinned(case.label, keep, axis, variant, k)
            slices, kept_slices = slices + keep.size, kept_slices + int(keep.sum())
            per_slice = np.moveaxis(case.label > 0, axis, 0).reshape(keep.size, -1).sum(1)
            fg, kept_fg = fg + int(per_slice.sum()), kept_fg + int(per_slice[keep].sum())
        for c in range(case.image.shape[0]):
            write_volume(tmp / "imagesTr" / f"{cid}_{c:04d}.nii.gz", case.image[c], case.affine)
        write_volume(tmp / "labelsTr" / f"{cid}.nii.gz", label.astype(np.uint8), case.affine)
    for cid in splits["unlabelled"]:  # images only: their labels stay unseen
        case = reader.load(cid)
        for c in range(case.image.shape[0]):
            write_volume(tmp / "imagesUnlabelled" / f"{cid}_{c:04d}.nii.gz", case.image[c], case.affine)
    names = list(cfg.data.class_names or reader.class_names or ["background", *(f"class{i}" for i in range(1, k))])
    meta = {"name": f"sparse_{variant}", "description": f"semi3d benchmarks/sparse_la.py: {variant}, every {every}, "
                                                     f"slabs of {thickness}",
            "channel_names": {str(i): n for i, n in enumerate(getattr(reader, "channel_names", None) or ["image"])},
            "labels": {**{n: i for i, n in enumerate(names)}, **({"ignore": k} if variant == "ignore" else {})},
            "numTraining": len(splits["labelled"]) + len(splits["validation"]), "file_ending": ".nii.gz"}
    (tmp / "dataset.json").write_text(json.dumps(meta, indent=1) + "\n")
    info = {**spec, "slices_annotated": kept_slices / slices, "foreground_annotated": kept_fg / max(fg, 1)}
    (tmp / "sparse.json").write_text(json.dumps(info, indent=1) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return info


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("--name", required=True)
    ap.add_argument("--every", type=int, default=5, help="annotate a slab every k slices of the labelled cases")
    ap.add_argument("--thickness", type=int, default=1,
                    help="slices per annotated slab: the config's downsampling along --axis (LA at scale 0.5: 2)")
    ap.add_argument("--axis", type=int, default=2, choices=(0, 1, 2), help="slice axis (2: Z, LA's axial slices)")
    ap.add_argument("--phase", default="fixed", choices=PHASES,
                    help="where each labelled case's slabs start: the same slice for all, or per case")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--runs", default="runs/bench")
    ap.add_argument("--data", default="runs/bench/sparse_data")
    ap.add_argument("--results", default=str(HERE / "results"))
    a = ap.parse_args(argv)
    if a.thickness < 1 or a.every < 1 or a.every % a.thickness:
        raise InputError("--every", f"must be a multiple of --thickness (both >= 1), got {a.every} and {a.thickness}")
    base = load_config(a.config, a.set)
    reader = build_reader(base.data.format, base.data.root, **base.data.options)
    splits = data_splits(base.data, reader)
    commit, rows = git_commit(), []
    for variant in a.variants:
        root = Path(a.data) / f"{a.name}_{variant}"
        info = write_sparse(base, reader, splits, variant, a.every, a.thickness, a.axis, root, a.phase)
        cfg = load_config(a.config, [*a.set, f"name={a.name}_{variant}", f"output_dir={a.runs}", "data.format=nnunet",
                                     f"data.root={root}", "data.options={}", "data.splits.test=null",
                                     "data.splits.unlabelled=" + (f"{{ids: {json.dumps(splits['unlabelled'])}}}"
                                                                  if splits["unlabelled"] else "none"),
                                     f"data.splits.labelled={{ids: {json.dumps(splits['labelled'])}}}",
                                     f"data.splits.validation={{ids: {json.dumps(splits['validation'])}}}"])
        r = train_and_evaluate(cfg, "validation", save_predictions=True)
        fg = foreground(r["metrics"])
        per_slice = slice_agreement(cfg.run_dir / "eval_validation" / "predictions", reader, splits["validation"],
                                    a.every, a.thickness, a.axis, a.phase)
        rows.append({"variant": variant, "slices_annotated": info["slices_annotated"],
                     "foreground_annotated": info["foreground_annotated"], "dice": fg["dice"],
                     "jaccard": fg["jaccard"], "hd95": fg["hd95"], "asd": fg["asd"], **per_slice,
                     "iterations": r["summary"]["iterations"], "train_wall_s_total": r["train_wall_s_total"]})
        print(json.dumps(rows[-1]), flush=True)
    result = {"name": a.name, "command": command_line(__file__, argv), "config": a.config, "overrides": a.set,
              "commit": commit, "every": a.every, "thickness": a.thickness, "axis": a.axis, "phase": a.phase,
              "labelled": splits["labelled"],
              "unlabelled": len(splits["unlabelled"]),
              "eval_split": f"validation ({len(splits['validation'])} cases, fully annotated)", "rows": rows,
              "machine": machine(precision=resolve_precision(base.precision, pick_device(base.device)))}
    out = Path(a.results)
    write_text(out / f"{a.name}.json", json.dumps(result, indent=1))
    cols = ["variant", "slices_annotated", "foreground_annotated", "dice", "jaccard", "hd95", "asd", "dice_kept_slices",
            "dice_other_slices", "volume_other_slices", "iterations", "train_wall_s_total"]
    offsets = "\n".join(f"| {r['variant']} | " + " | ".join(f"{v:.2f}" for v in r["volume_by_offset"]) + " |" for r in rows)
    write_text(out / f"{a.name}.md", f"# {a.name}\n\n`{result['command']}` (commit {commit}; "
                                     f"{result['machine']['cpu']}, {result['machine']['precision']})\n\n"
                                     + table_markdown(rows, cols) + "\nPredicted / true foreground volume by "
                                     "the slice's offset from the slabs' starts (offsets below --thickness are the "
                                     f"slabs; phase {a.phase}):\n\n| variant | "
                                     + " | ".join(map(str, range(a.every))) + " |\n|---|" + "---|" * a.every + "\n"
                                     + offsets + "\n")
    return result


if __name__ == "__main__":
    script(main)
