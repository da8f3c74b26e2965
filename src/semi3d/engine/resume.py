"""What ``--resume`` may change in a run's config, and the record of what it changed.

A run resumes from ``checkpoints/last.pt`` under its saved ``config.yaml``. The new resolved config
is compared with it key by key: a change to the data, the splits, the networks, the method, the
seed or the batch is refused (one line naming the keys), since the checkpoint and the sampled data
belong to the old ones; a change to how long or how visibly the run trains (``train.iterations``,
logging, validation, checkpointing, threads, device, precision, learning rates, inference settings)
is allowed (``train.iterations`` not below the checkpoint's step), written into ``config.yaml``
and appended to ``resume_changes.jsonl``
(``{"step", "changes": {key: [old, new]}}`` per resume that changed something).
"""
from __future__ import annotations

import json
from typing import Any

import yaml

from ..atomic import write_text
from ..config import RunConfig, dump_config
from ..errors import InputError
from .rundir import RunDir

__all__ = ["ALLOWED", "config_changes", "check_resume_config"]

#: Dotted keys (or prefixes ending in ".") a resume may change.
ALLOWED = ("threads", "device", "precision", "train.iterations", "train.log_every",
           "train.val_every", "train.val_max_cases", "train.checkpoint_every", "train.progress_bar",
           "train.optimizer.lr", "train.group_optimizers.", "inference.", "data.cache_dir")


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict) and tree:
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: tree}


def config_changes(old: dict, new: dict) -> dict[str, tuple[Any, Any]]:
    """``{dotted key: (old value, new value)}`` for every leaf that differs between two config trees."""
    a, b = _flat(old), _flat(new)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def _allowed(key: str) -> bool:
    return any(key == p or (p.endswith(".") and key.startswith(p)) for p in ALLOWED)


def check_resume_config(run: RunDir, cfg: RunConfig, step: int, record: bool = True) -> dict[str, tuple[Any, Any]]:
    """Compare ``cfg`` with the run's ``config.yaml``; refuse a change outside :data:`ALLOWED`,
    otherwise record the allowed changes when ``record`` (``config.yaml`` rewritten,
    ``resume_changes.jsonl`` appended; one process of several does it) and return them."""
    path = run.config
    try:
        old = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise InputError(path, f"cannot read the run's config to resume it ({type(e).__name__})") from None
    changes = config_changes(old, cfg.model_dump(mode="json"))
    changes = {k: v for k, v in changes.items() if k not in ("name", "output_dir")}  # they name the run folder
    refused = [k for k in changes if not _allowed(k)]
    if cfg.train.iterations < step:
        raise InputError(path, f"cannot set train.iterations to {cfg.train.iterations}: the run is "
                               f"at step {step} (a run can only go on; train a new run for a shorter one)")
    if refused:
        shown = ", ".join(f"{k} ({changes[k][0]!r} -> {changes[k][1]!r})" for k in refused[:4])
        more = f" and {len(refused) - 4} more" if len(refused) > 4 else ""
        raise InputError(path, f"cannot change {shown}{more}: the run's checkpoints belong to its saved "
                               "config; train a new run (another name) instead")
    if changes and record:
        write_text(path, dump_config(cfg))
        with open(run / "resume_changes.jsonl", "a") as f:
            f.write(json.dumps({"step": step, "changes": {k: list(v) for k, v in changes.items()}}) + "\n")
    return changes
