"""The case ledger on its own, on real SQLite: every allowed move, the forbidden ones refused, and a step
repeated after a crash between two steps doing nothing twice."""

from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from contourqa.daemon import ledger
from contourqa.daemon.db import Case, CaseState, Instance, OutboxItem, RoiResult, open_database, utcnow

W, R, Q, RUN, D, F = (CaseState.WAITING, CaseState.READY, CaseState.QUEUED, CaseState.RUNNING, CaseState.DONE,
                      CaseState.FAILED)


@pytest.fixture
def sessions(database_url):
    """On SQLite and on PostgreSQL (conftest's database_url)."""
    sessions = open_database(database_url)
    with sessions() as session:
        session.add(Instance(id=1, sop_instance_uid="1.9", sop_class_uid="1.2", study_uid="1", series_uid="2",
                             path="x", sha256="0", size=0))
        session.add(Instance(id=2, sop_instance_uid="1.10", sop_class_uid="1.3", study_uid="1", series_uid="2",
                             path="y", sha256="0", size=0))
        session.commit()
    return sessions


def new_case(sessions, case_id="c1", references=("1.10",), failure=None) -> bool:
    case = Case(case_id=case_id, structure_instance_id=1, kind="RTSTRUCT", study_uid="1", image_series_uid="2")
    return ledger.open_case(sessions, case, references, failure)


def state(sessions, case_id="c1") -> str:
    return ledger.case_state(sessions, case_id)


def force(sessions, target: CaseState, case_id="c1", **values) -> None:
    """Put a case in a state directly, to test the moves out of it."""
    with sessions() as session:
        session.execute(update(Case).where(Case.case_id == case_id).values(state=target.value, **values))
        session.commit()


def test_the_transition_table_is_the_lifecycle():
    assert ledger.allowed(None, W) and ledger.allowed(W, R) and ledger.allowed(R, Q) and ledger.allowed(Q, RUN)
    assert ledger.allowed(RUN, D) and ledger.allowed(RUN, R) and ledger.allowed(RUN, F)
    assert not any(ledger.allowed(D, target) for target in CaseState)  # a done case never moves again
    # a failed case only goes back to waiting (`retry`, or a late referenced instance)
    assert [target for target in CaseState if ledger.allowed(F, target)] == [W]
    assert not ledger.allowed(W, D) and not ledger.allowed(W, Q) and not ledger.allowed(Q, D)


def test_a_case_walks_from_waiting_to_done_once(sessions):
    assert new_case(sessions) and state(sessions) == "waiting"
    assert not new_case(sessions)  # the same structure set again: one case
    assert ledger.mark_ready_if_complete(sessions, "c1") and state(sessions) == "ready"
    assert not ledger.mark_ready_if_complete(sessions, "c1")  # two associations completing it: one move
    assert ledger.mark_queued(sessions, "c1") and not ledger.mark_queued(sessions, "c1")
    started = ledger.start(sessions, "c1")
    assert started.state == "running" and started.attempts == 1 and started.heartbeat_at is not None
    results = [RoiResult(case_id="c1", roi_number=1, name="Rectum", verdict="accept", volume_ml=50, screens=[],
                         warnings=[])]
    outbox = OutboxItem(case_id="c1", sr_path="sr.dcm", sr_sop_instance_uid="9", destination="D@h:1")
    assert ledger.finish(sessions, "c1", results, outbox, sr_path="sr.dcm", model_sha256="ab" * 32)
    assert state(sessions) == "done" and outbox.id is not None
    # a redelivered message after the first attempt finished: nothing started, nothing recorded twice
    assert ledger.start(sessions, "c1") is None
    assert not ledger.finish(sessions, "c1", [RoiResult(case_id="c1", roi_number=1, name="Rectum", verdict="accept",
                                                        volume_ml=50, screens=[], warnings=[])],
                             OutboxItem(case_id="c1", sr_path="sr.dcm", sr_sop_instance_uid="9", destination="D@h:1"))
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(RoiResult)) == 1
        assert session.scalar(select(func.count()).select_from(OutboxItem)) == 1
        assert session.get(Case, "c1").model_sha256 == "ab" * 32


def test_a_case_is_not_ready_while_a_referenced_image_is_missing(sessions):
    new_case(sessions, references=("1.10", "1.11"))
    assert not ledger.mark_ready_if_complete(sessions, "c1") and state(sessions) == "waiting"
    with sessions() as session:
        assert ledger.missing_references(session, "c1") == ["1.11"]


@pytest.mark.parametrize("source", [W, R, Q, RUN])
def test_every_unfinished_state_may_fail_and_a_finished_one_may_not(sessions, source):
    new_case(sessions)
    force(sessions, source)
    assert ledger.fail(sessions, "c1", "why") and state(sessions) == "failed"
    assert not ledger.fail(sessions, "c1", "again")
    force(sessions, D)
    assert not ledger.fail(sessions, "c1", "late") and state(sessions) == "done"


def test_a_failed_case_reopens_to_waiting_and_forgets_why_it_failed(sessions):
    new_case(sessions, references=("1.10", "1.11"))
    assert ledger.fail(sessions, "c1", "unreadable series") and state(sessions) == "failed"
    with sessions() as session:
        assert session.get(Case, "c1").finished_at is not None
    assert ledger.failed_cases_awaiting(sessions, "1.11") == ["c1"] and ledger.failed_cases_awaiting(sessions, "9") == []
    assert ledger.reopen(sessions, "c1") and state(sessions) == "waiting"
    assert not ledger.reopen(sessions, "c1")  # only a failed case reopens
    with sessions() as session:
        case = session.get(Case, "c1")
        assert case.reason is None and case.finished_at is None and not case.partial
    assert ledger.failed_cases_awaiting(sessions, "1.11") == []


@pytest.mark.parametrize("source,target", [(W, Q), (W, D), (Q, D), (R, D), (D, R), (D, W), (F, R), (F, RUN)])
def test_forbidden_moves_are_refused(sessions, source, target):
    new_case(sessions)
    force(sessions, source)
    with sessions() as session:
        if ledger.allowed(source, target):
            pytest.fail("the table allows it")
        with pytest.raises(ledger.TransitionError):
            ledger._move(session, "c1", target, {source})
        assert not ledger._move(session, "c1", target)  # the default sources never include it
        session.commit()
    assert state(sessions) == source.value


def test_a_waiting_case_past_the_stable_age_becomes_ready_partial(sessions):
    new_case(sessions, references=("1.10", "1.11"))
    assert ledger.ready_stale_waiting(sessions, 120) == []
    assert ledger.ready_stale_waiting(sessions, 120, now=utcnow() + timedelta(seconds=121)) == ["c1"]
    with sessions() as session:
        assert session.get(Case, "c1").partial


def test_a_crash_between_start_and_finish_is_released_once_the_heartbeat_stops(sessions):
    new_case(sessions)
    ledger.mark_ready_if_complete(sessions, "c1")
    ledger.mark_queued(sessions, "c1")
    ledger.start(sessions, "c1")  # then the worker dies: no finish, no more heartbeats
    assert ledger.release_lost(sessions, 10, 780, heartbeat_lease_s=15) == []  # it just beat
    assert ledger.heartbeat(sessions, "c1")
    force(sessions, RUN, heartbeat_at=utcnow() - timedelta(seconds=16))
    assert ledger.release_lost(sessions, 10, 780, heartbeat_lease_s=15) == ["c1"] and state(sessions) == "ready"
    restarted = ledger.start(sessions, "c1")
    assert restarted.attempts == 2


def test_a_queued_case_whose_message_the_broker_lost_is_released(sessions):
    new_case(sessions)
    force(sessions, Q, dispatched_at=utcnow() - timedelta(seconds=30))
    assert ledger.release_lost(sessions, 10, 780, 15, held={"c1"}) == []
    assert ledger.release_lost(sessions, 10, 780, 15, held=set()) == ["c1"]
    force(sessions, Q, dispatched_at=utcnow() - timedelta(seconds=781))  # past the lease, whatever the broker says
    assert ledger.release_lost(sessions, 10, 780, 15) == ["c1"]


def test_a_structure_set_without_one_image_series_opens_failed(sessions):
    assert new_case(sessions, failure="references no image series")
    assert state(sessions) == "failed"
    with sessions() as session:
        assert [c.reason for c in ledger.recent_failures(session)] == ["references no image series"]


def test_an_outbox_row_is_claimed_once_and_dead_lettered_for_an_admin(sessions):
    new_case(sessions)
    with sessions() as session:
        session.add(OutboxItem(id=1, case_id="c1", sr_path="sr.dcm", sr_sop_instance_uid="9", destination="D@h:1"))
        session.commit()
    assert ledger.claim_outbox(sessions, 1, 120).attempts == 1
    assert ledger.claim_outbox(sessions, 1, 120) is None  # another worker: not twice
    assert ledger.outbox_failed(sessions, 1, "refused", retry_in_s=None).state == "dead"
    with sessions() as session:
        assert [d.id for d in ledger.dead_letters(session)] == [1] and ledger.export_failures(session) == 1
    assert ledger.requeue_dead(sessions) == 1 and ledger.due_outbox(sessions, 120) == [1]
    ledger.claim_outbox(sessions, 1, 120)
    assert ledger.outbox_sent(sessions, 1).state == "sent"
    assert ledger.outbox_sent(sessions, 1).sent_at is not None and ledger.due_outbox(sessions, 120) == []


def test_of_two_workers_claiming_one_case_at_once_exactly_one_wins(sessions, database_url):
    """Each worker with its own engine, as on two machines; repeated, as a race is not decided once."""
    import threading

    for n in range(10):
        case_id = f"race{n}"
        new_case(sessions, case_id)
        force(sessions, CaseState.QUEUED, case_id)
        workers = [open_database(database_url) for _ in range(2)]
        started: list = []
        barrier = threading.Barrier(2)

        def claim(worker_sessions):
            barrier.wait()
            started.append(ledger.start(worker_sessions, case_id))

        threads = [threading.Thread(target=claim, args=(w,)) for w in workers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sum(case is not None for case in started) == 1, started
        assert state(sessions, case_id) == "running"
