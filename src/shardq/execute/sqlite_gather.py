"""Running a gathered read on SQLite shards (see :mod:`shardq.execute.gather`).

The same steps as on PostgreSQL, with what SQLite has:

- **Estimate**: SQLite keeps no row estimates, so each shard counts its rows
  of each pushdown (``SELECT count(*) FROM (pushdown)``): exact, and quick on
  the data an embedded shard holds. ``max_gather_rows`` refuses on it before
  anything moves.
- **Fill**: on one connection of the chosen shard, inside ``BEGIN``, each
  gathered table becomes ``CREATE TEMP TABLE name (column affinity COLLATE
  c, ...)``, declared from the catalog: every column with its declared type's
  affinity (``INTEGER``, ``TEXT``, ``REAL``, ``NUMERIC``, or none) and its
  collation. A value the real table holds went through that affinity when it
  was stored, and going through it again leaves it as it is, so the rows keep
  their storage classes (a text ``'abc'`` in an ``INTEGER`` column stays text,
  an integer in a ``REAL`` column a real) and compare, group and sort as in
  the real table. The shard's own rows are copied by ``INSERT INTO temp.name
  SELECT ... FROM main.name`` (they never leave SQLite); every other shard's
  arrive as Python values from its pushdown, a few batches read ahead per
  shard, inserted with ``executemany`` (as sqlite3 returns them, the
  storage class they had: int, float, str, bytes or None).
- **End**: ``ROLLBACK`` drops the temporary tables created in the
  transaction; ``DROP TABLE IF EXISTS`` then makes sure of it (a PEP 249
  connection handed to ``from_connections`` that opens its transactions
  itself would have created them outside one). A connection that cannot do
  both is closed, and its temporary tables go with it.

The declared types themselves are not copied, only their affinities: they
decide nothing else in a query, and a type name is written into the
statement only as one of five words.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

from sqlglot import exp

from shardq.errors import ShardError
from shardq.execute.deadline import bounded
from shardq.execute.driver import CopyRejected, read_whole
from shardq.execute.gather import ROLLBACK_TIMEOUT, GatherPool
from shardq.execute.tasks import first_failure
from shardq.sql.catalog import sqlite_columns
from shardq.sql.dialects import sqlite_affinity

if TYPE_CHECKING:
    from collections.abc import Sequence

    from shardq.execute.driver import Row, ShardConnection, ShardPool
    from shardq.sql.catalog import ColumnInfo
    from shardq.sql.gather import GatheredTable

__all__ = ["SQLiteGatherPool", "declaration"]

log = logging.getLogger("shardq.gather")

# Rows per batch read from a source shard and inserted into the chosen one, and
# batches read ahead per source shard.
_BATCH = 2_000
_AHEAD = 4


def declaration(column: ColumnInfo) -> str:
    """A column of the temporary table: its name, its affinity, its collation.

    >>> from shardq.sql.catalog import ColumnInfo
    >>> declaration(ColumnInfo("Name", "VARCHAR(20)", "nocase"))
    '"Name" TEXT COLLATE "nocase"'
    >>> declaration(ColumnInfo("mixed", "", "binary")), declaration(ColumnInfo("n", "DECIMAL"))
    ('"mixed"', '"n" NUMERIC')
    """
    parts = [exp.to_identifier(column.name, quoted=True).sql("sqlite")]
    affinity = sqlite_affinity(column.type)
    if affinity != "BLOB":  # none declared: no affinity ("BLOB" is SQLite's name for it)
        parts.append(affinity)
    if column.collation != "binary":
        parts.append("COLLATE " + exp.to_identifier(column.collation, quoted=True).sql("sqlite"))
    return " ".join(parts)


async def _count(pool: ShardPool, tables: Sequence[GatheredTable]) -> list[int]:
    counts = []
    async with pool.connection() as conn:
        for table in tables:
            outcome = await read_whole(conn, f"SELECT count(*) FROM ({table.select})", None)
            counts.append(int(outcome.rows[0][0]))
    return counts


async def _read_out(pool: ShardPool, sql: str, queue: asyncio.Queue[list[Row] | None]) -> None:
    """Run the pushdown ``sql`` on ``pool``'s shard, its rows into ``queue`` by batches."""
    async with pool.connection() as conn:
        result = await conn.execute(sql, None, fetch_size=_BATCH)
        try:
            while batch := await result.fetch():
                await queue.put(batch)
        finally:
            await result.aclose()
    await queue.put(None)


class SQLiteGatherPool(GatherPool):
    """:class:`~shardq.execute.gather.GatherPool` on a SQLite shard (see the module docstring)."""

    @staticmethod
    async def estimate(pool: ShardPool, tables: Sequence[GatheredTable]) -> list[int]:
        """The rows of each of ``tables`` that ``pool``'s shard holds: counted."""
        return await _count(pool, tables)

    def _check(self, conn: ShardConnection) -> None:
        # Rows arrive by insert_many, which every threaded connection has.
        return

    async def _session(self, conn: ShardConnection) -> None:
        # Nothing to set: temporary tables live in the process's memory.
        return

    async def _begun(self, conn: ShardConnection) -> None:
        # Nothing to set: a cancelled statement is interrupted in the process.
        return

    async def _filled(self, conn: ShardConnection) -> None:
        # Nothing to note: the connection's temporary storage goes with its tables.
        return

    async def _declared(self, conn: ShardConnection, table: GatheredTable) -> Sequence[ColumnInfo]:
        """The columns of ``table``'s temporary table: the catalog's, or the shard's own."""
        if table.declared:
            return table.declared
        name = exp.to_table(table.name, dialect="sqlite").name
        sql, params = self._pool.columns_query(name)
        outcome = await read_whole(conn, sql, params)
        return sqlite_columns(outcome.rows)

    async def _fill(self, conn: ShardConnection, table: GatheredTable) -> None:
        """Declare ``table``'s temporary table, copy the shard's own rows, insert the others'."""
        columns = await self._declared(conn, table)
        listed = ", ".join(declaration(c) for c in columns)
        await read_whole(conn, f"CREATE TEMP TABLE {table.name} ({listed})", None, stream=False)
        into = f"INSERT INTO temp.{table.name}"
        own = await read_whole(conn, f"{into} {table.local}", None, stream=False)
        self.local[table.name] = max(own.rowcount, 0)
        insert = f"{into} VALUES ({', '.join('?' * len(columns))})"
        insert_many: Any = conn.insert_many  # type: ignore[attr-defined]
        queues: list[asyncio.Queue[list[Row] | None]] = [
            asyncio.Queue(_AHEAD) for _ in self._sources
        ]
        moved = 0
        with first_failure():
            async with asyncio.TaskGroup() as group:
                for pool, queue in zip(self._sources.values(), queues, strict=True):
                    group.create_task(_read_out(pool, table.select, queue))
                for queue in queues:  # one shard at a time into the target; the others read ahead
                    while (batch := await queue.get()) is not None:
                        try:
                            moved += await insert_many(insert, batch)
                        except CopyRejected as exc:
                            raise exc.error from exc.error.__cause__
        self.moved[table.name] = moved

    async def _end(self, conn: ShardConnection) -> None:
        """ROLLBACK, then drop what may be left; a connection that cannot is closed.

        Also when cancelled on the way: the pool would otherwise lend it again
        inside the transaction (it does not lend a connection of its own left
        in one either: see ``ThreadedConnection.usable``).
        """
        ended = False
        try:
            async with bounded(time.monotonic() + ROLLBACK_TIMEOUT, ROLLBACK_TIMEOUT):
                try:
                    await read_whole(conn, "ROLLBACK", None, stream=False)
                except ShardError as exc:
                    # SQLite rolls a transaction back itself when a statement in it
                    # is interrupted (a timeout, a cancel) or runs out of memory.
                    if "no transaction is active" not in str(exc):
                        raise
                for table in self._gather.tables:
                    await read_whole(
                        conn, f"DROP TABLE IF EXISTS temp.{table.name}", None, stream=False
                    )
            ended = True
        except Exception as exc:
            log.info(
                "shard %s: ending a gather failed (%s); the connection is closed",
                self.name,
                type(exc).__name__,
                extra={"shard": self.name},
            )
        finally:
            if not ended:
                close: Any = getattr(conn, "close", None)
                if close is not None:
                    with contextlib.suppress(Exception):
                        await close()
