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
import functools
import os
import weakref
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Callable,
    Iterable,
    Mapping,
    Sequence,
)
from typing import TYPE_CHECKING, Any, Literal, Self

from shardq import tracing
from shardq.cache.regions import CacheChoice, Regions
from shardq.config import Config, load_config
from shardq.engine import DEFAULT_FETCH_SIZE, Engine
from shardq.errors import InterfaceError, NotSupportedError, ProgrammingError
from shardq.execute.batch import ExecutionResult, Progress, run_batch
from shardq.execute.copy import CopyProgress, CopyResult, CsvFormat, copy_in
from shardq.execute.hosts import check_policy
from shardq.execute.lanes import Lanes
from shardq.execute.transaction import Transaction
from shardq.execute.twophase import RECOVERY_WAIT, Recovery, recover
from shardq.export import TableBuilder, require, rows_as_tuples, to_pandas, to_polars
from shardq.health import CheckReport, check
from shardq.results import AsyncResult, StoredResult, issue
from shardq.rows import RowFactory, tuple_row
from shardq.sql.analyze import StatementKind
from shardq.sql.route import written_table
from shardq.statements import as_statement, compiler, is_many, statement_text

if TYPE_CHECKING:
    from contextlib import AbstractAsyncContextManager
    from types import TracebackType

    import pandas
    import polars
    import pyarrow

    from shardq.cache.backend import Result
    from shardq.execute.driver import Column
    from shardq.results import ResultSet
    from shardq.statements import SQL
    from shardq.stats import HostStats
    from shardq.verify import VerifyResult

__all__ = ["DEFAULT_CONCURRENCY", "AsyncConnection", "AsyncCursor", "connect_async"]

#: Statements in flight at once in a batch, unless told otherwise.
DEFAULT_CONCURRENCY = 100

ConfigSource = str | os.PathLike[str] | Mapping[str, Any] | Config


class AsyncCursor:
    """Runs statements and reads their results, like psycopg's ``AsyncCursor``."""

    arraysize: int = 1

    def __init__(self, connection: AsyncConnection, row_factory: RowFactory):
        self.connection = connection
        self.row_factory = row_factory
        self._result: AsyncResult | StoredResult | None = None
        self._rowcount = -1
        self.closed = False
        # The sync facade issues warnings itself, in its caller's thread.
        self._hold_warnings = False
        #: How the last fetch_arrow_table() read its rows: "adbc" (straight into
        #: Arrow, merged on Arrow data) or "rows" (the rows fetchall() gives); None before.
        self.arrow_path: str | None = None
        #: Why the last fetch_arrow_table() read rows ("rows"), else None.
        self.arrow_fallback: str | None = None

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

    @property
    def missing_shards(self) -> tuple[str, ...]:
        """The shards a partial read (``allow_partial``) left out so far; empty if none.

        Grows while the rows are read if a shard fails then. Each is named by
        a :class:`~shardq.PartialResultWarning` too.
        """
        return () if self._result is None else self._result.missing_shards

    def _issue(self, stacklevel: int = 2) -> None:
        """Issue the result's :class:`~shardq.PartialResultWarning`, if any, at the caller."""
        if self._result is not None and not self._hold_warnings:
            issue(self._result.take_warnings(), stacklevel + 1)

    def _check_open(self) -> None:
        if self.closed:
            raise InterfaceError("the cursor is closed")
        self.connection._check_open()

    @tracing.statement_span
    async def execute(
        self,
        sql: SQL,
        params: Sequence[Any] | Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
        cache: CacheChoice = None,
        cache_key: str | None = None,
        read_policy: str | None = None,
        allow_partial: bool | None = None,
        max_gather_rows: int | None = None,
    ) -> Self:
        """Run one statement on the shards that can hold its rows.

        Args:
            sql: one statement in the configuration's dialect, or a SQLAlchemy
                Core statement (compiled for that dialect as a batch compiles
                it, its bound values kept as parameters).
            params: values for its placeholders, bound by the driver; for a
                SQLAlchemy statement, a mapping of its bound parameters' names
                to values, over those written in the statement.
            timeout: seconds the statement may take on the shards, from now to
                its last row; on expiry it is cancelled on the servers and
                :class:`~shardq.errors.QueryTimeoutError` is raised. Defaults
                to the connection's ``timeout``.
            cache: serve a read from the result cache (see
                :mod:`shardq.cache`): True for the default region, a region's
                name, a :class:`~shardq.cache.CacheRegion`, or False; None
                (the default) follows the connection's ``cache``. A cached
                read is received whole.
            cache_key: the cache key to use instead of the statement and its
                parameters (still kept apart per user and shards).
            read_policy: which host of each shard a read outside a
                transaction goes to (:mod:`shardq.execute.hosts`); defaults
                to the connection's ``read_policy``.
            allow_partial: for a read outside a transaction, leave out the
                shards that fail (unreachable, lost, shutting down) or time
                out instead of raising, and name them in
                :attr:`missing_shards` and a :class:`~shardq.PartialResultWarning`;
                defaults to the connection's ``allow_partial`` (False). An
                error of the statement itself is raised all the same, and so
                is a failure of every shard. True for a write or in a
                transaction is a :class:`~shardq.ProgrammingError`: they are
                whole or fail.
            max_gather_rows: the most rows a read no merge answers may move
                to the one shard it is gathered to (README, "Gather to one
                shard"); defaults to the configuration's ``max_gather_rows``.
        """
        self._check_open()
        await self._discard()
        connection = self.connection
        policy = connection.read_policy if read_policy is None else check_policy(read_policy)
        partial = connection.allow_partial if allow_partial is None else bool(allow_partial)
        sql, params = as_statement((sql, params), connection.config.dialect)
        tracing.query(sql)
        if timeout is None:
            timeout = connection.timeout
        engine = connection._engine
        caches = connection._caches
        transaction = connection._transaction_for_statement()
        if allow_partial and (transaction is not None or engine.planner.analyze(sql).kind.is_write):
            raise ProgrammingError(
                "allow_partial is for reads outside a transaction: a write, and every "
                "statement of a transaction, runs on all of its shards or fails"
            )
        if transaction is not None:
            # Reads see the transaction's own writes: never from the cache. Writes
            # invalidate it when they commit.
            if cache is not None and cache is not False:
                raise ProgrammingError("a read inside a transaction is not cached")
            written_in = caches.written(engine.planner, sql) if caches.configured else ()
            self._result = await engine.execute(
                sql, params, timeout=timeout, row_factory=self.row_factory,
                transaction=transaction,
            )  # fmt: skip
            connection._invalidate_at_commit.update(written_in)
            return self
        region = caches.pick(cache)
        if region is not None:

            async def compute() -> Result:
                tracing.cache_hit(False)
                return await engine.read_all(sql, params, timeout=timeout)

            cached = await caches.read(region, engine.planner, sql, params, cache_key, compute)
            if cached is not None:
                tracing.cache_hit(True)
                self._result = StoredResult(*cached, self.row_factory)
                return self
            if cache is not None and cache is not False:
                raise ProgrammingError(
                    "only reads are cached: this statement writes (leave cache= unset)"
                )
        written = caches.written(engine.planner, sql) if caches.configured else ()
        try:
            self._result = await engine.execute(
                sql,
                params,
                timeout=timeout,
                row_factory=self.row_factory,
                read_policy=policy,
                primary_for=connection._written_shards if connection.read_your_writes else (),
                allow_partial=partial,
                max_gather_rows=max_gather_rows,
            )
            if engine.planner.analyze(sql).kind.is_write:
                connection._written_shards.update(self._result.shards)
        finally:
            if written:  # even when it failed: it may have committed before the error
                await caches.invalidate(written)
        if isinstance(self._result, AsyncResult) and not self._result.closed:
            connection._open_results.add(self._result)
        self._issue()
        return self

    async def executemany(
        self,
        sql: SQL,
        params_seq: Iterable[Sequence[Any] | Mapping[str, Any]] | AsyncIterable[Any],
        *,
        timeout: float | None = None,
        concurrency: int = DEFAULT_CONCURRENCY,
    ) -> None:
        """Run ``sql`` once per parameter set, each routed to its own shard.

        ``sql`` is text or a SQLAlchemy Core statement (compiled once; each
        parameter set is then a mapping of its bound parameters' names).

        The statements run concurrently (``concurrency`` at most at once,
        prepared once per connection), through the batch machinery of
        :meth:`AsyncConnection.execute_concurrent_with_args`; each shard runs
        its own statements in the order given, so writes to one key apply in
        order. The first failure stops the rest and is raised; statements on
        other shards may have run by then (each commits on its own).
        :attr:`rowcount` is the total of rows written.

        Inside a transaction (or with autocommit off) the parameter sets run
        one after another as :meth:`execute` runs them, on the transaction's
        connections, so they commit or roll back with it: a batch's
        concurrent statements would run on connections of their own. So do
        writes to a reference table, each of which changes every copy in one
        atomic write, as :meth:`execute` does, and, given as a list or tuple,
        parameter sets of an UPDATE or DELETE of which one writes several
        shards (unpinned by the key, or moving a row).
        """
        self._check_open()
        await self._discard()
        connection = self.connection
        if (
            connection._transaction is not None
            or not connection._autocommit
            or self._writes_every_shard(sql)
            or self._spans_shards(sql, params_seq)
        ):
            await self._execute_each(sql, params_seq, timeout)
            return
        total = 0
        async for outcome in self.connection._with_args(
            sql,
            params_seq,
            concurrency=concurrency,
            raise_on_first_error=True,
            window=None,
            timeout=timeout,
            progress=None,
            row_factory=self.row_factory,
            ordered=True,
        ):
            if outcome.result_or_exc.rowcount > 0:
                total += outcome.result_or_exc.rowcount
            shards = getattr(outcome.result_or_exc, "shards", ())
            connection._written_shards.update(shards)
        self._rowcount = total

    async def copy_in(
        self,
        table: str,
        source: object,
        columns: Sequence[str] | None = None,
        *,
        header: bool = False,
        delimiter: str = ",",
        quote: str = '"',
        escape: str | None = None,
        null: str = "",
        encoding: str = "utf-8",
        atomic: bool = True,
        progress: Callable[[CopyProgress], object] | None = None,
    ) -> CopyResult:
        """:meth:`AsyncConnection.copy_in`, with :attr:`rowcount` the rows loaded.

        As psycopg's ``cursor.copy()`` leaves its cursor's ``rowcount``: code
        given a cursor (a DB-API ``executemany`` done as a load, pandas'
        ``to_sql``) reports the load as it would report the INSERTs.
        """
        self._check_open()
        await self._discard()
        self._rowcount = -1
        result = await self.connection.copy_in(
            table, source, columns,
            header=header, delimiter=delimiter, quote=quote, escape=escape, null=null,
            encoding=encoding, atomic=atomic, progress=progress,
        )  # fmt: skip
        self._rowcount = result.rowcount
        return result

    def _writes_every_shard(self, sql: SQL) -> bool:
        """Whether ``sql`` writes a reference table (every shard, whatever its parameters)."""
        connection = self.connection
        text = statement_text(sql, connection.config.dialect)
        written = written_table(connection._engine.planner.analyze(text))
        return written is not None and not written.table.distributed

    def _spans_shards(self, sql: SQL, params_seq: object) -> bool:
        """Whether an UPDATE or DELETE writes several shards for one of ``params_seq``.

        Such a write commits on its shards together (two-phase commit), which
        a batch's concurrent statements do not do: the parameter sets then
        run one after another, each as :meth:`execute` runs it. Only a list or
        tuple of parameter sets can be looked at before it runs; an iterator's
        goes to the batch, which refuses such a write.
        """
        if not isinstance(params_seq, list | tuple):
            return False
        connection = self.connection
        dialect = connection.config.dialect
        planner = connection._engine.planner
        kind = planner.analyze(statement_text(sql, dialect)).kind
        if kind not in (StatementKind.UPDATE, StatementKind.DELETE):
            return False
        shards = connection.config.shard_names
        for params in params_seq:
            plan = planner.plan(*as_statement((sql, params), dialect))
            if plan.move is not None or len(plan.route.resolve(shards, shards[0])) > 1:
                return True
        return False

    async def _execute_each(
        self,
        sql: SQL,
        params_seq: Iterable[Sequence[Any] | Mapping[str, Any]] | AsyncIterable[Any],
        timeout: float | None,
    ) -> None:
        """:meth:`executemany` one parameter set after another, each as :meth:`execute`."""
        total = 0
        index = 0

        async def each() -> AsyncIterator[Any]:
            if isinstance(params_seq, AsyncIterable):
                async for params in params_seq:
                    yield params
            else:
                for params in params_seq:
                    yield params

        try:
            async for params in each():
                await self.execute(sql, params, timeout=timeout)
                total += max(self.rowcount, 0)
                index += 1
        except Exception as exc:
            exc.add_note(f"(parameter set {index} of executemany, counting from 0)")
            raise
        finally:
            await self._discard()
            self._rowcount = total

    async def _discard(self) -> None:
        result, self._result = self._result, None
        if result is not None:
            await result.close()

    def _current(self) -> AsyncResult | StoredResult:
        self._check_open()
        if self._result is None:
            raise ProgrammingError("no statement has been executed")
        if self._result.description is None:
            raise ProgrammingError("the last statement returned no rows")
        return self._result

    async def fetchone(self) -> Any | None:
        row = await self._current().fetchone()
        self._issue()
        return row

    async def fetchmany(self, size: int | None = None) -> list[Any]:
        rows = await self._current().fetchmany(self.arraysize if size is None else size)
        self._issue()
        return rows

    async def fetchall(self) -> list[Any]:
        rows = await self._current().fetchall()
        self._issue()
        return rows

    async def next_batch(self) -> list[Any]:
        """Return the next batch of rows as they arrive ([] at the end)."""
        rows = await self._current().next_batch()
        self._issue()
        return rows

    async def fetch_arrow_table(self) -> pyarrow.Table:
        """Return the rest of the result as a ``pyarrow.Table``, as :meth:`fetchall` would.

        The ADBC DB-API extension's name, so polars' ``read_database`` and
        other tools that look for it use it. Types follow the columns'
        (:mod:`shardq.export` has the mapping); an empty result keeps its
        schema. Needs ``pip install 'shardq[arrow]'``.
        """
        result = self._current()
        return await self._arrow_table([], isinstance(result, AsyncResult) and result.untouched)

    async def _arrow_table(self, first: list[Any], untouched: bool) -> pyarrow.Table:
        """The table of ``first`` (rows already taken from the result) and the rest.

        A read no row of which was taken by the caller (``untouched``) is read
        again straight into Arrow when the connection's :attr:`~AsyncConnection.arrow_reads`
        and the read allow it (see :mod:`shardq.execute.arrowread`); else the
        rows are built into columns. :attr:`arrow_path` tells which was done.
        """
        result = self._current()
        assert result.description is not None
        why = self._columnar_refused(result, untouched)
        if why is None and isinstance(result, AsyncResult):
            read = result.columnar
            assert not isinstance(read, str)
            await result.close()  # its statements are cancelled on the shards
            engine = self.connection._engine
            found = await engine.read_columnar(read)
            if not isinstance(found, str):
                await result.replaced(found.num_rows)
                self.arrow_path, self.arrow_fallback = "adbc", None
                return found
            # A column ADBC describes otherwise (rare): the rows, read again.
            self._result = await engine.execute(
                read.statement, read.params, timeout=read.timeout, row_factory=self.row_factory
            )
            first, why = [], found
        self.arrow_path, self.arrow_fallback = "rows", why
        return await self._rows_table(first)

    async def _rows_table(self, first: list[Any]) -> pyarrow.Table:
        """The table built from ``first`` and the rest of the result's rows."""
        result = self._current()
        assert result.description is not None
        builder = TableBuilder(result.description)
        builder.add(rows_as_tuples(first))
        while batch := await result.next_batch():
            builder.add(rows_as_tuples(batch))
            self._issue()
        self._issue()
        return builder.finish()

    def _columnar_refused(self, result: AsyncResult | StoredResult, untouched: bool) -> str | None:
        """Why ``result`` is not read again into Arrow; None when it is."""
        mode = self.connection.arrow_reads
        if mode != "adbc":
            return f"arrow_reads is {mode!r}"
        if not isinstance(result, AsyncResult):
            return "a result received whole (cached)"
        if isinstance(result.columnar, str):
            return result.columnar
        if not untouched:
            return "rows were taken from the result before"
        return None

    async def fetch_df(self) -> pandas.DataFrame:
        """Return the rest of the result as a pandas DataFrame (``shardq[pandas]``).

        The :meth:`fetch_arrow_table` table's ``to_pandas()``.
        """
        require("pandas", "pandas", "fetch_df()")
        return to_pandas(await self.fetch_arrow_table())

    async def fetch_polars(self) -> polars.DataFrame:
        """Return the rest of the result as a polars DataFrame (``shardq[polars]``).

        See :func:`shardq.export.to_polars` for the two types polars reads differently.
        """
        require("polars", "polars", "fetch_polars()")
        return to_polars(await self.fetch_arrow_table())

    @property
    def in_memory(self) -> bool:
        """Whether the rest of the last result is already received (reading needs no IO)."""
        return self._result is None or self._result.in_memory

    async def __aiter__(self) -> AsyncIterator[Any]:
        result = self._current()
        # Batch by batch, as the result iterates: a partial read's warnings are
        # issued when a batch arrives, not looked for at every row.
        buffer = result._buffer
        while await result._fill():
            self._issue()
            while buffer:
                yield buffer.popleft()
        self._issue()

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
        cache: CacheChoice = None,
        allow_partial: bool = False,
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
        self._caches = Regions(engine.config, cache)
        # Results still holding shard connections, closed with the connection.
        self._open_results: weakref.WeakSet[AsyncResult] = weakref.WeakSet()
        self._autocommit = True
        self._read_policy = engine.config.read_policy
        #: Whether reads of a shard this connection has written go to its primary.
        self.read_your_writes = engine.config.read_your_writes
        #: Whether reads outside a transaction leave out shards that cannot answer
        #: (the default of :meth:`AsyncCursor.execute`'s ``allow_partial``).
        self.allow_partial = allow_partial
        # The shards this connection has written (committed), for read_your_writes.
        self._written_shards: set[str] = set()
        self._transaction: Transaction | None = None
        # Tables written by the open transaction: their cached reads go at commit.
        self._invalidate_at_commit: set[str] = set()
        #: How reads into Arrow go on PostgreSQL shards: "auto" (read_arrow() reads
        #: straight into Arrow with ADBC when the read allows it; a cursor's
        #: fetch_arrow_table() builds the columns from the rows), "adbc" (fetch_arrow_table()
        #: too runs an executed read again with ADBC, when no row was taken from it) or
        #: "rows" (always from the rows fetchall() gives).
        self.arrow_reads: Literal["auto", "adbc", "rows"] = "auto"
        #: How the last read_arrow() read: "adbc" or "rows" (then arrow_fallback says why).
        self.arrow_path: str | None = None
        self.arrow_fallback: str | None = None

    @classmethod
    async def connect(
        cls,
        config: ConfigSource,
        *,
        row_factory: RowFactory = tuple_row,
        timeout: float | None = None,
        fetch_size: int = DEFAULT_FETCH_SIZE,
        cache: CacheChoice = None,
        allow_partial: bool = False,
    ) -> Self:
        """Validate ``config`` (a TOML path, a dict or a Config) and open a connection.

        With ``recover_on_connect = true`` in the configuration, it first
        finishes the two-phase commits left in doubt (:meth:`recover`).
        """
        conn = cls(
            config,
            row_factory=row_factory,
            timeout=timeout,
            fetch_size=fetch_size,
            cache=cache,
            allow_partial=allow_partial,
        )
        if conn.config.recover_on_connect:
            try:
                await conn.recover()
            except BaseException:
                await conn.close()
                raise
        return conn

    @property
    def read_policy(self) -> str:
        """Where reads outside a transaction go: ``primary`` (the default), ``prefer-replica``,
        ``replica-only`` or ``round-robin`` (see :mod:`shardq.execute.hosts`).

        Its first value is the configuration's ``read_policy``; writes and
        transactions always go to the primaries. With :attr:`read_your_writes`
        (the configuration's ``read_your_writes``, False by default) a shard
        this connection has written is read on its primary from then on, so
        the connection sees its own writes whatever the replicas have replayed.
        """
        return self._read_policy

    @read_policy.setter
    def read_policy(self, policy: str) -> None:
        self._read_policy = check_policy(policy)

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
        sql: Any,
        params: Any = None,
        *,
        timeout: float | None = None,
        cache: CacheChoice = None,
        cache_key: str | None = None,
        read_policy: str | None = None,
        allow_partial: bool | None = None,
        max_gather_rows: int | None = None,
    ) -> Any:
        """Run a statement on a new cursor and return the cursor (as psycopg does).

        ``cache``, ``cache_key``, ``read_policy``, ``allow_partial`` and ``max_gather_rows`` are
        :meth:`AsyncCursor.execute`'s. Given a
        list of statements (and optionally a list of their parameter sets, one
        per statement), run them concurrently as :meth:`gather` does and
        return the list of their :class:`~shardq.ResultSet`, in order.
        """
        if is_many(sql):
            if params is None:
                queries = list(sql)
            else:
                if not is_many(params) or len(params) != len(sql):
                    raise ProgrammingError(
                        "execute() of a list of statements takes a list of parameter sets "
                        f"of the same length ({len(sql)}), or none"
                    )
                queries = list(zip(sql, params, strict=True))
            return await self.gather(queries, timeout=timeout)
        cursor = self.cursor()
        cursor._hold_warnings = True
        await cursor.execute(
            sql,
            params,
            timeout=timeout,
            cache=cache,
            cache_key=cache_key,
            read_policy=read_policy,
            allow_partial=allow_partial,
            max_gather_rows=max_gather_rows,
        )
        cursor._hold_warnings = False
        cursor._issue()  # at this method's caller
        return cursor

    async def read_arrow(self, sql: Any, params: Any = None, **options: Any) -> pyarrow.Table:
        """Run a read and return its rows as a ``pyarrow.Table`` (``shardq[arrow]``).

        ``options`` are :meth:`execute`'s (``timeout``, ``cache``, ...). On
        PostgreSQL shards, with ``shardq[adbc]`` installed, a read outside a
        transaction whose merge the columnar path carries out is read
        straight into Arrow by ADBC and merged on Arrow data (README, "Arrow,
        pandas and polars"); anything else is read as rows, as
        :meth:`AsyncCursor.fetch_arrow_table` reads them. The same table
        either way; :attr:`arrow_path` and :attr:`arrow_fallback` tell which.
        """
        require("pyarrow", "arrow", "read_arrow()")
        self._check_open()
        why = self._arrow_refused(options)
        if why is None:
            statement, bound = as_statement((sql, params), self.config.dialect)
            tracing.query(statement)
            timeout = options.get("timeout")
            found = await self._engine.read_arrow(
                statement, bound, timeout=self.timeout if timeout is None else timeout
            )
            if not isinstance(found, str):
                self.arrow_path, self.arrow_fallback = "adbc", None
                return found
            why = found
        cursor = await self.execute(sql, params, **options)
        try:
            table: pyarrow.Table = await cursor._rows_table([])
        finally:
            await cursor.close()
        self.arrow_path, self.arrow_fallback = "rows", why
        return table

    def _arrow_refused(self, options: Mapping[str, Any]) -> str | None:
        """Why :meth:`read_arrow` with ``options`` reads rows, before any plan is made."""
        if self.arrow_reads == "rows":
            return "arrow_reads is 'rows'"
        if self._transaction_for_statement() is not None:
            return "a read in a transaction"
        if set(options) - {"timeout"}:
            return f"the option(s) {', '.join(sorted(set(options) - {'timeout'}))}"
        if self._caches.pick(None) is not None:
            return "a connection that caches reads"
        if self.allow_partial:
            return "a partial read"
        if self.read_policy != "primary":
            return f"the read policy {self.read_policy!r}"
        return None

    async def execute_concurrent(
        self,
        statements_and_params: Iterable[Any] | AsyncIterable[Any],
        concurrency: int = DEFAULT_CONCURRENCY,
        raise_on_first_error: bool = True,
        results_generator: bool = False,
        *,
        timeout: float | None = None,
        progress: Callable[[Progress], object] | None = None,
        row_factory: RowFactory | None = None,
    ) -> Any:
        """Run many statements concurrently; one :class:`ExecutionResult` each, in input order.

        Each statement is planned as :meth:`execute` plans it: routed to one
        shard when its parameters pin the shard key, scattered and merged
        otherwise. Each shard's statements run on connections held for the
        batch, reads sent as pipelines (one round trip for many statements).
        Results are read whole.

        Args:
            statements_and_params: SQL text, SQLAlchemy statements, or
                ``(statement, parameters)`` pairs; an iterator is consumed as
                the batch goes, so it may be endless.
            concurrency: the most statements in flight at once over the whole
                batch; each shard also opens at most its ``pool_max_size``
                connections.
            raise_on_first_error: the first failure stops the batch (nothing
                new starts, what is in flight is cancelled on the servers) and
                is raised, noted with the statement's index. With False every
                statement runs and a failure is ``ExecutionResult(False, exc)``.
            results_generator: return an async iterator yielding results in
                order as they become available, with at most ``2 *
                concurrency`` statements started and not yet yielded: a batch
                of millions runs in constant memory. Close it (``aclose()``)
                to stop the batch early.
            timeout: seconds each statement may take from its start
                (default: the connection's ``timeout``).
            progress: called with a :class:`Progress` after each statement.
            row_factory: how rows are built (default: the connection's).

        Returns:
            a list of :class:`ExecutionResult` (or an async iterator of them).
        """
        self._check_open()
        items, total = self._batch_items(statements_and_params, raise_on_first_error)
        results = self._batch(
            items,
            concurrency=concurrency,
            raise_on_first_error=raise_on_first_error,
            window=2 * concurrency if results_generator else None,
            timeout=timeout,
            progress=progress,
            row_factory=row_factory,
            total=total,
        )
        if results_generator:
            return results
        return [outcome async for outcome in results]

    async def execute_concurrent_with_args(
        self,
        statement: Any,
        parameters: Iterable[Any] | AsyncIterable[Any],
        concurrency: int = DEFAULT_CONCURRENCY,
        raise_on_first_error: bool = True,
        results_generator: bool = False,
        *,
        timeout: float | None = None,
        progress: Callable[[Progress], object] | None = None,
        row_factory: RowFactory | None = None,
    ) -> Any:
        """:meth:`execute_concurrent` of one statement with each parameter set in turn.

        The statement is parsed once (its analysis and rewrite are cached per
        text; only the routing is redone for each parameter set), and prepared
        on each shard connection that runs it. A SQLAlchemy statement is compiled once; each
        parameter set is then a mapping of its bound parameters' names.
        """
        self._check_open()
        results = self._with_args(
            statement,
            parameters,
            concurrency=concurrency,
            raise_on_first_error=raise_on_first_error,
            window=2 * concurrency if results_generator else None,
            timeout=timeout,
            progress=progress,
            row_factory=row_factory,
        )
        if results_generator:
            return results
        return [outcome async for outcome in results]

    async def gather(
        self,
        queries: Iterable[Any],
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        timeout: float | None = None,
        row_factory: RowFactory | None = None,
    ) -> list[ResultSet]:
        """Run several queries at once (each may be distributed); their results, in order.

        ``queries`` holds SQL text, SQLAlchemy statements or ``(statement,
        parameters)`` pairs. The first failure cancels the others and is raised.
        """
        results = await self.execute_concurrent(
            queries, concurrency, True, timeout=timeout, row_factory=row_factory
        )
        return [outcome.result_or_exc for outcome in results]

    def _batch_items(
        self, statements: Iterable[Any] | AsyncIterable[Any], check_first: bool
    ) -> tuple[Iterable[Any] | AsyncIterable[Any], int | None]:
        """The statements of a batch, and their number when known.

        A list checked before anything runs, when one error stops the batch:
        each distinct text is parsed, so bad SQL fails before any shard is
        touched, as for a single statement.
        """
        if not isinstance(statements, Sequence) or isinstance(statements, (str, bytes)):
            if isinstance(statements, (str, bytes)):
                raise ProgrammingError(
                    "execute_concurrent() takes a list of statements, not one statement"
                )
            return statements, None
        if not check_first:
            return statements, len(statements)
        dialect = self.config.dialect
        items = []
        seen: set[str] = set()
        for index, item in enumerate(statements):
            try:
                sql, params = as_statement(item, dialect)
                if sql not in seen:
                    seen.add(sql)
                    self._engine.planner.analyze(sql)
            except Exception as exc:
                exc.add_note(f"(statement {index} of the batch, counting from 0)")
                raise
            items.append((sql, params))
        return items, len(items)

    def _with_args(
        self,
        statement: Any,
        parameters: Iterable[Any] | AsyncIterable[Any],
        *,
        ordered: bool = False,
        **options: Any,
    ) -> AsyncIterator[ExecutionResult]:
        """The batch of one statement with each parameter set (prepared on the servers)."""
        if isinstance(statement, str):
            self._engine.planner.analyze(statement)  # bad SQL fails before any shard is touched

            def bind(params: Any) -> tuple[str, Any]:
                return statement, params
        else:
            bind = compiler(statement, self.config.dialect)
        items: Iterable[Any] | AsyncIterable[Any]
        if hasattr(parameters, "__aiter__"):

            async def each() -> AsyncIterator[tuple[str, Any]]:
                async for params in parameters:
                    yield bind(params)

            items = each()
            total = None
        else:
            items = (bind(params) for params in parameters)
            total = len(parameters) if isinstance(parameters, Sequence) else None
        return self._batch(items, total=total, prepare=True, ordered=ordered, **options)

    def _batch(
        self,
        items: Iterable[Any] | AsyncIterable[Any],
        *,
        concurrency: int,
        raise_on_first_error: bool,
        window: int | None,
        timeout: float | None,
        progress: Callable[[Progress], object] | None,
        row_factory: RowFactory | None,
        total: int | None,
        prepare: bool = False,
        ordered: bool = False,
    ) -> AsyncIterator[ExecutionResult]:
        """The results of a batch, in order, as they come (its lanes closed at the end)."""
        if self._transaction is not None or not self._autocommit:
            # A batch runs on connections of its own, concurrently: not the transaction's.
            raise NotSupportedError(
                "a batch inside a transaction: a batch runs its statements concurrently, on "
                "connections of its own; run them with execute() in the transaction, or "
                "outside it"
            )
        engine = self._engine
        dialect = self.config.dialect
        factory = row_factory or self.row_factory
        if timeout is None:
            timeout = self.timeout
        lanes = Lanes(engine.pools, prepare=prepare, ordered=ordered)
        caches = self._caches
        written: set[str] = set()  # tables the batch's writes touch: bumped at its end

        def start(item: Any, done: Callable[[Any, BaseException | None], None]) -> Any:
            self._check_open()
            sql, params = as_statement(item, dialect)
            if caches.configured:
                written.update(caches.written(engine.planner, sql))
            if engine.submit(
                sql, params, lanes=lanes, timeout=timeout, row_factory=factory, done=done
            ):
                return None  # the lane's worker calls done
            return functools.partial(
                engine.run, sql, params, lanes=lanes, timeout=timeout, row_factory=factory
            )

        async def results() -> AsyncIterator[ExecutionResult]:
            batch = run_batch(
                start,
                items,
                concurrency=concurrency,
                raise_on_first_error=raise_on_first_error,
                window=window,
                progress=progress,
                total=total,
            )
            try:
                with tracing.batch_span(dialect, concurrency) as traced:
                    async with contextlib.aclosing(batch):  # closed now, not when collected
                        async for outcome in batch:
                            traced.count(outcome.success)
                            yield outcome
            finally:
                await lanes.close()
                if written:
                    await caches.invalidate(tuple(sorted(written)))

        return results()

    def shard_for(self, table: str, key_value: object) -> str:
        """Return the name of the shard holding ``table``'s rows whose key is ``key_value``."""
        return self.config.shard_for(table, key_value)

    async def copy_in(
        self,
        table: str,
        source: object,
        columns: Sequence[str] | None = None,
        *,
        header: bool = False,
        delimiter: str = ",",
        quote: str = '"',
        escape: str | None = None,
        null: str = "",
        encoding: str = "utf-8",
        atomic: bool = True,
        progress: Callable[[CopyProgress], object] | None = None,
    ) -> CopyResult:
        """Bulk-load rows into ``table``: split by shard key, one ``COPY`` per shard, at once.

        ``source`` is an iterable (or async iterable) of rows, a CSV file (a
        path or a file object), or an Arrow table, pandas or polars
        DataFrame. The rows stream through in bounded memory. The load is one
        transaction over every shard it writes (two-phase commit when several
        PostgreSQL shards are), or joins the open one; nothing of it is
        committed when a row cannot be loaded: the error names the row's line
        (CSV) or index, and the shard that refused it. See
        :mod:`shardq.execute.copy` for what SQLite shards guarantee.

        Args:
            table: a declared table; a reference table gets every row on every shard.
            source: the rows.
            columns: the columns the values are for; default: a CSV header's
                names, a frame's, else every column of the table in order.
            header: a CSV source's first line names its columns.
            delimiter: quote: escape: null: encoding: the CSV format, as
                PostgreSQL's ``COPY ... (FORMAT csv)`` options (``escape``
                None: a doubled quote; ``null``: an unquoted field equal to
                it is NULL, the empty field by default).
            atomic: False commits each shard's part on its own once every
                shard has all its rows (SQLite shards, which have no two-phase
                commit, need it to load on several shards).
            progress: called with a :class:`~shardq.execute.copy.CopyProgress`
                after each batch of rows read, and at the end.

        Returns:
            A :class:`~shardq.execute.copy.CopyResult`: ``rowcount`` (also its
            ``int()``), and rows per shard in ``shards``.
        """
        self._check_open()
        engine = self._engine
        fmt = CsvFormat(header, delimiter, quote, escape, null, encoding)
        name = self.config.table(table).name
        await engine._before_write()
        transaction = self._transaction_for_statement()
        if transaction is not None:
            result = await copy_in(
                self.config, engine.pools, table, source, columns,
                transaction=transaction, csv=fmt, progress=progress,
            )  # fmt: skip
            self._invalidate_at_commit.add(name)
            return result
        try:
            loaded = await copy_in(
                self.config, engine.pools, table, source, columns,
                atomic=atomic, csv=fmt, progress=progress,
            )  # fmt: skip
            self._written_shards.update(loaded.shards)
            return loaded
        finally:  # even when it failed: a two-phase commit may have committed
            await self._caches.invalidate((name,))

    async def explain(
        self,
        sql: SQL,
        params: Sequence[Any] | Mapping[str, Any] | None = None,
        *,
        analyze: bool = False,
        timeout: float | None = None,
    ) -> str:
        """Describe how ``sql`` runs: target shards, per-shard SQL, merge steps.

        ``sql`` and ``params`` are as :meth:`AsyncCursor.execute` takes them.
        With ``analyze=True`` the statement (a read) runs too, and the text
        adds each shard's row count and time.
        """
        self._check_open()
        sql, params = as_statement((sql, params), self.config.dialect)
        return await self._engine.explain(
            sql, params, analyze=analyze, timeout=timeout if timeout is not None else self.timeout
        )

    async def verify(
        self,
        sql: SQL,
        params: Sequence[Any] | Mapping[str, Any] | None = None,
        *,
        against: str,
        limit: int = 10,
        timeout: float | None = None,
    ) -> VerifyResult:
        """Run a read through shardq and on ``against``, one database holding every row.

        ``against`` is a PostgreSQL DSN, or for a SQLite configuration a file
        path or ``sqlite:///`` URL (opened read-only). The answers are compared
        as the differential suite compares them (:mod:`shardq.verify`): column
        names and types, rows value for value, and the order where the ORDER BY
        fixes it. Returns a :class:`~shardq.verify.VerifyResult` holding the
        first ``limit`` differences (``.ok`` when there are none), both
        answers' rows and times.
        """
        from shardq.verify import verify

        self._check_open()
        sql, params = as_statement((sql, params), self.config.dialect)
        return await verify(
            self,
            sql,
            params,
            against=against,
            limit=limit,
            timeout=timeout if timeout is not None else self.timeout,
        )

    async def check(self) -> CheckReport:
        """Connect to every shard; report versions, round trips and table consistency."""
        self._check_open()
        return await check(self._engine)

    def stats(self) -> list[HostStats]:
        """This connection's statements per shard and host (see :mod:`shardq.stats`).

        For each shard's primary and replica: statements started, errors,
        timeouts, reads retried elsewhere, the start time's p50/p95/p99 in
        seconds, and the pool's connections in use, open and waited for.
        """
        return self._engine.stats.report()

    @property
    def autocommit(self) -> bool:
        """Whether each statement commits on its shards when it ends (the default).

        Set it to False (psycopg's attribute) and the first statement opens a
        transaction over the shards, ended by :meth:`commit` or
        :meth:`rollback`. It cannot change while a transaction is open.
        """
        return self._autocommit

    @autocommit.setter
    def autocommit(self, value: bool) -> None:
        self._check_open()
        if self._transaction is not None and bool(value) != self._autocommit:
            raise ProgrammingError("autocommit cannot change while a transaction is open")
        self._autocommit = bool(value)

    @property
    def in_transaction(self) -> bool:
        """Whether a transaction is open on this connection."""
        return self._transaction is not None

    async def savepoint(self) -> str:
        """Take a savepoint in the open transaction and return its name.

        With autocommit off and no transaction open, this opens one, as a
        statement would. The savepoint is on every shard the transaction has
        joined and on each it joins later. ``async with conn.transaction():``
        nested is the usual way; these three methods are for code that names
        its savepoints itself (SQLAlchemy's ``Session.begin_nested()``).

        Raises:
            ProgrammingError: no transaction is open and autocommit is on.
        """
        self._check_open()
        transaction = self._transaction_for_statement()
        if transaction is None:
            raise ProgrammingError(
                "a savepoint needs a transaction: open one with transaction(), "
                "or set autocommit to False"
            )
        return await transaction.savepoint()

    async def rollback_to_savepoint(self, name: str) -> None:
        """Undo what was done since savepoint ``name`` and end it; the transaction goes on.

        It also clears the failure of a statement that failed after the
        savepoint. With no transaction open (it ended), nothing to undo, as
        with :meth:`rollback`.
        """
        self._check_open()
        if self._transaction is not None:
            await self._transaction.rollback_to(name)

    async def release_savepoint(self, name: str) -> None:
        """Keep what was done since savepoint ``name`` and end it (nothing if no transaction)."""
        self._check_open()
        if self._transaction is not None:
            await self._transaction.release(name)

    def _transaction_for_statement(self) -> Transaction | None:
        """The open transaction, opened now if autocommit is off."""
        if self._transaction is None and not self._autocommit:
            self._transaction = Transaction(
                self._engine.pools,
                self.config.dialect,
                commit_timeout=self.config.commit_timeout,
            )
        return self._transaction

    async def commit(self) -> None:
        """Commit the open transaction (two-phase when it wrote on several shards).

        Nothing to do in autocommit mode, where every statement commits on its
        shards when it ends. The commit waits on the shards at most the
        configuration's ``commit_timeout`` seconds (plus a grace); past it,
        :class:`~shardq.errors.CommitTimeoutError` says whether the
        transaction was rolled back or may have committed (see
        :mod:`shardq.execute.transaction`).
        """
        self._check_open()
        transaction, self._transaction = self._transaction, None
        if transaction is None:
            return
        tables, self._invalidate_at_commit = self._invalidate_at_commit, set()
        try:
            await transaction.commit()
            self._written_shards.update(transaction.written)
        finally:
            if tables:  # even when it failed: a two-phase commit may have committed
                await self._caches.invalidate(tuple(sorted(tables)))

    async def rollback(self) -> None:
        """Roll the open transaction back on every shard it touched.

        With no transaction open (autocommit), as psycopg's and sqlite3's
        ``rollback()``, this undoes nothing and raises nothing on an open
        connection, so an error handler calling it re-raises the real error.
        """
        self._check_open()
        transaction, self._transaction = self._transaction, None
        self._invalidate_at_commit = set()
        if transaction is not None:
            await transaction.rollback()

    def transaction(self) -> AbstractAsyncContextManager[Transaction]:
        """A transaction over the shards for the ``async with`` block (psycopg's way).

        It commits when the block ends, and rolls back if the block raises.
        Nested inside another (or inside the transaction autocommit=False
        opened), it is a savepoint: an exception rolls back to it, and the
        outer transaction goes on. One shard written: a plain commit; several:
        two-phase commit (PostgreSQL; see :mod:`shardq.execute.twophase`).
        """
        return self._transaction_block()

    @contextlib.asynccontextmanager
    async def _transaction_block(self) -> AsyncIterator[Transaction]:
        token = await self._enter_transaction()
        try:
            yield token[0]
        except BaseException as exc:
            await self._exit_transaction(token, exc)
            raise
        await self._exit_transaction(token, None)

    async def _enter_transaction(self) -> tuple[Transaction, str | None]:
        """Open a transaction, or a savepoint in the open one: (transaction, savepoint)."""
        self._check_open()
        if self._transaction is None:
            self._transaction = Transaction(
                self._engine.pools,
                self.config.dialect,
                commit_timeout=self.config.commit_timeout,
            )
            return self._transaction, None
        return self._transaction, await self._transaction.savepoint()

    async def _exit_transaction(
        self, token: tuple[Transaction, str | None], exc: BaseException | None
    ) -> None:
        transaction, savepoint = token
        if transaction is not self._transaction:
            return  # ended inside the block (commit() or rollback() called there)
        if savepoint is None:
            if exc is None:
                await self.commit()
            else:
                await self.rollback()
        elif exc is None:
            await transaction.release(savepoint)
        else:
            await transaction.rollback_to(savepoint)

    async def recover(self, *, wait: float = RECOVERY_WAIT) -> Recovery:
        """Finish every two-phase commit left prepared on the shards (``shardq recover``).

        Each is committed if its decision was made durable and rolled back
        otherwise; one still being committed by its coordinator is left alone.
        Sessions still inside a transaction it rolls back (a killed
        coordinator's, whose PREPARE may land after recovery looked) are
        waited for up to ``wait`` seconds, then terminated.
        Safe at any time, and twice. SQLite shards have nothing to recover.
        """
        self._check_open()
        if self.config.dialect != "postgres":
            return Recovery()
        return await recover(self._engine.pools, wait=wait)

    async def close(self) -> None:
        """Roll back an open transaction, stop every result still being read, close the pools."""
        if not self.closed:
            transaction, self._transaction = self._transaction, None
            if transaction is not None:
                with contextlib.suppress(Exception):
                    await transaction.rollback()
            self.closed = True
            for result in list(self._open_results):
                with contextlib.suppress(Exception):
                    await result.close()
            try:
                await self._caches.close()
            finally:
                await self._engine.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Commit an open transaction (roll it back on an exception), then close (as psycopg)."""
        try:
            if not self.closed and self._transaction is not None:
                if e is None:
                    await self.commit()
                else:
                    await self.rollback()
        finally:
            await self.close()


async def connect_async(
    config: ConfigSource,
    *,
    row_factory: RowFactory = tuple_row,
    timeout: float | None = None,
    fetch_size: int = DEFAULT_FETCH_SIZE,
    cache: CacheChoice = None,
    allow_partial: bool = False,
) -> AsyncConnection:
    """Open an :class:`AsyncConnection` over the shards of ``config``.

    ``allow_partial`` sets the connection's :attr:`~AsyncConnection.allow_partial`.
    """
    return await AsyncConnection.connect(
        config,
        row_factory=row_factory,
        timeout=timeout,
        fetch_size=fetch_size,
        cache=cache,
        allow_partial=allow_partial,
    )
