"""The nnU-Net v2 raw dataset reader, with the unlabelled pool kept outside nnU-Net's own folders.

A valid nnU-Net dataset is read unchanged: ``dataset.json`` (``channel_names`` {"0": "MRI", ...},
``labels`` {"background": 0, ...}, ``file_ending`` e.g. ".nii.gz", optional ``dataset``),
``imagesTr/<case>_<cccc><ending>`` (one file per channel), ``labelsTr/<case><ending>``, optional
``imagesTs``/``labelsTs``. With a ``dataset`` key (nnU-Net v2's explicit file lists:
``{"case": {"images": [channel files], "label": file}}``, paths relative to the dataset folder
unless absolute) the training cases are exactly those.

Unlabelled cases (nnU-Net has none) come from ``imagesUnlabelled/`` beside ``imagesTr``, in
nnU-Net's ``<case>_<cccc><ending>`` naming, or from the folder given as ``unlabelled`` (relative
to the dataset folder or absolute; ``data.options.unlabelled`` in a config). The layout of older
semi3d versions, unlabelled images inside ``imagesTr`` without a label (which nnU-Net's integrity
check rejects), is still read, with a warning.

nnU-Net's ignore label (a label named ``ignore``, the highest value) is not a class: its voxels are
read as :data:`semi3d.losses.IGNORE_INDEX` and count in no loss and no metric (``num_classes`` and
``class_names`` leave it out). A&D refuses it (its diffusion runs on one-hot labels). Region-based
labels are refused.
"""
from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

from ..errors import InputError
from .volumes import Volume, short_error, read_volume
from .readers import PathLike, Reader, existing_dir, under_root

__all__ = ["NnUNetRawReader", "UNLABELLED_DIR", "read_dataset_json"]

UNLABELLED_DIR = "imagesUnlabelled"
Entry = tuple[dict[int, Path], "Path | None"]


def read_meta(path: Path, keys: tuple[str, ...] = ("labels", "file_ending"),
              needed_by: str = "an nnU-Net raw dataset") -> dict:
    """A ``dataset.json``'s object, checked to have ``keys`` (defaults: nnU-Net v2's)."""
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(path, f"missing ({needed_by} needs dataset.json)") from None
    except (OSError, ValueError) as e:
        raise InputError(path, f"cannot read: {short_error(e)}") from None
    if not isinstance(meta, dict):
        raise InputError(path, "expected a JSON object")
    for key in keys:
        if key not in meta:
            raise InputError(path, f"missing key {key!r}")
    return meta


def _labels(meta: dict, where: Path) -> tuple[list[str], int | None]:
    """The class names by value (background first) and the ignore label's value (None without one)."""
    labels = meta["labels"]
    if not isinstance(labels, dict):
        raise InputError(where, "'labels' must map class names to values")
    regions = [name for name, v in labels.items() if isinstance(v, (list, tuple))]
    if regions:
        raise InputError(where, f"region-based labels are not supported ({', '.join(regions)})")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in labels.values()) or \
            sorted(labels.values()) != list(range(len(labels))):
        raise InputError(where, f"label values must be the integers 0..{len(labels) - 1}, "
                                f"got {sorted(labels.values(), key=str)}")
    ignore = None
    if "ignore" in labels:  # nnU-Net: the highest value; its voxels count in no loss and no metric
        if labels["ignore"] != len(labels) - 1:
            raise InputError(where, f"the ignore label must have the highest value ({len(labels) - 1}), "
                                    f"got {labels['ignore']}")
        ignore, labels = labels["ignore"], {k: v for k, v in labels.items() if k != "ignore"}
    return sorted(labels, key=labels.get), ignore


def read_dataset_json(path: Path) -> tuple[list[str], int | None]:
    """An nnU-Net ``dataset.json``'s classes: the K class names by value (background first; the
    ``ignore`` label left out) and the ignore label's value (None without one). Region-based labels
    are refused."""
    return _labels(read_meta(Path(path)), Path(path))


class NnUNetRawReader(Reader):
    """An nnU-Net v2 raw dataset folder (see the module docstring).

    Args:
        root: the ``DatasetXXX_Name`` folder.
        domain: domain tag of the cases.
        unlabelled: a folder of unlabelled images (nnU-Net naming); default ``root/imagesUnlabelled``
            when it exists.
    """

    def __init__(self, root: PathLike, domain: str = "default", unlabelled: PathLike | None = None):
        self.root = existing_dir(root)
        self.domain = domain
        self.meta_path = meta_path = self.root / "dataset.json"
        meta = read_meta(meta_path)
        names, self.ignore_value = _labels(meta, meta_path)
        self.class_names, self.num_classes = names, len(names)
        channels = meta.get("channel_names", meta.get("modality"))
        if not isinstance(channels, dict) or not channels:
            raise InputError(meta_path, "missing or empty 'channel_names'")
        if sorted(channels, key=str) != [str(i) for i in range(len(channels))]:
            raise InputError(meta_path, f"channel_names keys must be 0..{len(channels) - 1}")
        self.channel_names = [str(channels[str(i)]) for i in range(len(channels))]
        self.file_ending = str(meta["file_ending"])
        if "dataset" in meta:
            self._train = self._listed(meta["dataset"])
        else:
            self._train = self._index(self.root / "imagesTr", self.root / "labelsTr")
        self._test = self._index(self.root / "imagesTs", self.root / "labelsTs")
        self._unlabelled = self._pool(unlabelled)
        old = [c for c, (_, lab) in self._train.items() if lab is None]
        if old:
            warnings.warn(f"{self.root}: {len(old)} image(s) in imagesTr have no label (e.g. {old[0]}); read as "
                          f"unlabelled, but nnU-Net rejects this layout: move them to {UNLABELLED_DIR}/", stacklevel=2)

    # ------------------------------------------------------------------------------------ reading
    def _channels(self, folder: Path) -> dict[str, dict[int, Path]]:
        pattern = re.compile(rf"^(.+)_(\d{{4}}){re.escape(self.file_ending)}$")
        cases: dict[str, dict[int, Path]] = {}
        if folder.is_dir():
            for p in sorted(folder.iterdir()):
                m = pattern.match(p.name)
                if m and p.is_file():
                    cases.setdefault(m[1], {})[int(m[2])] = p
        return dict(sorted(cases.items()))

    def _index(self, images: Path, labels: Path) -> dict[str, Entry]:
        out = {}
        for cid, chans in self._channels(images).items():
            label = labels / f"{cid}{self.file_ending}"
            out[cid] = (chans, label if label.is_file() else None)
        return out

    def _path(self, p: object, case: str) -> Path:
        if not isinstance(p, str):
            raise InputError(self.meta_path, f"dataset[{case!r}]: file names must be strings, got {p!r}")
        path = under_root(self.root, p)
        if not path.is_file():
            raise InputError(self.meta_path, f"dataset[{case!r}] names {p}, which does not exist")
        return path

    def _listed(self, dataset: object) -> dict[str, Entry]:
        if not isinstance(dataset, dict) or not dataset:
            raise InputError(self.meta_path, "'dataset' must map case ids to {images: [...], label: ...}")
        out = {}
        for cid, e in dataset.items():
            if not isinstance(e, dict) or not isinstance(e.get("images"), list) or not e["images"] or "label" not in e:
                raise InputError(self.meta_path, f"dataset[{cid!r}] needs 'images' (a list of channel files) "
                                                 "and 'label'")
            out[str(cid)] = ({i: self._path(p, cid) for i, p in enumerate(e["images"])}, self._path(e["label"], cid))
        return out

    def _pool(self, unlabelled: PathLike | None) -> dict[str, Entry]:
        if unlabelled is None:
            folder = self.root / UNLABELLED_DIR
        else:
            folder = under_root(self.root, unlabelled)
            if not folder.is_dir():
                raise InputError(folder, "no such folder (the unlabelled images)")
        pool = {cid: (chans, None) for cid, chans in self._channels(folder).items()}
        both = sorted(set(pool) & set(self._train))
        if both:
            raise InputError(folder, f"case {both[0]!r} is also a training case ({len(both)} such ids)")
        if unlabelled is not None and not pool:
            raise InputError(folder, f"no image named <case>_<cccc>{self.file_ending}")
        return pool

    # ---------------------------------------------------------------------------------- interface
    def case_ids(self) -> list[str]:
        return [*self._train, *self._unlabelled]

    def test_case_ids(self) -> list[str]:
        """Cases of ``imagesTs`` (labelled when ``labelsTs`` has their file)."""
        return list(self._test)

    def _known_ids(self) -> list[str]:
        return [*self._train, *self._unlabelled, *self._test]

    def entry(self, case_id: str) -> Entry:
        """The case's files: ``({channel index: image file}, label file or None)``; KeyError for
        an unknown id."""
        for d in (self._train, self._unlabelled, self._test):
            if case_id in d:
                return d[case_id]
        raise KeyError(case_id)

    def has_label(self, case_id: str) -> bool:
        self._require(case_id)
        return self.entry(case_id)[1] is not None

    def _volumes(self, case_id: str) -> tuple[list[Volume], Volume | None]:
        chans, label = self.entry(case_id)
        n = len(self.channel_names)
        missing = [i for i in range(n) if i not in chans]
        extra = sorted(set(chans) - set(range(n)))
        folder = next(iter(chans.values())).parent
        if missing:
            names = ", ".join(f"{case_id}_{i:04d}{self.file_ending}" for i in missing)
            raise InputError(folder, f"case {case_id!r} lacks channel file(s) {names}")
        if extra:
            raise InputError(folder, f"case {case_id!r} has channel(s) {extra} beyond the {n} "
                                     "declared in dataset.json")
        return [read_volume(chans[i]) for i in range(n)], (read_volume(label) if label else None)
