"""Celery tasks: thin shells around plain functions of case_runner and export."""

from __future__ import annotations

import logging
import os

from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import worker_process_init
from sqlalchemy.exc import OperationalError

from .case_runner import fail_case, load_predictor, run_case
from .celery_app import ASSESS_TASK, EXPORT_TASK, app, dispatch_export, runtime
from .db import short_reason
from .export import deliver

log = logging.getLogger(__name__)


@worker_process_init.connect
def _load_model_at_start(**_) -> None:
    """Inference processes read the model once at start, so the first case is as fast as the next."""
    settings = runtime.settings
    if runtime.inference and settings is not None and settings.worker.use_model:
        import torch
        # several inference processes on one CPU: share the cores instead of oversubscribing them, unless
        # the operator has set OMP_NUM_THREADS (torch follows it)
        if not os.environ.get("OMP_NUM_THREADS"):
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // settings.worker.concurrency))
        model_dir = settings.worker.model_dir
        load_predictor(str(model_dir) if model_dir else None, settings.worker.device)


@app.task(name=ASSESS_TASK, acks_late=True, reject_on_worker_lost=True)
def assess_case(case_id: str) -> str:
    try:
        sessions = runtime.sessions()
        try:
            outcome = run_case(runtime.settings, sessions, case_id)
        except SoftTimeLimitExceeded:
            return fail_case(sessions, case_id, "assessment exceeded the soft time limit").state
    except OperationalError as error:
        # nothing is lost: the case stays queued or running in the ledger, and once the database is back the
        # scheduler's sweep hands it out again (its heartbeat stopped, or its message is gone)
        log.error("case %s: database unavailable (%s); it is assessed again when the database is back", case_id,
                  short_reason(error), extra={"case_id": case_id})
        return "interrupted"
    if outcome.outbox_id is not None:
        dispatch_export(outcome.outbox_id)
    return outcome.state


@app.task(name=EXPORT_TASK, acks_late=True, reject_on_worker_lost=True)
def export_sr(outbox_id: int) -> str:
    try:
        return deliver(runtime.settings.export, runtime.sessions(), outbox_id)
    except OperationalError as error:  # the outbox item stays due; the sweep sends it again
        log.error("outbox %d: database unavailable (%s); sent when the database is back", outbox_id,
                  short_reason(error))
        return "interrupted"

