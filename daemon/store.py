"""The durable instance store: study/series/instance files written atomically, indexed before acknowledgement."""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from sqlalchemy import func, select
from sqlalchemy.orm import sessionmaker

from contourqa.qa_models.atomic import atomic_path, fsync_dir
from contourqa.qa_models.errors import ContourQAError

from .db import Instance

log = logging.getLogger(__name__)

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")  # also keeps every path component inside the store


class StoreError(ContourQAError):
    """An instance that cannot be stored; ``status`` is the DICOM status the SCP answers with."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


OUT_OF_RESOURCES, DATASET_MISMATCH, CANNOT_UNDERSTAND = 0xA700, 0xA900, 0xC000


@dataclass(frozen=True)
class Stored:
    instance: Instance
    duplicate: bool  # the same SOP Instance UID with identical content was already stored


def read_header(path: Path) -> Dataset:
    """The identifying attributes of a received file, or a StoreError the SCP can answer with."""
    try:
        dataset = pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError) as error:
        raise StoreError(f"unreadable instance ({type(error).__name__})", CANNOT_UNDERSTAND) from None
    keywords = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
    try:
        if not any(keyword in dataset for keyword in keywords):
            raise StoreError("no DICOM identifying attributes in the data set", CANNOT_UNDERSTAND)
    except (ValueError, TypeError, KeyError) as error:  # pydicom parses lazily: garbage fails here
        raise StoreError(f"unreadable instance ({type(error).__name__})", CANNOT_UNDERSTAND) from None
    for keyword in keywords:
        value = str(dataset.get(keyword, "") or "")
        if not _UID.match(value) or len(value) > 64:
            raise StoreError(f"missing or invalid {keyword}", DATASET_MISMATCH)
    return dataset


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def free_disk_mb(path: Path) -> float:
    usage = shutil.disk_usage(path)
    return usage.free / 2**20


def place_atomically(source: Path, destination: Path, move: bool = False) -> None:
    """Put ``source`` at ``destination`` all or nothing: fsync, rename, fsync the folder.

    ``move`` renames the file itself when it is on the same file system (the SCP's received files
    are), else it is copied through a temporary file.
    """
    destination.parent.mkdir(parents=True, exist_ok=True)
    if move:
        with open(source, "rb") as handle:
            os.fsync(handle.fileno())
        try:
            os.replace(source, destination)
            fsync_dir(destination.parent)
            return
        except OSError as error:
            if error.errno != errno.EXDEV:
                raise
    with atomic_path(destination, durable=True) as temporary:
        shutil.copyfile(source, temporary)


class Store:
    """Files under ``root/<study>/<series>/<instance>[.vN].dcm`` and their rows in the index."""

    def __init__(self, root: Path, sessions: sessionmaker, min_free_disk_mb: float = 0):
        self.root = root
        self.sessions = sessions
        self.min_free_disk_mb = min_free_disk_mb
        self._lock = threading.Lock()  # one writer decides versions; associations run in threads
        root.mkdir(parents=True, exist_ok=True)

    def check_free_disk(self) -> None:
        free = free_disk_mb(self.root)
        if free < self.min_free_disk_mb:
            raise StoreError(f"free disk {free:.0f} MB below the {self.min_free_disk_mb:.0f} MB threshold",
                             OUT_OF_RESOURCES)

    def ingest(self, source: Path, calling_ae: str = "", expected_uid: str | None = None,
               move: bool = False) -> tuple[Stored, Dataset]:
        """Store the DICOM file ``source`` (idempotently) and index it; returns the row and its header.

        ``move``: ``source`` is a received temporary file the store may take over instead of copying.
        """
        self.check_free_disk()
        header = read_header(source)
        uid = str(header.SOPInstanceUID)
        if expected_uid is not None and uid != expected_uid:
            raise StoreError("SOPInstanceUID differs from the C-STORE request's", DATASET_MISMATCH)
        digest = sha256_of(source)
        with self._lock, self.sessions() as session:
            versions = session.scalars(select(Instance).where(Instance.sop_instance_uid == uid)).all()
            for existing in versions:
                if existing.sha256 == digest:
                    return Stored(existing, duplicate=True), header
            version = 1 + max((v.version for v in versions), default=0)
            if versions:
                log.warning("instance %s received again with different content; kept as version %d", uid, version)
            name = f"{uid}.dcm" if version == 1 else f"{uid}.v{version}.dcm"
            path = self.root / str(header.StudyInstanceUID) / str(header.SeriesInstanceUID) / name
            try:
                place_atomically(source, path, move)
            except OSError as error:
                raise StoreError(f"cannot write the instance ({error.strerror or error})", OUT_OF_RESOURCES) from None
            row = Instance(
                sop_instance_uid=uid, version=version, sop_class_uid=str(header.SOPClassUID),
                study_uid=str(header.StudyInstanceUID), series_uid=str(header.SeriesInstanceUID),
                modality=str(header.get("Modality", "") or ""), path=str(path), sha256=digest,
                size=path.stat().st_size, calling_ae=calling_ae)
            session.add(row)
            try:
                session.commit()
            except Exception:
                path.unlink(missing_ok=True)  # no file without its index row
                raise
            return Stored(row, duplicate=False), header


def current_versions(sessions: sessionmaker, series_uid: str) -> list[Instance]:
    """The newest version of every stored instance of a series."""
    with sessions() as session:
        newest = (select(Instance.sop_instance_uid, func.max(Instance.version).label("version"))
                  .where(Instance.series_uid == series_uid).group_by(Instance.sop_instance_uid).subquery())
        query = select(Instance).join(newest, (Instance.sop_instance_uid == newest.c.sop_instance_uid)
                                      & (Instance.version == newest.c.version))
        return list(session.scalars(query))
