"""A batch's reads sent to PostgreSQL as one libpq pipeline, below psycopg's cursors.

A batch of lookups is bound by the client's CPU, and psycopg's own pipeline
mode (``cursor.executemany(..., returning=True)`` inside ``conn.pipeline()``)
spends about 45 µs of it per statement here, in cursor and result
bookkeeping. The same protocol driven through psycopg's libpq wrapper
(:mod:`psycopg.pq`), with psycopg's own query conversion, adapters and row
loader, spends about 13 µs: the statements are sent back to back, then one
Sync, and the results read in order as they arrive.

The values are those psycopg would return: parameters are converted and
dumped by :class:`psycopg.adapt.Transformer` as a cursor would, results come
in text format and are loaded by the same transformer, and each result's
``description`` is built by :class:`psycopg.Column`.

A statement is prepared on the server once it has run
:data:`PREPARE_THRESHOLD` times on a connection (psycopg's own default), or at
once with ``prepare=True``; at most :data:`MAX_PREPARED` per connection.

Statements between two Syncs share one implicit transaction; the caller sends
reads only. When one fails, the server skips the rest: their outcomes are None.

A pipeline opens with a Sync of its own. libpq keeps the row-by-row mode
(chunked or single-row) that a streamed statement asked for after that
statement ends; only its next send outside pipeline mode, or its pipeline
queue moving on to another entry, clears it. The first statement queued on
entering pipeline mode does neither, so after a stream on the same connection
its result would come in chunks (``TUPLES_CHUNK`` results, then an empty
``TUPLES_OK``), one result too many for the statements sent. Reading the
opening Sync's result moves the queue on, which clears the mode: every
statement then answers with one result. It costs no round trip, but about
20 µs (a quarter of a one-statement pipeline), so the caller may say that the
connection has not streamed since (``after_stream=False``) to leave it out.
A pipeline left early (cancelled, or its connection broke) is cancelled on the
server and drained; if that fails too, the connection is closed, so that its
pool drops it.

This leans on three psycopg names outside its documented API
(``psycopg._queries.PostgresQuery``, ``psycopg.errors.error_from_result`` and
the ``Column(cursor, index)`` constructor). :data:`AVAILABLE` is False when
one is missing or libpq lacks pipeline mode; the driver then runs statements
one at a time through cursors.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import pq

from shardq.execute.driver import Column, Outcome, Row

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence

    from shardq.execute.driver import Statement

__all__ = ["AVAILABLE", "Pipeline"]

try:
    from psycopg._queries import PostgresQuery
    from psycopg.adapt import Transformer
    from psycopg.errors import error_from_result

    AVAILABLE = psycopg.capabilities.has_pipeline()
except (ImportError, AttributeError):  # pragma: no cover - another psycopg
    AVAILABLE = False

_TUPLES_OK = pq.ExecStatus.TUPLES_OK
_COMMAND_OK = pq.ExecStatus.COMMAND_OK
_FATAL_ERROR = pq.ExecStatus.FATAL_ERROR
_SYNC = pq.ExecStatus.PIPELINE_SYNC
_ABORTED = pq.ExecStatus.PIPELINE_ABORTED
#: The most statements prepared on one connection; more run unprepared.
MAX_PREPARED = 256
#: Runs of one statement (text and parameter types) after which it is prepared,
#: as psycopg's ``prepare_threshold`` (5) does; ``prepare=True`` prepares at once.
PREPARE_THRESHOLD = 5
#: The most statements whose runs are counted before the counts start again.
MAX_COUNTED = 1024
#: Seconds given to cancel and drain a pipeline left early, before closing its connection.
ABANDON_TIMEOUT = 5.0


class _Described:
    """What :class:`psycopg.Column` reads from a cursor: the result and its context."""

    __slots__ = ("_encoding", "adapters", "pgresult")

    def __init__(self, pgresult: Any, encoding: str, adapters: Any):
        self.pgresult = pgresult
        self._encoding = encoding
        self.adapters = adapters


class Pipeline:
    """Runs groups of reads on one psycopg connection, each group as one pipeline.

    Args:
        conn: an async connection in autocommit mode, held by the caller.
    """

    def __init__(self, conn: psycopg.AsyncConnection[Any]):
        self.conn = conn
        self._tx = Transformer(conn)
        self._prepared: dict[tuple[bytes, tuple[int, ...]], bytes] = {}
        self._seen: dict[tuple[bytes, tuple[int, ...]], int] = {}  # runs of texts not prepared
        self._names = itertools.count()

    async def run(
        self, statements: Sequence[Statement], *, prepare: bool, after_stream: bool = True
    ) -> list[Outcome | Exception | None]:
        """Each read's outcome, its error, or None if the server skipped it.

        ``after_stream=False`` promises that no statement has been streamed on
        the connection since its last pipeline: the opening Sync is left out.
        """
        conn = self.conn
        pgconn = conn.pgconn
        out: list[Outcome | Exception | None] = [None] * len(statements)
        sent: list[tuple[int, bool, Any]] = []
        async with conn.lock:
            pgconn.enter_pipeline_mode()
            synced = False
            pending = 0  # Syncs sent whose results are not read yet
            try:
                if after_stream:
                    # The opening Sync: reading its result clears a row-by-row
                    # mode left by an earlier stream (see the module's docstring).
                    pgconn.pipeline_sync()
                    pending += 1
                self._send(statements, prepare, out, sent)
                pgconn.pipeline_sync()
                pending += 1
                synced = True
                await self._flush()
                if after_stream:
                    if await self._receive():
                        raise psycopg.InterfaceError("results came before a pipeline's statements")
                    pending -= 1
                results = await self._receive()
            except BaseException:
                # Whether the prepares sent took effect is unknown: forget them
                # (a name never comes back, so one that did exist is never reused).
                for _, preparing, key in sent:
                    if preparing:
                        self._prepared.pop(key, None)
                await self._abandon(synced, pending)
                raise
            pgconn.exit_pipeline_mode()
        self._outcomes(sent, results, out)
        return out

    def _often(self, key: tuple[bytes, tuple[int, ...]]) -> bool:
        """Count a run of ``key``; whether it has now run :data:`PREPARE_THRESHOLD` times."""
        seen = self._seen
        count = seen.get(key, 0) + 1
        if count < PREPARE_THRESHOLD:
            if len(seen) >= MAX_COUNTED:
                seen.clear()  # many texts, each seldom: start counting again
            seen[key] = count
            return False
        seen.pop(key, None)
        return True

    def _send(
        self,
        statements: Sequence[Statement],
        prepare: bool,
        out: list[Outcome | Exception | None],
        sent: list[tuple[int, bool, Any]],
    ) -> None:
        """Send every statement, noting in ``sent`` what each result to come answers.

        An entry is ``(index, preparing, key)``: the preparation (``preparing``)
        or the execution of statement ``index``, whose text and parameter
        types are ``key``. A statement whose parameters cannot be adapted is
        not sent: its error goes to ``out``.
        """
        pgconn = self.conn.pgconn
        query = PostgresQuery(self._tx)
        last: str | None = None
        for index, statement in enumerate(statements):
            try:
                if statement.params is None:
                    # Sent as written, as psycopg does: no placeholder, "%%" kept.
                    query.convert(statement.sql, None)
                    last = None
                elif statement.sql == last:
                    query.dump(statement.params)  # type: ignore[arg-type]
                else:
                    last = None
                    query.convert(statement.sql, statement.params)  # type: ignore[arg-type]
                    last = statement.sql
            except Exception as exc:  # a value psycopg cannot adapt, a missing parameter
                out[index] = exc
                continue
            key = (query.query, query.types)
            name = self._prepared.get(key)
            wanted = name is None and (prepare or self._often(key))
            if wanted and len(self._prepared) < MAX_PREPARED:
                name = b"_shardq_%d" % next(self._names)
                self._prepared[key] = name
                sent.append((index, True, key))
                pgconn.send_prepare(name, query.query, param_types=query.types)
            sent.append((index, False, key))
            if name is not None:
                pgconn.send_query_prepared(name, query.params, param_formats=query.formats)
            else:
                pgconn.send_query_params(
                    query.query, query.params, param_types=query.types, param_formats=query.formats
                )

    async def _flush(self) -> None:
        pgconn = self.conn.pgconn
        while pgconn.flush():
            # The server may answer before it has read everything: read too,
            # or both sides could wait on full buffers.
            if await _ready(pgconn.socket, write=True):
                pgconn.consume_input()

    async def _receive(self) -> list[Any]:
        """The results up to the Sync, one per entry sent."""
        pgconn = self.conn.pgconn
        results: list[Any] = []
        while True:
            while pgconn.is_busy():
                await _ready(pgconn.socket, write=False)
                pgconn.consume_input()
            result = pgconn.get_result()
            if result is None:
                continue  # the end of one statement's results
            if result.status == _SYNC:
                return results
            results.append(result)

    def _outcomes(
        self,
        sent: list[tuple[int, bool, Any]],
        results: list[Any],
        out: list[Outcome | Exception | None],
    ) -> None:
        encoding = self.conn.info.encoding
        # The columns of one text with the same parameter types are the same.
        described: dict[Any, tuple[Column, ...]] = {}
        tx = self._tx
        for (index, preparing, key), result in zip(sent, results, strict=True):
            status = result.status
            if preparing:
                if status != _COMMAND_OK:
                    self._prepared.pop(key, None)
                    if status == _FATAL_ERROR:
                        out[index] = error_from_result(result, encoding)
                continue
            if status == _TUPLES_OK:
                try:
                    description = described.get(key)
                    if description is None:
                        description = described[key] = self._describe(result, encoding)
                    tx.set_pgresult(result)
                    rows: list[Row] = tx.load_rows(0, result.ntuples, tuple)
                except Exception as exc:  # a value psycopg cannot load ('infinity'::date)
                    out[index] = exc
                    continue
                out[index] = Outcome(description, rows, len(rows))
            elif status == _COMMAND_OK:
                count = result.command_tuples
                out[index] = Outcome(None, [], -1 if count is None else count)
            elif status == _ABORTED:
                pass  # skipped, or its prepare failed (that error is kept)
            elif status == _FATAL_ERROR:
                out[index] = error_from_result(result, encoding)
            else:
                out[index] = psycopg.ProgrammingError(
                    f"unexpected result from a pipelined read: {pq.ExecStatus(status).name}"
                )

    def _describe(self, result: Any, encoding: str) -> tuple[Column, ...]:
        source: Any = _Described(result, encoding, self.conn.adapters)
        columns = [psycopg.Column(source, i) for i in range(result.nfields)]
        return tuple(
            Column(c.name, c.type_code, c.display_size, c.internal_size, c.precision, c.scale, None)
            for c in columns
        )

    async def _abandon(self, synced: bool, pending: int) -> None:
        """After leaving a pipeline early: cancel it on the server and read it to its end.

        ``synced`` tells whether the closing Sync was sent, ``pending`` how
        many Syncs sent have results not read yet. If reading them does not
        work in :data:`ABANDON_TIMEOUT` seconds (or is cancelled in turn),
        the connection is closed instead; the caller raises what made it leave.
        """
        conn = self.conn
        pgconn = conn.pgconn
        try:
            async with asyncio.timeout(ABANDON_TIMEOUT):
                if pgconn.status == pq.ConnStatus.OK:
                    await conn.cancel_safe()
                    if not synced:
                        pgconn.pipeline_sync()
                        pending += 1
                    await self._flush()
                    for _ in range(pending):
                        await self._receive()
                    pgconn.exit_pipeline_mode()
                    return
        except asyncio.CancelledError:
            pgconn.finish()
            raise
        except Exception:
            pass
        pgconn.finish()


async def copy_blocks(conn: psycopg.AsyncConnection[Any], block: int) -> AsyncIterator[bytes]:
    """The data of the ``COPY ... TO STDOUT`` ``conn`` is in, in blocks of ``block`` bytes.

    psycopg's ``Copy.read()`` goes through a generator and a wait per row;
    here libpq's buffer is drained in one loop, the socket awaited only when
    it is empty: a gather moves its rows about five times faster. Called
    inside psycopg's ``cursor.copy()`` block, which holds the connection's
    lock and started the COPY; this reads it to its end, final result
    included, so that the block's exit has nothing left to do. Left early
    (cancelled, or its reader stopped), the block's exit cancels the COPY on
    the server and drains it, as for its own reads.
    """
    pgconn = conn.pgconn
    data = bytearray()
    while True:
        size, piece = pgconn.get_copy_data(1)
        if size > 0:
            data += piece
            if len(data) >= block:
                yield bytes(data)
                data.clear()
        elif size == 0:
            await _ready(pgconn.socket, write=False)
            pgconn.consume_input()
        elif size == -1:
            break
        else:  # -2: libpq's own error (the connection broke)
            raise psycopg.OperationalError(pgconn.get_error_message())
    failed = None
    while True:
        while pgconn.is_busy():  # get_result() would block the loop until it is not
            await _ready(pgconn.socket, write=False)
            pgconn.consume_input()
        if (result := pgconn.get_result()) is None:
            break
        if result.status != pq.ExecStatus.COMMAND_OK and failed is None:
            failed = result
    if failed is not None:
        raise psycopg.errors.error_from_result(failed, encoding=conn.info.encoding)
    if data:
        yield bytes(data)


async def _ready(fileno: int, *, write: bool) -> bool:
    """Wait until ``fileno`` can be read (or, with ``write``, read or written); whether readable."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[bool] = loop.create_future()

    def readable() -> None:
        if not future.done():
            future.set_result(True)

    def writable() -> None:
        if not future.done():
            future.set_result(False)

    loop.add_reader(fileno, readable)
    if write:
        loop.add_writer(fileno, writable)
    try:
        return await future
    finally:
        loop.remove_reader(fileno)
        if write:
            loop.remove_writer(fileno)
