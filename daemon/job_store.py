"""The declared jobs' store: APScheduler's SQLAlchemy job store, made to outlive a database outage.

APScheduler's loop catches a failure to read the due jobs (it retries), but not one to write a job's
next run time or to read the store's next wake-up, which follow at once: a database that goes away
between the two ended the whole scheduler process. Here those two log and carry on; a job whose next
run time was not written is due again once the database is back, and its run is claimed only once
(``jobs.run_declared``).
"""

from __future__ import annotations

import logging
from datetime import datetime

from apscheduler.job import Job
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from sqlalchemy.exc import OperationalError

from .db import short_reason

log = logging.getLogger(__name__)


class OutageTolerantJobStore(SQLAlchemyJobStore):
    def update_job(self, job: Job) -> None:
        try:
            super().update_job(job)
        except OperationalError as error:
            log.warning("job %s: next run time not stored, database unavailable (%s); it is due again once "
                        "the database is back", job.id, short_reason(error))

    def get_next_run_time(self) -> datetime | None:
        try:
            return super().get_next_run_time()
        except OperationalError as error:  # the sweep's interval wakes the scheduler to try again
            log.warning("declared jobs' next run time unknown: database unavailable (%s)", short_reason(error))
            return None
