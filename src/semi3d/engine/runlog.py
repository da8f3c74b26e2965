"""The run's metrics log: ``log.jsonl`` (one JSON object per logged step), mirrored to ``log.csv``
and ``progress.png`` curves at every checkpoint and at the end, and optionally to TensorBoard event
files in ``<run>/tensorboard`` (scalars as logged, validation overlays); :func:`progress_line` is
the plain progress line printed where there is no terminal, :data:`console` where every progress line
goes (stderr, so stdout keeps a command's results)."""
from __future__ import annotations

import csv
import io
import json
from collections import deque
from pathlib import Path

import numpy as np
from rich.console import Console

from ..atomic import atomic_file, write_text
from ..errors import InputError
from ..losses import without_ignored
from .rundir import RunDir

console = Console(stderr=True)

# wall-clock fields of the logged records, the only ones that differ between identical runs:
# seconds since this process started training, mean seconds per iteration since then, and the part
# of it spent making batches (patch sampling + augmentation + transfer, synchronous).
TIMING_KEYS = ("time", "sec_per_it", "data_sec_per_it")


def tensorboard_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorboard") is not None


def resolve_tensorboard(option: bool | None) -> bool:
    """``train.tensorboard``: None = on when the package is installed; True requires it."""
    if option is None:
        return tensorboard_available()
    if option and not tensorboard_available():
        raise InputError("train.tensorboard", "true needs the 'tensorboard' package (pip install tensorboard); "
                         "or set it to false / leave it unset")
    return option


def overlay(image: np.ndarray, label: np.ndarray | None, pred: np.ndarray) -> np.ndarray:
    """An RGB picture (H, W, 3) uint8 of a 2D slice: the image in grey (min-max), the reference
    label's foreground in green and the prediction's in red (yellow where they agree); voxels under
    nnU-Net's ignore label are shown as neither."""
    if label is not None:
        pred, label = without_ignored(pred, label)
    g = image.astype(np.float32)
    g = (g - g.min()) / max(float(g.max() - g.min()), 1e-8)
    rgb = np.stack([g, g, g], -1) * 0.7
    if label is not None:
        rgb[..., 1] += 0.3 * (label > 0)
    rgb[..., 0] += 0.3 * (pred > 0)
    return (np.clip(rgb, 0, 1) * 255).astype(np.uint8)


class RunLog:
    """Args: run_dir (a folder or :class:`RunDir`); enabled: False on distributed ranks > 0 (only
    rank 0 writes); tensorboard: also write TensorBoard event files (needs the ``tensorboard`` package)."""

    def __init__(self, run_dir: Path | RunDir, enabled: bool = True, tensorboard: bool = False):
        self.run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
        self.path = self.run.log
        self.enabled = enabled
        self.tensorboard = tensorboard and enabled
        self._tb = None
        self._purge_step: int | None = None

    def _writer(self):
        if self._tb is None:
            from torch.utils.tensorboard import SummaryWriter

            # a resumed run drops the events logged after its checkpoint, as log.jsonl does
            self._tb = SummaryWriter(str(self.run.tensorboard), purge_step=self._purge_step)
            self._purge_step = None  # once: a writer reopened after close() keeps what was written since
        return self._tb

    def write(self, step: int, rec: dict) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **rec}) + "\n")
        if self.tensorboard:
            tb = self._writer()
            for k, v in rec.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    tb.add_scalar(k, v, step)

    def image(self, step: int, tag: str, rgb: np.ndarray) -> None:
        """A (H, W, 3) uint8 picture into TensorBoard (nothing without it)."""
        if self.tensorboard:
            self._writer().add_image(tag, rgb, step, dataformats="HWC")

    def records(self) -> list[dict]:
        if not self.path.is_file():
            return []
        return [json.loads(x) for x in self.path.read_text().splitlines() if x.strip()]

    def truncate(self, step: int) -> None:
        """Drop records after ``step`` (used on resume, so the log equals an uninterrupted run's)."""
        if not self.enabled:
            return
        keep = [r for r in self.records() if r["step"] <= step]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in keep))
        self._purge_step = step + 1

    def __enter__(self) -> "RunLog":
        return self

    def __exit__(self, *exc) -> None:
        """Close the TensorBoard writer (its thread and file); a later write opens a new one."""
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def finish(self) -> None:
        """``log.csv`` (every record, one column per key) and ``progress.png`` from ``log.jsonl``."""
        if not self.enabled:
            return
        recs = self.records()
        keys = ["step"] + sorted({k for r in recs for k in r} - {"step"})
        buf = io.StringIO()
        w = csv.DictWriter(buf, keys)
        w.writeheader()
        w.writerows(recs)
        write_text(self.run.log_csv, buf.getvalue())
        self.plot()
        if self._tb is not None:
            self._tb.flush()

    def plot(self) -> None:
        """Loss, learning-rate, validation-Dice and batch-composition curves in progress.png."""
        if not self.enabled:
            return
        recs = self.records()
        if not recs:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 4, figsize=(18, 3.6))
        panels = [("loss/", "loss"), ("lr/", "learning rate"), ("val/dice", "validation Dice"), ("n_u", "unlabelled per batch")]
        for ax, (prefix, title) in zip(axes, panels):
            keys = sorted({k for r in recs for k in r if k.startswith(prefix)})
            for k in keys:
                pts = [(r["step"], r[k]) for r in recs if k in r]
                ax.plot(*zip(*pts), label=k.split("/", 1)[-1] if "/" in k else k)
            ax.set_title(title)
            ax.set_xlabel("iteration")
            if keys and len(keys) > 1:
                ax.legend(fontsize=7)
        fig.tight_layout()
        with atomic_file(self.run.progress, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=80)
        plt.close(fig)


def eta_text(done: int, total: int, sec_each: float) -> str:
    """The time left for ``total - done`` items at ``sec_each`` seconds each: ``58m12s``, ``1h05m``."""
    eta = int(round(max(total - done, 0) * sec_each))
    h, m, s = eta // 3600, eta % 3600 // 60, eta % 60
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class Pace:
    """Seconds per item over about the last ``window`` items, for an ETA that follows a run whose
    step cost changes (M&N's stage 1 trains both models per step, stage 2 one: a mean since the
    start put the ETA 30-45 % high through stage 2 of an LA run). Marks are ``(items done,
    seconds elapsed)``; the first one is the start."""

    def __init__(self, window: int, start: int = 0):
        self.window = max(int(window), 1)
        self.marks: deque[tuple[int, float]] = deque([(start, 0.0)])

    def add(self, done: int, seconds: float) -> float:
        """Record a mark; seconds per item since the oldest mark still within ``window`` items
        (the mark just before that window when none is, so a window is never empty)."""
        self.marks.append((done, seconds))
        while len(self.marks) > 2 and self.marks[1][0] <= done - self.window:
            self.marks.popleft()
        d0, t0 = self.marks[0]
        return (seconds - t0) / max(done - d0, 1)


def progress_line(step: int, total: int, rec: dict, sec_per_it: float) -> str:
    """``step 120/1840 (6.5 %)  loss net2d=0.1234 net3d=0.4567  2.03 s/it  ETA 58m12s``, the rate
    and the ETA from ``sec_per_it`` (the trainer passes its :class:`Pace`)."""
    losses = " ".join(f"{k.split('/', 1)[1]}={v:.4f}" for k, v in rec.items() if k.startswith("loss/"))
    return (f"step {step}/{total} ({100 * step / total:.1f} %)  loss {losses}  {sec_per_it:.2f} s/it  "
            f"ETA {eta_text(step, total, sec_per_it)}")
