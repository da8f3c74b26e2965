"""Resolve labelled / unlabelled / validation / test splits and save them as ``splits.json``.

The test split is sealed: a case in it can never be in a training or validation split, and the
trainer refuses a config in which it would be.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..atomic import write_text
from ..config import SplitSpec, SplitsConfig
from ..errors import InputError

SPLITS = ("labelled", "unlabelled", "validation", "test")


def read_id_list(path: Path) -> list[str]:
    """Ids from a text file, one per line (blank lines and ``#`` comments ignored)."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as e:
        raise InputError(path, f"cannot read id list: {e.strerror}") from None
    ids = [ln.split("#")[0].strip() for ln in lines]
    ids = [i for i in ids if i]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise InputError(path, f"id {dup!r} listed twice")
    return ids


def read_domains(path: Path) -> dict[str, str]:
    """Domain tag per case id from a JSON file: ``{id: tag}`` or the ``domains.json`` written by
    :func:`semi3d.data.domain_shift.write_domain_dataset` (``{"cases": {id: {"domain": tag}}}``)."""
    try:
        d = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise InputError(path, f"cannot read domain tags: {e}") from None
    if isinstance(d, dict) and isinstance(d.get("cases"), dict):
        d = {k: v.get("domain") if isinstance(v, dict) else None for k, v in d["cases"].items()}
    bad = next((k for k, v in d.items() if not isinstance(v, str) or not v), None) if isinstance(d, dict) else ""
    if bad is not None:
        raise InputError(path, "expected {case id: domain tag} or {\"cases\": {id: {\"domain\": tag}}}"
                         + (f"; case {bad!r} has no tag" if bad else ""))
    return d


def _select(spec: SplitSpec, pool: list[str], known: set[str], what: str,
            domains: dict[str, str] | None = None) -> list[str]:
    if spec.ids is not None:
        src, where = list(spec.ids), f"splits.{what}.ids"
    elif spec.list is not None:
        src, where = read_id_list(spec.list), str(spec.list)
    else:
        src, where = list(pool), f"splits.{what}"
    missing = [i for i in src if i not in known]
    if missing:
        raise InputError(where, f"{len(missing)} id(s) not in the dataset, e.g. {missing[0]!r}")
    if spec.domain is not None:
        want = [spec.domain] if isinstance(spec.domain, str) else list(spec.domain)
        tags = set((domains or {}).values())
        absent = [t for t in want if t not in tags]
        if absent:
            raise InputError(f"splits.{what}.domain", f"no case has the domain tag {absent[0]!r} "
                             + (f"(tags: {', '.join(sorted(tags))})" if tags else "(the dataset has no domain tags: set data.domains)"))
        src = [i for i in src if (domains or {}).get(i) in want]
    if spec.fold is not None:
        return cross_validation_fold(src, spec.fold, spec.folds, where)
    n = spec.first if spec.first is not None else spec.last if spec.last is not None else spec.random
    if n is not None and n > len(src):
        raise InputError(where, f"asks for {n} cases but only {len(src)} are available")
    if spec.first is not None:
        return src[: spec.first]
    if spec.last is not None:
        return src[len(src) - spec.last:]
    if spec.random is not None:
        idx = np.random.default_rng(spec.seed).permutation(len(src))[: spec.random]
        return [src[i] for i in sorted(idx)]
    return src


def cross_validation_fold(ids: list[str], fold: int, folds: int = 5, where: str = "splits") -> list[str]:
    """The validation cases of fold ``fold`` of ``folds``, as nnU-Net v2 splits (its
    ``generate_crossval_split`` on the sorted ids: scikit-learn's ``KFold(folds, shuffle=True,
    random_state=12345)``, i.e. a ``RandomState(12345)`` shuffle of the positions cut into ``folds``
    consecutive parts, the first ``len % folds`` one longer), in the order of ``ids``."""
    if folds > len(ids):
        raise InputError(where, f"{folds} folds need at least {folds} cases, only {len(ids)} are available")
    order = sorted(ids)
    perm = np.arange(len(order))
    np.random.RandomState(12345).shuffle(perm)
    sizes = np.full(folds, len(order) // folds)
    sizes[: len(order) % folds] += 1
    start = int(sizes[:fold].sum())
    chosen = {order[i] for i in perm[start:start + sizes[fold]]}
    return [i for i in ids if i in chosen]


def _labelled_first(spec: SplitSpec, pool: list[str], labelled_ids: set[str]) -> list[str]:
    """Without explicit ids, labelled and validation splits draw from the pool's labelled cases."""
    if spec.ids is None and spec.list is None:
        return [i for i in pool if i in labelled_ids]
    return pool


def resolve_splits(cfg: SplitsConfig, all_ids: list[str], labelled_ids: set[str],
                   test_ids: list[str] = (), domains: dict[str, str] | None = None) -> dict[str, list[str]]:
    """Return ``{"labelled": [...], "unlabelled": [...], "validation": [...], "test": [...]}``.

    Args:
        all_ids: every case of the dataset, in its natural order.
        labelled_ids: the cases that have a label file.
        test_ids: extra cases only usable as test (e.g. nnU-Net ``imagesTs``).
        domains: domain tag per case id, for the ``domain`` selectors.
    """
    known = set(all_ids) | set(test_ids)
    pool = _select(cfg.pool, all_ids, known, "pool", domains) if cfg.pool else list(all_ids)
    test = _select(cfg.test, list(test_ids) or pool, known, "test", domains) if cfg.test else []
    sealed = set(test)
    open_pool = [i for i in pool if i not in sealed]
    val = _select(cfg.validation, _labelled_first(cfg.validation, open_pool, labelled_ids), known,
                  "validation", domains) if cfg.validation else []
    rest = [i for i in open_pool if i not in set(val)]
    lab = _select(cfg.labelled, _labelled_first(cfg.labelled, rest, labelled_ids), known, "labelled", domains)
    if isinstance(cfg.unlabelled, SplitSpec):
        unl = _select(cfg.unlabelled, [i for i in rest if i not in set(lab)], known, "unlabelled", domains)
    elif cfg.unlabelled == "rest":
        unl = [i for i in rest if i not in set(lab)]
    else:
        unl = []
    splits = {"labelled": lab, "unlabelled": unl, "validation": val, "test": test}
    check_splits(splits, labelled_ids)
    return splits


def check_splits(splits: dict[str, list[str]], labelled_ids: set[str]) -> None:
    """Refuse overlaps (above all with the sealed test split) and unusable splits."""
    for a in SPLITS:
        for b in SPLITS[SPLITS.index(a) + 1:]:
            both = set(splits[a]) & set(splits[b])
            if both:
                extra = " (the test split can never be used for training or model selection)" if "test" in (a, b) else ""
                raise InputError("splits", f"case {sorted(both)[0]!r} is in both {a} and {b}{extra}")
    if not splits["labelled"]:
        raise InputError("splits.labelled", "the labelled split is empty: at least one labelled case is needed")
    for split in ("labelled", "validation"):
        nolab = [i for i in splits[split] if i not in labelled_ids]
        if nolab:
            raise InputError(f"splits.{split}", f"case {nolab[0]!r} has no label file")


def save_splits(path: Path, splits: dict[str, list[str]], domains: dict[str, str] | None = None) -> None:
    """Write the splits and, under ``"domains"``, the domain tag of every case in them
    (``"default"`` for a case without one)."""
    tags = {i: (domains or {}).get(i, "default") for k in SPLITS for i in splits.get(k, [])}
    write_text(path, json.dumps({**{k: list(splits.get(k, [])) for k in SPLITS}, "domains": tags}, indent=1))


def load_domains(path: Path) -> dict[str, str]:
    """The domain tags a ``splits.json`` records (empty for one written before they were kept)."""
    try:
        return dict(json.loads(Path(path).read_text()).get("domains", {}))
    except (OSError, ValueError) as e:
        raise InputError(path, f"cannot read splits: {e}") from None


def load_splits(path: Path) -> dict[str, list[str]]:
    try:
        s = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise InputError(path, f"cannot read splits: {e}") from None
    return {k: list(s.get(k, [])) for k in SPLITS}
