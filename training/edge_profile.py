"""A Dice estimate with nothing fitted: where the image's own edge lies along each normal of the contour.

For each vertex of the candidate's surface (marching cubes), the image's derivative along the outward
normal within ``BAND_MM``; the organ's edge is the strongest response of the organ's own polarity
(brighter or darker inside than out, decided by the strongest edges along the whole surface), weighted
towards the surface by a Gaussian of ``PRIOR_MM`` (of two edges of that polarity, the nearer is more
likely the organ's). The offsets, averaged over ``SMOOTH_MM`` of surface (real errors move a surface in
patches; noise moves single vertices), place an implied reference surface, and the Dice between the two
surfaces follows from the volume between them. Where the image shows the boundary, neighbouring
vertices find it at about the same depth wherever the candidate lies; where it does not, each finds its
own noise: the mean distance between a vertex's own offset and its neighbours' average (the
incoherence) says which, without the reference. It reads neither the images' grey values nor the sign of
their contrast, so it cannot learn one generator's appearance: a baseline for what a network must do
across styles (docs/model.md, "The edge profile"). ``PRIOR_MM`` and ``SMOOTH_MM`` were chosen on held-out
synth studies (seed 2903) only.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy import ndimage, sparse
from skimage import measure

BAND_MM, PRIOR_MM, SMOOTH_MM = 8.0, 4.0, 3.0
STEP_MM = 0.5  # sampling along each normal
# The 0.95 quantile of the incoherence over the realistic candidates of held-out synth studies (seed 2903),
# set as the domain guard's threshold is: above it, the image does not show where the boundary lies.
INCOHERENCE_LIMIT_MM = 1.49


class EdgeProfile(NamedTuple):
    dice: float  # the Dice against the boundary the image shows
    incoherence_mm: float  # mean |own offset - neighbours' average|: high where no boundary shows

    @property
    def coherent(self) -> bool:
        return self.incoherence_mm <= INCOHERENCE_LIMIT_MM


NO_SURFACE = EdgeProfile(float("nan"), float("nan"))


def surface_mesh(mask: np.ndarray, spacing: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(vertices in mm of the mask's array, faces, outward unit normals, area per vertex in mm2) of the
    mask's surface; the mask is padded so that a mask touching its array's edge still gives a closed surface."""
    padded = ndimage.gaussian_filter(np.pad(mask, 1).astype(np.float32), 0.5)
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


def edge_offsets(image: np.ndarray, spacing: np.ndarray, verts: np.ndarray, normals: np.ndarray,
                 measured: np.ndarray) -> np.ndarray:
    """Offset in mm along the outward normal of the organ's edge from each vertex; ``image`` is already
    smoothed, and only the ``measured`` vertices decide the organ's polarity."""
    derivative = np.gradient(normal_profiles(image, spacing, verts, normals), STEP_MM, axis=1)
    polarity = organ_polarity(derivative, measured)
    return peak_position(np.maximum(-polarity * derivative, 0) * np.exp(-0.5 * (PROFILE_MM / PRIOR_MM) ** 2))


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


def implied_dice(offsets: np.ndarray, area: np.ndarray, volume_mm3: float) -> float:
    """Dice between a surface and the one displaced by ``offsets`` (mm, outward) over ``area`` (mm2 per
    vertex), the volume between them corrected for curvature as on a sphere of the mask's volume."""
    radius = (3 * volume_mm3 / (4 * np.pi)) ** (1 / 3)
    shell = offsets + offsets ** 2 / radius + offsets ** 3 / (3 * radius ** 2)
    between, change = np.sum(area * np.abs(shell)), np.sum(area * shell)
    return float(np.clip(1 - between / max(2 * volume_mm3 + change, 1e-6), 0, 1))


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
    an empty mask, or one whose whole surface lies on the image's ends."""
    spacing = np.asarray(spacing, dtype=float)
    if not mask.any():
        return None
    margin = np.ceil((BAND_MM + 4) / spacing).astype(int)
    index = np.argwhere(mask)
    crop = tuple(slice(max(a - m, 0), min(b + m + 1, n))
                 for a, b, m, n in zip(index.min(0), index.max(0), margin, mask.shape))
    verts, faces, normals, area = surface_mesh(mask[crop], spacing)
    # a mask cut by the image's first or last slice (or its edge) has a surface there that no edge can
    # show; a reference drawn on that image is cut there too, so those vertices count as placed exactly
    start = np.array([c.start for c in crop])
    measured = ~at_image_end(verts, normals, spacing, start, mask.shape)
    if not measured.any():
        return None
    smoothed = ndimage.gaussian_filter(image[crop].astype(np.float32), 0.8 / spacing)
    edge_mm = float(np.mean(np.linalg.norm(verts[faces[:, 1]] - verts[faces[:, 0]], axis=1)))
    return ContourSurface(smoothed, mask[crop], spacing, verts, faces, normals, area, measured, edge_mm, start)


def edge_profile(image: np.ndarray, mask: np.ndarray, spacing: np.ndarray) -> EdgeProfile:
    """The Dice the mask would score against the boundary the image shows, and how coherent that boundary
    is, for an image and mask of one grid (arrays k, j, i; ``spacing`` in mm in the same order). NaN for an
    empty mask, or one whose whole surface lies on the image's ends."""
    surface = contour_surface(image, mask, spacing)
    return NO_SURFACE if surface is None else edge_profile_of(surface)


def edge_profile_of(surface: ContourSurface) -> EdgeProfile:
    """``edge_profile`` of a surface already built (a caller that also picks edges on it builds it once)."""
    measured = surface.measured
    own = edge_offsets(surface.image, surface.spacing, surface.verts, surface.normals, measured)
    offsets = smooth_on_mesh(own, surface.area * measured, surface.faces, SMOOTH_MM, surface.edge_mm)
    incoherence = float(np.abs(own - offsets)[measured].mean())
    offsets[~measured] = 0.0
    volume = float(surface.mask.sum() * np.prod(surface.spacing))
    return EdgeProfile(implied_dice(offsets, surface.area, volume), incoherence)
