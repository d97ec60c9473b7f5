"""Progress of long commands on stderr: tqdm's bar on a terminal, else a plain line every tenth of the
work (so a log file or a CI job shows the command is alive, without a bar redrawn thousands of times)."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")


def progress(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    total = total if total is not None else len(items)  # type: ignore[arg-type]
    if sys.stderr.isatty():
        yield from tqdm(items, desc=description, total=total, file=sys.stderr, leave=False)
        return
    step = max(1, total // 10)
    for done, item in enumerate(items, start=1):
        yield item
        if done % step == 0 or done == total:
            print(f"{description}: {done}/{total}", file=sys.stderr, flush=True)
