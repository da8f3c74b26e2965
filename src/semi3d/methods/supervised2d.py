"""The 2D slice model alone: M&N's ``net2d`` trained on the labelled data only, used as a 3D segmenter.

The "2D model alone" baseline of the M&N comparison. The network is ``model.net2d``, built exactly
as M&N builds its 2D model (:meth:`Method.build_net2d`, the same ImageNet / natural-image
pretraining options), and its loss is M&N's loss for the 2D model on labelled data (its stage-1
loss, :func:`semi3d.methods.mn.soft_target_loss` against the one-hot label): ``w_dice * soft Dice``
(softmax, squared denominator, background included, over the whole slice batch) ``+ w_kl *
KL(one-hot || softmax)``, not Dice + CE. Each step the trainer's ``train.batch_size`` labelled 3D
patches (sampled and augmented as for every method) are cut into slices along each axis of
``axis`` (:func:`semi3d.models.slicing.volume_to_slices`); the loss is computed on the slices and
averaged over the axes. No unlabelled data.

Inference (validation, ``evaluate``, ``predict``, ``export``): :meth:`predictor` is
:class:`semi3d.models.slicing.SliceWise2D` around ``net2d`` with the same axes, a 3D module run by
the same sliding window over ``data.patch_size`` as every 3D model. One axis: the stacked 2D logits;
several: the log of the mean of the per-axis probabilities. It is saved as the 3D network
``slicewise2d`` with options ``{net2d: model.net2d, axes}``, which rebuilds it.

Options (``method.options``), defaults in brackets:

- ``axis`` [2]: the spatial axis (0 = X, 1 = Y, 2 = Z, M&N's default ``views``) or a list of
  distinct axes to train on and to fuse at inference (like M&N's ``views``).
- ``loss_weights`` [[1, 1]]: weights of the soft Dice and KL terms (M&N's ``loss_weights``).
- ``slices_per_step`` [0 = all]: as M&N's option, the loss uses this many randomly drawn slices
  of the batch per axis (a CPU / memory budget; prediction always sees every slice).
- ``loss`` ["mn"]: ``"mn"`` is the loss above; ``"dice_ce"`` is :func:`semi3d.losses.dice_ce_loss`
  averaged over the heads of a deep-supervised 2D network (``forward_heads``, e.g. U-Net++; one
  head otherwise): the small model of knowledge mining (:mod:`semi3d.mining`), trained on
  patches one slice thick (``data.patch_size`` ``(H, W, 1)``, ``axis`` 2).

Logged per step: ``dice/net2d`` and ``kl/net2d`` (loss ``"mn"``).
"""
from __future__ import annotations

import torch
from typing import Literal

from pydantic import Field
from torch import nn

from ..config import NetSpec
from ..errors import InputError
from ..losses import dice_ce_loss, one_hot
from ..models.slicing import SliceWise2D, spatial_axes, volume_to_slices
from ..registry import METHODS
from .base import Batch, Method, MethodContext, MethodOptions, method_options
from .common import slicewise_spec
from .mn import LossWeights, soft_target_loss


@METHODS.register("supervised2d")
class Supervised2D(Method):
    """Labelled-only training of the 2D slice model (see the module docstring for the options)."""

    class Options(MethodOptions):
        axis: int | list[int] = 2
        loss_weights: LossWeights = [1.0, 1.0]
        slices_per_step: int = Field(0, ge=0)
        loss: Literal["mn", "dice_ce"] = "mn"

    def __init__(self, ctx: MethodContext, **options):
        super().__init__(ctx)
        o = method_options("supervised2d", options, self.Options)
        try:
            self.axes = spatial_axes(o.axis)
        except ValueError as e:
            raise InputError("method.options.axis (supervised2d)", str(e)) from None
        self.w_dice, self.w_kl = o.loss_weights
        self.slices_per_step, self.loss = o.slices_per_step, o.loss
        if ctx.cfg.model.net2d is None:
            raise InputError("model.net2d", "method 'supervised2d' trains a 2D slice network: set model.net2d "
                                            "(e.g. {name: unet2d_efficientnet_lite0, options: {pretrained: package}})")
        net2d = self.build_net2d()
        if ctx.channels_last:  # 2D convolutions NHWC too, as M&N (the trainer converts only 3D ones)
            net2d.to(memory_format=torch.channels_last)
        self.groups = nn.ModuleDict({"net2d": net2d})

    def training_step(self, batch: Batch, step: int) -> dict[str, torch.Tensor]:
        net = self.groups["net2d"]
        y = one_hot(batch.label_l, self.num_classes).to(batch.image_l.device) if self.loss == "mn" else \
            batch.label_l[:, None]  # (N, 1, X, Y, Z): sliced like the image, a channel of class indices
        parts = []
        for a in self.axes:
            xs, ts = volume_to_slices(batch.image_l, a), volume_to_slices(y, a)
            if 0 < self.slices_per_step < xs.shape[0]:
                idx = torch.randperm(xs.shape[0], device=xs.device)[: self.slices_per_step]
                xs, ts = xs[idx], ts[idx]
            if self.loss == "dice_ce":
                heads = net.forward_heads(xs) if hasattr(net, "forward_heads") else [net(xs)]
                parts.append(sum(dice_ce_loss(h, ts[:, 0]) for h in heads) / len(heads))
            else:
                parts.append(soft_target_loss(net(xs), ts, self.w_dice, self.w_kl))
        if self.loss == "dice_ce":
            return {"net2d": sum(parts) / len(parts)}
        loss, dice, kl = (sum(p[i] for p in parts) / len(parts) for i in range(3))
        self.log = {"dice/net2d": float(dice.detach()), "kl/net2d": float(kl.detach())}
        return {"net2d": loss}

    def predictor(self) -> nn.Module:
        """A fresh :class:`SliceWise2D` sharing ``net2d`` (not a submodule of the method, so the
        method's state dict holds ``net2d`` once), in ``net2d``'s train/eval mode."""
        return SliceWise2D(self.groups["net2d"], self.axes).train(self.groups["net2d"].training)

    def predictor_spec(self) -> NetSpec:
        """The saved model: ``slicewise2d`` around ``model.net2d`` with the trained axes."""
        return slicewise_spec(self.ctx, self.axes)
