"""Pure-PyTorch ImageNet encoders for the 2D segmentation networks of :mod:`semi3d.models.seg2d`.

Each encoder maps an ``(N, 3, H, W)`` image to a list of five feature maps at strides 2, 4, 8, 16
and 32 (channels in ``encoder.out_channels``), and has exactly the ``state_dict`` keys of its
reference ImageNet checkpoint minus the classifier, so :func:`load_pretrained` loads it strictly.
Nothing here registers a network or downloads anything.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from ...errors import InputError
from .efficientnet_lite import EfficientNetLite0Encoder, package_weights_path
from .mobilenet_v2 import MobileNetV2Encoder

__all__ = ["EfficientNetLite0Encoder", "MobileNetV2Encoder", "load_pretrained", "package_weights_path"]


def _examples(keys: list[str], n: int = 3) -> str:
    return ", ".join(keys[:n]) + (", ..." if len(keys) > n else "") if keys else "none"


def load_pretrained(encoder: nn.Module, path: str | Path) -> nn.Module:
    """Load an ImageNet checkpoint into ``encoder`` strictly, dropping only the classifier keys.

    Args:
        encoder: an encoder of this package (it names its ``arch`` and ``classifier_prefixes``).
        path: a ``.pth`` file holding a state dict (optionally under ``"state_dict"`` or ``"model"``),
            read with ``torch.load(..., weights_only=True)``.

    Returns:
        ``encoder``, with every parameter and BatchNorm buffer replaced by the file's tensor.

    Raises:
        InputError: ``(path, "not found")`` for a missing file; ``(path, "not a <arch> state dict:
            ...")`` when the file's keys or shapes differ from the encoder's (another architecture).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(path, "not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle / zip errors of all kinds
        raise InputError(path, f"cannot be read as a PyTorch state dict ({type(exc).__name__}: {exc})") from None
    for wrapper in ("state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(wrapper), Mapping):
            state = state[wrapper]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(path, f"not a {encoder.arch} state dict: it does not map names to tensors")
    state = {k: v for k, v in state.items() if not k.startswith(tuple(encoder.classifier_prefixes))}
    own = encoder.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
             if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong:
        problem = (f"not a {encoder.arch} state dict: {len(missing)} missing keys e.g. {_examples(missing)}; "
                   f"{len(unexpected)} unexpected e.g. {_examples(unexpected)}")
        if wrong:
            problem += f"; {len(wrong)} shape mismatches (file vs model) e.g. {_examples(wrong)}"
        raise InputError(path, problem)
    encoder.load_state_dict(state, strict=True)
    return encoder
