"""Labelled-only training of the 3D network: Dice + cross-entropy."""
from __future__ import annotations

from torch import nn

from ..data.strong_augment import StrongAugment, strong_augment
from ..losses import dice_ce_loss
from ..registry import METHODS
from .base import Batch, Method, MethodContext, MethodOptions, method_options


@METHODS.register("supervised")
class Supervised(Method):
    """Uses ``train.batch_size`` labelled patches per step.

    Options:
        strong_augment: false (default), true or a mapping of
            :class:`~semi3d.data.strong_augment.StrongAugment` fields: A&D's strong augmentation on
            top of the trainer's, for a labelled-only run comparable with ``ad`` (leave
            ``data.augment`` at no-op then, as the A&D configs do).
    """

    class Options(MethodOptions):
        strong_augment: bool | dict = False

    def __init__(self, ctx: MethodContext, **options):
        super().__init__(ctx)
        o = method_options("supervised", options, self.Options)
        self.augment = StrongAugment.from_option(o.strong_augment)
        self.groups = nn.ModuleDict({"net": self.build_net3d()})

    def training_step(self, batch: Batch, step: int):
        image, label = batch.image_l, batch.label_l
        if self.augment is not None:
            image, label = strong_augment(image, label, self.augment)
        return {"net": dice_ce_loss(self.groups["net"](image), label)}

    def predictor(self) -> nn.Module:
        return self.groups["net"]
