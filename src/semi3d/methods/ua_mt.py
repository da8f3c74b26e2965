"""Uncertainty-aware Mean Teacher (Yu et al., MICCAI 2019), after the UA-MT left-atrium code.

Mean Teacher (see :mod:`semi3d.methods.mean_teacher`) whose consistency is kept only where the
teacher is certain. Per step the teacher makes ``mc_passes`` (T = 8) stochastic passes over the
consistency patches, each with fresh input noise ``clamp(randn * 0.1, -0.2, 0.2)`` and, when the
network has dropout, Monte-Carlo dropout (the teacher runs in training mode, as in the UA-MT code);
the uncertainty is the predictive entropy ``u = -sum_k p_k log p_k`` of the mean softmax ``p``
(``(N, 1, X, Y, Z)``, in nats, between 0 and ``ln K``). The consistency is

    sum(mask * (softmax_student - softmax_teacher)^2) / (K * sum(mask) + 1e-16),  mask = u < threshold

with ``threshold = (0.75 + 0.25 * sigmoid_rampup(step, train.iterations)) * ln K``: 0.75 ln 2 to
ln 2 in the binary case of the paper. The teacher target itself is a separate single noisy pass.

MC dropout: UA-MT's V-Net has ``has_dropout=True``. This method therefore sets the dropout option
of the configured network unless ``model.net3d.options`` sets it: ``vnet`` gets ``has_dropout:
true`` (``Dropout3d(0.5)`` on the bottleneck and the last decoder features, as UA-MT) and
``unet3d`` gets ``dropout: mc_dropout`` (default 0.3, ``Dropout3d`` on the bottleneck and every
decoder level). The student shares the architecture, so it trains with dropout too, as in UA-MT.
Other networks get no dropout: their uncertainty comes from the input noise alone.
"""
from __future__ import annotations

import math

import torch
from pydantic import Field

from ..registry import METHODS
from .common import sigmoid_rampup, softmax32, teacher_noise
from .mean_teacher import MeanTeacher


def predictive_entropy(probs: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``-sum_k p_k log(p_k + eps)`` of (N, K, ...) probabilities -> (N, 1, ...), as UA-MT."""
    return -(probs * torch.log(probs + eps)).sum(1, keepdim=True)


def uncertainty_threshold(step: int, total_iterations: int, num_classes: int) -> float:
    """``(0.75 + 0.25 * sigmoid_rampup(step, total)) * ln K``."""
    return (0.75 + 0.25 * sigmoid_rampup(step, total_iterations)) * math.log(num_classes)


def masked_consistency(student_probs: torch.Tensor, teacher_probs: torch.Tensor,
                       mask: torch.Tensor) -> torch.Tensor:
    """UA-MT's ``sum(mask * (s - t)^2) / (K * sum(mask) + 1e-16)``; mask (N, 1, ...) in {0, 1}."""
    k = student_probs.shape[1]
    dist = (student_probs - teacher_probs) ** 2
    return (mask * dist).sum() / (k * mask.sum() + 1e-16)


@METHODS.register("ua_mt")
class UAMT(MeanTeacher):
    """Options: those of ``mean_teacher`` plus
        mc_passes: stochastic teacher passes T for the uncertainty (default 8).
        mc_dropout: dropout set on a ``unet3d`` (default 0.3; ``vnet`` gets ``has_dropout``; 0 or a
            dropout option in ``model.net3d.options`` leaves the network as configured).

    Logged: as ``mean_teacher`` plus ``uamt/threshold`` and ``uamt/certain_fraction`` (the share of
    voxels kept by the mask).
    """

    class Options(MeanTeacher.Options):
        mc_passes: int = Field(8, ge=1)
        mc_dropout: float = Field(0.3, ge=0, le=0.95)

    def network_override(self, options: "UAMT.Options") -> dict:
        self.mc_passes, p = options.mc_passes, options.mc_dropout
        spec = self.ctx.cfg.model.net3d
        if p > 0 and spec.name == "unet3d" and "dropout" not in spec.options:
            return {"dropout": p}
        if p > 0 and spec.name == "vnet" and "has_dropout" not in spec.options:
            return {"has_dropout": True}
        return {}

    def threshold(self, step: int) -> float:
        return uncertainty_threshold(step, self.ctx.total_iterations, self.num_classes)

    @torch.inference_mode()
    def uncertainty(self, x: torch.Tensor) -> torch.Tensor:
        """Predictive entropy (N, 1, X, Y, Z) of the mean teacher softmax over ``mc_passes`` noisy passes."""
        mean = torch.zeros((), device=x.device)
        for _ in range(self.mc_passes):
            mean = mean + softmax32(self.teacher(teacher_noise(x, self.noise_std, self.noise_clip)))
        return predictive_entropy(mean / self.mc_passes)

    def consistency_loss(self, student_logits: torch.Tensor, x: torch.Tensor, step: int) -> torch.Tensor:
        with torch.inference_mode():
            target = softmax32(self.teacher(teacher_noise(x, self.noise_std, self.noise_clip)))
            thr = self.threshold(step)
            mask = (self.uncertainty(x) < thr).float()
        target, mask = target.clone(), mask.clone()  # normal tensors: autograd may save them
        self.log.update({"uamt/threshold": thr, "uamt/certain_fraction": float(mask.mean())})
        return masked_consistency(softmax32(student_logits), target, mask)
