"""The edge picker: a small network that learns which edge along a contour's normal is the organ's.

The edge profile (``edge_profile``) takes the strongest edge of the organ's polarity near the surface; on
walled organs (a rectum round its lumen) and faint boundaries that rule picks the wrong edge. The picker
learns the choice instead, from every vertex of the training candidates, whose true offset to the
reference surface is known: a perceptron with two hidden layers reads each vertex's normal profile and
that of its neighbourhood, normalised so that no grey value, contrast sign or scale survives (the
derivative over the contour's typical edge strength; the intensity as a fraction of the way from outside
to inside), and gives a distribution over where along the normal the organ's edge lies. Those
distributions, averaged over ``SMOOTH_MM`` of surface, place each vertex's edge at their mode; the
surface so moved is the implied reference, and the Dice between it and the mask is counted voxel by
voxel on the image's own grid, as the true Dice is. How far the averaged distributions spread round
that mode says whether the image shows the picker one edge. A trial beside the product's network,
reported by `contourqa evaluate --picker` (docs/model.md, "The edge picker").
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from scipy import ndimage
from scipy.spatial import cKDTree

from contourqa.qa_models.errors import InputError

from .cache import CachedCase, Candidate
from .edge_profile import (BAND_MM, PROFILE_MM, SMOOTH_MM, STEP_MM, ContourSurface, contour_surface,
                           normal_profiles, organ_polarity, peak_position, smooth_on_mesh)
from .progress import progress

CONTEXT_MM = 3.0  # the neighbourhood whose mean profile each vertex also reads
NEAR_MM = 3.0  # inside and outside intensities are read this far along the normal
FEATURES = 4 * len(PROFILE_MM)
PICKER_FORMAT = 1
SPREAD_QUANTILE = 0.95


class EdgePicker(torch.nn.Sequential):
    """Vertex features -> logits over ``PROFILE_MM``: where along the normal the organ's edge lies."""

    def __init__(self, hidden: int = 128):
        super().__init__(torch.nn.Linear(FEATURES, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, hidden),
                         torch.nn.ReLU(), torch.nn.Linear(hidden, len(PROFILE_MM)))


def vertex_features(surface: ContourSurface) -> np.ndarray:
    """Each vertex's normalised profiles (vertices x ``FEATURES``): its derivative, the organ's edge
    positive, over the contour's typical edge strength; its intensity, 0 outside and 1 inside; and both
    averaged over ``CONTEXT_MM`` of surface."""
    profile = normal_profiles(surface.image, surface.spacing, surface.verts, surface.normals)
    derivative = np.gradient(profile, STEP_MM, axis=1)
    measured = surface.measured
    response = -organ_polarity(derivative, measured) * derivative
    response /= np.percentile(np.abs(derivative[measured]).max(1), 75) + 1e-6
    near = int(round(NEAR_MM / STEP_MM))
    middle = len(PROFILE_MM) // 2
    inside, outside = np.median(profile[measured, middle - near]), np.median(profile[measured, middle + near])
    contrast = inside - outside if abs(inside - outside) > 1e-6 else 1e-6
    fraction = np.clip((profile - outside) / contrast, -5, 5)
    own = np.concatenate([response, fraction], axis=1)
    context = smooth_on_mesh(own, surface.area * measured, surface.faces, CONTEXT_MM, surface.edge_mm)
    return np.concatenate([own, context], axis=1).astype(np.float32)


def signed_distance(mask: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """mm from each voxel centre to the nearest centre on the mask's other side: negative inside."""
    inside = ndimage.distance_transform_edt(mask, sampling=spacing)
    outside = ndimage.distance_transform_edt(~mask, sampling=spacing)
    return (outside - inside).astype(np.float32)


def true_offsets(surface: ContourSurface, reference_distance: np.ndarray) -> np.ndarray:
    """The training target: how far along its outward normal each vertex must move to reach the reference
    surface, by the reference's ``signed_distance`` at the vertex. (The distance to the reference's own
    mesh looks exacter, but Dice from it is biased by +0.022 on held-out synth studies, this by 0.000.)"""
    index = surface.verts / surface.spacing + surface.start
    return -ndimage.map_coordinates(reference_distance, index.T, order=1, mode="nearest")


def moved_surface_dice(surface: ContourSurface, offsets: np.ndarray) -> float:
    """Dice between the mask and its surface moved by ``offsets`` (mm, outward), voxel by voxel on the
    image's grid: a voxel within the band of the surface belongs to the moved mask when its signed
    distance to the surface (to its nearest vertex) is below that vertex's offset."""
    mask, spacing = surface.mask, surface.spacing
    reach = BAND_MM + spacing.max()
    band = np.where(mask, ndimage.distance_transform_edt(mask, sampling=spacing),
                    ndimage.distance_transform_edt(~mask, sampling=spacing)) < reach
    index = np.argwhere(band)
    distance, nearest = cKDTree(surface.verts).query(index * spacing)
    moved = mask.copy()
    moved[tuple(index.T)] = np.where(mask[tuple(index.T)], -distance, distance) < offsets[nearest]
    return float(2 * np.logical_and(moved, mask).sum() / max(int(moved.sum() + mask.sum()), 1))


class PickedEdge(NamedTuple):
    dice: float  # the Dice against the boundary the picker finds
    spread_mm: float  # how far from that boundary the picker's own distributions reach: wide where no one edge shows


NOT_PICKED = PickedEdge(float("nan"), float("nan"))


def pick_edges(picker: EdgePicker, surface: ContourSurface) -> tuple[np.ndarray, float]:
    """Each vertex's offset to the organ's edge, and the spread: the mode of the picker's distributions
    averaged over ``SMOOTH_MM`` of surface (their mean would pull every offset towards zero), and the mean
    distance from it under those distributions. Offsets are 0 where the image's end cuts the surface."""
    with torch.no_grad():
        probabilities = torch.softmax(picker(torch.from_numpy(vertex_features(surface))), dim=1).numpy()
    weights = surface.area * surface.measured
    averaged = smooth_on_mesh(probabilities.astype(np.float64), weights, surface.faces, SMOOTH_MM, surface.edge_mm)
    offsets = peak_position(averaged)
    spread = np.sum(averaged * np.abs(PROFILE_MM[None, :] - offsets[:, None]), axis=1)
    offsets[~surface.measured] = 0.0
    return offsets, float(np.sum(weights * spread) / np.sum(weights))


def picked_edge(picker: EdgePicker, image: np.ndarray, mask: np.ndarray, spacing: np.ndarray) -> PickedEdge:
    """The Dice ``mask`` would score against the boundary the picker finds on ``image`` (arrays k, j, i;
    ``spacing`` in mm in the same order), and the picker's spread; NaN for an empty mask or one whose
    whole surface the image's ends cut."""
    surface = contour_surface(image, mask, spacing)
    return NOT_PICKED if surface is None else picked_edge_of(picker, surface)


def picked_edge_of(picker: EdgePicker, surface: ContourSurface) -> PickedEdge:
    """``picked_edge`` on a surface already built."""
    offsets, spread = pick_edges(picker, surface)
    return PickedEdge(moved_surface_dice(surface, offsets), spread)


def realistic_masks(cases: Iterable[CachedCase]) -> Iterator[tuple[CachedCase, Candidate, np.ndarray]]:
    """Every realistic candidate with its mask (the constructed failures are not contours of the organ)."""
    for case in cases:
        for candidate in case.candidates:
            mask = candidate.mask
            if not candidate.row.kind.startswith("failure") and mask is not None:
                yield case, candidate, mask


def spread_limit(picker: EdgePicker, held_out: Iterable[CachedCase], quantile: float = SPREAD_QUANTILE) -> float:
    """The ``quantile`` of the picker's spread over held-out studies' realistic candidates: set as the
    domain guard's threshold is, beyond it the image does not show the picker one edge."""
    spreads = [picked_edge(picker, case.image, mask, case.grid.spacing[::-1]).spread_mm
               for case, _, mask in realistic_masks(held_out)]
    spreads = [s for s in spreads if np.isfinite(s)]
    if not spreads:
        raise InputError("no realistic candidate with a surface in the held-out studies to set the spread limit on")
    return float(np.quantile(spreads, quantile))


def training_vertices(cases: Iterable[CachedCase], per_candidate: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(features, true offsets) of up to ``per_candidate`` measured vertices of every realistic candidate."""
    rng = np.random.default_rng(seed)
    features, targets = [], []
    distances: dict[str, np.ndarray] = {}  # the references' of the current case, by ROI
    current = None
    for case, candidate, mask in realistic_masks(cases):
        if case.case_id != current:
            current, distances = case.case_id, {}
        spacing = np.asarray(case.grid.spacing[::-1], dtype=float)
        surface = contour_surface(case.image, mask, spacing)
        if surface is None:
            continue
        roi = candidate.row.roi.lower()
        if roi not in distances:
            distances[roi] = signed_distance(case.references[roi], spacing)
        chosen = rng.permutation(np.flatnonzero(surface.measured))[:per_candidate]
        features.append(vertex_features(surface)[chosen])
        targets.append(true_offsets(surface, distances[roi])[chosen])
    if not features:
        raise InputError("no realistic candidate with a surface to train the edge picker on")
    return np.concatenate(features), np.concatenate(targets).astype(np.float32)


def train_picker(features: np.ndarray, offsets: np.ndarray, epochs: int = 10, seed: int = 0,
                 batch_size: int = 1024) -> EdgePicker:
    """Fit the picker by cross-entropy against each true offset, shared between its two nearest samples
    of ``PROFILE_MM`` (offsets beyond the band count as at its end)."""
    torch.manual_seed(seed)
    position = (np.clip(offsets, PROFILE_MM[0], PROFILE_MM[-1]) - PROFILE_MM[0]) / STEP_MM
    low = np.minimum(np.floor(position).astype(int), len(PROFILE_MM) - 2)
    share = (position - low).astype(np.float32)
    target = np.zeros((len(offsets), len(PROFILE_MM)), np.float32)
    rows = np.arange(len(offsets))
    target[rows, low], target[rows, low + 1] = 1 - share, share
    x, y = torch.from_numpy(features), torch.from_numpy(target)
    picker = EdgePicker()
    optimiser = torch.optim.Adam(picker.parameters(), lr=1e-3)
    for _ in progress(range(epochs), "edge picker epochs"):
        for batch in torch.randperm(len(x)).split(batch_size):
            loss = -(y[batch] * torch.log_softmax(picker(x[batch]), dim=1)).sum(dim=1).mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    return picker.eval()


@dataclass
class SavedPicker:
    network: EdgePicker
    trained_on: str
    spread_limit_mm: float | None = None  # None: no held-out studies set one

    def sure(self, estimate: PickedEdge) -> bool:
        """Whether the picker sees one edge: its spread within the limit (False for NaN, or with no limit)."""
        return self.spread_limit_mm is not None and estimate.spread_mm <= self.spread_limit_mm


def save_picker(picker: SavedPicker, path: Path) -> None:
    torch.save({"format": PICKER_FORMAT, "trained_on": picker.trained_on, "spread_limit_mm": picker.spread_limit_mm,
                "state": picker.network.state_dict()}, path)


def load_picker(path: Path) -> SavedPicker:
    """A saved picker; a clear one-line error for a file that is not a picker of this format."""
    try:
        stored = torch.load(path, map_location="cpu", weights_only=True)  # never unpickle arbitrary objects
        if stored.get("format") != PICKER_FORMAT:
            raise ValueError(f"format {stored.get('format')}, expected {PICKER_FORMAT}")
        network = EdgePicker()
        network.load_state_dict(stored["state"])
    except FileNotFoundError:
        raise InputError(f"{path}: no such edge picker file") from None
    except Exception as error:  # any unreadable or foreign file: one line, no traceback
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InputError(f"{path}: not an edge picker ({reason})") from None
    limit = stored.get("spread_limit_mm")
    return SavedPicker(network.eval(), str(stored.get("trained_on", "")), None if limit is None else float(limit))
