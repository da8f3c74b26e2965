"""Multi-process training with ``torch.distributed``, launched by ``torchrun``.

One process per device (or per CPU socket share). Each rank samples its own labelled/unlabelled
patches (sampler seeded with ``seed + rank``), computes the losses of the same method step on its own
batch, and the gradients of every optimised group are averaged across ranks with one coalesced
all-reduce per group before the optimiser steps. This is what DistributedDataParallel does, written
explicitly so that methods owning several networks (M&N's 2D and 3D models, EMA teachers, CPS's pair)
need no wrapping: the networks keep their module paths and state-dict keys, teachers that are never
optimised stay identical because they are updated from identical students, and normalisation
buffers (BatchNorm running statistics) are broadcast from rank 0 after every step, as DDP does.

Batch composition schedules (LRG sampling) depend only on the step, so they are identical on every
rank. Validation and pseudo-mask passes are sharded by case (``shard``) and gathered
(``all_gather_objects`` / ``all_reduce_sum``). Only rank 0 writes checkpoints, logs and the config.

Backend: ``nccl`` when the run uses CUDA, ``gloo`` on CPU. The effective batch is
``world_size x train.batch_size``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import torch
import torch.distributed as dist
from torch import nn

RANK_SEEDS = True  # tests set False: every rank then samples the same patches as a single process


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group described by torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK,
    MASTER_ADDR, MASTER_PORT). A single process (no WORLD_SIZE or 1) gets ``DistInfo()``."""
    world = env_world_size()
    if world <= 1:
        return DistInfo()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(local)
        dist.init_process_group(backend, rank=rank, world_size=world)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local)


def current() -> DistInfo:
    """The process group this process is in (``DistInfo()`` when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return DistInfo()


def _comm_device() -> torch.device:
    """Where collective buffers must live: the current GPU for nccl, CPU for gloo."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def rank_seed(seed: int, rank: int) -> int:
    """Seed of a rank's patch sampler (rank 0 keeps ``seed``, so one process equals rank 0)."""
    return seed + rank if RANK_SEEDS else seed


def barrier() -> None:
    if current().enabled:
        dist.barrier()


def average_gradients(nets: Iterable[nn.Module], world_size: int) -> None:
    """Average the ``.grad`` of every trainable parameter across ranks, in one flat buffer per
    dtype/device. A parameter without a gradient on this rank contributes zeros; one without a
    gradient on every rank keeps ``grad = None`` (so the optimiser skips it, as in one process)."""
    params = [p for n in nets for p in n.parameters() if p.requires_grad]
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.int32, device=_comm_device())
    dist.all_reduce(has)
    params = [p for p, h in zip(params, has.tolist()) if h > 0]
    groups: dict[tuple, list[torch.nn.Parameter]] = {}
    for p in params:
        groups.setdefault((p.dtype, p.device), []).append(p)
    for ps in groups.values():
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in ps]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= world_size
        i = 0
        for p in ps:
            n = p.numel()
            g = flat[i:i + n].view_as(p)
            if p.grad is None:
                p.grad = g.clone()
            else:
                p.grad.copy_(g)
            i += n


def broadcast_buffers(module: nn.Module) -> None:
    """Rank 0's buffers (e.g. BatchNorm running statistics) to every rank."""
    for b in module.buffers():
        if b.is_floating_point() or b.dtype in (torch.int64, torch.int32):
            dist.broadcast(b.data, 0)


def broadcast_parameters(module: nn.Module) -> None:
    """Rank 0's parameters and buffers to every rank (identical start even if init differed)."""
    with torch.no_grad():
        for p in module.parameters():
            dist.broadcast(p.data, 0)
    broadcast_buffers(module)


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum of ``t`` over ranks (``t`` itself when not distributed)."""
    if current().enabled:
        dev = t.device
        t = t.to(_comm_device(), copy=True)
        dist.all_reduce(t)
        t = t.to(dev)
    return t


def all_reduce_max(value: int) -> int:
    """The largest ``value`` over ranks (``value`` itself when not distributed)."""
    if not current().enabled:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order."""
    info = current()
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def shard(items: Sequence[Any]) -> list[Any]:
    """This rank's share of ``items`` (round robin: rank r gets items r, r + W, ...)."""
    info = current()
    return list(items[info.rank::info.world_size])
