"""The in-memory case every reader returns and every later stage consumes."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Case:
    """One volume with optional label.

    Attributes:
        id: case identifier (unique within a dataset).
        image: float32 array (C, X, Y, Z): channels first, then the three spatial axes in the
            file's voxel order (NIfTI i, j, k). Z is the through-plane axis for LA.
        label: integer array (X, Y, Z) of class indices 0..K-1 (0 = background), or None when the
            case is unlabelled.
        spacing: voxel size in mm along (X, Y, Z).
        affine: 4x4 voxel-to-world matrix (NIfTI convention, RAS mm). For formats that store none
            (UA-MT h5) it is diag(spacing) with a zero origin.
        domain: domain tag (scanner/site), used by domain adaptation / generalisation modes.
        source: the path the image came from, for error messages and output naming.
    """

    id: str
    image: np.ndarray
    label: np.ndarray | None
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    affine: np.ndarray = field(default_factory=lambda: np.eye(4))
    domain: str = "default"
    source: str = ""

    @property
    def shape(self) -> tuple[int, int, int]:
        """Spatial shape (X, Y, Z)."""
        return tuple(self.image.shape[1:])  # type: ignore[return-value]
