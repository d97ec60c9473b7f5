"""Case assembly: a structure set becomes a case, dispatched once every image it references is stored.

All state lives in the database, so a restarted daemon resumes every pending case. A case moves
waiting -> ready (complete) -> queued (handed to the broker); the conditional updates make each
move happen once even when several associations store the last images at the same moment.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from pydicom.dataset import Dataset
from sqlalchemy import exists, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from .db import Case, CaseReference, CaseState, Instance, utcnow
from contourqa.qa_models.references import STRUCTURE_KINDS, structure_references

log = logging.getLogger(__name__)

Dispatch = Callable[[str], None]


def case_id_for(instance: Instance) -> str:
    """The structure's SOP Instance UID; a later version with other content gets its own case."""
    return instance.sop_instance_uid if instance.version == 1 else f"{instance.sop_instance_uid}-v{instance.version}"


def missing_references(session: Session, case_id: str) -> list[str]:
    """Referenced SOP Instance UIDs not in the store."""
    query = select(CaseReference.sop_instance_uid).where(
        CaseReference.case_id == case_id, CaseReference.sop_instance_uid.is_not(None),
        ~exists().where(Instance.sop_instance_uid == CaseReference.sop_instance_uid))
    return sorted(session.scalars(query))


class Assembler:
    def __init__(self, sessions: sessionmaker, dispatch: Dispatch):
        self.sessions = sessions
        self.dispatch = dispatch

    def on_stored(self, instance: Instance, header: Dataset) -> None:
        """React to a newly stored instance: open a case for a structure set, complete waiting cases."""
        if instance.sop_class_uid in STRUCTURE_KINDS:
            self._open_case(instance, header)
        elif instance.series_uid:
            with self.sessions() as session:
                waiting = session.scalars(select(Case.case_id).where(
                    Case.state == CaseState.WAITING.value, Case.image_series_uid == instance.series_uid)).all()
            for case_id in waiting:
                self._mark_ready_if_complete(case_id)

    def _open_case(self, instance: Instance, header: Dataset) -> None:
        refs = structure_references(header)
        case_id = case_id_for(instance)
        case = Case(case_id=case_id, structure_instance_id=instance.id, kind=STRUCTURE_KINDS[instance.sop_class_uid],
                    study_uid=instance.study_uid, image_series_uid=refs.image_series_uid,
                    calling_ae=instance.calling_ae,
                    source_software=" ".join(filter(None, [str(header.get("Manufacturer", "") or ""),
                                                           str(header.get("SoftwareVersions", "") or "")]))[:200])
        if refs.image_series_uid is None:
            case.state = CaseState.FAILED.value
            case.reason = (f"references {len(refs.series_uids)} image series; exactly one is needed"
                           if refs.series_uids else "references no image series")
        with self.sessions() as session:
            session.add(case)
            session.add_all(CaseReference(case_id=case_id, series_uid=refs.image_series_uid, sop_instance_uid=uid)
                            for uid in sorted(refs.instance_uids))
            session.commit()
        log.info("case %s opened (%s, %d referenced instances)", case_id, case.kind, len(refs.instance_uids),
                 extra={"case_id": case_id})
        if case.state == CaseState.WAITING.value:
            self._mark_ready_if_complete(case_id)

    def _mark_ready_if_complete(self, case_id: str) -> None:
        with self.sessions() as session:
            has_list = session.scalar(select(func.count()).where(
                CaseReference.case_id == case_id, CaseReference.sop_instance_uid.is_not(None)))
            # a structure set that lists no instances can only be judged complete by geometry, after the stable age
            if not has_list or missing_references(session, case_id):
                return
            moved = session.execute(update(Case).where(Case.case_id == case_id, Case.state == CaseState.WAITING.value)
                                    .values(state=CaseState.READY.value, ready_at=utcnow())).rowcount
            session.commit()
        if moved:
            self.dispatch(case_id)

    def expire_stale(self, stable_age_s: float, now: datetime | None = None) -> list[str]:
        """Waiting cases whose series has been quiet for the stable age: assess on what is present."""
        now = now or utcnow()
        limit = now - timedelta(seconds=stable_age_s)
        ready = []
        with self.sessions() as session:
            for case in session.scalars(select(Case).where(Case.state == CaseState.WAITING.value)):
                last_image = session.scalar(select(func.max(Instance.received_at))
                                            .where(Instance.series_uid == case.image_series_uid))
                if max(filter(None, [last_image, case.created_at])) > limit:
                    continue
                moved = session.execute(update(Case).where(Case.case_id == case.case_id,
                                                           Case.state == CaseState.WAITING.value)
                                        .values(state=CaseState.READY.value, partial=True, ready_at=now)).rowcount
                if moved:
                    ready.append(case.case_id)
            session.commit()
        for case_id in ready:
            log.info("case %s: references still incomplete after %.0f s; assessing what is present", case_id,
                     stable_age_s, extra={"case_id": case_id})
            self.dispatch(case_id)
        return ready
