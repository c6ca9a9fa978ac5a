"""Drivers of mergers: async over live shard streams, sync over lists (for tests)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from shardq.merge import Fetch, Merger, Rows

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

__all__ = ["drive", "drive_sync"]


async def drive(merger: Merger, fetch: Callable[[int], Awaitable[Rows]]) -> AsyncIterator[Rows]:
    """Run ``merger``, fetching batches with ``fetch(source)``; yield the emitted batches."""
    try:
        request = next(merger)
        while True:
            if isinstance(request, Fetch):
                request = merger.send(await fetch(request.source))
            else:
                if request:
                    yield request
                request = merger.send(None)
    except StopIteration:
        return
    finally:
        merger.close()


def drive_sync(merger: Merger, sources: list[list[Rows]]) -> Rows:
    """Run ``merger`` over in-memory sources (lists of batches); return all rows emitted."""
    queues = [list(batches) for batches in sources]
    out: Rows = []
    try:
        request = next(merger)
        while True:
            if isinstance(request, Fetch):
                queue = queues[request.source]
                request = merger.send(queue.pop(0) if queue else [])
            else:
                out += request
                request = merger.send(None)
    except StopIteration:
        return out
