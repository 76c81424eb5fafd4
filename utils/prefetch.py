"""Bounded read-ahead on a thread pool: file decoding (zlib releases the GIL) overlaps the caller's work."""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def prefetched(fn: Callable[[T], R], items: Iterable[T], workers: int | None = None,
               window: int = 16) -> Iterator[R]:
    """``fn(item)`` for every item, in order, computed ahead on a thread pool with at most ``window``
    results waiting (a bounded read-ahead: a long folder is never all in memory)."""
    workers = workers or max(1, min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
