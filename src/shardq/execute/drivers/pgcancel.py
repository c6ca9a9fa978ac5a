"""Cancelling PostgreSQL statements within a bound, and late when the bound was too short.

psycopg cancels a statement whose task is cancelled, waiting up to 5 s for
the cancel request and 5 s more for the statement's end; shardq's deadlines
cut that short (see :mod:`shardq.execute.deadline`), and psycopg then closes
the connection. Two things here keep that safe:

* :func:`stop` closes a stream left early (cancel, then read to its end)
  within :data:`~shardq.execute.deadline.CANCEL_WAIT`, or closes the
  connection: psycopg's own way has no bound on reading the end.
* :class:`LateCancels`: a connection closed while its statement may still run
  (its cancel given up at a deadline's grace, perhaps only because the host
  was slow) gets a cancel request sent in the background, bounded by
  :data:`LATE_CANCEL_TIMEOUT`: closing the socket alone does not stop a
  statement, which would otherwise run to its end on the server (a
  ``pg_sleep(30)`` for 30 s). The request is prepared when the connection
  opens (libpq 17's ``PGcancelConn``), since a closed connection cannot make
  one.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import psycopg
from psycopg import capabilities, generators, waiting

from shardq.execute.deadline import CANCEL_WAIT

__all__ = ["LATE_CANCEL_TIMEOUT", "LateCancels", "stop"]

#: Seconds a cancel request sent in the background may take.
LATE_CANCEL_TIMEOUT = 5.0
#: Seconds a pool's close waits for its late cancels before dropping them.
CLOSE_WAIT = 0.25


async def stop(conn: Any, cursor: Any) -> None:
    """Cancel a streamed statement still running, then read what it sent, in ``CANCEL_WAIT``.

    psycopg's own ``_try_cancel`` waits 5 s for the cancel request, and
    reading the rest has no bound: closing a stream on a host that stopped
    answering would hang. When the cancel cannot be delivered, or the end
    does not come, in :data:`~shardq.execute.deadline.CANCEL_WAIT` seconds,
    or this is cancelled in turn (a deadline's grace ended), the connection
    is closed without waiting on the network, and its pool discards it.
    """
    until = time.monotonic() + CANCEL_WAIT
    pgconn = conn.pgconn
    try:
        await conn.cancel_safe(timeout=CANCEL_WAIT)
        with contextlib.suppress(psycopg.Error):  # QueryCanceled: the end, as asked
            while await conn.wait(cursor._stream_fetchone_gen(first=False), timeout=_left(until)):
                pass
        with contextlib.suppress(psycopg.Error):
            await conn.wait(cursor._stream_fetchone_gen(first=False), timeout=_left(until))
    except Exception:  # CancellationTimeout, or the connection broke: closed below
        pass
    except BaseException:  # cancelled in turn: close now
        await conn.close()
        raise
    if pgconn.transaction_status == psycopg.pq.TransactionStatus.ACTIVE:
        await conn.close()  # not cancelled in time: never lent again


def _left(until: float) -> float:
    return max(until - time.monotonic(), 0.001)


class LateCancels:
    """The cancel requests of one pool's connections, sent after they were closed under it."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    @staticmethod
    def prepare(conn: psycopg.AsyncConnection[Any]) -> Any:
        """A cancel request for ``conn``'s statements, made while it is open (None: no libpq 17)."""
        if not capabilities.has_cancel_safe():
            return None
        with contextlib.suppress(Exception):
            return conn.pgconn.cancel_conn()
        return None

    def send(self, request: Any) -> None:
        """Send ``request`` (from :meth:`prepare`) in the background."""
        if request is None:
            return
        task = asyncio.ensure_future(_send(request))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Give the requests still in flight a moment, then drop them."""
        if not self._tasks:
            return
        tasks = list(self._tasks)
        _, pending = await asyncio.wait(tasks, timeout=CLOSE_WAIT)
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _send(request: Any) -> None:
    try:
        request.start()
        await waiting.wait_conn_async(generators.cancel(request), timeout=LATE_CANCEL_TIMEOUT)
    except Exception:
        pass  # the host does not answer, or the session is gone: nothing left to stop
    finally:
        with contextlib.suppress(Exception):
            request.finish()
