"""The interface between one semi-supervised method and the shared trainer.

A method is an ``nn.Module`` that owns its networks (so ``state_dict`` covers teachers and EMA
copies too) and declares:
- ``groups``: the trainable networks by name, each with its own optimiser and lr schedule;
- ``active_groups(step)``: which groups are stepped at ``step`` (default: all);
- ``batch_plan(step)``: how many labelled and unlabelled patches it wants at ``step``;
- ``training_step(batch, step) -> {group: loss}`` where everything method-specific happens;
- ``after_step(step)``: e.g. EMA updates, after the optimiser steps;
- ``predictor()``: the network used for inference, mapping (N, C, X, Y, Z) -> (N, K, X, Y, Z) logits,
  and ``predictor_spec()``: the network spec that rebuilds it from a saved model file.
Optional: ``periodic(step, services)`` for method work on whole volumes (e.g. pseudo-mask passes)
through the narrow :class:`Services` the trainer lends, ``restore(services)`` after a resume,
``log``: a dict of scalars the method wants logged at this step, ``monitors()``: extra networks
validated beside the predictor (monitoring only). State the trainer must checkpoint
lives in the method's own ``state_dict`` (``get_extra_state`` for non-tensor state).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, TypeVar

import numpy as np
import torch
from pydantic import ConfigDict, ValidationError
from torch import nn

from ..config import NetSpec, RunConfig, StrictModel
from ..errors import InputError, check_options
from ..registry import NETS2D, NETS3D


@dataclass
class Batch:
    """Patches for one step. image_l (n_l, C, X, Y, Z) float; label_l (n_l, X, Y, Z) int64;
    image_u (n_u, C, X, Y, Z) or None when n_u == 0."""

    image_l: torch.Tensor
    label_l: torch.Tensor
    image_u: torch.Tensor | None = None
    ids_l: list[str] = field(default_factory=list)
    ids_u: list[str] = field(default_factory=list)


@dataclass
class MethodContext:
    """What a method may know about the run when it is built."""

    cfg: RunConfig
    in_channels: int
    num_classes: int
    total_iterations: int
    lr_factor: Callable[[int], float] = lambda step: 1.0
    channels_last: bool = False  # the trainer stores 3D conv weights and batches channels-last


class Services(Protocol):
    """What the trainer lends a method between steps (``periodic``) and after a resume
    (``restore``); a method sees nothing else of the trainer.

    ``unlabelled()``: ``[(case id, image (C, X, Y, Z))]`` of the unlabelled sampler, in its order
    (the volumes padded to at least the patch, as crops see them; ``[]`` without unlabelled data).
    ``predict(net, image)``: softmax probabilities ``(K, X, Y, Z)`` of a volume by sliding window
    with the run's patch, inference options, device and precision.
    ``set_guide(case id, mask (X, Y, Z) bool)``: foreground crops of that case centre on the mask.
    ``shard(items)`` / ``gather(obj)``: this process's share of a list / every process's object
    (distributed runs; one process: the list itself / ``[obj]``).
    ``artefacts``: the run folder (write there only from the main process, ``is_main``).
    """

    artefacts: Path
    is_main: bool

    def unlabelled(self) -> list[tuple[str, torch.Tensor]]: ...

    def predict(self, net: nn.Module, image: torch.Tensor) -> torch.Tensor: ...

    def set_guide(self, case_id: str, mask: np.ndarray) -> None: ...

    def shard(self, items: list) -> list: ...

    def gather(self, obj: Any) -> list: ...


class Method(nn.Module):
    """Base class. Subclasses set ``self.groups`` (an ``nn.ModuleDict``) in ``__init__``."""

    groups: nn.ModuleDict
    Options: type[MethodOptions]  # the typed ``method.options`` (``semi3d config --schema`` lists them)
    needs_unlabelled: bool = False  # True: the trainer refuses an empty unlabelled split up front (and
    # `semi3d plan` warns of one); an instance may clear it when its options train on labels only
    ignore_label: bool = True  # False: the trainer refuses a dataset with nnU-Net's ignore label up front

    def __init__(self, ctx: MethodContext):
        super().__init__()
        self.ctx = ctx
        self.num_classes = ctx.num_classes
        self.log: dict[str, float] = {}

    # networks -----------------------------------------------------------------------------
    def build_net3d(self, **override: Any) -> nn.Module:
        spec = self.ctx.cfg.model.net3d
        return NETS3D.build(spec.name, in_channels=self.ctx.in_channels, num_classes=self.num_classes,
                            **{**spec.options, **override})

    def build_net2d(self) -> nn.Module:
        spec = self.ctx.cfg.model.net2d
        if spec is None:
            raise InputError("model.net2d", f"method {self.ctx.cfg.method.name!r} needs a 2D network")
        return NETS2D.build(spec.name, in_channels=self.ctx.in_channels, num_classes=self.num_classes,
                            **spec.options)

    # schedule hooks -----------------------------------------------------------------------
    def active_groups(self, step: int) -> list[str]:
        return list(self.groups)

    def batch_plan(self, step: int) -> tuple[int, int]:
        """(n_labelled, n_unlabelled) patches for this step."""
        return self.ctx.cfg.train.batch_size, 0

    def training_step(self, batch: Batch, step: int) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def after_step(self, step: int) -> None:
        pass

    def periodic(self, step: int, services: "Services") -> None:
        """Work between steps, after ``step`` (0-based) completed, through ``services`` only."""

    def restore(self, services: "Services") -> None:
        """After a resume loaded the method's state dict: re-apply what lives outside the method
        (e.g. M&N's crop guides into the sampler). Default: nothing."""

    def predictor(self) -> nn.Module:
        raise NotImplementedError

    def monitors(self) -> dict[str, nn.Module]:
        """Networks the trainer validates beside ``predictor()`` at every validation, each mapping
        (N, C, X, Y, Z) -> (N, K, X, Y, Z) scores whose argmax is the prediction; logged as
        ``val/dice@<name>`` and never selected on or saved (e.g. A&D's other decoders). Default: none."""
        return {}

    def predictor_spec(self) -> NetSpec:
        """The spec (``{name, options}`` of a registered 3D network) that rebuilds ``predictor()``
        from its state dict in a saved model file; default ``model.net3d``."""
        return self.ctx.cfg.model.net3d


class MethodOptions(StrictModel):
    """Base of every method's typed ``method.options`` (a subclass named ``Options`` next to the
    method): unknown keys and wrong values are one-line errors; ``bool`` is never a number."""

    model_config = ConfigDict(**StrictModel.model_config, strict=True, frozen=True)


O = TypeVar("O", bound=MethodOptions)


def method_options(name: str, options: dict, model: type[O]) -> O:
    """``options`` validated as ``model``: every unknown key at once, else the first problem, as
    :class:`InputError` naming the key."""
    check_options(f"method.options ({name})", options, model.model_fields)
    try:
        return model.model_validate(dict(options))
    except ValidationError as e:
        err = e.errors()[0]
        loc = err["loc"]  # (option, then list indices; union member tags such as 'int' are dropped)
        key = ".".join(str(x) for x in loc[:1] + tuple(i for i in loc[1:] if isinstance(i, int)))
        where = f"method.options.{key} ({name})" if key else f"method.options ({name})"
        msg = err["msg"].removeprefix("Value error, ")
        raise InputError(where, f"{msg}, got {err['input']!r}" if key else msg) from None
