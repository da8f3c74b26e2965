"""The dataset formats by name: ``uamt_h5``, ``nnunet``, ``msd`` and ``folder``."""
from __future__ import annotations

import inspect
from typing import Any

from ..errors import InputError, check_options
from .msd import MSDReader
from .nnunet import NnUNetRawReader
from .readers import FolderReader, PathLike, Reader, UAMTH5Reader

__all__ = ["READERS", "build_reader"]

READERS: dict[str, type[Reader]] = {"uamt_h5": UAMTH5Reader, "nnunet": NnUNetRawReader, "msd": MSDReader,
                                    "folder": FolderReader}


def build_reader(format: str, root: PathLike, **options: Any) -> Reader:
    """Build a reader by format name.

    Args:
        format: ``"uamt_h5"``, ``"nnunet"``, ``"msd"`` (a Decathlon task) or ``"folder"`` (root is
            then the images folder).
        root: dataset folder.
        options: keyword arguments of the reader class.

    Raises:
        InputError: unknown format or option, missing root, or any error of the reader.
    """
    cls = READERS.get(format)
    if cls is None:
        raise InputError(format, f"unknown dataset format; choose one of {', '.join(READERS)}")
    check_options(f"data.options ({format})", options, list(inspect.signature(cls).parameters)[1:])
    return cls(root, **options)


