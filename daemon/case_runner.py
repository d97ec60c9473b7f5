"""Assess one case: plain functions the Celery task calls, idempotent by case ID.

A case already done or failed is skipped; a case redone after a worker died writes the same SR
(its UIDs derive from the case ID) and the state change to ``done`` that creates the outbox row
happens once, so a redelivered message never yields a second SR at the destination.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import sessionmaker

from contourqa.qa_models.assessment import Assessment, assess, load_structure
from contourqa.qa_models.errors import ContourQAError
from contourqa.qa_models.references import STRUCTURE_KINDS, structure_references
from contourqa.qa_models.series import ImageSeries, load_series_files
from contourqa.qa_models.sr_report import SrIdentity, build_not_assessed_sr, save_sr, write_sr

from . import ledger
from .approved import approval_reason, compare_with_auto, latest_auto_case
from .config import Settings
from .db import Case, CaseState, Instance, OutboxItem, RoiResult
from .image_profile import image_profile
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
    from contourqa.qa_models import predictor  # torch only in inference workers
    return predictor.load_predictor(model_dir or predictor.default_model_dir(), device=device)


def sr_identity(case_id: str) -> SrIdentity:
    """The same UIDs every time a case is (re)assessed, so a redone case cannot make a second SR."""
    return SrIdentity(series_instance_uid=generate_uid(entropy_srcs=["contourqa-sr-series", case_id]),
                      sop_instance_uid=generate_uid(entropy_srcs=["contourqa-sr", case_id]))


def run_case(settings: Settings, sessions: sessionmaker, case_id: str) -> CaseOutcome:
    """Load, assess and report one case; record the result and queue the SR for export."""
    case = ledger.start(sessions, case_id, heartbeat_lease_s=settings.worker.heartbeat_s * 3)
    if case is None:  # done or failed already (a redelivered message), running under a live worker, or unknown
        state = ledger.case_state(sessions, case_id)
        if state is None:
            raise ContourQAError(f"case {case_id} is not in the database")
        return CaseOutcome(case_id, state, skipped=True)
    if case.attempts > MAX_ATTEMPTS:  # its worker died or hit the hard time limit each time
        return fail_case(sessions, case_id, f"assessment did not finish in {MAX_ATTEMPTS} attempts")
    with sessions() as session:
        structure_path = session.get(Instance, case.structure_instance_id).path
        missing = ledger.missing_references(session, case_id) if case.partial else []
    log.info("case %s: assessing (attempt %d)", case_id, case.attempts, extra={"case_id": case_id})
    timings: dict[str, float] = {}
    try:
        with _beating(sessions, case_id, settings.worker.heartbeat_s):
            started = time.perf_counter()
            structure = load_structure(structure_path)
            timings["load_s"] = round(time.perf_counter() - started, 3)
            why = approval_reason(structure, case.calling_ae, settings.approval)
            auto = latest_auto_case(sessions, case) if why else None
            if auto is not None:  # the approved version of an auto-contour: the reference, not a case to judge
                return _record_approved(settings, sessions, case, auto, structure, why)
            assessment = _assess(settings, sessions, case, structure, timings)
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


@contextmanager
def _beating(sessions: sessionmaker, case_id: str, interval_s: float) -> Iterator[None]:
    """Tell the ledger every ``interval_s`` that this worker still runs the case: a worker that dies stops
    beating, and the sweep hands its case to another within seconds (not after the broker's timeout)."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(interval_s):
            try:
                ledger.heartbeat(sessions, case_id)
            except SQLAlchemyError as error:  # the database is away; beat again when it is back
                log.warning("case %s: heartbeat not recorded (%s)", case_id, type(error).__name__,
                            extra={"case_id": case_id})

    thread = threading.Thread(target=beat, name=f"heartbeat-{case_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def load_case_images(sessions: sessionmaker, case: Case, structure: Dataset) -> ImageSeries:
    """The stored images of the case's series (newest versions) as one volume, with the frames the
    structure names; a ContourQAError when they do not make one."""
    images = [Path(i.path) for i in current_versions(sessions, case.image_series_uid)
              if i.sop_class_uid not in STRUCTURE_KINDS]
    return load_series_files(images, f"series {case.image_series_uid}", structure_references(structure).frames)


def _assess(settings: Settings, sessions: sessionmaker, case: Case, structure: Dataset,
            timings: dict[str, float]) -> Assessment:
    started = time.perf_counter()
    series = load_case_images(sessions, case, structure)
    timings["load_s"] = round(timings.get("load_s", 0) + time.perf_counter() - started, 3)
    started = time.perf_counter()
    predictor = (load_predictor(str(settings.worker.model_dir) if settings.worker.model_dir else None,
                                settings.worker.device) if settings.worker.use_model else None)
    assessment = assess(series, structure, settings.assess, predictor=predictor)
    timings["assess_s"] = round(time.perf_counter() - started, 3)
    return assessment


def _record_approved(settings: Settings, sessions: sessionmaker, case: Case, auto: Case, structure: Dataset,
                     why: str) -> CaseOutcome:
    """Compare an approved structure set with the latest auto-contour of its series; it is not assessed or
    answered. (An approved structure set with no auto-contour before it is assessed like any other.)"""
    series = load_case_images(sessions, case, structure)
    matched = compare_with_auto(sessions, auto, structure, case.case_id, series, settings.approval)
    reason = f"approved contours ({why}): real Dice of {matched} ROI(s) stored on case {auto.case_id}"
    ledger.finish(sessions, case.case_id, [], None, reason=reason, approval=why, approves_case_id=auto.case_id)
    log.info("case %s: %s", case.case_id, reason, extra={"case_id": case.case_id})
    return CaseOutcome(case.case_id, CaseState.DONE.value)


def fail_case(sessions: sessionmaker, case_id: str, reason: str) -> CaseOutcome:
    """Record why a case could not be assessed; it is not retried."""
    if ledger.fail(sessions, case_id, reason):
        log.warning("case %s failed: %s", case_id, reason, extra={"case_id": case_id})
    return CaseOutcome(case_id, ledger.case_state(sessions, case_id))


def _finish_done(settings: Settings, sessions: sessionmaker, case: Case, assessment: Assessment, sr_path: Path,
                 identity: SrIdentity, timings: dict[str, float], missing: list[str]) -> CaseOutcome:
    case_id = case.case_id
    model = assessment.model
    reason = (f"assessed without {len(missing)} referenced images; the series is complete by geometry"
              if missing else None)
    results = [RoiResult(
        case_id=case_id, roi_number=r.number, name=r.name, verdict=r.verdict.value, volume_ml=r.volume_ml,
        predicted_dice=r.prediction.dice if r.prediction else None,
        dice_low=r.prediction.low if r.prediction else None, dice_high=r.prediction.high if r.prediction else None,
        screens=[s.as_dict() for s in r.screens], warnings=r.warnings, reasons=[why.as_dict() for why in r.reasons],
        domain_score=r.domain.score if r.domain else None, domain_inside=r.domain.inside if r.domain else None,
        domain_detail=r.domain.detail() if r.domain else None, unreadable=r.unreadable)
        for r in assessment.rois]
    destination = settings.export.destination_for(case.calling_ae)
    outbox = None if destination is None else OutboxItem(
        case_id=case_id, sr_path=str(sr_path), sr_sop_instance_uid=identity.sop_instance_uid,
        destination=str(destination))
    if not ledger.finish(sessions, case_id, results, outbox, sr_path=str(sr_path), timings=timings, reason=reason,
                         model_name=model.name if model else None, model_version=model.version if model else None,
                         model_sha256=model.sha256 if model else None,
                         image_profile=image_profile(assessment.series)):
        return CaseOutcome(case_id, CaseState.DONE.value, skipped=True)  # a concurrent redelivery finished first
    verdicts = ", ".join(f"{r.name}={r.verdict.value}" for r in assessment.rois)
    log.info("case %s done: %s", case_id, verdicts, extra={"case_id": case_id})
    return CaseOutcome(case_id, CaseState.DONE.value, outbox.id if outbox else None)


def answer_failed_cases(settings: Settings, sessions: sessionmaker) -> list[str]:
    """Tell each failed case's sender that no assessment was made and why: a not-assessed SR, queued for
    export like any other (`export.answer_failed`). A re-opened case that fails again is answered again."""
    if not settings.export.answer_failed:
        return []
    answered = []
    for case in ledger.unanswered_failures(sessions):
        with sessions() as session:
            structure_path = session.get(Instance, case.structure_instance_id).path
            modality = session.scalar(select(Instance.modality).where(
                Instance.series_uid == case.image_series_uid,
                Instance.sop_class_uid.not_in(list(STRUCTURE_KINDS))).limit(1)) if case.image_series_uid else None
        identity = sr_identity(f"{case.case_id}/not-assessed/{case.attempts}")
        sr_path = settings.reports_dir / case.study_uid / f"{case.case_id}-not-assessed-{case.attempts}.dcm"
        try:
            sr_path.parent.mkdir(parents=True, exist_ok=True)
            save_sr(build_not_assessed_sr(load_structure(structure_path), case.reason or "not assessed", identity,
                                          modality or "MR"), sr_path)
        except (ContourQAError, OSError) as error:  # recorded as answered without an SR: not retried every sweep
            log.error("case %s: cannot write its not-assessed SR: %s", case.case_id, error, extra={"case_id": case.case_id})
            ledger.answer_failure(sessions, case.case_id, "", None)
            continue
        destination = settings.export.destination_for(case.calling_ae)
        outbox = None if destination is None else OutboxItem(
            case_id=case.case_id, sr_path=str(sr_path), sr_sop_instance_uid=identity.sop_instance_uid,
            destination=str(destination))
        if ledger.answer_failure(sessions, case.case_id, str(sr_path), outbox):
            log.info("case %s: answered as not assessed", case.case_id, extra={"case_id": case.case_id})
            answered.append(case.case_id)
    return answered
