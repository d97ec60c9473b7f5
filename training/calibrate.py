"""`contourqa calibrate`: fit a model's calibration on held-out candidates and store it in its card.

A regressor trained with MSE on a wide Dice range pulls its predictions towards the mean: good
contours come out a little low, poor ones a little high. Isotonic regression of the true Dice on the
raw prediction, over candidates the network never trained on, gives a monotone map that undoes this
without changing the ranking; the predictor applies it to the point estimate and the interval.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
from scipy.optimize import isotonic_regression

from contourqa.qa_models.errors import InputError
from contourqa.qa_models.predictor import Calibration, DicePredictor, write_card

from .cache import load_cases
from .evaluate import candidate_predictions
from .manifest import read_manifest

MIN_CANDIDATES = 20


def fit_calibration(raw: np.ndarray, true: np.ndarray) -> tuple[list[float], list[float]]:
    """Knots (raw, calibrated) of the isotonic fit: one per constant step, at the step's mean raw value.

    Equal raw values are pooled first, so the knots' raw values strictly increase (np.interp needs that).
    """
    x, inverse, counts = np.unique(raw, return_inverse=True, return_counts=True)
    pooled = np.bincount(inverse, weights=true) / counts
    fitted = isotonic_regression(pooled, weights=counts.astype(float)).x
    steps = np.flatnonzero(np.diff(fitted, prepend=np.nan, append=np.nan) != 0)  # start of each step, and the end
    knots_x = [float(np.average(x[a:b], weights=counts[a:b])) for a, b in zip(steps[:-1], steps[1:])]
    knots_y = [float(fitted[a]) for a in steps[:-1]]
    return knots_x, knots_y


def calibrate(manifest: str | Path, model_dir: str | Path, cache_dir: Path | None = None) -> tuple[Calibration, dict]:
    """Fit on every candidate of ``manifest``, write the card, and return the calibration and the
    in-sample MAE before and after (the honest test is `contourqa evaluate` on other cases)."""
    model_dir = Path(model_dir)
    predictor = DicePredictor.from_model_folder(model_dir)
    predictor.card.calibration = None  # fit on the network's raw output
    rows = read_manifest(manifest)  # one candidate per row: refuse too few before rasterising anything
    if len(rows) < MIN_CANDIDATES:
        raise InputError(f"calibration needs at least {MIN_CANDIDATES} candidates; {manifest} has {len(rows)}")
    cases = load_cases(rows, cache_dir)
    pairs = np.array([(prediction.dice, candidate.dice)
                      for case in cases for candidate, prediction in candidate_predictions(predictor, case)]).reshape(-1, 2)
    raw_values, true_values = pairs[:, 0], pairs[:, 1]
    knots_x, knots_y = fit_calibration(raw_values, true_values)
    calibration = Calibration(raw=knots_x, calibrated=knots_y, candidates=len(pairs), manifest=Path(manifest).name,
                              fitted=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
    write_card(predictor.card.model_copy(update={"calibration": calibration}), model_dir)
    summary = {"candidates": len(pairs), "mae_raw": float(np.abs(raw_values - true_values).mean()),
               "mae_calibrated": float(np.abs(calibration.apply(raw_values) - true_values).mean()),
               "knots": len(knots_x)}
    return calibration, summary
