"""``semi3d predict MINING_RUN IMAGES... -o OUT``: segment 2D images (Kvasir-SEG style RGB photos) with
the small model a mining run on an image folder trained (its last finished round, or ``round``).

Each image is read as the run read its images (:func:`~semi3d.mining.data2d.read_image_sample`:
RGB, longest side resized to ``images.max_size``, z-scored per channel), segmented, and the class
probabilities resized back to the image's own size (bilinear, ``align_corners=False``) before the
argmax, so the mask ``<out>/<stem>.png`` (0 / 255) lies on the input's pixels. Every input is read
before anything is written; each mask is written atomically, one image in memory at a time. A
mining run on volumes trains its model as a run folder per round, ``RUN/round<r>``
(:func:`volume_round_run`): ``semi3d predict RUN VOLUMES...`` segments volumes slice by slice with
it, as every 3D run folder predicts.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..engine import checkpoint as ckpt
from ..engine.precision import pick_device, resolve_precision
from ..engine.rundir import RunDir
from ..engine.runlog import RunLog
from ..errors import InputError
from ..registry import NETS2D
from .config import MiningConfig, load_mining_config
from .data2d import IMAGE_CHANNELS, IMAGE_CLASSES, IMAGE_SUFFIXES, index_images, read_image_sample
from .export import write_masks_png
from .train2d import predict_probabilities

__all__ = ["is_mining_run", "predict_images", "volume_round_run"]


def is_mining_run(path: Path) -> bool:
    """Whether ``path`` is a mining run folder (``semi3d mine``'s: ``checkpoints/small_round<r>.pt``)."""
    return Path(path).is_dir() and any(RunDir(path).checkpoints.glob("small_round*.pt"))


def _image_files(inputs: Sequence[Path]) -> list[Path]:
    files: list[Path] = []
    for p in map(Path, inputs):
        if p.is_dir():
            found = list(index_images(p).values())
            if not found:
                raise InputError(p, f"no image files ({' '.join(IMAGE_SUFFIXES)}) in this folder")
            files += found
        elif p.is_file():
            if p.suffix.lower() not in IMAGE_SUFFIXES:
                raise InputError(p, f"not a 2D image file; expected one of {' '.join(IMAGE_SUFFIXES)}")
            files.append(p)
        else:
            raise InputError(p, "no such file or folder")
    seen: dict[str, Path] = {}
    for f in files:
        if f.stem in seen:
            raise InputError(f, f"would write the same mask {f.stem}.png as {seen[f.stem]}; predict them into separate folders")
        seen[f.stem] = f
    return files


def _round(run: RunDir, round_: int | None) -> int:
    """``round_``, or the last finished round; InputError unless it finished."""
    done = [rec["round"] for rec in RunLog(run).records()]
    if not done:
        raise InputError(run.path, "no finished mining round: nothing to predict with")
    r = done[-1] if round_ is None else round_
    if r not in done:
        raise InputError(run.path, f"round {r} did not finish; finished rounds: {', '.join(map(str, done))}")
    return r


def volume_round_run(run_dir: Path, round_: int | None = None) -> Path | None:
    """For a mining run on volumes, the run folder of round ``round_``'s training (None: the last
    finished round), ``RUN/round<r>``: a 3D run folder whose model segments volumes slice by slice
    (``semi3d predict``); None for a mining run on 2D images."""
    run = RunDir(run_dir)
    if load_mining_config(run.config).images is not None:
        return None
    r = _round(run, round_)
    folder = run / f"round{r}"
    if not RunDir(folder).config.is_file():
        raise InputError(folder, f"missing: round {r} trained no model of its own (0 iterations); give the round "
                                 "whose training it kept")
    return folder


def _model(run: RunDir, cfg: MiningConfig, round_: int | None) -> torch.nn.Module:
    """The small model after round ``round_`` (None: the last finished), in eval mode."""
    r = _round(run, round_)
    net = NETS2D.build(cfg.model.name, in_channels=IMAGE_CHANNELS, num_classes=IMAGE_CLASSES, **cfg.model.options)
    net.load_state_dict(ckpt.load(run.checkpoints / f"small_round{r}.pt"))
    return net.eval()


def predict_images(run_dir: Path, inputs: Sequence[Path], out: Path, round_: int | None = None,
                   precision: str = "auto", skip_existing: bool = False,
                   progress: Callable[[int, int, list[Path]], None] | None = None) -> list[Path]:
    """Write ``<out>/<stem>.png`` (0 / 255, the input's size) for every image file of ``inputs``
    (files, or folders of them) with the small model of mining run ``run_dir`` after round
    ``round_`` (None: the last finished). ``precision``: auto / fp32 / bf16 / fp16 (resolved as in
    training); ``skip_existing``: leave out the images whose mask is there (``--continue``).
    ``progress(i, n, [path])`` after each mask. Returns the masks written."""
    run = RunDir(run_dir)
    cfg = load_mining_config(run.config)
    if cfg.images is None:
        raise InputError(run.path, "a mining run on volumes: predict volumes with its round's run folder, "
                                   f"semi3d predict {run.path}/round<r> VOLUMES...")
    net = _model(run, cfg, round_)
    device = pick_device(cfg.device)
    precision = resolve_precision(precision, device)
    files = _image_files(inputs)
    if skip_existing:
        files = [f for f in files if not (Path(out) / f"{f.stem}.png").is_file()]

    def read(f: Path):
        return read_image_sample(f, None, max_size=cfg.images.max_size)

    for f in files:  # every input read (and checked) before anything is written
        read(f)
    written: list[Path] = []
    for i, f in enumerate(files):
        with Image.open(f) as im:
            w, h = im.size
        probs = torch.from_numpy(predict_probabilities(net, [read(f)], 1, device, precision)[0])
        if tuple(probs.shape[1:]) != (h, w):
            probs = F.interpolate(probs[None], size=(h, w), mode="bilinear", align_corners=False)[0]
        written += write_masks_png(out, [(f.stem, probs.argmax(0).numpy().astype(np.uint8))])
        if progress:
            progress(i + 1, len(files), written[-1:])
    return written
