"""The scheduler's job registry: cron firings as run keys (a controlled clock), one run per firing across
two schedulers, a firing missed while stopped run once at the next start, `schedule list` and `status`."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone

import pytest
from apscheduler.schedulers.background import BackgroundScheduler

from conftest import run_cli
from node_harness import free_port
from contourqa.daemon import jobs
from contourqa.daemon.audits import add_audit
from contourqa.daemon.config import load_settings
from contourqa.daemon.db import AuditRun, JobRun, open_database


def _home(tmp_path, database_url: str | None = None):
    settings = load_settings(None, {"home": str(tmp_path), "database_url": database_url})
    return settings, open_database(settings.resolved_database_url())


def test_a_run_is_keyed_by_the_cron_firing_it_belongs_to():
    now = datetime(2026, 12, 1, 9, 30)
    assert jobs.last_fire_time("0 7 * * *", now) == datetime(2026, 12, 1, 7, 0)
    assert jobs.last_fire_time("0 7 * * *", datetime(2026, 12, 1, 6, 59)) == datetime(2026, 11, 30, 7, 0)
    assert jobs.last_fire_time("0 7 * * 1", now) == datetime(2026, 11, 30, 7, 0)  # Monday
    assert jobs.last_fire_time("17 * * * *", now) == datetime(2026, 12, 1, 9, 17)
    assert jobs.last_fire_time("0 0 1 1 *", now) == datetime(2026, 1, 1, 0, 0)


def test_each_firing_runs_once_whoever_fires_it(tmp_path, database_url):
    settings, sessions = _home(tmp_path, database_url)
    add_audit(sessions, "weekly", "0 7 * * 1", "7d", "90d")
    monday = datetime(2026, 11, 30, 7, 0, 5)
    assert jobs.run_declared(settings, sessions, "audit:weekly", now=monday) is not None
    # a second scheduler firing the same Monday, even an hour later, finds it claimed
    assert jobs.run_declared(settings, sessions, "audit:weekly", now=monday + timedelta(hours=1)) is None
    assert jobs.run_declared(settings, sessions, "audit:weekly", now=monday + timedelta(days=7)) is not None
    with sessions() as session:
        keys = [r.key for r in session.query(JobRun).filter_by(job="audit:weekly").order_by(JobRun.id)]
        assert keys == ["2026-11-30T07:00", "2026-12-07T07:00"]
        assert session.query(AuditRun).filter_by(audit="weekly").count() == 2
    assert jobs.run_declared(settings, sessions, "audit:removed-long-ago", now=monday) is None


def _scheduler(settings, sessions) -> BackgroundScheduler:
    scheduler = BackgroundScheduler(timezone="UTC")
    jobs.attach(scheduler, settings, sessions)
    return scheduler


def _wait_for(condition, seconds: float = 15) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


def test_a_firing_missed_while_stopped_runs_once_when_two_schedulers_start(tmp_path, database_url):
    settings, sessions = _home(tmp_path, database_url)
    add_audit(sessions, "daily", "0 6 * * *", "7d", "90d")
    first = _scheduler(settings, sessions)
    first.start(paused=True)  # runs nothing
    jobs.sync_jobs(first, settings, sessions)  # what its thread does each minute: store the declared jobs
    # as if the node had been down over this morning's 06:00: the stored next run lies in the past
    missed = datetime.now(timezone.utc) - timedelta(minutes=5)
    first.modify_job("audit:daily", jobstore=jobs.JOBSTORE, next_run_time=missed)
    # (`first` stays paused until the end: APScheduler 3 processes due jobs once more while shutting down)
    # two schedulers started by mistake on the same database, each with its own engine
    both = [_scheduler(settings, open_database(settings.resolved_database_url())) for _ in range(2)]
    for scheduler in both:
        scheduler.start()
    try:
        def runs():
            with sessions() as session:
                return session.query(JobRun).filter_by(job="audit:daily").all()
        assert _wait_for(lambda: any(r.status == "done" for r in runs()))
        time.sleep(2)  # give the second scheduler every chance to run it again
        assert len(runs()) == 1 and runs()[0].status == "done"
        with sessions() as session:
            assert session.query(AuditRun).filter_by(audit="daily").count() == 1
        stored = both[0].get_job("audit:daily", jobstore=jobs.JOBSTORE)
        assert stored.next_run_time > datetime.now(timezone.utc)  # the next morning, not again now
    finally:
        for scheduler in (*both, first):
            scheduler.shutdown(wait=False)


def test_schedule_list_and_status_show_the_declared_jobs_and_their_last_runs(tmp_path):
    settings, sessions = _home(tmp_path)
    add_audit(sessions, "weekly", "0 7 * * 1", "7d", "90d")
    before = run_cli("schedule", "list", "--home", tmp_path)
    assert before.returncode == 0 and "audit:weekly" in before.stdout and "never" in before.stdout
    scheduler = _scheduler(settings, sessions)
    scheduler.start(paused=True)
    jobs.sync_jobs(scheduler, settings, sessions)
    scheduler.shutdown(wait=False)
    jobs.run_declared(settings, sessions, "audit:weekly", now=datetime(2026, 11, 30, 7, 1))
    listed = run_cli("schedule", "list", "--json", "--home", tmp_path)
    rows = {r["job"]: r for r in json.loads(listed.stdout)}
    assert set(rows) == {"daily-summaries", "retention", "audit:weekly"}
    assert rows["audit:weekly"]["next_run"] and rows["audit:weekly"]["last_run"] == "2026-11-30T07:00"
    assert rows["audit:weekly"]["last_status"] == "done" and rows["daily-summaries"]["cron"] == "0 6 * * *"
    status = run_cli("status", "--home", tmp_path)
    assert "last run of audit:weekly: 2026-11-30T07:00 done" in status.stdout


def test_with_the_database_away_every_scheduler_job_logs_one_line_and_carries_on(tmp_path, postgres, caplog):
    """PostgreSQL stopped under a running scheduler: the sweep, the minute's sync and a declared job each say so
    in one warning instead of raising (APScheduler would log a traceback every few seconds)."""
    from sqlalchemy import create_engine
    from sqlalchemy.orm import sessionmaker
    from contourqa.daemon import scheduler as node_scheduler
    away = f"postgresql+psycopg://postgres@/away?host={postgres.folder}&port={free_port()}"  # nobody listens
    settings = load_settings(None, {"home": str(tmp_path), "database_url": away})
    sessions = sessionmaker(create_engine(away))
    jobs._node = (settings, sessions)
    try:
        with caplog.at_level("WARNING"):
            node_scheduler.sweep(settings, sessions)
            jobs.sync_jobs(BackgroundScheduler(timezone="UTC"), settings, sessions)
            jobs.run_job("daily-summaries")
    finally:
        jobs._node = None
    messages = [r.getMessage() for r in caplog.records]
    assert [m.split(":")[0] for m in messages] == ["sweep skipped", "declared jobs not synchronised",
                                                  "job daily-summaries skipped"]
    assert all("database unavailable" in m and "\n" not in m for m in messages)


def test_the_job_store_outlives_an_outage_between_reading_and_writing_a_jobs_run_time(postgres, caplog):
    """APScheduler's loop catches a failed read of the due jobs but not a failed write of the next run time
    right after it: a database that went away between the two ended the scheduler process (seen in the
    split deployment's outage test). The store logs one line instead."""
    from apscheduler.job import Job
    from apscheduler.triggers.interval import IntervalTrigger
    from sqlalchemy import create_engine
    from sqlalchemy.exc import OperationalError

    from contourqa.daemon.job_store import OutageTolerantJobStore
    away = f"postgresql+psycopg://postgres@/away?host={postgres.folder}&port={free_port()}"  # nobody listens
    store = OutageTolerantJobStore(engine=create_engine(away), tablename=jobs.JOBSTORE_TABLE)
    scheduler = BackgroundScheduler(timezone="UTC")
    job = Job(scheduler, id="daily-summaries", func=print, trigger=IntervalTrigger(seconds=60), executor="default",
              args=(), kwargs={}, name="0 6 * * *", misfire_grace_time=None, coalesce=True, max_instances=1,
              next_run_time=datetime.now(timezone.utc))
    with caplog.at_level("WARNING"):
        store.update_job(job)
        assert store.get_next_run_time() is None
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2 and all("database unavailable" in m and "\n" not in m for m in messages)
    assert messages[0].startswith("job daily-summaries: next run time not stored")
    with pytest.raises(OperationalError):  # what APScheduler's own store does, and its loop does not catch
        super(OutageTolerantJobStore, store).update_job(job)
