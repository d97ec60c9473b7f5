"""`contourqa guard`: fit a model's domain guard and store it beside its weights.

The class means and the shared covariance come from the inputs the model was trained on (``--fit``);
the threshold is a high quantile of the distances of studies it was neither trained nor fitted on
(``--threshold``), so that in-domain images stay inside about that often. Fitting on the training
studies alone would put the threshold too low: a network's features sit closer to the data it learned.
The default quantile is 0.99, not the largest distance: one far held-out study set the GPU-run synth
model's threshold at 157 (median 10), which let 99 % of a style it failed on through (docs/model.md).
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

import numpy as np

from contourqa.qa_models.domain import DomainCard, DomainGuard, normalise_body_part
from contourqa.qa_models.errors import InputError
from contourqa.qa_models.predictor import PICKER_ARCHITECTURE, DicePredictor, read_card, write_card

from .cache import CachedCase, load_apart
from .edge_picker import feature_guard_card, largest_quantile, pooled_rows
from .manifest import manifest_names

log = logging.getLogger(__name__)

BATCH = 16
MIN_CANDIDATES = 30  # the Ledoit-Wolf covariance stays invertible below one sample per feature, but not on a handful


def case_features(predictor: DicePredictor, cases: list[CachedCase]) -> tuple[np.ndarray, list[str]]:
    """The guard's feature vector of every realistic candidate of ``cases``, with its ROI name.

    Constructed failures (empty, all-ones, noise, far shifts) are left out: the screens reject them, and
    their odd crops would widen the domain the guard accepts for real images."""
    vectors, names = [], []
    for case in cases:
        candidates = [c for c in case.candidates if not c.row.kind.startswith("failure")]
        inputs = [predictor.network_input(case.image, c.mask, case.grid, c.probabilities) for c in candidates]
        for start in range(0, len(inputs), BATCH):
            vectors.append(predictor.features(inputs[start:start + BATCH]))
        names += [c.row.roi for c in candidates]
    return np.concatenate(vectors), names


def stacked(sets: list[tuple[np.ndarray, list[str]]]) -> tuple[np.ndarray, list[str], np.ndarray]:
    """The rows and ROI names of several held-out sets one under another, with the set each row is of."""
    names = [name for _, names_of_set in sets for name in names_of_set]
    index = np.concatenate([np.full(len(names_of_set), i) for i, (_, names_of_set) in enumerate(sets)])
    return np.concatenate([rows for rows, _ in sets]), names, index


def fit_guard(model_dir: str | Path, fit_manifests: list[Path], threshold_manifests: list[Path],
              quantile: float = 0.99, cache_dir: Path | None = None, extra_body_parts: list[str] | None = None) -> dict:
    """Fit the guard, write ``domain.npz`` and the card, and return what was measured. The card records the
    Body Part Examined of the fitted images, with ``extra_body_parts`` (other terms for that anatomy).

    Each threshold manifest is a set of its own (one per style or site): the threshold is the largest of
    the sets' own quantiles, so each set's studies stay inside about that often. Pooled, the set nearest
    the training inputs would pull it down for the others."""
    model_dir = Path(model_dir)
    fitted, held = load_apart(fit_manifests, threshold_manifests, cache_dir,
                              "the threshold needs studies the guard was not fitted on")
    fit_cases = [case for _, cases in fitted for case in cases]
    held_sets = [cases for _, cases in held]
    fitted_on, held_on = manifest_names(fit_manifests), manifest_names(threshold_manifests)
    if read_card(model_dir).architecture == PICKER_ARCHITECTURE:
        return _fit_picker_guard(model_dir, fit_cases, held_sets, fitted_on, held_on, quantile)
    predictor = DicePredictor.from_model_folder(model_dir)
    features, names = case_features(predictor, fit_cases)
    if len(features) < MIN_CANDIDATES:
        raise InputError(f"the guard needs at least {MIN_CANDIDATES} realistic candidates to fit; "
                         f"{fitted_on} has {len(features)}")
    if len(features) < features.shape[1]:
        log.warning("%d candidates for %d features: the guard's covariance rests mostly on its shrinkage; "
                    "fit it on more studies", len(features), features.shape[1])
    guard = DomainGuard.fit(features, names)
    held_features, held_names, sets = stacked([case_features(predictor, cases) for cases in held_sets])
    held_distances = guard.distances(held_features, held_names)
    threshold = largest_quantile(held_distances, sets, quantile)
    fitted = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    body_parts = sorted({c.body_part for c in fit_cases if c.body_part}
                        | set(filter(None, map(normalise_body_part, extra_body_parts or []))))
    if not body_parts:
        log.warning("no fitted image names its Body Part Examined: the guard will not check it")
    held_cases = sum(map(len, held_sets))
    card = DomainCard(roi_names=guard.roi_names, threshold=threshold, quantile=quantile, body_parts=body_parts,
                      fitted_on={"manifest": fitted_on, "cases": len(fit_cases),
                                 "candidates": len(features), "fitted": fitted},
                      threshold_from={"manifest": held_on, "cases": held_cases, "candidates": len(held_names)})
    guard.save(model_dir)
    write_card(predictor.card.model_copy(update={"domain": card}), model_dir)
    return _measured(guard, features, names, held_distances, threshold, held_cases, body_parts)


def _fit_picker_guard(model_dir: Path, fit_cases: list[CachedCase], held_sets: list[list[CachedCase]],
                      fitted_on: str, held_on: str, quantile: float) -> dict:
    """An edge picker's feature guard (its spread limits stay as trained), for a picker trained before
    ``contourqa picker`` fitted one; the card keeps the body parts its spread guard records."""
    from contourqa.qa_models.picker_predictor import PickerPredictor

    predictor = PickerPredictor.from_model_folder(model_dir)
    features, names = pooled_rows(predictor.network, fit_cases, "training contours")
    guard = DomainGuard.fit(features, names)
    held_features, held_names, sets = stacked([pooled_rows(predictor.network, cases, "held-out contours")
                                               for cases in held_sets])
    body_parts = predictor.card.domain.body_parts
    held_cases = sum(map(len, held_sets))
    card = feature_guard_card(guard, held_features, held_names, fitted_on, len(fit_cases), held_on, held_cases,
                              body_parts, quantile, held_sets=sets)
    guard.save(model_dir)
    write_card(predictor.card.model_copy(update={"feature_guard": card}), model_dir)
    return _measured(guard, features, names, guard.distances(held_features, held_names), card.threshold, held_cases,
                     body_parts)


def _measured(guard: DomainGuard, features: np.ndarray, names: list[str], held_distances: np.ndarray,
              threshold: float, held_cases: int, body_parts: list[str]) -> dict:
    """What `contourqa guard` reports of a guard it fitted: its size, threshold and the distances' medians,
    and the share of the held-out candidates inside."""
    return {"features": int(features.shape[1]), "fit_candidates": len(features), "threshold": threshold,
            "fit_median": float(np.median(guard.distances(features, names))),
            "held_median": float(np.median(held_distances)),
            "held_inside": float((held_distances <= threshold).mean()), "held_cases": held_cases,
            "body_parts": body_parts}
