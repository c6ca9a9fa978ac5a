"""Blocking PEP 249 connections driven from asyncio, one thread per connection.

SQLite shards and the adapter over users' own DB-API connections share this
module. Each connection lives on its own worker thread (so thread-bound
clients such as sqlite3 are always called from the thread that opened them);
a cancelled call interrupts the statement in the database (sqlite3's
``interrupt()``, psycopg2's ``cancel()``) and waits for the thread to finish
before the connection is lent again.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, TypeVar

from shardq.errors import NotSupportedError
from shardq.execute.driver import (
    Column,
    CopyRejected,
    Outcome,
    Row,
    Statement,
    translate_error,
)
from shardq.execute.pool import LazyPool

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from shardq.dsn import Secrets
    from shardq.errors import ShardError

__all__ = ["ThreadedConnection", "ThreadedPool"]

T = TypeVar("T")


def _tuples(rows: list[Any]) -> list[Row]:
    """Rows as tuples, whatever the driver's cursor made (tuples, sqlite3.Row, dicts).

    A connection made with a dict cursor factory (psycopg2's RealDictConnection)
    yields mappings, whose ``tuple()`` would be their keys.
    """
    if not rows or type(rows[0]) is tuple:
        return rows
    if isinstance(rows[0], Mapping):
        return [tuple(r.values()) for r in rows]
    return [tuple(r) for r in rows]


def _columns(raw: Any) -> tuple[Column, ...] | None:
    """A PEP 249 ``description`` as shardq's columns."""
    return None if raw is None else tuple(Column(str(d[0]), *tuple(d[1:7])) for d in raw)


class ThreadedConnection:
    """A PEP 249 connection confined to one worker thread."""

    def __init__(
        self,
        shard: str,
        secrets: Secrets,
        opener: Callable[[], Any],
        *,
        interrupt: Callable[[Any], None] | None,
        commit_after: bool,
        owned: bool,
        buffered: bool = False,
    ):
        self.shard = shard
        self._secrets = secrets
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"shardq-{shard}"
        )
        self._interrupt = interrupt
        self._commit_after = commit_after
        self._in_transaction = False  # inside a shardq transaction (see _control)
        self._owned = owned
        self._buffered = buffered
        self._conn: Any = None
        self._opener = opener

    @property
    def usable(self) -> bool:
        """Whether the connection may be lent again (opened, and not closed or broken).

        psycopg2 says a connection closed or lost with a non-zero ``closed``
        (psycopg's sync connections with True); sqlite3's have no such
        attribute and never break, but one shardq opened is not lent again
        while sqlite3 says it is in a transaction. Reading these does not
        touch the network, so it is checked on every checkout too (see
        :mod:`shardq.execute.pool`).
        A connection shardq opened is then replaced; a user's own connection
        (``from_connections``) cannot be, and its statements fail naming the
        shard until the user gives a new one.
        """
        conn = self._conn
        if conn is None:
            return False
        if self._owned and getattr(conn, "in_transaction", False) is True:
            # Left inside a transaction (sqlite3 says so): an interrupted
            # ROLLBACK would lend its locks and temporary tables to the next
            # statement. A user's connection is the user's to end.
            return False
        closed = getattr(conn, "closed", False)
        return not (isinstance(closed, int) and closed)  # bool is an int; a method is not

    def error(self, exc: BaseException) -> ShardError:
        return translate_error(self.shard, exc, self._secrets)

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the connection's thread; a cancellation interrupts it."""
        future = asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            if self._conn is not None and self._interrupt is not None:
                with contextlib.suppress(Exception):
                    self._interrupt(self._conn)
            # Wait for the thread: the connection must be idle before it is reused.
            with contextlib.suppress(BaseException):
                await future
            raise

    def _open(self) -> None:
        if self._conn is None:
            self._conn = self._opener()

    async def open(self) -> None:
        try:
            await self.call(self._open)
        except Exception as exc:
            raise self.error(exc) from exc

    def _control(self, sql: str) -> bool:
        """Run a transaction's BEGIN, COMMIT or ROLLBACK the driver's way; whether it was one.

        A connection in autocommit mode takes them as SQL. One that is not
        (``commit_after``) opens its transactions itself: a shardq transaction
        on it only stops the commit after each statement, and ends with the
        driver's ``commit()`` or ``rollback()``.
        """
        word = sql.strip().upper()
        if word == "BEGIN" or word.startswith("BEGIN;"):
            # "BEGIN; ..." (twophase.begin_tagged): the rest runs in the transaction.
            self._in_transaction = True
            if not self._commit_after:
                return False
            rest = sql.strip()[len("BEGIN;") :].strip()
            if rest:  # its first statement opens the driver's transaction
                self._conn.cursor().execute(rest)
            return True
        if word in ("COMMIT", "ROLLBACK") or word.startswith("PREPARE TRANSACTION"):
            self._in_transaction = False
            if self._commit_after and not word.startswith("PREPARE"):
                (self._conn.commit if word == "COMMIT" else self._conn.rollback)()
                return True
        if self._commit_after and word.startswith(("COMMIT PREPARED", "ROLLBACK PREPARED")):
            # These cannot run inside the transaction block the driver would open.
            if not hasattr(self._conn, "autocommit"):
                raise NotSupportedError(
                    "this PEP 249 connection opens its own transactions and has no autocommit "
                    "mode, so it cannot finish a two-phase commit; pass it in autocommit mode"
                )
            self._conn.autocommit = True
            try:
                self._conn.cursor().execute(sql)
            finally:
                self._conn.autocommit = False
            return True
        return False

    @property
    def _commits(self) -> bool:
        """Whether each statement is committed after it runs (outside a transaction)."""
        return self._commit_after and not self._in_transaction

    def _execute(self, sql: str, params: object, fetch_size: int) -> tuple[Any, list[Row]]:
        cursor = self._conn.cursor()
        if params is None and self._control(sql):
            return cursor, []
        try:
            if params is None:
                cursor.execute(sql)
            else:
                cursor.execute(sql, params)
            if cursor.description is None:
                first = []
            elif self._buffered:
                first = _tuples(cursor.fetchall())
            else:
                first = _tuples(cursor.fetchmany(fetch_size))
        except BaseException:
            with contextlib.suppress(Exception):
                cursor.close()
            if self._commits:
                with contextlib.suppress(Exception):
                    self._conn.rollback()
            raise
        return cursor, first

    def _fetch(self, cursor: Any, fetch_size: int) -> list[Row]:
        return _tuples(cursor.fetchmany(fetch_size))

    def _end(self, cursor: Any, ok: bool) -> None:
        try:
            cursor.close()
        finally:
            if self._commits:
                if ok:
                    self._conn.commit()
                else:
                    self._conn.rollback()

    async def execute(
        self, sql: str, params: object, *, fetch_size: int, stream: bool = True
    ) -> _ThreadedStream:
        try:
            cursor, first = await self.call(self._execute, sql, params, fetch_size)
        except Exception as exc:
            raise self.error(exc) from exc
        result = _ThreadedStream(self, cursor, first, fetch_size)
        if result.description is None or self._buffered or len(first) < fetch_size:
            await result.finish()
        return result

    def _run(self, statements: Sequence[Statement]) -> list[Outcome | BaseException]:
        out: list[Outcome | BaseException] = []
        for statement in statements:
            try:
                cursor, rows = self._execute(statement.sql, statement.params, 10_000)
                ok = False
                try:
                    description = _columns(cursor.description)
                    if description is not None and not self._buffered:
                        rows += _tuples(cursor.fetchall())
                    rowcount = len(rows) if description is not None else cursor.rowcount
                    ok = True
                finally:
                    self._end(cursor, ok)
            except Exception as exc:
                out.append(exc)
                continue
            out.append(Outcome(description, rows, rowcount))
        return out

    async def run(
        self, statements: Sequence[Statement], *, prepare: bool = False
    ) -> list[Outcome | ShardError]:
        """Run ``statements`` in one call to the connection's thread (see ``run_statements``).

        Each statement is its own transaction, as with :meth:`execute`.
        ``prepare`` is not needed: the clients cache their prepared statements.
        """
        results = await self.call(self._run, statements)
        return [r if isinstance(r, Outcome) else self.error(r) for r in results]

    def _insert_many(self, sql: str, rows: Sequence[Row]) -> int:
        cursor = self._conn.cursor()
        cursor.execute("SAVEPOINT shardq_load")
        try:
            cursor.executemany(sql, rows)
        except Exception as exc:
            # executemany() does not say which row failed: undo the chunk and
            # insert it again row by row to find out (only on this failure path).
            cursor.execute("ROLLBACK TO SAVEPOINT shardq_load")
            for number, row in enumerate(rows, 1):
                try:
                    cursor.execute(sql, row)
                except Exception as found:
                    raise _Refused(found, number) from exc
            raise _Refused(exc, None) from exc
        finally:
            with contextlib.suppress(Exception):
                cursor.execute("RELEASE SAVEPOINT shardq_load")
        return len(rows) if cursor.rowcount < 0 else int(cursor.rowcount)

    async def insert_many(self, sql: str, rows: Sequence[Row]) -> int:
        """Run the INSERT ``sql`` once per row, in the open transaction (a bulk load's chunk).

        Returns the rows inserted. A row the database refuses raises
        :class:`~shardq.execute.driver.CopyRejected` with its 1-based number
        in ``rows``; the rows of the chunk inserted before it are undone.
        """
        try:
            return await self.call(self._insert_many, sql, rows)
        except _Refused as refused:
            raise CopyRejected(self.error(refused.error), refused.row) from refused.error
        except Exception as exc:
            raise CopyRejected(self.error(exc), None) from exc

    async def close(self) -> None:
        if self._conn is not None and self._owned:
            with contextlib.suppress(Exception):
                await self.call(self._conn.close)
        self._conn = None
        self._executor.shutdown(wait=False)


class _Refused(Exception):
    def __init__(self, error: Exception, row: int | None):
        super().__init__(str(error))
        self.error = error
        self.row = row


class _ThreadedStream:
    def __init__(self, conn: ThreadedConnection, cursor: Any, first: list[Row], fetch_size: int):
        self._conn = conn
        self._cursor: Any = cursor
        self._pending = first
        self._fetch_size = fetch_size
        self.description = _columns(cursor.description)
        self._received = len(first)
        self.rowcount = cursor.rowcount if self.description is None else -1

    @property
    def holds_connection(self) -> bool:
        return self._cursor is not None

    async def finish(self, ok: bool = True) -> None:
        cursor, self._cursor = self._cursor, None
        if cursor is None:
            return
        if self.description is not None:
            self.rowcount = self._received
        try:
            await self._conn.call(self._conn._end, cursor, ok)
        except Exception as exc:
            raise self._conn.error(exc) from exc

    async def fetch(self) -> list[Row]:
        if self._pending:
            batch, self._pending = self._pending, []
            return batch
        if self._cursor is None:
            return []
        try:
            batch = await self._conn.call(self._conn._fetch, self._cursor, self._fetch_size)
        except Exception as exc:
            with contextlib.suppress(Exception):
                await self.finish(ok=False)
            raise self._conn.error(exc) from exc
        self._received += len(batch)
        if len(batch) < self._fetch_size:
            await self.finish()
        return batch

    async def aclose(self) -> None:
        self._pending = []
        await self.finish()


class ThreadedPool:
    """Up to ``max_size`` threaded connections to one shard, opened on demand.

    ``readers_block_writers``: a statement still being read makes a write on
    another of the pool's connections wait for it (see
    :class:`~shardq.execute.driver.ShardPool`).
    """

    def __init__(
        self,
        name: str,
        factory: Callable[[], ThreadedConnection],
        *,
        max_size: int,
        info_sql: str,
        columns_query: Callable[[str], tuple[str, object]],
        collation_sql: str | None = None,
        readers_block_writers: bool = False,
    ):
        self.name = name
        self.collation_sql = collation_sql
        self.readers_block_writers = readers_block_writers
        self._factory = factory
        self.info_sql = info_sql
        self._columns_query = columns_query
        self._pool: LazyPool[ThreadedConnection] = LazyPool(
            name,
            open=self._open,
            close=ThreadedConnection.close,
            reusable=lambda c: c.usable,
            alive=lambda c: c.usable,
            max_size=max_size,
        )

    def __repr__(self) -> str:
        return f"<ThreadedPool shard={self.name!r} open={self._pool.size}/{self._pool.max_size}>"

    @property
    def max_size(self) -> int:
        return self._pool.max_size

    async def _open(self) -> ThreadedConnection:
        conn = self._factory()
        try:
            await conn.open()
        except BaseException:
            await conn.close()
            raise
        return conn

    def connection(self) -> AbstractAsyncContextManager[ThreadedConnection]:
        return self._pool.connection()

    def columns_query(self, table: str) -> tuple[str, object]:
        return self._columns_query(table)

    async def close(self) -> None:
        await self._pool.close()
