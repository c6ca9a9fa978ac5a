"""Drivers of mergers: async over live shard streams, sync over lists (a batch's results)."""

from __future__ import annotations

import decimal
from typing import TYPE_CHECKING

from shardq.errors import NotSupportedError
from shardq.merge import Fetch, Merger, Rows

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

__all__ = ["drive", "drive_sync"]


async def drive(merger: Merger, fetch: Callable[[int], Awaitable[Rows]]) -> AsyncIterator[Rows]:
    """Run ``merger``, fetching batches with ``fetch(source)``; yield the emitted batches.

    Values Python cannot compare or hash as the merge needs (a JSON document,
    an array as a group key, a numeric NaN in an ORDER BY) end the merge with
    :class:`~shardq.errors.NotSupportedError`, never with a partial answer.
    """
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
    except (TypeError, decimal.InvalidOperation) as exc:
        raise _unmergeable(exc) from exc
    finally:
        merger.close()


def _unmergeable(exc: Exception) -> NotSupportedError:
    return NotSupportedError(
        f"shardq cannot merge these values across shards ({exc}); merges compare and "
        "group built-in scalar types: cast the column, or pin the query to one shard"
    )


def drive_sync(merger: Merger, sources: list[list[Rows]]) -> Rows:
    """Run ``merger`` over in-memory sources (lists of batches); return all rows emitted.

    Values that cannot be merged raise :class:`~shardq.errors.NotSupportedError`, as in
    :func:`drive`.
    """
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
    except (TypeError, decimal.InvalidOperation) as exc:
        raise _unmergeable(exc) from exc
    finally:
        merger.close()
