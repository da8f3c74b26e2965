"""engine/precision.py: convolutions on tiny levels run in float32 under autocast, the rest in bf16."""
from __future__ import annotations

import copy

import torch
from torch import nn

from semi3d.engine.precision import fp32_small_convs


def test_small_convs_run_in_float32_under_autocast_and_copies_keep_it():
    net = fp32_small_convs(nn.Sequential(nn.Conv3d(2, 3, 1), nn.ConvTranspose3d(3, 2, 2, stride=2)))
    fp32_small_convs(net)  # idempotent: one pair of hooks per layer
    assert all(len(m._forward_pre_hooks) == 1 for m in net)
    tiny, big = torch.randn(2, 2, 1, 1, 1), torch.randn(2, 2, 4, 4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert net[0](tiny).dtype == torch.float32  # 1 voxel per channel
        assert net[0](big).dtype == torch.bfloat16  # 64 voxels: autocast as usual
        assert net(tiny).dtype == torch.float32  # the up-conv's input has 1 voxel too
        assert torch.is_autocast_enabled("cpu")  # restored after each layer
        assert copy.deepcopy(net)[0](tiny).dtype == torch.float32  # an EMA teacher's copy keeps the hooks
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=False):
        assert not torch.is_autocast_enabled("cpu")
        assert net[0](tiny).dtype == torch.float32 and not torch.is_autocast_enabled("cpu")


def test_sliding_window_prediction_runs_tiny_levels_in_float32_like_training():
    from semi3d.config import InferenceConfig
    from semi3d.engine.sliding_window import predict_probs

    net = nn.Sequential(nn.Conv3d(1, 2, 4, stride=4), nn.Conv3d(2, 2, 1), nn.ConvTranspose3d(2, 2, 4, stride=4))
    seen = []
    net[1].register_forward_hook(lambda m, args, out: seen.append(out.dtype))
    probs = predict_probs(net, torch.randn(1, 4, 4, 4), (4, 4, 4), InferenceConfig(), torch.device("cpu"), "bf16")
    assert seen == [torch.float32]  # the 1x1x1 level, in bf16 before
    assert probs.shape == (2, 4, 4, 4) and torch.isfinite(probs).all()
