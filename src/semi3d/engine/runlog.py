"""The run's metrics log: ``log.jsonl`` (one JSON object per logged step), mirrored to ``log.csv``
and ``progress.png`` curves at every checkpoint and at the end; :func:`progress_line` is the plain
progress line printed where there is no terminal."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from ..atomic import write_text

# wall-clock fields of the logged records, the only ones that differ between identical runs:
# seconds since this process started training, mean seconds per iteration since then, and the part
# of it spent making batches (patch sampling + augmentation + transfer, synchronous).
TIMING_KEYS = ("time", "sec_per_it", "data_sec_per_it")


class RunLog:
    def __init__(self, run_dir: Path, enabled: bool = True):
        self.path = Path(run_dir) / "log.jsonl"
        self.run_dir = Path(run_dir)
        self.enabled = enabled  # False on distributed ranks > 0: only rank 0 writes

    def write(self, step: int, rec: dict) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **rec}) + "\n")

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
        write_text(self.run_dir / "log.csv", buf.getvalue())
        self.plot()

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
        tmp = self.run_dir / "progress.tmp.png"
        fig.savefig(tmp, dpi=80)
        plt.close(fig)
        tmp.replace(self.run_dir / "progress.png")


def progress_line(step: int, total: int, rec: dict, sec_per_it: float) -> str:
    """``step 120/1840 (6.5 %)  loss net2d=0.1234 net3d=0.4567  2.03 s/it  ETA 58m12s``."""
    losses = " ".join(f"{k.split('/', 1)[1]}={v:.4f}" for k, v in rec.items() if k.startswith("loss/"))
    eta = int(round(max(total - step, 0) * sec_per_it))
    h, m, s = eta // 3600, eta % 3600 // 60, eta % 60
    eta_s = f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"
    return f"step {step}/{total} ({100 * step / total:.1f} %)  loss {losses}  {sec_per_it:.2f} s/it  ETA {eta_s}"
