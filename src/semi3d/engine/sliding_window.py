"""Sliding-window prediction of a whole volume, shared by validation during training, the
trainer's services to methods (M&N's pseudo-mask passes) and :mod:`semi3d.inference.predictor`."""
from __future__ import annotations

import torch
from torch import nn

from ..config import InferenceConfig
from ..models.nets3d import main_output
from .precision import autocast, fp32_small_convs

__all__ = ["Mirrored", "predict_probs"]


class Mirrored(nn.Module):
    """Mirror test-time augmentation (nnU-Net's): the logits of ``net`` averaged over the input
    flipped along every subset of ``axes`` (spatial axes 0 = X, 1 = Y, 2 = Z of (N, C, X, Y, Z)),
    each output flipped back; ``2 ** len(axes)`` forward passes. Deep-supervision outputs count by
    their first map. ``divisor`` is the network's."""

    def __init__(self, net: nn.Module, axes):
        super().__init__()
        from itertools import combinations

        self.net = net
        dims = [int(a) + 2 for a in axes]
        self.flips = [list(c) for r in range(len(dims) + 1) for c in combinations(dims, r)]
        self.divisor = getattr(net, "divisor", (1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = None
        for dims in self.flips:
            out = self.net(torch.flip(x, dims) if dims else x)
            out = main_output(out).float()
            out = torch.flip(out, dims) if dims else out
            total = out if total is None else total + out
        return total / len(self.flips)


@torch.inference_mode()
def predict_probs(net: nn.Module, image: torch.Tensor, patch_size, cfg: InferenceConfig,
                  device: torch.device, precision: str = "fp32") -> torch.Tensor:
    """Softmax probabilities (K, X, Y, Z) float32 on CPU for a preprocessed image (C, X, Y, Z).

    Uses MONAI ``sliding_window_inference`` with windows of ``patch_size`` voxels, ``cfg.overlap``
    and ``cfg.mode`` blending, each window through :class:`Mirrored` when ``cfg.mirror_axes`` is set.
    A volume smaller than a window is first padded as in training
    (:func:`semi3d.data.patches.pad_image`: centred, each channel's minimum) and cropped back.
    Under bf16 / fp16 the convolutions of tiny levels run in float32, as in training
    (:func:`semi3d.engine.precision.fp32_small_convs`, hooks added to ``net`` once).
    """
    from monai.inferers import sliding_window_inference

    from ..data.patches import pad_image

    padded, crop = pad_image(image.to(torch.float32), patch_size)
    x = padded[None].to(device)
    if precision != "fp32":
        fp32_small_convs(net)
    if cfg.mirror_axes:
        net = Mirrored(net, cfg.mirror_axes)
    with autocast(device, precision):
        logits = sliding_window_inference(x, tuple(patch_size), cfg.sw_batch_size, net, overlap=cfg.overlap,
                                          mode=cfg.mode, sw_device=device, device=device)
    return torch.softmax(logits.float(), 1)[0][crop].cpu()
