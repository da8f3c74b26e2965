"""Device and mixed-precision choice: bf16 autocast on CPU, AMP (bf16, or fp16 + GradScaler) on CUDA."""
from __future__ import annotations

import contextlib
import math

import torch


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        from ..errors import InputError
        raise InputError("device", "cuda requested but no CUDA device is available")
    return torch.device(name)


def cpu_has_native_bf16() -> bool:
    """True when the CPU executes bf16 natively (AVX512-BF16 or AMX). Without it, oneDNN emulates
    bf16 and autocast is slower than fp32 (measured: 3D conv 0.63 s bf16 vs 0.44 s fp32)."""
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto``: bf16 on CUDA where supported (else fp16 + GradScaler); on CPU bf16 only with
    native bf16 instructions, else fp32."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_native_bf16() else "fp32"


def autocast(device: torch.device, precision: str):
    """A context manager running the forward passes in the chosen precision."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def use_channels_last(option: bool | None, device: torch.device) -> bool:
    """``None`` (auto): channels-last on CPU. Measured on the 2-core Xeon (oneDNN, fp32): the
    backward of an 8->8 3x3x3 conv on 2x8x32^3 takes 555 ms contiguous vs 49 ms channels-last;
    the forward 18 vs 14 ms; the tiny demo U-Net step 2.1 s -> see the README's speed notes."""
    return device.type == "cpu" if option is None else option


def channels_last_3d(module: torch.nn.Module) -> torch.nn.Module:
    """Store the 3D convolution weights channels-last (NDHWC); oneDNN then runs the convolutions,
    forward and backward, channels-last."""
    for m in module.modules():
        if isinstance(m, (torch.nn.Conv3d, torch.nn.ConvTranspose3d)):
            m.to(memory_format=torch.channels_last_3d)
    return module


SMALL_VOXELS = 8  # convolutions on at most 2x2x2 voxels per channel run in float32 under autocast


def _small_conv_pre(module: torch.nn.Module, args: tuple):
    x = args[0]
    if x.dim() < 3 or math.prod(x.shape[2:]) > SMALL_VOXELS:
        return None
    dev = x.device.type
    module._autocast_was = (dev, torch.is_autocast_enabled(dev))  # a convolution never nests in itself
    torch.set_autocast_enabled(dev, False)
    return (x.float(), *args[1:])


def _small_conv_post(module: torch.nn.Module, args: tuple, out):
    state = module.__dict__.pop("_autocast_was", None)
    if state is not None:
        torch.set_autocast_enabled(*state)


def fp32_small_convs(module: torch.nn.Module) -> torch.nn.Module:
    """Run the 3D convolutions of ``module`` whose input has at most ``SMALL_VOXELS`` voxels per
    channel (a 2x2x2 or 1x1x1 level: a V-Net's bottom at a 16^3 patch) in float32 under bf16 / fp16
    autocast: their cost is nil, and in bf16 such a V-Net (batch 2, a 1x1x1 BatchNorm level) went
    NaN within 3-17 steps on a native-bf16 AMD EPYC (the weight gradient of a decoder convolution;
    float32 at those levels trained 60 steps finite). Forward hooks, so copies of the module
    (an EMA teacher) keep them. Idempotent."""
    for m in module.modules():
        if isinstance(m, (torch.nn.Conv3d, torch.nn.ConvTranspose3d)) and not getattr(m, "_fp32_small", False):
            m.register_forward_pre_hook(_small_conv_pre)
            m.register_forward_hook(_small_conv_post)
            m._fp32_small = True
    return module
