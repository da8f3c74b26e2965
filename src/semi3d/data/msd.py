"""The Medical Segmentation Decathlon task reader (``TaskXX_Name/``, also nnU-Net v1's raw layout).

``dataset.json`` lists the cases: ``"training"`` ``[{"image": "./imagesTr/la_003.nii.gz", "label":
"./labelsTr/la_003.nii.gz"}, ...]`` and ``"test"`` ``["./imagesTs/la_001.nii.gz", ...]`` (paths
relative to the task folder), ``"modality"`` ``{"0": "MRI"}`` (the channels) and ``"labels"``
``{"0": "background", "1": "left atrium"}`` (the classes by value). A multi-modal task stores each
image as a 4D NIfTI with the channels last (:func:`~semi3d.data.volumes.read_channels`). nnU-Net v1
lists the same paths but stores one file per channel, ``<case>_0000.nii.gz``, ...: those are read
when the listed file is not there. The test images have no label: they are read as unlabelled cases
(the Decathlon's hidden test set serves semi-supervised training as the unlabelled pool).
"""
from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from .nnunet import read_meta
from .readers import IndexedReader, PathLike, existing_dir, under_root
from .volumes import Volume, read_channels, read_volume, split_suffix

__all__ = ["MSDReader", "is_msd_json"]


def is_msd_json(meta: dict) -> bool:
    """Whether a ``dataset.json`` object is the Decathlon's (or nnU-Net v1's), not nnU-Net v2's."""
    return isinstance(meta, dict) and "modality" in meta and "training" in meta


def _numbered(meta: dict, key: str, where: Path) -> list[str]:
    """``{"0": a, "1": b, ...}`` -> ``[a, b, ...]``."""
    d = meta.get(key)
    if not isinstance(d, dict) or sorted(d, key=str) != sorted(map(str, range(len(d)))) or not d:
        raise InputError(where, f"{key!r} must map \"0\", \"1\", ... to names, got {d!r}")
    return [str(d[str(i)]) for i in range(len(d))]


class MSDReader(IndexedReader):
    """A Decathlon task folder (see the module docstring).

    Args:
        root: the task folder holding ``dataset.json``.
        domain: domain tag of the cases.
    """

    def __init__(self, root: PathLike, domain: str = "default"):
        self.root, self.domain = existing_dir(root), domain
        where = self.root / "dataset.json"
        meta = read_meta(where, ("labels", "modality", "training"), "a Decathlon task folder")
        self.class_names = _numbered(meta, "labels", where)
        self.num_classes = len(self.class_names)
        self.channel_names = _numbered(meta, "modality", where)
        self._images: dict[str, list[Path]] = {}
        self._labels: dict[str, Path] = {}
        self._listed: dict[str, Path] = {}
        pairs, tests = meta["training"], meta.get("test", [])
        if not isinstance(pairs, list) or not all(isinstance(p, dict) and {"image", "label"} <= set(p) for p in pairs):
            raise InputError(where, "'training' must be a list of {\"image\": path, \"label\": path}")
        if not isinstance(tests, list) or not all(isinstance(p, str) for p in tests):
            raise InputError(where, "'test' must be a list of image paths")
        for entry in [*pairs, *({"image": p} for p in tests)]:
            cid = split_suffix(Path(entry["image"]).name)[0]
            if cid in self._images:
                raise InputError(where, f"case {cid!r} listed twice")
            self._listed[cid] = under_root(self.root, entry["image"])
            self._images[cid] = self._channel_files(entry["image"], where)
            if "label" in entry:
                self._labels[cid] = self._existing(entry["label"], where)

    def entry(self, case_id: str) -> tuple[Path, list[Path], Path | None]:
        """The case's image as ``dataset.json`` lists it, its image files (that file, or nnU-Net
        v1's one file per channel beside it) and its label file or None; KeyError for an unknown id."""
        return self._listed[case_id], self._images[case_id], self._labels.get(case_id)

    def _existing(self, rel: str, where: Path) -> Path:
        path = under_root(self.root, rel)
        if not path.is_file():
            raise InputError(path, f"listed in {where.name} but missing")
        return path

    def _channel_files(self, rel: str, where: Path) -> list[Path]:
        """``[the listed file]``, or nnU-Net v1's ``<case>_0000<ext>``, ... beside it."""
        path = under_root(self.root, rel)
        if path.is_file():
            return [path]
        stem, ext = split_suffix(path)
        per_channel = [path.with_name(f"{stem}_{c:04d}{ext or ''}") for c in range(len(self.channel_names))]
        if all(p.is_file() for p in per_channel):
            return per_channel
        raise InputError(path, f"listed in {where.name} but missing (nor nnU-Net v1's {per_channel[0].name}, ...)")

    def _volumes(self, case_id: str) -> tuple[list[Volume], Volume | None]:
        files = self._images[case_id]
        channels = [v for f in files for v in (read_channels(f) if len(files) == 1 else [read_volume(f)])]
        if len(channels) != len(self.channel_names):
            raise InputError(files[0], f"{len(channels)} image channel(s); dataset.json's modality lists "
                                       f"{len(self.channel_names)}")
        label = self._labels.get(case_id)
        return channels, read_volume(label) if label is not None else None
