"""Which images a structure set needs: read from its DICOM references, never from pixel data.

The node waits for these instances before it assesses a case; the series loader uses the referenced
frames to choose among frames of several types at the same positions (an enhanced MR with magnitude and
field-map frames)."""

from __future__ import annotations

from dataclasses import dataclass, field

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from .rtstruct import RTSTRUCT_SOP_CLASS
from .seg import SEG_SOP_CLASS

STRUCTURE_KINDS = {RTSTRUCT_SOP_CLASS: "RTSTRUCT", SEG_SOP_CLASS: "SEG"}


@dataclass
class References:
    series_uids: set[str] = field(default_factory=set)
    instance_uids: set[str] = field(default_factory=set)
    frames: set[tuple[str, int]] = field(default_factory=set)  # (SOP Instance UID, 0-based frame) named explicitly

    @property
    def image_series_uid(self) -> str | None:
        """The one image series the structures were drawn on (None when none or several are named)."""
        return next(iter(self.series_uids)) if len(self.series_uids) == 1 else None


def _uids(items, keyword: str = "ReferencedSOPInstanceUID") -> set[str]:
    return {str(item.get(keyword)) for item in items or [] if item.get(keyword)}


def _frames(items) -> set[tuple[str, int]]:
    """(instance, 0-based frame) of the items that name frames (ReferencedFrameNumber, 1-based, multi-valued)."""
    frames = set()
    for item in items or []:
        numbers = item.get("ReferencedFrameNumber")
        if item.get("ReferencedSOPInstanceUID") and numbers is not None:
            for number in numbers if isinstance(numbers, MultiValue) else [numbers]:
                frames.add((str(item.ReferencedSOPInstanceUID), int(number) - 1))
    return frames


def rtstruct_references(dataset: Dataset) -> References:
    refs = References()
    for frame in dataset.get("ReferencedFrameOfReferenceSequence", []):
        for study in frame.get("RTReferencedStudySequence", []):
            for series in study.get("RTReferencedSeriesSequence", []):
                if series.get("SeriesInstanceUID"):
                    refs.series_uids.add(str(series.SeriesInstanceUID))
                refs.instance_uids |= _uids(series.get("ContourImageSequence"))
                refs.frames |= _frames(series.get("ContourImageSequence"))
    for roi in dataset.get("ROIContourSequence", []):
        for contour in roi.get("ContourSequence", []):
            refs.instance_uids |= _uids(contour.get("ContourImageSequence"))
            refs.frames |= _frames(contour.get("ContourImageSequence"))
    return refs


def seg_references(dataset: Dataset) -> References:
    refs = References()
    for series in dataset.get("ReferencedSeriesSequence", []):
        if series.get("SeriesInstanceUID"):
            refs.series_uids.add(str(series.SeriesInstanceUID))
        refs.instance_uids |= _uids(series.get("ReferencedInstanceSequence"))
    groups = list(dataset.get("PerFrameFunctionalGroupsSequence", []))
    groups += list(dataset.get("SharedFunctionalGroupsSequence", []))
    for group in groups:
        for derivation in group.get("DerivationImageSequence", []):
            refs.instance_uids |= _uids(derivation.get("SourceImageSequence"))
            refs.frames |= _frames(derivation.get("SourceImageSequence"))
    return refs


def structure_references(dataset: Dataset) -> References:
    """The image series and instances an RTSTRUCT or SEG references."""
    if str(dataset.SOPClassUID) == SEG_SOP_CLASS:
        return seg_references(dataset)
    return rtstruct_references(dataset)
