"""Helpers shared by the semi-supervised baselines (Mean Teacher, UA-MT, CPS, BCP, URPC).

Ramp-ups, EMA teachers, the UA-MT teacher input noise, a region-masked Dice + CE loss and the
checks of the options every baseline shares. Tensors follow the package convention: logits
``(N, K, X, Y, Z)``, labels ``(N, X, Y, Z)`` int64.
"""
from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn

from ..config import NetSpec
from ..errors import InputError
from .base import MethodContext


def sigmoid_rampup(current: float, length: float) -> float:
    """Laine & Aila's ramp-up ``exp(-5 (1 - t)^2)`` with ``t = clip(current / length, 0, 1)``;
    1 when ``length <= 0`` (as UA-MT's / SSL4MIS's ``ramps.sigmoid_rampup``)."""
    if length <= 0:
        return 1.0
    t = min(max(float(current), 0.0), float(length)) / float(length)
    return float(math.exp(-5.0 * (1.0 - t) ** 2))


def make_teacher(student: nn.Module) -> nn.Module:
    """A deep copy of ``student`` whose parameters do not require gradients."""
    teacher = copy.deepcopy(student)
    teacher.requires_grad_(False)
    return teacher


def ema_decay_at(step: int, decay: float) -> float:
    """The Mean Teacher warm-up ``min(1 - 1 / (step + 1), decay)`` (0 at step 0: teacher = student)."""
    return min(1.0 - 1.0 / (step + 1), decay)


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, decay: float) -> None:
    """``teacher = decay * teacher + (1 - decay) * student``, parameter by parameter (buffers such
    as batch-norm statistics are the teacher's own, as in the Mean Teacher / UA-MT code)."""
    for t, s in zip(teacher.parameters(), student.parameters()):
        t.mul_(decay).add_(s.detach().to(t.dtype), alpha=1.0 - decay)


def teacher_noise(x: torch.Tensor, std: float = 0.1, clip: float = 0.2) -> torch.Tensor:
    """``x + clamp(randn * std, -clip, clip)``: the teacher-input noise of UA-MT."""
    if std <= 0:
        return x
    return x + torch.clamp(torch.randn_like(x) * std, -clip, clip)


def softmax32(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over the class axis in float32 (whatever the autocast dtype)."""
    return torch.softmax(logits.float(), 1)


# ------------------------------------------------------------------------------------- options
def check_number(name: str, key: str, value: Any, lo: float | None = None, hi: float | None = None,
                 integer: bool = False, lo_open: bool = False) -> Any:
    """Return ``value`` if it is a number within [lo, hi] (``(lo, hi]`` with ``lo_open``), else raise
    :class:`InputError` naming ``method.options.<key>``."""
    where = f"method.options.{key} ({name})"
    kind = "an integer" if integer else "a number"
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if not ok or isinstance(value, bool):
        raise InputError(where, f"expected {kind}, got {value!r}")
    if lo is not None and (value <= lo if lo_open else value < lo):
        raise InputError(where, f"must be {'>' if lo_open else '>='} {lo}, got {value!r}")
    if hi is not None and value > hi:
        raise InputError(where, f"must be <= {hi}, got {value!r}")
    return value


def unlabelled_batch(name: str, ctx: MethodContext, value: Any) -> int:
    """The ``unlabelled_batch`` option: unlabelled patches per step, default ``train.batch_size``."""
    if value is None:
        return ctx.cfg.train.batch_size
    return check_number(name, "unlabelled_batch", value, lo=1, integer=True)


def rampup_length(name: str, ctx: MethodContext, value: Any, key: str = "consistency_rampup") -> float:
    """A ramp-up length in iterations; ``None`` means the whole run (``train.iterations``), which
    is what UA-MT (40 x 150 of 6,000 iterations) and SSL4MIS (200 x 150 of 30,000) amount to."""
    if value is None:
        return float(ctx.total_iterations)
    return float(check_number(name, key, value, lo=0))


def predictor_spec_with(ctx: MethodContext, override: dict[str, Any]) -> NetSpec:
    """The configured 3D network spec with the options a method forced on it (so a saved model
    rebuilds exactly the trained network)."""
    spec = ctx.cfg.model.net3d
    return NetSpec(name=spec.name, options={**spec.options, **override})


def slicewise_spec(ctx: MethodContext, axes) -> NetSpec:
    """The saved spec of ``model.net2d`` run slice by slice along ``axes`` (the ``slicewise2d``
    network). A CNN encoder's ``pretrained`` weights are dropped (the trained ones replace them, so
    predicting needs no weight file); SegFormer keeps it, as it defines the architecture."""
    net2d = ctx.cfg.model.net2d.model_dump()
    if net2d["name"] != "segformer":
        net2d["options"] = {k: v for k, v in net2d["options"].items() if k != "pretrained"}
    return NetSpec(name="slicewise2d", options={"net2d": net2d, "axes": list(axes)})
