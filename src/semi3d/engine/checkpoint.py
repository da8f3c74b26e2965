"""Checkpoint files: atomic writes (a temporary file in the same folder, then renamed), reads with
one clear error, and the inference model file (``model_*.pt``) a method's predictor is saved as."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_file
from ..errors import InputError
from .averaging import averaged_groups


def save_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` to ``path`` atomically (:func:`semi3d.atomic.atomic_file`)."""
    with atomic_file(path) as tmp:
        torch.save(obj, tmp)


def load(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "checkpoint not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # truncated / not a torch file
        raise InputError(path, f"cannot read checkpoint ({type(e).__name__})") from None


def inference_record(method, cfg, step: int, in_channels: int, num_classes: int, class_names,
                     predictor=None) -> dict:
    """What a model file (``checkpoints/model_*.pt``) holds: the weights of ``predictor`` (default
    ``method.predictor()``; the trainer passes the averaged one under weight averaging), the network
    spec that rebuilds it (``method.predictor_spec()``), channels, classes, the step and the run
    config (preprocessing, patch size, inference settings)."""
    net = method.predictor() if predictor is None else predictor
    return {"net": method.predictor_spec().model_dump(), "state_dict": net.state_dict(),
            "step": step, "in_channels": in_channels, "num_classes": num_classes,
            "class_names": list(class_names), "config": cfg.model_dump(mode="json")}


def load_method_state(method, cfg, state: dict, path: Path) -> None:
    """Load a checkpoint's ``state`` (``checkpoints/last.pt`` at ``path``) into ``method``; under
    ``cfg.train.weight_average`` its networks then hold the run's averaged weights, so that
    ``method.predictor()`` is the run's model (teachers and other method state stay as trained)."""
    method.load_state_dict(state["method"])
    if cfg.train.weight_average is not None:
        if state.get("weight_average") is None:
            raise InputError(path, "holds no averaged weights (the run trained without train.weight_average); "
                                   "set train.weight_average=null to use the live ones")
        averaged = averaged_groups(state["weight_average"])
        if averaged is not None:
            method.groups.load_state_dict(averaged)


def resave_inference_model(run_dir: Path, overrides: list[str], out: Path) -> Path:
    """Rebuild a run's method from ``checkpoints/last.pt`` under its ``config.yaml`` plus
    ``overrides`` (e.g. ``method.options.predict=ensemble``, ``inference.mirror_axes=[0,1,2]``) and
    save its predictor as the model file ``out``: another inference model of the same training,
    nothing retrained. The overrides may not change the networks (the weights must load). A run
    trained with ``train.weight_average`` saves its averaged weights; ``train.weight_average=null``
    saves the live ones."""
    from ..methods.base import MethodContext
    from ..registry import METHODS

    from .rundir import RunDir

    run = RunDir(run_dir)
    cfg = run.load_config(overrides)
    final = load(run.model("final"))
    state = load(run.last)
    ctx = MethodContext(cfg, final["in_channels"], final["num_classes"], cfg.train.iterations)
    method = METHODS.get(cfg.method.name)(ctx, **cfg.method.options)
    load_method_state(method, cfg, state, run.last)
    save_atomic(inference_record(method, cfg, state["step"], final["in_channels"], final["num_classes"],
                                 final["class_names"]), Path(out))
    return Path(out)
