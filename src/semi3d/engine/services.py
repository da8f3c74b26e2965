"""The trainer's side of :class:`semi3d.methods.base.Services`: what a method may use between steps."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import distributed as D
from .sliding_window import predict_probs

__all__ = ["TrainerServices"]


class TrainerServices:
    """:class:`~semi3d.methods.base.Services` over a trainer's unlabelled sampler, config, device,
    precision and run folder."""

    def __init__(self, trainer: Any):
        self._tr = trainer

    @property
    def artefacts(self) -> Path:
        return self._tr.run.path

    @property
    def is_main(self) -> bool:
        return bool(self._tr.main)

    def unlabelled(self) -> list[tuple[str, torch.Tensor]]:
        s = self._tr.sampler_u
        return [] if s is None else [(v.id, v.image) for v in s.vols]

    def predict(self, net: nn.Module, image: torch.Tensor) -> torch.Tensor:
        tr = self._tr
        return predict_probs(net, image, tr.cfg.data.patch_size, tr.cfg.inference, tr.device, tr.precision)

    def set_guide(self, case_id: str, mask: np.ndarray) -> None:
        self._tr.sampler_u.set_guide(case_id, mask)

    def shard(self, items: list) -> list:
        return D.shard(items)

    def gather(self, obj: Any) -> list:
        return D.all_gather_objects(obj)
