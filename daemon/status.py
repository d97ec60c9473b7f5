"""What an admin asks first: queue depth, pending cases, outbox and dead letters (`contourqa status`)."""

from __future__ import annotations

from urllib.parse import urlparse

import redis
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from .celery_app import INFERENCE_QUEUE, IO_QUEUE
from .db import Case, CaseState, OutboxItem, OutboxState, RoiResult


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


def counts_by_state(session: Session) -> tuple[dict[str, int], dict[str, int]]:
    """Cases by state and outbox items by state, every state present (zero when none)."""
    cases = dict(session.execute(select(Case.state, func.count()).group_by(Case.state)).all())
    outbox = dict(session.execute(select(OutboxItem.state, func.count()).group_by(OutboxItem.state)).all())
    return ({s.value: cases.get(s.value, 0) for s in CaseState}, {s.value: outbox.get(s.value, 0) for s in OutboxState})


def rois_outside_domain(session: Session) -> int:
    """ROIs whose image lay outside the model's training domain, so no Dice was given."""
    return int(session.scalar(select(func.count()).select_from(RoiResult).where(RoiResult.domain_inside.is_(False))))


def status_report(sessions: sessionmaker, broker_url: str | None) -> dict:
    with sessions() as session:
        cases, outbox = counts_by_state(session)
        outside = rois_outside_domain(session)
        dead = session.scalars(select(OutboxItem).where(OutboxItem.state == OutboxState.DEAD.value)
                               .order_by(OutboxItem.id)).all()
        failed = session.scalars(select(Case).where(Case.state == CaseState.FAILED.value)
                                 .order_by(Case.finished_at.desc()).limit(20)).all()
    pending = sum(cases[s.value] for s in (CaseState.WAITING, CaseState.READY, CaseState.QUEUED, CaseState.RUNNING))
    return {
        "queues": queue_depths(broker_url),
        "cases": cases,
        "pending_cases": pending,
        "outbox": outbox,
        "rois_outside_domain": outside,
        "dead_letters": [{"id": d.id, "case_id": d.case_id, "destination": d.destination, "attempts": d.attempts,
                          "last_error": d.last_error} for d in dead],
        "recent_failed_cases": [{"case_id": c.case_id, "reason": c.reason} for c in failed],
    }


def format_status(report: dict) -> str:
    queues = ", ".join(f"{q} {'unreachable' if n is None else n}" for q, n in report["queues"].items())
    lines = [f"queues:        {queues}",
             f"pending cases: {report['pending_cases']}  "
             + " ".join(f"{k}={v}" for k, v in report["cases"].items()),
             "outbox:        " + " ".join(f"{k}={v}" for k, v in report["outbox"].items()),
             f"ROIs outside the model's domain (no Dice given): {report['rois_outside_domain']}"]
    for item in report["dead_letters"]:
        lines.append(f"dead letter {item['id']}: case {item['case_id']} -> {item['destination']} after "
                     f"{item['attempts']} attempts: {item['last_error']}")
    for case in report["recent_failed_cases"]:
        lines.append(f"failed case {case['case_id']}: {case['reason']}")
    return "\n".join(lines)
