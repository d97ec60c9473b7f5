"""The QA result of one structure set as a DICOM Comprehensive 3D SR (TID 1500), built with highdicom.

One measurement group per ROI: tracking identifier (ROI number and name), finding site where the
name maps to a known code, the ROI volume, each screen as a qualitative evaluation, and the verdict.
Screens and verdicts have no standard codes, so they live in the private scheme ``99CQA``, declared
in CodingSchemeIdentificationSequence.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from contourqa import NAME, __version__

from .assessment import Assessment, RoiAssessment
from .errors import InputError
from .atomic import atomic_path
from .roi_names import laterality_of, organ_of
from .seg import SEG_SOP_CLASS

log = logging.getLogger(__name__)

PRIVATE_SCHEME = "99CQA"
MAX_LENGTH = {"SH": 16, "LO": 64}  # string VRs whose length inputs from the field exceed (a 20-character Study ID)
# Standard code for Dice measurements; pydicom's code dictionary lacks it.
DICE_SIMILARITY = hd.sr.CodedConcept("130920", "DCM", "Dice Similarity Coefficient")
VERDICT = hd.sr.CodedConcept("VERDICT", PRIVATE_SCHEME, "Contour quality verdict")
VERDICT_VALUES = {
    "accept": hd.sr.CodedConcept("ACCEPT", PRIVATE_SCHEME, "Contour accepted"),
    "review": hd.sr.CodedConcept("REVIEW", PRIVATE_SCHEME, "Contour needs review"),
    "reject": hd.sr.CodedConcept("REJECT", PRIVATE_SCHEME, "Contour rejected"),
}
SCREEN_CONCEPTS = {
    "empty": hd.sr.CodedConcept("S-EMPTY", PRIVATE_SCHEME, "Non-empty mask screen passed"),
    "fov_fraction": hd.sr.CodedConcept("S-FOVFRAC", PRIVATE_SCHEME, "Field of view fraction screen passed"),
    "outside_body": hd.sr.CodedConcept("S-OUTBODY", PRIVATE_SCHEME, "Inside body screen passed"),
    "fragmentation": hd.sr.CodedConcept("S-FRAG", PRIVATE_SCHEME, "Fragmentation screen passed"),
    "volume_range": hd.sr.CodedConcept("S-VOLUME", PRIVATE_SCHEME, "Plausible volume screen passed"),
    "position": hd.sr.CodedConcept("S-POSITION", PRIVATE_SCHEME, "Organ position screen passed"),
    "slice_gaps": hd.sr.CodedConcept("S-GAPS", PRIVATE_SCHEME, "Slice gap screen passed"),
    "fov_edge": hd.sr.CodedConcept("S-FOVEDGE", PRIVATE_SCHEME, "Field of view edge screen passed"),
}
NOT_ASSESSED = hd.sr.CodedConcept("NOT-ASSESSED", PRIVATE_SCHEME, "Structure set not assessed")
VERDICT_REASON = hd.sr.CodedConcept("VERDICT-WHY", PRIVATE_SCHEME, "Reason for the contour quality verdict")
REASON_VALUES = {rule: hd.sr.CodedConcept(code, PRIVATE_SCHEME, meaning) for rule, code, meaning in (
    ("empty", "R-EMPTY", "Mask is empty"),
    ("fov_fraction", "R-FOVFRAC", "Mask fills too much of the field of view"),
    ("outside_body", "R-OUTBODY", "Mask lies outside the body"),
    ("fragmentation", "R-FRAG", "Mask is fragmented"),
    ("volume_range", "R-VOLUME", "Volume outside the plausible range"),
    ("position", "R-POSITION", "Organ out of its place in the body"),
    ("slice_gaps", "R-GAPS", "Gaps between contoured slices"),
    ("fov_edge", "R-FOVEDGE", "Mask cut off by the field of view"),
    ("dice_reject", "R-DICEREJ", "Predicted Dice below the reject threshold"),
    ("dice_review", "R-DICEREV", "Predicted Dice below the review threshold"),
    ("outside_domain", "R-DOMAIN", "Image outside the model's training domain"),
    ("unreadable_contour", "R-UNREAD", "Model read no organ surface in the contour"),
)}
PREDICTED_WITHOUT_REFERENCE = hd.sr.CodedConcept("PRED-NOREF", PRIVATE_SCHEME,
                                                  "Predicted without reference segmentation")
DICE_LOW = hd.sr.CodedConcept("DICE-P05", PRIVATE_SCHEME, "Predicted Dice 5th percentile")
DICE_HIGH = hd.sr.CodedConcept("DICE-P95", PRIVATE_SCHEME, "Predicted Dice 95th percentile")
INSIDE_DOMAIN = hd.sr.CodedConcept("DOMAIN-IN", PRIVATE_SCHEME, "Image inside the model's training domain")
DOMAIN_SCORE = hd.sr.CodedConcept("DOMAIN-D", PRIVATE_SCHEME, "Distance from the model's training domain")
FEATURE_DISTANCE = hd.sr.CodedConcept("DOMAIN-F", PRIVATE_SCHEME, "Feature distance from the model's training contours")
ENTROPY_SUM = hd.sr.CodedConcept("ENTROPY-VS", PRIVATE_SCHEME, "Voxel-wise sum of segmentation entropy")
NO_UNITS = hd.sr.CodedConcept("1", "UCUM", "no units")
BITS = hd.sr.CodedConcept("bit", "UCUM", "bit")
YES, NO = codes.SCT.Yes, codes.SCT.No
MILLILITRE = hd.sr.CodedConcept("ml", "UCUM", "milliliter")



@dataclass(frozen=True)
class SrIdentity:
    """UIDs and numbers of the SR to write; created once by the caller so tests can fix them."""

    series_instance_uid: str
    sop_instance_uid: str
    series_number: int = 9901
    instance_number: int = 1

    @classmethod
    def new(cls) -> "SrIdentity":
        return cls(series_instance_uid=generate_uid(), sop_instance_uid=generate_uid())


def finding_site(roi_name: str) -> hd.sr.FindingSite | None:
    """The coded anatomy of a ROI name, with laterality, or None when the name is not recognised."""
    organ = organ_of(roi_name)
    if organ is None:
        return None
    side = laterality_of(roi_name)
    return hd.sr.FindingSite(anatomic_location=getattr(codes.SCT, organ.site),
                             laterality=getattr(codes.SCT, side) if side else None)


def _measurements(roi: RoiAssessment, model: hd.sr.AlgorithmIdentification | None) -> list[hd.sr.Measurement]:
    measurements = [hd.sr.Measurement(name=codes.SCT.Volume, value=round(roi.volume_ml, 4), unit=MILLILITRE)]
    if roi.prediction is not None and model is not None:
        for concept, value in ((DICE_SIMILARITY, roi.prediction.dice), (DICE_LOW, roi.prediction.low),
                               (DICE_HIGH, roi.prediction.high)):
            measurements.append(hd.sr.Measurement(name=concept, value=round(value, 4), unit=NO_UNITS,
                                                  method=PREDICTED_WITHOUT_REFERENCE, algorithm_id=model))
    if roi.domain is not None and model is not None:
        measurements.append(hd.sr.Measurement(name=DOMAIN_SCORE, value=round(roi.domain.score, 3), unit=NO_UNITS,
                                              algorithm_id=model))
        if roi.domain.feature_distance is not None:
            measurements.append(hd.sr.Measurement(name=FEATURE_DISTANCE, value=round(roi.domain.feature_distance, 3),
                                                  unit=NO_UNITS, algorithm_id=model))
    if roi.uncertainty_vs is not None:
        measurements.append(hd.sr.Measurement(name=ENTROPY_SUM, value=round(roi.uncertainty_vs, 3), unit=BITS))
    return measurements


def _measurement_group(roi: RoiAssessment, assessment: Assessment, identity: SrIdentity,
                       algorithm: hd.sr.AlgorithmIdentification, model: hd.sr.AlgorithmIdentification | None):
    # derived from the SR's own UID (in the node: from the case ID) and the ROI, so a redone case writes
    # the same SR; a new SR (a new UID) never repeats another's tracking UIDs
    tracking = hd.sr.TrackingIdentifier(uid=generate_uid(entropy_srcs=[identity.sop_instance_uid, str(roi.number)]),
                                        identifier=f"ROI {roi.number}: {roi.name}")
    site = finding_site(roi.name)
    arguments = dict(
        tracking_identifier=tracking,
        algorithm_id=algorithm,
        finding_sites=[site] if site else None,
        measurements=_measurements(roi, model),
        qualitative_evaluations=[
            *(hd.sr.QualitativeEvaluation(SCREEN_CONCEPTS[s.name], YES if s.passed else NO) for s in roi.screens),
            # outside the domain this stands where the predicted Dice would: the number was withheld
            *([hd.sr.QualitativeEvaluation(INSIDE_DOMAIN, YES if roi.domain.inside else NO)] if roi.domain else []),
            hd.sr.QualitativeEvaluation(VERDICT, VERDICT_VALUES[roi.verdict.value]),
            *(hd.sr.QualitativeEvaluation(VERDICT_REASON, REASON_VALUES[r.rule]) for r in roi.reasons),
        ],
    )
    structure = assessment.structure
    if str(structure.SOPClassUID) == SEG_SOP_CLASS:
        segment = hd.sr.ReferencedSegment(
            sop_class_uid=str(structure.SOPClassUID), sop_instance_uid=str(structure.SOPInstanceUID),
            segment_number=roi.segment_number,
            source_series=hd.sr.SourceSeriesForSegmentation(assessment.series.series_instance_uid),
        )
        return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(referenced_segment=segment, **arguments)
    return hd.sr.MeasurementsAndQualitativeEvaluations(**arguments)


def build_sr(assessment: Assessment, identity: SrIdentity) -> hd.sr.Comprehensive3DSR:
    """The SR dataset of an assessment; patient and study identity come from the assessed structure set."""
    algorithm = hd.sr.AlgorithmIdentification(name=NAME, version=__version__)
    model = (hd.sr.AlgorithmIdentification(name=assessment.model.name, version=assessment.model.version,
                                           parameters=[assessment.model.architecture,
                                                       f"sha256:{assessment.model.sha256}"])
             if assessment.model else None)
    groups = [_measurement_group(roi, assessment, identity, algorithm, model) for roi in assessment.rois]
    return _report(groups, [assessment.structure, *assessment.series.datasets], assessment.series.modality, identity)


def build_not_assessed_sr(structure: Dataset, reason: str, identity: SrIdentity,
                          modality: str = "MR") -> hd.sr.Comprehensive3DSR:
    """The answer for a structure set that could not be assessed: one group with the verdict NOT-ASSESSED
    and the reason as text, so the sender learns that no QA was made and why (not silence)."""
    tracking = hd.sr.TrackingIdentifier(uid=generate_uid(entropy_srcs=[identity.sop_instance_uid, "not-assessed"]),
                                        identifier="Structure set: not assessed")
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking, algorithm_id=hd.sr.AlgorithmIdentification(name=NAME, version=__version__),
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(VERDICT, NOT_ASSESSED)])
    group[0].ContentSequence.append(hd.sr.TextContentItem(
        name=VERDICT_REASON, value=reason[:1024], relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))
    return _report([group], [structure], modality, identity)


def _report(groups: list, evidence: list[Dataset], modality: str, identity: SrIdentity) -> hd.sr.Comprehensive3DSR:
    """A TID 1500 measurement report of ``groups``; patient and study identity come from the evidence."""
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=identity.sop_instance_uid, name=NAME, manufacturer_name=NAME, model_name=__version__),
    )
    procedure = codes.LN.CTUnspecifiedBodyRegion if modality == "CT" else codes.LN.MRIUnspecifiedBodyRegion
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=procedure,
        imaging_measurements=groups,
    )
    sr = hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=report,
        series_instance_uid=identity.series_instance_uid,
        series_number=identity.series_number,
        sop_instance_uid=identity.sop_instance_uid,
        instance_number=identity.instance_number,
        manufacturer=NAME,
        is_complete=True,
        series_description="contourqa contour QA report",
    )
    scheme = Dataset()
    scheme.CodingSchemeDesignator = PRIVATE_SCHEME
    scheme.CodingSchemeName = "contourqa contour quality codes"
    scheme.CodingSchemeResponsibleOrganization = "contourqa project"
    sr.CodingSchemeIdentificationSequence = [scheme]
    _fit_copied_strings(sr)
    return sr


def _fit_copied_strings(sr: Dataset) -> None:
    """Cut patient and study strings copied from the input to their VR's length, so the SR validates
    whatever the sender wrote (the input itself is never changed)."""
    for element in sr:
        limit = MAX_LENGTH.get(element.VR)
        if limit and isinstance(element.value, str) and len(element.value) > limit:
            log.warning("%s of %d characters cut to %d in the SR", element.keyword, len(element.value), limit)
            element.value = element.value[:limit]


def write_sr(assessment: Assessment, path: str | Path, identity: SrIdentity | None = None) -> Path:
    """Write the SR atomically: a temporary file renamed into place, so no partial file is left behind."""
    return save_sr(build_sr(assessment, identity or SrIdentity.new()), path)


def save_sr(sr: Dataset, path: str | Path) -> Path:
    path = Path(path)
    try:
        with atomic_path(path) as temporary:
            sr.save_as(temporary, enforce_file_format=True)
    except OSError as error:
        raise InputError(f"cannot write the SR to {path}: {error.strerror or error}") from None
    return path
