"""Rule-based failure screens: each a small named function, cheap, returning passed/failed with a
one-line detail and the numbers behind it.

They catch the gross failures of auto-contouring (the four failure modes of Isaksson et al. 2022:
empty, uniform binary noise, all ones, a mask shifted far off its organ) and a few common defects
(implausible volume, an organ out of its place in the body, gaps between contoured slices, masks cut
off by the field of view).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from enum import Enum

import numpy as np
from scipy import ndimage

from .geometry import Grid
from .assess_config import ScreenConfig
from .roi_names import MIDLINE, laterality_of, normalised_name, organ_of


class Severity(str, Enum):
    """What a failed screen does to the verdict."""

    REJECT = "reject"
    REVIEW = "review"


@dataclass
class ScreenResult:
    name: str
    passed: bool
    detail: str
    severity: Severity
    values: dict[str, float | int | str | None] = field(default_factory=dict)

    def as_dict(self) -> dict:
        result = asdict(self)
        result["severity"] = self.severity.value
        return result


def screen_empty(mask: np.ndarray) -> ScreenResult:
    voxels = int(mask.sum())
    detail = "mask is empty" if voxels == 0 else f"{voxels} voxels"
    return ScreenResult("empty", voxels > 0, detail, Severity.REJECT, {"voxels": voxels})


def screen_fov_fraction(mask: np.ndarray, config: ScreenConfig) -> ScreenResult:
    fraction = float(mask.mean())
    passed = fraction <= config.max_fov_fraction
    detail = f"fills {fraction:.1%} of the field of view (limit {config.max_fov_fraction:.0%})"
    return ScreenResult("fov_fraction", passed, detail, Severity.REJECT, {"fraction": fraction})


def screen_outside_body(mask: np.ndarray, body: np.ndarray, config: ScreenConfig) -> ScreenResult:
    voxels = int(mask.sum())
    fraction = float((mask & ~body).sum() / voxels) if voxels else 0.0
    passed = fraction <= config.max_outside_body_fraction
    detail = f"{fraction:.1%} of the mask lies outside the body (limit {config.max_outside_body_fraction:.0%})"
    return ScreenResult("outside_body", passed, detail, Severity.REJECT, {"fraction": fraction})


def screen_fragmentation(mask: np.ndarray, config: ScreenConfig) -> ScreenResult:
    """Connected components and the share of surface voxels: noise is all surface and full of one-voxel
    holes. A thin organ (a collapsed rectum on coarse pixels) is all surface too, but closing its holes
    adds next to nothing (at most 2 % on the phantoms' rectums, 15-73 % on noise)."""
    labels, components = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    voxels = int(mask.sum())
    if voxels == 0:
        return ScreenResult("fragmentation", True, "no voxels", Severity.REVIEW, {"components": 0})
    largest = int(np.bincount(labels.ravel())[1:].max())
    # In-plane erosion: a thin stack of slices is not all surface, uniform noise is.
    in_plane = np.zeros((3, 3, 3), dtype=bool)
    in_plane[1] = ndimage.generate_binary_structure(2, 1)
    surface = int((mask & ~ndimage.binary_erosion(mask, in_plane)).sum())
    surface_fraction = surface / voxels
    values = {"components": int(components), "largest_fraction": largest / voxels, "surface_fraction": surface_fraction}
    # small pieces beside a whole organ round the largest share to 100 %: name them in voxels instead
    others = f", {components - 1} more with {voxels - largest} voxels" if components > 1 else ""
    detail = (f"{components} component{'s' if components != 1 else ''} (largest {largest} of {voxels} voxels"
              f"{others}), {surface_fraction:.0%} surface voxels")
    if surface_fraction > config.noise_surface_fraction and voxels >= config.noise_min_voxels:
        holes = int((ndimage.binary_closing(mask, in_plane) & ~mask).sum()) / voxels
        values["hole_fraction"] = holes
        if holes > config.noise_min_hole_fraction:
            return ScreenResult("fragmentation", False, f"noise-like mask: {detail}, one-voxel holes {holes:.0%} of "
                                f"its size", Severity.REJECT, values)
    return ScreenResult("fragmentation", components <= config.max_components, detail, Severity.REVIEW, values)


def screen_volume(mask: np.ndarray, grid: Grid, roi_name: str, config: ScreenConfig) -> ScreenResult:
    volume_ml = float(mask.sum()) * grid.voxel_volume_ml
    name = normalised_name(roi_name)
    for expected in config.volume_ranges:
        if re.search(expected.pattern, name):
            passed = expected.min_ml <= volume_ml <= expected.max_ml
            detail = f"{volume_ml:.1f} ml ({'within' if passed else 'outside'} {expected.min_ml:g}-{expected.max_ml:g} ml)"
            return ScreenResult("volume_range", passed, detail, Severity.REVIEW,
                                {"volume_ml": volume_ml, "min_ml": expected.min_ml, "max_ml": expected.max_ml})
    return ScreenResult("volume_range", True, f"{volume_ml:.1f} ml (no range configured for '{roi_name}')",
                        Severity.REVIEW, {"volume_ml": volume_ml})


def screen_position(mask: np.ndarray, body: np.ndarray, grid: Grid, roi_name: str,
                    config: ScreenConfig) -> ScreenResult:
    """Where the organ lies across the body: a midline organ (prostate, bladder, rectum) near the body's
    left-right midline, a lateral one (a femoral head) on its named side, and either within the body's
    anterior-posterior extent; measured over the body at the ROI's own levels (patient z, so any slice
    orientation), in fractions of the body's half-width and half-depth. A contour moved far off its
    organ that stays inside the body fails here, as does a left and right swapped."""
    organ = organ_of(roi_name)
    if organ is None or not organ.placement or not mask.any():
        return ScreenResult("position", True, f"no position rule for '{roi_name}'", Severity.REVIEW)
    roi = grid.to_patient(np.argwhere(mask)[:, ::-1].astype(float))
    # a sample of the body's voxels (every 4th along rows and columns) is plenty for its extent
    body_points = grid.to_patient((np.argwhere(body[:, ::4, ::4]) * [1, 4, 4])[:, ::-1].astype(float))
    reach = float(grid.spacing.max()) / 2
    level = body_points[(body_points[:, 2] >= roi[:, 2].min() - reach) & (body_points[:, 2] <= roi[:, 2].max() + reach)]
    low, high = np.percentile(level[:, :2], [1, 99], axis=0) if len(level) else (np.zeros(2), np.zeros(2))
    if np.any(high - low <= 0):
        return ScreenResult("position", True, "no body at the ROI's levels to place it in", Severity.REVIEW)
    lateral, depth = (roi.mean(axis=0)[:2] - (low + high) / 2) / ((high - low) / 2)  # patient +x left, +y posterior
    side = laterality_of(roi_name)
    if organ.placement == MIDLINE:
        placed, rule = abs(lateral) <= config.max_midline_offset, f"within {config.max_midline_offset:.0%} of the midline"
    else:
        wanted = {"Left": 1, "Right": -1}.get(side or "")
        placed = (lateral * wanted if wanted else abs(lateral)) >= config.min_lateral_offset
        rule = f"at least {config.min_lateral_offset:.0%} {'to the ' + side.lower() if side else 'to either side'}"
    placed = placed and abs(depth) <= config.max_depth_offset
    detail = (f"centre {abs(lateral):.0%} of the body's half-width {'left' if lateral >= 0 else 'right'} of its midline, "
              f"{abs(depth):.0%} of its half-depth {'posterior' if depth >= 0 else 'anterior'} of its middle "
              f"(a {organ.placement} organ: {rule}, and within {config.max_depth_offset:.0%} of the middle)")
    return ScreenResult("position", bool(placed), detail if placed else "organ out of place: " + detail, Severity.REVIEW,
                        {"lateral": round(float(lateral), 4), "depth": round(float(depth), 4)})


def says_off_organ(screen: ScreenResult) -> bool:
    """A failed screen that says the contour is not drawn on its organ, which a predicted Dice assumes:
    every reject (empty, all ones, noise, outside the body), and an organ out of place."""
    return not screen.passed and (screen.severity is Severity.REJECT or screen.name == "position")


def screen_slice_gaps(mask: np.ndarray, config: ScreenConfig) -> ScreenResult:
    contoured = np.flatnonzero(mask.any(axis=(1, 2)))
    if contoured.size == 0:
        return ScreenResult("slice_gaps", True, "no contoured slices", Severity.REVIEW, {"gaps": 0})
    present = set(contoured.tolist())
    empty = [k for k in range(int(contoured[0]), int(contoured[-1]) + 1) if k not in present]
    passed = len(empty) <= config.max_slice_gaps
    detail = (f"{len(empty)} empty slice(s) between contoured slices {contoured[0]}-{contoured[-1]}"
              + (f": {', '.join(map(str, empty[:8]))}{' ...' if len(empty) > 8 else ''}" if empty else ""))
    return ScreenResult("slice_gaps", passed, detail, Severity.REVIEW, {"gaps": len(empty)})


def screen_fov_edge(mask: np.ndarray) -> ScreenResult:
    """A mask touching the edge of the field of view (in-plane or first/last slice) may be cut off."""
    edges = {
        "first slice": mask[0].any(), "last slice": mask[-1].any(),
        "top row": mask[:, 0, :].any(), "bottom row": mask[:, -1, :].any(),
        "left column": mask[:, :, 0].any(), "right column": mask[:, :, -1].any(),
    }
    touched = [name for name, hit in edges.items() if hit]
    detail = f"touches the {', '.join(touched)} of the field of view" if touched else "inside the field of view"
    return ScreenResult("fov_edge", not touched, detail, Severity.REVIEW, {"edges": ",".join(touched)})


def body_mask(image: np.ndarray, modality: str = "MR") -> np.ndarray:
    """The patient's body: voxels above the background level, holes filled slice by slice, lightly dilated.

    CT uses a fixed -500 HU; other modalities 10 % of the way from the 1st to the 99th percentile,
    which keeps dark tissue (tumour on T1, fluid) inside the body where an Otsu split would not.
    """
    finite = image[np.isfinite(image)]
    if finite.size == 0 or float(finite.max()) == float(finite.min()):
        return np.ones(image.shape, dtype=bool)
    if modality == "CT":
        threshold = -500.0
    else:
        low, high = np.percentile(finite, [1, 99])
        threshold = float(low + 0.1 * (high - low))
    body = image > threshold
    body = np.stack([ndimage.binary_fill_holes(plane) for plane in body])
    return ndimage.binary_dilation(body, iterations=2)


def run_screens(mask: np.ndarray, grid: Grid, roi_name: str, body: np.ndarray, config: ScreenConfig,
                interpreted_type: str = "") -> list[ScreenResult]:
    """Every screen for one ROI, in a fixed order. Body-sized ROIs skip the size screens."""
    results = [screen_empty(mask)]
    if interpreted_type.upper() not in config.large_roi_types:
        results += [screen_fov_fraction(mask, config), screen_outside_body(mask, body, config)]
    results += [
        screen_fragmentation(mask, config),
        screen_volume(mask, grid, roi_name, config),
        screen_position(mask, body, grid, roi_name, config),
        screen_slice_gaps(mask, config),
        screen_fov_edge(mask),
    ]
    return results
