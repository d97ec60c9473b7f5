"""Exclusive locks on a home's folders, held for a process's life: what must run once per home (one SCP
clearing its incoming folder, one embedded Redis on its append-only file) refuses a second copy."""

from __future__ import annotations

import fcntl
from pathlib import Path
from typing import IO

from contourqa.qa_models.errors import ContourQAError


def hold_lock(path: Path, refusal: str) -> IO:
    """Lock ``path`` (created if missing) for as long as the returned file stays open; the lock goes with
    the process, however it ends. Raises ``ContourQAError(refusal)`` when another process holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise ContourQAError(refusal) from None
    return handle
