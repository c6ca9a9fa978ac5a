"""PostgreSQL shards' rows read straight into Arrow, with ADBC's libpq driver.

The row path decodes every value into a Python object (psycopg) before
:mod:`shardq.export` builds Arrow columns from them; for a large read that
is most of the time. ADBC's PostgreSQL driver (``adbc-driver-postgresql``,
the ``shardq[adbc]`` extra) reads a result with ``COPY ... TO STDOUT
(FORMAT binary)`` and decodes it into Arrow in C++, with no Python object
per value. The alternative, psycopg's binary COPY decoded into Arrow, pays
at least a Python step per row: on 4 shards of 923,077 rows of 7 columns
(on this 2-core machine, busy), psycopg's async COPY only *receiving* the
75 MB took 2.40 s, ADBC reading and decoding them into Arrow 1.35 s. So
ADBC is the one columnar reader.

ADBC's calls block, so each shard's read runs in a thread. Its connections
are its own (ADBC cannot use psycopg's), opened from the shard's DSN on
first use, kept idle for the next read and closed with the engine; a shard
has at most ``pool_max_size`` of them reading at once, as its psycopg pool.
The statement's deadline is honoured twice: ``statement_timeout`` is set on
the server for the read, and when the time runs out (or the awaiting task
is cancelled) the read is cancelled on the server from the event loop
(``AdbcStatementCancel``, a libpq cancel request, sent from a thread),
then waited for a moment (:data:`GRACE`). A server that stopped answering
leaves a libpq call blocked until the network gives up: its read still
fails on time, as on the row path, and its thread (a daemon of its own, the
shard's slot still held) closes the connection when it returns. Waiting for
a slot counts in the deadline too. Errors pass :func:`translate_error` with the
configuration's secrets (a driver message can quote the connection string).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib.util
import re
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from shardq import errors as shardq_errors
from shardq.errors import QueryTimeoutError
from shardq.execute.driver import translate_error
from shardq.execute.tasks import first_failure
from shardq.export import require

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    import pyarrow

    from shardq.config import Config
    from shardq.sql.plan import QueryPlan

__all__ = ["ArrowReader", "ColumnarRead", "available", "read_all"]

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class ColumnarRead:
    """A started read, as it can be read again into Arrow: its shards' SQL and its merge.

    The engine gives one to a read's result when nothing in its plan stands
    against it; ``deadline`` (``time.monotonic()``) is the statement's.
    """

    plan: QueryPlan
    shards: tuple[str, ...]
    timeout: float | None
    deadline: float | None
    # The statement as given, to read it as rows after all (a column ADBC describes otherwise).
    statement: str = ""
    params: object = None


def available() -> bool:
    """Whether ADBC's PostgreSQL driver and pyarrow are installed (imports nothing)."""
    return all(
        importlib.util.find_spec(name) is not None
        for name in ("adbc_driver_postgresql", "adbc_driver_manager", "pyarrow")
    )


def _sqlstate(exc: BaseException) -> str | None:
    state = getattr(exc, "sqlstate", None)
    return state if isinstance(state, str) and state else None


def _pg_message(text: str) -> str:
    r"""PostgreSQL's own words in an ADBC message: its prefix and the COPY it wrapped dropped.

    >>> _pg_message("INVALID_DATA: [libpq] Failed to execute query: could not begin COPY: "
    ...             "ERROR:  division by zero\n\nQuery was: COPY (SELECT 1/0) TO STDOUT")
    'division by zero'
    >>> _pg_message("IO: [libpq] ...: ERROR:  division by zero. SQLSTATE: 22012")
    'division by zero'
    """
    _, found, rest = text.partition("ERROR:  ")
    if not found:
        return text
    rest = rest.split("\n\nQuery was:", 1)[0].strip()
    return re.sub(r"\. SQLSTATE: \w+$", "", rest)


def _left(deadline: float | None) -> float | None:
    return None if deadline is None else max(deadline - time.monotonic(), 0)


class _Stopped(Exception):
    """A read stopped (out of time, or cancelled) before its statement started."""


class _Conn:
    """An ADBC connection, its one statement, and the ``statement_timeout`` last set."""

    def __init__(self, manager: Any, connection: Any):
        self.connection = connection
        self.statement = manager.AdbcStatement(connection)
        self.timeout_ms: int | None = None  # None: the session's default

    def update(self, sql: str) -> None:
        self.statement.set_sql_query(sql)
        self.statement.execute_update()

    def query(self, sql: str) -> pyarrow.Table:
        from adbc_driver_manager import _reader

        self.statement.set_sql_query(sql)
        stream, _ = self.statement.execute_query()
        # ADBC's reader raises the driver's errors (with their SQLSTATE), not pyarrow's.
        return _reader.AdbcRecordBatchReader._import_from_c(stream.address).read_all()

    def close(self) -> None:
        for part in (self.statement, self.connection):
            with contextlib.suppress(Exception):
                part.close()


#: How long a stopped read's thread is waited for after its cancel requests are sent:
#: a server that answers ends its statement in milliseconds; one that stopped answering
#: (a dead network) is left to its thread, which closes the connection when it returns.
GRACE = 1.0


def _threaded(fn: Callable[[], _T]) -> asyncio.Future[_T]:
    """``fn()`` in a daemon thread of its own, as a future of the running loop.

    Not the loop's executor: a libpq call on a connection whose server
    stopped answering does not return, and such a thread must keep neither
    the caller nor the interpreter's exit waiting (the executor's threads
    are joined at exit). The outcome of a future no one awaits any more is
    retrieved, not logged.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[_T] = loop.create_future()
    future.add_done_callback(lambda done: done.cancelled() or done.exception())

    def post(outcome: Callable[[], None]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: no one waits
            loop.call_soon_threadsafe(outcome)

    def settle(value: Any, failure: BaseException | None) -> None:
        if future.done():
            return
        if failure is None:
            future.set_result(value)
        else:
            future.set_exception(failure)

    def run() -> None:
        try:
            value = fn()
        except BaseException as exc:  # handed to the awaiting task
            post(functools.partial(settle, None, exc))
        else:
            post(functools.partial(settle, value, None))

    threading.Thread(target=run, name="shardq-adbc", daemon=True).start()
    return future


def _send_cancels(on: Sequence[Any]) -> None:
    """A cancel request for each statement of ``on`` (libpq's, blocking: in a thread)."""
    for statement in on:
        with contextlib.suppress(Exception):
            statement.cancel()


async def _cancel(work: asyncio.Future[Any], stop: threading.Event, on: list[Any]) -> None:
    """Stop a read: cancel its statement on the server until its thread is done.

    The cancel request is sent again while the thread runs: one sent just
    before the statement reached the server finds nothing to cancel. The
    requests go from threads (a cancel request to a server that does not
    answer blocks), and the read's thread is waited for :data:`GRACE`
    seconds at most: the caller gets its timeout or cancellation when the
    row path would, whatever the network does. The thread's connection is
    closed, not reused (its statement did not finish), when it returns.
    """
    stop.set()
    give_up = time.monotonic() + GRACE
    sending: asyncio.Future[None] | None = None
    while not work.done() and time.monotonic() < give_up:
        if on and (sending is None or sending.done()):
            sending = _threaded(lambda: _send_cancels(list(on)))
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(asyncio.shield(work), 0.1)


class _Shard:
    """One shard's idle ADBC connections and the bound on those reading at once."""

    def __init__(self, dsn: str, limit: int):
        self.dsn = dsn
        self.idle: list[_Conn] = []
        self.slots = asyncio.Semaphore(limit)
        self.lock = threading.Lock()  # idle is touched from worker threads
        self.zone: str | None = None  # the sessions' TimeZone, asked once
        self.database: Any = None  # ADBC's database: the driver and the DSN


class ArrowReader:
    """Reads one statement on PostgreSQL shards into Arrow tables (see the module docstring).

    ``read`` returns the table of one shard's result (ADBC's types, with the
    column metadata it adds), and the session's ``TimeZone``.
    """

    def __init__(self, config: Config):
        from psycopg.conninfo import make_conninfo

        self._secrets = config.secrets
        self._closed = False
        self._shards: dict[str, _Shard] = {}
        for shard in config.shards:
            extra = {} if "connect_timeout" in shard.dsn else {"connect_timeout": 10}
            # A key=value string, whatever form the DSN had: libpq reads both.
            dsn = make_conninfo(shard.dsn, **extra)
            self._shards[shard.name] = _Shard(dsn, shard.pool_max_size)

    def __repr__(self) -> str:
        return f"<ArrowReader shards={list(self._shards)}>"

    def _connect(self, shard: _Shard) -> _Conn:
        # ADBC's own API, not its DB-API module: that one imports pandas and polars
        # (two seconds) for methods shardq does not call.
        manager = require("adbc_driver_manager", "adbc", "Arrow reads")
        with shard.lock:
            if shard.idle:
                return shard.idle.pop()
            database = shard.database
        if database is None:
            # Not under the lock: ADBC connects to the server here, and a server that
            # does not answer would hold every other read of the shard for connect_timeout.
            driver = require("adbc_driver_postgresql", "adbc", "Arrow reads")
            fresh = driver.connect(shard.dsn)
            with shard.lock:
                if shard.database is None:
                    shard.database, fresh = fresh, None
                database = shard.database
            if fresh is not None:  # another read's came first
                with contextlib.suppress(Exception):
                    fresh.close()
        conn = _Conn(manager, manager.AdbcConnection(database))
        if shard.zone is None:
            try:
                zone = conn.query("SELECT current_setting('TimeZone')")
            except BaseException:
                conn.close()  # not yet anyone's: it would be left open
                raise
            shard.zone = str(zone.column(0)[0].as_py())
        return conn

    def _run(
        self, shard: _Shard, sql: str, deadline: float | None, stop: threading.Event, on: list[Any]
    ) -> Any:
        """The thread's part: one statement on a connection of ``shard``, read whole.

        ``statement_timeout`` is the time left when the statement starts (set
        only when it changes); a read stopped or out of time before it
        starts does not start.
        """
        conn = self._connect(shard)
        reusable = False
        try:
            on.append(conn.statement)
            wanted = None if deadline is None else int((deadline - time.monotonic()) * 1000)
            if stop.is_set() or (wanted is not None and wanted <= 0):
                raise _Stopped
            if wanted != conn.timeout_ms:
                # DEFAULT: the session's own (a DSN's options may set one), as psycopg's.
                conn.update(f"SET statement_timeout = {'DEFAULT' if wanted is None else wanted}")
                conn.timeout_ms = wanted
            table = conn.query(sql)
            reusable = True
            return table
        finally:
            with shard.lock:
                # Not after a cancel request (one still on its way would stop the next
                # statement), nor into a closed reader's pool (a read left to its thread).
                keep = reusable and not stop.is_set() and not self._closed
                if keep:
                    shard.idle.append(conn)
            if not keep:
                conn.close()

    def _work(
        self,
        shard: _Shard,
        sql: str,
        deadline: float | None,
        stop: threading.Event,
        on: list[Any],
        then: Callable[[Any, str], Any],
    ) -> Any:
        # Its connection is back in the pool before ``then`` works on the table.
        table = self._run(shard, sql, deadline, stop, on)
        return then(table, shard.zone or "UTC")

    async def read(
        self, name: str, sql: str, *, timeout: float | None, then: Callable[[Any, str], Any]
    ) -> Any:
        """Run ``sql`` on shard ``name``; ``then(table, session zone)`` of its result.

        ``then`` runs in the read's thread too (pyarrow's compute releases the
        GIL: a shard's table is worked on while the others still read).

        Raises:
            QueryTimeoutError: ``timeout`` seconds passed (the read is cancelled
                on the server).
            ShardError: the shard refused or failed, its message scrubbed.
        """
        shard = self._shards[name]
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            # The wait for a connection counts in the statement's time, as in a pool.
            await asyncio.wait_for(shard.slots.acquire(), _left(deadline))
        except TimeoutError:
            raise QueryTimeoutError(timeout or 0.0, (name,)) from None
        # The slot is the thread's: given back when it returns, even after the read gave up.
        stop = threading.Event()
        on: list[Any] = []
        try:
            work = _threaded(lambda: self._work(shard, sql, deadline, stop, on, then))
        except BaseException:
            shard.slots.release()
            raise
        work.add_done_callback(lambda _: shard.slots.release())
        try:
            done = await asyncio.wait_for(asyncio.shield(work), _left(deadline))
        except (TimeoutError, asyncio.CancelledError) as stopped:
            await _cancel(work, stop, on)
            if isinstance(stopped, TimeoutError):
                raise QueryTimeoutError(timeout or 0.0, (name,)) from None
            raise
        except _Stopped:
            raise QueryTimeoutError(timeout or 0.0, (name,)) from None
        except shardq_errors.Error:
            raise  # then()'s own (a value with no Arrow form)
        except Exception as exc:
            if _sqlstate(exc) == "57014" and timeout is not None:  # our statement_timeout
                raise QueryTimeoutError(timeout, (name,)) from None
            if exc.args and isinstance(exc.args[0], str):
                exc.args = (_pg_message(exc.args[0]), *exc.args[1:])
            raise translate_error(name, exc, self._secrets, sqlstate_of=_sqlstate) from exc
        return done

    async def close(self) -> None:
        """Close every idle connection (reads still running close theirs)."""
        self._closed = True
        for shard in self._shards.values():
            with shard.lock:
                idle, shard.idle = shard.idle, []
            for conn in idle:
                await asyncio.to_thread(conn.close)
            database, shard.database = shard.database, None
            if database is not None:
                with contextlib.suppress(Exception):
                    database.close()


async def read_all(
    reader: ArrowReader,
    sql: str,
    shards: Sequence[str],
    timeout: float | None,
    deadline: float | None,
    then: Callable[[pyarrow.Table, str], _T],
) -> list[_T]:
    """Run ``sql`` on ``shards`` at once into Arrow: ``then(table, session zone)`` of each.

    The first failure cancels the other shards' reads (on their servers) and
    is raised; the time left until ``deadline`` bounds each read.
    """
    left = None if deadline is None else max(deadline - time.monotonic(), 0.001)
    try:
        with first_failure():
            async with asyncio.TaskGroup() as group:
                tasks = [
                    group.create_task(reader.read(shard, sql, timeout=left, then=then))
                    for shard in shards
                ]
    except QueryTimeoutError as late:  # the statement's timeout, not the time left
        raise QueryTimeoutError(timeout or late.timeout, late.shards) from None
    return [task.result() for task in tasks]
