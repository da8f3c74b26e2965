"""Labelled-only training of the 3D network: Dice + cross-entropy."""
from __future__ import annotations

from torch import nn

from ..losses import dice_ce_loss
from ..registry import METHODS
from .base import Batch, Method, MethodContext, method_options


@METHODS.register("supervised")
class Supervised(Method):
    """Options: none. Uses ``train.batch_size`` labelled patches per step."""

    def __init__(self, ctx: MethodContext, **options):
        super().__init__(ctx)
        method_options("supervised", options, {})
        self.groups = nn.ModuleDict({"net": self.build_net3d()})

    def training_step(self, batch: Batch, step: int):
        return {"net": dice_ce_loss(self.groups["net"](batch.image_l), batch.label_l)}

    def predictor(self) -> nn.Module:
        return self.groups["net"]
