"""Atomic checkpoint files: written to a temporary file in the same folder, then renamed."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..errors import InputError


def save_atomic(obj: Any, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "checkpoint not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # truncated / not a torch file
        raise InputError(path, f"cannot read checkpoint ({type(e).__name__})") from None
