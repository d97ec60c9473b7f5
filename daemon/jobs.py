"""The scheduler's registry of declared jobs: the daily summaries, retention and each admin's drift audit,
each on a cron trigger (UTC), kept in APScheduler's SQLAlchemy job store in the node's database.

- The job store remembers each job's next run, so a scheduler that was stopped runs a missed job once
  when it starts again (coalesced, no grace limit) rather than skipping it.
- Every run first inserts its row in ``job_runs`` keyed by the cron's fire time; the unique key is the
  lock, so of two schedulers started by mistake on one database only one runs a given firing.
- The declarations come from the configuration and the ``audits`` table; the scheduler brings the job store
  in line with them at start and every minute, so `contourqa audit add` on a running node takes effect.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import sessionmaker

from .config import Settings
from .db import Audit, JobRun, short_reason, utcnow

log = logging.getLogger(__name__)

JOBSTORE = "declared"
JOBSTORE_TABLE = "apscheduler_jobs"
SYNC_INTERVAL_S = 60
AUDIT_PREFIX = "audit:"
LOOKBACKS = (timedelta(hours=1), timedelta(days=1), timedelta(days=8), timedelta(days=32), timedelta(days=400))

_node: tuple[Settings, sessionmaker] | None = None  # the running scheduler's; the job store keeps only job IDs


@dataclass(frozen=True)
class Declared:
    job_id: str
    cron: str
    what: str


def declarations(settings: Settings, sessions: sessionmaker) -> list[Declared]:
    hour, minute = settings.scheduler.daily_summary_at.split(":")
    jobs = [Declared("daily-summaries", f"{int(minute)} {int(hour)} * * *", "write the days' QA summaries not yet written"),
            Declared("retention", settings.scheduler.retention_cron,
                     f"remove studies older than {settings.scheduler.retention_days} days"
                     if settings.scheduler.retention_days else "retention off (scheduler.retention_days)")]
    with sessions() as session:
        for audit in session.scalars(select(Audit).order_by(Audit.name)):
            jobs.append(Declared(AUDIT_PREFIX + audit.name, audit.cron, f"drift audit {audit.name}"))
    return jobs


def last_fire_time(cron: str, now: datetime) -> datetime | None:
    """The latest firing of ``cron`` (UTC) at or before ``now`` (naive UTC): the key of the run it starts."""
    from .audits import cron_trigger
    trigger = cron_trigger(cron)
    moment = now.replace(tzinfo=timezone.utc)
    for lookback in LOOKBACKS:
        fire = trigger.get_next_fire_time(None, moment - lookback)
        if fire is None or fire > moment:
            continue
        latest = fire
        while True:
            following = trigger.get_next_fire_time(latest, latest + timedelta(seconds=1))
            if following is None or following > moment:
                return latest.astimezone(timezone.utc).replace(tzinfo=None)
            latest = following
    return None


def claim(sessions: sessionmaker, job_id: str, key: str) -> bool:
    """Insert the run's row; False when another scheduler already has this firing."""
    with sessions() as session:
        session.add(JobRun(job=job_id, key=key))
        try:
            session.commit()
        except IntegrityError:
            session.rollback()
            return False
    return True


def finish_run(sessions: sessionmaker, job_id: str, key: str, status: str, detail: str | None) -> None:
    with sessions() as session:
        run = session.scalar(select(JobRun).where(JobRun.job == job_id, JobRun.key == key))
        run.status, run.detail, run.finished_at = status, detail, utcnow()
        session.commit()


def _perform(settings: Settings, sessions: sessionmaker, job_id: str, fire: datetime) -> str:
    from .daily_summary import write_due_summaries
    from .scheduler import apply_retention
    if job_id == "daily-summaries":
        return f"{len(write_due_summaries(settings, sessions))} day(s) written"
    if job_id == "retention":
        return f"{apply_retention(settings, sessions)} stud(y/ies) removed"
    if job_id.startswith(AUDIT_PREFIX):
        from .audits import run_audit
        return run_audit(settings, sessions, job_id[len(AUDIT_PREFIX):], now=fire).summary
    raise ValueError(f"unknown job {job_id}")


def run_declared(settings: Settings, sessions: sessionmaker, job_id: str, now: datetime | None = None) -> str | None:
    """Run one declared job for its latest firing, once across schedulers; what it did, or None when the
    firing was already claimed (or the job is no longer declared)."""
    declared = {d.job_id: d for d in declarations(settings, sessions)}.get(job_id)
    if declared is None:
        return None
    fire = last_fire_time(declared.cron, now or utcnow())
    key = (fire or now or utcnow()).isoformat(timespec="minutes")
    if not claim(sessions, job_id, key):
        log.info("job %s (%s): another scheduler ran it", job_id, key)
        return None
    try:
        detail = _perform(settings, sessions, job_id, fire or utcnow())
    except OperationalError:
        raise  # the database went away: nothing can be recorded (run_job says so)
    except Exception as error:  # one job's failure is recorded and never stops the scheduler
        log.exception("job %s (%s) failed", job_id, key)
        finish_run(sessions, job_id, key, "failed", f"{type(error).__name__}: {error}")
        return None
    finish_run(sessions, job_id, key, "done", detail)
    return detail


def run_job(job_id: str) -> None:
    """What the job store calls (by reference: it stores the job's ID, not the node's settings)."""
    if _node is None:
        log.error("job %s fired outside a running scheduler", job_id)
        return
    try:
        run_declared(*_node, job_id)
    except OperationalError as error:  # not claimed: its next firing catches up (summaries: every missing day)
        log.warning("job %s skipped: database unavailable (%s)", job_id, short_reason(error))


def sync_jobs(scheduler, settings: Settings, sessions: sessionmaker) -> None:
    """Bring the job store in line with the declarations: add new jobs, re-time changed ones, drop removed."""
    from .audits import cron_trigger
    try:
        declared = {d.job_id: d for d in declarations(settings, sessions)}
        stored = {job.id: job for job in scheduler.get_jobs(jobstore=JOBSTORE)}
    except OperationalError as error:  # the next minute's sync does it
        log.warning("declared jobs not synchronised: database unavailable (%s)", short_reason(error))
        return
    for job_id, job in stored.items():
        if job_id not in declared:
            scheduler.remove_job(job_id, jobstore=JOBSTORE)
    for job_id, d in declared.items():
        if job_id in stored and stored[job_id].name == d.cron:
            continue
        scheduler.add_job(run_job, cron_trigger(d.cron), args=[job_id], id=job_id, name=d.cron, jobstore=JOBSTORE,
                          replace_existing=True, coalesce=True, misfire_grace_time=None, max_instances=1)


def attach(scheduler, settings: Settings, sessions: sessionmaker) -> None:
    """Give ``scheduler`` (not yet started) the job store and the minute's sync."""
    from .job_store import OutageTolerantJobStore
    global _node
    _node = (settings, sessions)
    scheduler.add_jobstore(OutageTolerantJobStore(engine=sessions.kw["bind"], tablename=JOBSTORE_TABLE), JOBSTORE)
    scheduler.add_job(sync_jobs, "interval", seconds=SYNC_INTERVAL_S, args=[scheduler, settings, sessions],
                      id="sync-declared-jobs", max_instances=1, coalesce=True,
                      next_run_time=datetime.now(timezone.utc))


def schedule_table(settings: Settings, sessions: sessionmaker) -> list[dict]:
    """Each declared job: cron, next run (from the job store when a scheduler has stored it), last run."""
    with sessions() as session:
        stored: dict[str, float] = {}
        if sessions.kw["bind"].dialect.has_table(session.connection(), JOBSTORE_TABLE):
            stored = dict(session.execute(text(f"SELECT id, next_run_time FROM {JOBSTORE_TABLE}")).all())
        rows = []
        for d in declarations(settings, sessions):
            last = session.scalar(select(JobRun).where(JobRun.job == d.job_id)
                                  .order_by(JobRun.started_at.desc(), JobRun.id.desc()).limit(1))
            next_run = stored.get(d.job_id)
            rows.append({"job": d.job_id, "cron": d.cron, "what": d.what,
                         "next_run": (datetime.fromtimestamp(next_run, timezone.utc).isoformat(timespec="minutes")
                                      if next_run else None),
                         "last_run": last.key if last else None, "last_status": last.status if last else None,
                         "last_detail": last.detail if last else None})
    return rows


def last_runs(sessions: sessionmaker) -> dict[str, dict]:
    """The latest run of every job that has run, for `status`."""
    with sessions() as session:
        latest = (select(JobRun.job, func.max(JobRun.id).label("id")).group_by(JobRun.job).subquery())
        runs = session.scalars(select(JobRun).join(latest, JobRun.id == latest.c.id)).all()
        return {r.job: {"key": r.key, "status": r.status, "detail": r.detail,
                        "finished": r.finished_at.isoformat(timespec="seconds") if r.finished_at else None}
                for r in runs}
