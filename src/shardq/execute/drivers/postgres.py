"""PostgreSQL shards through psycopg 3's asyncio API and psycopg_pool.

Rows are streamed with libpq's chunked-rows mode (``cursor.stream(size=N)``,
libpq 17 or newer): the statement is sent once, the client reads ``N`` rows
at a time and TCP back-pressure holds the server, so memory stays bounded
without the extra round trips of ``DECLARE``/``FETCH`` (measured here: 0.17 ms
against 0.90 ms for a one-row query, and the same 0.47 M rows/s on a bulk
fetch). Each chunk is loaded into a list at once, in C, as ``fetchall()``
loads a result, rather than row by row through ``stream()``'s iterator (see
:func:`_whole_chunks`). An older libpq streams in single-row mode: slower,
just as bounded.
Connections are in autocommit mode: every statement is its own transaction.
They come from shardq's :class:`~shardq.execute.pool.LazyPool`, not
``psycopg_pool``: that pool connects in a background task and retries, so a
caller waits out the pool timeout (30 s) when a shard is down, where shardq
must fail fast with the shard's own connection error.
"""

from __future__ import annotations

import contextlib
import re
import select
import traceback
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from shardq.dsn import server_of
from shardq.execute.driver import (
    Column,
    CopyRejected,
    Outcome,
    Row,
    Statement,
    translate_error,
)
from shardq.execute.drivers import pgcancel, pgpipeline
from shardq.execute.pool import LazyPool
from shardq.execute.textorder import POSTGRES_COLLATION_SQL

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Sequence

    from shardq.config import Config, ShardConfig
    from shardq.dsn import Secrets
    from shardq.errors import ShardError

__all__ = ["PsycopgPool"]

_CHUNKED = psycopg.pq.version() >= 170000
# Reading each chunk as a list, as fetchall() does (in C), needs the cursor
# internals that stream() itself uses; without them rows are gathered one by one.
_WHOLE_CHUNKS = (
    _CHUNKED
    and hasattr(psycopg.AsyncCursor, "_stream_send_gen")
    and hasattr(psycopg.AsyncCursor, "_stream_fetchone_gen")
    and hasattr(psycopg.AsyncConnection, "_try_cancel")
)


async def _whole_chunks(
    cursor: psycopg.AsyncCursor[Any], query: Any, params: Any, size: int
) -> AsyncIterator[list[Row]]:
    """stream(), one list per chunk of ``size`` rows, each loaded in C (fetchall's way).

    ``cursor.stream()`` yields rows one by one from Python code, which costs
    more than the rest of a merge; this is the same protocol, from psycopg's
    own generators, with each chunk loaded by the transformer at once. Closing
    it early cancels the statement on the server, as closing stream() does.
    """
    conn: Any = cursor._conn
    async with conn.lock:
        first = True
        try:
            await conn.wait(cursor._stream_send_gen(query, params, size=size))
            while res := await conn.wait(cursor._stream_fetchone_gen(first)):
                tx: Any = cursor._tx
                yield tx.load_rows(0, res.ntuples, cursor._make_row)
                first = False
        finally:
            pgconn: Any = cursor._pgconn
            if pgconn.transaction_status == psycopg.pq.TransactionStatus.ACTIVE:
                await pgcancel.stop(conn, cursor)


async def _grouped(rows: AsyncIterator[Row], size: int) -> AsyncIterator[list[Row]]:
    """Rows gathered into lists of ``size`` (the last one shorter)."""
    batch: list[Row] = []
    try:
        async for row in rows:
            batch.append(row)
            if len(batch) >= size:
                yield batch
                batch = []
        if batch:
            yield batch
    finally:
        if hasattr(rows, "aclose"):
            await rows.aclose()


# Where PostgreSQL says which line of a COPY's data it refused ("COPY t, line 8: ...").
_COPY_LINE = re.compile(r"^COPY [^\n]*?, line (\d+)", re.MULTILINE)


def _copy_line(exc: BaseException) -> int | None:
    diag = getattr(exc, "diag", None)
    context = getattr(diag, "context", None) if diag is not None else None
    match = _COPY_LINE.search(context or "")
    return int(match.group(1)) if match else None


def _row_formatter(copy: psycopg.AsyncCopy) -> Callable[[Sequence[Any]], Any] | None:
    """What ``copy.write_row`` formats a row with, without its await, if psycopg has it.

    ``formatter.write_row`` adds the row to the formatter's buffer and returns
    the buffer once it is full (else empty): what ``write_row`` then sends,
    and what :meth:`copy.write` sends in text format, unchanged. The
    formatter is not documented API, so without it rows go through
    ``write_row`` one by one.
    """
    formatter = getattr(copy, "formatter", None)
    if formatter is None or getattr(formatter, "format", None) != psycopg.pq.Format.TEXT:
        return None
    write_row = getattr(formatter, "write_row", None)
    return write_row if callable(write_row) else None


# A statement's closing semicolon and a comment after it, which cannot be wrapped.
_TRAILING_END = re.compile(r"(;\s*(--[^\n]*)?\s*)+$")


def _sqlstate(exc: BaseException) -> str | None:
    return getattr(exc, "sqlstate", None)


def _description(cursor: psycopg.AsyncCursor[Any]) -> tuple[Column, ...] | None:
    columns = cursor.description  # psycopg builds these on each access: read once
    if columns is None:
        return None
    return tuple(
        Column(c.name, c.type_code, c.display_size, c.internal_size, c.precision, c.scale, None)
        for c in columns
    )


# Loading a result held in memory without fetchall()'s awaits needs the
# cursor's transformer; without it fetchall() is used.
_LOAD_ROWS = all(hasattr(psycopg.AsyncCursor, a) for a in ("_tx", "_pos", "_make_row"))


class _Stream:
    """A statement's result, read in chunks from the server."""

    def __init__(self, shard: str, secrets: Secrets, fetch_size: int):
        self._shard = shard
        self._secrets = secrets
        self._fetch_size = fetch_size
        self._rows: AsyncIterator[list[Row]] | None = None
        self._cursor: psycopg.AsyncCursor[Any] | None = None
        self._description: tuple[Column, ...] | None = None
        self._described = False
        self.rowcount = -1
        self._received = 0
        self._rows_mode = True
        self._buffer: list[Row] = []

    async def start(self, cursor: psycopg.AsyncCursor[Any], sql: str, params: object) -> None:
        self._cursor = cursor
        # A str with params=None is sent as written: psycopg looks for
        # placeholders (and "%%") only when parameters are given.
        query: Any = sql
        bound: Any = params
        if _WHOLE_CHUNKS:
            self._rows = _whole_chunks(cursor, query, bound, self._fetch_size)
        else:
            rows = cursor.stream(query, bound, size=self._fetch_size if _CHUNKED else 1)
            self._rows = _grouped(rows, self._fetch_size)
        # Read the first batch now, while every shard works concurrently: it
        # tells whether the statement succeeded and what it returns, and a small
        # result is then complete and its connection can go back at once.
        self._buffer = await self._read()
        if not self._buffer and self._rows is None and cursor.description is None:
            await self._describe_empty(cursor, sql, params)

    async def _describe_empty(
        self, cursor: psycopg.AsyncCursor[Any], sql: str, params: object
    ) -> None:
        """Learn the columns of a read that returned no rows.

        psycopg's stream() drops the result that describes the columns when no
        row came, so the statement is described again, wrapped in ``LIMIT 0``:
        the server plans it but reads no row.
        """
        body = _TRAILING_END.sub("", sql)
        query: Any = f"SELECT * FROM (\n{body}\n) AS _shardq_described LIMIT 0"
        bound: Any = params
        try:
            await cursor.execute(query, bound)
        except Exception as exc:
            raise self._error(exc) from exc
        self._description = _description(cursor)
        self._described = True

    async def run(self, cursor: psycopg.AsyncCursor[Any], sql: str, params: object) -> None:
        """Run a write: its RETURNING rows, if any, are received whole."""
        self._cursor = cursor
        self._rows_mode = False
        query: Any = sql
        bound: Any = params
        try:
            await cursor.execute(query, bound)
            rows = await cursor.fetchall() if cursor.description is not None else []
        except Exception as exc:
            raise self._error(exc) from exc
        self._buffer = rows
        self._received = len(rows)
        self._finish(cursor)

    @property
    def description(self) -> tuple[Column, ...] | None:
        # Built on demand (from this statement's own cursor): of a multi-shard
        # result only one shard's is needed.
        if not self._described and self._cursor is not None:
            self._description = _description(self._cursor)
            self._described = True
        return self._description

    @property
    def holds_connection(self) -> bool:
        return self._rows is not None

    def _finish(self, cursor: psycopg.AsyncCursor[Any]) -> None:
        # A streamed statement returns rows (stream() refuses others): its count
        # is what was received. A write's is the server's count of rows affected.
        self.rowcount = self._received if self._rows_mode else cursor.rowcount

    def _error(self, exc: BaseException) -> Exception:
        return translate_error(self._shard, exc, self._secrets, sqlstate_of=_sqlstate)

    async def _read(self) -> list[Row]:
        """Read the next chunk from the server; at the end, finish the result."""
        rows, cursor = self._rows, self._cursor
        assert rows is not None
        assert cursor is not None
        try:
            batch = await anext(rows, None)
            # Every chunk is full but the last: after a short one, read the end
            # now, so that the connection can go back at once.
            exhausted = batch is None
            if batch is not None and len(batch) < self._fetch_size:
                more = await anext(rows, None)
                exhausted = more is None
                if more is not None:  # libpq returns full chunks but the last: not expected
                    batch += more
        except Exception as exc:
            self._rows = None
            raise self._error(exc) from exc
        batch = batch or []
        self._received += len(batch)
        if exhausted:
            self._rows = None
            self._finish(cursor)
        return batch

    async def fetch(self) -> list[Row]:
        if self._buffer:
            batch, self._buffer = self._buffer, []
            return batch
        if self._rows is None:
            return []
        return await self._read()

    async def aclose(self) -> None:
        rows, self._rows = self._rows, None
        if rows is not None and hasattr(rows, "aclose"):
            try:
                await rows.aclose()  # cancels the statement on the server if it still runs
            except Exception as exc:
                raise self._error(exc) from exc


async def _outcome(
    cursor: psycopg.AsyncCursor[Any], description: tuple[Column, ...] | bool | None = False
) -> Outcome:
    """The whole result held by ``cursor`` after a (non-streamed) execute.

    ``description``, when given, is the result's known columns (the other
    sets of one executemany() have the same), which psycopg would rebuild.
    """
    if description is False:
        description = _description(cursor)
    assert description is not True
    rows: list[Row] = []
    if description is not None:
        pgresult = cursor.pgresult
        if _LOAD_ROWS and pgresult is not None and cursor._pos == 0:
            # The result is in memory: load it whole, as fetchall() does, minus its awaits.
            tx: Any = cursor._tx
            rows = tx.load_rows(0, pgresult.ntuples, cursor._make_row)
            cursor._pos = pgresult.ntuples
        else:
            rows = await cursor.fetchall()
    return Outcome(description, rows, cursor.rowcount)


if hasattr(select, "poll"):
    _POLL_DEAD = select.POLLIN | select.POLLPRI | select.POLLERR | select.POLLHUP | select.POLLNVAL

    def socket_quiet(fd: int) -> bool:
        """Whether nothing can be read from socket ``fd`` now (a zero-timeout poll).

        An idle autocommit session's server sends nothing unasked: shardq never
        LISTENs, and a reload's new settings are reported with the next
        statement's answer. So anything to read on an idle pooled connection
        is the server's goodbye: the FATAL message of a shutdown, a restart or
        a terminated backend, or the end of the stream when the backend is
        gone. A false alarm (a user's LISTEN) costs a reconnection.
        """
        poller = select.poll()
        poller.register(fd, _POLL_DEAD)
        return not poller.poll(0)

else:  # Windows has no poll(); its select() bounds how many sockets, not their numbers

    def socket_quiet(fd: int) -> bool:
        """Whether nothing can be read from socket ``fd`` now (a zero-timeout select)."""
        readable, _, failed = select.select([fd], [], [fd], 0)
        return not readable and not failed


class _Connection:
    """A pooled psycopg connection."""

    def __init__(
        self,
        conn: psycopg.AsyncConnection[Any],
        shard: str,
        secrets: Secrets,
        late: pgcancel.LateCancels | None = None,
    ):
        self.conn = conn
        self._shard = shard
        self._secrets = secrets
        self._late = late
        self._cancel = None if late is None else late.prepare(conn)  # see close()
        self._pipeline: pgpipeline.Pipeline | None = None  # made on first use
        # Whether a statement was streamed since the last pipeline: libpq then
        # still has its row-by-row mode set (see pgpipeline's docstring).
        self._streamed = True

    async def execute(
        self, sql: str, params: object, *, fetch_size: int, stream: bool = True
    ) -> _Stream:
        result = _Stream(self._shard, self._secrets, fetch_size)
        cursor = self._cursor()
        if stream:
            self._streamed = True
            await result.start(cursor, sql, params)
        else:
            await result.run(cursor, sql, params)
        return result

    def _cursor(self) -> psycopg.AsyncCursor[Any]:
        """A cursor; a closed connection raises the shard's error, not psycopg's."""
        try:
            return self.conn.cursor()
        except psycopg.Error as exc:
            raise self._error(exc) from exc

    async def run(
        self, statements: Sequence[Statement], *, prepare: bool = False
    ) -> list[Outcome | ShardError | None]:
        """Run ``statements`` in order, each its own transaction (see :func:`run_statements`).

        Consecutive reads are sent as one pipeline (see
        :mod:`~shardq.execute.drivers.pgpipeline`): all of them, then one
        Sync, so the group costs one round trip instead of one per statement.
        Statements between two Syncs share one implicit transaction, which is
        harmless for reads but not for writes (a failure would undo the writes
        before it), so each write runs alone. When a read in a pipeline fails,
        the server skips the rest of the group: those come back as None, for
        the caller to send again.
        """
        out: list[Outcome | ShardError | None] = []
        i = 0
        while i < len(statements):
            j = i
            while j < len(statements) and not statements[j].write:
                j += 1
            if j > i and pgpipeline.AVAILABLE:
                if self._pipeline is None:
                    self._pipeline = pgpipeline.Pipeline(self.conn)
                try:
                    outcomes = await self._pipeline.run(
                        statements[i:j], prepare=prepare, after_stream=self._streamed
                    )
                except psycopg.Error as exc:  # the connection broke
                    raise self._error(exc) from exc
                self._streamed = False
                out += [self._error(o) if isinstance(o, Exception) else o for o in outcomes]
                i = j
            else:
                out.append(await self._run_one(statements[i], prepare))
                i += 1
        return out

    def _error(self, exc: BaseException) -> ShardError:
        return translate_error(self._shard, exc, self._secrets, sqlstate_of=_sqlstate)

    async def copy_to(self, sql: str, block: int) -> AsyncIterator[bytes]:
        """Run ``COPY ... TO STDOUT`` (``sql``); yield its data in blocks of ``block`` bytes.

        The server sends a message per row: joined into blocks, they cost one
        write each on the connection they are copied into (a gather's). They
        are read below psycopg's ``Copy`` (see :func:`pgpipeline.copy_blocks`):
        its reads cost about 3 µs a row, most of a gather's time.
        """
        cursor = self._cursor()
        query: Any = sql
        try:
            async with cursor.copy(query) as copy:
                if pgpipeline.AVAILABLE:
                    async for blocked in pgpipeline.copy_blocks(cursor.connection, block):
                        yield blocked
                    return
                data = bytearray()
                async for piece in copy:
                    data += piece
                    if len(data) >= block:
                        yield bytes(data)
                        data.clear()
                if data:
                    yield bytes(data)
        except psycopg.Error as exc:
            raise self._error(exc) from exc

    async def copy_from(self, sql: str, chunks: AsyncIterator[list[Row] | str | bytes]) -> int:
        """Run ``COPY ... FROM STDIN`` (``sql``), sending each chunk; return the rows copied.

        A chunk is a list of rows, each formatted by psycopg (text format:
        it takes the values an INSERT takes, a string for a date as well as
        a date; binary measured no faster here, see :mod:`shardq.execute.copy`),
        or a string of data already in the statement's format (CSV records),
        sent as it is. A row the server refuses raises :class:`CopyRejected`
        with its line in the data sent.

        A chunk's rows go through the copy's own formatter (psycopg's
        escaping, in C) in one loop, awaiting only to send each buffer it
        fills, as ``write_row`` would: ``await write_row(row)`` costs a
        coroutine per row, measured at a quarter of a load's time in Python.
        """
        cursor = self._cursor()
        query: Any = sql
        try:
            async with cursor.copy(query) as copy:
                format_row = _row_formatter(copy)
                async for chunk in chunks:
                    if isinstance(chunk, str | bytes):  # (bytes: a binary COPY's data)
                        await copy.write(chunk)
                    elif format_row is None:
                        for row in chunk:
                            await copy.write_row(row)
                    else:
                        for row in chunk:
                            if data := format_row(row):
                                await copy.write(data)
        except psycopg.Error as exc:
            raise CopyRejected(self._error(exc), _copy_line(exc)) from exc
        return cursor.rowcount

    async def _run_one(self, statement: Statement, prepare: bool) -> Outcome | ShardError:
        query: Any = statement.sql
        params: Any = statement.params
        try:
            cursor = self.conn.cursor()
            await cursor.execute(query, params, prepare=prepare or None)
            return await _outcome(cursor)
        except psycopg.Error as exc:
            return self._error(exc)

    @property
    def reusable(self) -> bool:
        conn = self.conn
        return (
            not conn.closed
            and not conn.broken
            and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        )

    @property
    def alive(self) -> bool:
        """Whether an idle connection may be lent: reusable, and its socket quiet.

        No round trip (measured 2 µs, 1 µs more than :attr:`reusable`): see
        :mod:`shardq.execute.pool` for what this catches and what it cannot.
        """
        if not self.reusable:
            return False
        try:
            return socket_quiet(self.conn.pgconn.socket)
        except (psycopg.Error, OSError, ValueError):  # no socket: the connection is gone
            return False

    @property
    def broken(self) -> bool:
        """Whether the connection was lost (rather than closed by shardq)."""
        return self.conn.broken

    async def close(self) -> None:
        # Closed under us, its cancel given up at a deadline (see pgcancel):
        # its statement may still run on the server, so cancel it there.
        closed_under_us = self.conn.closed
        with contextlib.suppress(Exception):
            await self.conn.close()
        if closed_under_us and self._late is not None:
            self._late.send(self._cancel)


def failover_conninfo(dsn: str, replicas: Sequence[str]) -> str | None:
    """One conninfo over a shard's primary and replicas that connects to the writable one.

    libpq tries the hosts in order and keeps the first that accepts writes
    (``target_session_attrs=read-write``): when a replica is promoted
    outside shardq (Patroni, a cloud provider) and the old primary is down,
    the shard's next connections go to the new primary, with no restart.
    None (no failover) when the shard has no replicas, or when the hosts
    differ in user, password or database (one conninfo has one of each), or
    when a DSN lists several hosts or sets ``target_session_attrs`` itself.
    """
    if not replicas:
        return None
    try:
        parts = [conninfo_to_dict(one) for one in (dsn, *replicas)]
    except psycopg.ProgrammingError:
        return None
    first = parts[0]
    same = ("user", "password", "dbname")
    if any(part.get(key) != first.get(key) for part in parts[1:] for key in same):
        return None
    if "target_session_attrs" in first or any(
        "hostaddr" in part or "," in str(part.get("host", "")) for part in parts
    ):
        return None
    merged: dict[str, Any] = dict(first)
    merged["host"] = ",".join(str(part.get("host", "")) for part in parts)
    merged["port"] = ",".join(str(part.get("port", "")) for part in parts)
    merged["target_session_attrs"] = "read-write"
    return make_conninfo("", **merged)


class PsycopgPool:
    """The connections of one PostgreSQL shard, opened lazily (see :mod:`shardq.execute.pool`).

    ``pool_min_size`` connections are opened together on first use; at most
    ``pool_max_size`` are open at once. Unless the DSN sets
    ``connect_timeout``, connecting gives up after 10 seconds. A shard with
    replicas connects to whichever of its hosts is writable
    (:func:`failover_conninfo`).
    """

    def __init__(self, config: Config, shard: ShardConfig):
        self.name = shard.name
        # (host, port) of the configured host, never its credentials: for traces.
        self.server = server_of(shard.dsn)
        self._secrets = config.secrets
        self._dsn = failover_conninfo(shard.dsn, shard.replicas) or shard.dsn
        self._connect_kwargs: dict[str, Any] = {"autocommit": True}
        if "connect_timeout" not in shard.dsn:
            self._connect_kwargs["connect_timeout"] = 10
        self._late = pgcancel.LateCancels()
        self._pool: LazyPool[_Connection] = LazyPool(
            shard.name,
            open=self._connect,
            close=_Connection.close,
            reusable=lambda c: c.reusable,
            alive=lambda c: c.alive,
            broken=lambda c: c.broken,
            max_size=shard.pool_max_size,
            min_size=shard.pool_min_size,
        )

    def __repr__(self) -> str:
        return f"<PsycopgPool shard={self.name!r} open={self._pool.size}/{self._pool.max_size}>"

    @property
    def max_size(self) -> int:
        return self._pool.max_size

    @property
    def usage(self) -> tuple[int, int, int]:
        """Connections lent, open, and at most open (for ``shardq check``)."""
        return self._pool.in_use, self._pool.size, self._pool.max_size

    @property
    def waiting(self) -> int:
        """Tasks waiting for a connection (every one lent)."""
        return self._pool.waiting

    def _error(self, exc: BaseException) -> Exception:
        return translate_error(self.name, exc, self._secrets, sqlstate_of=_sqlstate)

    async def _connect(self) -> _Connection:
        try:
            conn = await psycopg.AsyncConnection.connect(self._dsn, **self._connect_kwargs)
        except psycopg.Error as exc:
            raise self._error(exc) from exc
        except BaseException as exc:
            # Cancelled mid-connect (a deadline): psycopg's half-made connection
            # is held by its connect frame, which the traceback keeps; an error
            # kept (a batch's result) in a reference cycle would keep it open
            # until the cycle collector ran, its session idle on the server
            # (seen: test_mixes waiting 20 s for it). Clearing the frames frees it now.
            traceback.clear_frames(exc.__traceback__)
            raise
        return _Connection(conn, self.name, self._secrets, self._late)

    def connection(self) -> AbstractAsyncContextManager[_Connection]:
        return self._pool.connection()

    info_sql = "SELECT version()"
    collation_sql = POSTGRES_COLLATION_SQL
    #: Its connections load rows with ``copy_from`` (see :mod:`shardq.execute.copy`).
    copies = True

    def columns_query(self, table: str) -> tuple[str, object]:
        schema, _, name = table.rpartition(".")
        qualified = f'"{schema}"."{name}"' if schema else f'"{name}"'
        return (
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
            "WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped "
            "ORDER BY a.attnum",
            (qualified,),
        )

    async def close(self) -> None:
        await self._pool.close()
        await self._late.close()
