"""The edge picker: a small network that learns which edge along a contour's normal is the organ's.

A rule (the strongest edge of the organ's polarity near the surface) picks the wrong edge on walled
organs (a rectum round its lumen) and faint boundaries. The picker learns the choice instead, from every
vertex of the training candidates, whose true offset to the reference surface is known
(``contourqa picker``, training/edge_picker.py): a perceptron with two hidden layers reads each vertex's
normal profile and that of its neighbourhood, normalised so that no grey value, contrast sign or scale
survives (the derivative over the contour's typical edge strength; the intensity as a fraction of the
way from outside to inside), and gives a distribution over where along the normal the organ's edge
lies. It reads each profile twice: oriented by the contour's one contrast, and by the contrast over
``LOCAL_MM`` of surface round the vertex, since a walled organ's inner and outer surfaces face opposite
contrasts (a rectum's wall is brighter than its gas and darker than the fat round it). Those
distributions, averaged over ``SMOOTH_MM`` of surface, place each vertex's edge at their mode; the
surface so moved is the implied reference, and the Dice between it and the mask is counted voxel by
voxel on the image's own grid, as the true Dice is. How far the averaged distributions spread round
that mode says whether the image shows the picker one edge (docs/model.md, "The edge picker").
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from scipy import ndimage
from scipy.spatial import cKDTree

from .edge_surface import (BAND_MM, PROFILE_MM, STEP_MM, ContourSurface, contour_surface, normal_profiles,
                           organ_polarity, peak_position, smooth_on_mesh)

CONTEXT_MM = 3.0  # the neighbourhood whose mean profile each vertex also reads
NEAR_MM = 3.0  # inside and outside intensities are read this far along the normal
SMOOTH_MM = 3.0  # the distributions are averaged over this much surface (chosen on held-out synth studies)
LOCAL_MM = 5.0  # the inside and outside levels of the local reading are averaged over this much surface
FEATURES = 8 * len(PROFILE_MM)


class EdgePicker(torch.nn.Sequential):
    """Vertex features -> logits over ``PROFILE_MM``: where along the normal the organ's edge lies."""

    def __init__(self, hidden: int = 128):
        super().__init__(torch.nn.Linear(FEATURES, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, hidden),
                         torch.nn.ReLU(), torch.nn.Linear(hidden, len(PROFILE_MM)))


class PickerEnsemble(torch.nn.ModuleList):
    """Pickers trained from different seeds on the same vertices; its output's softmax is their distributions
    averaged. Single pickers differ by seed most on the rectum; four together land near their mean and
    read the reference contours better (docs/model.md, "Tried later on 2026-12-07")."""

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.stack([torch.softmax(member(features), dim=1) for member in self]).mean(0).log()


Picker = EdgePicker | PickerEnsemble


class PickersByRoi(torch.nn.ModuleDict):
    """A picker per organ kind: each ROI named here (lower case) reads with its own, every other ROI with
    ``DEFAULT``'s. Scaled references sharpen the compact organs' picker across styles but make a walled
    organ's jump to its lumen's edge, so a rectum gets a picker trained without them (docs/model.md)."""

    DEFAULT = "default"


def picker_for_roi(picker: Picker | PickersByRoi, roi_name: str | None) -> Picker:
    """The picker that reads ``roi_name``'s contour."""
    if not isinstance(picker, PickersByRoi):
        return picker
    key = (roi_name or "").lower()
    return picker[key] if key in picker else picker[PickersByRoi.DEFAULT]


def vertex_features(surface: ContourSurface) -> np.ndarray:
    """Each vertex's normalised profiles (vertices x ``FEATURES``), read twice: against the contour's one
    contrast and against the contrast round the vertex. Each reading is the derivative, the organ's edge
    positive, over the contour's typical edge strength, and the intensity, 0 outside and 1 inside; all of
    them also averaged over ``CONTEXT_MM`` of surface."""
    profile = normal_profiles(surface.image, surface.spacing, surface.verts, surface.normals)
    derivative = np.gradient(profile, STEP_MM, axis=1)
    measured = surface.measured
    weights = surface.area * measured
    strength = np.percentile(np.abs(derivative[measured]).max(1), 75) + 1e-6
    near = int(round(NEAR_MM / STEP_MM))
    middle = len(PROFILE_MM) // 2
    levels = profile[:, [middle - near, middle + near]]  # inside, outside
    inside, outside = np.median(levels[measured], axis=0)
    contrast = _at_least(inside - outside, 1e-6)
    local = smooth_on_mesh(levels, weights, surface.faces, LOCAL_MM, surface.edge_mm)
    # where the inside and outside round a vertex are alike, its own contrast says nothing: keep a floor
    local_contrast = _at_least(local[:, 0] - local[:, 1], 0.05 * abs(contrast))[:, None]
    own = np.concatenate([
        -organ_polarity(derivative, measured) * derivative / strength,
        np.clip((profile - outside) / contrast, -5, 5),
        -np.sign(local_contrast) * derivative / strength,
        np.clip((profile - local[:, 1:]) / local_contrast, -5, 5)], axis=1)
    context = smooth_on_mesh(own, weights, surface.faces, CONTEXT_MM, surface.edge_mm)
    return np.concatenate([own, context], axis=1).astype(np.float32)


def _at_least(values: np.ndarray | float, floor: float) -> np.ndarray:
    """``values`` moved away from zero to at least ``floor`` in magnitude, keeping their sign (0 counts as +)."""
    return np.where(np.abs(values) < floor, np.where(values < 0, -floor, floor), values)


def moved_surface_dice(surface: ContourSurface, offsets: np.ndarray) -> float:
    """Dice between the mask and its surface moved by ``offsets`` (mm, outward), voxel by voxel on the
    image's grid: a voxel within the band of the surface belongs to the moved mask when its signed
    distance to the surface (to its nearest vertex) is below that vertex's offset."""
    mask, spacing = surface.mask, surface.spacing
    tree = cKDTree(surface.verts)
    moved = mask.copy()
    # a voxel inside leaves only where a vertex nearer than it moves inwards further than that, and one
    # outside joins only where a vertex moves outwards so: each side's band and nearest-vertex search (most
    # of a prediction's time) stop at that side's farthest move. Only which of two equally near vertices a
    # voxel takes can differ from an unbounded search (2 voxels in classic 903's 720 candidates)
    for side, sign, farthest in ((mask, -1.0, -offsets.min()), (~mask, 1.0, offsets.max())):
        if farthest <= 0:
            continue
        reach = min(farthest, BAND_MM) + spacing.max()
        index = np.argwhere(side & (ndimage.distance_transform_edt(side, sampling=spacing) < reach))
        distance, nearest = tree.query(index * spacing, distance_upper_bound=farthest,
                                       workers=torch.get_num_threads())
        near = np.isfinite(distance)  # beyond it, the voxel keeps its side
        moved[tuple(index[near].T)] = sign * distance[near] < offsets[nearest[near]]
    return float(2 * np.logical_and(moved, mask).sum() / max(int(moved.sum() + mask.sum()), 1))


class PickedEdge(NamedTuple):
    dice: float  # the Dice against the boundary the picker finds
    spread_mm: float  # how far from that boundary the picker's own distributions reach: wide where no one edge shows
    # the pickers' last hidden layer pooled over the surface, what the feature guard reads; None: nothing read
    features: np.ndarray | None


NOT_PICKED = PickedEdge(float("nan"), float("nan"), None)


def read_vertices(picker: Picker, surface: ContourSurface) -> tuple[np.ndarray, np.ndarray]:
    """Each vertex's distribution over ``PROFILE_MM`` (the members' averaged, as ``PickerEnsemble`` gives
    it), and the pooled features: each member's last hidden layer averaged over the measured surface,
    weighted by area, the members side by side (what the feature guard reads)."""
    x = torch.from_numpy(vertex_features(surface))
    area = surface.area * surface.measured
    weights = torch.from_numpy((area / np.sum(area)).astype(np.float32))
    probabilities, pooled = [], []
    with torch.no_grad():
        for member in picker if isinstance(picker, PickerEnsemble) else [picker]:
            *body, head = member
            hidden = x
            for layer in body:
                hidden = layer(hidden)
            pooled.append((weights @ hidden).numpy())
            probabilities.append(torch.softmax(head(hidden), dim=1).numpy())
    return np.mean(probabilities, axis=0), np.concatenate(pooled)


def pooled_features(picker: Picker, surface: ContourSurface) -> np.ndarray:
    """One vector per contour, as the feature guard reads it (``read_vertices``)."""
    return read_vertices(picker, surface)[1]


def pick_edges(picker: Picker, surface: ContourSurface) -> tuple[np.ndarray, float, np.ndarray]:
    """Each vertex's offset to the organ's edge, the spread and the pooled features: the mode of the
    picker's distributions averaged over ``SMOOTH_MM`` of surface (their mean would pull every offset
    towards zero), and the mean distance from it under those distributions. Offsets are 0 where the
    image's end cuts the surface."""
    probabilities, pooled = read_vertices(picker, surface)
    weights = surface.area * surface.measured
    averaged = smooth_on_mesh(probabilities.astype(np.float64), weights, surface.faces, SMOOTH_MM, surface.edge_mm)
    offsets = peak_position(averaged)
    spread = np.sum(averaged * np.abs(PROFILE_MM[None, :] - offsets[:, None]), axis=1)
    offsets[~surface.measured] = 0.0
    return offsets, float(np.sum(weights * spread) / np.sum(weights)), pooled


def picked_edge(picker: Picker, image: np.ndarray, mask: np.ndarray, spacing: np.ndarray) -> PickedEdge:
    """The Dice ``mask`` would score against the boundary the picker finds on ``image`` (arrays k, j, i;
    ``spacing`` in mm in the same order), and the picker's spread; NaN for an empty mask or one whose
    whole surface the image's ends cut."""
    surface = contour_surface(image, mask, spacing)
    return NOT_PICKED if surface is None else picked_edge_of(picker, surface)


def picked_edge_of(picker: Picker, surface: ContourSurface) -> PickedEdge:
    """``picked_edge`` on a surface already built."""
    offsets, spread, features = pick_edges(picker, surface)
    return PickedEdge(moved_surface_dice(surface, offsets), spread, features)
