"""The case ledger: the one module that changes the state of a case or of an outbox row, and answers
the queries about results (status, metrics, retention, the monitoring to come).

Every change is one conditional UPDATE from the states the transition table allows, so two processes
racing for the same move (two associations completing a case, a redelivered message, the sweep) make
it once, and a step repeated after a crash is a no-op that says so (False / None).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from sqlalchemy import and_, exists, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from .db import Case, CaseReference, CaseState, Instance, OutboxItem, OutboxState, RoiResult, utcnow

W, R, Q, RUN, D, F = (CaseState.WAITING, CaseState.READY, CaseState.QUEUED, CaseState.RUNNING, CaseState.DONE,
                      CaseState.FAILED)
NEW = None  # a case not yet in the ledger
UNFINISHED = (W, R, Q, RUN)  # the node still owes these cases an answer

# target state: the states a case may reach it from
TRANSITIONS: dict[CaseState, frozenset[CaseState | None]] = {
    W: frozenset({NEW, F}),             # a structure set arrived, its images awaited; or a failed case re-opened
    R: frozenset({W, Q, RUN}),          # complete (or quiet past the stable age); or its message/worker was lost
    Q: frozenset({R}),                  # handed to the broker
    RUN: frozenset({R, Q, RUN}),        # a worker may start before the dispatcher marks it queued; or take over
                                        # a running case whose worker stopped beating (ledger.start)
    D: frozenset({RUN}),                # assessed, results and outbox row recorded
    F: frozenset({NEW, *UNFINISHED}),   # cannot be assessed; not retried
}


class TransitionError(ValueError):
    """A move the lifecycle does not allow (a programming error, not a race)."""


def allowed(source: CaseState | None, target: CaseState) -> bool:
    return source in TRANSITIONS[target]


def _move(session: Session, case_id: str, target: CaseState, sources: Iterable[CaseState] | None = None,
          **values) -> bool:
    """Move one case to ``target`` when it is in one of ``sources`` (default: every allowed one)."""
    sources = set(TRANSITIONS[target] if sources is None else sources)
    if not sources <= TRANSITIONS[target]:
        raise TransitionError(f"{', '.join(sorted(str(s) for s in sources))} -> {target.value} is not allowed")
    states = [s.value for s in sources if s is not None]
    return bool(session.execute(update(Case).where(Case.case_id == case_id, Case.state.in_(states))
                                .values(state=target.value, **values)).rowcount)


# ---- cases ----------------------------------------------------------------------------------------------

def open_case(sessions: sessionmaker, case: Case, instance_uids: Iterable[str], failure: str | None = None) -> bool:
    """Record a new case and the images it needs: waiting, or failed with ``failure``. False if it exists.

    The case's key decides, not a look first: the SCP and the scheduler's sweep may open one structure set's
    case at the same moment, and one of them must simply find it there."""
    state = F if failure else W
    with sessions() as session:
        case.state, case.reason = state.value, failure
        if failure:
            case.finished_at = utcnow()
        session.add(case)
        session.add_all(CaseReference(case_id=case.case_id, series_uid=case.image_series_uid, sop_instance_uid=uid)
                        for uid in sorted(instance_uids))
        try:
            session.commit()
        except IntegrityError:
            session.rollback()
            return False
    return True


def missing_references(session: Session, case_id: str) -> list[str]:
    """Referenced SOP Instance UIDs not in the store."""
    query = select(CaseReference.sop_instance_uid).where(
        CaseReference.case_id == case_id, CaseReference.sop_instance_uid.is_not(None),
        ~exists().where(Instance.sop_instance_uid == CaseReference.sop_instance_uid))
    return sorted(session.scalars(query))


def mark_ready_if_complete(sessions: sessionmaker, case_id: str) -> bool:
    """Waiting -> ready once every listed instance is stored (a list-less case waits for the stable age)."""
    with sessions() as session:
        listed = session.scalar(select(func.count()).where(
            CaseReference.case_id == case_id, CaseReference.sop_instance_uid.is_not(None)))
        if not listed or missing_references(session, case_id):
            return False
        moved = _move(session, case_id, R, {W}, ready_at=utcnow())
        session.commit()
    return moved


def _queue_answer(session: Session, outbox: OutboxItem) -> None:
    """Queue a case's SR for a destination. A case has one outbox row per destination: its latest answer
    (a failed case's not-assessed SR is followed by the assessment once it re-opens and completes)."""
    earlier = session.scalar(select(OutboxItem).where(OutboxItem.case_id == outbox.case_id,
                                                      OutboxItem.destination == outbox.destination))
    if earlier is None:
        session.add(outbox)
        return
    for field in ("sr_path", "sr_sop_instance_uid"):
        setattr(earlier, field, getattr(outbox, field))
    earlier.state, earlier.attempts, earlier.failures, earlier.last_error = OutboxState.PENDING.value, 0, 0, None
    earlier.next_attempt_at, earlier.claimed_at, earlier.sent_at = utcnow(), None, None
    outbox.id = earlier.id  # the caller dispatches the export by this ID; the transient row itself is not stored


def unanswered_failures(sessions: sessionmaker) -> list[Case]:
    """Failed cases whose sender has not been told yet (no not-assessed SR written)."""
    with sessions() as session:
        cases = list(session.scalars(select(Case).where(Case.state == F.value, Case.sr_path.is_(None))))
        session.expunge_all()
    return cases


def answer_failure(sessions: sessionmaker, case_id: str, sr_path: str, outbox: OutboxItem | None) -> bool:
    """Record a failed case's not-assessed SR and its outbox row, once (False if already answered or re-opened)."""
    with sessions() as session:
        answered = session.execute(update(Case).where(Case.case_id == case_id, Case.state == F.value,
                                                      Case.sr_path.is_(None)).values(sr_path=sr_path)).rowcount
        if answered and outbox is not None:
            _queue_answer(session, outbox)
        session.commit()
    return bool(answered)


def reopen(sessions: sessionmaker, case_id: str) -> bool:
    """Failed -> waiting (`contourqa retry`, or a late instance that completes it); its results start afresh."""
    with sessions() as session:
        moved = _move(session, case_id, W, {F}, reason=None, finished_at=None, ready_at=None, partial=False,
                      sr_path=None)
        session.commit()
    return moved


def failed_cases_awaiting(sessions: sessionmaker, sop_instance_uid: str) -> list[str]:
    """Failed cases that list this instance among their references: a late arrival may complete them."""
    with sessions() as session:
        return list(session.scalars(select(Case.case_id).join(CaseReference, CaseReference.case_id == Case.case_id)
                                    .where(Case.state == F.value, CaseReference.sop_instance_uid == sop_instance_uid)))


def waiting_cases_of_series(sessions: sessionmaker, series_uid: str) -> list[str]:
    with sessions() as session:
        return list(session.scalars(select(Case.case_id).where(Case.state == W.value,
                                                               Case.image_series_uid == series_uid)))


def ready_stale_waiting(sessions: sessionmaker, stable_age_s: float, now: datetime | None = None) -> list[str]:
    """Waiting cases whose series has been quiet for the stable age -> ready, to assess what is present."""
    now = now or utcnow()
    limit = now - timedelta(seconds=stable_age_s)
    ready = []
    with sessions() as session:
        for case in session.scalars(select(Case).where(Case.state == W.value)):
            last_image = session.scalar(select(func.max(Instance.received_at))
                                        .where(Instance.series_uid == case.image_series_uid))
            if max(filter(None, [last_image, case.created_at])) <= limit and _move(
                    session, case.case_id, R, {W}, partial=True, ready_at=now):
                ready.append(case.case_id)
        session.commit()
    return ready


def mark_queued(sessions: sessionmaker, case_id: str) -> bool:
    with sessions() as session:
        moved = _move(session, case_id, Q, dispatched_at=utcnow())
        session.commit()
    return moved


def start(sessions: sessionmaker, case_id: str, heartbeat_lease_s: float = 15.0) -> Case | None:
    """A worker takes the case: running, one attempt more, its heartbeat fresh. None when it is finished,
    or running under another worker that beat within ``heartbeat_lease_s``: of two workers handed one case
    (a redelivery racing the first worker, two machines), one runs it. A running case whose worker stopped
    beating is taken over."""
    now = utcnow()
    alive = now - timedelta(seconds=heartbeat_lease_s)
    with sessions() as session:
        moved = session.execute(
            update(Case).where(Case.case_id == case_id, or_(
                Case.state.in_([R.value, Q.value]),
                and_(Case.state == RUN.value, or_(Case.heartbeat_at.is_(None), Case.heartbeat_at < alive))))
            .values(state=RUN.value, started_at=now, heartbeat_at=now, attempts=Case.attempts + 1)).rowcount
        session.commit()
        return session.get(Case, case_id) if moved else None


def heartbeat(sessions: sessionmaker, case_id: str) -> bool:
    """The worker running the case is alive (sent every worker.heartbeat_s while it assesses)."""
    with sessions() as session:
        beat = session.execute(update(Case).where(Case.case_id == case_id, Case.state == RUN.value)
                               .values(heartbeat_at=utcnow())).rowcount
        session.commit()
    return bool(beat)


def finish(sessions: sessionmaker, case_id: str, results: list[RoiResult], outbox: OutboxItem | None,
           **values) -> bool:
    """Running -> done with its ROI results and outbox row, in one transaction; False when another attempt
    finished first (nothing is recorded twice)."""
    with sessions() as session:
        if not _move(session, case_id, D, finished_at=utcnow(), **values):
            session.rollback()
            return False
        session.add_all(results)
        if outbox is not None:
            _queue_answer(session, outbox)
        session.commit()
    return True


def fail(sessions: sessionmaker, case_id: str, reason: str) -> bool:
    with sessions() as session:
        moved = _move(session, case_id, F, reason=reason, finished_at=utcnow())
        session.commit()
    return moved


def release_lost(sessions: sessionmaker, ready_grace_s: float, queued_lease_s: float, heartbeat_lease_s: float,
                 held: set[str] | None = None) -> list[str]:
    """Cases to hand to the broker again, back in ``ready``: ready ones nobody dispatched; queued ones whose
    message the broker no longer holds (``held``: the case IDs it does; None: unknown) or older than the
    lease; running ones whose worker stopped beating."""
    now = utcnow()
    with sessions() as session:
        candidates = session.execute(select(Case.case_id, Case.state, Case.ready_at, Case.dispatched_at,
                                            Case.heartbeat_at, Case.started_at)
                                     .where(Case.state.in_([R.value, Q.value, RUN.value]))).all()
        lost = []
        for case_id, state, ready_at, dispatched_at, beat, started_at in candidates:
            if state == R.value:
                stale = ready_at is not None and ready_at < now - timedelta(seconds=ready_grace_s)
            elif state == Q.value:
                age = now - (dispatched_at or now)
                stale = age > timedelta(seconds=queued_lease_s) or (
                    age > timedelta(seconds=ready_grace_s) and held is not None and case_id not in held)
            else:
                stale = (beat or started_at or now) < now - timedelta(seconds=heartbeat_lease_s)
            if stale and (state == R.value or _move(session, case_id, R, {CaseState(state)})):
                lost.append(case_id)
        session.commit()
    return lost


def case_state(sessions: sessionmaker, case_id: str) -> str | None:
    with sessions() as session:
        return session.scalar(select(Case.state).where(Case.case_id == case_id))


def busy_studies(session: Session) -> set[str]:
    """Studies a case still needs (retention keeps them)."""
    return set(session.scalars(select(Case.study_uid).where(Case.state.in_([s.value for s in UNFINISHED]))))


# ---- the outbox -----------------------------------------------------------------------------------------

def _outbox_due(now: datetime, lease_s: float):
    """Pending and due, or being sent by a worker whose lease has run out (it vanished mid-way)."""
    return (((OutboxItem.state == OutboxState.PENDING.value) & (OutboxItem.next_attempt_at <= now))
            | ((OutboxItem.state == OutboxState.SENDING.value)
               & (OutboxItem.claimed_at < now - timedelta(seconds=lease_s))))


def claim_outbox(sessions: sessionmaker, outbox_id: int, lease_s: float) -> OutboxItem | None:
    """Take an outbox item for sending, once: pending and due, or a sending lease that has run out."""
    now = utcnow()
    with sessions() as session:
        moved = session.execute(
            update(OutboxItem).where(OutboxItem.id == outbox_id, _outbox_due(now, lease_s))
            .values(state=OutboxState.SENDING.value, claimed_at=now, attempts=OutboxItem.attempts + 1)).rowcount
        session.commit()
        return session.get(OutboxItem, outbox_id) if moved else None


def outbox_sent(sessions: sessionmaker, outbox_id: int) -> OutboxItem:
    return _outbox_update(sessions, outbox_id, state=OutboxState.SENT.value, sent_at=utcnow(), last_error=None)


def outbox_failed(sessions: sessionmaker, outbox_id: int, error: str, retry_in_s: float | None) -> OutboxItem:
    """A failed send: pending again after ``retry_in_s``, or dead (None) for an admin to requeue."""
    values = ({"state": OutboxState.DEAD.value} if retry_in_s is None else
              {"state": OutboxState.PENDING.value, "next_attempt_at": utcnow() + timedelta(seconds=retry_in_s)})
    return _outbox_update(sessions, outbox_id, last_error=error, failures=OutboxItem.failures + 1, **values)


def _outbox_update(sessions: sessionmaker, outbox_id: int, **values) -> OutboxItem:
    with sessions() as session:
        session.execute(update(OutboxItem).where(OutboxItem.id == outbox_id,
                                                 OutboxItem.state == OutboxState.SENDING.value).values(**values))
        session.commit()
        return session.get(OutboxItem, outbox_id)


def due_outbox(sessions: sessionmaker, lease_s: float) -> list[int]:
    """Outbox items to (re)try now, including sends whose worker vanished mid-way."""
    with sessions() as session:
        return list(session.scalars(select(OutboxItem.id).where(_outbox_due(utcnow(), lease_s))))


def requeue_dead(sessions: sessionmaker, outbox_id: int | None = None) -> int:
    """An admin's retry of dead letters (one, or all): back to pending with a fresh attempt count."""
    with sessions() as session:
        query = update(OutboxItem).where(OutboxItem.state == OutboxState.DEAD.value)
        if outbox_id is not None:
            query = query.where(OutboxItem.id == outbox_id)
        count = session.execute(query.values(state=OutboxState.PENDING.value, attempts=0,
                                             next_attempt_at=utcnow())).rowcount
        session.commit()
        return count


# ---- queries about results --------------------------------------------------------------------------------

def counts_by_state(session: Session) -> tuple[dict[str, int], dict[str, int]]:
    """Cases by state and outbox items by state, every state present (zero when none)."""
    cases = dict(session.execute(select(Case.state, func.count()).group_by(Case.state)).all())
    outbox = dict(session.execute(select(OutboxItem.state, func.count()).group_by(OutboxItem.state)).all())
    return ({s.value: cases.get(s.value, 0) for s in CaseState}, {s.value: outbox.get(s.value, 0) for s in OutboxState})


def rois_outside_domain(session: Session) -> int:
    """ROIs whose image lay outside the model's training domain, so no Dice was given."""
    return int(session.scalar(select(func.count()).select_from(RoiResult).where(RoiResult.domain_inside.is_(False))))


def rois_unreadable(session: Session) -> int:
    """ROIs in whose contour the model read no organ's surface (lone voxels, noise ...), so no Dice was given."""
    return int(session.scalar(select(func.count()).select_from(RoiResult).where(RoiResult.unreadable.is_not(None))))


def dead_letters(session: Session) -> list[OutboxItem]:
    return list(session.scalars(select(OutboxItem).where(OutboxItem.state == OutboxState.DEAD.value)
                                .order_by(OutboxItem.id)))


def recent_failures(session: Session, limit: int = 20) -> list[Case]:
    return list(session.scalars(select(Case).where(Case.state == F.value)
                                .order_by(Case.finished_at.desc()).limit(limit)))


def export_failures(session: Session) -> int:
    return int(session.scalar(select(func.coalesce(func.sum(OutboxItem.failures), 0))))


def latencies_s(session: Session) -> list[float]:
    """Seconds from complete to result, per done case."""
    spans = session.execute(select(Case.ready_at, Case.finished_at).where(
        Case.state == D.value, Case.ready_at.is_not(None))).all()
    return [(end - begin).total_seconds() for begin, end in spans]
