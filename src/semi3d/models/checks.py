"""The option and input checks every network builder shares (2D and 3D), so a bad option reads
the same whatever the network: one :class:`~semi3d.errors.InputError` naming the network
(``where``, e.g. ``"model unet3d"``), the key and the value; a bad input to ``forward`` one
``ValueError`` with the expected shape."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import InputError, check_options

__all__ = ["check_options", "with_defaults", "choice", "positive_int", "check_io", "check_input_2d", "pad_to"]


def with_defaults(where: str, given: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """``defaults`` updated with ``given``, after :func:`check_options` against the defaults' keys."""
    check_options(where, given, defaults)
    return {**defaults, **given}


def choice(where: str, key: str, value: Any, allowed: Sequence[str]) -> Any:
    """``value`` when it is one of ``allowed``."""
    if value not in allowed:
        raise InputError(where, f"{key}={value!r}: choose one of {', '.join(map(repr, allowed))}")
    return value


def positive_int(where: str, key: str, value: Any) -> int:
    """``value`` when it is an int >= 1 (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(where, f"{key}={value!r}: expected a positive integer")
    return value


def check_io(where: str, in_channels: Any, num_classes: Any) -> None:
    """A builder's ``in_channels`` and ``num_classes``: positive integers."""
    positive_int(where, "in_channels", in_channels)
    positive_int(where, "num_classes", num_classes)


def check_input_2d(x: torch.Tensor, in_channels: int, name: str) -> None:
    """``ValueError`` unless ``x`` is ``(N, in_channels, H, W)``."""
    if x.ndim != 4 or x.shape[1] != in_channels:
        raise ValueError(f"{name}: expected an input (N, {in_channels}, H, W), got shape {tuple(x.shape)}")


def pad_to(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[slice, slice]]:
    """Zero-pad the last two axes of ``x`` (H, W) to multiples of ``multiple``, split evenly on
    both sides; returns the padded tensor and the (H, W) slices that crop it back."""
    h, w = x.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    if not (ph or pw):
        return x, (slice(None), slice(None))
    x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
    return x, (slice(ph // 2, ph // 2 + h), slice(pw // 2, pw // 2 + w))
