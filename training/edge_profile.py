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

from contourqa.qa_models.edge_surface import (PROFILE_MM, STEP_MM, ContourSurface, contour_surface, normal_profiles,
                                              organ_polarity, peak_position, smooth_on_mesh)

PRIOR_MM, SMOOTH_MM = 4.0, 3.0
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


def edge_offsets(image: np.ndarray, spacing: np.ndarray, verts: np.ndarray, normals: np.ndarray,
                 measured: np.ndarray) -> np.ndarray:
    """Offset in mm along the outward normal of the organ's edge from each vertex; ``image`` is already
    smoothed, and only the ``measured`` vertices decide the organ's polarity."""
    derivative = np.gradient(normal_profiles(image, spacing, verts, normals), STEP_MM, axis=1)
    polarity = organ_polarity(derivative, measured)
    return peak_position(np.maximum(-polarity * derivative, 0) * np.exp(-0.5 * (PROFILE_MM / PRIOR_MM) ** 2))


def implied_dice(offsets: np.ndarray, area: np.ndarray, volume_mm3: float) -> float:
    """Dice between a surface and the one displaced by ``offsets`` (mm, outward) over ``area`` (mm2 per
    vertex), the volume between them corrected for curvature as on a sphere of the mask's volume."""
    radius = (3 * volume_mm3 / (4 * np.pi)) ** (1 / 3)
    shell = offsets + offsets ** 2 / radius + offsets ** 3 / (3 * radius ** 2)
    between, change = np.sum(area * np.abs(shell)), np.sum(area * shell)
    return float(np.clip(1 - between / max(2 * volume_mm3 + change, 1e-6), 0, 1))


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
