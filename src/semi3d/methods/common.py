"""Helpers shared by the semi-supervised methods (Mean Teacher, UA-MT, CPS, BCP, URPC, M&N).

Ramp-ups, EMA teachers, the UA-MT teacher input noise, BCP's cuboid copy-paste and the
checks of the options every baseline shares. Tensors follow the package convention: logits
``(N, K, X, Y, Z)``, labels ``(N, X, Y, Z)`` int64.
"""
from __future__ import annotations

import copy
import math
from typing import Any

import torch
from pydantic import Field
from torch import nn

from ..config import NetSpec
from .base import Method, MethodContext, MethodOptions, method_options


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
class SemiOptions(MethodOptions):
    """Options shared by the semi-supervised baselines.

    unlabelled_batch: unlabelled patches per step (default ``train.batch_size``).
    consistency_rampup: iterations of the sigmoid ramp-up of the unsupervised weight (default: the
        whole run, which is what UA-MT (40 x 150 of 6,000 iterations) and SSL4MIS (200 x 150 of
        30,000) amount to).
    """

    unlabelled_batch: int | None = Field(None, ge=1)
    consistency_rampup: float | None = Field(None, ge=0)


def unlabelled_batch(ctx: MethodContext, value: int | None) -> int:
    """The ``unlabelled_batch`` option: unlabelled patches per step, default ``train.batch_size``."""
    return ctx.cfg.train.batch_size if value is None else value


def rampup_length(ctx: MethodContext, value: float | None) -> float:
    """A ramp-up length in iterations; ``None`` means the whole run (``train.iterations``)."""
    return float(ctx.total_iterations) if value is None else float(value)


class SemiMethod(Method):
    """Base of the baselines whose ``Options`` extend :class:`SemiOptions` (Mean Teacher, UA-MT,
    CPS, URPC): ``__init__`` parses the options into ``self.options`` and sets ``self.n_u``
    (unlabelled patches per step) and ``self.rampup`` (ramp-up length in iterations)."""

    needs_unlabelled = True
    Options: type[SemiOptions] = SemiOptions

    def __init__(self, ctx: MethodContext, options: dict[str, Any]):
        super().__init__(ctx)
        self.options = o = method_options(ctx.cfg.method.name, options, self.Options)
        self.n_u = unlabelled_batch(ctx, o.unlabelled_batch)
        self.rampup = rampup_length(ctx, o.consistency_rampup)


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


def cuboid_mask(spatial: tuple[int, int, int], ratio: float = 2 / 3, position: str = "random",
                generator: torch.Generator | None = None, device: torch.device | str = "cpu") -> torch.Tensor:
    """Bool (X, Y, Z) mask, True inside a cuboid of ``int(S * ratio)`` voxels per axis.

    ``position="center"`` starts it at ``(S - s) // 2``; ``"random"`` at a uniform start in
    ``0 .. S - s`` (drawn from ``generator``, else the global torch RNG).
    """
    inside = torch.zeros(spatial, dtype=torch.bool, device=device)
    sl = []
    for size in spatial:
        s = int(size * ratio)
        if position == "center":
            start = (size - s) // 2
        else:
            start = int(torch.randint(0, size - s + 1, (1,), generator=generator))
        sl.append(slice(start, start + s))
    inside[tuple(sl)] = True
    return inside


def paste(outer: torch.Tensor, inner: torch.Tensor, inside: torch.Tensor) -> torch.Tensor:
    """``inner`` inside the cuboid, ``outer`` elsewhere. Images (N, C, X, Y, Z) or labels
    (N, X, Y, Z); ``inside`` (X, Y, Z) bool."""
    return torch.where(inside, inner, outer)


def swap_cuboids(a: torch.Tensor, b: torch.Tensor, inside: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Bidirectional copy-paste of the first ``m = min(len(a), len(b))`` pairs: ``a[i]`` gets
    ``b[i]``'s cuboid and ``b[i]`` gets ``a[i]``'s, for ``i < m``; the rest is returned unchanged.
    ``a`` (N_a, ...) and ``b`` (N_b, ...) with the same trailing shape ending in (X, Y, Z)
    (images, labels or probabilities); ``inside`` (X, Y, Z) bool."""
    m = min(a.shape[0], b.shape[0])
    return (torch.cat([paste(a[:m], b[:m], inside), a[m:]]),
            torch.cat([paste(b[:m], a[:m], inside), b[m:]]))
