"""The real Dice: when the approved version of an auto-contour comes back, compare the two.

In clinical use the physician edits and approves the auto-contours, and the planning system sends the
approved structure set for the same image series later. contourqa recognises it (``approval`` settings:
ApprovalStatus, a label pattern or the sender), finds the latest assessed auto-contour of that series,
and stores beside each of its ROIs the Dice and the 95th-percentile surface distance to the approved ROI
of the same name (after the configured renaming). The approved structure set is not assessed and not
answered; its case records which case it approved. (An approved structure set with no auto-contour of
its series before it is assessed like any other.) The pairs are this site's calibration data
(summary, audits) and its training data (`contourqa export-training`).
"""

from __future__ import annotations

import csv
import logging
import re
from datetime import datetime
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from contourqa.qa_models.assessment import AssessConfig, load_structure, structure_masks
from contourqa.qa_models.atomic import atomic_path
from contourqa.qa_models.series import ImageSeries
from contourqa.reporting.overlap import dice, surface_distances

from .config import ApprovalSettings
from .db import Case, CaseState, Instance, RoiResult

log = logging.getLogger(__name__)

LABELS = ("StructureSetLabel", "ContentLabel", "SeriesDescription")


def approval_reason(structure: Dataset, calling_ae: str, config: ApprovalSettings) -> str | None:
    """Why ``structure`` is an approved structure set, or None when it is an auto-contour to assess."""
    status = str(structure.get("ApprovalStatus", "") or "").upper()
    if status and status in {s.upper() for s in config.statuses}:
        return f"ApprovalStatus {status}"
    if config.label_pattern:
        for keyword in LABELS:
            value = str(structure.get(keyword, "") or "")
            if value and re.search(config.label_pattern, value):
                return f"{keyword} matches {config.label_pattern!r}"
    if calling_ae and calling_ae in config.calling_aes:
        return f"sent by {calling_ae}"
    return None


def latest_auto_case(sessions: sessionmaker, case: Case) -> Case | None:
    """The latest assessed auto-contour (not itself approved) of the case's image series before it."""
    with sessions() as session:
        return session.scalar(
            select(Case).where(Case.image_series_uid == case.image_series_uid, Case.case_id != case.case_id,
                               Case.state == CaseState.DONE.value, Case.approval.is_(None),
                               Case.created_at <= case.created_at)
            .order_by(Case.created_at.desc()).limit(1))


def _masks(structure: Dataset, series: ImageSeries) -> dict[str, object]:
    return {m.name.strip().lower(): m.mask for m, _ in structure_masks(structure, series, AssessConfig())}


def compare_with_auto(sessions: sessionmaker, auto: Case, approved: Dataset, approved_case_id: str,
                      series: ImageSeries, config: ApprovalSettings) -> int:
    """Store real Dice and HD95 on the auto case's ROIs that the approved structure set also has; how many."""
    with sessions() as session:
        auto_path = session.get(Instance, auto.structure_instance_id).path
    auto_masks = _masks(load_structure(auto_path), series)
    approved_masks = _masks(approved, series)
    renamed = {k.strip().lower(): v.strip().lower() for k, v in config.roi_names.items()}
    spacing = tuple(series.grid.spacing[::-1])  # per array axis (k, j, i)
    matched = 0
    with sessions() as session:
        for roi in session.scalars(select(RoiResult).where(RoiResult.case_id == auto.case_id)):
            name = roi.name.strip().lower()
            approved_name = next((a for a, b in renamed.items() if b == name), name)
            if approved_name not in approved_masks or name not in auto_masks:
                continue
            distances = surface_distances(auto_masks[name], approved_masks[approved_name], spacing)
            roi.real_dice = dice(auto_masks[name], approved_masks[approved_name])
            roi.hd95_mm = distances["hd95_mm"] if distances else None
            roi.approved_case_id = approved_case_id
            matched += 1
        session.commit()
    return matched


def training_pairs(sessions: sessionmaker, since: datetime | None = None) -> list[dict[str, str]]:
    """Manifest rows (`contourqa train` format) of every auto-contour ROI with an approved version: the
    store's image series folder, the approved structure set as reference, the auto-contour as candidate.
    A ROI renamed between the two is left out: training finds a ROI by one name in both files."""
    query = (select(Case, RoiResult).join(RoiResult, RoiResult.case_id == Case.case_id)
             .where(RoiResult.approved_case_id.is_not(None)))
    if since is not None:
        query = query.where(Case.finished_at >= since)
    rows = []
    names: dict[Path, set[str]] = {}  # ROI names of each approved structure set, read once
    with sessions() as session:
        for case, roi in session.execute(query.order_by(Case.finished_at, RoiResult.roi_number)).all():
            approved = session.get(Case, roi.approved_case_id)
            auto_path = Path(session.get(Instance, case.structure_instance_id).path)
            approved_path = Path(session.get(Instance, approved.structure_instance_id).path)
            image = session.scalar(select(Instance.path).where(Instance.series_uid == case.image_series_uid).limit(1))
            if approved_path not in names:
                names[approved_path] = _roi_names(approved_path)
            if image is None or roi.name.strip().lower() not in names[approved_path]:
                continue
            rows.append({"case_id": case.case_id, "image": str(Path(image).parent), "reference": str(approved_path),
                         "candidate": str(auto_path), "roi": roi.name, "real_dice": f"{roi.real_dice:.4f}",
                         "predicted_dice": "" if roi.predicted_dice is None else f"{roi.predicted_dice:.4f}"})
    return rows


def _roi_names(path: Path) -> set[str]:
    """The ROI (RTSTRUCT) or segment (SEG) names of a structure set, normalised as ROI matching does."""
    header = pydicom.dcmread(path, stop_before_pixels=True)
    names = [str(r.get("ROIName", "")) for r in header.get("StructureSetROISequence", [])]
    names += [str(s.get("SegmentLabel", "")) for s in header.get("SegmentSequence", [])]
    return {n.strip().lower() for n in names}


def write_manifest(rows: list[dict[str, str]], out: Path) -> Path:
    with atomic_path(out) as temporary, open(temporary, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["case_id", "image", "reference", "candidate", "roi", "real_dice",
                                                    "predicted_dice"])
        writer.writeheader()
        writer.writerows(rows)
    return out
