"""M&N: co-training a 2D model pretrained on natural images with a 3D model trained from scratch.

Yeung et al., "Semi-Supervised 3D Medical Segmentation from 2D Natural Images Pretrained Model",
MLMI 2025 (arXiv 2509.15167). Two networks: ``net2d`` segments every slice of a volume (along the
``views`` axes), ``net3d`` segments the volume; only ``net3d`` is used at test time.

Schedule (``step`` counts iterations from 0; ``W`` = ``warmup_iterations``, ``R`` = ``epoch_length``):

- Stage 1, ``step < W`` (the first lr cycle: ``W`` must equal ``train.schedule.cycles[0]``): both
  networks train on the same labelled batch, loss = soft Dice + KL against the one-hot label.
- Stage 2, alternating epochs of ``R`` iterations: epoch ``e = (step - W) // R``; even ``e`` trains
  ``net2d`` with ``net3d`` as a frozen teacher, odd ``e`` trains ``net3d`` with ``net2d`` as the
  teacher. Only the student's group is active (optimised). The teacher runs in eval mode without
  autograd on the *same* augmented unlabelled patches and its softmax is the student's soft target
  (the 2D teacher's slice-wise softmax is stacked back into a volume, averaged over ``views``). The
  student's loss is ``w_dice * soft Dice + w_kl * KL`` on the concatenated labelled (one-hot target)
  + unlabelled (teacher softmax target) batch. No confidence threshold, no EMA.
- Batch composition (:class:`semi3d.methods.sampling.BatchComposer`): ``n_u`` of the
  ``train.batch_size`` patches are unlabelled; with ``sampling="lrg"`` (the paper's learning-rate
  guided sampling) ``n_u = min(floor(p * B), B - 1)`` with ``p`` the position since stage 2 began
  (``(step - W) / (total - W)``, as the reference code; it keeps growing across further lr restarts).
- Pseudo-mask guided crops: at the end of stage 1 and then every ``guide_every`` iterations (and
  after each iteration listed in ``guide_at``) ``net3d`` predicts every unlabelled volume with a
  sliding window; the hard foreground masks steer the unlabelled crops (``data.fg_oversample`` of
  them are centred on predicted foreground). The masks live in the checkpoint (packed bits) and,
  for a person to look at, in ``<run>/pseudo/guide_masks.npz`` (uint8 (X, Y, Z) per case on the
  padded, preprocessed training grid) with ``guides.json``. Nothing is written beside the dataset.

The 2D model sees a volume batch ``(N, C, X, Y, Z)`` as ``N * S`` slices along each view axis
(:mod:`semi3d.models.slicing`); its loss is computed on the slices (averaged over views).

Options (``method.options``), defaults in brackets:

- ``warmup_iterations`` [None = ``train.schedule.cycles[0]``]: length of stage 1.
- ``epoch_length`` [8]: iterations per alternating epoch ``R``.
- ``sampling`` ["lrg"]: ``"lrg"``, ``"lrg_lr"``, ``"fixed"`` or ``"labelled_only"``.
- ``fixed_unlabelled`` [0]: ``n_u`` in stage 2 for ``sampling="fixed"``.
- ``min_unlabelled`` [0]: the least ``n_u`` in stage 2 for ``"lrg"`` / ``"lrg_lr"`` (beyond the paper;
  1 puts unlabelled patches in from the first step of stage 2 instead of after its first ``1 / B``).
- ``views`` [[2]]: axes the 2D model slices along (0 = X, 1 = Y, 2 = Z); ``[0, 1, 2]`` fuses three
  views by the mean of their probabilities.
- ``guide_every`` [0]: iterations between pseudo-mask passes for guided crops (0 = off).
- ``guide_at`` [[]]: further iteration counts (>= ``warmup_iterations``) after which a pass runs.
- ``loss_weights`` [[1, 1]]: weights of the soft Dice and the KL terms.
- ``slices_per_step`` [0 = all]: the 2D student's loss (stages 1 and 2) uses this many randomly
  drawn slices of the batch per view instead of all ``N * S``; the 2D teacher always sees every
  slice. Beyond the paper, for CPU budgets: on LA at batch 4 x 48 slices, a 2D-student iteration
  cost ~3 s vs ~1.5 s for a 3D-student one.

- ``copy_paste`` [0 = off]: beyond the paper, BCP's bidirectional copy-paste in stage 2. With
  ``m = min(n_l, n_u)`` (labelled, unlabelled patches of the step), labelled patch ``i < m`` gets a
  cuboid of unlabelled patch ``i`` pasted in and vice versa (one random cuboid of
  ``int(S * copy_paste)`` voxels per axis per step, :func:`semi3d.methods.common.cuboid_mask`); the
  soft targets are pasted alike, the teacher's computed on the unmixed patches. Both students.

- ``predict`` ["net3d"]: the inference model (validation, ``evaluate``, ``predict``, ``export``).
  ``"net3d"``: the 3D model alone, as the paper. ``"ensemble"`` (beyond the paper): the mean of the
  3D model's and the slice-wise 2D model's probabilities (saved as the ``ensemble`` network with
  members ``model.net3d`` and ``slicewise2d`` of ``model.net2d`` along ``views``).

Logged per step (``self.log``): ``stage`` (1 or 2), ``student`` ("both", "net2d" or "net3d"),
``dice/<group>`` and ``kl/<group>`` of the trained group(s); ``n_u`` is logged by the trainer.
"""
from __future__ import annotations

import json
import math
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import torch
from pydantic import AfterValidator, Field
from torch import nn

from ..atomic import atomic_file, write_text
from ..config import NetSpec
from ..errors import InputError
from ..losses import class_argmax, kl_soft, one_hot, soft_dice_loss
from ..models.ensemble import Ensemble
from ..models.nets3d import main_output
from ..models.slicing import SliceWise2D, predict_2d_volume, volume_to_slices
from ..registry import METHODS
from .base import Batch, Method, MethodContext, MethodOptions, method_options
from .common import cuboid_mask, slicewise_spec, swap_cuboids
from .sampling import KINDS, BatchComposer

__all__ = ["MN", "soft_target_loss"]



def soft_target_loss(logits: torch.Tensor, target: torch.Tensor, w_dice: float = 1.0,
                     w_kl: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """M&N's loss for logits ``(N, K, *spatial)`` and a probability target of the same shape
    (one-hot labels or a teacher's softmax).

    Soft Dice on the softmax with squared terms in the denominator, computed over the whole batch,
    background included (``1 - mean_k 2 sum(p t) / (sum p^2 + sum t^2)``), plus
    ``KL(target || softmax)`` averaged over every element (``N * K * voxels``).

    Voxels whose target is all zeros (ignored voxels, see :func:`semi3d.losses.one_hot`) count in
    neither term. Returns ``(w_dice * dice + w_kl * kl, dice, kl)``.
    """
    valid = target.sum(1, keepdim=True) > 0
    mask = None if bool(valid.all()) else valid.float()
    dice = soft_dice_loss(logits, target, squared=True, include_background=True, mask=mask)
    kl = kl_soft(logits, target, mask=mask)
    return w_dice * dice + w_kl * kl, dice, kl


@contextmanager
def _frozen(net: nn.Module):
    """Eval mode and ``torch.inference_mode`` for a teacher; its previous mode is restored afterwards."""
    was = net.training
    net.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        net.train(was)


def _loss_weights(lw: list[float]) -> list[float]:
    if len(lw) != 2 or any(not math.isfinite(x) or x < 0 for x in lw) or sum(lw) <= 0:
        raise ValueError("expected two non-negative weights (dice, kl), not both 0")
    return lw


def _views(v: int | list[int]) -> list[int]:
    views = [v] if isinstance(v, int) else v
    if not views or len(set(views)) != len(views) or any(x not in (0, 1, 2) for x in views):
        raise ValueError("expected distinct spatial axes among 0, 1, 2 (e.g. [2] or [0, 1, 2])")
    return views


LossWeights = Annotated[list[float], AfterValidator(_loss_weights)]  # M&N's [dice, kl], also supervised2d's


class MNOptions(MethodOptions):
    """M&N's ``method.options`` (see the module docstring)."""

    warmup_iterations: int | None = Field(None, ge=1)
    epoch_length: int = Field(8, ge=1)
    sampling: Literal[KINDS] = "lrg"  # type: ignore[valid-type]  # sampling.py's kinds
    fixed_unlabelled: int = 0
    min_unlabelled: int = 0
    views: Annotated[int | list[int], AfterValidator(_views)] = [2]
    guide_every: int = Field(0, ge=0)
    guide_at: list[int] = []
    loss_weights: LossWeights = [1.0, 1.0]
    slices_per_step: int = Field(0, ge=0)
    copy_paste: float = Field(0.0, ge=0, lt=1)
    predict: Literal["net3d", "ensemble"] = "net3d"


@METHODS.register("mn")
class MN(Method):
    """M&N co-training (see the module docstring for the schedule and the options)."""

    Options = MNOptions
    needs_unlabelled = True  # with the default sampling; ``labelled_only`` clears it below

    def __init__(self, ctx: MethodContext, **options):
        super().__init__(ctx)
        o = method_options("mn", options, MNOptions)
        cfg = ctx.cfg
        where = "method.options (mn)"
        total = ctx.total_iterations
        cycles = list(cfg.train.schedule.cycles)
        w = o.warmup_iterations
        if not cycles:
            raise InputError("train.schedule.cycles",
                             "M&N's stage 1 ends at the first lr cycle boundary: set train.schedule.cycles to "
                             f"[{w if w is not None else 'warmup_iterations'}] (the lr restarts when stage 2 begins)")
        if w is None:
            w = cycles[0]
        elif w != cycles[0]:
            raise InputError(f"{where} warmup_iterations",
                             f"warmup_iterations={w} differs from train.schedule.cycles[0]={cycles[0]}: "
                             "stage 1 must end where the first lr cycle ends")
        if not 0 < w < total:
            raise InputError("train.schedule.cycles",
                             f"stage 1 ends at iteration {w}, which must lie inside the run's {total} iterations "
                             "(train.iterations), or stage 2 never starts")
        self.warmup = w
        self.epoch_length = o.epoch_length
        self.composer = BatchComposer(o.sampling, cfg.train.batch_size, w, total, o.fixed_unlabelled,
                                      o.min_unlabelled)
        # stage 2 trains on unlabelled patches: an empty unlabelled split is refused before training
        self.needs_unlabelled = o.sampling != "labelled_only"
        self.views = tuple(o.views)
        self.slices_per_step, self.guide_every = o.slices_per_step, o.guide_every
        early = [g for g in o.guide_at if g < w]
        if early:
            raise InputError(f"{where} guide_at", f"pseudo-mask passes must come after stage 1 (>= {w}), got {early[0]}")
        self.guide_at = frozenset(o.guide_at)
        self.w_dice, self.w_kl = o.loss_weights
        self.predict, self.copy_paste = o.predict, o.copy_paste

        net2d = self.build_net2d()
        if ctx.channels_last:  # 2D convolutions NHWC too (the trainer converts the 3D ones)
            net2d.to(memory_format=torch.channels_last)
        self.groups = nn.ModuleDict({"net2d": net2d, "net3d": self.build_net3d()})
        self._guides: dict | None = None

    # schedule ---------------------------------------------------------------------------------
    def stage(self, step: int) -> int:
        return 1 if step < self.warmup else 2

    def student(self, step: int) -> str:
        """The group trained at ``step`` in stage 2 ("net2d" in even epochs, "net3d" in odd ones)."""
        return "net2d" if ((step - self.warmup) // self.epoch_length) % 2 == 0 else "net3d"

    def active_groups(self, step: int) -> list[str]:
        return ["net2d", "net3d"] if self.stage(step) == 1 else [self.student(step)]

    def batch_plan(self, step: int) -> tuple[int, int]:
        return self.composer.plan(step, self.ctx.lr_factor(step))

    # losses -----------------------------------------------------------------------------------
    def _loss3d(self, x: torch.Tensor, target: torch.Tensor):
        return soft_target_loss(main_output(self.groups["net3d"](x)), target, self.w_dice, self.w_kl)

    def _loss2d(self, x: torch.Tensor, target: torch.Tensor):
        """The 2D model's loss on the slices of ``x`` along each view, averaged over views; with
        ``slices_per_step`` > 0, on that many slices drawn at random (global torch RNG) per view."""
        parts = []
        for a in self.views:
            xs, ts = volume_to_slices(x, a), volume_to_slices(target, a)
            if 0 < self.slices_per_step < xs.shape[0]:
                idx = torch.randperm(xs.shape[0], device=xs.device)[: self.slices_per_step]
                xs, ts = xs[idx], ts[idx]
            parts.append(soft_target_loss(self.groups["net2d"](xs), ts, self.w_dice, self.w_kl))
        return tuple(sum(p[i] for p in parts) / len(parts) for i in range(3))

    def teacher_probs(self, student: str, x: torch.Tensor) -> torch.Tensor:
        """Soft targets (N, K, X, Y, Z) for ``x`` from the group that is not ``student``, frozen."""
        teacher = self.groups["net3d" if student == "net2d" else "net2d"]
        with _frozen(teacher):
            if student == "net2d":
                probs = torch.softmax(main_output(teacher(x)).float(), 1)
            else:
                probs = predict_2d_volume(teacher, x, self.views)
        return probs.clone()  # a normal tensor again: inference tensors cannot be saved for backward

    def training_step(self, batch: Batch, step: int) -> dict[str, torch.Tensor]:
        y_l = one_hot(batch.label_l, self.num_classes).to(batch.image_l.device)
        if self.stage(step) == 1:
            l3, d3, k3 = self._loss3d(batch.image_l, y_l)
            l2, d2, k2 = self._loss2d(batch.image_l, y_l)
            self.log = {"stage": 1, "student": "both", "dice/net2d": float(d2.detach()), "kl/net2d": float(k2.detach()),
                        "dice/net3d": float(d3.detach()), "kl/net3d": float(k3.detach())}
            return {"net2d": l2, "net3d": l3}
        student = self.student(step)
        x, y = batch.image_l, y_l
        if batch.image_u is not None and batch.image_u.shape[0]:
            x_u, y_u = batch.image_u, self.teacher_probs(student, batch.image_u).to(y_l.dtype)
            if self.copy_paste:
                inside = cuboid_mask(tuple(x.shape[2:]), self.copy_paste, device=x.device)
                (x, x_u), (y, y_u) = swap_cuboids(x, x_u, inside), swap_cuboids(y, y_u, inside)
            x, y = torch.cat([x, x_u]), torch.cat([y, y_u])
        loss, dice, kl = (self._loss2d if student == "net2d" else self._loss3d)(x, y)
        self.log = {"stage": 2, "student": student, f"dice/{student}": float(dice.detach()),
                    f"kl/{student}": float(kl.detach())}
        return {student: loss}

    def predictor(self) -> nn.Module:
        """``net3d``, or with ``predict: ensemble`` a fresh :class:`Ensemble` of ``net3d`` and the
        slice-wise ``net2d`` (sharing them, so the method's state dict holds each once), in
        ``net3d``'s train/eval mode."""
        if self.predict == "net3d":
            return self.groups["net3d"]
        slices = SliceWise2D(self.groups["net2d"], self.views)
        return Ensemble([self.groups["net3d"], slices]).train(self.groups["net3d"].training)

    def predictor_spec(self) -> NetSpec:
        """The saved model's network: ``model.net3d``, or the ``ensemble`` of it and ``slicewise2d``."""
        if self.predict == "net3d":
            return self.ctx.cfg.model.net3d
        members = [self.ctx.cfg.model.net3d.model_dump(), slicewise_spec(self.ctx, self.views).model_dump()]
        return NetSpec(name="ensemble", options={"members": members})

    # pseudo-mask guided crops -----------------------------------------------------------------
    def guide_due(self, done: int) -> bool:
        """Whether a pseudo-mask pass runs after ``done`` completed iterations."""
        if not (self.guide_every or self.guide_at) or done < self.warmup or done >= self.ctx.total_iterations:
            return False
        return (done == self.warmup or done in self.guide_at
                or (self.guide_every > 0 and (done - self.warmup) % self.guide_every == 0))

    def periodic(self, step: int, services: Any) -> None:
        if self.guide_due(step + 1) and services.unlabelled():  # due first: no list built every step
            self.guide_pass(services, step + 1)

    def guide_pass(self, services: Any, done: int) -> None:
        """Predict every unlabelled volume with ``net3d`` (sliding window over the padded volume the
        sampler holds, so the mask's voxels are the crops' voxels) and guide the crops by it."""
        net = self.groups["net3d"]
        was = net.training
        net.eval()
        masks = {}
        vols = services.unlabelled()
        try:
            for cid, image in services.shard(vols):  # distributed: each rank predicts its share
                fg = (class_argmax(services.predict(net, image), 0) > 0).numpy()
                masks[cid] = {"shape": tuple(fg.shape), "bits": np.packbits(fg.ravel())}
        finally:
            net.train(was)
        gathered = {cid: e for part in services.gather(masks) for cid, e in part.items()}
        masks = {cid: gathered[cid] for cid, _ in vols}  # the sampler's order on every rank
        for cid, e in masks.items():
            services.set_guide(cid, _unpack(e))
        self._guides = {"iteration": done, "masks": masks}
        if services.is_main:
            self._write_guides(Path(services.artefacts))

    def guide_state(self) -> dict | None:
        """The current guide masks (``{"iteration", "masks": {case: {"shape", "bits"}}}``, bits packed
        with ``np.packbits`` over the C-order raveled mask), or None before the first pass."""
        return self._guides

    def get_extra_state(self) -> dict:
        return {"guides": self._guides}

    def set_extra_state(self, state: dict) -> None:
        self._guides = state.get("guides")

    def restore(self, services: Any) -> None:
        """Re-apply the checkpoint's guide masks to the unlabelled sampler."""
        if self._guides is None:
            return
        shapes = {cid: tuple(image.shape[1:]) for cid, image in services.unlabelled()}
        for cid, entry in self._guides["masks"].items():
            shape = tuple(entry["shape"])
            if shapes.get(cid) != shape:
                raise InputError("checkpoint guides", f"case {cid!r}: guide mask {shape} does not match the "
                                                      f"unlabelled volume {shapes.get(cid)} of this data")
            services.set_guide(cid, _unpack(entry))

    def _write_guides(self, run_dir: Path) -> None:
        """``pseudo/guide_masks.npz`` (uint8 masks) and ``pseudo/guides.json``, written atomically."""
        out = run_dir / "pseudo"
        out.mkdir(parents=True, exist_ok=True)
        g = self._guides
        arrays = {cid: _unpack(e).astype(np.uint8) for cid, e in g["masks"].items()}
        with atomic_file(out / "guide_masks.npz") as tmp, open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)
        info = {"iteration": g["iteration"],
                "grid": "preprocessed training grid, padded to at least the patch size like the sampler's volumes",
                "cases": {cid: {"shape": list(a.shape), "foreground_fraction": float(a.mean())} for cid, a in arrays.items()}}
        write_text(out / "guides.json", json.dumps(info, indent=1))


def _unpack(entry: dict) -> np.ndarray:
    shape = tuple(entry["shape"])
    return np.unpackbits(entry["bits"], count=int(np.prod(shape))).reshape(shape).astype(bool)
