"""Running a gathered read (see :mod:`shardq.sql.gather` for what it is).

Before anything moves, every shard estimates its rows of each gathered table
(PostgreSQL: ``EXPLAIN (FORMAT JSON)`` of the pushdown, the plan's row
estimate): the read is refused when more than ``max_gather_rows`` would move,
and the shard chosen is the one holding the most rows, so that the fewest
travel.

On the chosen shard, :class:`GatherPool` lends one connection in a
transaction: each gathered table becomes ``CREATE TEMP TABLE ... ON COMMIT
DROP AS`` its pushdown over the shard's own rows (the same column types,
type modifiers and collations, and no row crosses the network), then every
other shard's rows arrive by binary COPY, streamed from a ``COPY ... TO
STDOUT`` on that shard straight into a ``COPY ... FROM STDIN`` on the chosen
one, a few blocks of memory per shard at most. The statement then runs on
that connection as written and streams like any other; when its result is
closed (read to the end, closed early, failed, timed out, cancelled) the
transaction is rolled back, dropping the temporary tables. A ROLLBACK that
cannot finish leaves the connection out of its idle state, so its pool
closes it, and a closed session drops its temporary tables too: nothing
stays behind.

That is PostgreSQL's way, this module's; SQLite shards count their rows
instead of estimating them and receive the others' rows by ``executemany``
into declared temporary tables (:mod:`shardq.execute.sqlite_gather`, whose
:class:`~shardq.execute.sqlite_gather.SQLiteGatherPool` overrides the steps
here: ``estimate``, ``_check``, ``_begun``, ``_fill`` and ``_end``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

from shardq.errors import UnsupportedQueryError
from shardq.execute.deadline import GRACE_CAP, bounded
from shardq.execute.driver import CopyRejected, OneConnection, read_whole

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping, Sequence
    from contextlib import AbstractAsyncContextManager

    from shardq.execute.driver import ShardConnection, ShardPool
    from shardq.sql.gather import Gather, GatheredTable

__all__ = ["ROLLBACK_TIMEOUT", "GatherPool", "choose", "estimate"]

log = logging.getLogger("shardq.gather")

#: Seconds the ROLLBACK ending a gather may take before its connection is closed instead.
ROLLBACK_TIMEOUT = 5.0
# Blocks of COPY data read ahead per source shard (about 128 KiB each).
_AHEAD = 4
_BLOCK = 1 << 17


async def estimate(pool: ShardPool, tables: Sequence[GatheredTable]) -> list[int]:
    """The rows of each of ``tables`` that ``pool``'s shard would send, as its planner estimates."""
    counts = []
    async with pool.connection() as conn:
        for table in tables:
            outcome = await read_whole(conn, f"EXPLAIN (FORMAT JSON) {table.select}", None)
            plan: Any = outcome.rows[0][0]
            counts.append(int(plan[0]["Plan"]["Plan Rows"]))
    return counts


def choose(estimates: Mapping[str, Sequence[int]]) -> tuple[str, int]:
    """The shard to gather to and the rows that would move to it.

    The shard holding the most of the gathered rows by the estimate: its own
    rows do not travel, so the fewest do. Ties go to the first shard.

    >>> choose({"s1": [10, 5], "s2": [30, 1], "s3": [2, 2]})
    ('s2', 19)
    """
    totals = {shard: sum(counts) for shard, counts in estimates.items()}
    target = max(totals, key=lambda shard: totals[shard])
    return target, sum(totals.values()) - totals[target]


async def _copy_out(pool: ShardPool, sql: str, queue: asyncio.Queue[bytes | None]) -> None:
    """Run ``COPY (...) TO STDOUT`` on ``pool``'s shard, its data into ``queue`` (None: the end)."""
    async with pool.connection() as conn:
        copy_to: Any = conn.copy_to  # type: ignore[attr-defined]
        async for block in copy_to(sql, _BLOCK):
            await queue.put(block)
    await queue.put(None)


async def _drain(queue: asyncio.Queue[bytes | None]) -> AsyncIterator[bytes]:
    while (block := await queue.get()) is not None:
        yield block


class GatherPool(OneConnection):
    """The chosen shard's pool as a gathered read sees it: one filled connection.

    Its connection is lent once, with the temporary tables in place (see the
    module docstring); giving it back rolls back. ``moved`` then holds the
    rows each table received from the other shards, ``local`` its own.
    """

    def __init__(
        self,
        pool: ShardPool,
        gather: Gather,
        sources: Mapping[str, ShardPool],
        *,
        deadline: float | None = None,
    ):
        super().__init__(pool)
        self._gather = gather
        self._sources = dict(sources)
        self._deadline = deadline
        self.moved: dict[str, int] = {}
        self.local: dict[str, int] = {}

    def connection(self) -> AbstractAsyncContextManager[ShardConnection]:
        return self._lend()

    @contextlib.asynccontextmanager
    async def _lend(self) -> AsyncIterator[ShardConnection]:
        async with self._pool.connection() as conn:
            self._check(conn)
            await read_whole(conn, "BEGIN", None, stream=False)
            try:
                await self._begun(conn)
                for table in self._gather.tables:
                    await self._fill(conn, table)
                yield conn
            finally:
                await self._end(conn)

    def _check(self, conn: ShardConnection) -> None:
        """Refuse before anything moves when ``conn`` cannot receive rows by COPY."""
        if not hasattr(conn, "copy_from"):
            raise UnsupportedQueryError(
                "a read gathered to one shard over PEP 249 connections",
                "no merge answers it exactly, so shardq would gather its tables' rows to one "
                "shard by COPY, which it does on its own PostgreSQL connections only; "
                "connect with a configuration (shardq.connect) to have it gathered",
            )

    @staticmethod
    async def estimate(pool: ShardPool, tables: Sequence[GatheredTable]) -> list[int]:
        """The rows of each of ``tables`` that ``pool``'s shard would send: its planner's guess."""
        return await estimate(pool, tables)

    async def _begun(self, conn: ShardConnection) -> None:
        """Set the transaction up once BEGIN ran (PostgreSQL: its statement timeout)."""
        if self._deadline is not None:
            # The server stops the transaction's statements itself at the
            # deadline (and a grace): a cancel lost on a busy host or a
            # dead client leaves nothing running.
            left = self._deadline - time.monotonic() + GRACE_CAP
            await read_whole(
                conn,
                f"SET LOCAL statement_timeout = {max(1, int(left * 1000))}",
                None,
                stream=False,
            )

    async def _end(self, conn: ShardConnection) -> None:
        """Roll the transaction back, and with it the temporary tables."""
        await _roll_back(self.name, conn)

    async def _fill(self, conn: ShardConnection, table: GatheredTable) -> None:
        """Create ``table``'s temporary table from the shard's own rows, then copy the others in."""
        created = await read_whole(
            conn,
            f"CREATE TEMP TABLE {table.name} ON COMMIT DROP AS {table.select}",
            None,
            stream=False,
        )
        self.local[table.name] = max(created.rowcount, 0)
        out = f"COPY ({table.select}) TO STDOUT (FORMAT BINARY)"
        into = f"COPY pg_temp.{table.name} FROM STDIN (FORMAT BINARY)"
        copy_from: Any = conn.copy_from  # type: ignore[attr-defined]
        queues: list[asyncio.Queue[bytes | None]] = [asyncio.Queue(_AHEAD) for _ in self._sources]
        moved = 0
        try:
            async with asyncio.TaskGroup() as group:
                for pool, queue in zip(self._sources.values(), queues, strict=True):
                    group.create_task(_copy_out(pool, out, queue))
                for queue in queues:  # one COPY at a time on the target; the others read ahead
                    try:
                        moved += await copy_from(into, _drain(queue))
                    except CopyRejected as exc:
                        raise exc.error from exc.error.__cause__
        except BaseExceptionGroup as failed:
            first: BaseException = failed
            while isinstance(first, BaseExceptionGroup):
                first = first.exceptions[0]
            raise first from first.__cause__
        self.moved[table.name] = moved


async def _roll_back(shard: str, conn: ShardConnection) -> None:
    """End the gather's transaction; a connection that cannot is left not idle, so closed."""
    try:
        async with bounded(time.monotonic() + ROLLBACK_TIMEOUT, ROLLBACK_TIMEOUT):
            await read_whole(conn, "ROLLBACK", None, stream=False)
    except Exception as exc:
        log.info(
            "shard %s: ROLLBACK after a gather failed (%s); the connection is discarded",
            shard,
            type(exc).__name__,
            extra={"shard": shard},
        )
