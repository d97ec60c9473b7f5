"""The Storage SCP: accepts images and structure sets, stores each durably before answering Success.

Wiring only, after pynetdicom's own storescp: what the handlers need is bound as handler
arguments; a handler logs and answers a DICOM status, it never raises.
"""

from __future__ import annotations

import logging
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pynetdicom import AE, _config, evt
from pynetdicom.sop_class import (
    CTImageStorage, EnhancedCTImageStorage, EnhancedMRImageStorage, MRImageStorage, RTStructureSetStorage,
    SegmentationStorage, Verification)
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian,
    JPEG2000, JPEG2000Lossless, JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLosslessSV1, JPEGLSLossless,
    JPEGLSNearLossless, RLELossless)
from sqlalchemy.exc import OperationalError

from contourqa.qa_models.errors import InputError

from .assembler import Assembler
from .config import ScpSettings
from .db import short_reason
from .metrics import Metrics
from .store import OUT_OF_RESOURCES, Store, StoreError

log = logging.getLogger(__name__)

STORAGE_CLASSES = [MRImageStorage, EnhancedMRImageStorage, CTImageStorage, EnhancedCTImageStorage,
                   RTStructureSetStorage, SegmentationStorage]
TRANSFER_SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian,
                     ExplicitVRBigEndian, JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLosslessSV1, JPEGLSLossless,
                     JPEGLSNearLossless, JPEG2000Lossless, JPEG2000, RLELossless]

REJECT_PERMANENT, SOURCE_SERVICE_USER, CALLING_AE_NOT_RECOGNISED = 0x01, 0x01, 0x03


@dataclass
class Ingest:
    """What the C-STORE handler needs, bound as a handler argument."""

    store: Store
    assembler: Assembler
    metrics: Metrics


def caller_allowed(settings: ScpSettings, ae_title: str, address: str) -> bool:
    if settings.allowed_callers is None:
        return True
    return any(c.ae_title == ae_title.strip() and (not c.hosts or address in c.hosts)
               for c in settings.allowed_callers)


def handle_requested(event: evt.Event, settings: ScpSettings, metrics: Metrics) -> None:
    """Reject callers outside the allow-list: permanent, service user, calling AE title not recognised."""
    requestor = event.assoc.requestor
    ae_title = requestor.primitive.calling_ae_title if requestor.primitive else requestor.ae_title
    if not caller_allowed(settings, ae_title, requestor.address):
        log.warning("association from %s at %s rejected: calling AE title not allowed", ae_title, requestor.address)
        metrics.associations.labels(outcome="rejected").inc()
        event.assoc.acse.send_reject(REJECT_PERMANENT, SOURCE_SERVICE_USER, CALLING_AE_NOT_RECOGNISED)
        event.assoc.kill()  # waits until the reject PDU is on the wire, as pynetdicom's own rejections do
        return
    metrics.associations.labels(outcome="accepted").inc()


def handle_store(event: evt.Event, ingest: Ingest) -> int:
    """Store, index, then let the assembler react; only then answer Success."""
    calling_ae = event.assoc.requestor.ae_title.strip()
    uid = str(event.request.AffectedSOPInstanceUID)
    try:
        stored, header = ingest.store.ingest(Path(event.dataset_path), calling_ae, expected_uid=uid,
                                             move=True)
    except StoreError as error:
        log.warning("instance %s from %s refused (0x%04X): %s", uid, calling_ae, error.status, error)
        ingest.metrics.instances.labels(outcome="refused").inc()
        return error.status
    except OperationalError as error:  # the database is away: the sender must try again later
        log.error("instance %s from %s refused (0xA700): database unavailable (%s)", uid, calling_ae,
                  short_reason(error))
        ingest.metrics.instances.labels(outcome="refused").inc()
        return OUT_OF_RESOURCES
    except Exception:  # the store's disk or database failed otherwise: the sender must try again later
        log.exception("instance %s from %s could not be stored", uid, calling_ae)
        ingest.metrics.instances.labels(outcome="refused").inc()
        return OUT_OF_RESOURCES
    ingest.metrics.instances.labels(outcome="duplicate" if stored.duplicate else "stored").inc()
    if not stored.duplicate:
        try:
            ingest.assembler.on_stored(stored.instance, header)
        except Exception:  # stored and indexed; the scheduler's sweep opens the case later
            log.exception("instance %s stored; case assembly deferred to the sweep", uid)
    return 0x0000


def build_ae(settings: ScpSettings, ingest: Ingest) -> tuple[AE, list]:
    """The application entity and its handlers, not yet listening."""
    _config.STORE_RECV_CHUNKED_DATASET = True  # large instances go to disk, never whole into memory
    ae = AE(ae_title=settings.ae_title)
    ae.maximum_associations = settings.max_associations
    ae.maximum_pdu_size = settings.max_pdu
    ae.network_timeout = ae.acse_timeout = ae.dimse_timeout = settings.network_timeout_s
    ae.add_supported_context(Verification)
    for sop_class in STORAGE_CLASSES:
        ae.add_supported_context(sop_class, TRANSFER_SYNTAXES)
    handlers = [(evt.EVT_REQUESTED, handle_requested, [settings, ingest.metrics]),
                (evt.EVT_C_STORE, handle_store, [ingest])]
    return ae, handlers


def tls_context(settings: ScpSettings) -> ssl.SSLContext | None:
    if settings.tls is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(settings.tls.certificate, settings.tls.key)
    if settings.tls.ca is not None:
        context.load_verify_locations(settings.tls.ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def start_scp(settings: ScpSettings, ingest: Ingest, incoming_dir: Path):
    """Listen on the configured port in the background; returns the server for a clean shutdown."""
    incoming_dir.mkdir(parents=True, exist_ok=True)
    # pynetdicom writes each received dataset to a temporary file: keep it on the store's disk
    tempfile.tempdir = str(incoming_dir)
    ae, handlers = build_ae(settings, ingest)
    try:
        server = ae.start_server((settings.host, settings.port), block=False, evt_handlers=handlers,
                                 ssl_context=tls_context(settings))
    except OSError as error:
        raise InputError(f"cannot listen on {settings.host}:{settings.port}: {error.strerror or error}") from None
    log.info("SCP %s listening on %s:%d%s", settings.ae_title, settings.host, server.server_address[1],
             " (TLS)" if settings.tls else "")
    return server
