"""The database: the store's index, the assembler's cases, results per ROI, and the export outbox.

SQLite (WAL) on the embedded default, PostgreSQL when several machines share it. Every process
(SCP, workers, scheduler) opens its own engine from the same URL; nothing is passed in memory.
"""

from __future__ import annotations

import enum
import fcntl
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import (JSON, Boolean, DateTime, Float, ForeignKey, Integer, String, Text, UniqueConstraint,
                        create_engine, event, inspect, text)
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from contourqa.qa_models.errors import InputError

log = logging.getLogger(__name__)


SCHEMA_LOCK_KEY = 0x636F6E74  # "cont": the advisory lock of schema creation on PostgreSQL


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class Instance(Base):
    """One stored DICOM instance (one version of one SOP Instance UID)."""

    __tablename__ = "instances"
    __table_args__ = (UniqueConstraint("sop_instance_uid", "version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    version: Mapped[int] = mapped_column(Integer, default=1)
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    study_uid: Mapped[str] = mapped_column(String(64), index=True)
    series_uid: Mapped[str] = mapped_column(String(64), index=True)
    modality: Mapped[str] = mapped_column(String(16), default="")
    path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(Integer)
    calling_ae: Mapped[str] = mapped_column(String(16), default="")
    received_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, index=True)


class CaseState(str, enum.Enum):
    WAITING = "waiting"    # referenced images not all present yet
    READY = "ready"        # complete; not yet handed to the broker
    QUEUED = "queued"      # handed to the broker
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class Case(Base):
    """One structure set (RTSTRUCT or SEG instance version) and the image series it references."""

    __tablename__ = "cases"

    case_id: Mapped[str] = mapped_column(String(80), primary_key=True)
    structure_instance_id: Mapped[int] = mapped_column(ForeignKey("instances.id"))
    kind: Mapped[str] = mapped_column(String(16))
    study_uid: Mapped[str] = mapped_column(String(64))
    image_series_uid: Mapped[str | None] = mapped_column(String(64), index=True)
    calling_ae: Mapped[str] = mapped_column(String(16), default="")
    source_software: Mapped[str] = mapped_column(String(200), default="")
    state: Mapped[str] = mapped_column(String(16), default=CaseState.WAITING.value, index=True)
    partial: Mapped[bool] = mapped_column(default=False)  # assessed on what is present after the stable age
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    ready_at: Mapped[datetime | None] = mapped_column(DateTime)
    dispatched_at: Mapped[datetime | None] = mapped_column(DateTime)
    started_at: Mapped[datetime | None] = mapped_column(DateTime)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime)  # the running worker is alive
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    model_name: Mapped[str | None] = mapped_column(String(64))
    model_version: Mapped[str | None] = mapped_column(String(32))
    model_sha256: Mapped[str | None] = mapped_column(String(64))  # the exact weights and card that judged it
    sr_path: Mapped[str | None] = mapped_column(Text)
    timings: Mapped[dict | None] = mapped_column(JSON)
    # what the drift audits watch for input drift: scanner, field strength, spacing, intensities in the body
    image_profile: Mapped[dict | None] = mapped_column(JSON)
    # set on an approved structure set (it is not assessed): why it counts as approved, and the
    # auto-contour case it was compared with
    approval: Mapped[str | None] = mapped_column(String(200))
    approves_case_id: Mapped[str | None] = mapped_column(String(80))


class CaseReference(Base):
    """An image a case needs: an instance UID, or (no instance listed) only its series."""

    __tablename__ = "case_references"

    id: Mapped[int] = mapped_column(primary_key=True)
    case_id: Mapped[str] = mapped_column(ForeignKey("cases.case_id"), index=True)
    series_uid: Mapped[str | None] = mapped_column(String(64), index=True)
    sop_instance_uid: Mapped[str | None] = mapped_column(String(64), index=True)


class RoiResult(Base):
    __tablename__ = "roi_results"

    id: Mapped[int] = mapped_column(primary_key=True)
    case_id: Mapped[str] = mapped_column(ForeignKey("cases.case_id"), index=True)
    roi_number: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(200))
    verdict: Mapped[str] = mapped_column(String(16))
    predicted_dice: Mapped[float | None] = mapped_column(Float)
    dice_low: Mapped[float | None] = mapped_column(Float)
    dice_high: Mapped[float | None] = mapped_column(Float)
    volume_ml: Mapped[float] = mapped_column(Float)
    screens: Mapped[list] = mapped_column(JSON)
    warnings: Mapped[list] = mapped_column(JSON)
    reasons: Mapped[list | None] = mapped_column(JSON)  # why the verdict is not accept: [{"rule", "detail"}]
    # the model's domain guard: None where the model has none or made no prediction
    domain_score: Mapped[float | None] = mapped_column(Float)
    domain_inside: Mapped[bool | None] = mapped_column(Boolean)
    domain_detail: Mapped[str | None] = mapped_column(String(200))  # the score against its limit, in its own terms
    # why the model read no surface in the contour (lone voxels, noise ...), so no Dice was given; the image
    # is not judged, so such a ROI is not counted outside the domain
    unreadable: Mapped[str | None] = mapped_column(String(200))
    # when the approved version of this auto-contour came back: agreement with it
    real_dice: Mapped[float | None] = mapped_column(Float)
    hd95_mm: Mapped[float | None] = mapped_column(Float)
    approved_case_id: Mapped[str | None] = mapped_column(String(80))


class OutboxState(str, enum.Enum):
    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"
    DEAD = "dead"


class OutboxItem(Base):
    """One SR to deliver to one destination; survives restarts, delivered once."""

    __tablename__ = "outbox"
    __table_args__ = (UniqueConstraint("case_id", "destination"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    case_id: Mapped[str] = mapped_column(ForeignKey("cases.case_id"))
    sr_path: Mapped[str] = mapped_column(Text)
    sr_sop_instance_uid: Mapped[str] = mapped_column(String(64))
    destination: Mapped[str] = mapped_column(String(120))
    state: Mapped[str] = mapped_column(String(16), default=OutboxState.PENDING.value, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    claimed_at: Mapped[datetime | None] = mapped_column(DateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(DateTime)


class JobRun(Base):
    """One run of a scheduled job for one key (the daily summary: its day). The unique key is the lock:
    of two schedulers started by mistake only one inserts it, and a restarted one sees what was done."""

    __tablename__ = "job_runs"
    __table_args__ = (UniqueConstraint("job", "key"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    job: Mapped[str] = mapped_column(String(64))
    key: Mapped[str] = mapped_column(String(64))
    started_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)
    status: Mapped[str] = mapped_column(String(16), default="running")  # running, done, failed
    detail: Mapped[str | None] = mapped_column(Text)


class Audit(Base):
    """A drift audit an admin declared (`contourqa audit add`); the scheduler runs it on its cron."""

    __tablename__ = "audits"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    cron: Mapped[str] = mapped_column(String(120))
    window_days: Mapped[float] = mapped_column(Float)
    reference_days: Mapped[float] = mapped_column(Float)
    roi: Mapped[str | None] = mapped_column(String(200))
    source: Mapped[str | None] = mapped_column(String(200))
    metrics: Mapped[list] = mapped_column(JSON)
    alpha: Mapped[float] = mapped_column(Float)
    notify_email: Mapped[str | None] = mapped_column(String(200))
    notify_webhook: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class AuditRun(Base):
    """One run of an audit: its verdict and where its report is."""

    __tablename__ = "audit_runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    audit: Mapped[str] = mapped_column(String(64), index=True)
    ran_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, index=True)
    drift: Mapped[bool] = mapped_column(Boolean)
    summary: Mapped[str] = mapped_column(Text)
    report_path: Mapped[str] = mapped_column(Text)
    json_path: Mapped[str] = mapped_column(Text)


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA busy_timeout=30000")  # first: several processes share the file, even while it is made
    cursor.execute("PRAGMA journal_mode=WAL")   # readers never block the SCP's writes
    cursor.execute("PRAGMA synchronous=FULL")   # an acknowledged instance's index row survives power loss
    cursor.close()


@contextmanager
def _schema_lock(engine: Engine) -> Iterator[Connection | None]:
    """Hold the one lock under which a process creates or extends the schema, so processes starting at the
    same moment (scp, worker, scheduler on a fresh home) never race between "is it there" and "create it":
    a lock file beside an SQLite database, a transaction-scoped advisory lock on PostgreSQL (yields the
    connection that holds it)."""
    if engine.dialect.name == "sqlite":
        if engine.url.database in (None, "", ":memory:"):  # one process's own database: nothing to race
            yield None
            return
        with open(f"{engine.url.database}.schema-lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield None
        return
    with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK_KEY})
        yield connection


def _create_schema(engine: Engine) -> None:
    with _schema_lock(engine) as connection:
        bind = connection if connection is not None else engine
        Base.metadata.create_all(bind)
        _add_missing_columns(bind)


def _add_missing_columns(bind: Engine | Connection) -> None:
    """Add the nullable columns a newer release declares to tables an older one created, so an upgraded
    node keeps its home (additive changes only; anything else needs a real migration)."""
    inspector = inspect(bind)
    with (bind.begin() if isinstance(bind, Engine) else nullcontext(bind)) as connection:
        for table in Base.metadata.sorted_tables:
            present = {column["name"] for column in inspector.get_columns(table.name)}
            for column in table.columns:
                if column.name not in present and column.nullable:
                    kind = column.type.compile(connection.dialect)
                    connection.execute(text(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind}'))


_RETRY_S, _LOG_EVERY_S = 1.0, 30.0  # waiting for a database server: try every second, say so every 30 s


def open_database(url: str, create: bool = True, wait_s: float = 0) -> sessionmaker:
    """An engine and session factory for ``url``; creates the tables when missing (``create``).

    ``wait_s``: a database server that cannot be reached yet is tried again for this long (the node's
    processes may start before it); a server that answers with an error fails at once."""
    engine: Engine
    if url.startswith("sqlite"):
        path = make_url(url).database
        if path and not create and not Path(path).exists():
            raise InputError(f"no contourqa database at {path}")
        if path and create:
            Path(path).parent.mkdir(parents=True, exist_ok=True)  # whichever process starts first makes the home
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
    else:
        try:
            engine = create_engine(url, pool_pre_ping=True)
        except ModuleNotFoundError as error:
            raise InputError(f"the database driver of {make_url(url).drivername} is not installed ({error.name}); "
                             f"for PostgreSQL: pip install 'contourqa[postgresql]'") from None
    deadline, logged = time.monotonic() + wait_s, -float("inf")
    while True:
        try:
            _create_schema(engine)
            return sessionmaker(engine, expire_on_commit=False)
        except SQLAlchemyError as error:
            reason = short_reason(error)
            where = engine.url.render_as_string(hide_password=True)
            now = time.monotonic()
            if not (unreachable(error) and now < deadline):
                raise InputError(f"cannot open the database {where}: {reason}") from None
            if now - logged >= _LOG_EVERY_S:
                log.warning("database %s not reachable yet (%s); waiting up to %.0f s more", where, reason,
                            deadline - now)
                logged = now
            time.sleep(min(_RETRY_S, max(0.0, deadline - now)))


def short_reason(error: SQLAlchemyError) -> str:
    """The driver's first line (the connection error), without SQLAlchemy's background link."""
    return str(getattr(error, "orig", None) or error).splitlines()[0]


def unreachable(error: SQLAlchemyError) -> bool:
    """The database server could not be reached or dropped the connection (it may be starting, stopping or
    restarting), as opposed to one that answered with an error."""
    return isinstance(error, OperationalError) or (isinstance(error, DBAPIError) and error.connection_invalidated)
