"""The option checks every network builder shares (2D and 3D), so a bad option reads the same
whatever the network: one :class:`~semi3d.errors.InputError` naming the network (``where``, e.g.
``"model unet3d"``), the key and the value."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import InputError, check_options

__all__ = ["check_options", "with_defaults", "choice", "positive_int", "check_io"]


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
