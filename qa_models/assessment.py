"""One structure set (RTSTRUCT or SEG) assessed against its image series: masks, screens, verdicts."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from pydicom.dataset import Dataset

from .domain import DomainScore
from .errors import InputError
from .references import structure_references
from .rtstruct import RTSTRUCT_SOP_CLASS, RoiMask, check_references, find_roi, rasterise_roi, read_rois
from .assess_config import AssessConfig
from .screens import ScreenResult, Severity, body_mask, run_screens, says_off_organ
from .seg import SEG_SOP_CLASS, decode_segments
from .series import ImageSeries, load_series, read_dicom
from .uncertainty import voxelwise_entropy_sum

if TYPE_CHECKING:  # torch is imported only where a model is used
    from .predictor import CardPredictor, ModelCard, Prediction

log = logging.getLogger(__name__)

SUPPORTED_STRUCTURE_CLASSES = {RTSTRUCT_SOP_CLASS: "RT Structure Set", SEG_SOP_CLASS: "Segmentation"}
# A Dice model reads a contour drawn on its organ: the picker, the image's edges within 8 mm of it. A
# contour a screen finds off its organ (outside the body, out of its place, all ones, noise) is not one,
# and a number from it can look good (a prostate moved off the organ read 0.59 against the edges it
# landed on): it is withheld.
SCREEN_WITHHELD = ("no Dice predicted: the contour failed the {screens} screen, and a predicted Dice "
                   "assumes a contour drawn on its organ")
UNREADABLE_WARNING = "no Dice predicted: the model read no organ's surface in the contour ({why}); check the contour"


class Verdict(str, Enum):
    ACCEPT = "accept"
    REVIEW = "review"
    REJECT = "reject"


_ORDER = [Verdict.ACCEPT, Verdict.REVIEW, Verdict.REJECT]


@dataclass(frozen=True)
class VerdictReason:
    """Why a ROI did not get ``accept``: a failed screen (``rule`` is its name), the Dice rule
    (``dice_reject``, ``dice_review``), the domain guard (``outside_domain``) or a contour the model could not
    read (``unreadable_contour``), and the verdict it implies."""

    rule: str
    detail: str
    verdict: Verdict

    def as_dict(self) -> dict:
        return {"rule": self.rule, "detail": self.detail}


def _screen_reason(screen: ScreenResult) -> VerdictReason:
    verdict = Verdict.REJECT if screen.severity is Severity.REJECT else Verdict.REVIEW
    return VerdictReason(screen.name, screen.detail, verdict)


def verdict_reasons(screens: list[ScreenResult], predicted_dice: float | None, config: AssessConfig,
                    domain: DomainScore | None = None, unreadable: str | None = None) -> list[VerdictReason]:
    """Every rule that pulls the verdict below accept, with the value and threshold behind it. Outside the
    model's domain, or a contour it could not read: at least review, since nothing vouches for the contour."""
    reasons = [_screen_reason(s) for s in screens if not s.passed]
    if unreadable is not None:
        reasons.append(VerdictReason("unreadable_contour", f"the model read no organ's surface in the contour "
                                     f"({unreadable})", Verdict.REVIEW))
    if domain is not None and not domain.inside:
        reasons.append(VerdictReason("outside_domain", f"image outside the model's training domain "
                                     f"({domain.reason()})", Verdict.REVIEW))
    if predicted_dice is not None and predicted_dice < config.reject_below:
        reasons.append(VerdictReason("dice_reject", f"predicted Dice {predicted_dice:.3f} < "
                                     f"{config.reject_below:.2f}", Verdict.REJECT))
    elif predicted_dice is not None and predicted_dice < config.review_below:
        reasons.append(VerdictReason("dice_review", f"predicted Dice {predicted_dice:.3f} < "
                                     f"{config.review_below:.2f}", Verdict.REVIEW))
    return reasons


def worst_verdict(reasons: list[VerdictReason]) -> Verdict:
    """Accept without reasons, else the most severe one's verdict."""
    return max((r.verdict for r in reasons), key=_ORDER.index, default=Verdict.ACCEPT)


@dataclass
class RoiAssessment:
    number: int
    name: str
    interpreted_type: str
    volume_ml: float
    voxels: int
    screens: list[ScreenResult]
    verdict: Verdict
    warnings: list[str] = field(default_factory=list)
    segment_number: int | None = None
    mask: np.ndarray | None = field(default=None, repr=False)
    prediction: Prediction | None = None  # None also when the domain guard withheld it
    uncertainty_vs: float | None = None  # voxel-wise sum of entropy of a FRACTIONAL segment
    domain: DomainScore | None = None  # where the model has a domain guard and read the contour
    unreadable: str | None = None  # why the model read no surface in the contour, where it could not
    reasons: list[VerdictReason] = field(default_factory=list)

    @property
    def outside_domain(self) -> bool:
        return self.domain is not None and not self.domain.inside

    def as_dict(self) -> dict:
        result = {
            "name": self.name, "number": self.number, "interpreted_type": self.interpreted_type,
            "volume_ml": round(self.volume_ml, 3), "voxels": self.voxels,
            "screens": [s.as_dict() for s in self.screens], "verdict": self.verdict.value,
            "verdict_reasons": [r.as_dict() for r in self.reasons], "warnings": self.warnings,
        }
        if self.segment_number is not None:
            result["segment_number"] = self.segment_number
        if self.prediction is not None:
            result["predicted_dice"] = round(self.prediction.dice, 4)
            result["predicted_dice_interval"] = [round(self.prediction.low, 4), round(self.prediction.high, 4)]
        else:
            result["predicted_dice"] = None
        if self.domain is not None:
            result["domain"] = self.domain.as_dict()
        if self.unreadable is not None:
            result["unreadable_contour"] = self.unreadable
        if self.uncertainty_vs is not None:
            result["uncertainty_vs"] = round(self.uncertainty_vs, 3)
        return result


@dataclass
class Assessment:
    structure: Dataset = field(repr=False)
    series: ImageSeries = field(repr=False)
    rois: list[RoiAssessment]
    model: ModelCard | None = None

    def as_dict(self) -> dict:
        s, image = self.structure, self.series
        return {
            "structure": {
                "sop_class_uid": str(s.SOPClassUID),
                "sop_class": SUPPORTED_STRUCTURE_CLASSES[str(s.SOPClassUID)],
                "sop_instance_uid": str(s.SOPInstanceUID),
                "series_instance_uid": str(s.SeriesInstanceUID),
                "study_instance_uid": str(s.StudyInstanceUID),
                "frame_of_reference_uid": image.frame_of_reference_uid,
                "manufacturer": str(s.get("Manufacturer", "")),
                "software_versions": str(s.get("SoftwareVersions", "")),
            },
            "image_series": {
                "series_instance_uid": image.series_instance_uid,
                "study_instance_uid": image.study_instance_uid,
                "modality": image.modality,
                "shape": list(image.grid.shape),
                "spacing_mm": [round(float(v), 6) for v in image.grid.spacing],
                "instances": len(set(image.slice_sop_instance_uids)),
            },
            "model": {"name": self.model.name, "version": self.model.version,
                      "architecture": self.model.architecture, "sha256": self.model.sha256} if self.model else None,
            "rois": [r.as_dict() for r in self.rois],
        }


def load_structure(path: str | Path) -> Dataset:
    """Read an RTSTRUCT or SEG file, refusing every other SOP class."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: a folder, not a structure set file (the image folder comes first, "
                         "then the RTSTRUCT or SEG file)")
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    dataset = read_dicom(path)
    sop_class = str(dataset.get("SOPClassUID", ""))
    if sop_class not in SUPPORTED_STRUCTURE_CLASSES:
        raise InputError(f"{path}: unsupported SOP class {sop_class or 'missing'} (expected RTSTRUCT or SEG)")
    return dataset


def structure_masks(structure: Dataset, series: ImageSeries, config: AssessConfig,
                    roi_names: list[str] | None = None) -> list[tuple[RoiMask, str]]:
    """Masks on the series grid for the chosen ROIs (all when ``roi_names`` is empty), with interpreted types."""
    if str(structure.SOPClassUID) == SEG_SOP_CLASS:
        masks = decode_segments(structure, series)
        if roi_names:
            wanted = {n.lower() for n in roi_names}
            missing = wanted - {m.name.lower() for m in masks}
            if missing:
                raise InputError(f"ROI '{sorted(missing)[0]}' not found; the segmentation has: "
                                 f"{', '.join(m.name for m in masks)}")
            masks = [m for m in masks if m.name.lower() in wanted]
        return [(m, "") for m in masks]
    check_references(structure, series)
    rois = read_rois(structure)
    if roi_names:
        rois = [find_roi(rois, name) for name in roi_names]
    return [(rasterise_roi(roi, series, config.plane_tolerance), roi.interpreted_type) for roi in rois]


def withheld_because(prediction: Prediction, screens: list[ScreenResult]) -> str | None:
    """Why ``prediction`` must not be given, as the ROI's warning, or None: a screen finds the contour off
    its organ (the contour, not the image, is what is wrong), the model read no surface in the contour, or
    the image lies outside the model's domain (never a confident number on an image the model does not know)."""
    off_organ = [s.name for s in screens if says_off_organ(s)]
    if off_organ:
        return SCREEN_WITHHELD.format(screens=", ".join(off_organ))
    if prediction.unreadable is not None:
        return UNREADABLE_WARNING.format(why=prediction.unreadable)
    return None if prediction.trusted else prediction.domain.warning()


def verdict_of(screens: list[ScreenResult]) -> Verdict:
    """Reject when a reject-severity screen failed, review when any other failed, else accept."""
    return worst_verdict([_screen_reason(s) for s in screens if not s.passed])


def combined_verdict(screens: list[ScreenResult], predicted_dice: float | None, config: AssessConfig,
                     domain: DomainScore | None = None, unreadable: str | None = None) -> Verdict:
    """The worse of the screens' verdict, the predicted Dice's (below reject_below / review_below), the
    domain guard's and an unreadable contour's: the verdict of ``verdict_reasons``, so a verdict and its
    reasons never disagree."""
    return worst_verdict(verdict_reasons(screens, predicted_dice, config, domain, unreadable))


def assess(series: ImageSeries, structure: Dataset, config: AssessConfig | None = None,
           roi_names: list[str] | None = None, predictor: CardPredictor | None = None,
           strict_model: bool = False) -> Assessment:
    """Rasterise or decode every ROI, screen it, predict its Dice, and give it a verdict.

    With ``strict_model`` (a model the user named) a ROI or modality the model does not cover is an
    error; otherwise (the default model) that ROI gets no predicted Dice and a warning.
    """
    config = config or AssessConfig()
    body = body_mask(series.array, series.modality)
    masks = structure_masks(structure, series, config, roi_names)
    predictions = _predict(masks, series, predictor, config, strict_model)
    rois = []
    for (roi_mask, interpreted_type), prediction in zip(masks, predictions):
        screens = run_screens(roi_mask.mask, series.grid, roi_mask.name, body, config.screens, interpreted_type)
        warnings = list(roi_mask.warnings)
        if predictor is not None and prediction is None:
            warnings.append(f"no Dice prediction: model {predictor.card.name} covers "
                            f"{', '.join(predictor.card.roi_names)} on {', '.join(predictor.card.modalities)}")
        domain = prediction.domain if prediction else None
        unreadable = prediction.unreadable if prediction else None
        withheld = withheld_because(prediction, screens) if prediction is not None else None
        if withheld is not None:
            warnings.append(withheld)
            prediction = None
        voxels = int(roi_mask.mask.sum())
        dice = prediction.dice if prediction else None
        reasons = verdict_reasons(screens, dice, config, domain, unreadable)
        rois.append(RoiAssessment(
            number=roi_mask.number, name=roi_mask.name, interpreted_type=interpreted_type,
            volume_ml=voxels * series.grid.voxel_volume_ml, voxels=voxels, screens=screens,
            verdict=worst_verdict(reasons),
            warnings=warnings, segment_number=roi_mask.segment_number, mask=roi_mask.mask, prediction=prediction,
            uncertainty_vs=voxelwise_entropy_sum(roi_mask.probabilities) if roi_mask.probabilities is not None else None,
            domain=domain, unreadable=unreadable, reasons=reasons,
        ))
    return Assessment(structure=structure, series=series, rois=rois, model=predictor.card if predictor else None)


def _predict(masks: list[tuple[RoiMask, str]], series: ImageSeries, predictor: CardPredictor | None,
             config: AssessConfig, strict_model: bool) -> list[Prediction | None]:
    """Predicted Dice of every ROI the model covers, in one batch; None for the others."""
    if predictor is None:
        return [None] * len(masks)
    if strict_model:
        for roi_mask, _ in masks:
            predictor.check_applicable(roi_mask.name, series.modality)
    covered = [n for n, (roi_mask, _) in enumerate(masks) if predictor.applies_to(roi_mask.name, series.modality)]
    chosen = [masks[n][0] for n in covered]
    results: list[Prediction | None] = [None] * len(masks)
    predictions = predictor.predict_rois(series.array, series.grid, [m.mask for m in chosen], [m.name for m in chosen],
                                         [m.probabilities for m in chosen], config.mc_samples, series.body_part,
                                         config.extra_body_parts)
    for n, prediction in zip(covered, predictions):
        results[n] = prediction
    return results


def assess_files(image_dir: str | Path, structure_file: str | Path, config: AssessConfig | None = None,
                 roi_names: list[str] | None = None, predictor: CardPredictor | None = None,
                 strict_model: bool = False) -> Assessment:
    """``assess`` from paths."""
    series, structure = load_inputs(image_dir, structure_file)
    return assess(series, structure, config, roi_names, predictor, strict_model)


def load_inputs(image_dir: str | Path, structure_file: str | Path) -> tuple[ImageSeries, Dataset]:
    """The image series and the structure set: the structure first (cheap to refuse), then the series."""
    structure = load_structure(structure_file)
    return load_series(image_dir, structure_references(structure).frames), structure
