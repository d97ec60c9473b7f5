"""DICOM Segmentation objects decoded through highdicom and placed on an image series' grid.

Frames are placed by their plane positions (highdicom's volume geometry), never by frame order.
FRACTIONAL segments keep their probabilities in [0, 1]; the mask is the probability at or above 0.5.
"""

from __future__ import annotations

import logging
from copy import deepcopy

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset

from .errors import GeometryError, InputError, ReferenceMismatchError
from .rtstruct import RoiMask
from .series import ImageSeries

log = logging.getLogger(__name__)

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
_INTEGER_TOLERANCE = 1e-3


def decode_segments(dataset: Dataset, series: ImageSeries) -> list[RoiMask]:
    """Every segment of a SEG dataset as a mask (and probabilities, when FRACTIONAL) on the series grid."""
    if str(dataset.get("SOPClassUID", "")) != SEG_SOP_CLASS:
        raise InputError(f"not a Segmentation (SOP Class {dataset.get('SOPClassUID', 'missing')})")
    if str(dataset.get("FrameOfReferenceUID", "")) != series.frame_of_reference_uid:
        raise ReferenceMismatchError(
            f"segmentation frame of reference {dataset.get('FrameOfReferenceUID', 'missing')} differs from the "
            f"series' {series.frame_of_reference_uid}")
    notes: list[str] = []
    try:
        seg, volume = _volume(dataset)
    except _Undecodable as error:
        # Scanners write a SpacingBetweenSlices that is not the slices' spacing (1 for slices 1.25 mm apart),
        # and SEG writers copy it; the frames' own positions are what count, and the grid check below holds.
        stated = _spacing_between_slices(dataset)
        if "regularly-spaced" not in str(error) or stated is None:
            raise InputError(f"segmentation {dataset.get('SOPInstanceUID')} cannot be decoded ({error})") from None
        try:
            seg, volume = _volume(_without_spacing_between_slices(dataset))
        except _Undecodable as second:
            raise InputError(f"segmentation {dataset.get('SOPInstanceUID')} cannot be decoded ({second})") from None
        notes.append(f"the segmentation's SpacingBetweenSlices ({stated} mm) disagrees with its frame positions; "
                     "frames placed by their positions")
        log.warning("segmentation %s: %s", dataset.get("SOPInstanceUID"), notes[-1])
    index_of_seg = _seg_to_series_index(volume.affine, series)
    fractional = str(dataset.SegmentationType) == "FRACTIONAL"
    results = []
    for position, number in enumerate(seg.get_segment_numbers()):
        values = np.zeros(series.grid.shape, dtype=np.float32)
        warnings = notes + _place(volume.array[..., position], index_of_seg, values)
        label = str(seg.get_segment_description(number).segment_label)
        mask = values >= 0.5
        results.append(RoiMask(number, label, mask, warnings, probabilities=values if fractional else None,
                               segment_number=number))
    return results


def _volume(dataset: Dataset) -> tuple[hd.seg.Segmentation, hd.Volume]:
    try:
        seg = hd.seg.Segmentation.from_dataset(dataset, copy=False)
        return seg, seg.get_volume(combine_segments=False, rescale_fractional=True, dtype=np.float32)
    except _DECODE_ERRORS as error:
        raise _Undecodable(str(error)) from None


class _Undecodable(Exception):
    """highdicom could not build the volume; the message says why."""


_DECODE_ERRORS = (ValueError, RuntimeError, AttributeError, KeyError)


def _pixel_measures(dataset: Dataset) -> list[Dataset]:
    groups = [*dataset.get("SharedFunctionalGroupsSequence", []), *dataset.get("PerFrameFunctionalGroupsSequence", [])]
    return [measures for group in groups for measures in group.get("PixelMeasuresSequence", [])]


def _spacing_between_slices(dataset: Dataset) -> str | None:
    stated = [m.SpacingBetweenSlices for m in _pixel_measures(dataset) if "SpacingBetweenSlices" in m]
    return str(stated[0]) if stated else None


def _without_spacing_between_slices(dataset: Dataset) -> Dataset:
    """A copy without SpacingBetweenSlices, so the volume's spacing comes from the frame positions."""
    copy = deepcopy(dataset)
    for measures in _pixel_measures(copy):
        if "SpacingBetweenSlices" in measures:
            del measures.SpacingBetweenSlices
    return copy


def _seg_to_series_index(seg_affine: np.ndarray, series: ImageSeries) -> np.ndarray:
    """4x4 integer matrix taking SEG voxel (slice, row, column) to series voxel (i, j, k)."""
    mapping = np.linalg.inv(series.grid.affine) @ seg_affine
    rounded = np.round(mapping)
    if not np.allclose(mapping[:3], rounded[:3], atol=_INTEGER_TOLERANCE) or abs(np.linalg.det(rounded[:3, :3])) < 0.5:
        raise GeometryError("segmentation frames do not lie on the image series' voxel grid (resampling is not supported)")
    return rounded.astype(np.int64)


def _place(array: np.ndarray, index_of_seg: np.ndarray, values: np.ndarray) -> list[str]:
    """Copy the non-zero SEG voxels into ``values`` ([k, j, i]); report voxels outside the series."""
    seg_index = np.nonzero(array)
    if not seg_index[0].size:
        return []
    homogeneous = np.vstack([*seg_index, np.ones(seg_index[0].size, dtype=np.int64)])
    i, j, k = (index_of_seg @ homogeneous)[:3]
    depth, rows, columns = values.shape
    inside = (0 <= i) & (i < columns) & (0 <= j) & (j < rows) & (0 <= k) & (k < depth)
    values[k[inside], j[inside], i[inside]] = array[seg_index][inside]
    outside = int((~inside).sum())
    return [f"{outside} segmented voxel(s) lie outside the image series and were left out"] if outside else []
