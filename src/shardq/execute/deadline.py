"""Deadlines that hold whatever the network does.

A statement's ``timeout=`` bounds the whole call. When the deadline passes,
the statement is cancelled on the server, which needs the server's host to
answer twice: the cancel request (a connection of its own), then the end of
the statement on the statement's connection. A host that stopped answering
does neither, and psycopg, left to itself, waits 5 s for the cancel request
and 5 s more for the statement to end: issue 16 measured ``timeout=2``
returning after about 12 s.

So every wait that a deadline bounds is bounded twice (:func:`bounded`):

* at the deadline, the waiting task is cancelled: psycopg sends the cancel
  request and reads the statement's end, which on a healthy host takes a
  few milliseconds and leaves the connection usable;
* :func:`grace` seconds later (a share of the timeout, at most
  :data:`GRACE_CAP`), it is cancelled again: psycopg then gives up on the
  cancel and closes the connection without waiting on the network
  (``pgconn.finish()``), and its pool, finding it closed, discards it.

The caller raises :class:`~shardq.errors.QueryTimeoutError` naming the
shards, at most ``timeout + grace`` (plus the time to close) after the start.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

__all__ = [
    "CANCEL_WAIT",
    "GRACE_CAP",
    "GRACE_SHARE",
    "ROLLBACK_TIMEOUT",
    "bounded",
    "grace",
    "loop_deadlines",
]

#: The share of a statement's timeout given to cancelling it on the server.
GRACE_SHARE = 0.05
#: The most seconds given to cancelling a statement after its deadline.
GRACE_CAP = 1.0
#: Seconds a driver waits for a cancel (and the statement's end) when no
#: deadline tells it how long: closing a stream early, a failure elsewhere.
CANCEL_WAIT = GRACE_CAP
#: Seconds a shard's ROLLBACK (or ROLLBACK PREPARED) may take before it is given up.
ROLLBACK_TIMEOUT = 2.0


def grace(timeout: float | None) -> float:
    """Seconds after a deadline for cancelling on the server, before giving up on it.

    >>> grace(2.0), grace(60.0), grace(None)
    (0.1, 1.0, 1.0)
    """
    if timeout is None:
        return GRACE_CAP
    return min(timeout * GRACE_SHARE, GRACE_CAP)


def loop_deadlines(
    deadline: float | None, timeout: float | None
) -> tuple[float | None, float | None]:
    """``deadline`` (``time.monotonic()`` seconds) and the end of its grace, on the loop's clock.

    For ``asyncio.timeout_at``, nested: the outer one at the end of the
    grace, the inner one at the deadline (see the module docstring).
    """
    if deadline is None:
        return None, None
    at = asyncio.get_running_loop().time() + (deadline - time.monotonic())
    return at, at + grace(timeout)


@asynccontextmanager
async def bounded(deadline: float | None, timeout: float | None) -> AsyncIterator[None]:
    """Bound the block by ``deadline`` and its grace (:func:`loop_deadlines`): TimeoutError after.

    The block's waits on a shard are cancelled at the deadline, and again
    (closing their connections) when the grace ends; ``deadline=None`` bounds
    nothing.

    The second cancel is asked two loop turns after the grace ends, not at
    its end: a loop running late by more than the grace (a busy process, a
    long garbage collection) would otherwise run both timers in one turn,
    and two cancels asked before the task runs reach it as one. psycopg
    would then take it for the first, and wait 5 s + 5 s on a silent host
    (seen once in 1,000 randomized fault runs: ``timeout=0.5`` returning
    after 10.6 s). Two turns: the first delivers the deadline's cancel, and
    the task, cancelling on the server, waits again before the second comes.
    """
    soft, hard = loop_deadlines(deadline, timeout)
    if soft is None or hard is None:
        yield
        return
    loop = asyncio.get_running_loop()
    handles: list[asyncio.Handle] = []

    def end_of_grace() -> None:
        handles.append(loop.call_soon(last.reschedule, loop.time()))

    async with asyncio.timeout_at(None) as last, asyncio.timeout_at(soft):
        handles.append(loop.call_at(hard, end_of_grace))
        try:
            yield
        finally:
            for handle in handles:
                handle.cancel()
