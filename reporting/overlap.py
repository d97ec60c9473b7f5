"""Agreement between two masks on one grid: Dice and surface distances in millimetres."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice similarity coefficient of two boolean masks; two empty masks agree perfectly."""
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def surface_distances(a: np.ndarray, b: np.ndarray, spacing: tuple[float, ...]) -> dict[str, float] | None:
    """Mean symmetric surface distance and 95th-percentile Hausdorff distance (mm) between two masks.

    ``spacing`` is per array axis. None when either mask is empty: a distance to nothing is undefined.
    """
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    if not a.any() or not b.any():
        return None
    surface_a, surface_b = _surface(a), _surface(b)
    to_b = ndimage.distance_transform_edt(~surface_b, sampling=spacing)[surface_a]
    to_a = ndimage.distance_transform_edt(~surface_a, sampling=spacing)[surface_b]
    both = np.concatenate([to_b, to_a])
    return {"mean_surface_mm": float(both.mean()), "hd95_mm": float(max(np.percentile(to_b, 95),
                                                                          np.percentile(to_a, 95)))}
