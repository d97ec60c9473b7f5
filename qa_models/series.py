"""A folder of DICOM image files, in any order and with any names, as one 3-D volume in patient space.

Slices are ordered by their position along the slice normal, never by file name, InstanceNumber or
SliceLocation. Enhanced (multi-frame) images are read frame by frame through their functional groups.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from .domain import normalise_body_part
from .errors import GeometryError, InputError
from .geometry import Grid

log = logging.getLogger(__name__)

# Objects that often sit beside images in an export folder; they are not slices and are skipped.
NON_IMAGE_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.481.3": "RT Structure Set",
    "1.2.840.10008.5.1.4.1.1.481.5": "RT Plan",
    "1.2.840.10008.5.1.4.1.1.481.2": "RT Dose",
    "1.2.840.10008.5.1.4.1.1.66.4": "Segmentation",
    "1.2.840.10008.5.1.4.1.1.88.34": "Comprehensive 3D SR",
    "1.2.840.10008.5.1.4.1.1.88.33": "Comprehensive SR",
    "1.2.840.10008.5.1.4.1.1.88.22": "Enhanced SR",
}

# Positions closer than this along the normal are the same slice; relative to the slice spacing.
_SPACING_TOLERANCE = 0.05
_ORIENTATION_TOLERANCE = 1e-4


@dataclass
class _Slice:
    position: np.ndarray
    row_direction: np.ndarray
    column_direction: np.ndarray
    pixel_spacing: tuple[float, float]
    shape: tuple[int, int]
    sop_instance_uid: str
    frame: int | None  # 0-based frame of a multi-frame file, None for a single-frame image
    dataset: Dataset
    path: Path
    kind: str = ""  # frame type and temporal position: frames of one kind form one volume

    @property
    def names(self) -> str:
        return f"{self.sop_instance_uid} frame {self.frame + 1}" if self.frame is not None else self.sop_instance_uid


@dataclass
class ImageSeries:
    """A loaded image series: voxels on ``grid``, the instances it came from, and its identity."""

    array: np.ndarray
    grid: Grid
    study_instance_uid: str
    series_instance_uid: str
    frame_of_reference_uid: str
    modality: str
    sop_class_uid: str
    # SOP Instance UID of each slice k (several equal UIDs for a multi-frame file), frame per slice.
    slice_sop_instance_uids: list[str]
    slice_frames: list[int | None]
    # Headers (no pixel data) of the source instances, for evidence in reports.
    datasets: list[Dataset] = field(repr=False)

    @property
    def first_dataset(self) -> Dataset:
        return self.datasets[0]

    @property
    def body_part(self) -> str | None:
        """Body Part Examined (upper case), or None where the header names none."""
        return normalise_body_part(self.first_dataset.get("BodyPartExamined"))

    def slice_of_instance(self, sop_instance_uid: str, frame: int | None = None) -> int | None:
        """The slice index k of an instance (and frame), or None when it is not in the series."""
        for k, (uid, slice_frame) in enumerate(zip(self.slice_sop_instance_uids, self.slice_frames)):
            if uid == sop_instance_uid and (frame is None or slice_frame is None or frame == slice_frame):
                return k
        return None


def read_dicom(path: Path, stop_before_pixels: bool = False) -> Dataset:
    """Read one DICOM file, turning anything unreadable into an InputError naming the file."""
    try:
        return pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
    except InvalidDicomError:
        raise InputError(f"{path}: not a DICOM file") from None
    except (OSError, ValueError, EOFError) as error:
        raise InputError(f"{path}: unreadable DICOM file ({error})") from None


def load_series(folder: str | Path, referenced_frames: set[tuple[str, int]] | None = None) -> ImageSeries:
    """Load every image instance under ``folder`` (recursively) as one volume."""
    folder = Path(folder)
    if folder.is_file():
        raise InputError(f"{folder}: a file, not the folder of an image series (the image folder comes first, "
                         "then the RTSTRUCT or SEG file)")
    if not folder.is_dir():
        raise InputError(f"{folder}: no such folder")
    return load_series_files(series_files(folder), str(folder), referenced_frames)


def series_files(folder: Path) -> list[Path]:
    """Every file under ``folder`` (recursively, hidden ones left out), sorted: what ``load_series`` reads."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))


def load_series_files(files: Sequence[Path], source: str,
                      referenced_frames: set[tuple[str, int]] | None = None) -> ImageSeries:
    """Load the image instances among ``files`` as one volume; ``source`` names them in errors.

    Where frames of several kinds (frame types, temporal positions) lie at the same positions, the kind
    whose frames a structure set references (``referenced_frames``: instance UID, 0-based frame) is the
    volume; without such a reference the series is refused, naming the kinds."""
    slices: list[_Slice] = []
    for path in files:
        dataset = read_dicom(path)
        if str(dataset.get("SOPClassUID", "")) in NON_IMAGE_SOP_CLASSES or "PixelData" not in dataset:
            log.debug("skipping non-image instance %s", dataset.get("SOPInstanceUID", path.name))
            continue
        slices.extend(_slices_of(dataset, path))
    if not slices:
        raise InputError(f"{source}: no DICOM image instances found")
    _check_one_series(slices)
    slices = _one_kind(slices, referenced_frames or set())
    ordered, grid = _order_slices(slices)
    array = _stack_pixels(ordered)
    first = ordered[0].dataset
    datasets = _headers_without_pixels(ordered)
    return ImageSeries(
        array=array,
        grid=grid,
        study_instance_uid=str(first.StudyInstanceUID),
        series_instance_uid=str(first.SeriesInstanceUID),
        frame_of_reference_uid=str(first.get("FrameOfReferenceUID", "")),
        modality=str(first.get("Modality", "")),
        sop_class_uid=str(first.SOPClassUID),
        slice_sop_instance_uids=[s.sop_instance_uid for s in ordered],
        slice_frames=[s.frame for s in ordered],
        datasets=datasets,
    )


def _required(dataset: Dataset, keyword: str, path: Path):
    value = dataset.get(keyword)
    if value is None or value == "":
        raise InputError(f"{path}: image lacks {keyword}")
    return value


def _slices_of(dataset: Dataset, path: Path) -> list[_Slice]:
    """One record per 2-D plane in the file: one for a classic image, one per frame for an enhanced one."""
    shape = (int(dataset.Rows), int(dataset.Columns))
    uid = str(dataset.SOPInstanceUID)
    if "PerFrameFunctionalGroupsSequence" not in dataset:
        orientation = np.array(_required(dataset, "ImageOrientationPatient", path), dtype=float)
        spacing = _required(dataset, "PixelSpacing", path)
        position = np.array(_required(dataset, "ImagePositionPatient", path), dtype=float)
        return [_Slice(position, orientation[:3], orientation[3:], (float(spacing[0]), float(spacing[1])),
                       shape, uid, None, dataset, path)]
    shared = dataset.get("SharedFunctionalGroupsSequence", [Dataset()])[0]
    records = []
    for frame, groups in enumerate(dataset.PerFrameFunctionalGroupsSequence):
        def group(name: str) -> Dataset:
            item = groups.get(name) or shared.get(name)
            if not item:
                raise InputError(f"{path}: frame {frame + 1} lacks {name}")
            return item[0]
        orientation = np.array(group("PlaneOrientationSequence").ImageOrientationPatient, dtype=float)
        spacing = group("PixelMeasuresSequence").PixelSpacing
        position = np.array(group("PlanePositionSequence").ImagePositionPatient, dtype=float)
        records.append(_Slice(position, orientation[:3], orientation[3:], (float(spacing[0]), float(spacing[1])),
                              shape, uid, frame, dataset, path, _frame_kind(groups, shared)))
    return records


def _frame_kind(groups: Dataset, shared: Dataset) -> str:
    """A frame's type (MR/CT Image Frame Type) and temporal position, as one printable key."""
    kind = ""
    for name in ("MRImageFrameTypeSequence", "CTImageFrameTypeSequence"):
        item = groups.get(name) or shared.get(name)
        if item and "FrameType" in item[0]:
            kind = "\\".join(item[0].FrameType)
    content = groups.get("FrameContentSequence")
    if content and content[0].get("TemporalPositionIndex") is not None:
        kind += f" time {content[0].TemporalPositionIndex}"
    return kind


def _one_kind(slices: list[_Slice], referenced_frames: set[tuple[str, int]]) -> list[_Slice]:
    """The frames of one kind where several kinds share positions (see ``load_series_files``)."""
    kinds: dict[str, list[_Slice]] = {}
    for s in slices:
        kinds.setdefault(s.kind, []).append(s)
    if len(kinds) == 1:
        return slices
    normal = np.cross(slices[0].row_direction, slices[0].column_direction)
    heights = [{round(float(s.position @ normal), 2) for s in group} for group in kinds.values()]
    if not any(a & b for n, a in enumerate(heights) for b in heights[n + 1:]):
        return slices  # kinds at different positions: one stack
    chosen = [kind for kind, group in kinds.items()
              if any((s.sop_instance_uid, s.frame) in referenced_frames for s in group)]
    if len(chosen) == 1:
        log.info("frames of kind %s chosen by the structure set's references", chosen[0])
        return kinds[chosen[0]]
    listing = "; ".join(f"{len(group)} frames of {kind or 'no frame type'}" for kind, group in kinds.items())
    reason = ("the structure set references frames of several of them" if chosen
              else "the structure set references none of their frames")
    raise GeometryError(f"frames of several kinds lie at the same positions ({listing}) and {reason}, "
                        "so no one volume can be chosen")


def _check_one_series(slices: list[_Slice]) -> None:
    series = {str(s.dataset.SeriesInstanceUID) for s in slices}
    if len(series) > 1:
        raise InputError(f"mixed series in one folder: {len(series)} SeriesInstanceUIDs ({', '.join(sorted(series))})")
    first = slices[0]
    for s in slices[1:]:
        if not (np.allclose(s.row_direction, first.row_direction, atol=_ORIENTATION_TOLERANCE)
                and np.allclose(s.column_direction, first.column_direction, atol=_ORIENTATION_TOLERANCE)):
            raise GeometryError(f"inconsistent ImageOrientationPatient in series {s.dataset.SeriesInstanceUID}")
        if not np.allclose(s.pixel_spacing, first.pixel_spacing, rtol=1e-4):
            raise GeometryError(f"inconsistent PixelSpacing in series {s.dataset.SeriesInstanceUID}")
        if s.shape != first.shape:
            raise GeometryError(f"inconsistent Rows/Columns in series {s.dataset.SeriesInstanceUID}")


def _order_slices(slices: list[_Slice]) -> tuple[list[_Slice], Grid]:
    """Sort by position along the slice normal and check the positions form a regular stack."""
    row, column = slices[0].row_direction, slices[0].column_direction
    normal = np.cross(row, column)
    if not np.isclose(np.linalg.norm(normal), 1.0, atol=1e-3):
        raise GeometryError("ImageOrientationPatient is not a pair of orthogonal unit vectors")
    heights = np.array([float(s.position @ normal) for s in slices])
    order = np.argsort(heights, kind="stable")
    ordered = [slices[i] for i in order]
    heights = heights[order]
    steps = np.diff(heights)
    pixel_spacing = slices[0].pixel_spacing
    if len(ordered) > 1:
        spacing = float(np.min(steps)) if np.min(steps) > 0 else 0.0
        duplicates = np.flatnonzero(steps < 1e-3)
        if duplicates.size:
            raise GeometryError(
                f"duplicate slice position {heights[duplicates[0]]:.3f} mm along the normal "
                f"({ordered[duplicates[0]].sop_instance_uid} and {ordered[duplicates[0] + 1].sop_instance_uid})")
        irregular = np.flatnonzero(np.abs(steps - spacing) > _SPACING_TOLERANCE * spacing)
        if irregular.size:
            k = int(irregular[0])
            ratio = steps[k] / spacing
            if abs(ratio - round(ratio)) <= _SPACING_TOLERANCE:
                raise GeometryError(
                    f"missing slice: gap of {steps[k]:.3f} mm between slices at {heights[k]:.3f} and "
                    f"{heights[k + 1]:.3f} mm where the spacing is {spacing:.3f} mm")
            raise GeometryError(f"non-uniform slice spacing ({spacing:.3f} mm and {steps[k]:.3f} mm)")
        spacing = float(np.mean(steps))
        in_plane_drift = (ordered[-1].position - ordered[0].position) - normal * (heights[-1] - heights[0])
        if np.linalg.norm(in_plane_drift) > 0.01 * spacing * len(ordered):
            raise GeometryError("slices are sheared (gantry tilt); resample the series first")
    else:
        thickness = ordered[0].dataset.get("SpacingBetweenSlices") or ordered[0].dataset.get("SliceThickness") or 1.0
        spacing = float(thickness)
    grid = Grid(
        origin=ordered[0].position.copy(),
        spacing=np.array([pixel_spacing[1], pixel_spacing[0], spacing]),
        direction=np.column_stack([row, column, normal]),
        shape=(len(ordered), *ordered[0].shape),
    )
    return ordered, grid


def _stack_pixels(ordered: list[_Slice]) -> np.ndarray:
    """Pixel values in real-world units (rescale applied) as float32, indexed [k, j, i]."""
    volume = np.empty((len(ordered), *ordered[0].shape), dtype=np.float32)
    decoded: dict[Path, np.ndarray] = {}
    for k, s in enumerate(ordered):
        if s.path not in decoded:
            try:
                decoded[s.path] = pydicom.pixels.apply_rescale(s.dataset.pixel_array, s.dataset)
            except Exception as error:  # any decoder failure is a property of the input file
                raise InputError(f"{s.path}: pixel data cannot be decoded ({error})") from None
        pixels = decoded[s.path]
        volume[k] = pixels[s.frame] if s.frame is not None else pixels
    return volume


def _headers_without_pixels(ordered: list[_Slice]) -> list[Dataset]:
    headers, seen = [], set()
    for s in ordered:
        if s.sop_instance_uid in seen:
            continue
        seen.add(s.sop_instance_uid)
        header = s.dataset.copy()
        for keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
            if keyword in header:
                del header[keyword]
        headers.append(header)
    return headers
