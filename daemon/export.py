"""Deliver SRs from the outbox by C-STORE: retries with capped exponential backoff, no retry of
permanent refusals, dead letters for admins, and nothing sent again once a destination acknowledged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

import pydicom
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from sqlalchemy import or_, select, update
from sqlalchemy.orm import sessionmaker

from .config import Destination, ExportSettings
from .db import OutboxItem, OutboxState, utcnow

log = logging.getLogger(__name__)

_WARNINGS = {0xB000, 0xB006, 0xB007}  # coercion / elements discarded: stored all the same


@dataclass(frozen=True)
class SendResult:
    ok: bool
    permanent: bool = False  # retrying cannot help
    detail: str = ""


def send_file(path: str, destination: Destination, calling_ae: str, timeout: float) -> SendResult:
    """One C-STORE association to ``destination``; classifies the outcome for the retry policy."""
    try:
        dataset = pydicom.dcmread(path)
    except (OSError, ValueError) as error:
        return SendResult(False, permanent=True, detail=f"SR file unreadable: {error}")
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    syntaxes = list(dict.fromkeys([dataset.file_meta.TransferSyntaxUID, ExplicitVRLittleEndian,
                                   ImplicitVRLittleEndian]))
    ae.add_requested_context(dataset.SOPClassUID, syntaxes)
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
    if assoc.is_rejected:
        primitive = assoc.acceptor.primitive
        permanent = primitive is not None and primitive.result == 0x01
        reason = primitive.reason_str if primitive is not None else "unknown reason"
        return SendResult(False, permanent=permanent,
                          detail=f"association rejected ({'permanent' if permanent else 'transient'}): {reason}")
    if not assoc.is_established:
        return SendResult(False, detail="no association (destination unreachable or aborted)")
    try:
        status = assoc.send_c_store(dataset)
    finally:
        if assoc.is_established:
            assoc.release()
    code = int(status.Status) if status and "Status" in status else None
    if code is None:
        return SendResult(False, detail="no C-STORE response (aborted or timed out)")
    if code == 0x0000 or code in _WARNINGS:
        return SendResult(True, detail=f"status 0x{code:04X}")
    # out of resources is worth another try; every other failure will fail again
    return SendResult(False, permanent=(code & 0xFF00) != 0xA700, detail=f"C-STORE status 0x{code:04X}")


def _is_due(now: datetime, lease_s: float):
    """Pending and due, or being sent by a worker whose lease has run out (it vanished mid-way)."""
    return or_((OutboxItem.state == OutboxState.PENDING.value) & (OutboxItem.next_attempt_at <= now),
               (OutboxItem.state == OutboxState.SENDING.value)
               & (OutboxItem.claimed_at < now - timedelta(seconds=lease_s)))


def claim(sessions: sessionmaker, outbox_id: int, lease_s: float) -> OutboxItem | None:
    """Take an outbox item for sending, once: pending and due, or a sending lease that has run out."""
    now = utcnow()
    with sessions() as session:
        moved = session.execute(
            update(OutboxItem).where(OutboxItem.id == outbox_id, _is_due(now, lease_s))
            .values(state=OutboxState.SENDING.value, claimed_at=now, attempts=OutboxItem.attempts + 1)).rowcount
        session.commit()
        return session.get(OutboxItem, outbox_id) if moved else None


def deliver(settings: ExportSettings, sessions: sessionmaker, outbox_id: int) -> str:
    """Try one outbox item; returns its state afterwards (or ``skipped`` when it was not due)."""
    item = claim(sessions, outbox_id, settings.sending_lease_s)
    if item is None:
        return "skipped"
    result = send_file(item.sr_path, Destination.parse(item.destination), settings.calling_ae_title,
                       settings.timeout_s)
    with sessions() as session:
        row = session.get(OutboxItem, outbox_id)
        if result.ok:
            row.state, row.sent_at, row.last_error = OutboxState.SENT.value, utcnow(), None
            log.info("SR %s of case %s delivered to %s", row.sr_sop_instance_uid, row.case_id, row.destination,
                     extra={"case_id": row.case_id})
        else:
            row.failures += 1
            row.last_error = result.detail
            if result.permanent or row.attempts >= settings.max_attempts:
                row.state = OutboxState.DEAD.value
                log.error("SR of case %s to %s dead-lettered after %d attempts: %s", row.case_id, row.destination,
                          row.attempts, result.detail, extra={"case_id": row.case_id})
            else:
                delay = settings.delay_after(row.attempts)
                row.state, row.next_attempt_at = OutboxState.PENDING.value, utcnow() + timedelta(seconds=delay)
                log.warning("SR of case %s to %s failed (attempt %d, next in %.0f s): %s", row.case_id,
                            row.destination, row.attempts, delay, result.detail, extra={"case_id": row.case_id})
        session.commit()
        return row.state


def due_items(sessions: sessionmaker, lease_s: float) -> list[int]:
    """Outbox items to (re)try now, including sends whose worker vanished mid-way."""
    with sessions() as session:
        return list(session.scalars(select(OutboxItem.id).where(_is_due(utcnow(), lease_s))))


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
