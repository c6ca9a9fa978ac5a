"""Cursor reads: a read streamed on a transaction's connections, free between batches.

In a transaction each shard has one connection
(:mod:`shardq.execute.transaction`), and a statement's result is received
whole there, since the transaction's next statement needs that connection.
A routed INSERT ... SELECT (:mod:`shardq.execute.feed`) reads its SELECT
while it inserts on the same shards, in the same transaction: its read runs
as a server-side cursor on each shard (``DECLARE ... CURSOR FOR``, then
``FETCH FORWARD n``), holding the connection only for one ``FETCH``, so that
an INSERT can run on it between two batches and only a batch per shard is in
memory.

PostgreSQL's cursors are insensitive: a cursor returns the rows of the
snapshot taken when it was declared, so the rows the INSERTs add, to the
table read too, are never read back, as one database's ``INSERT INTO t
SELECT ... FROM t`` does not read its own rows. A cursor lives until its
last row is read, it is closed, or the transaction ends.
"""

from __future__ import annotations

import contextlib
import itertools
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from shardq.execute.driver import read_whole

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping

    from shardq.execute.driver import Column, Row, ShardConnection, ShardPool

__all__ = ["cursor_pools"]

_NAMES = itertools.count(1)


def cursor_pools(view: Mapping[str, ShardPool]) -> dict[str, ShardPool]:
    """A transaction's ``view`` of the pools in which every statement is read by a cursor."""
    return {name: _CursorPool(pool) for name, pool in view.items()}


class _CursorPool:
    """A transaction's pool of one shard, whose connection reads through cursors."""

    def __init__(self, pool: ShardPool):
        self._pool = pool
        self.name = pool.name

    def __getattr__(self, name: str) -> Any:  # info_sql, columns_query, collation_sql, ...
        return getattr(self._pool, name)

    @property
    def max_size(self) -> int:
        return 1

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[ShardConnection]:
        async with self._pool.connection() as conn:
            yield _CursorConnection(conn, self._pool)


class _CursorConnection:
    def __init__(self, conn: ShardConnection, pool: ShardPool):
        self._conn = conn
        self._pool = pool

    async def execute(
        self, sql: str, params: object, *, fetch_size: int, stream: bool = True
    ) -> _CursorStream:
        """Declare a cursor for ``sql`` (a read) and fetch its first batch."""
        name = f"_shardq_cursor{next(_NAMES)}"
        await read_whole(
            self._conn, f"DECLARE {name} NO SCROLL CURSOR FOR {sql}", params, stream=False
        )
        result = _CursorStream(self._pool, name, fetch_size)
        await result.fetch_on(self._conn)
        return result


class _CursorStream:
    """The rows of a cursor: each :meth:`fetch` takes the connection for one ``FETCH``."""

    holds_connection = False  # the transaction's next statement may use it

    def __init__(self, pool: ShardPool, name: str, fetch_size: int):
        self._pool = pool
        self._name = name
        self._fetch_size = fetch_size
        self.description: tuple[Column, ...] | None = None
        self.rowcount = 0
        self._buffer: list[Row] = []
        self._open = True

    async def fetch_on(self, conn: ShardConnection) -> None:
        """Fetch the next batch into the buffer; close the cursor after its last row."""
        outcome = await read_whole(
            conn, f"FETCH FORWARD {self._fetch_size} FROM {self._name}", None, stream=False
        )
        if self.description is None:
            self.description = outcome.description
        self._buffer = outcome.rows
        self.rowcount += len(outcome.rows)
        if len(outcome.rows) < self._fetch_size:
            self._open = False
            await read_whole(conn, f"CLOSE {self._name}", None, stream=False)

    async def fetch(self) -> list[Row]:
        if not self._buffer and self._open:
            async with self._pool.connection() as conn:
                await self.fetch_on(conn)
        rows, self._buffer = self._buffer, []
        return rows

    async def aclose(self) -> None:
        self._buffer = []
        if self._open:
            self._open = False
            # After a failure the transaction is aborted and rolls back, cursor and all.
            with contextlib.suppress(Exception):
                async with self._pool.connection() as conn:
                    await read_whole(conn, f"CLOSE {self._name}", None, stream=False)
