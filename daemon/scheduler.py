"""Periodic work (APScheduler): pick up what an event missed, so a restart or a lost message loses nothing.

The sweep opens cases for structure sets stored without one, assesses waiting cases past the
stable age, re-dispatches cases whose message or worker was lost, and sends due exports.
Retention removes old studies from the store; it, the daily summaries and the drift audits are declared
jobs on cron triggers (``jobs``).
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.base import BaseScheduler
from sqlalchemy import delete, func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import sessionmaker

from contourqa.qa_models.references import STRUCTURE_KINDS

from . import jobs, ledger
from .assembler import Assembler
from .case_runner import answer_failed_cases
from .celery_app import INFERENCE_QUEUE, dispatch_case, dispatch_export
from .config import Settings
from .daily_summary import write_due_summaries
from .db import Case, Instance, short_reason, utcnow
from .status import broker_problem, messages_held
from .store import read_header

log = logging.getLogger(__name__)

READY_GRACE_S = 10  # the SCP dispatches a ready case itself; the sweep steps in after this


def open_missed_cases(sessions: sessionmaker, assembler: Assembler) -> int:
    """Structure sets stored while the assembler was interrupted (crash between store and case)."""
    with sessions() as session:
        orphans = session.scalars(select(Instance).where(
            Instance.sop_class_uid.in_(list(STRUCTURE_KINDS)),
            ~select(Case.case_id).where(Case.structure_instance_id == Instance.id).exists())).all()
    for instance in orphans:
        assembler.on_stored(instance, read_header(Path(instance.path)))
    return len(orphans)


def redispatch_lost(settings: Settings, sessions: sessionmaker) -> list[str]:
    """Ready cases nobody handed over; queued ones whose message is gone; running ones whose worker stopped
    beating. The broker's own redelivery (after its visibility timeout) is the slow backstop."""
    case_ids = ledger.release_lost(
        sessions, ready_grace_s=READY_GRACE_S, queued_lease_s=settings.worker.time_limit_s * 2 + 60,
        heartbeat_lease_s=settings.worker.heartbeat_s * 3, held=messages_held(settings.broker_url, INFERENCE_QUEUE))
    for case_id in case_ids:
        if dispatch_case(sessions, case_id):  # a failed dispatch has said why; the case stays ready
            log.warning("case %s: its message or worker was lost; dispatched again", case_id,
                        extra={"case_id": case_id})
    return case_ids


class Outage:
    """One dependency's outage as the sweep sees it: logged when it begins and when it ends, not at every
    sweep (every few seconds for as long as it lasts)."""

    def __init__(self, began: str, ended: str) -> None:
        self.began, self.ended, self.down = began, ended, False

    def update(self, problem: str | None) -> bool:
        """Record whether the dependency answered (``problem`` None: it did) and return that."""
        if problem is not None and not self.down:
            log.error(self.began, problem)
        elif problem is None and self.down:
            log.warning(self.ended)
        self.down = problem is not None
        return not self.down


@dataclass
class SweepWatch:
    """What the sweep found away at its last run. While the broker is away nothing is handed to it: cases
    stay ready and exports pending in the database, and the first sweep after it dispatches them."""

    broker: Outage = field(default_factory=lambda: Outage(
        "broker unavailable (%s): cases and exports wait in the database until it is back",
        "broker back: dispatching the cases and exports that waited"))
    database: Outage = field(default_factory=lambda: Outage(
        "sweep skipped: database unavailable (%s); skipped until it is back", "database back: sweeping again"))


def sweep(settings: Settings, sessions: sessionmaker, watch: SweepWatch | None = None) -> None:
    watch = watch or SweepWatch()
    broker_up = watch.broker.update(broker_problem(settings.broker_url))
    assembler = Assembler(sessions, lambda case_id: dispatch_case(sessions, case_id) if broker_up else None)
    try:
        open_missed_cases(sessions, assembler)
        watch.database.update(None)  # it answered
        assembler.expire_stale(settings.assembly.stable_age_s)
        if broker_up:
            redispatch_lost(settings, sessions)
        answer_failed_cases(settings, sessions)
        outbox_ids = ledger.due_outbox(sessions, settings.export.sending_lease_s) if broker_up else []
    except OperationalError as error:  # the next sweep after the database is back does it all
        watch.database.update(short_reason(error))
        return
    for outbox_id in outbox_ids:
        dispatch_export(outbox_id)


def apply_retention(settings: Settings, sessions: sessionmaker) -> int:
    """Delete studies whose newest instance is older than the retention, unless a case still needs them."""
    if settings.scheduler.retention_days is None:
        return 0
    limit = utcnow() - timedelta(days=settings.scheduler.retention_days)
    with sessions() as session:
        old = session.scalars(select(Instance.study_uid).group_by(Instance.study_uid)
                              .having(func.max(Instance.received_at) < limit)).all()
        busy = ledger.busy_studies(session)
        studies = [s for s in old if s not in busy]
        for study in studies:
            session.execute(delete(Instance).where(Instance.study_uid == study))
        session.commit()
    for study in studies:
        shutil.rmtree(settings.store_dir / study, ignore_errors=True)
        log.info("retention: study %s removed from the store", study)
    return len(studies)


def start_scheduler(settings: Settings, sessions: sessionmaker, blocking: bool = False) -> BaseScheduler:
    """The sweep every few seconds (in memory: it is the node's pulse, not a job an admin declares), and the
    declared jobs (daily summaries, retention, drift audits) from the job store in the database (``jobs``).
    The daily summaries also catch up once at start, so the days a stopped scheduler missed are written."""
    if blocking:
        from apscheduler.schedulers.blocking import BlockingScheduler
        scheduler: BaseScheduler = BlockingScheduler(timezone="UTC")
    else:
        scheduler = BackgroundScheduler(timezone="UTC")
    scheduler.add_job(sweep, "interval", seconds=settings.scheduler.sweep_interval_s,
                      args=[settings, sessions, SweepWatch()],
                      id="sweep", max_instances=1, coalesce=True, next_run_time=datetime.now().astimezone())
    jobs.attach(scheduler, settings, sessions)
    scheduler.add_job(write_due_summaries, "date", args=[settings, sessions], id="daily-summary-catch-up")
    scheduler.start()
    return scheduler
