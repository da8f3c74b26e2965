"""Cross Pseudo Supervision (Chen et al., CVPR 2021), after SSL4MIS's 3D code.

Two networks of the configured architecture, groups ``"net_a"`` and ``"net_b"``, initialised
differently (SSL4MIS: Kaiming-normal convolutions for the first, Xavier-normal for the second).
Each is trained with Dice + CE on the labelled patches plus ``w * CE(own logits, argmax of the
other's logits)``; the other's prediction is detached, so each cross term only trains its student.
``w = cps_weight * sigmoid_rampup(step, consistency_rampup)``. Prediction uses ``net_a``.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..losses import class_argmax, dice_ce_loss
from ..registry import METHODS
from .base import Batch, MethodContext
from .common import SemiMethod, SemiOptions, sigmoid_rampup

_CONVS = (nn.Conv3d, nn.ConvTranspose3d, nn.Conv2d, nn.ConvTranspose2d)


def init_convs(net: nn.Module, kind: str) -> nn.Module:
    """Re-initialise every convolution weight (``"kaiming"``: kaiming_normal_, ``"xavier"``:
    xavier_normal_), as SSL4MIS's ``kaiming_normal_init_weight`` / ``xavier_normal_init_weight``."""
    fn = nn.init.kaiming_normal_ if kind == "kaiming" else nn.init.xavier_normal_
    for m in net.modules():
        if isinstance(m, _CONVS):
            fn(m.weight)
    return net


def cross_pseudo_loss(logits: torch.Tensor, other_logits: torch.Tensor) -> torch.Tensor:
    """CE of ``logits`` (N, K, ...) against the hard pseudo-label ``argmax(other_logits)``; no
    gradient reaches ``other_logits``."""
    target = class_argmax(other_logits.detach())
    return F.cross_entropy(logits.float(), target)


@METHODS.register("cps")
class CPS(SemiMethod):
    """Options:
        unlabelled_batch: unlabelled patches per step (default ``train.batch_size``).
        cps_weight: maximal weight of the cross pseudo-supervision terms (default 0.1, SSL4MIS).
        consistency_rampup: iterations of the sigmoid ramp-up of the weight (default: the whole run).
        labelled_cps: apply the cross terms to the labelled patches too (default true, as the CPS
            paper; false: unlabelled only, as SSL4MIS).
        init: ``"kaiming_xavier"`` (default, SSL4MIS) or ``"default"`` (the network's own
            initialisation, two independent draws).

    Logged: ``loss/supervised_a``, ``loss/supervised_b``, ``loss/cps_a``, ``loss/cps_b``,
    ``weight/cps``, ``cps/agreement`` (share of voxels where the two argmaxes agree).
    """


    class Options(SemiOptions):
        cps_weight: float = Field(0.1, ge=0)
        labelled_cps: bool = True
        init: Literal["kaiming_xavier", "default"] = "kaiming_xavier"

    def __init__(self, ctx: MethodContext, **options):
        super().__init__(ctx, options)
        o = self.options
        self.cps_weight = o.cps_weight
        self.labelled_cps = o.labelled_cps
        net_a, net_b = self.build_net3d(), self.build_net3d()
        if o.init == "kaiming_xavier":
            init_convs(net_a, "kaiming")
            init_convs(net_b, "xavier")
        self.groups = nn.ModuleDict({"net_a": net_a, "net_b": net_b})

    def batch_plan(self, step: int) -> tuple[int, int]:
        return self.ctx.cfg.train.batch_size, self.n_u

    def training_step(self, batch: Batch, step: int):
        n_l = batch.image_l.shape[0]
        x = torch.cat([batch.image_l, batch.image_u]) if batch.image_u is not None else batch.image_l
        out_a, out_b = self.groups["net_a"](x), self.groups["net_b"](x)
        sup_a = dice_ce_loss(out_a[:n_l], batch.label_l)
        sup_b = dice_ce_loss(out_b[:n_l], batch.label_l)
        s = 0 if self.labelled_cps else n_l
        if s < x.shape[0]:
            cps_a = cross_pseudo_loss(out_a[s:], out_b[s:])
            cps_b = cross_pseudo_loss(out_b[s:], out_a[s:])
            agree = float((class_argmax(out_a[s:].detach()) == class_argmax(out_b[s:].detach())).float().mean())
        else:
            cps_a = cps_b = out_a.new_zeros((), dtype=torch.float32)
            agree = 1.0
        w = self.cps_weight * sigmoid_rampup(step, self.rampup)
        self.log.update({"loss/supervised_a": float(sup_a.detach()), "loss/supervised_b": float(sup_b.detach()),
                         "loss/cps_a": float(cps_a.detach()), "loss/cps_b": float(cps_b.detach()),
                         "weight/cps": w, "cps/agreement": agree})
        return {"net_a": sup_a + w * cps_a, "net_b": sup_b + w * cps_b}

    def predictor(self) -> nn.Module:
        return self.groups["net_a"]
