"""Two-process gloo training on CPU (what ``torchrun --nproc-per-node 2`` runs), for a one-network
method (supervised) and a several-network method with a periodic sharded pass (M&N)."""
import copy
import json
import os
import signal
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from semi3d.config import load_config
from semi3d.engine import distributed as D
from semi3d.engine import precision as P
from semi3d.engine.interrupt import Interrupted
from semi3d.engine.runlog import TIMING_KEYS
from semi3d.engine.trainer import Trainer
from semi3d.errors import InputError
from test_interrupt import _SignalledTrainer
from tiny_configs import mn_tree

WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, jobs: list, out: str, rank_seeds: bool) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    D.RANK_SEEDS = rank_seeds
    P.cpu_has_native_bf16 = lambda: False  # spawned: conftest's fp32-on-every-CPU fixture does not reach here
    try:
        for key, tree, stop in jobs:
            cfg = load_config(tree=tree)
            if stop == "refuse":  # resumed with a key that may not change: every rank refuses, none waits
                Trainer(cfg).fit(stop_at=2)
                with pytest.raises(InputError, match="cannot change seed"):
                    Trainer(load_config(tree=tree, overrides=["seed=7"]), resume=True)
                torch.save({"refused": rank}, Path(out) / f"{key}_rank{rank}.pt")
                continue
            if stop == "sigterm":  # SIGTERM reaches rank 1 only, in step 2: both ranks stop after it
                tr = (_SignalledTrainer if rank == 1 else Trainer)(cfg)
                tr.signum = signal.SIGTERM
                try:
                    tr.fit()
                    raise AssertionError(f"rank {rank} did not stop")
                except Interrupted as e:
                    assert (e.step, e.signum) == (3, signal.SIGTERM), (rank, e.step, e.signum)
                tr = Trainer(cfg, resume=True)
            else:
                tr = Trainer(cfg)
            if isinstance(stop, int):
                assert tr.fit(stop_at=stop)["stopped"]
                tr = Trainer(cfg, resume=True)
            tr.fit()
            torch.save({"state": tr.method.state_dict(), "world": tr.dist.world_size,
                        "guides": getattr(tr.method, "guide_state", lambda: None)()},
                       Path(out) / f"{key}_rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _spawn(jobs, out, rank_seeds):
    mp.spawn(_worker, args=(_free_port(), jobs, str(out), rank_seeds), nprocs=WORLD, join=True)
    return {(k, r): torch.load(Path(out) / f"{k}_rank{r}.pt", weights_only=False)
            for k, _, _ in jobs for r in range(WORLD)}


def _same(a: dict, b: dict) -> bool:
    """Equal tensors; non-tensor entries (M&N's guides in ``_extra_state``) are compared by the tests
    through ``guides``."""
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a if isinstance(a[k], torch.Tensor))


def _log(run_dir: Path) -> list[dict]:
    recs = [json.loads(x) for x in (run_dir / "log.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in recs]


@pytest.fixture
def sup_tree(tiny_tree):
    t = copy.deepcopy(tiny_tree)
    t["threads"] = 1
    t["train"].update(iterations=6, checkpoint_every=3, val_every=3)
    return t


def _single(tree) -> dict:
    n = torch.get_num_threads()
    try:
        tr = Trainer(load_config(tree=tree))
        tr.fit()
        return tr.method.state_dict()
    finally:
        torch.set_num_threads(n)


def test_two_ranks_stay_identical_and_resume_exactly(sup_tree, synth_root, tmp_path):
    runs = tmp_path / "runs"
    mn = mn_tree(synth_root, runs, name="mn", iterations=8, warmup=4, options={"guide_every": 3})
    jobs = [("full", {**sup_tree, "name": "full", "output_dir": str(runs)}, None),
            ("part", {**sup_tree, "name": "part", "output_dir": str(runs)}, 4),
            ("signal", {**sup_tree, "name": "signal", "output_dir": str(runs)}, "sigterm"),
            ("mn", mn, None), ("refuse", {**sup_tree, "name": "refuse", "output_dir": str(runs)}, "refuse")]
    res = _spawn(jobs, tmp_path, rank_seeds=True)
    assert [res[("refuse", r)]["refused"] for r in range(WORLD)] == [0, 1]  # (rank 1 used to wait for rank 0)
    for key in ("full", "part", "signal", "mn"):
        assert res[(key, 0)]["world"] == WORLD
        assert _same(res[(key, 0)]["state"], res[(key, 1)]["state"]), f"{key}: ranks diverged"
    # interrupted at step 4 and resumed by 2 processes == uninterrupted, parameters and log
    assert _same(res[("full", 0)]["state"], res[("part", 0)]["state"])
    assert _log(runs / "full") == _log(runs / "part")
    # a SIGTERM that reached one rank stopped both after the same step (3, no checkpoint_every
    # multiple), with a checkpoint; resumed, the run equals the uninterrupted one
    assert _same(res[("full", 0)]["state"], res[("signal", 0)]["state"])
    assert _log(runs / "full") == _log(runs / "signal")
    # M&N's guide masks were computed sharded and gathered: every rank holds all unlabelled cases
    g0, g1 = res[("mn", 0)]["guides"], res[("mn", 1)]["guides"]
    unlabelled = json.loads((runs / "mn" / "splits.json").read_text())["unlabelled"]
    assert g0 is not None and sorted(g0["masks"]) == sorted(g1["masks"]) == sorted(unlabelled)
    # each rank drew its own patches: the 2-process run differs from a 1-process run
    single = _single({**sup_tree, "name": "single", "output_dir": str(tmp_path / "one")})
    assert not _same(single, res[("full", 0)]["state"])
    # only rank 0 wrote: one log, records logged once per step
    steps = [r["step"] for r in _log(runs / "full") if "loss/net" in r]
    assert steps == sorted(set(steps))


def test_two_ranks_on_the_same_data_equal_one_process(sup_tree, synth_root, tmp_path):
    """With every rank sampling the same patches, averaged gradients equal one process's, so the
    2-process run must reproduce the single-process run bit for bit (sharded validation and
    M&N pseudo-mask passes included)."""
    runs = tmp_path / "runs"
    mn = mn_tree(synth_root, runs, name="mn", iterations=8, warmup=4, options={"guide_every": 3})
    mn["train"]["val_every"] = 4
    mn["data"]["splits"]["validation"] = {"last": 2}
    sup = {**sup_tree, "name": "sup", "output_dir": str(runs)}
    res = _spawn([("sup", sup, None), ("mn", mn, None)], tmp_path, rank_seeds=False)
    one = tmp_path / "one"
    assert _same(_single({**sup, "output_dir": str(one)}), res[("sup", 0)]["state"])
    assert _same(_single({**mn, "output_dir": str(one)}), res[("mn", 1)]["state"])
    assert _log(runs / "mn") == _log(one / "mn")  # validation Dice gathered from both ranks' shards
