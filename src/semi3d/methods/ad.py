"""A&D: Aggregating & Decoupling (Wang & Li, NeurIPS 2023, "Towards Generic Semi-Supervised
Framework for Volumetric Medical Image Segmentation"), after the authors' ``train_diffusion.py``.

One network (:class:`~semi3d.models.ad_net.ADNet`, group ``"net"``, one optimiser): a V-Net encoder
shared by three decoders.

- **Diffusion decoder** xi (labelled data): labels are one-hot, mapped to [-1, 1] (``x_0``),
  noised at a uniformly drawn step ``t`` of a 1000-step linear schedule (betas 1e-4 .. 0.02),
  ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps``; the diffusion path (image and ``x_t`` into the
  diffusion stem, time embedding in every stage) predicts ``x_0`` directly, and that output,
  read as logits, gets Dice + CE against the label: ``L_diffusion``.
- **Difficulty-aware decoder** psi (labelled data, plain path): Dice + CE with per-class weights
  ``w`` from :class:`DifficultyWeights` (DHC-style learning / unlearning momentum of each class's
  Dice, tracked on the diffusion decoder's labelled predictions as the authors' code does):
  ``L_difficulty``. Option ``difficulty: false`` (an ablation, not the paper's) keeps ``w = 1``
  for every class, i.e. plain Dice + CE.
- **Student decoder** theta (unlabelled data only, plain path): Dice + CE against the pseudo-label
  ``argmax(smooth(gumbel_softmax(x0_ddim)) + softmax(psi))``, computed without gradients, where
  ``x0_ddim`` is a 10-step deterministic DDIM sample (eta 0, from pure noise, conditioned on the
  unlabelled image; the last step's clipped ``x_0`` prediction) and ``smooth`` a 3x3x3 Gaussian
  (sigma 1) per class: ``L_student``. After every step the student decoder's parameters are pulled
  toward the mean of the other two decoders' (same names): ``theta <- a theta + (1 - a) (xi + psi) / 2``
  with ``a = ema`` (0.99).

Loss ``L_diffusion + L_difficulty + mu(t) L_student`` with ``mu(t) = mu * exp(-5 (1 - t/T)^2)``
(sigmoid ramp-up over ``mu_rampup`` iterations, default the whole run). Only the student
(plain stem + encoder + student decoder) predicts; it is saved as the ``ad_student`` network.

Strong augmentation (A&D's ``get_StrongAug``), applied here, in torch, to both streams: per
sample, ``select`` (3) of six transforms — in-plane rotation (+-15 deg), scaling, Gaussian blur,
multiplicative brightness, contrast, gamma (each range 0.7 .. 1.3; scaling samples the patch on a
grid scaled by 0.7 .. 1.0, i.e. zooms in by up to 1/0.7) — each applied with probability ``p``
(0.7). Leave ``data.augment`` at no-op for A&D runs (the configs do), or the two add up.

Task modes are data/split configuration only (see ``configs/la_ad_*.yaml`` and
``semi3d.data.domain_shift``): SSL (labelled / unlabelled from one domain), class-imbalanced SSL
(multi-class data with rare classes), UDA (labelled = source domain, unlabelled = target domain,
test = target domain) and SemiDG (labelled + unlabelled from several domains, test = an unseen one).

Differences from the authors' code (xmed-lab/GenericSSL, ``code/train_diffusion.py``,
``DiffVNet/diff_vnet.py``, ``data/StrongAug.py``, ``data/data_loaders.py``):

- Time embedding: theirs adds ``Linear(silu(temb))`` after every conv + norm (+ dropout) block of
  the diffusion stem, the shared encoder and the diffusion decoder; here one such bias per level
  (the diffusion stem, each encoder level, each decoder up-convolution). The plain path gets none
  in both.
- Intensities: theirs min-max normalises each volume to [0, 1]; the LA configs here z-score
  (``data.preprocess.normalisation: minmax`` gives theirs; not yet measured).
- Strong augmentation: theirs (batchgenerators) samples rotation and scaling with cubic
  interpolation, rotates about the first axis (the (Y, Z) plane) and, with the range (0.7, 1.0),
  scales only half of the times scaling is selected (the other half draws from [1, 1]); here
  trilinear, the (X, Y) plane, and a scale drawn from (0.7, 1.0) every time. Their blur is
  ``scipy.ndimage.gaussian_filter`` (kernel to 4 sigma); here a separable kernel to ``ceil(3 sigma)``
  with replicate padding. The random subset of transforms is applied in a fixed order here.
- Schedule and model choice: theirs trains up to ``max_epoch + 1`` = 301 epochs of
  ``len(unlabelled) // batch_size`` iterations (LA, batch 4: 76 // 4 = 19 with 5 % labelled,
  72 // 4 = 18 with 10 %, so at most 5719 / 5418 iterations; it stops early after 50 epochs without
  a better evaluation Dice) at patch 112x112x80, width 32, and keeps the checkpoint that scores best
  on an 8-case evaluation split (``code/train_diffusion.py``); the LA configs here run
  ``train.iterations`` (800 on the CPU) at half resolution, width 8, and report the final model.
- The EMA pull runs after each optimiser step (theirs: before each forward, i.e. the same sequence
  shifted by one). Their poly learning-rate decay steps per epoch, here per iteration; they train
  in fp16 with a GradScaler, here ``precision: auto`` (bf16 where supported).
- The same as theirs, noted because it matters: the 10 DDIM passes run in training mode, so the
  shared encoder's BatchNorm running statistics mix the diffusion path's inputs in (re-estimating
  them on plain-path patches did not help the student: ``benchmarks/README.md``, "A&D on a lent
  GPU"); the LA config uses their optimiser (SGD 1e-2, Nesterov, momentum 0.9, weight decay 3e-5).
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..config import NetSpec
from ..data.strong_augment import StrongAugment, strong_augment
from ..errors import InputError
from ..losses import class_argmax, dice_ce_loss, one_hot
from ..models.ad_net import ADNet
from ..models.diffusion import GaussianDiffusion
from ..registry import METHODS
from .base import Batch, Method, MethodContext, MethodOptions, method_options
from .common import rampup_length, sigmoid_rampup, unlabelled_batch


def gaussian_smooth(x: torch.Tensor, kernel_size: int = 3, sigma: float = 1.0) -> torch.Tensor:
    """Per-channel Gaussian filter of (N, K, X, Y, Z) with a normalised ``kernel_size``^3 kernel and
    zero padding ("same" size), as A&D's ``GaussianSmoothing(K, 3, 1)``."""
    r = torch.arange(kernel_size, dtype=torch.float32, device=x.device) - (kernel_size - 1) / 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    k = g[:, None, None] * g[None, :, None] * g[None, None, :]
    k = (k / k.sum()).to(x.dtype)
    c = x.shape[1]
    return F.conv3d(x, k.expand(c, 1, *k.shape).contiguous(), padding=kernel_size // 2, groups=c)


# ------------------------------------------------------------------------ difficulty awareness
def hard_class_dice(logits: torch.Tensor, label: torch.Tensor, smooth: float = 1e-8) -> torch.Tensor:
    """Per-class Dice (K,) of ``argmax(logits)`` against ``label`` over the whole batch,
    background included: ``(2 TP + s) / (2 TP + FP + FN + s + 1e-8)`` (A&D's ``SoftDiceLoss(smooth=1e-8,
    do_bg=True)`` on one-hot maps), float64."""
    k = logits.shape[1]
    p = one_hot(class_argmax(logits), k).double()
    t = one_hot(label, k).double()
    dims = [0] + list(range(2, p.ndim))
    tp = (p * t).sum(dims)
    fp = (p * (1 - t)).sum(dims)
    fn = ((1 - p) * t).sum(dims)
    return (2 * tp + smooth) / (2 * tp + fp + fn + smooth + 1e-8)


class DifficultyWeights(nn.Module):
    """Class weights from the learning / unlearning momentum of each class's Dice (DHC, A&D).

    At every update with the current per-class Dice ``d`` (previous ``d'``, initially 1e-8):

        learn_now   = max(d - d', 0) * log(d / d')        (>= 0, large for fast rises)
        unlearn_now = min(d - d', 0) * log(d / d')        (>= 0, large for falls)
        learn   <- m learn   + (1 - m) learn_now          with m = (window - 1) / window
        unlearn <- m unlearn + (1 - m) unlearn_now
        difficulty = ((unlearn + 1e-8) / (learn + 1e-8)) ** power
        hardness   <- m hardness + (1 - m) (1 - d)        (initially 1)
        weights = K * difficulty * hardness

    So a class whose Dice falls, or rises only slowly, or stays low, gets a larger weight than one
    whose Dice rises fast and is high. ``window`` = 50 and ``power`` = 1/5 as A&D. The state is
    kept in buffers (saved with the method, so resume is exact).
    """

    def __init__(self, num_classes: int, window: float = 50, power: float = 0.2):
        super().__init__()
        self.num_classes, self.window, self.power = num_classes, float(window), float(power)
        self.register_buffer("last_dice", torch.full((num_classes,), 1e-8))
        self.register_buffer("learn", torch.zeros(num_classes))
        self.register_buffer("unlearn", torch.zeros(num_classes))
        self.register_buffer("hardness", torch.ones(num_classes))
        self.register_buffer("weights", torch.ones(num_classes))

    @torch.no_grad()
    def update_from_dice(self, dice: torch.Tensor) -> torch.Tensor:
        """One update with the current per-class Dice ``dice`` (K,); returns the weights (K,)."""
        d = dice.double().to(self.learn.device)
        last = self.last_dice.double()
        delta, ratio = d - last, torch.log(d / last)
        learn_now = torch.nan_to_num(torch.where(delta > 0, delta, 0.0) * ratio, nan=0.0, posinf=1e8)
        unlearn_now = torch.nan_to_num(torch.where(delta <= 0, delta, 0.0) * ratio, nan=0.0, posinf=1e8)
        m = (self.window - 1) / self.window
        learn = m * self.learn.double() + (1 - m) * learn_now
        unlearn = m * self.unlearn.double() + (1 - m) * unlearn_now
        hardness = m * self.hardness.double() + (1 - m) * (1 - d)
        w = self.num_classes * ((unlearn + 1e-8) / (learn + 1e-8)) ** self.power * hardness
        for buf, v in ((self.last_dice, d), (self.learn, learn), (self.unlearn, unlearn),
                       (self.hardness, hardness), (self.weights, w)):
            buf.copy_(v.to(buf.dtype))
        return self.weights.clone()

    def update(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """Update from a labelled prediction (logits (N, K, ...), label (N, ...)); returns weights."""
        return self.update_from_dice(hard_class_dice(logits.detach(), label))


def pseudo_label(x0_sample: torch.Tensor, difficulty_logits: torch.Tensor, gumbel: bool = True,
                 smoothing: bool = True) -> torch.Tensor:
    """A&D's pseudo-label ``argmax(smooth(gumbel_softmax(x0)) + softmax(psi))`` (N, X, Y, Z)."""
    x0 = x0_sample.float()
    a = F.gumbel_softmax(x0, tau=1.0, dim=1) if gumbel else torch.softmax(x0, 1)
    if smoothing:
        a = gaussian_smooth(a)
    return class_argmax(a + torch.softmax(difficulty_logits.float(), 1))


# ------------------------------------------------------------------------------------- method
class _Psi(nn.Module):
    """Plain stem + shared encoder + difficulty-aware decoder: (N, C, X, Y, Z) -> logits (N, K, X, Y, Z)."""

    def __init__(self, net: "ADNet"):
        super().__init__()
        self.net = net
        self.divisor = net.divisor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.decoder_difficulty(self.net.features(x))


class _DDIM(nn.Module):
    """The DDIM ``x_0`` sample as scores (N, K, X, Y, Z) in [-1, 1]; noise seeded 0 per call."""

    def __init__(self, method: "AD"):
        super().__init__()
        self.method = method
        self.divisor = method.net.divisor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = torch.Generator(device=x.device).manual_seed(0)
        return self.method.sample_x0(x, g)


@torch.no_grad()
def pull_student(net: ADNet, ema: float) -> int:
    """``theta <- ema * theta + (1 - ema) * (xi + psi) / 2`` for every student-decoder parameter
    whose name and shape the diffusion (xi) and difficulty (psi) decoders share (all of them, in
    :class:`ADNet`). Returns how many parameter tensors were pulled."""
    xi = dict(net.decoder_diffusion.named_parameters())
    psi = dict(net.decoder_difficulty.named_parameters())
    n = 0
    for name, p in net.decoder_student.named_parameters():
        a, b = xi.get(name), psi.get(name)
        if a is None or b is None or a.shape != p.shape or b.shape != p.shape:
            continue
        p.mul_(ema).add_((a.detach() + b.detach()).to(p.dtype) / 2, alpha=1 - ema)
        n += 1
    return n


@METHODS.register("ad")
class AD(Method):
    """Options:
        width: channels of the first level (default 32, A&D's; LA V-Net baselines use 16).
        depth: resolution levels (default 5, the V-Net's); patches must be multiples of 2^(depth-1).
        normalization: ``batchnorm`` (default, A&D), ``instancenorm``, ``groupnorm``, ``none``.
        dropout: bottleneck / last-features ``Dropout3d`` (default 0.5, A&D's ``has_dropout``).
        conv_dropout: ``Dropout3d`` after every conv block (default 0.1, A&D's).
        temb_dim: sinusoidal time-embedding size (default 128; its MLP has 4x as many features).
        unlabelled_batch: unlabelled patches per step (default ``train.batch_size``).
        timesteps: diffusion steps (default 1000); beta_start, beta_end: linear schedule (1e-4, 0.02).
        ddim_steps: DDIM steps of the pseudo-label sampling (default 10).
        mu: weight of the student loss (default 10, the authors' command line ``-w 10``).
        mu_rampup: iterations of its sigmoid ramp-up (default: the whole run).
        ema: student pull ``theta <- ema theta + (1 - ema)(xi + psi)/2`` (default 0.99).
        difficulty: difficulty-aware class weights (default true); false: uniform weights (all 1,
            never updated), an ablation of the weights only; the three decoders stay.
        difficulty_window: iterations of the Dice momentum averages (default 50).
        difficulty_power: exponent of the unlearn/learn ratio (default 0.2).
        difficulty_source: ``diffusion`` (default, as the authors' code: the diffusion decoder's
            labelled predictions) or ``difficulty`` (the difficulty-aware decoder's own).
        gumbel: Gumbel-softmax on the DDIM sample (default true; false: plain softmax).
        smoothing: Gaussian smoothing of it (default true).
        strong_augment: true (default), false, or a mapping overriding :class:`StrongAugment`
            fields (select, p, rotation, scale, blur_sigma, brightness, contrast, gamma).

    ``model.net3d`` is not used: the network is built from these options, and the saved inference
    model is ``ad_student`` with the same width / depth / normalization / dropouts.

    Logged: ``loss/diffusion``, ``loss/difficulty`` (class-weighted), ``loss/supervised`` (the
    difficulty-aware decoder's unweighted Dice + CE), ``loss/student``, ``weight/mu``,
    ``ad/pseudo_fg`` (foreground fraction of the pseudo-labels), ``ad/agreement`` (fraction of
    voxels where the DDIM and difficulty-aware predictions agree), ``ad/difficulty_w<k>``.
    """

    needs_unlabelled = True
    ignore_label = False  # the diffusion decoder denoises one-hot labels: an ignored voxel has none

    class Options(MethodOptions):  # the network's own options are checked by ADNet
        width: int = 32
        depth: int = 5
        normalization: str = "batchnorm"
        dropout: float = 0.5
        conv_dropout: float = 0.1
        temb_dim: int = 128
        unlabelled_batch: int | None = Field(None, ge=1)
        timesteps: int = Field(1000, ge=1)
        beta_start: float = Field(1e-4, gt=0, le=1)
        beta_end: float = Field(0.02, gt=0, le=1)
        ddim_steps: int = Field(10, ge=1)
        mu: float = Field(10.0, ge=0)
        mu_rampup: float | None = Field(None, ge=0)
        ema: float = Field(0.99, ge=0, le=1)
        difficulty: bool = True
        difficulty_window: float = Field(50, ge=1)
        difficulty_power: float = Field(0.2, ge=0)
        difficulty_source: Literal["diffusion", "difficulty"] = "diffusion"
        gumbel: bool = True
        smoothing: bool = True
        strong_augment: bool | dict = True

    def __init__(self, ctx: MethodContext, **options):
        super().__init__(ctx)
        name = ctx.cfg.method.name
        o = method_options(name, options, self.Options)
        self.n_u = unlabelled_batch(ctx, o.unlabelled_batch)
        steps, b0, b1, ddim = o.timesteps, o.beta_start, o.beta_end, o.ddim_steps
        if b1 < b0:
            raise InputError(f"method.options.beta_end ({name})", f"must be >= beta_start ({b0}), got {b1}")
        if b1 * 1000.0 / steps >= 1:
            raise InputError(f"method.options.beta_end ({name})", f"beta_end * 1000 / timesteps must be < 1, got {b1 * 1000.0 / steps}")
        if ddim > steps:
            raise InputError(f"method.options.ddim_steps ({name})", f"must be <= timesteps ({steps}), got {ddim}")
        self.mu, self.ema = o.mu, o.ema
        self.rampup = rampup_length(ctx, o.mu_rampup)
        self.difficulty_source, self.use_difficulty = o.difficulty_source, o.difficulty
        self.gumbel, self.smoothing = o.gumbel, o.smoothing
        self.augment = StrongAugment.from_option(o.strong_augment)
        self.net_options = {k: getattr(o, k) for k in ("width", "depth", "normalization", "dropout", "conv_dropout")}
        try:
            net = ADNet(ctx.in_channels, self.num_classes, temb_dim=o.temb_dim, **self.net_options)
        except InputError as e:
            raise InputError(f"method.options ({name})", e.problem) from None
        self.groups = nn.ModuleDict({"net": net})
        self.diffusion = GaussianDiffusion(steps, b0, b1, ddim)
        self.difficulty = DifficultyWeights(self.num_classes, o.difficulty_window, o.difficulty_power)
        self.options = o

    @property
    def net(self) -> ADNet:
        return self.groups["net"]  # type: ignore[return-value]

    # method interface -----------------------------------------------------------------------
    def batch_plan(self, step: int) -> tuple[int, int]:
        return self.ctx.cfg.train.batch_size, self.n_u

    def mu_at(self, step: int) -> float:
        return self.mu * sigmoid_rampup(step, self.rampup)

    @torch.no_grad()
    def sample_x0(self, image: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """DDIM ``x_0`` sample (N, K, X, Y, Z) in [-1, 1] conditioned on ``image``."""
        shape = (image.shape[0], self.num_classes, *image.shape[2:])
        return self.diffusion.ddim_sample(lambda x, t: self.net.denoise(x, t, image), shape, image.device, generator)

    def monitors(self) -> dict[str, nn.Module]:
        """``psi``: the difficulty-aware decoder on the plain path; ``ddim``: the 10-step DDIM sample
        (noise from a generator seeded 0 at each window, so validation leaves the training RNG alone).
        The student is the predictor itself (``val/dice``)."""
        return {"psi": _Psi(self.net), "ddim": _DDIM(self)}

    def training_step(self, batch: Batch, step: int):
        net, k = self.net, self.num_classes
        img_l, lab_l, img_u = batch.image_l, batch.label_l, batch.image_u
        if img_u is None:
            raise RuntimeError("ad needs unlabelled patches at every step")
        if self.augment is not None:
            img_l, lab_l = strong_augment(img_l, lab_l, self.augment)
            img_u, _ = strong_augment(img_u, None, self.augment)

        # diffusion decoder (xi) on labelled data: predict x_0 from x_t
        x0 = one_hot(lab_l, k) * 2 - 1
        t = self.diffusion.sample_t(x0.shape[0], x0.device)
        x_t = self.diffusion.q_sample(x0, t, torch.randn_like(x0))
        p_xi = net.denoise(x_t, t, img_l)
        l_diffusion = dice_ce_loss(p_xi, lab_l)

        # difficulty-aware decoder (psi) on labelled data, class-weighted (uniformly without ``difficulty``)
        p_psi = net.decoder_difficulty(net.features(img_l))
        if self.use_difficulty:
            w = self.difficulty.update(p_xi if self.difficulty_source == "diffusion" else p_psi, lab_l)
        else:
            w = torch.ones(k)
        l_difficulty = dice_ce_loss(p_psi, lab_l, w)
        with torch.no_grad():
            l_plain = dice_ce_loss(p_psi, lab_l)  # unweighted, comparable with other methods' loss/supervised

        # student decoder (theta) on unlabelled data, pseudo-labels without gradients
        x0_u = self.sample_x0(img_u)
        feats_u = net.features(img_u)
        with torch.no_grad():
            psi_u = net.decoder_difficulty(feats_u)
            plab = pseudo_label(x0_u, psi_u, self.gumbel, self.smoothing)
        l_student = dice_ce_loss(net.decoder_student(feats_u), plab)

        mu = self.mu_at(step)
        self.log.update({"loss/diffusion": float(l_diffusion.detach()), "loss/difficulty": float(l_difficulty.detach()),
                         "loss/student": float(l_student.detach()), "loss/supervised": float(l_plain), "weight/mu": mu,
                         "ad/pseudo_fg": float((plab > 0).float().mean()),
                         "ad/agreement": float((class_argmax(x0_u) == class_argmax(psi_u)).float().mean())})
        self.log.update({f"ad/difficulty_w{c}": float(v) for c, v in enumerate(w.tolist())})
        return {"net": l_diffusion + l_difficulty + mu * l_student}

    def after_step(self, step: int) -> None:
        pull_student(self.net, self.ema)

    def predictor(self) -> nn.Module:
        return self.net.student

    def predictor_spec(self) -> NetSpec:
        """The saved model is the student alone, rebuilt as the ``ad_student`` network."""
        return NetSpec(name="ad_student", options=dict(self.net_options))
