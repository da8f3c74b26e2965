"""The one training loop shared by every method.

Owns: run folder, data and samplers, optimisers and lr schedules per model group, precision,
gradient clipping, validation with a declared selection policy, atomic checkpoints, exact resume,
the JSONL/CSV log and the progress display. Everything method-specific lives in ``methods/``.
"""
from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ..config import RunConfig, dump_config
from ..data.augment import augment
from ..data.dataset import DataBundle, prepare_data
from ..data.orientation import mixed_orientations
from ..data.patches import PatchSampler, shared_annotation_offsets
from ..data.postprocess import check_classes
from ..atomic import write_text
from ..data.splits import save_splits
from ..errors import InputError
from ..losses import class_argmax, hard_dice
from ..methods.base import Batch, MethodContext, method_options
from ..models.nets3d import check_patch
from ..registry import METHODS
from . import checkpoint as ckpt
from .averaging import WeightAverage
from . import distributed as D
from .interrupt import Interrupted, StopRequest
from .resume import check_resume_config
from .precision import autocast, channels_last_3d, fp32_small_convs, pick_device, resolve_precision, use_channels_last
from .schedules import LRSchedule, make_optimizers
from .sliding_window import predict_probs
from .services import TrainerServices
from .rundir import RunDir
from .runlog import Pace, RunLog, console, overlay, progress_line, resolve_tensorboard


class Trainer:
    """Trains ``cfg.method`` on ``cfg.data``; ``fit()`` returns a summary dict.

    ``data``: the cases, when the caller holds them already (default: read ``cfg.data``);
    ``init``: initial weights ``{group: state_dict}`` (fine-tuning; a resume takes its checkpoint's).
    """

    def __init__(self, cfg: RunConfig, resume: bool = False, data: DataBundle | None = None,
                 init: dict[str, dict] | None = None):
        new = [p for p in (cfg.run_dir, *cfg.run_dir.parents) if not p.exists()]
        created = new[-1] if new else None  # the outermost folder this call creates
        self._written: list[Path] = []
        self.dist = D.current()
        try:
            self._setup(cfg, resume, data, init or {})
        except (InputError, KeyboardInterrupt):  # refused or Ctrl-C (preprocessing): nothing partial stays
            if created is not None and self.dist.is_main:
                shutil.rmtree(created, ignore_errors=True)
            elif not resume:
                for f in self._written:
                    f.unlink(missing_ok=True)
            raise

    def _setup(self, cfg: RunConfig, resume: bool, data: DataBundle | None, init: dict[str, dict]) -> None:
        self.cfg, self.resume = cfg, resume
        self.run = RunDir(cfg.run_dir)
        method = METHODS.get(cfg.method.name)
        method_options(cfg.method.name, cfg.method.options, method.Options)  # a typo ends before any file or data
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        self.device = pick_device(cfg.device)
        self.dist = D.init_distributed(self.device)
        self.main = self.dist.is_main
        if self.device.type == "cuda" and self.dist.enabled:
            self.device = torch.device("cuda", self.dist.local_rank)
        self.precision = resolve_precision(cfg.precision, self.device)
        if self.main:
            self.run.prepare(resume)
        D.barrier()  # ranks > 0 read what rank 0 checked / created (a shared file system across nodes)

        splits = self.run.load_splits() if resume else None
        if not self.main:
            D.barrier()  # rank 0 fills the preprocessing cache first
        self.data = data or prepare_data(cfg.data, splits)
        if self.main and self.dist.enabled:
            D.barrier()
        if resume and self.data.splits != splits:
            raise InputError(self.run.splits, "differs from the splits of the data given")
        if not resume and self.main:
            self._written = [self.run.config, self.run.splits]
            write_text(self._written[0], dump_config(cfg))
            save_splits(self._written[1], self.data.splits, self.data.domains)

        t = cfg.train
        self.schedule = LRSchedule(t.schedule, t.iterations)
        self.channels_last = use_channels_last(t.channels_last, self.device)
        ctx = MethodContext(cfg, self.data.in_channels, self.data.num_classes, t.iterations,
                            self.schedule.factor, channels_last=self.channels_last)
        self.method = method(ctx, **cfg.method.options).to(self.device)
        check_patch(cfg.data.patch_size, self.method)  # a clear error now, not a torch one at step 1
        for g, state in init.items():
            if g not in self.method.groups:
                raise InputError("init", f"unknown group {g!r}; groups: {', '.join(self.method.groups)}")
            self.method.groups[g].load_state_dict(state)
        if self.channels_last:
            channels_last_3d(self.method)
        if self.precision != "fp32":
            fp32_small_convs(self.method)
        if self.dist.enabled:
            D.broadcast_parameters(self.method)  # identical start on every rank
            if D.rank_seed(cfg.seed, self.dist.rank) != cfg.seed:
                torch.manual_seed(D.rank_seed(cfg.seed, self.dist.rank))  # per-rank noise / dropout
        wa = t.weight_average
        self.average = None if wa is None else WeightAverage(self.method.groups, wa.decay, wa.start)
        self.optimizers, self.base_lr = make_optimizers(self.method.groups, t)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.precision == "fp16")

        self.gen = torch.Generator().manual_seed(D.rank_seed(cfg.seed, self.dist.rank))
        self.data_time = 0.0  # seconds spent in make_batch since fit() started
        d = cfg.data
        self.aug = d.augment
        if self.main:
            sizes = ", ".join(f"{k} {len(v)}" for k, v in self.data.splits.items() if v)
            console.print(f"[bold]semi3d[/] {cfg.method.name} ({self.dist.world_size} process(es)): preprocessing "
                          f"{sum(map(len, self.data.splits.values()))} cases ({sizes}) ...", soft_wrap=True)
        labelled, w = self.data.cases("labelled"), self.data.weights
        self.sampler_l = PatchSampler(labelled, d.patch_size, d.fg_oversample, self.gen,
                                      None if w is None else [w[c.id] for c in labelled])
        unl = self.data.cases("unlabelled")
        self.sampler_u = PatchSampler(unl, d.patch_size, d.fg_oversample, self.gen) if unl else None
        if self.main:
            for note in (mixed_orientations(labelled + unl), shared_annotation_offsets(labelled, d.patch_size)):
                if note:
                    console.print(f"[yellow]warning:[/] {note}", soft_wrap=True)
        self.services = TrainerServices(self)
        if self.sampler_u is None and self.method.needs_unlabelled:  # fail now, not mid-run
            raise InputError("splits.unlabelled", f"method {cfg.method.name!r} needs unlabelled cases but the split is empty")
        check_classes(cfg.inference.largest_component_classes, self.data.num_classes, "inference.largest_component_classes")
        if self.data.ignore_value is not None and not self.method.ignore_label:
            raise InputError(f"method {cfg.method.name}", "does not support nnU-Net's ignore label, which this "
                                                          "dataset declares; use another method or relabel those voxels")
        self.val_cases = self.data.cases("validation")[: t.val_max_cases]
        self.step, self.best, self.best_step = 0, -1.0, -1
        self.saved_step: int | None = None
        self.log = RunLog(self.run, enabled=self.main, tensorboard=resolve_tensorboard(t.tensorboard))
        if resume:
            state = ckpt.load(self.run.last)  # every rank checks (each refuses, none waits); rank 0 records
            check_resume_config(self.run, cfg, state["step"], record=self.main)
            self._load(state)

    # batches -------------------------------------------------------------------------------
    def make_batch(self, n_l: int, n_u: int) -> Batch:
        img_l, lab_l, ids_l = self.sampler_l.sample(n_l)
        img_l, lab_l = augment(img_l, lab_l, self.aug, self.gen)
        img_u, ids_u = None, []
        if n_u:
            if self.sampler_u is None:
                raise InputError("splits.unlabelled", f"method {self.cfg.method.name!r} needs unlabelled cases but the split is empty")
            img_u, _, ids_u = self.sampler_u.sample(n_u)
            img_u, _ = augment(img_u, None, self.aug, self.gen)
        fmt = torch.channels_last_3d if self.channels_last else torch.contiguous_format
        img_l = img_l.to(self.device, memory_format=fmt)
        img_u = None if img_u is None else img_u.to(self.device, memory_format=fmt)
        return Batch(img_l, lab_l.to(self.device), img_u, ids_l, ids_u)

    # one step ------------------------------------------------------------------------------
    def train_step(self, step: int) -> dict[str, float]:
        m, t = self.method, self.cfg.train
        n_l, n_u = m.batch_plan(step)
        t0 = time.perf_counter()
        batch = self.make_batch(n_l, n_u)
        self.data_time += time.perf_counter() - t0
        active = m.active_groups(step)
        f = self.schedule.factor(step)
        for g in active:
            for pg in self.optimizers[g].param_groups:
                pg["lr"] = self.base_lr[g] * f
            self.optimizers[g].zero_grad(set_to_none=True)
        m.train()
        m.log = {}
        with autocast(self.device, self.precision):
            losses = m.training_step(batch, step)
        missing = set(active) - set(losses)
        if missing:
            raise RuntimeError(f"method {self.cfg.method.name} returned no loss for active group(s) {missing}")
        total = sum(losses[g] for g in active)
        self.scaler.scale(total).backward()
        if self.dist.enabled:
            D.average_gradients([m.groups[g] for g in active], self.dist.world_size)
        for g in active:
            opt = self.optimizers[g]
            if t.grad_clip:
                self.scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(m.groups[g].parameters(), t.grad_clip)
            self.scaler.step(opt)
        self.scaler.update()
        m.after_step(step)
        if self.dist.enabled:
            D.broadcast_buffers(m)
        if self.average is not None:
            self.average.update(m.groups, step)
        rec = {f"loss/{g}": float(v.detach()) for g, v in losses.items()}
        rec.update({f"lr/{g}": self.base_lr[g] * f for g in active})
        rec.update(n_l=n_l, n_u=n_u, **m.log)
        if self.dist.enabled:  # losses and float diagnostics: the mean over ranks, in one all-reduce
            keys = [k for k, v in rec.items() if isinstance(v, float) and not k.startswith("lr/")]
            vals = D.all_reduce_sum(torch.tensor([rec[k] for k in keys], dtype=torch.float64)) / self.dist.world_size
            rec.update({k: float(v) for k, v in zip(keys, vals)})
        self._check_finite(step, rec)
        return rec

    def _check_finite(self, step: int, rec: dict) -> None:
        """Stop on a NaN / infinite loss (the same verdict on every rank: ``rec`` is reduced) before
        the diverged weights reach a checkpoint; the last checkpoint stays resumable."""
        bad = [f"{k.split('/', 1)[1]} loss is {v}" for k, v in rec.items() if k.startswith("loss/") and not math.isfinite(v)]
        if bad:
            last = self.run.last
            held = f"{last} holds step {self.saved_step}" if self.saved_step is not None else "no checkpoint was written"
            raise InputError(self.run.config,
                             f"training diverged at step {step + 1}: {', '.join(bad)} (precision {self.precision}); "
                             f"stopped without saving it ({held}). Resume with --resume and a safer setting, e.g. "
                             f"--set precision=fp32 or a lower train.optimizer.lr")

    # validation ----------------------------------------------------------------------------
    def predictor(self) -> torch.nn.Module:
        """The network the run validates, selects and saves: the method's predictor, built on the
        averaged weights when ``train.weight_average`` is set."""
        return self.method.predictor() if self.average is None else self.average.predictor(self.method)

    @torch.inference_mode()
    def validate(self) -> dict[str, float]:
        """Mean foreground Dice per class over the validation cases, at training resolution
        (cases sharded over ranks, sums gathered): ``val/dice`` and ``val/dice_<class>`` of the
        predictor, ``val/dice@<name>`` of each of the method's ``monitors()`` and, with weight
        averaging, ``val/dice@live`` of the live (not averaged) predictor."""
        out = {}
        live = {} if self.average is None else {"live": self.method.predictor()}
        for name, net in {"": self.predictor(), **live, **self.method.monitors()}.items():
            dices = self._dices(net, overlay_tag=None if name else "val/overlay")
            key = f"val/dice@{name}" if name else "val/dice"
            out[key] = float(dices.mean())
            if not name:
                out.update({f"val/dice_{n}": float(d) for n, d in zip(self.data.class_names[1:], dices)})
        return out

    def _dices(self, net: torch.nn.Module, overlay_tag: str | None = None) -> torch.Tensor:
        """Foreground Dice per class (K - 1,) of ``net`` averaged over the validation cases; with
        ``overlay_tag`` the first case's middle Z slice (image, label, prediction) goes to the log
        as a picture (TensorBoard)."""
        was = net.training
        net.eval()
        k = self.data.num_classes
        dices = torch.zeros(k - 1)
        for c in D.shard(self.val_cases):
            probs = predict_probs(net, torch.from_numpy(c.image), self.cfg.data.patch_size, self.cfg.inference,
                                  self.device, self.precision)
            pred = class_argmax(probs, 0)
            ref = torch.from_numpy(c.label.astype("int64"))
            if overlay_tag is not None and self.log.tensorboard:
                z = c.image.shape[-1] // 2
                self.log.image(self.step, overlay_tag, overlay(c.image[0, :, :, z], c.label[:, :, z], pred[:, :, z].numpy()))
                overlay_tag = None
            dices += hard_dice(pred, ref, k)
        net.train(was)
        return D.all_reduce_sum(dices) / max(len(self.val_cases), 1)

    # checkpoints ---------------------------------------------------------------------------
    def _state(self) -> dict:
        """The resumable state (a collective call when distributed: every rank's RNG is gathered)."""
        rng = {"sampler": self.gen.get_state(), "torch": torch.get_rng_state(),
               "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}
        return {
            "step": self.step,
            "method": self.method.state_dict(),
            "optimizers": {g: o.state_dict() for g, o in self.optimizers.items()},
            "scaler": self.scaler.state_dict(),
            "weight_average": None if self.average is None else self.average.state_dict(),
            "rng": rng, "rng_ranks": D.all_gather_objects(rng) if self.dist.enabled else None,
            "best": self.best, "best_step": self.best_step,
        }

    def _load(self, s: dict) -> None:
        self.step = self.saved_step = s["step"]
        state = s["method"]
        if s.get("guides") is not None and "_extra_state" not in state:  # checkpoints before the method owned them
            state = {**state, "_extra_state": {"guides": s["guides"]}}
        self.method.load_state_dict(state)
        for g, o in self.optimizers.items():
            o.load_state_dict(s["optimizers"][g])
        self.scaler.load_state_dict(s["scaler"])
        if self.average is not None:
            self.average.load_state_dict(s["weight_average"])
        ranks = s.get("rng_ranks")
        if self.dist.enabled:
            if not ranks or len(ranks) != self.dist.world_size:
                raise InputError(self.run.last,
                                 f"saved by {len(ranks or [0])} process(es); resume it with the same number "
                                 f"({self.dist.world_size} now)")
            s = {**s, "rng": ranks[self.dist.rank]}
        elif ranks and len(ranks) > 1:
            raise InputError(self.run.last,
                             f"saved by {len(ranks)} processes; resume it with torchrun --nproc-per-node {len(ranks)}")
        self.gen.set_state(s["rng"]["sampler"])
        torch.set_rng_state(s["rng"]["torch"])
        if s["rng"]["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(s["rng"]["cuda"])
        self.best, self.best_step = s["best"], s["best_step"]
        self.method.restore(self.services)
        self.log.truncate(self.step)

    def save_model(self, which: str) -> None:
        """The inference model alone as ``checkpoints/model_<which>.pt`` (predictor weights + what is
        needed to rebuild and feed it); written by rank 0 only."""
        if not self.main:
            return
        ckpt.save_atomic(ckpt.inference_record(self.method, self.cfg, self.step, self.data.in_channels,
                                               self.data.num_classes, self.data.class_names, self.predictor()),
                         self.run.model(which))

    # the loop ------------------------------------------------------------------------------
    def fit(self, stop_at: int | None = None) -> dict:
        """Train until ``train.iterations`` (or until ``stop_at``, leaving a resumable checkpoint).
        Ctrl-C / SIGTERM: :class:`~semi3d.engine.interrupt.Interrupted` after a checkpoint of the step."""
        t = self.cfg.train
        end = min(stop_at or t.iterations, t.iterations)
        start_step, t0, self.data_time = self.step, time.time(), 0.0
        pace = Pace(max(50, t.iterations // 10), start=start_step)  # the printed rate and ETA: recent steps
        columns = [TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                   TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}")]
        plain = t.progress_bar and self.main and not console.is_terminal
        with StopRequest(announce=self.main) as stop, self.log, \
                Progress(*columns, console=console, disable=not (t.progress_bar and self.main) or plain) as bar:
            task = bar.add_task(self.cfg.name, total=t.iterations, completed=self.step, info="")
            while self.step < end:
                step = self.step
                rec = self.train_step(step)
                self.step = step + 1
                if self.dist.enabled:  # whichever rank saw the signal, every rank stops after this step
                    stop.signum = D.all_reduce_max(stop.signum or 0) or None
                end = self.step if stop.signum else end
                self.method.periodic(step, self.services)
                if self.step % t.log_every == 0 or self.step == t.iterations:
                    rec["time"] = time.time() - t0
                    rec["sec_per_it"] = rec["time"] / (self.step - start_step)
                    rec["data_sec_per_it"] = self.data_time / (self.step - start_step)
                    self.log.write(self.step, rec)
                    if plain:  # no terminal (nohup, SLURM, a pipe): the bar draws nothing, so print
                        console.print(progress_line(self.step, t.iterations, rec, pace.add(self.step, rec["time"])),
                                      highlight=False, soft_wrap=True)
                    bar.update(task, info=" ".join(f"{k.split('/')[-1]}={v:.3f}" for k, v in rec.items() if k.startswith("loss/")))
                if self.val_cases and (self.step % t.val_every == 0 or self.step == t.iterations):
                    v = self.validate()
                    self.log.write(self.step, v)
                    if self.main:
                        bar.console.print(f"step {self.step}: validation Dice {100 * v['val/dice']:.2f}")
                    if v["val/dice"] > self.best:
                        self.best, self.best_step = v["val/dice"], self.step
                        self.save_model("best")
                if self.step % t.checkpoint_every == 0 or self.step in (end, t.iterations):
                    state = self._state()
                    if self.main:
                        ckpt.save_atomic(state, self.run.last)
                        self.log.finish()  # log.csv and progress.png as training goes
                    self.saved_step = self.step
                    D.barrier()  # a resumed run finds every rank's checkpoint complete
                bar.update(task, completed=self.step)
        if self.step < t.iterations:
            if stop.signum:
                raise Interrupted(stop.signum, self.step, self.run.last)
            return {"iterations": self.step, "stopped": True}
        self.save_model("final")
        self.log.finish()
        summary = {"iterations": self.step, "wall_time_s": time.time() - t0, "best_val_dice": self.best,
                   "best_step": self.best_step, "selection": t.selection, "world_size": self.dist.world_size}
        if self.main:
            write_text(self.run.summary, json.dumps(summary, indent=1))
        D.barrier()
        return summary


def train(cfg: RunConfig, resume: bool = False) -> dict:
    """Train a run described by ``cfg`` (see ``semi3d train``)."""
    return Trainer(cfg, resume=resume).fit()
