"""Logging for the daemon: plain or one JSON object per line. Messages carry UIDs and case IDs only."""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone

_EXTRA_FIELDS = ("case_id",)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
                 "level": record.levelname, "logger": record.name, "process": record.process,
                 "message": record.getMessage()}
        entry.update({k: getattr(record, k) for k in _EXTRA_FIELDS if hasattr(record, k)})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


class _ExceptionInOneLine(logging.Filter):
    """Folds a warning's exception into its message: Celery before 5.7 logs "Connection to broker lost" with
    the whole traceback, at every broker outage, where the operator needs one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.WARNING and record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            record.msg, record.args = f"{record.getMessage()} ({type(error).__name__}: {error})", ()
            record.exc_info, record.exc_text = None, None
        return True


BROKER_LOSS_LOGGER = "celery.worker.consumer.consumer"


def setup_logging(level: str = "INFO", as_json: bool = False) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if as_json else
                         logging.Formatter("%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # pynetdicom at DEBUG dumps whole PDUs and datasets (patient names), and at INFO logs every message:
    # it speaks at WARNING; the node logs associations, instances and cases itself.
    for noisy in ("pynetdicom", "highdicom", "apscheduler"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    broker_loss = logging.getLogger(BROKER_LOSS_LOGGER)
    if not any(isinstance(f, _ExceptionInOneLine) for f in broker_loss.filters):
        broker_loss.addFilter(_ExceptionInOneLine())
