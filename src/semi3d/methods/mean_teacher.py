"""Mean Teacher (Tarvainen & Valpola, NeurIPS 2017) as in the 3D code of UA-MT / SSL4MIS.

The student (group ``"net"``) is trained with Dice + CE on labelled patches plus a consistency
loss: the mean squared difference between the student's softmax and the softmax of an EMA teacher
fed the same patches with clamped Gaussian noise (``clamp(randn * 0.1, -0.2, 0.2)``). The teacher
is a deep copy of the student, not optimised, updated after every step as
``teacher = d * teacher + (1 - d) * student`` with ``d = min(1 - 1 / (step + 1), ema_decay)``.
It is a submodule, so checkpoints (and resume) include it. Prediction uses the student, as in
those repositories.
"""
from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from ..losses import dice_ce_loss
from ..registry import METHODS
from .base import Batch, MethodContext
from .common import (SemiMethod, SemiOptions, ema_decay_at, ema_update, make_teacher, predictor_spec_with,
                     sigmoid_rampup, softmax32, teacher_noise)


@METHODS.register("mean_teacher")
class MeanTeacher(SemiMethod):
    """Options:
        unlabelled_batch: unlabelled patches per step (default ``train.batch_size``).
        consistency: maximal consistency weight (default 0.1, as UA-MT / SSL4MIS).
        consistency_rampup: iterations of the sigmoid ramp-up of the weight (default: the whole run).
        ema_decay: teacher EMA decay (default 0.99).
        noise_std, noise_clip: teacher input noise ``clamp(randn * std, -clip, clip)`` (0.1, 0.2).
        labelled_consistency: apply the consistency to the labelled patches too (default true, as
            the Mean Teacher and UA-MT papers; false gives the unlabelled-only variant of the code).

    Logged: ``loss/supervised``, ``loss/consistency``, ``weight/consistency``, ``ema/decay``.
    """


    class Options(SemiOptions):
        consistency: float = Field(0.1, ge=0)
        ema_decay: float = Field(0.99, ge=0, le=1)
        noise_std: float = Field(0.1, ge=0)
        noise_clip: float = Field(0.2, ge=0)
        labelled_consistency: bool = True

    def __init__(self, ctx: MethodContext, **options):
        super().__init__(ctx, options)
        o = self.options
        self.consistency = o.consistency
        self.ema_decay = o.ema_decay
        self.noise_std, self.noise_clip = o.noise_std, o.noise_clip
        self.labelled_consistency = o.labelled_consistency
        self.net_override = self.network_override(o)
        self.groups = nn.ModuleDict({"net": self.build_net3d(**self.net_override)})
        self.teacher = make_teacher(self.groups["net"])

    # hooks for subclasses -------------------------------------------------------------------
    def network_override(self, options: "MeanTeacher.Options") -> dict:
        """Options forced on the 3D network (none for Mean Teacher)."""
        return {}

    def consistency_loss(self, student_logits: torch.Tensor, x: torch.Tensor, step: int) -> torch.Tensor:
        """MSE between student and noisy-teacher softmax, averaged over all elements."""
        with torch.inference_mode():
            target = softmax32(self.teacher(teacher_noise(x, self.noise_std, self.noise_clip)))
        return ((softmax32(student_logits) - target.clone()) ** 2).mean()  # clone: a normal tensor again

    # method interface -----------------------------------------------------------------------
    def batch_plan(self, step: int) -> tuple[int, int]:
        return self.ctx.cfg.train.batch_size, self.n_u

    def consistency_weight(self, step: int) -> float:
        return self.consistency * sigmoid_rampup(step, self.rampup)

    def training_step(self, batch: Batch, step: int):
        n_l = batch.image_l.shape[0]
        x = torch.cat([batch.image_l, batch.image_u]) if batch.image_u is not None else batch.image_l
        out = self.groups["net"](x)
        sup = dice_ce_loss(out[:n_l], batch.label_l)
        start = 0 if self.labelled_consistency else n_l
        if start < x.shape[0]:
            cons = self.consistency_loss(out[start:], x[start:], step)
        else:
            cons = out.new_zeros((), dtype=torch.float32)
        w = self.consistency_weight(step)
        self.log.update({"loss/supervised": float(sup.detach()), "loss/consistency": float(cons.detach()),
                         "weight/consistency": w})
        return {"net": sup + w * cons}

    def after_step(self, step: int) -> None:
        d = ema_decay_at(step, self.ema_decay)
        ema_update(self.teacher, self.groups["net"], d)
        self.log["ema/decay"] = d

    def predictor(self) -> nn.Module:
        return self.groups["net"]

    def predictor_spec(self):
        """The network spec saved with the model (with the options this method forced)."""
        return predictor_spec_with(self.ctx, self.net_override)
