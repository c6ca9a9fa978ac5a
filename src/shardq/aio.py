"""The asyncio API: :class:`AsyncConnection` and :class:`AsyncCursor`.

This is shardq's core; the DB-API facade in :mod:`shardq.dbapi` is a thin
blocking layer over it.

Example::

    async with shardq.AsyncConnection("shardq.toml") as conn:
        cur = await conn.execute("SELECT * FROM orders WHERE customer_id = %s", [42])
        async for row in cur:
            print(row)
"""

from __future__ import annotations

import contextlib
import os
import weakref
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Self

from shardq.config import Config, load_config
from shardq.engine import DEFAULT_FETCH_SIZE, Engine
from shardq.errors import InterfaceError, ProgrammingError
from shardq.health import CheckReport, check
from shardq.rows import RowFactory, tuple_row

if TYPE_CHECKING:
    from types import TracebackType

    from shardq.execute.driver import Column
    from shardq.results import AsyncResult

__all__ = ["AsyncConnection", "AsyncCursor", "connect_async"]

ConfigSource = str | os.PathLike[str] | Mapping[str, Any] | Config


class AsyncCursor:
    """Runs statements and reads their results, like psycopg's ``AsyncCursor``."""

    arraysize: int = 1

    def __init__(self, connection: AsyncConnection, row_factory: RowFactory):
        self.connection = connection
        self.row_factory = row_factory
        self._result: AsyncResult | None = None
        self._rowcount = -1
        self.closed = False

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<shardq.AsyncCursor {state}>"

    @property
    def description(self) -> tuple[Column, ...] | None:
        """The columns of the last result (PEP 249), or ``None`` if it returned no rows."""
        return None if self._result is None else self._result.description

    @property
    def rowcount(self) -> int:
        """Rows written by the last write, or read by the last read once exhausted; else -1."""
        if self._result is not None:
            return self._result.rowcount
        return self._rowcount

    @property
    def shards(self) -> tuple[str, ...]:
        """The shards the last statement ran on."""
        return () if self._result is None else self._result.shards

    def _check_open(self) -> None:
        if self.closed:
            raise InterfaceError("the cursor is closed")
        self.connection._check_open()

    async def execute(
        self,
        sql: str,
        params: Sequence[Any] | Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> Self:
        """Run one statement on the shards that can hold its rows.

        Args:
            sql: one statement in the configuration's dialect.
            params: values for its placeholders, bound by the driver.
            timeout: seconds the statement may take on the shards, from now to
                its last row; on expiry it is cancelled on the servers and
                :class:`~shardq.errors.QueryTimeoutError` is raised. Defaults
                to the connection's ``timeout``.
        """
        self._check_open()
        await self._discard()
        if timeout is None:
            timeout = self.connection.timeout
        self._result = await self.connection._engine.execute(
            sql, params, timeout=timeout, row_factory=self.row_factory
        )
        if not self._result.closed:
            self.connection._open_results.add(self._result)
        return self

    async def executemany(
        self,
        sql: str,
        params_seq: Iterable[Sequence[Any] | Mapping[str, Any]],
        *,
        timeout: float | None = None,
    ) -> None:
        """Run ``sql`` once per parameter set, each routed to its own shard."""
        total = 0
        for params in params_seq:
            await self.execute(sql, params, timeout=timeout)
            if self.rowcount > 0:
                total += self.rowcount
            await self._discard()
        self._rowcount = total

    async def _discard(self) -> None:
        result, self._result = self._result, None
        if result is not None:
            await result.close()

    def _current(self) -> AsyncResult:
        self._check_open()
        if self._result is None:
            raise ProgrammingError("no statement has been executed")
        if self._result.description is None:
            raise ProgrammingError("the last statement returned no rows")
        return self._result

    async def fetchone(self) -> Any | None:
        return await self._current().fetchone()

    async def fetchmany(self, size: int | None = None) -> list[Any]:
        return await self._current().fetchmany(self.arraysize if size is None else size)

    async def fetchall(self) -> list[Any]:
        return await self._current().fetchall()

    async def next_batch(self) -> list[Any]:
        """Return the next batch of rows as they arrive ([] at the end)."""
        return await self._current().next_batch()

    @property
    def in_memory(self) -> bool:
        """Whether the rest of the last result is already received (reading needs no IO)."""
        return self._result is None or self._result.in_memory

    async def __aiter__(self) -> AsyncIterator[Any]:
        result = self._current()
        async for row in result:
            yield row

    async def close(self) -> None:
        """Close the cursor, cancelling what its last statement still runs."""
        if not self.closed:
            await self._discard()
            self.closed = True

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


class AsyncConnection:
    """N shards that feel like one connection (asyncio).

    ``AsyncConnection(config)``, :func:`connect_async` and
    ``await AsyncConnection.connect(config)`` are equivalent; ``config`` is a
    TOML path, a dict or a :class:`~shardq.config.Config`. Shard connections
    are opened lazily, on first use, and closed by :meth:`close` (or at the
    end of ``async with``).

    Attributes:
        config: the validated configuration.
        row_factory: how rows are built (:mod:`shardq.rows`); tuples by default.
        timeout: the default ``timeout=`` of every statement, in seconds.
    """

    def __init__(
        self,
        config: ConfigSource | Engine,
        *,
        row_factory: RowFactory = tuple_row,
        timeout: float | None = None,
        fetch_size: int = DEFAULT_FETCH_SIZE,
    ):
        engine = (
            config
            if isinstance(config, Engine)
            else Engine.from_config(load_config(config), fetch_size=fetch_size)
        )
        self._engine = engine
        self.config = engine.config
        self.row_factory = row_factory
        self.timeout = timeout
        self.closed = False
        # Results still holding shard connections, closed with the connection.
        self._open_results: weakref.WeakSet[AsyncResult] = weakref.WeakSet()

    @classmethod
    async def connect(
        cls,
        config: ConfigSource,
        *,
        row_factory: RowFactory = tuple_row,
        timeout: float | None = None,
        fetch_size: int = DEFAULT_FETCH_SIZE,
    ) -> Self:
        """Validate ``config`` (a TOML path, a dict or a Config) and open a connection."""
        return cls(config, row_factory=row_factory, timeout=timeout, fetch_size=fetch_size)

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        names = ", ".join(self.config.shard_names)
        return f"<shardq.AsyncConnection {self.config.dialect} shards=[{names}] {state}>"

    @property
    def paramstyle(self) -> str:
        """The placeholder style of this connection's dialect (PEP 249 name)."""
        return "pyformat" if self.config.dialect == "postgres" else "qmark"

    def _check_open(self) -> None:
        if self.closed:
            raise InterfaceError("the connection is closed")

    def cursor(self, *, row_factory: RowFactory | None = None) -> AsyncCursor:
        """Return a new cursor (rows built by ``row_factory``, default the connection's)."""
        self._check_open()
        return AsyncCursor(self, row_factory or self.row_factory)

    async def execute(
        self,
        sql: str,
        params: Sequence[Any] | Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> AsyncCursor:
        """Run a statement on a new cursor and return the cursor (as psycopg does)."""
        return await self.cursor().execute(sql, params, timeout=timeout)

    def shard_for(self, table: str, key_value: object) -> str:
        """Return the name of the shard holding ``table``'s rows whose key is ``key_value``."""
        return self.config.shard_for(table, key_value)

    async def explain(
        self,
        sql: str,
        params: Sequence[Any] | Mapping[str, Any] | None = None,
        *,
        analyze: bool = False,
        timeout: float | None = None,
    ) -> str:
        """Describe how ``sql`` runs: target shards, per-shard SQL, merge steps.

        With ``analyze=True`` the statement (a read) runs too, and the text
        adds each shard's row count and time.
        """
        self._check_open()
        return await self._engine.explain(
            sql, params, analyze=analyze, timeout=timeout if timeout is not None else self.timeout
        )

    async def check(self) -> CheckReport:
        """Connect to every shard; report versions, round trips and table consistency."""
        self._check_open()
        return await check(self._engine)

    async def commit(self) -> None:
        """Nothing to do: every statement commits on its shard when it ends (autocommit)."""
        self._check_open()

    async def close(self) -> None:
        """Stop every result still being read, then close every shard's pool."""
        if not self.closed:
            self.closed = True
            for result in list(self._open_results):
                with contextlib.suppress(Exception):
                    await result.close()
            await self._engine.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


async def connect_async(
    config: ConfigSource,
    *,
    row_factory: RowFactory = tuple_row,
    timeout: float | None = None,
    fetch_size: int = DEFAULT_FETCH_SIZE,
) -> AsyncConnection:
    """Open an :class:`AsyncConnection` over the shards of ``config``."""
    return await AsyncConnection.connect(
        config, row_factory=row_factory, timeout=timeout, fetch_size=fetch_size
    )
