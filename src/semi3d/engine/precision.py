"""Device and mixed-precision choice: bf16 autocast on CPU, AMP (bf16, or fp16 + GradScaler) on CUDA."""
from __future__ import annotations

import contextlib

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
