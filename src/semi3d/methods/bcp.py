"""Bidirectional Copy-Paste (Bai et al., CVPR 2023), after BCP's 3D left-atrium code
(``LA_BCP_train.py`` and ``utils/BCP_utils.py``), generalised to K classes.

Stage 1 (``pretrain_iterations``): labelled-only training of the student (group ``"net"``) on
copy-pasted labelled pairs: a cuboid of patch ``b`` pasted into patch ``a``, labels mixed alike,
Dice + CE.

Stage 2: an EMA teacher, reset to the student's weights at the end of stage 1, gives hard
pseudo-labels for the unlabelled patches (argmax of its softmax — BCP's ``prob >= 0.5`` in the
binary case — then, by default, only the largest connected component of each class is kept, as
BCP's ``LargestCC`` with ``nms=1``). The student is trained on two mixed images per pair:

    mix_l = labelled a outside the cuboid, unlabelled a inside  (targets: label a / pseudo-label a)
    mix_u = unlabelled b outside the cuboid, labelled b inside  (targets: pseudo-label b / label b)

with Dice + CE computed separately over the cuboid and its complement; the pseudo-labelled part
of each image is weighted by ``alpha`` (0.5), the labelled part by 1. After every stage-2 step
the teacher is updated as ``teacher = d * teacher + (1 - d) * student`` with a fixed ``d =
ema_decay`` (BCP's ``update_ema_variables(model, ema_model, 0.99)``). Prediction uses the student.

The cuboid has ``int(S * mask_ratio)`` voxels along each axis of size ``S`` (``mask_ratio`` 2/3);
one cuboid per step is shared by the batch, as in BCP. Its position: ``cuboid: random`` (default)
draws a uniformly random position, which is what BCP's 3D ``context_mask`` does; ``cuboid:
center`` centres it (start ``(S - s) // 2``). Labelled patch ``i`` of the first half of the batch is
paired with unlabelled patch ``i`` for ``mix_l``; the second half makes ``mix_u`` (BCP's
``a``/``b`` halves; with an odd batch the middle pair serves both directions, with one patch per
step the single pair does, and stage 1 then has nothing to mix).

Differences from BCP's scripts: one run with a shared optimiser and lr schedule for both stages
(BCP starts a fresh SGD at the switch and picks the best stage-1 checkpoint by validation);
Dice + CE as ``dice_ce_loss`` sums them (BCP averages), so the scale matches the other methods.
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from ..errors import InputError
from ..data.postprocess import largest_component_per_class
from ..losses import class_argmax, dice_ce_loss
from ..registry import METHODS
from .base import Batch, Method, MethodContext, MethodOptions, method_options
from .common import cuboid_mask, ema_update, make_teacher, paste, unlabelled_batch


def _halves(n: int) -> tuple[slice, slice]:
    """BCP's ``a`` / ``b`` halves of a batch of ``n``, of equal size ``ceil(n / 2)`` (they share the
    middle patch when ``n`` is odd, the single patch when ``n == 1``)."""
    h = (n + 1) // 2
    return slice(0, h), slice(n - h, n)


@METHODS.register("bcp")
class BCP(Method):
    """Options:
        unlabelled_batch: unlabelled patches per step; must equal ``train.batch_size`` (each
            labelled patch is paired with an unlabelled one). Default ``train.batch_size``.
        pretrain_iterations: stage-1 iterations (default: 2/17 of ``train.iterations``, BCP's
            2,000 pre-training + 15,000 self-training ratio).
        alpha: weight of the pseudo-labelled part of each mixed image (default 0.5, BCP's u_weight).
        mask_ratio: cuboid size per axis as a fraction of the patch (default 2/3).
        cuboid: ``"random"`` (default, as BCP's code) or ``"center"``.
        ema_decay: teacher EMA decay in stage 2 (default 0.99).
        largest_component: keep the largest connected component of each pseudo-label class
            (default true, as BCP's LA / pancreas code).

    Logged: ``loss/supervised`` (stage 2: mean of the two ground-truth parts), ``loss/consistency``
    (mean of the two pseudo-labelled parts, unweighted), ``weight/consistency`` (``alpha``, 0 in
    stage 1), ``bcp/stage``. The optimised loss is BCP's sum over both mixed images.
    """

    needs_unlabelled = True

    class Options(MethodOptions):
        unlabelled_batch: int | None = Field(None, ge=1)
        pretrain_iterations: int | None = Field(None, ge=0)
        alpha: float = Field(0.5, ge=0)
        mask_ratio: float = Field(2 / 3, gt=0, le=1)
        cuboid: Literal["random", "center"] = "random"
        ema_decay: float = Field(0.99, ge=0, le=1)
        largest_component: bool = True

    def __init__(self, ctx: MethodContext, **options):
        super().__init__(ctx)
        name = ctx.cfg.method.name
        o = method_options(name, options, self.Options)
        self.n_u = unlabelled_batch(ctx, o.unlabelled_batch)
        if self.n_u != ctx.cfg.train.batch_size:
            raise InputError(f"method.options.unlabelled_batch ({name})",
                             f"must equal train.batch_size ({ctx.cfg.train.batch_size}): BCP pairs each labelled "
                             f"patch with an unlabelled one, got {self.n_u}")
        total = ctx.total_iterations
        pre = o.pretrain_iterations
        if pre is not None and pre > total:
            raise InputError(f"method.options.pretrain_iterations ({name})",
                             f"must be <= train.iterations ({total}), got {pre}")
        self.pretrain = round(total * 2 / 17) if pre is None else pre
        self.alpha, self.mask_ratio, self.cuboid = o.alpha, o.mask_ratio, o.cuboid
        self.ema_decay, self.largest_component = o.ema_decay, o.largest_component
        self.needs_unlabelled = self.pretrain < total  # stage 2 takes place
        self.groups = nn.ModuleDict({"net": self.build_net3d()})
        self.teacher = make_teacher(self.groups["net"])

    def batch_plan(self, step: int) -> tuple[int, int]:
        return self.ctx.cfg.train.batch_size, (0 if step < self.pretrain else self.n_u)

    def cuboid_mask(self, spatial, device) -> torch.Tensor:
        return cuboid_mask(tuple(spatial), self.mask_ratio, self.cuboid, device=device)

    def pseudo_labels(self, image_u: torch.Tensor) -> torch.Tensor:
        """Teacher hard labels (N, X, Y, Z) for unlabelled patches (teacher under inference mode)."""
        with torch.inference_mode():
            plab = class_argmax(self.teacher(image_u))
            if self.largest_component:
                plab = largest_component_per_class(plab, self.num_classes)
        return plab.clone()

    def training_step(self, batch: Batch, step: int):
        net = self.groups["net"]
        img_l, lab_l = batch.image_l, batch.label_l
        a, b = _halves(img_l.shape[0])
        inside = self.cuboid_mask(img_l.shape[2:], img_l.device)
        if step < self.pretrain:
            out = net(paste(img_l[a], img_l[b], inside))
            sup = dice_ce_loss(out, paste(lab_l[a], lab_l[b], inside))
            self.log.update({"loss/supervised": float(sup.detach()), "loss/consistency": 0.0,
                             "weight/consistency": 0.0, "bcp/stage": 1})
            return {"net": sup}
        img_u = batch.image_u
        if img_u is None or img_u.shape[0] != img_l.shape[0]:
            raise RuntimeError("bcp needs as many unlabelled as labelled patches per step")
        plab = self.pseudo_labels(img_u)
        outside = ~inside
        out_l = net(paste(img_l[a], img_u[a], inside))  # unlabelled cuboid in a labelled patch
        tgt_l = paste(lab_l[a], plab[a], inside)
        out_u = net(paste(img_u[b], img_l[b], inside))  # labelled cuboid in an unlabelled patch
        tgt_u = paste(plab[b], lab_l[b], inside)
        gt = dice_ce_loss(out_l, tgt_l, region=outside) + dice_ce_loss(out_u, tgt_u, region=inside)
        ps = dice_ce_loss(out_l, tgt_l, region=inside) + dice_ce_loss(out_u, tgt_u, region=outside)
        # logged as means of the two images' terms, on the scale of one Dice + CE (as stage 1)
        self.log.update({"loss/supervised": float(gt.detach()) / 2, "loss/consistency": float(ps.detach()) / 2,
                         "weight/consistency": self.alpha, "bcp/stage": 2})
        return {"net": gt + self.alpha * ps}

    def after_step(self, step: int) -> None:
        if step + 1 == self.pretrain:  # end of stage 1: the teacher starts from the pre-trained student
            self.teacher.load_state_dict(self.groups["net"].state_dict())
        elif step >= self.pretrain:
            ema_update(self.teacher, self.groups["net"], self.ema_decay)

    def predictor(self) -> nn.Module:
        return self.groups["net"]
