"""Files written all or nothing: into a temporary name beside the target, then renamed into place."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` survive power loss."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path, durable: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path``, on error it is removed.

    The temporary name keeps the target's extensions (writers such as SimpleITK and numpy choose the
    format by them) and holds the process and thread IDs, so two processes, or two threads of one (a
    scheduler's job pool writing the reports' index), writing one target never share it.
    ``durable``: fsync the file and its folder, for what has been acknowledged to a sender.
    """
    path = Path(path)
    temporary = path.with_name(f".partial-{os.getpid()}-{threading.get_native_id()}-{path.name}")
    try:
        yield temporary
        if durable:
            with open(temporary, "rb") as handle:
                os.fsync(handle.fileno())
        os.replace(temporary, path)
        if durable:
            fsync_dir(path.parent)
    finally:
        temporary.unlink(missing_ok=True)


def write_text_atomically(path: str | Path, text: str) -> Path:
    with atomic_path(path) as temporary:
        temporary.write_text(text)
    return Path(path)
