"""Training the edge picker (``contourqa.qa_models.edge_picker``) and writing it as a model folder.

Its targets come from every vertex of the training candidates: the reference's signed distance at the
vertex is how far the organ's edge lies along its normal, so 40 studies give half a million labelled
examples instead of 1,400 Dice values. Held-out studies of the same style (never trained on) set the
spread beyond which it withholds its number and the half-width of its interval (``picker_predictor``).
Its second guard, the feature guard, holds the pooled hidden features of the training contours (means per
ROI and a shared precision, as a network's guard); its threshold too is set on the held-out studies.
A picker trained on several styles is given held-out studies of each, as separate sets: every limit is
the largest of the sets' own quantiles, so that each style's held-out studies stay inside as often as
the quantile says (pooled, the style with the sharpest edges would pull the limits down for all).
"""

from __future__ import annotations

import datetime as dt
import shlex
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from scipy import ndimage

from contourqa import __version__
from contourqa.qa_models.atomic import atomic_path
from contourqa.qa_models.domain import DOMAIN_FILE, DomainCard, DomainGuard, normalise_body_part
from contourqa.qa_models.edge_picker import (EdgePicker, Picker, PickerEnsemble, PickersByRoi, picked_edge,
                                             picker_for_roi, pooled_features, vertex_features)
from contourqa.qa_models.edge_surface import PROFILE_MM, STEP_MM, ContourSurface, contour_surface
from contourqa.qa_models.errors import InputError
from contourqa.qa_models.predictor import PICKER_ARCHITECTURE, WEIGHTS_FILE, ModelCard, write_card

from .cache import CachedCase, Candidate, Studies
from .manifest import manifest_names
from .progress import progress

SPREAD_QUANTILE = 0.99  # the spread limit, as a network guard's threshold: a quantile of held-out studies
INTERVAL_QUANTILE = 0.90  # of the held-out absolute errors: the 5-95 % interval's half-width
MIN_PER_ROI = 20  # held-out candidates a ROI needs for a half-width of its own
FEATURE_GUARD_FEATURES = ("the edge pickers' last hidden layer (every member's side by side) averaged over "
                          "the contour's measured surface, weighted by area")
SPREAD_FEATURES = ("the edge picker's spread: the mean distance (mm) from the edge it picks under its "
                   "surface-averaged distributions, over the contour's surface")


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


def realistic_masks(cases: Iterable[CachedCase]) -> Iterator[tuple[CachedCase, Candidate, np.ndarray]]:
    """Every realistic candidate with its mask (the constructed failures are not contours of the organ)."""
    for case in cases:
        for candidate in case.candidates:
            mask = candidate.mask
            if not candidate.row.kind.startswith("failure") and mask is not None:
                yield case, candidate, mask


class HeldOutFigures(NamedTuple):
    spread_limit: float
    spread_limit_by_roi: dict[str, float]  # of the ROIs with a picker of their own
    half_width: float
    half_width_by_roi: dict[str, float]
    candidates: int
    features: np.ndarray  # each candidate's pooled features (rows), for the feature guard's threshold
    rois: list[str]  # each candidate's ROI
    sets: np.ndarray  # each candidate's held-out set (its index in the sets given)


def largest_quantile(values: np.ndarray, sets: np.ndarray, quantile: float) -> float:
    """The largest of the held-out sets' own ``quantile`` of ``values``: a limit each set stays within."""
    return max(float(np.quantile(values[sets == s], quantile)) for s in np.unique(sets))


def held_out_figures(picker: Picker | PickersByRoi, held_out: list[list[CachedCase]]) -> HeldOutFigures:
    """From the realistic candidates of one or more sets of held-out studies (one set per style): the
    ``SPREAD_QUANTILE`` of the picker's spread (beyond it the image does not show the picker one edge), of
    their own for the ROIs with a picker of their own, each the largest of the sets' own quantiles; and the
    ``INTERVAL_QUANTILE`` of its absolute error where it is within its limit, over all and per ROI with at
    least ``MIN_PER_ROI`` of them."""
    picked = [(picked_edge(picker_for_roi(picker, candidate.row.roi), case.image, mask, case.grid.spacing[::-1]),
               candidate, index)
              for index, cases in enumerate(held_out) for case, candidate, mask in realistic_masks(cases)]
    picked = [(estimate, candidate.dice, candidate.row.roi.lower(), index) for estimate, candidate, index in picked
              if np.isfinite(estimate.spread_mm)]
    own = set(picker) - {PickersByRoi.DEFAULT} if isinstance(picker, PickersByRoi) else set()
    if not picked:
        raise InputError("no realistic candidate with a surface in the held-out studies to set the spread limit on")
    spreads = np.array([estimate.spread_mm for estimate, *_ in picked])
    rois = np.array([roi for _, _, roi, _ in picked])
    sets = np.array([index for *_, index in picked])
    # where every held-out ROI has a picker of its own, the default's limit is set on all of them
    own_rows = np.isin(rois, sorted(own))
    shared = ~own_rows if not own_rows.all() else np.ones(len(rois), bool)
    limit = largest_quantile(spreads[shared], sets[shared], SPREAD_QUANTILE)
    limit_by_roi = {roi: round(largest_quantile(spreads[rois == roi], sets[rois == roi], SPREAD_QUANTILE), 2)
                    for roi in sorted(own) if (rois == roi).any()}
    sure = [(abs(estimate.dice - true), roi) for estimate, true, roi, _ in picked
            if estimate.spread_mm <= limit_by_roi.get(roi, limit)]
    errors = np.array([error for error, _ in sure])
    by_roi = {roi: np.array([e for e, r in sure if r == roi]) for roi in sorted({r for _, r in sure})}
    return HeldOutFigures(limit, limit_by_roi, float(np.quantile(errors, INTERVAL_QUANTILE)),
                          {roi: round(float(np.quantile(e, INTERVAL_QUANTILE)), 4)
                           for roi, e in by_roi.items() if len(e) >= MIN_PER_ROI}, len(picked),
                          np.stack([estimate.features for estimate, *_ in picked]), rois.tolist(), sets)


def _member_counts(picker: Picker | PickersByRoi) -> set[int]:
    pickers = picker.values() if isinstance(picker, PickersByRoi) else [picker]
    return {len(p) if isinstance(p, PickerEnsemble) else 1 for p in pickers}


def pooled_rows(picker: Picker | PickersByRoi, cases: list[CachedCase], contours: str) -> tuple[np.ndarray, list[str]]:
    """The pooled features (rows) and the ROI of every realistic candidate with a surface; ``contours`` names
    them in the progress and the error ("training contours", "held-out contours")."""
    features, rois = [], []
    for case, candidate, mask in realistic_masks(progress(cases, f"{contours} read for the feature guard")):
        surface = contour_surface(case.image, mask, np.asarray(case.grid.spacing[::-1], dtype=float))
        if surface is not None:
            features.append(pooled_features(picker_for_roi(picker, candidate.row.roi), surface))
            rois.append(candidate.row.roi)
    if not features:
        raise InputError(f"no realistic candidate with a surface among the {contours}")
    return np.stack(features), rois


def feature_guard(picker: Picker | PickersByRoi, cases: list[CachedCase]) -> DomainGuard:
    """The feature guard fitted on the pooled features of every realistic training contour: a contour of an
    image the pickers never learned reads far from all of them (a classic-trained picker put synth studies
    at a median distance of 120 against 15 for its own style's, docs/model.md)."""
    return DomainGuard.fit(*pooled_rows(picker, cases, "training contours"))


def feature_guard_card(guard: DomainGuard, held_features: np.ndarray, held_rois: list[str], trained_on: str,
                       cases: int, held_on: str, held: int, body_parts: list[str],
                       quantile: float = SPREAD_QUANTILE, held_sets: np.ndarray | None = None) -> DomainCard:
    """The card's summary of ``guard``: its threshold the ``quantile`` of the held-out distances, the largest
    of the held-out sets' own where ``held_sets`` says which set each row is of."""
    sets = np.zeros(len(held_rois), int) if held_sets is None else held_sets
    threshold = largest_quantile(guard.distances(held_features, held_rois), sets, quantile)
    return DomainCard(features=FEATURE_GUARD_FEATURES, roi_names=guard.roi_names, threshold=round(threshold, 2),
                      quantile=quantile, body_parts=body_parts, fitted_on={"manifest": trained_on, "cases": cases},
                      threshold_from={"manifest": held_on, "cases": held, "candidates": len(held_rois)})


# A reference scaled about its centre is an auto-contour too large or too small in proportion, as the
# classic phantom's error model draws them; the synth error model errs by a margin in mm. On picker 2's
# inputs they helped on average over four seeds, but one seed's rectum collapsed across styles, so the
# shipped picker is trained without them (docs/model.md, "Tried on 2026-12-07"): ``--proportional``.
PROPORTIONAL_FACTORS = ((1.08, 1.5), (0.55, 0.92))
PROPORTIONAL_SHARE = 0.5  # of ``per_candidate``: vertices drawn from each scaled reference


def scaled_about_centre(mask: np.ndarray, factor: float) -> np.ndarray:
    """``mask`` grown (``factor`` > 1) or shrunk about its centre of mass; scaling the array's indices scales
    millimetres alike, whatever the spacing."""
    centre = np.array(ndimage.center_of_mass(mask))[:, None, None, None]
    source = centre + (np.indices(mask.shape, dtype=np.float32) - centre) / factor
    return ndimage.map_coordinates(mask.astype(np.float32), source, order=1) >= 0.5


class TrainingVertices(NamedTuple):
    features: np.ndarray
    offsets: np.ndarray  # the true offset of each vertex to the reference surface (mm, outward)
    scaled: np.ndarray  # True where the vertex is of a scaled reference, not of a candidate


def training_vertices(cases: Iterable[CachedCase], per_candidate: int, seed: int = 0,
                      proportional: bool = False) -> TrainingVertices:
    """The features and true offsets of up to ``per_candidate`` measured vertices of every realistic
    candidate; with ``proportional``, also of each reference scaled up and down by a factor drawn from
    ``PROPORTIONAL_FACTORS``."""
    rng = np.random.default_rng(seed)
    features, targets, scaled = [], [], []

    def add(case: CachedCase, mask: np.ndarray, reference_distance: np.ndarray, count: int,
            is_scaled: bool = False) -> None:
        surface = contour_surface(case.image, mask, np.asarray(case.grid.spacing[::-1], dtype=float))
        if surface is None:
            return
        chosen = rng.permutation(np.flatnonzero(surface.measured))[:count]
        features.append(vertex_features(surface)[chosen])
        targets.append(true_offsets(surface, reference_distance)[chosen])
        scaled.append(np.full(len(chosen), is_scaled))

    for case in cases:
        spacing = np.asarray(case.grid.spacing[::-1], dtype=float)
        distances: dict[str, np.ndarray] = {}  # the references', by ROI
        for _, candidate, mask in realistic_masks([case]):
            roi = candidate.row.roi.lower()
            if roi not in distances:
                distances[roi] = signed_distance(case.references[roi], spacing)
            add(case, mask, distances[roi], per_candidate)
        for roi in sorted(distances) if proportional else ():
            for low, high in PROPORTIONAL_FACTORS:
                scaled_reference = scaled_about_centre(case.references[roi], rng.uniform(low, high))
                add(case, scaled_reference, distances[roi], max(1, int(per_candidate * PROPORTIONAL_SHARE)), True)
    if not features:
        raise InputError("no realistic candidate with a surface to train the edge picker on")
    return TrainingVertices(np.concatenate(features), np.concatenate(targets).astype(np.float32), np.concatenate(scaled))


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


def train_pickers(features: np.ndarray, offsets: np.ndarray, members: int, epochs: int = 10,
                  seed: int = 0) -> PickerEnsemble:
    """``members`` pickers fitted as ``train_picker`` fits one, from seeds ``seed``, ``seed`` + 1, ..."""
    return PickerEnsemble(train_picker(features, offsets, epochs, seed + i) for i in range(members)).eval()


def train_picker_set(vertices: TrainingVertices, members: int, epochs: int, seed: int,
                     unscaled_rois: Iterable[str] = ()) -> Picker | PickersByRoi:
    """The pickers of a model: ``members`` of them on every vertex; with ``unscaled_rois``, those ROIs read
    with ``members`` more, trained without the scaled references' vertices (``PickersByRoi``)."""
    picker = train_pickers(vertices.features, vertices.offsets, members, epochs, seed)
    own = sorted({roi.lower() for roi in unscaled_rois})
    if not own:
        return picker
    plain = ~vertices.scaled
    unscaled = train_pickers(vertices.features[plain], vertices.offsets[plain], members, epochs, seed)
    return PickersByRoi({PickersByRoi.DEFAULT: picker} | {roi: unscaled for roi in own})


def write_picker_model(out_dir: Path, picker: Picker | PickersByRoi, trained_on: Studies, held_out: Studies,
                       vertices: int, seed: int, name: str, version: str,
                       extra_body_parts: Iterable[str] = ()) -> ModelCard:
    """The picker as a model folder the product loads (``load_predictor``): its weights, then its card with
    the modalities, ROIs and body parts of the studies it was trained on (and ``extra_body_parts``, a
    site's other terms for that anatomy), and the spread limit and interval set on the held-out studies,
    each held-out manifest a set of its own (``held_out_figures``)."""
    cases = [case for _, studies in trained_on for case in studies]
    trained_on_names = manifest_names([manifest for manifest, _ in trained_on])
    held_figures = held_out_figures(picker, [held for _, held in held_out])
    held_on = manifest_names([manifest for manifest, _ in held_out])
    held_cases = sum(len(held_set) for _, held_set in held_out)
    # the guard's rows are the pickers' hidden layers side by side: one length only where every picker
    # has as many members (as `contourqa picker` trains them)
    guard = feature_guard(picker, cases) if len(_member_counts(picker)) == 1 else None
    realistic = [c.dice for case in cases for c in case.candidates if not c.row.kind.startswith("failure")]
    roi_names = sorted({c.row.roi for case in cases for c in case.candidates}, key=str.lower)
    body_parts = sorted({c.body_part for c in cases if c.body_part}
                        | set(filter(None, map(normalise_body_part, extra_body_parts))))
    default = picker_for_roi(picker, None)
    card = ModelCard(
        name=name, version=version, architecture=PICKER_ARCHITECTURE,
        modalities=sorted({case.modality for case in cases}), roi_names=roi_names,
        contourqa_version=__version__, created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        seed=seed,
        training_data={"cases": len(cases), "candidates": len(realistic), "vertices": vertices,
                       "members": len(default) if isinstance(default, PickerEnsemble) else 1,
                       "dice_mean_realistic": float(np.mean(realistic)), "manifest": trained_on_names},
        training_command=shlex.join(["contourqa", *sys.argv[1:]]) if sys.argv and "contourqa" in sys.argv[0] else "",
        domain=DomainCard(features=SPREAD_FEATURES, roi_names=[n.lower() for n in roi_names],
                          threshold=round(held_figures.spread_limit, 2), quantile=SPREAD_QUANTILE, body_parts=body_parts,
                          fitted_on={"manifest": trained_on_names, "cases": len(cases)},
                          threshold_from={"manifest": held_on, "cases": held_cases,
                                          "candidates": held_figures.candidates}),
        interval_half_width=round(held_figures.half_width, 4), interval_half_width_by_roi=held_figures.half_width_by_roi,
        spread_limit_by_roi=held_figures.spread_limit_by_roi,
        feature_guard=None if guard is None else feature_guard_card(
            guard, held_figures.features, held_figures.rois, trained_on_names, len(cases), held_on,
            held_cases, body_parts, held_sets=held_figures.sets),
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / DOMAIN_FILE).unlink(missing_ok=True)  # a guard of an earlier model in this folder
    if guard is not None:
        guard.save(out_dir)
    with atomic_path(out_dir / WEIGHTS_FILE) as weights:
        torch.save(picker.state_dict(), weights)
    write_card(card, out_dir)  # the card last: a folder with a card is a whole model
    return card
