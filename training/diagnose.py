"""Is a contour's fit visible in a set of studies at all? A diagnosis for training sets, no network.

For every realistic candidate of a manifest: the image gradient along the candidate's surface, relative
to the gradient in an 8 mm band around it ("edge fit": a contour on the organ's boundary runs along its
edges), and its rank correlation with the true Dice, split by the reference organ's contrast-to-noise
ratio against a 0.5-4 mm rim outside it. If the edge fit ranks the candidates where the organs stand out
and not where they do not, the images carry the answer only for visible organs, and a regressor trained
on invisible ones learns their mean.

    python -m contourqa.training.diagnose MANIFEST.csv [MANIFEST.csv ...] [--cache DIR]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from scipy import ndimage, stats

from .cache import CachedCase, load_cases
from .manifest import read_manifest

CNR_BANDS = ((0, 1), (1, 2), (2, np.inf))


def _band(mask: np.ndarray, spacing: np.ndarray, low_mm: float, high_mm: float) -> np.ndarray:
    outside = ndimage.distance_transform_edt(~mask, sampling=spacing)
    return (outside > low_mm) & (outside <= high_mm)


def contrast_to_noise(image: np.ndarray, mask: np.ndarray, spacing: np.ndarray) -> float:
    """|mean inside - mean of the 0.5-4 mm rim outside| / the rim's standard deviation."""
    rim = image[_band(mask, spacing, 0.5, 4.0)]
    return float(abs(image[mask].mean() - rim.mean()) / (rim.std() + 1e-6))


def edge_fit(gradient: np.ndarray, mask: np.ndarray, spacing: np.ndarray) -> float:
    """Mean gradient on the mask's surface over the mean gradient within 8 mm of it."""
    surface = mask & ~ndimage.binary_erosion(mask)
    near = _band(mask, spacing, 0, 8) | (mask & ~ndimage.binary_erosion(mask, iterations=3))
    return float(gradient[surface].mean() / (gradient[near].mean() + 1e-6))


def case_rows(case: CachedCase) -> list[tuple[float, float, float]]:
    """(true Dice, edge fit, reference CNR) of each realistic, non-empty candidate of one case."""
    image = case.image.astype(np.float32)
    spacing = case.grid.spacing[::-1]  # (k, j, i)
    gradient = np.sqrt(sum(g ** 2 for g in np.gradient(ndimage.gaussian_filter(image, 0.7), *spacing)))
    cnr = {name: contrast_to_noise(image, ref, spacing) for name, ref in case.references.items() if ref.any()}
    rows = []
    for candidate in case.candidates:
        mask, roi = candidate.mask, candidate.row.roi.lower()
        if candidate.row.kind.startswith("failure") or mask is None or not mask.any() or roi not in cnr:
            continue
        rows.append((candidate.dice, edge_fit(gradient, mask, spacing), cnr[roi]))
    return rows


def report(manifest: Path, cache_dir: Path | None) -> str:
    rows = np.array([r for case in load_cases(read_manifest(manifest), cache_dir) for r in case_rows(case)])
    dice, fit, cnr = rows.T
    lines = [f"{manifest}: {len(rows)} realistic candidates; share with reference CNR < 1: {(cnr < 1).mean():.2f}; "
             f"Spearman(edge fit, true Dice) {stats.spearmanr(fit, dice)[0]:.2f}"]
    for low, high in CNR_BANDS:
        chosen = (cnr >= low) & (cnr < high)
        if chosen.sum() >= 10:
            lines.append(f"  reference CNR {low}-{high}: n {chosen.sum()}, "
                         f"Spearman {stats.spearmanr(fit[chosen], dice[chosen])[0]:.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m contourqa.training.diagnose", description=__doc__.split("\n")[0])
    parser.add_argument("manifests", nargs="+", type=Path)
    parser.add_argument("--cache", type=Path, help="the rasterised cases' cache (as train --cache)")
    args = parser.parse_args(argv)
    for manifest in args.manifests:
        print(report(manifest, args.cache))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
