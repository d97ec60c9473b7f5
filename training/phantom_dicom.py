"""Writers of the phantom's DICOM objects: an MR Image series, RT Structure Sets, and SEGs (highdicom)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from contourqa import NAME, __version__
from contourqa.qa_models.geometry import Grid

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
RTSTRUCT_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
MANUFACTURER = "contourqa phantom"


@dataclass(frozen=True)
class StudyIdentity:
    """The patient and study every object of one case shares: a phantom's, or a real image's."""

    patient_name: str
    patient_id: str
    study_instance_uid: str
    frame_of_reference_uid: str
    study_date: str
    patient_age: int | None
    patient_sex: str = "M"
    study_id: str = "1"

    @classmethod
    def new(cls, case_id: str, rng: np.random.Generator) -> "StudyIdentity":
        date = dt.date(2026, 1, 1) + dt.timedelta(days=int(rng.integers(0, 300)))
        return cls(f"Phantom^{case_id}", f"PH-{case_id}", generate_uid(), generate_uid(), date.strftime("%Y%m%d"),
                   int(rng.integers(50, 81)))


def _base_dataset(identity: StudyIdentity, sop_class_uid: str, sop_instance_uid: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class_uid
    ds.file_meta.MediaStorageSOPInstanceUID = sop_instance_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class_uid, sop_instance_uid
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName, ds.PatientID = identity.patient_name, identity.patient_id
    ds.PatientBirthDate, ds.PatientSex = "", identity.patient_sex
    if identity.patient_age is not None:
        ds.PatientAge = f"{identity.patient_age:03d}Y"
    ds.StudyInstanceUID, ds.StudyDate, ds.StudyTime = identity.study_instance_uid, identity.study_date, "090000"
    ds.ReferringPhysicianName, ds.StudyID, ds.AccessionNumber = "", identity.study_id, ""
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName, ds.SoftwareVersions = NAME, __version__
    ds.InstanceCreationDate, ds.InstanceCreationTime = identity.study_date, "090000"
    return ds


def mr_series_datasets(volume: np.ndarray, grid: Grid, identity: StudyIdentity, description: str) -> list[Dataset]:
    """One MR Image dataset per slice k of ``volume`` (uint16, [k, j, i])."""
    series_uid = generate_uid()
    datasets = []
    for k in range(volume.shape[0]):
        ds = _base_dataset(identity, MR_IMAGE_STORAGE, generate_uid())
        ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber = "MR", series_uid, 1
        ds.SeriesDescription, ds.BodyPartExamined = description, "PELVIS"
        ds.PatientPosition = "HFS"
        ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = identity.frame_of_reference_uid, ""
        ds.InstanceNumber = k + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
        ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions, ds.MRAcquisitionType = "SE", "SK", "", "2D"
        ds.RepetitionTime, ds.EchoTime, ds.EchoTrainLength, ds.MagneticFieldStrength = "4000", "100", 16, "3"
        ds.ImagingFrequency = "127.7"
        position = grid.to_patient(np.array([[0.0, 0.0, k]]))[0]
        ds.ImagePositionPatient = [f"{v:.4f}" for v in position]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*grid.direction[:, 0], *grid.direction[:, 1])]
        ds.PixelSpacing = [f"{grid.spacing[1]:.6f}", f"{grid.spacing[0]:.6f}"]
        ds.SliceThickness = f"{grid.spacing[2]:.4f}"
        ds.SpacingBetweenSlices = f"{grid.spacing[2]:.4f}"
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = volume.shape[1], volume.shape[2]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = np.ascontiguousarray(volume[k], dtype="<u2").tobytes()
        datasets.append(ds)
    return datasets


def rtstruct_dataset(image_datasets: list[Dataset], identity: StudyIdentity,
                     rois: dict[str, list[tuple[int, list[np.ndarray]]]], label: str) -> Dataset:
    """An RT Structure Set: for each ROI name, (slice index, closed polygons in patient mm) pairs."""
    ds = _base_dataset(identity, RTSTRUCT_STORAGE, generate_uid())
    ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber = "RTSTRUCT", generate_uid(), 2
    ds.SeriesDescription = label
    ds.OperatorsName = ""
    ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = identity.frame_of_reference_uid, ""
    ds.InstanceNumber = 1
    ds.StructureSetLabel = label[:16]
    ds.StructureSetDate, ds.StructureSetTime = identity.study_date, "100000"
    ds.ApprovalStatus = "UNAPPROVED"

    def image_reference(image: Dataset) -> Dataset:
        item = Dataset()
        item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = image.SOPClassUID, image.SOPInstanceUID
        return item

    series_ref = Dataset()
    series_ref.SeriesInstanceUID = image_datasets[0].SeriesInstanceUID
    series_ref.ContourImageSequence = [image_reference(image) for image in image_datasets]
    study_ref = Dataset()
    study_ref.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"  # Detached Study Management (retired, as TPS write)
    study_ref.ReferencedSOPInstanceUID = identity.study_instance_uid
    study_ref.RTReferencedSeriesSequence = [series_ref]
    frame_ref = Dataset()
    frame_ref.FrameOfReferenceUID = identity.frame_of_reference_uid
    frame_ref.RTReferencedStudySequence = [study_ref]
    ds.ReferencedFrameOfReferenceSequence = [frame_ref]

    ds.StructureSetROISequence, ds.ROIContourSequence, ds.RTROIObservationsSequence = [], [], []
    for number, (name, slices) in enumerate(rois.items(), start=1):
        roi = Dataset()
        roi.ROINumber, roi.ReferencedFrameOfReferenceUID, roi.ROIName = number, identity.frame_of_reference_uid, name
        roi.ROIGenerationAlgorithm = "AUTOMATIC"
        ds.StructureSetROISequence.append(roi)
        roi_contour = Dataset()
        roi_contour.ROIDisplayColor = [int(v) for v in np.random.default_rng(number).integers(0, 256, 3)]
        roi_contour.ReferencedROINumber = number
        contours = []
        for k, loops in slices:
            for loop in loops:
                contour = Dataset()
                contour.ContourImageSequence = [image_reference(image_datasets[k])]
                contour.ContourGeometricType = "CLOSED_PLANAR"
                contour.NumberOfContourPoints = len(loop)
                contour.ContourData = [f"{v:.3f}" for v in loop.ravel()]
                contours.append(contour)
        if contours:
            roi_contour.ContourSequence = contours
        ds.ROIContourSequence.append(roi_contour)
        observation = Dataset()
        observation.ObservationNumber, observation.ReferencedROINumber = number, number
        observation.RTROIInterpretedType, observation.ROIInterpreter = "ORGAN", ""
        ds.RTROIObservationsSequence.append(observation)
    return ds


def seg_dataset(image_datasets: list[Dataset], segments: dict[str, np.ndarray], fractional: bool,
                label: str) -> hd.seg.Segmentation:
    """A SEG of the masks (or probabilities, when ``fractional``) in ``segments``, each [k, j, i] on the series grid."""
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number, segment_label=name,
            segmented_property_category=codes.SCT.Organ, segmented_property_type=codes.SCT.Organ,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=hd.AlgorithmIdentificationSequence(
                name=MANUFACTURER, version=__version__, family=codes.cid7162.ArtificialIntelligence),
        )
        for number, name in enumerate(segments, start=1)
    ]
    pixels = np.stack(list(segments.values()), axis=-1)
    if not fractional:
        pixels = pixels.astype(np.uint8)
    return hd.seg.Segmentation(
        source_images=image_datasets,
        pixel_array=pixels.astype(np.float32) if fractional else pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.FRACTIONAL if fractional else hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=generate_uid(), series_number=3, sop_instance_uid=generate_uid(), instance_number=1,
        manufacturer=MANUFACTURER, manufacturer_model_name=NAME, software_versions=__version__,
        device_serial_number="0", series_description=label, omit_empty_frames=True,
    )


def save(dataset: Dataset, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    dataset.save_as(path, enforce_file_format=True)
