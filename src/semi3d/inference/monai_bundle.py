"""The MONAI side of a bundle written by ``semi3d export``: ``configs/inference.json`` is a complete
MONAI inference config, so ``python -m monai.bundle run --config_file BUNDLE/configs/inference.json
--bundle_root BUNDLE --dataset_dir IMAGES --output_dir OUT`` segments every NIfTI image of a folder
and writes masks equal to ``semi3d predict``'s (tested).

MONAI components do the loading (``LoadImaged``, file voxel order, RAS affine), batching, the
sliding window (``SlidingWindowInferer``, as semi3d's own inference calls it), softmax, the evaluator
loop and saving (``SaveImaged`` with the input's affine). Two semi3d transforms do what MONAI's
transforms would do differently from training: :class:`Preprocessd` (resampling with semi3d's grid
rule, the trained normalisation, semi3d's padding of small volumes) and :class:`Invertd` (crop,
probabilities back to the input grid, argmax, the configured post-processing). Running the bundle
therefore needs ``semi3d`` importable (``pip install semi3d``).
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import MapTransform

from ..config import RunConfig
from ..data.case import Case
from ..data.volumes import spacing_of
from .predictor import label_map, read_bundle_metadata

__all__ = ["Preprocessd", "Invertd", "inference_config"]

_SHAPE, _CROP = "semi3d_shape", "semi3d_crop"


class Preprocessd(MapTransform):
    """``image`` (C, X, Y, Z) as ``LoadImaged`` + ``EnsureChannelFirstd`` give it -> resampled and
    normalised as the run trained, padded to at least the patch. The input shape and the crop that
    undoes the padding go into the image's meta (``semi3d_shape``, ``semi3d_crop``); its affine stays
    the input's, which :class:`Invertd` and ``SaveImaged`` write back."""

    def __init__(self, keys, bundle_root: str):
        super().__init__(keys)
        from ..data.dataset import make_preprocessor

        cfg = read_bundle_metadata(Path(bundle_root))[1]
        self.pre, self.patch = make_preprocessor(cfg.data), tuple(cfg.data.patch_size)

    def __call__(self, data):
        from ..data.patches import pad_image

        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            affine = np.asarray(img.affine, dtype=float)
            spacing = spacing_of(affine)
            arr = np.asarray(img.numpy(), dtype=np.float32)
            pre = self.pre(Case("bundle", arr, None, spacing, affine))
            padded, crop = pad_image(torch.from_numpy(pre.image), self.patch)
            meta = {k: v for k, v in img.meta.items() if k != "affine"}  # the affine is given apart
            meta[_SHAPE] = list(arr.shape[1:])
            meta[_CROP] = [[0 if s.start is None else s.start, -1 if s.stop is None else s.stop] for s in crop[1:]]
            d[key] = MetaTensor(padded, affine=img.affine, meta=meta)
        return d


class Invertd(MapTransform):
    """``pred`` (K, X', Y', Z') probabilities on the padded preprocessed grid -> the label map
    (1, X, Y, Z) uint8 on the input grid: crop, trilinear resampling back (and the input's voxel
    order when the run reorients), argmax, then the run's
    ``inference.postprocess``. Meta (affine, file name) comes from ``image_key``; the output is named
    nnU-Net style (``<case>_0000.nii.gz`` -> ``<case>``)."""

    def __init__(self, keys, bundle_root: str, image_key: str = "image"):
        super().__init__(keys)
        from ..data.dataset import make_preprocessor

        cfg = read_bundle_metadata(Path(bundle_root))[1]
        self.inference, self.pre = cfg.inference, make_preprocessor(cfg.data)
        self.image_key = image_key

    def __call__(self, data):
        d = dict(data)
        ref = d[self.image_key]
        shape = [int(s) for s in ref.meta[_SHAPE]]
        crop = [(int(a), int(b)) for a, b in np.asarray(ref.meta[_CROP]).reshape(3, 2)]
        for key in self.key_iterator(d):
            probs = torch.as_tensor(d[key]).float().cpu()
            probs = probs[(slice(None), *(slice(a, None if b < 0 else b) for a, b in crop))]
            probs = self.pre.restore(probs, shape, np.asarray(ref.affine, dtype=float))
            label = label_map(probs, self.inference)
            meta = {k: v for k, v in ref.meta.items() if k not in (_SHAPE, _CROP, "affine")}
            name = str(meta.get("filename_or_obj", "case"))
            meta["filename_or_obj"] = re.sub(r"_\d{4}(\.nii(\.gz)?)$", r"\1", name)
            d[key] = MetaTensor(torch.from_numpy(label)[None], affine=ref.affine, meta=meta)
        return d


def inference_config(cfg: RunConfig) -> dict:
    """``configs/inference.json``: a MONAI bundle inference config (``python -m monai.bundle run``)."""
    me = "semi3d.inference.monai_bundle"
    return {
        "imports": ["$import glob", "$import torch"],
        "bundle_root": ".",
        "dataset_dir": "images",
        "output_dir": "$@bundle_root + '/eval'",
        "device": "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')",
        "network_def": "$torch.jit.load(@bundle_root + '/models/model.ts', map_location=@device)",
        "network": ({"_target_": "semi3d.engine.sliding_window.Mirrored", "net": "@network_def",
                     "axes": list(cfg.inference.mirror_axes)} if cfg.inference.mirror_axes else "$@network_def.eval()"),
        "datalist": "$[{'image': f} for f in sorted(glob.glob(@dataset_dir + '/*.nii*'))]",
        "preprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "LoadImaged", "keys": "image", "reader": "NibabelReader"},
            {"_target_": "EnsureChannelFirstd", "keys": "image"},
            {"_target_": f"{me}.Preprocessd", "keys": "image", "bundle_root": "@bundle_root"},
        ]},
        "dataset": {"_target_": "Dataset", "data": "@datalist", "transform": "@preprocessing"},
        "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": 1, "shuffle": False,
                       "num_workers": 0},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": list(cfg.data.patch_size),
                    "sw_batch_size": cfg.inference.sw_batch_size, "overlap": cfg.inference.overlap,
                    "mode": cfg.inference.mode},
        "postprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "Activationsd", "keys": "pred", "softmax": True},
            {"_target_": f"{me}.Invertd", "keys": "pred", "bundle_root": "@bundle_root"},
            {"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir", "output_postfix": "",
             "separate_folder": False, "resample": False, "output_dtype": "$torch.uint8"},
        ]},
        "evaluator": {"_target_": "SupervisedEvaluator", "device": "@device", "val_data_loader": "@dataloader",
                      "network": "@network", "inferer": "@inferer", "postprocessing": "@postprocessing"},
        "run": ["$@evaluator.run()"],
        "semi3d_usage": "semi3d predict BUNDLE_DIR IMAGE_OR_FOLDER... -o OUT_DIR",
    }
