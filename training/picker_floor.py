"""How much of the edge picker's error is its picks, and how much the voxel count it hands them to.

For every realistic candidate of a manifest, the Dice counted as the product counts it, from the true
offsets: each vertex moved where the picker's training target says the reference surface lies (the
reference's signed distance at the vertex, within the band a picker can reach). Its error against the
true Dice is the floor no picker goes below with this count: a vertex's offset says how far the reference
lies, not in which direction, so a walled organ drawn as its wall (a few mm thick) and moved by more
than that is counted well above its true Dice. With ``--model``, the picker's own error on the same
candidates beside it. Per ROI, over all realistic candidates and over those with a true Dice of at least 0.5.

    python -m contourqa.training.picker_floor MANIFEST.csv [MANIFEST.csv ...] --cache DIR [--model DIR]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np

from contourqa.qa_models.edge_picker import moved_surface_dice, picked_edge_of
from contourqa.qa_models.edge_surface import PROFILE_MM, ContourSurface, contour_surface
from contourqa.qa_models.errors import ContourQAError
from contourqa.qa_models.picker_predictor import PickerPredictor

from .cache import load_cases
from .edge_picker import realistic_masks, signed_distance, true_offsets
from .manifest import read_manifest

PLAUSIBLE_DICE = 0.5  # below it a contour is a failure in all but name; reported apart


def floor_dice(surface: ContourSurface, reference_distance: np.ndarray) -> float:
    """The Dice the product would count if every measured vertex were moved by its true offset, clipped
    to the band a picker reads (``PROFILE_MM``); vertices the image's end cuts stay, as the picker's do."""
    offsets = np.clip(true_offsets(surface, reference_distance), PROFILE_MM[0], PROFILE_MM[-1])
    offsets[~surface.measured] = 0.0
    return moved_surface_dice(surface, offsets)


class FloorRow(NamedTuple):
    roi: str
    true: float
    floor: float
    picked: float  # NaN without a model


def floor_rows(manifest: Path, cache_dir: Path | None, predictor: PickerPredictor | None = None) -> list[FloorRow]:
    """A row per realistic candidate of ``manifest`` with a surface to read."""
    rows = []
    for case in load_cases(read_manifest(manifest), cache_dir):
        spacing = np.asarray(case.grid.spacing[::-1], dtype=float)
        distances: dict[str, np.ndarray] = {}  # the references', by ROI
        for _, candidate, mask in realistic_masks([case]):
            surface = contour_surface(case.image, mask, spacing)
            if surface is None:
                continue
            roi, key = candidate.row.roi, candidate.row.roi.lower()  # references are kept by lower-case name
            if key not in distances:
                distances[key] = signed_distance(case.references[key], spacing)
            picked = float("nan") if predictor is None else picked_edge_of(predictor.network_for(roi), surface).dice
            rows.append(FloorRow(roi, candidate.dice, floor_dice(surface, distances[key]), picked))
    return rows


def report(manifest: Path, rows: list[FloorRow]) -> str:
    """A line per ROI and one over all: the MAE of the floor, and of the picker where there is one, over
    every candidate and over those with a true Dice of at least ``PLAUSIBLE_DICE``."""
    with_picker = bool(rows) and not np.isnan(rows[0].picked)
    lines = [f"{manifest}: MAE against the true Dice of the count from the true offsets (floor)"
             + (" and from the picker's (picker)" if with_picker else "")]

    def figures(chosen: list[FloorRow]) -> str:
        true, floor, picked = np.array([(r.true, r.floor, r.picked) for r in chosen]).T
        return (f"n {len(chosen)}, floor {np.mean(np.abs(floor - true)):.4f}"
                + (f", picker {np.mean(np.abs(picked - true)):.4f}" if with_picker else ""))

    groups = {roi: [r for r in rows if r.roi == roi] for roi in sorted({r.roi for r in rows}, key=str.lower)}
    for label, group in {**groups, "all": rows}.items():
        plausible = [r for r in group if r.true >= PLAUSIBLE_DICE]
        lines.append(f"  {label}: {figures(group)}"
                     + (f"; true >= {PLAUSIBLE_DICE}: {figures(plausible)}" if plausible else ""))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m contourqa.training.picker_floor",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("manifests", nargs="+", type=Path)
    parser.add_argument("--cache", type=Path, help="the rasterised cases' cache (as picker --cache)")
    parser.add_argument("--model", type=Path, help="an edge picker's model folder: its error beside the floor")
    args = parser.parse_args(argv)
    try:
        predictor = PickerPredictor.from_model_folder(args.model) if args.model else None
        for manifest in args.manifests:
            print(report(manifest, floor_rows(manifest, args.cache, predictor)), flush=True)
    except ContourQAError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
