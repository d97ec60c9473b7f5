"""The voxel grid of an image series in patient coordinates, and the maps between index and millimetres."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Grid:
    """A regular 3-D grid. Arrays on it are indexed [k, j, i] (slice, row, column).

    ``direction`` holds the unit vectors of increasing i (along a row), j (down a column) and k
    (the slice normal) as its columns; ``spacing`` the steps along them in mm; ``origin`` the
    centre of voxel (0, 0, 0) in patient mm.
    """

    origin: np.ndarray
    spacing: np.ndarray
    direction: np.ndarray
    shape: tuple[int, int, int]

    @property
    def affine(self) -> np.ndarray:
        """4x4 matrix taking (i, j, k, 1) to patient (x, y, z, 1)."""
        matrix = np.eye(4)
        matrix[:3, :3] = self.direction * self.spacing[np.newaxis, :]
        matrix[:3, 3] = self.origin
        return matrix

    def to_index(self, points_mm: np.ndarray) -> np.ndarray:
        """Continuous (i, j, k) of patient points, shape (N, 3); no rounding."""
        relative = np.asarray(points_mm, dtype=float) - self.origin
        return (relative @ self.direction) / self.spacing

    def to_patient(self, index: np.ndarray) -> np.ndarray:
        """Patient mm of continuous (i, j, k) indices, shape (N, 3)."""
        return (np.asarray(index, dtype=float) * self.spacing) @ self.direction.T + self.origin

    @property
    def voxel_volume_ml(self) -> float:
        return float(np.prod(self.spacing)) / 1000.0

    def same_as(self, other: "Grid", tolerance_mm: float = 0.01) -> bool:
        """True when both grids place every voxel at the same point (within ``tolerance_mm``)."""
        if self.shape != other.shape:
            return False
        corners = np.array([[0, 0, 0], [s - 1 for s in self.shape[::-1]]], dtype=float)
        return bool(np.allclose(self.to_patient(corners), other.to_patient(corners), atol=tolerance_mm))


def to_sitk(array: np.ndarray, grid: Grid) -> "SimpleITK.Image":
    """A SimpleITK image of ``array`` (indexed [k, j, i]) carrying the grid's geometry."""
    import SimpleITK as sitk  # only the NIfTI export needs it; training and the guard run without it

    image = sitk.GetImageFromArray(array)
    image.SetOrigin(tuple(float(v) for v in grid.origin))
    image.SetSpacing(tuple(float(v) for v in grid.spacing))
    image.SetDirection(tuple(float(v) for v in grid.direction.flatten()))
    return image
