"""A small progress bar on stderr for the training stages (no dependency)."""
from __future__ import annotations

import sys
import time
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")


def progress(items: Iterable[T], total: int, stage: str, *, enabled: bool = True) -> Iterator[T]:
    """Yield `items`, drawing `stage [#####.....] i/total  elapsed` on stderr as it goes.

    Redraws at most ten times a second and always on the last item; nothing is drawn when
    `enabled` is false (tests, or output that is not a terminal when the caller says so).
    """
    start = last = time.monotonic()
    done = 0
    for item in items:
        yield item
        done += 1
        now = time.monotonic()
        if enabled and (now - last >= 0.1 or done == total):
            last = now
            filled = int(30 * done / max(total, 1))
            sys.stderr.write(f"\r{stage} [{'#' * filled}{'.' * (30 - filled)}] {done}/{total} "
                             f"{now - start:6.1f}s")
            if done == total:
                sys.stderr.write("\n")
            sys.stderr.flush()
