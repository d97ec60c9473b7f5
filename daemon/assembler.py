"""Case assembly: a structure set becomes a case, dispatched once every image it references is stored.

All state lives in the database (through the ledger), so a restarted daemon resumes every pending
case, and each move happens once even when several associations store the last images at once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from pydicom.dataset import Dataset
from sqlalchemy.orm import sessionmaker

from contourqa.qa_models.references import STRUCTURE_KINDS, structure_references

from . import ledger
from .db import Case, Instance

log = logging.getLogger(__name__)

Dispatch = Callable[[str], None]


def case_id_for(instance: Instance) -> str:
    """The structure's SOP Instance UID; a later version with other content gets its own case."""
    return instance.sop_instance_uid if instance.version == 1 else f"{instance.sop_instance_uid}-v{instance.version}"


class Assembler:
    def __init__(self, sessions: sessionmaker, dispatch: Dispatch):
        self.sessions = sessions
        self.dispatch = dispatch

    def on_stored(self, instance: Instance, header: Dataset) -> None:
        """React to a newly stored instance: open a case for a structure set, complete waiting cases."""
        if instance.sop_class_uid in STRUCTURE_KINDS:
            self._open_case(instance, header)
        elif instance.series_uid:
            for case_id in ledger.failed_cases_awaiting(self.sessions, instance.sop_instance_uid):
                if ledger.reopen(self.sessions, case_id):
                    log.info("case %s re-opened: a referenced instance arrived after it failed", case_id,
                             extra={"case_id": case_id})
            for case_id in ledger.waiting_cases_of_series(self.sessions, instance.series_uid):
                self._dispatch_if_complete(case_id)

    def _open_case(self, instance: Instance, header: Dataset) -> None:
        refs = structure_references(header)
        case_id = case_id_for(instance)
        case = Case(case_id=case_id, structure_instance_id=instance.id, kind=STRUCTURE_KINDS[instance.sop_class_uid],
                    study_uid=instance.study_uid, image_series_uid=refs.image_series_uid,
                    calling_ae=instance.calling_ae,
                    source_software=" ".join(filter(None, [str(header.get("Manufacturer", "") or ""),
                                                           str(header.get("SoftwareVersions", "") or "")]))[:200])
        failure = None
        if refs.image_series_uid is None:
            failure = (f"references {len(refs.series_uids)} image series; exactly one is needed"
                       if refs.series_uids else "references no image series")
        if not ledger.open_case(self.sessions, case, refs.instance_uids, failure):
            return
        log.info("case %s opened (%s, %d referenced instances)", case_id, case.kind, len(refs.instance_uids),
                 extra={"case_id": case_id})
        if failure is None:
            self._dispatch_if_complete(case_id)

    def _dispatch_if_complete(self, case_id: str) -> None:
        if ledger.mark_ready_if_complete(self.sessions, case_id):
            self.dispatch(case_id)

    def expire_stale(self, stable_age_s: float, now: datetime | None = None) -> list[str]:
        """Waiting cases whose series has been quiet for the stable age: assess on what is present."""
        ready = ledger.ready_stale_waiting(self.sessions, stable_age_s, now)
        for case_id in ready:
            log.info("case %s: references still incomplete after %.0f s; assessing what is present", case_id,
                     stable_age_s, extra={"case_id": case_id})
            self.dispatch(case_id)
        return ready
