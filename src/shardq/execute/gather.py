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
one, a few blocks of memory per shard at most; when the statement reads more
than one table, the temporary tables are analyzed, so that its joins are
planned on their real sizes. The session keeps them in memory
(``temp_buffers``, see :func:`_room_for_temp_tables`), and is closed rather
than given back when they outgrew PostgreSQL's default (its buffers would
stay taken). The statement then runs on
that connection as written and streams like any other; when its result is
closed (read to the end, closed early, failed, timed out, cancelled) the
transaction is rolled back, dropping the temporary tables. A ROLLBACK that
cannot finish leaves the connection out of its idle state, so its pool
closes it, and a closed session drops its temporary tables too: nothing
stays behind.

In a transaction the gather runs on a session of its own, not the
transaction's (a temporary table would make PostgreSQL refuse its PREPARE
TRANSACTION), and reads through the transaction's connections, to see its
writes: the estimates, each temporary table's columns (as the transaction
sees the table: a column it added, a table it truncated and holds locked),
every shard's rows, the chosen one's too, and the reference tables the
statement reads, from one shard.

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

from shardq.errors import ShardError, UnsupportedQueryError
from shardq.execute.deadline import GRACE_CAP, bounded
from shardq.execute.driver import CopyRejected, OneConnection, read_whole
from shardq.execute.tasks import first_failure

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping, Sequence
    from contextlib import AbstractAsyncContextManager

    from shardq.execute.driver import ShardConnection, ShardPool
    from shardq.sql.gather import Gather, GatheredTable

__all__ = ["ROLLBACK_TIMEOUT", "TEMP_BUFFERS", "GatherPool", "choose", "estimate"]

log = logging.getLogger("shardq.gather")

#: Seconds the ROLLBACK ending a gather may take before its connection is closed instead.
ROLLBACK_TIMEOUT = 5.0
#: The most memory a session's temporary tables may use before going to disk (see
#: :func:`_room_for_temp_tables`).
TEMP_BUFFERS = "256MB"
# PostgreSQL's default temp_buffers: a session whose temporary tables outgrew it
# keeps the buffers they took until it ends, so it is closed after the gather.
_DEFAULT_TEMP_BUFFERS = 8 << 20
# In a transaction, the most the gather's session waits for a lock: the
# transaction it reads for may hold it (it waits for the gather), which no
# server can see as a deadlock.
_LOCK_TIMEOUT = "2s"
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

    ``sources`` are the pools the rows come from: the other shards' or, with
    ``own=False`` (in a transaction, whose writes the gather's own session
    does not see), every shard's, the chosen one's first, through the
    transaction's connections; a reference table is then read from the first.

    ``slots`` bounds the gathers filling their tables at once (the engine's,
    as many as the smallest pool has connections): a gather holds its shard's
    connection while it waits for the other shards' (its sources), so gathers
    to different shards, more of them than a pool has connections, could each
    hold one that another waits for. A slot is taken before the connection
    and given back once the tables are filled: a result being read waits for
    nothing.
    """

    def __init__(
        self,
        pool: ShardPool,
        gather: Gather,
        sources: Mapping[str, ShardPool],
        *,
        deadline: float | None = None,
        own: bool = True,
        slots: asyncio.Semaphore | None = None,
    ):
        super().__init__(pool)
        self._gather = gather
        self._sources = dict(sources)
        self._deadline = deadline
        self._own = own
        self._slots = slots
        self._discard = False
        self.moved: dict[str, int] = {}
        self.local: dict[str, int] = {}

    def connection(self) -> AbstractAsyncContextManager[ShardConnection]:
        return self._lend()

    @contextlib.asynccontextmanager
    async def _lend(self) -> AsyncIterator[ShardConnection]:
        release = None
        if self._slots is not None:
            await self._slots.acquire()
            release = self._slots.release
        try:
            async with self._pool.connection() as conn:
                self._check(conn)
                await self._session(conn)
                await read_whole(conn, "BEGIN", None, stream=False)
                try:
                    await self._begun(conn)
                    for table in self._gather.tables:
                        await self._fill(conn, table)
                    await self._filled(conn)
                    if release is not None:
                        release()
                        release = None
                    yield conn
                finally:
                    await self._end(conn)
        finally:
            if release is not None:
                release()

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

    async def _session(self, conn: ShardConnection) -> None:
        """Set the session up before BEGIN (PostgreSQL: see :func:`_room_for_temp_tables`)."""
        await _room_for_temp_tables(self.name, conn)

    async def _begun(self, conn: ShardConnection) -> None:
        """Set the transaction up once BEGIN ran (PostgreSQL: its statement and lock timeouts)."""
        if not self._own:
            await read_whole(
                conn, f"SET LOCAL lock_timeout = '{_LOCK_TIMEOUT}'", None, stream=False
            )
        await self._statistics(conn)
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

    async def _filled(self, conn: ShardConnection) -> None:
        """Note whether the temporary tables outgrew the default buffers (PostgreSQL)."""
        outcome = await read_whole(
            conn,
            "SELECT coalesce(sum(pg_total_relation_size(oid)), 0) FROM pg_class "
            "WHERE relnamespace = pg_my_temp_schema()",
            None,
            stream=False,
        )
        self._discard = int(outcome.rows[0][0]) > _DEFAULT_TEMP_BUFFERS

    async def _end(self, conn: ShardConnection) -> None:
        """Roll the transaction back, and with it the temporary tables.

        A session whose temporary tables outgrew PostgreSQL's default buffers
        is closed: it would keep the buffers they took until it ends.
        """
        await _roll_back(self.name, conn)
        if self._discard:
            log.debug("shard %s: the gather's session is closed", self.name)
            with contextlib.suppress(Exception):
                await conn.close()  # type: ignore[attr-defined]

    async def _create(self, conn: ShardConnection, table: GatheredTable) -> int:
        """Create ``table``'s temporary table; return the rows of its own it holds then."""
        if self._own:  # with the shard's own rows, as the table's columns are
            create = f"CREATE TEMP TABLE {table.name} ON COMMIT DROP AS {table.select}"
            created = await read_whole(conn, create, None, stream=False)
            return max(created.rowcount, 0)
        # In a transaction: the columns as the transaction sees the table, asked
        # through its connection (this session could wait for its locks).
        first = next(iter(self._sources.values()))
        async with first.connection() as source:
            outcome = await read_whole(source, _COLUMNS_SQL, {"t": table.name}, stream=False)
        found: dict[str, str] = dict(outcome.rows)
        names = [c[1:-1].replace('""', '"') for c in table.columns] or list(found)
        listed = ", ".join(found[name] for name in names)
        create = f"CREATE TEMP TABLE {table.name} ({listed}) ON COMMIT DROP"
        await read_whole(conn, create, None, stream=False)
        return 0

    async def _fill(self, conn: ShardConnection, table: GatheredTable) -> None:
        """Create ``table``'s temporary table from the shard's own rows, then copy the others in."""
        sources = list(self._sources.values())
        if table.reference:  # every shard has every row
            sources = [] if self._own else sources[:1]
        self.local[table.name] = await self._create(conn, table)
        out = f"COPY ({table.select}) TO STDOUT (FORMAT BINARY)"
        into = f"COPY pg_temp.{table.name} FROM STDIN (FORMAT BINARY)"
        copy_from: Any = conn.copy_from  # type: ignore[attr-defined]
        queues: list[asyncio.Queue[bytes | None]] = [asyncio.Queue(_AHEAD) for _ in sources]
        moved = 0
        with first_failure():
            async with asyncio.TaskGroup() as group:
                for pool, queue in zip(sources, queues, strict=True):
                    group.create_task(_copy_out(pool, out, queue))
                for queue in queues:  # one COPY at a time on the target; the others read ahead
                    try:
                        moved += await copy_from(into, _drain(queue))
                    except CopyRejected as exc:
                        raise exc.error from exc.error.__cause__
        self.moved[table.name] = moved
        if self._gather.analyze:
            await read_whole(conn, f"ANALYZE pg_temp.{table.name}", None, stream=False)

    async def _statistics(self, conn: ShardConnection) -> None:
        """Make the ANALYZE of the temporary tables cheap: a sample of 3,000 rows each.

        The plan needs their sizes and rough distributions, not fine ones:
        PostgreSQL's default samples 30,000 rows a table (0.15 s for two of
        200,000 and 100,000 rows, most of what analyzing them saved).
        """
        if self._gather.analyze:
            await read_whole(conn, "SET LOCAL default_statistics_target = 10", None, stream=False)


# Each column of a table as a temporary table's declaration would name it:
# name, type with its modifiers, and its collation when not its type's.
_COLUMNS_SQL = """
SELECT a.attname,
       quote_ident(a.attname) || ' ' || format_type(a.atttypid, a.atttypmod)
       || CASE WHEN a.attcollation <> 0 AND a.attcollation <> t.typcollation
               THEN ' COLLATE ' || quote_ident(n.nspname) || '.' || quote_ident(c.collname)
               ELSE '' END
FROM pg_attribute a
JOIN pg_type t ON t.oid = a.atttypid
LEFT JOIN pg_collation c ON c.oid = a.attcollation
LEFT JOIN pg_namespace n ON n.oid = c.collnamespace
WHERE a.attrelid = %(t)s::regclass AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""


async def _room_for_temp_tables(shard: str, conn: ShardConnection) -> None:
    """Let the session keep its temporary tables in memory (``temp_buffers``).

    PostgreSQL keeps a session's temporary tables in its own buffers, 8 MB
    by default: a gathered table larger than that is written out and read
    back, and the statement over it ran 30 % slower than over the real table
    (half a million rows: 0.61 s against 0.47 s). The buffers are taken as
    the tables grow, so a larger limit costs nothing until a gather needs it
    (and a session whose tables outgrew the default is then closed, see
    :meth:`GatherPool._end`). Set for the session, outside the gather's
    transaction (whose ROLLBACK would undo it), and always to the same value:
    PostgreSQL refuses a change once a temporary table has been used in the
    session, which then keeps the limit it had (the gather runs as well,
    just slower).
    """
    try:
        await read_whole(conn, f"SET temp_buffers = '{TEMP_BUFFERS}'", None, stream=False)
    except ShardError as exc:
        if exc.sqlstate != "22023":  # invalid_parameter_value: temporary tables used before
            raise
        log.debug("shard %s: temp_buffers left as it was (%s)", shard, exc, extra={"shard": shard})


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
