"""Assess one case: plain functions the Celery task calls, idempotent by case ID.

A case already done or failed is skipped; a case redone after a worker died writes the same SR
(its UIDs derive from the case ID) and the state change to ``done`` that creates the outbox row
happens once, so a redelivered message never yields a second SR at the destination.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from pydicom.uid import generate_uid
from sqlalchemy import update
from sqlalchemy.orm import sessionmaker

from contourqa.qa_models.assessment import Assessment, assess, load_structure
from contourqa.qa_models.errors import ContourQAError
from contourqa.qa_models.series import load_series_files
from contourqa.qa_models.sr_report import SrIdentity, write_sr

from .assembler import missing_references
from .config import Settings
from .db import Case, CaseState, Instance, OutboxItem, RoiResult, utcnow
from contourqa.qa_models.references import STRUCTURE_KINDS, structure_references
from .store import current_versions

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3


@dataclass(frozen=True)
class CaseOutcome:
    case_id: str
    state: str
    outbox_id: int | None = None
    skipped: bool = False


@functools.lru_cache(maxsize=2)
def load_predictor(model_dir: str | None, device: str):
    """One predictor per worker process and model: the weights are read once, not per case."""
    from contourqa.qa_models.predictor import DicePredictor, default_model_dir  # torch only in inference workers
    return DicePredictor.from_model_folder(model_dir or default_model_dir(), device=device)


def sr_identity(case_id: str) -> SrIdentity:
    """The same UIDs every time a case is (re)assessed, so a redone case cannot make a second SR."""
    return SrIdentity(series_instance_uid=generate_uid(entropy_srcs=["contourqa-sr-series", case_id]),
                      sop_instance_uid=generate_uid(entropy_srcs=["contourqa-sr", case_id]))


def run_case(settings: Settings, sessions: sessionmaker, case_id: str) -> CaseOutcome:
    """Load, assess and report one case; record the result and queue the SR for export."""
    with sessions() as session:
        case = session.get(Case, case_id)
        if case is None:
            raise ContourQAError(f"case {case_id} is not in the database")
        if case.state in (CaseState.DONE.value, CaseState.FAILED.value):
            return CaseOutcome(case_id, case.state, skipped=True)
        if case.attempts >= MAX_ATTEMPTS:  # its worker died or hit the hard time limit each time
            session.rollback()
            return fail_case(sessions, case_id, f"assessment did not finish in {MAX_ATTEMPTS} attempts")
        case.state, case.started_at, case.attempts = CaseState.RUNNING.value, utcnow(), case.attempts + 1
        structure = session.get(Instance, case.structure_instance_id)
        missing = missing_references(session, case_id) if case.partial else []
        session.commit()
    log.info("case %s: assessing (attempt %d)", case_id, case.attempts, extra={"case_id": case_id})
    timings: dict[str, float] = {}
    try:
        assessment = _assess(settings, sessions, case, structure.path, timings)
        started = time.perf_counter()
        sr_path = settings.reports_dir / case.study_uid / f"{case_id}.dcm"
        sr_path.parent.mkdir(parents=True, exist_ok=True)
        identity = sr_identity(case_id)
        write_sr(assessment, sr_path, identity)
        timings["sr_s"] = round(time.perf_counter() - started, 3)
    except ContourQAError as error:
        reason = str(error)
        if missing:
            reason = (f"{len(missing)} referenced images never arrived (first: {', '.join(missing[:3])}); "
                      f"{reason}")
        return fail_case(sessions, case_id, reason)
    return _finish_done(settings, sessions, case, assessment, sr_path, identity, timings, missing)


def _assess(settings: Settings, sessions: sessionmaker, case: Case, structure_path: str,
            timings: dict[str, float]) -> Assessment:
    started = time.perf_counter()
    images = [Path(i.path) for i in current_versions(sessions, case.image_series_uid)
              if i.sop_class_uid not in STRUCTURE_KINDS]
    structure = load_structure(structure_path)
    series = load_series_files(images, f"series {case.image_series_uid}", structure_references(structure).frames)
    timings["load_s"] = round(time.perf_counter() - started, 3)
    started = time.perf_counter()
    predictor = (load_predictor(str(settings.worker.model_dir) if settings.worker.model_dir else None,
                                settings.worker.device) if settings.worker.use_model else None)
    assessment = assess(series, structure, settings.assess, predictor=predictor)
    timings["assess_s"] = round(time.perf_counter() - started, 3)
    return assessment


def fail_case(sessions: sessionmaker, case_id: str, reason: str) -> CaseOutcome:
    """Record why a case could not be assessed; it is not retried."""
    with sessions() as session:
        session.execute(update(Case).where(Case.case_id == case_id, Case.state != CaseState.DONE.value)
                        .values(state=CaseState.FAILED.value, reason=reason, finished_at=utcnow()))
        session.commit()
    log.warning("case %s failed: %s", case_id, reason, extra={"case_id": case_id})
    return CaseOutcome(case_id, CaseState.FAILED.value)


def _finish_done(settings: Settings, sessions: sessionmaker, case: Case, assessment: Assessment, sr_path: Path,
                 identity: SrIdentity, timings: dict[str, float], missing: list[str]) -> CaseOutcome:
    case_id = case.case_id
    model = assessment.model
    reason = (f"assessed without {len(missing)} referenced images; the series is complete by geometry"
              if missing else None)
    with sessions() as session:
        moved = session.execute(update(Case).where(Case.case_id == case_id, Case.state != CaseState.DONE.value).values(
            state=CaseState.DONE.value, finished_at=utcnow(), sr_path=str(sr_path), timings=timings, reason=reason,
            model_name=model.name if model else None, model_version=model.version if model else None)).rowcount
        if not moved:  # a concurrent redelivery finished first
            session.rollback()
            return CaseOutcome(case_id, CaseState.DONE.value, skipped=True)
        session.add_all(RoiResult(
            case_id=case_id, roi_number=r.number, name=r.name, verdict=r.verdict.value, volume_ml=r.volume_ml,
            predicted_dice=r.prediction.dice if r.prediction else None,
            dice_low=r.prediction.low if r.prediction else None, dice_high=r.prediction.high if r.prediction else None,
            screens=[s.as_dict() for s in r.screens], warnings=r.warnings,
            domain_score=r.domain.score if r.domain else None, domain_inside=r.domain.inside if r.domain else None)
            for r in assessment.rois)
        destination = settings.export.destination_for(case.calling_ae)
        outbox = None
        if destination is not None:
            outbox = OutboxItem(case_id=case_id, sr_path=str(sr_path), sr_sop_instance_uid=identity.sop_instance_uid,
                                destination=str(destination))
            session.add(outbox)
        session.commit()
    verdicts = ", ".join(f"{r.name}={r.verdict.value}" for r in assessment.rois)
    log.info("case %s done: %s", case_id, verdicts, extra={"case_id": case_id})
    return CaseOutcome(case_id, CaseState.DONE.value, outbox.id if outbox else None)

