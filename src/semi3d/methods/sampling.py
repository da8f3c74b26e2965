"""Batch composition: how many unlabelled patches enter the batch at a step (M&N).

One small, stateless object (nothing to checkpoint) that a method asks once per step. Stage 1 is
``step < stage2_start`` (M&N's warm-up on labelled data); every kind gives ``n_u = 0`` there. In
stage 2, with ``B`` the batch size and ``T`` the total iterations:

- ``"lrg"`` (learning-rate guided sampling, the paper's and the reference code's rule):
  ``n_u = min(floor(p * B), B - 1)`` with ``p = (step - stage2_start) / (T - stage2_start)`` the
  position since stage 2 began, so the unlabelled share grows over the whole of stage 2 and keeps
  growing across further lr restarts (pakheiyeung/M-N ``create_loaders``:
  ``floor((epoch - transition) / (max - transition) * B)``); at least one labelled patch remains.
- ``"lrg_lr"``: the same idea read off the lr itself, ``n_u = min(floor((1 - lr / lr_max) * B), B - 1)``
  with ``lr / lr_max`` the schedule's factor (beyond the paper; falls back with each restart).
- ``"fixed"``: ``n_u = fixed_unlabelled``.
- ``"labelled_only"``: ``n_u = 0`` always.

``min_unlabelled`` (beyond the paper) raises the two guided kinds' ``n_u`` to at least that many from
the first step of stage 2 on: ``lrg`` starts stage 2 with ``floor(p * B) = 0`` for its first ``1 / B``
(a quarter at ``B = 4``).
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
        stage2_start: the first iteration of stage 2 (M&N's ``warmup_iterations``).
        total_iterations: ``T``, the run's iterations (stage 2 ends at ``T``).
        fixed_unlabelled: ``n_u`` of the ``"fixed"`` kind, in ``0 .. B - 1``.
        min_unlabelled: the least ``n_u`` of ``"lrg"`` / ``"lrg_lr"`` in stage 2, in ``0 .. B - 1``.
    """

    def __init__(self, kind: str, batch_size: int, stage2_start: int, total_iterations: int,
                 fixed_unlabelled: int = 0, min_unlabelled: int = 0):
        if kind not in KINDS:
            raise InputError("sampling", f"unknown batch composition {kind!r}; choose one of {', '.join(KINDS)}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InputError("train.batch_size", f"expected a positive integer, got {batch_size!r}")
        if kind != "labelled_only" and batch_size < 2:
            raise InputError("train.batch_size", f"sampling {kind!r} mixes labelled and unlabelled patches: "
                                                 f"it needs a batch of at least 2, got {batch_size}")
        for name, v, used in (("fixed_unlabelled", fixed_unlabelled, kind == "fixed"),
                              ("min_unlabelled", min_unlabelled, kind in ("lrg", "lrg_lr"))):
            if used and (isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= batch_size - 1):
                raise InputError(name, f"expected an integer in 0..{batch_size - 1} (batch size "
                                       f"{batch_size} keeps one labelled patch), got {v!r}")
        if not 0 <= stage2_start < total_iterations:
            raise InputError("sampling", f"stage 2 must start inside the run: 0 <= {stage2_start} < {total_iterations}")
        self.kind, self.batch_size = kind, batch_size
        self.fixed_unlabelled, self.min_unlabelled = int(fixed_unlabelled), int(min_unlabelled)
        self.stage2_start, self.total = int(stage2_start), int(total_iterations)

    def stage(self, step: int) -> int:
        """1 before ``stage2_start``, 2 from it on."""
        return 1 if step < self.stage2_start else 2

    def n_unlabelled(self, step: int, lr_factor: float = 1.0) -> int:
        """``n_u`` at ``step`` (from 0); ``lr_factor`` = ``lr / lr_max`` at ``step``, read by ``"lrg_lr"``."""
        if self.kind == "labelled_only" or self.stage(step) == 1:
            return 0
        b = self.batch_size
        if self.kind == "fixed":
            return self.fixed_unlabelled
        if self.kind == "lrg":
            frac = (step - self.stage2_start) / (self.total - self.stage2_start)
        else:
            frac = 1.0 - lr_factor
        return max(self.min_unlabelled, min(math.floor(frac * b + _EPS), b - 1))

    def plan(self, step: int, lr_factor: float = 1.0) -> tuple[int, int]:
        """``(n_labelled, n_unlabelled)`` at ``step``."""
        n_u = self.n_unlabelled(step, lr_factor)
        return self.batch_size - n_u, n_u
