"""Concatenation: every source's rows, one source after the other."""

from __future__ import annotations

from shardq.merge import Fetch, Merger

__all__ = ["concat"]


def concat(sources: int) -> Merger:
    """Emit each source's batches in source order.

    >>> from shardq.merge.drive import drive_sync
    >>> drive_sync(concat(2), [[[(1,), (2,)], [(3,)]], [[(4,)]]])
    [(1,), (2,), (3,), (4,)]
    """
    for source in range(sources):
        while True:
            batch = yield Fetch(source)
            if not batch:
                break
            yield batch
