"""A baseline without a network: gradient boosting on how far a contour's surface lies from the image's edges.

For each realistic candidate: where along its normal the strongest edge lies, per surface voxel
(``diagnose.boundary_offsets``), summarised (mean, median, shares within 2 and 3.5 mm, mean signed
offset, the same relative to the organ's size), with the edge fit, the contour's contrast against its rim,
its volume and the gradient profile across its surface. None of it depends on the images' grey values
or the sign of their contrast. Fitted on one manifest in seconds on a CPU, scored on others with the
figures `evaluate` reports: the bar a network must clear in-style and cross-style.

    python -m contourqa.training.boundary_baseline TRAIN.csv TEST.csv [TEST.csv ...] [--cache DIR]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from scipy import ndimage
from sklearn.ensemble import HistGradientBoostingRegressor

from contourqa.reporting.agreement import regression_metrics

from .cache import load_cases
from .diagnose import boundary_offsets, edge_fit, signed_distance
from .manifest import read_manifest

PROFILE_MM = np.arange(-6.0, 6.0, 1.5)  # the gradient across the surface, in 1.5 mm shells from inside out


def gradient_magnitude(image: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """|grad| of a float image after a 0.8 mm Gaussian, in grey values per mm."""
    smooth = ndimage.gaussian_filter(image, 0.8 / np.asarray(spacing))
    return np.sqrt(sum(g ** 2 for g in np.gradient(smooth, *spacing)))


def candidate_features(image: np.ndarray, gradient: np.ndarray, mask: np.ndarray, spacing: np.ndarray) -> list[float]:
    signed = signed_distance(mask, spacing)
    offsets = boundary_offsets(gradient, mask, spacing, signed=signed)
    distance = np.abs(offsets)
    typical = float(np.median(gradient[np.abs(signed) <= 6.0])) + 1e-6
    volume = float(mask.sum() * np.prod(spacing))
    radius = (3 * volume / (4 * np.pi)) ** (1 / 3)
    inside, outside = image[(signed < 0) & (signed >= -3)], image[(signed > 0) & (signed <= 3)]
    rim = image[(signed > 0.5) & (signed <= 4)]
    profile = []
    for low in PROFILE_MM:
        shell = (signed > low) & (signed <= low + 1.5)
        profile.append(float(gradient[shell].mean()) / typical if shell.any() else 0.0)
    return [distance.mean(), float(np.median(distance)), (distance <= 2.0).mean(), (distance <= 3.5).mean(),
            offsets.mean(), distance.mean() / radius, edge_fit(gradient, mask, spacing, signed),
            abs(inside.mean() - outside.mean()) / (rim.std() + 1e-6), np.log(volume), radius, *profile]


def feature_table(manifest: Path, cache_dir: Path | None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(true Dice, features, case ID) of every realistic, non-empty candidate of a manifest."""
    dice, features, cases = [], [], []
    for case in load_cases(read_manifest(manifest), cache_dir):
        spacing = case.grid.spacing[::-1]  # (k, j, i)
        image = case.image.astype(np.float32)
        gradient = gradient_magnitude(image, spacing)
        for candidate in case.candidates:
            mask = candidate.mask
            if candidate.row.kind.startswith("failure") or mask is None or not mask.any():
                continue
            dice.append(candidate.dice)
            features.append(candidate_features(image, gradient, mask, spacing))
            cases.append(case.case_id)
    return np.array(dice), np.array(features, dtype=float), cases


def fit(dice: np.ndarray, features: np.ndarray, seed: int = 0) -> HistGradientBoostingRegressor:
    return HistGradientBoostingRegressor(max_iter=300, learning_rate=0.05, max_leaf_nodes=15, min_samples_leaf=20,
                                         l2_regularization=1.0, random_state=seed).fit(features, dice)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m contourqa.training.boundary_baseline",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("train", type=Path)
    parser.add_argument("tests", nargs="+", type=Path)
    parser.add_argument("--cache", type=Path, help="the rasterised cases' cache (as train --cache)")
    args = parser.parse_args(argv)
    dice, features, _ = feature_table(args.train, args.cache)
    model = fit(dice, features)
    print(f"fitted on {args.train}: {len(dice)} realistic candidates")
    for test in args.tests:
        true, test_features, _ = feature_table(test, args.cache)
        for name, predicted in (("boundary baseline", np.clip(model.predict(test_features), 0, 1)),
                                ("naive (mean training Dice)", np.full_like(true, dice.mean()))):
            m = regression_metrics(true, predicted)
            spearman = "-" if m["spearman"] is None else f"{m['spearman']:.2f}"
            print(f"{test}  {name:27s} n {m['n']}  MAE {m['mae']:.3f}  Spearman {spearman}  "
                  f"global accuracy {m['global_accuracy']:.1%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
