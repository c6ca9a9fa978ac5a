"""PostgreSQL shards' rows read straight into Arrow, with ADBC's libpq driver.

The row path decodes every value into a Python object (psycopg) before
:mod:`shardq.export` builds Arrow columns from them; for a large read that
is most of the time. ADBC's PostgreSQL driver (``adbc-driver-postgresql``,
the ``shardq[adbc]`` extra) reads a result with ``COPY ... TO STDOUT
(FORMAT binary)`` and decodes it into Arrow in C++, with no Python object
per value. Measured here (``benchmarks/arrow.py``) it was faster than
decoding psycopg's binary COPY into Arrow could be from Python, so it is the
one columnar reader.

ADBC's calls block, so each shard's read runs in a thread. Its connections
are its own (ADBC cannot use psycopg's), opened from the shard's DSN on
first use, kept idle for the next read and closed with the engine; a shard
has at most ``pool_max_size`` of them reading at once, as its psycopg pool.
The statement's deadline is honoured twice: ``statement_timeout`` is set on
the server for the read, and when the time runs out (or the awaiting task
is cancelled) the read is cancelled on the server from the event loop
(``AdbcStatementCancel``, a libpq cancel request), then waited for, so no
thread outlives its statement. Errors pass :func:`translate_error` with the
configuration's secrets (a driver message can quote the connection string).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shardq.errors import QueryTimeoutError
from shardq.execute.driver import translate_error
from shardq.execute.tasks import first_failure
from shardq.export import require

if TYPE_CHECKING:
    from collections.abc import Sequence

    import pyarrow

    from shardq.config import Config
    from shardq.sql.plan import QueryPlan

__all__ = ["ArrowReader", "ColumnarRead", "available", "read_all"]


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
    """Whether ADBC's PostgreSQL driver and pyarrow are installed."""
    try:
        require("adbc_driver_postgresql.dbapi", "adbc", "Arrow reads")
        require("pyarrow", "arrow", "Arrow reads")
    except ImportError:
        return False
    return True


def _sqlstate(exc: BaseException) -> str | None:
    state = getattr(exc, "sqlstate", None)
    return state if isinstance(state, str) and state else None


class _Shard:
    """One shard's idle ADBC connections and the bound on those reading at once."""

    def __init__(self, dsn: str, limit: int):
        self.dsn = dsn
        self.idle: list[Any] = []
        self.slots = asyncio.Semaphore(limit)
        self.lock = threading.Lock()  # idle is touched from worker threads
        self.zone: str | None = None  # the sessions' TimeZone, asked once


class ArrowReader:
    """Reads one statement on PostgreSQL shards into Arrow tables (see the module docstring).

    ``read`` returns the table of one shard's result (ADBC's types, with the
    column metadata it adds), and the session's ``TimeZone``.
    """

    def __init__(self, config: Config):
        from psycopg.conninfo import make_conninfo

        self._secrets = config.secrets
        self._shards: dict[str, _Shard] = {}
        for shard in config.shards:
            extra = {} if "connect_timeout" in shard.dsn else {"connect_timeout": 10}
            # A key=value string, whatever form the DSN had: libpq reads both.
            dsn = make_conninfo(shard.dsn, **extra)
            self._shards[shard.name] = _Shard(dsn, shard.pool_max_size)

    def __repr__(self) -> str:
        return f"<ArrowReader shards={list(self._shards)}>"

    def _connect(self, shard: _Shard) -> Any:
        with shard.lock:
            if shard.idle:
                return shard.idle.pop()
        dbapi = require("adbc_driver_postgresql.dbapi", "adbc", "Arrow reads")
        conn = dbapi.connect(shard.dsn, autocommit=True)
        if shard.zone is None:
            with conn.cursor() as cursor:
                cursor.execute("SELECT current_setting('TimeZone')")
                shard.zone = str(cursor.fetchone()[0])
        return conn

    def _run(self, shard: _Shard, sql: str, timeout_ms: int, started: list[Any]) -> Any:
        """The thread's part: one statement on a connection of ``shard``, read whole."""
        conn = self._connect(shard)
        reusable = False
        try:
            with conn.cursor() as cursor:
                started.append(cursor)
                cursor.execute(f"SET statement_timeout = {timeout_ms}")
                cursor.execute(sql)
                table = cursor.fetch_arrow_table()
                if timeout_ms:
                    cursor.execute("SET statement_timeout = 0")
            reusable = True
            return table
        finally:
            if reusable:
                with shard.lock:
                    shard.idle.append(conn)
            else:
                with contextlib.suppress(Exception):
                    conn.close()

    async def read(self, name: str, sql: str, *, timeout: float | None) -> tuple[Any, str]:
        """Run ``sql`` on shard ``name``; its result as an Arrow table, and the session zone.

        Raises:
            QueryTimeoutError: ``timeout`` seconds passed (the read is cancelled
                on the server).
            ShardError: the shard refused or failed, its message scrubbed.
        """
        shard = self._shards[name]
        async with shard.slots:
            timeout_ms = 0 if timeout is None else max(1, int(timeout * 1000))
            started: list[Any] = []
            work = asyncio.ensure_future(
                asyncio.to_thread(self._run, shard, sql, timeout_ms, started)
            )
            try:
                table = await asyncio.wait_for(asyncio.shield(work), timeout)
            except (TimeoutError, asyncio.CancelledError) as stopped:
                # Cancel on the server, then wait for the thread: its connection
                # is closed (not reused) since its statement did not finish.
                for cursor in started:
                    with contextlib.suppress(Exception):
                        cursor.adbc_cancel()
                with contextlib.suppress(BaseException):
                    await work
                if isinstance(stopped, TimeoutError):
                    raise QueryTimeoutError(timeout or 0.0, (name,)) from None
                raise
            except Exception as exc:
                if "statement timeout" in str(exc) or _sqlstate(exc) == "57014":
                    raise QueryTimeoutError(timeout or 0.0, (name,)) from None
                raise translate_error(name, exc, self._secrets, sqlstate_of=_sqlstate) from exc
        return table, shard.zone or "UTC"

    async def close(self) -> None:
        """Close every idle connection (reads still running close theirs)."""
        for shard in self._shards.values():
            with shard.lock:
                idle, shard.idle = shard.idle, []
            for conn in idle:
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(conn.close)


async def read_all(
    reader: ArrowReader,
    sql: str,
    shards: Sequence[str],
    timeout: float | None,
    deadline: float | None,
) -> list[tuple[pyarrow.Table, str]]:
    """Run ``sql`` on ``shards`` at once into Arrow: each one's table and session zone.

    The first failure cancels the other shards' reads (on their servers) and
    is raised; the time left until ``deadline`` bounds each read.
    """
    left = None if deadline is None else max(deadline - time.monotonic(), 0.001)
    try:
        with first_failure():
            async with asyncio.TaskGroup() as group:
                tasks = [
                    group.create_task(reader.read(shard, sql, timeout=left)) for shard in shards
                ]
    except QueryTimeoutError as late:  # the statement's timeout, not the time left
        raise QueryTimeoutError(timeout or late.timeout, late.shards) from None
    return [task.result() for task in tasks]
