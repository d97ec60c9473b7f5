"""RT Structure Sets: ROIs and their contours, rasterised exactly onto an image series' grid.

Each contour is placed on the slice whose plane it lies in, found from its points' position along
the slice normal; ContourImageSequence, which is optional and often stale, is only a cross-check.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
from pydicom.dataset import Dataset

from .errors import InputError, ReferenceMismatchError
from .polygon_fill import fill_polygons
from .series import ImageSeries

log = logging.getLogger(__name__)

RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"


@dataclass
class Contour:
    geometric_type: str
    points_mm: np.ndarray  # (N, 3) patient coordinates
    referenced_sop_instance_uids: list[str]


@dataclass
class Roi:
    number: int
    name: str
    interpreted_type: str
    contours: list[Contour] = field(default_factory=list)


@dataclass
class RoiMask:
    """A ROI rasterised on a series grid, with what was noticed on the way."""

    number: int
    name: str
    mask: np.ndarray  # bool [k, j, i]
    warnings: list[str]
    probabilities: np.ndarray | None = None  # FRACTIONAL SEG only
    segment_number: int | None = None  # SEG only


def read_rois(dataset: Dataset) -> list[Roi]:
    """The ROIs of an RTSTRUCT dataset with their contours in patient mm."""
    if str(dataset.get("SOPClassUID", "")) != RTSTRUCT_SOP_CLASS:
        raise InputError(f"not an RT Structure Set (SOP Class {dataset.get('SOPClassUID', 'missing')})")
    interpreted = {int(o.ReferencedROINumber): str(o.get("RTROIInterpretedType", ""))
                   for o in dataset.get("RTROIObservationsSequence", [])}
    rois = {int(item.ROINumber): Roi(int(item.ROINumber), str(item.get("ROIName", "")),
                                     interpreted.get(int(item.ROINumber), ""))
            for item in dataset.get("StructureSetROISequence", [])}
    for roi_contour in dataset.get("ROIContourSequence", []):
        roi = rois.get(int(roi_contour.ReferencedROINumber))
        if roi is None:
            log.warning("ROIContourSequence refers to undeclared ROI %s", roi_contour.ReferencedROINumber)
            continue
        for item in roi_contour.get("ContourSequence", []):
            data = np.asarray(item.get("ContourData", []), dtype=float)
            if data.size % 3:
                raise InputError(f"ROI {roi.number} '{roi.name}': ContourData length {data.size} is not a multiple of 3")
            references = [str(ref.ReferencedSOPInstanceUID) for ref in item.get("ContourImageSequence", [])]
            roi.contours.append(Contour(str(item.get("ContourGeometricType", "")), data.reshape(-1, 3), references))
    return list(rois.values())


def check_references(dataset: Dataset, series: ImageSeries) -> None:
    """Refuse a structure set that was not drawn on ``series`` (frame of reference or series differ)."""
    frames = {str(item.FrameOfReferenceUID) for item in dataset.get("ReferencedFrameOfReferenceSequence", [])
              if "FrameOfReferenceUID" in item}
    frames |= {str(item.ReferencedFrameOfReferenceUID) for item in dataset.get("StructureSetROISequence", [])
               if "ReferencedFrameOfReferenceUID" in item}
    if frames and series.frame_of_reference_uid not in frames:
        raise ReferenceMismatchError(
            f"structure set frame of reference {', '.join(sorted(frames))} differs from the series' "
            f"{series.frame_of_reference_uid}")
    referenced_series = {
        str(s.SeriesInstanceUID)
        for f in dataset.get("ReferencedFrameOfReferenceSequence", [])
        for study in f.get("RTReferencedStudySequence", [])
        for s in study.get("RTReferencedSeriesSequence", [])
    }
    if referenced_series and series.series_instance_uid not in referenced_series:
        raise ReferenceMismatchError(
            f"referenced images missing: structure set references series {', '.join(sorted(referenced_series))}, "
            f"the image folder holds {series.series_instance_uid}")


def rasterise_roi(roi: Roi, series: ImageSeries, plane_tolerance: float = 0.25) -> RoiMask:
    """The ROI's CLOSED_PLANAR contours filled on the series grid (even-odd per slice).

    ``plane_tolerance`` is the largest distance, in slice spacings, between a contour and the image
    plane it is placed on; a contour farther from every plane is reported and left out.
    """
    grid = series.grid
    depth, rows, columns = grid.shape
    mask = np.zeros(grid.shape, dtype=bool)
    warnings: list[str] = []
    loops_by_slice: dict[int, list[np.ndarray]] = defaultdict(list)
    skipped_types: dict[str, int] = defaultdict(int)
    off_plane = []
    for number, contour in enumerate(roi.contours, start=1):
        if contour.geometric_type != "CLOSED_PLANAR":
            skipped_types[contour.geometric_type or "unspecified"] += 1
            continue
        if len(contour.points_mm) < 3:
            continue
        index = grid.to_index(contour.points_mm)
        height = float(np.mean(index[:, 2]))
        k = int(np.round(height))
        spread = float(np.ptp(index[:, 2]))
        if not 0 <= k < depth or abs(height - k) > plane_tolerance:
            off_plane.append(number)
            _raise_if_images_missing(roi, contour, series, height)
            continue
        if spread > 2 * plane_tolerance:
            warnings.append(f"contour {number} is not planar in the slice plane ({spread:.2f} slice spacings); placed on slice {k}")
        _cross_check_reference(roi, number, contour, series, k, warnings)
        loops_by_slice[k].append(index[:, :2])
    for kind, count in skipped_types.items():
        warnings.append(f"{count} {kind} contour(s) ignored (only CLOSED_PLANAR is rasterised)")
    if off_plane:
        warnings.append(f"{len(off_plane)} contour(s) lie on no image plane and were left out (contour numbers "
                        f"{', '.join(map(str, off_plane[:5]))}{' ...' if len(off_plane) > 5 else ''})")
    for k, loops in loops_by_slice.items():
        mask[k] = fill_polygons(loops, rows, columns)
    for warning in warnings:
        log.warning("ROI %s: %s", roi.number, warning)
    return RoiMask(roi.number, roi.name, mask, warnings)


def _raise_if_images_missing(roi: Roi, contour: Contour, series: ImageSeries, height: float) -> None:
    """A contour off the volume whose referenced image is absent means the series is incomplete."""
    missing = [uid for uid in contour.referenced_sop_instance_uids if series.slice_of_instance(uid) is None]
    if missing and (height < -0.5 or height > series.grid.shape[0] - 0.5):
        raise ReferenceMismatchError(
            f"referenced images missing: ROI {roi.number} '{roi.name}' has a contour on image {missing[0]}, "
            f"which is not in the image folder and lies outside the series")


def _cross_check_reference(roi: Roi, number: int, contour: Contour, series: ImageSeries, k: int,
                           warnings: list[str]) -> None:
    for uid in contour.referenced_sop_instance_uids:
        referenced = series.slice_of_instance(uid)
        if referenced is not None and referenced != k:
            warnings.append(f"contour {number} lies on slice {k} but its ContourImageSequence names slice {referenced}")


def find_roi(rois: list[Roi], name: str) -> Roi:
    """The ROI called ``name`` (case-insensitive), or an InputError listing those there are."""
    for roi in rois:
        if roi.name.lower() == name.lower():
            return roi
    raise InputError(f"ROI '{name}' not found; the structure set has: {', '.join(r.name for r in rois)}")
