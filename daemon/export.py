"""Deliver SRs from the outbox by C-STORE: retries with capped exponential backoff, no retry of
permanent refusals, dead letters for admins, and nothing sent again once a destination acknowledged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pydicom
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.status import STATUS_SUCCESS, STATUS_WARNING, STORAGE_SERVICE_CLASS_STATUS, code_to_category
from sqlalchemy.orm import sessionmaker

from . import ledger
from .config import Destination, ExportSettings

log = logging.getLogger(__name__)

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
    category = code_to_category(code)
    if category in (STATUS_SUCCESS, STATUS_WARNING):  # a warning (coercion, elements discarded) is stored
        return SendResult(True, detail=f"status 0x{code:04X} ({category})")
    meaning = STORAGE_SERVICE_CLASS_STATUS.get(code, (category, "unknown status"))[1]
    # out of resources (0xA7xx, PS3.4 B.2.3) is worth another try; every other failure will fail again
    return SendResult(False, permanent=(code & 0xFF00) != 0xA700, detail=f"C-STORE status 0x{code:04X}: {meaning}")


def deliver(settings: ExportSettings, sessions: sessionmaker, outbox_id: int) -> str:
    """Try one outbox item; returns its state afterwards (or ``skipped`` when it was not due)."""
    item = ledger.claim_outbox(sessions, outbox_id, settings.sending_lease_s)
    if item is None:
        return "skipped"
    result = send_file(item.sr_path, Destination.parse(item.destination), settings.calling_ae_title,
                       settings.timeout_s)
    if result.ok:
        row = ledger.outbox_sent(sessions, outbox_id)
        log.info("SR %s of case %s delivered to %s", row.sr_sop_instance_uid, row.case_id, row.destination,
                 extra={"case_id": row.case_id})
        return row.state
    if result.permanent or item.attempts >= settings.max_attempts:
        row = ledger.outbox_failed(sessions, outbox_id, result.detail, retry_in_s=None)
        log.error("SR of case %s to %s dead-lettered after %d attempts: %s", row.case_id, row.destination,
                  row.attempts, result.detail, extra={"case_id": row.case_id})
    else:
        delay = settings.delay_after(item.attempts)
        row = ledger.outbox_failed(sessions, outbox_id, result.detail, retry_in_s=delay)
        log.warning("SR of case %s to %s failed (attempt %d, next in %.0f s): %s", row.case_id,
                    row.destination, row.attempts, delay, result.detail, extra={"case_id": row.case_id})
    return row.state
