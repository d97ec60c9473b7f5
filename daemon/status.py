"""What an admin asks first: queue depth, pending cases, outbox, dead letters and the scheduled jobs' last
runs (`contourqa status`)."""

from __future__ import annotations

import base64
import json
from urllib.parse import urlparse

import redis
from sqlalchemy.orm import sessionmaker

from . import ledger
from .queues import INFERENCE_QUEUE, IO_QUEUE


def redis_client(broker_url: str) -> redis.Redis:
    """A client for Celery's broker URL, including the embedded server's ``redis+socket://`` form."""
    parsed = urlparse(broker_url)
    if parsed.scheme == "redis+socket":
        return redis.Redis(unix_socket_path=parsed.path, socket_timeout=5)
    return redis.Redis.from_url(broker_url, socket_timeout=5)


def queue_depths(broker_url: str | None) -> dict[str, int | None]:
    """Messages waiting per queue; None when the broker cannot be reached."""
    if broker_url is None:
        return {INFERENCE_QUEUE: None, IO_QUEUE: None}
    try:
        client = redis_client(broker_url)
        return {queue: int(client.llen(queue)) for queue in (INFERENCE_QUEUE, IO_QUEUE)}
    except redis.RedisError:
        return {INFERENCE_QUEUE: None, IO_QUEUE: None}


def _first_argument(raw: bytes | str) -> str | None:
    """The first task argument (a case ID) of a kombu message as the Redis transport stores it."""
    try:
        message = json.loads(raw)
        message = message[0] if isinstance(message, list) else message  # unacked entries: [message, ...]
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
        return str(args[0]) if args else None
    except (ValueError, KeyError, IndexError, TypeError):
        return None


def broker_problem(broker_url: str | None) -> str | None:
    """Why the broker does not answer, in one line; None when it does (or none is configured)."""
    if broker_url is None:
        return None
    try:
        redis_client(broker_url).ping()
    except redis.RedisError as error:
        return str(error).splitlines()[0] if str(error) else type(error).__name__
    return None


def messages_held(broker_url: str | None, queue: str) -> set[str] | None:
    """Case IDs the broker still holds for ``queue``: waiting, or delivered and not yet acknowledged.
    None when the broker cannot be asked, so nothing is taken for lost."""
    if broker_url is None:
        return None
    try:
        client = redis_client(broker_url)
        raw = list(client.lrange(queue, 0, -1)) + list(client.hvals("unacked"))
    except redis.RedisError:
        return None
    return {case_id for case_id in map(_first_argument, raw) if case_id is not None}


def status_report(sessions: sessionmaker, broker_url: str | None) -> dict:
    with sessions() as session:
        cases, outbox = ledger.counts_by_state(session)
        outside = ledger.rois_outside_domain(session)
        unreadable = ledger.rois_unreadable(session)
        dead = ledger.dead_letters(session)
        failed = ledger.recent_failures(session)
    from .jobs import last_runs  # the scheduler's modules only when asked
    jobs = last_runs(sessions)
    pending = sum(cases[s.value] for s in ledger.UNFINISHED)
    return {
        "queues": queue_depths(broker_url),
        "cases": cases,
        "pending_cases": pending,
        "outbox": outbox,
        "rois_outside_domain": outside,
        "rois_unreadable": unreadable,
        "dead_letters": [{"id": d.id, "case_id": d.case_id, "destination": d.destination, "attempts": d.attempts,
                          "last_error": d.last_error} for d in dead],
        "recent_failed_cases": [{"case_id": c.case_id, "reason": c.reason} for c in failed],
        "last_job_runs": jobs,
    }


def format_status(report: dict) -> str:
    queues = ", ".join(f"{q} {'unreachable' if n is None else n}" for q, n in report["queues"].items())
    lines = [f"queues:        {queues}",
             f"pending cases: {report['pending_cases']}  "
             + " ".join(f"{k}={v}" for k, v in report["cases"].items()),
             "outbox:        " + " ".join(f"{k}={v}" for k, v in report["outbox"].items()),
             f"ROIs outside the model's domain (no Dice given): {report['rois_outside_domain']}",
             f"ROIs whose contour the model could not read (no Dice given): {report['rois_unreadable']}"]
    for item in report["dead_letters"]:
        lines.append(f"dead letter {item['id']}: case {item['case_id']} -> {item['destination']} after "
                     f"{item['attempts']} attempts: {item['last_error']}")
    for case in report["recent_failed_cases"]:
        lines.append(f"failed case {case['case_id']}: {case['reason']}")
    for job, run in sorted(report["last_job_runs"].items()):
        lines.append(f"last run of {job}: {run['key']} {run['status']}" + (f" ({run['detail']})" if run["detail"] else ""))
    return "\n".join(lines)
