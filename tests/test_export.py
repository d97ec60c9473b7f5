"""Export from the outbox to real peers: delivered once, transient failures retried with backoff,
permanent rejections dead-lettered at once, dead letters requeued by an admin."""

from __future__ import annotations

from datetime import timedelta

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Comprehensive3DSRStorage

from contourqa.daemon.config import ExportSettings
from contourqa.daemon.db import Case, Instance, OutboxItem, open_database, utcnow
from contourqa.daemon.export import deliver
from contourqa.daemon.ledger import due_outbox, requeue_dead
from contourqa.qa_models.assessment import assess_files
from contourqa.qa_models.sr_report import write_sr
from node_harness import Destination, free_port, wait_for


@pytest.fixture(scope="module")
def sr_file(phantom, tmp_path_factory):
    case = phantom / "case001"
    return write_sr(assess_files(case / "image", case / "candidates" / "auto01.dcm"),
                    tmp_path_factory.mktemp("sr") / "sr.dcm")


def _outbox(database_url, sr_file, destination: str):
    sessions = open_database(database_url)
    with sessions() as session:
        session.add(Instance(id=1, sop_instance_uid="1.2", sop_class_uid="1.2", study_uid="1", series_uid="2",
                             path="x", sha256="0", size=0))
        session.flush()  # rows in the order the foreign keys need (PostgreSQL enforces them)
        session.add(Case(case_id="c1", structure_instance_id=1, kind="RTSTRUCT", study_uid="1"))
        session.flush()
        session.add(OutboxItem(id=1, case_id="c1", sr_path=str(sr_file), sr_sop_instance_uid="9",
                               destination=destination))
        session.commit()
    return sessions


def _item(sessions) -> OutboxItem:
    with sessions() as session:
        return session.get(OutboxItem, 1)


def test_delivered_once_to_storescp(tmp_path, database_url, sr_file):
    destination = Destination(tmp_path / "in").start()
    try:
        sessions = _outbox(database_url, sr_file, destination.address)
        assert deliver(ExportSettings(), sessions, 1) == "sent"
        assert deliver(ExportSettings(), sessions, 1) == "skipped"  # a redelivered message sends nothing
        # storescp acknowledges before its --exec-on-reception has moved the file into the folder
        assert len(wait_for(lambda: destination.received(), 10, "storescp to file the SR")) == 1
    finally:
        destination.stop()


def test_an_unreachable_destination_is_retried_with_backoff_then_dead_lettered(database_url, sr_file):
    sessions = _outbox(database_url, sr_file, f"DEST@127.0.0.1:{free_port()}")
    settings = ExportSettings(initial_delay_s=10, max_delay_s=15, max_attempts=3, timeout_s=2)
    assert deliver(settings, sessions, 1) == "pending"
    item = _item(sessions)
    assert item.failures == 1 and timedelta(seconds=9) < item.next_attempt_at - utcnow() <= timedelta(seconds=10)
    assert deliver(settings, sessions, 1) == "skipped" and due_outbox(sessions, 8) == []  # not due yet
    for _ in range(2):
        with sessions() as session:
            session.get(OutboxItem, 1).next_attempt_at = utcnow()
            session.commit()
        state = deliver(settings, sessions, 1)
    assert state == "dead" and _item(sessions).attempts == 3
    assert requeue_dead(sessions) == 1 and _item(sessions).state == "pending" and due_outbox(sessions, 8) == [1]


def test_a_permanent_association_rejection_is_not_retried(database_url, sr_file):
    ae = AE(ae_title="PICKY")
    ae.add_supported_context(Comprehensive3DSRStorage)
    ae.require_calling_aet = ["SOMEONE"]  # rejects CONTOURQA: permanent, calling AE not recognised
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False)
    try:
        sessions = _outbox(database_url, sr_file, f"PICKY@127.0.0.1:{port}")
        assert deliver(ExportSettings(), sessions, 1) == "dead"
        item = _item(sessions)
        assert item.attempts == 1 and "permanent" in item.last_error
    finally:
        server.shutdown()
