"""URPC: Uncertainty-Rectified Pyramid Consistency (Luo et al., MICCAI 2021 / MedIA 2022), after
SSL4MIS's ``train_uncertainty_rectified_pyramid_consistency_3D.py``.

One 3D network with deep supervision (group ``"net"``; ``deep_supervision: true`` is forced on
the configured network, which must support it: ``unet3d`` or MONAI's ``dynunet``). In training mode
it gives one logit map per decoder level; each is upsampled to the patch size (trilinear, as the
``UnetDsv3`` heads of SSL4MIS's ``unet_3D_dv_semi``), giving the pyramid ``P_1 .. P_S``
(softmax probabilities, ``S = levels - 1`` for ``unet3d``).

Labelled patches: Dice + CE on every level, averaged over the levels.

Unlabelled patches: with ``P = mean_s P_s`` and, per voxel, ``D_s = KL(P || P_s) = sum_k P log(P / P_s)``
(SSL4MIS's ``KLDivLoss(log P_s, P)`` summed over classes), the rectified consistency of level s is

    mean((P - P_s)^2 * exp(-D_s)) / (mean(exp(-D_s)) + 1e-8) + mean(D_s)

(the ``exp(-D)``-weighted squared distance plus the minimisation of D — the SSL4MIS variant), and
the consistency loss is its mean over levels, weighted by ``consistency * sigmoid_rampup``. As in
SSL4MIS, ``P`` is not detached. Prediction uses the full-resolution output (in eval mode the
network returns it alone); saved models record ``deep_supervision: true`` so they rebuild exactly.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..errors import InputError
from ..losses import dice_ce_loss
from ..registry import METHODS
from .base import Batch, MethodContext
from .common import SemiMethod, SemiOptions, predictor_spec_with, sigmoid_rampup


def pyramid_logits(out, spatial: tuple[int, ...]) -> list[torch.Tensor]:
    """The deep-supervision outputs of a network as a list of (N, K, X, Y, Z) logits at full size.

    Accepts a list/tuple of maps (``unet3d``, full resolution first) or a stacked tensor
    (N, S, K, X, Y, Z) (MONAI ``DynUNet``); a plain (N, K, X, Y, Z) tensor gives a one-level list.
    """
    if isinstance(out, (list, tuple)):
        maps = list(out)
    elif out.ndim == 6:
        maps = list(out.unbind(1))
    else:
        maps = [out]
    return [m if tuple(m.shape[2:]) == tuple(spatial) else
            F.interpolate(m, size=tuple(spatial), mode="trilinear", align_corners=False) for m in maps]


def rectified_pyramid_consistency(logits: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """URPC's uncertainty-rectified consistency over a pyramid of (N, K, X, Y, Z) logits.

    Returns:
        (loss averaged over levels, per-level KL maps ``D_s`` (N, 1, X, Y, Z), per-level weights
        ``exp(-D_s)``).
    """
    logp = [torch.log_softmax(x.float(), 1) for x in logits]
    probs = [lp.exp() for lp in logp]
    mean = torch.stack(probs).mean(0)
    losses, kls, weights = [], [], []
    for p, lp in zip(probs, logp):
        kl = (torch.xlogy(mean, mean) - mean * lp).sum(1, keepdim=True)
        w = torch.exp(-kl)
        dist = (mean - p) ** 2
        losses.append((dist * w).mean() / (w.mean() + 1e-8) + kl.mean())
        kls.append(kl)
        weights.append(w)
    return torch.stack(losses).mean(), kls, weights


@METHODS.register("urpc")
class URPC(SemiMethod):
    """Options:
        unlabelled_batch: unlabelled patches per step (default ``train.batch_size``).
        consistency: maximal consistency weight (default 0.1, SSL4MIS).
        consistency_rampup: iterations of the sigmoid ramp-up of the weight (default: the whole run).

    Logged: ``loss/supervised`` (mean over levels), ``loss/consistency``, ``weight/consistency``,
    ``urpc/kl`` (mean KL divergence of the levels from their average).
    """


    class Options(SemiOptions):
        consistency: float = Field(0.1, ge=0)

    def __init__(self, ctx: MethodContext, **options):
        super().__init__(ctx, options)
        self.consistency = self.options.consistency
        spec = ctx.cfg.model.net3d
        try:
            net = self.build_net3d(deep_supervision=True)
        except InputError as e:
            if "deep_supervision" not in str(e):
                raise
            raise InputError("model.net3d", f"urpc needs a 3D network with deep supervision (unet3d or dynunet); "
                                            f"{spec.name!r} has no deep_supervision option") from None
        if spec.name == "unet3d" and len(net.channels) < 3:
            raise InputError("model.net3d.options.levels", "urpc needs at least 2 pyramid levels: unet3d levels >= 3")
        self.groups = nn.ModuleDict({"net": net})

    def batch_plan(self, step: int) -> tuple[int, int]:
        return self.ctx.cfg.train.batch_size, self.n_u

    def training_step(self, batch: Batch, step: int):
        n_l = batch.image_l.shape[0]
        x = torch.cat([batch.image_l, batch.image_u]) if batch.image_u is not None else batch.image_l
        levels = pyramid_logits(self.groups["net"](x), x.shape[2:])
        if len(levels) < 2:
            raise RuntimeError("urpc: the network returned a single output level in training mode")
        sup = torch.stack([dice_ce_loss(lv[:n_l], batch.label_l) for lv in levels]).mean()
        if x.shape[0] > n_l:
            cons, kls, _ = rectified_pyramid_consistency([lv[n_l:] for lv in levels])
            kl = float(torch.stack([k.mean() for k in kls]).mean().detach())
        else:
            cons, kl = sup.new_zeros(()), 0.0
        w = self.consistency * sigmoid_rampup(step, self.rampup)
        self.log.update({"loss/supervised": float(sup.detach()), "loss/consistency": float(cons.detach()),
                         "weight/consistency": w, "urpc/kl": kl})
        return {"net": sup + w * cons}

    def predictor(self) -> nn.Module:
        return self.groups["net"]

    def predictor_spec(self):
        """The network spec saved with the model: the configured one with ``deep_supervision: true``."""
        return predictor_spec_with(self.ctx, {"deep_supervision": True})
