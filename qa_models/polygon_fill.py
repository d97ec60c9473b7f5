"""Exact scanline fill of planar polygons on a pixel grid.

A pixel is inside when its centre is inside the polygon, decided on the continuous vertex
coordinates. All loops of one slice are filled together by the even-odd rule, so holes, inner
contours and keyhole contours come out right. Centres that fall exactly on an edge (contours traced
through voxel centres) follow the half-open rule of polygon fills: left and top edges are in, right
and bottom edges are out.
"""

from __future__ import annotations

import numpy as np

# Vertex coordinates are snapped to this fraction of a pixel before filling, only so that centres
# lying on an edge up to floating-point noise (from the mm <-> index transform) are treated as ties.
_SNAP = 1e-6


def fill_polygons(loops: list[np.ndarray], rows: int, columns: int) -> np.ndarray:
    """Boolean mask [rows, columns] of pixel centres inside the even-odd union of ``loops``.

    Each loop is an (N, 2) array of continuous (column, row) pixel coordinates, implicitly closed.
    """
    starts, ends = [], []
    for loop in loops:
        points = np.round(np.asarray(loop, dtype=float) / _SNAP) * _SNAP
        if len(points) < 3:
            continue
        starts.append(points)
        ends.append(np.roll(points, -1, axis=0))
    mask = np.zeros((rows, columns), dtype=bool)
    if not starts:
        return mask
    p0, p1 = np.concatenate(starts), np.concatenate(ends)
    p0, p1 = p0[p0[:, 1] != p1[:, 1]], p1[p0[:, 1] != p1[:, 1]]  # horizontal edges cross no row
    low = np.minimum(p0[:, 1], p1[:, 1])
    high = np.maximum(p0[:, 1], p1[:, 1])
    # Rows j crossed by an edge: low <= j < high (half-open, so shared vertices count once).
    first_row = np.clip(np.ceil(low), 0, rows).astype(np.int64)
    last_row = np.clip(np.ceil(high), 0, rows).astype(np.int64)  # exclusive
    counts = np.maximum(last_row - first_row, 0)
    if counts.sum() == 0:
        return mask
    edge = np.repeat(np.arange(len(p0)), counts)
    offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    row = first_row[edge] + offsets
    x0, y0, x1, y1 = p0[edge, 0], p0[edge, 1], p1[edge, 0], p1[edge, 1]
    crossing = x0 + (row - y0) * (x1 - x0) / (y1 - y0)
    # A crossing toggles every pixel whose centre is at or right of it: i >= crossing.
    column = np.clip(np.ceil(np.round(crossing / _SNAP) * _SNAP), 0, columns).astype(np.int64)
    toggles = np.bincount(row * (columns + 1) + column, minlength=rows * (columns + 1))
    parity = np.cumsum(toggles.reshape(rows, columns + 1)[:, :columns], axis=1) & 1
    return parity.astype(bool)
