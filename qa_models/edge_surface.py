"""A contour's surface and the image along its normals: what the edge picker (and the edge profile baseline
of `contourqa evaluate`) read. The surface is the mask's marching-cubes mesh in a crop of the image
large enough to hold every normal's profile within ``BAND_MM``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy import ndimage, sparse
from skimage import measure

BAND_MM = 8.0  # each normal is read this far inside and outside the surface
STEP_MM = 0.5  # sampling along each normal


def surface_mesh(mask: np.ndarray, spacing: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(vertices in mm of the mask's array, faces, outward unit normals, area per vertex in mm2) of the
    mask's surface; the mask is padded so that a mask touching its array's edge still gives a closed surface.
    A mask of lone voxels has none (the smoothing takes each below the surface's level): no vertices."""
    padded = ndimage.gaussian_filter(np.pad(mask, 1).astype(np.float32), 0.5)
    if padded.max() <= 0.5:
        return np.zeros((0, 3)), np.zeros((0, 3), dtype=int), np.zeros((0, 3)), np.zeros(0)
    verts, faces, _, _ = measure.marching_cubes(padded, 0.5, spacing=tuple(float(s) for s in spacing))
    verts -= spacing
    corners = verts[faces]
    face_normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    face_area = np.linalg.norm(face_normals, axis=1) / 2
    normals, area = np.zeros_like(verts), np.zeros(len(verts))
    for k in range(3):
        np.add.at(normals, faces[:, k], face_normals)
        np.add.at(area, faces[:, k], face_area / 3)
    normals /= -(np.linalg.norm(normals, axis=1, keepdims=True) + 1e-12)  # the faces wind inwards
    return verts, faces, normals, area


PROFILE_MM = np.arange(-BAND_MM, BAND_MM + 1e-6, STEP_MM)  # where each normal is sampled, outward


def normal_profiles(image: np.ndarray, spacing: np.ndarray, verts: np.ndarray, normals: np.ndarray) -> np.ndarray:
    """The (smoothed) image along each vertex's outward normal at ``PROFILE_MM``: vertices x samples."""
    points = (verts[:, None, :] + PROFILE_MM[None, :, None] * normals[:, None, :]) / spacing
    profile = ndimage.map_coordinates(image, points.reshape(-1, 3).T, order=1, mode="nearest")
    return profile.reshape(len(verts), len(PROFILE_MM))


def organ_polarity(derivative: np.ndarray, measured: np.ndarray) -> float:
    """+1 where the organ is brighter inside than out (its edge's outward derivative negative), else -1:
    decided by the strongest edge along each ``measured`` vertex's normal."""
    strongest = derivative[np.arange(len(derivative)), np.abs(derivative).argmax(1)]
    return float(-np.sign(np.sum(strongest[measured])))


def peak_position(response: np.ndarray) -> np.ndarray:
    """Where along ``PROFILE_MM`` each row of ``response`` peaks, to sub-sample precision by a parabola."""
    rows = np.arange(len(response))
    peak = np.clip(response.argmax(1), 1, len(PROFILE_MM) - 2)
    before, at, after = (response[rows, peak + k] for k in (-1, 0, 1))
    curvature = before - 2 * at + after
    with np.errstate(divide="ignore", invalid="ignore"):
        shift = np.where(np.abs(curvature) > 1e-12, 0.5 * (before - after) / curvature, 0.0)
    return PROFILE_MM[peak] + np.clip(shift, -1, 1) * STEP_MM


def at_image_end(verts: np.ndarray, normals: np.ndarray, spacing: np.ndarray, start: np.ndarray,
                 shape: tuple[int, ...]) -> np.ndarray:
    """Vertices of a surface that the image's own end cuts: within a voxel of the image's first or last
    plane along an axis, facing out of the image along it. ``start`` is the crop's first index in the image."""
    index = verts / spacing + start
    low = (index < 1.0) & (normals < -0.7)
    high = (index > np.array(shape) - 2.0) & (normals > 0.7)
    return np.any(low | high, axis=1)


def smooth_on_mesh(values: np.ndarray, weights: np.ndarray, faces: np.ndarray, radius_mm: float,
                   edge_mm: float) -> np.ndarray:
    """Weighted mean of ``values`` (one per vertex, or a row per vertex) over about ``radius_mm`` of
    surface: a random walk along the mesh's edges, which spreads about the square root of its steps in edges."""
    n = len(values)
    rows = np.concatenate([faces[:, 0], faces[:, 1], faces[:, 2], np.arange(n)])
    cols = np.concatenate([faces[:, 1], faces[:, 2], faces[:, 0], np.arange(n)])
    adjacency = sparse.coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n)).tocsr()
    adjacency = ((adjacency + adjacency.T) > 0).astype(np.float64)
    weight = weights.astype(np.float64).reshape(n, *([1] * (values.ndim - 1)))
    total = values * weight
    for _ in range(int(round((radius_mm / edge_mm) ** 2))):
        total, weight = adjacency @ total, adjacency @ weight
    return np.divide(total, weight, out=np.zeros(total.shape), where=weight > 0)


class ContourSurface(NamedTuple):
    """A mask's surface in a crop of its image that holds every normal's profile."""
    image: np.ndarray  # the crop of the image, smoothed by 0.8 mm
    mask: np.ndarray  # the crop of the mask
    spacing: np.ndarray
    verts: np.ndarray  # mm in the crop
    faces: np.ndarray
    normals: np.ndarray
    area: np.ndarray  # mm2 per vertex
    measured: np.ndarray  # False where the image's own end cuts the surface
    edge_mm: float  # the mesh's mean edge length
    start: np.ndarray  # the crop's first index in the image


def contour_surface(image: np.ndarray, mask: np.ndarray, spacing: np.ndarray) -> ContourSurface | None:
    """The surface of ``mask`` on ``image`` (arrays k, j, i; ``spacing`` in mm in the same order); None for
    an empty mask, one of lone voxels (no surface), or one whose whole surface lies on the image's ends."""
    spacing = np.asarray(spacing, dtype=float)
    if not mask.any():
        return None
    margin = np.ceil((BAND_MM + 4) / spacing).astype(int)
    index = np.argwhere(mask)
    crop = tuple(slice(max(a - m, 0), min(b + m + 1, n))
                 for a, b, m, n in zip(index.min(0), index.max(0), margin, mask.shape))
    verts, faces, normals, area = surface_mesh(mask[crop], spacing)
    if len(verts) == 0:
        return None
    # a mask cut by the image's first or last slice (or its edge) has a surface there that no edge can
    # show; a reference drawn on that image is cut there too, so those vertices count as placed exactly
    start = np.array([c.start for c in crop])
    measured = ~at_image_end(verts, normals, spacing, start, mask.shape)
    if not measured.any():
        return None
    smoothed = ndimage.gaussian_filter(image[crop].astype(np.float32), 0.8 / spacing)
    edge_mm = float(np.mean(np.linalg.norm(verts[faces[:, 1]] - verts[faces[:, 0]], axis=1)))
    return ContourSurface(smoothed, mask[crop], spacing, verts, faces, normals, area, measured, edge_mm, start)
