"""Batch composition: how many unlabelled patches enter the batch at a step.

One small, stateless object (nothing to checkpoint) that a method asks once per step. The kinds:

- ``"lrg"`` (learning-rate guided sampling, M&N): during stage 2 (every lr cycle after the first),
  ``n_u = min(floor(p * B), B - 1)`` with ``p`` in [0, 1) the position within the current cycle, so
  the share of unlabelled (pseudo-labelled) patches grows as the cosine lr decays, and at least one
  labelled patch always remains.
- ``"lrg_lr"``: the same idea read off the lr itself, ``n_u = min(floor((1 - lr / lr_max) * B), B - 1)``
  with ``lr / lr_max`` the schedule's factor.
- ``"fixed"``: ``n_u = fixed_unlabelled`` in stage 2.
- ``"labelled_only"``: ``n_u = 0`` always.

Every kind gives ``n_u = 0`` during stage 1 (the warm-up: the first lr cycle).
"""
from __future__ import annotations

import math

from ..errors import InputError

__all__ = ["KINDS", "BatchComposer"]

KINDS = ("lrg", "lrg_lr", "fixed", "labelled_only")
_EPS = 1e-9  # floor(p * B) must not fall one short at an exact boundary because of rounding


class BatchComposer:
    """Decides ``n_u``, the unlabelled patches of a batch of ``batch_size`` patches.

    Args:
        kind: one of :data:`KINDS`.
        batch_size: ``B``, labelled + unlabelled patches per step.
        fixed_unlabelled: ``n_u`` of the ``"fixed"`` kind, in ``0 .. B - 1``.
        warmup_iterations: when given, stage 2 starts at this step; otherwise stage 2 is every lr
            cycle after the first (cycle index >= 1).
    """

    def __init__(self, kind: str, batch_size: int, fixed_unlabelled: int = 0,
                 warmup_iterations: int | None = None):
        if kind not in KINDS:
            raise InputError("sampling", f"unknown batch composition {kind!r}; choose one of {', '.join(KINDS)}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InputError("train.batch_size", f"expected a positive integer, got {batch_size!r}")
        if kind != "labelled_only" and batch_size < 2:
            raise InputError("train.batch_size", f"sampling {kind!r} mixes labelled and unlabelled patches: "
                                                 f"it needs a batch of at least 2, got {batch_size}")
        if kind == "fixed" and (isinstance(fixed_unlabelled, bool) or not isinstance(fixed_unlabelled, int)
                                or not 0 <= fixed_unlabelled <= batch_size - 1):
            raise InputError("fixed_unlabelled", f"expected an integer in 0..{batch_size - 1} (batch size "
                                                 f"{batch_size} keeps one labelled patch), got {fixed_unlabelled!r}")
        self.kind, self.batch_size = kind, batch_size
        self.fixed_unlabelled = int(fixed_unlabelled)
        self.warmup_iterations = warmup_iterations

    def stage(self, step: int, cycle_position: tuple[int, float]) -> int:
        """1 during the warm-up, 2 after it."""
        if self.warmup_iterations is not None:
            return 1 if step < self.warmup_iterations else 2
        return 1 if cycle_position[0] < 1 else 2

    def n_unlabelled(self, step: int, cycle_position: tuple[int, float], lr_factor: float) -> int:
        """``n_u`` at ``step``.

        Args:
            step: the iteration (from 0).
            cycle_position: ``(cycle index, p)`` of the lr schedule at ``step``, ``p`` in [0, 1)
                (``LRSchedule.cycle_position``).
            lr_factor: ``lr / lr_max`` at ``step`` (``LRSchedule.factor``).
        """
        if self.kind == "labelled_only" or self.stage(step, cycle_position) == 1:
            return 0
        b = self.batch_size
        if self.kind == "fixed":
            return self.fixed_unlabelled
        frac = cycle_position[1] if self.kind == "lrg" else 1.0 - lr_factor
        return max(0, min(math.floor(frac * b + _EPS), b - 1))

    def plan(self, step: int, cycle_position: tuple[int, float], lr_factor: float) -> tuple[int, int]:
        """``(n_labelled, n_unlabelled)`` at ``step``."""
        n_u = self.n_unlabelled(step, cycle_position, lr_factor)
        return self.batch_size - n_u, n_u
