"""From a data config to preprocessed cases by split: reader -> splits -> preprocessing cache."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config import DataConfig
from ..errors import InputError
from .case import Case
from .preprocess import PreprocessedCache, Preprocessor
from .formats import build_reader
from .readers import check_ignore_value
from .splits import read_domains, resolve_splits


def make_preprocessor(cfg: DataConfig) -> Preprocessor:
    p = cfg.preprocess
    return Preprocessor(target_spacing=p.target_spacing, scale=p.scale, normalisation=p.normalisation,
                        ct_window=p.ct_window, ct_stats=p.ct_stats, orientation=p.orientation)


@dataclass
class DataBundle:
    """Everything the trainer and the evaluator need to reach the cases.

    ``cache`` is anything with ``get(case id) -> Case`` (the preprocessing cache, or a dict of
    cases held in memory); ``weights`` the relative sampling weight of each labelled case id
    (None: uniform); ``channels`` the number of image channels when the reader does not name them.
    """

    reader: object
    splits: dict[str, list[str]]
    cache: PreprocessedCache | dict[str, Case]
    num_classes: int
    class_names: list[str]
    domains: dict[str, str] = None  # type: ignore[assignment]  # domain tag per case id ({} = none)
    weights: dict[str, float] | None = None
    channels: int | None = None

    def cases(self, split: str) -> list[Case]:
        """Preprocessed cases of a split (unlabelled cases lose their label, if they had one)."""
        out = []
        for cid in self.splits[split]:
            c = self.cache.get(cid)
            domain = (self.domains or {}).get(cid, c.domain)
            if (split == "unlabelled" and c.label is not None) or domain != c.domain:
                c = Case(c.id, c.image, None if split == "unlabelled" else c.label, c.spacing, c.affine,
                         domain, c.source)
            out.append(c)
        return out

    @property
    def ignore_value(self) -> int | None:
        """The label value of nnU-Net's ``ignore`` label in the source files, or None (no such label)."""
        return getattr(self.reader, "ignore_value", None)

    @property
    def in_channels(self) -> int:
        return self.channels or len(getattr(self.reader, "channel_names", None) or [0])


def data_domains(cfg: DataConfig) -> dict[str, str]:
    """The cases' domain tags: ``cfg.domains``, else the dataset's own ``domains.json``, else none."""
    dom_file = cfg.domains or (Path(cfg.root) / "domains.json")
    return read_domains(dom_file) if cfg.domains or dom_file.is_file() else {}


def data_splits(cfg: DataConfig, reader, domains: dict[str, str] | None = None) -> dict[str, list[str]]:
    """``cfg.splits`` resolved on the dataset of ``reader`` (its cases, labelled cases and test cases)."""
    ids = reader.case_ids()
    test_ids = reader.test_case_ids() if hasattr(reader, "test_case_ids") else []
    labelled = {i for i in list(ids) + list(test_ids) if reader.has_label(i)}
    return resolve_splits(cfg.splits, ids, labelled, test_ids, data_domains(cfg) if domains is None else domains)


def prepare_data(cfg: DataConfig, splits: dict[str, list[str]] | None = None) -> DataBundle:
    """Build the reader, resolve (or reuse) the splits and the preprocessing cache."""
    reader = build_reader(cfg.format, cfg.root, **cfg.options)
    domains = data_domains(cfg)
    if splits is None:
        splits = data_splits(cfg, reader, domains)
    num_classes = cfg.num_classes or reader.num_classes
    if num_classes is None:
        raise InputError("data.num_classes", "the dataset does not declare its classes: set data.num_classes")
    if reader.num_classes is not None and cfg.num_classes is not None and reader.num_classes != cfg.num_classes:
        raise InputError("data.num_classes", f"{cfg.num_classes} given but the dataset declares {reader.num_classes}")
    if reader.num_classes is None:  # e.g. the folder format: labels are checked against the config's K
        reader.num_classes = num_classes
    check_ignore_value(getattr(reader, "ignore_value", None), num_classes, "data.options.ignore_value")
    names = cfg.class_names or getattr(reader, "class_names", None) or [f"class{i}" for i in range(num_classes)]
    if len(names) != num_classes:
        raise InputError("data.class_names", f"{len(names)} names for {num_classes} classes")
    cache = PreprocessedCache(make_preprocessor(cfg), reader.load, Path(cfg.cache_dir) if cfg.cache_dir else None)
    return DataBundle(reader, splits, cache, num_classes, list(names), domains)
