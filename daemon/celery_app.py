"""The one Celery app: JSON only, late acknowledgement, routes declared here, settings read once.

Queues: ``gpu`` for inference (one worker process per GPU; CPU when there is none) and ``io`` for
export. Tasks carry identifiers only; every process opens its own database engine.
"""

from __future__ import annotations

import logging
import os

from celery import Celery
from sqlalchemy.orm import sessionmaker

from .config import Settings
from . import ledger
from .db import open_database
from .queues import INFERENCE_QUEUE, IO_QUEUE

log = logging.getLogger(__name__)

ASSESS_TASK, EXPORT_TASK = "contourqa.assess_case", "contourqa.export_sr"
ROUTES = {ASSESS_TASK: {"queue": INFERENCE_QUEUE}, EXPORT_TASK: {"queue": IO_QUEUE}}

app = Celery("contourqa", include=["contourqa.daemon.tasks"])


class _Runtime:
    """What a process needs at run time: the settings, and a database engine made in this process."""

    settings: Settings | None = None
    inference: bool = False  # this process consumes the inference queue
    _sessions: sessionmaker | None = None
    _pid: int | None = None

    def sessions(self) -> sessionmaker:
        if self.settings is None:
            raise RuntimeError("contourqa's Celery app is not configured (call configure first)")
        if self._sessions is None or self._pid != os.getpid():  # never share an engine across fork
            url, wait_s = self.settings.resolved_database_url(), self.settings.database_wait_s
            self._sessions, self._pid = open_database(url, wait_s=wait_s), os.getpid()
        return self._sessions


runtime = _Runtime()


def configure(settings: Settings, broker_url: str) -> Celery:
    """Apply the settings to the app; call once per process before sending or consuming tasks."""
    runtime.settings = settings
    hard = settings.worker.time_limit_s
    app.conf.update(
        broker_url=broker_url,
        broker_connection_retry_on_startup=True,
        # a worker waits out a broker outage of any length (Celery's default gives up after 100 tries)
        broker_connection_max_retries=None,
        # a message unacknowledged this long (its worker vanished) is delivered again
        broker_transport_options={"visibility_timeout": int(hard * 2) + 60},
        task_serializer="json", result_serializer="json", accept_content=["json"],
        task_ignore_result=True, result_backend=None,
        task_acks_late=True, task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_routes=ROUTES, task_default_queue=IO_QUEUE,
        task_soft_time_limit=settings.worker.soft_time_limit_s, task_time_limit=hard,
        worker_hijack_root_logger=False, worker_redirect_stdouts=False,
    )
    return app


def dispatch_case(sessions: sessionmaker, case_id: str) -> bool:
    """Hand a ready case to the broker; a broker that is down leaves it ready for the next sweep."""
    try:
        app.send_task(ASSESS_TASK, args=[case_id], retry=True,
                      retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5})
    except Exception as error:  # kombu/redis raise many types; the case stays ready and is retried
        log.error("case %s: broker unavailable (%s); will retry", case_id, type(error).__name__,
                  extra={"case_id": case_id})
        return False
    ledger.mark_queued(sessions, case_id)
    return True


def dispatch_export(outbox_id: int) -> bool:
    try:
        app.send_task(EXPORT_TASK, args=[outbox_id], retry=True, retry_policy={"max_retries": 2})
    except Exception as error:  # the outbox row stays pending; the sweep sends it later
        log.error("outbox %d: broker unavailable (%s); will retry", outbox_id, type(error).__name__)
        return False
    return True
