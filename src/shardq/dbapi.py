"""The PEP 249 (DB-API 2.0) facade: :class:`Connection` and :class:`Cursor`.

A thin blocking layer over :mod:`shardq.aio`: each method is one call through
the connection's :class:`~shardq._portal.Portal` into its
:class:`~shardq.aio.AsyncConnection`, and iterating a cursor crosses once per
batch of rows, not per row.

Transactions: autocommit is the default (each statement commits on its
shards when it ends). ``with conn.transaction():``, or ``conn.autocommit =
False`` then :meth:`Connection.commit` / :meth:`Connection.rollback`, run
statements in one transaction over the shards (two-phase commit when several
are written). With no transaction open, ``rollback()`` does nothing, as in
psycopg's and sqlite3's autocommit mode, so ``except: conn.rollback(); raise``
re-raises the real error. Optional PEP 249
methods shardq cannot honour (``callproc``) are left out, so ``hasattr``
tells the truth.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import html
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, Self

from shardq import errors
from shardq._portal import Portal
from shardq.aio import DEFAULT_CONCURRENCY, AsyncConnection, AsyncCursor, ConfigSource
from shardq.display import MAX_ROWS, html_table, ran_on
from shardq.engine import DEFAULT_FETCH_SIZE, Engine
from shardq.execute.twophase import RECOVERY_WAIT
from shardq.export import require, rows_as_tuples, to_pandas, to_polars, to_table
from shardq.results import issue
from shardq.rows import RowFactory, tuple_row
from shardq.statements import is_many

if TYPE_CHECKING:
    from types import TracebackType

    import pandas
    import polars
    import pyarrow

    from shardq.cache.regions import CacheChoice
    from shardq.execute.batch import ExecutionResult, Progress
    from shardq.execute.copy import CopyProgress, CopyResult
    from shardq.execute.driver import Column
    from shardq.execute.transaction import Transaction
    from shardq.execute.twophase import Recovery
    from shardq.health import CheckReport
    from shardq.results import ResultSet
    from shardq.statements import SQL
    from shardq.stats import HostStats
    from shardq.verify import VerifyResult

__all__ = [
    "BINARY",
    "DATETIME",
    "NUMBER",
    "ROWID",
    "STRING",
    "Binary",
    "Connection",
    "Cursor",
    "Date",
    "DateFromTicks",
    "Time",
    "TimeFromTicks",
    "Timestamp",
    "TimestampFromTicks",
    "connect",
]

Params = Sequence[Any] | Mapping[str, Any] | None


class Cursor:
    """A PEP 249 cursor over the shards."""

    def __init__(self, connection: Connection, inner: AsyncCursor):
        self.connection = connection
        self._inner = inner
        self._portal = connection._portal
        # Rows already brought over from the event loop, not yet handed out.
        self._local: deque[Any] = deque()
        self._drained = True  # nothing more to bring over from the loop
        self._seconds: float | None = None  # how long execute() took, to its first rows
        # No row was handed out since execute(): fetch_arrow_table() may read again.
        self._untouched = False
        inner._hold_warnings = True  # issued here, in the caller's thread

    def __repr__(self) -> str:
        return f"<shardq.Cursor {'closed' if self.closed else 'open'}>"

    @property
    def description(self) -> tuple[Column, ...] | None:
        return self._inner.description

    @property
    def arrow_path(self) -> str | None:
        """See :attr:`shardq.aio.AsyncCursor.arrow_path`: "adbc" or "rows"."""
        return self._inner.arrow_path

    @property
    def arrow_fallback(self) -> str | None:
        """See :attr:`shardq.aio.AsyncCursor.arrow_fallback`: why "rows"."""
        return self._inner.arrow_fallback

    @property
    def rowcount(self) -> int:
        return self._inner.rowcount

    @property
    def shards(self) -> tuple[str, ...]:
        """The shards the last statement ran on."""
        return self._inner.shards

    @property
    def missing_shards(self) -> tuple[str, ...]:
        """See :attr:`shardq.aio.AsyncCursor.missing_shards` (a partial read's)."""
        return self._inner.missing_shards

    def _issue(self, stacklevel: int) -> None:
        """Issue a partial read's warnings here, at ``stacklevel`` from the caller."""
        result = self._inner._result
        if result is not None:
            issue(result.take_warnings(), stacklevel + 1)

    @property
    def arraysize(self) -> int:
        return self._inner.arraysize

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        self._inner.arraysize = value

    @property
    def closed(self) -> bool:
        return self._inner.closed or self.connection.closed

    @property
    def lastrowid(self) -> None:
        """Not available across shards (PEP 249 allows ``None``); use RETURNING."""
        return None

    def execute(
        self,
        sql: SQL,
        params: Params = None,
        *,
        timeout: float | None = None,
        cache: CacheChoice = None,
        cache_key: str | None = None,
        read_policy: str | None = None,
        allow_partial: bool | None = None,
        max_gather_rows: int | None = None,
    ) -> Self:
        """Run one statement, text or SQLAlchemy (see :meth:`shardq.aio.AsyncCursor.execute`).

        The first batch of rows comes back with the same call into the
        event loop, so a small result costs one crossing, not two.
        """
        return self._run(
            sql, params, timeout, cache, cache_key, read_policy, allow_partial, max_gather_rows
        )

    def _run(self, *args: Any) -> Self:
        self._local.clear()
        began = time.monotonic()
        rows, self._drained = self._portal.call(self._execute, *args)
        self._seconds = time.monotonic() - began
        self._local.extend(rows)
        self._untouched = True
        self._issue(3)  # (at the caller of Cursor.execute or Connection.execute)
        return self

    async def _execute(
        self,
        sql: SQL,
        params: Params,
        timeout: float | None,
        cache: CacheChoice,
        cache_key: str | None,
        read_policy: str | None,
        allow_partial: bool | None,
        max_gather_rows: int | None = None,
    ) -> tuple[list[Any], bool]:
        await self._inner.execute(
            sql,
            params,
            timeout=timeout,
            cache=cache,
            cache_key=cache_key,
            read_policy=read_policy,
            allow_partial=allow_partial,
            max_gather_rows=max_gather_rows,
        )
        if self._inner.description is None:
            return [], True
        if self._inner.in_memory:
            # Every shard's rows are already here: bring them all in this one call.
            return await self._inner.fetchall(), True
        return await self._inner.next_batch(), False

    def _more(self) -> list[Any]:
        self._untouched = False
        if self._drained:
            return []
        batch: list[Any] = self._portal.call(self._inner.next_batch)
        self._drained = not batch
        self._issue(3)  # (at the caller of fetchone, fetchmany or the iteration)
        return batch

    def executemany(
        self,
        sql: SQL,
        params_seq: Iterable[Params],
        *,
        timeout: float | None = None,
        concurrency: int = DEFAULT_CONCURRENCY,
    ) -> None:
        """Run ``sql`` once per parameter set, concurrently, each routed to its own shard.

        See :meth:`shardq.aio.AsyncCursor.executemany`. ``params_seq`` is read
        as the statements start (on the connection's event loop thread), so
        it may be a generator too large for memory.
        """
        self._local.clear()
        self._drained = True
        self._portal.call(
            self._inner.executemany, sql, params_seq, timeout=timeout, concurrency=concurrency
        )

    def copy_in(
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
        """:meth:`Connection.copy_in`, with :attr:`rowcount` the rows loaded.

        See :meth:`shardq.aio.AsyncCursor.copy_in`.
        """
        self._local.clear()
        self._drained = True
        return self._portal.call(
            self._inner.copy_in, table, source, columns,
            header=header, delimiter=delimiter, quote=quote, escape=escape, null=null,
            encoding=encoding, atomic=atomic, progress=progress,
        )  # fmt: skip

    def _check_readable(self) -> None:
        # Raises as the async cursor would: closed cursor, nothing executed, no rows.
        if self._inner.closed or self._inner.description is None:
            self._portal.call(self._inner.next_batch)

    def fetchone(self) -> Any | None:
        self._check_readable()
        self._untouched = False
        if not self._local:
            self._local.extend(self._more())
        return self._local.popleft() if self._local else None

    def fetchmany(self, size: int | None = None) -> list[Any]:
        self._check_readable()
        self._untouched = False
        size = self.arraysize if size is None else size
        rows: list[Any] = []
        while len(rows) < size:
            if not self._local:
                self._local.extend(self._more())
                if not self._local:
                    break
            take = min(size - len(rows), len(self._local))
            rows += [self._local.popleft() for _ in range(take)]
        return rows

    def fetchall(self) -> list[Any]:
        self._check_readable()
        self._untouched = False
        rows = list(self._local)
        self._local.clear()
        if self._drained:
            return rows
        self._drained = True
        rows += self._portal.call(self._inner.fetchall)
        self._issue(2)
        return rows

    def fetch_arrow_table(self) -> pyarrow.Table:
        """Return the rest of the result as a ``pyarrow.Table`` (``shardq[arrow]``).

        See :meth:`shardq.aio.AsyncCursor.fetch_arrow_table`. A result already
        brought over is built here; the rest is built as it arrives, on the
        connection's event loop thread.
        """
        self._check_readable()
        untouched, self._untouched = self._untouched, False
        first = list(self._local)
        self._local.clear()
        mode = self.connection.arrow_reads
        if self._drained and not (untouched and mode == "adbc"):
            assert self.description is not None
            why = (
                f"arrow_reads is {mode!r}" if mode != "adbc"
                else "rows were taken from the result before"
            )  # fmt: skip
            self._inner.arrow_path, self._inner.arrow_fallback = "rows", why
            return to_table(self.description, [rows_as_tuples(first)])
        self._drained = True
        table: pyarrow.Table = self._portal.call(self._inner._arrow_table, first, untouched)
        self._issue(2)
        return table

    def fetch_df(self) -> pandas.DataFrame:
        """Return the rest of the result as a pandas DataFrame (``shardq[pandas]``)."""
        require("pandas", "pandas", "fetch_df()")
        return to_pandas(self.fetch_arrow_table())

    def fetch_polars(self) -> polars.DataFrame:
        """Return the rest of the result as a polars DataFrame (``shardq[polars]``).

        See :func:`shardq.export.to_polars` for the two types polars reads differently.
        """
        require("polars", "polars", "fetch_polars()")
        return to_polars(self.fetch_arrow_table())

    def __iter__(self) -> Iterator[Any]:
        self._check_readable()
        self._untouched = False
        while True:
            while self._local:
                yield self._local.popleft()
            batch = self._more()
            if not batch:
                return
            self._local.extend(batch)

    def _repr_html_(self) -> str:
        """The rows not fetched yet as an HTML table (Jupyter), without consuming them.

        Up to :data:`shardq.display.MAX_ROWS` rows are read ahead into the
        cursor's buffer, where ``fetch*()`` still finds them; the caption names
        the shards and the time ``execute()`` took (to its first rows).
        """
        description = self._inner.description
        if self.closed or description is None:
            return html.escape(repr(self) if self.closed else f"{self.rowcount} rows affected")
        while len(self._local) <= MAX_ROWS and not self._drained:
            self._local.extend(self._more())
        rows = [list(r.values()) if isinstance(r, dict) else r for r in self._local]
        more = len(rows) > MAX_ROWS or not self._drained
        caption = ran_on(self.shards, self._seconds)
        return html_table(
            [c.name for c in description], rows[:MAX_ROWS], more=more, caption=caption
        )

    def nextset(self) -> None:
        """Every statement has one result set: always ``None`` (PEP 249)."""
        return None

    def setinputsizes(self, sizes: Any) -> None:
        """Accepted and ignored (PEP 249 allows it)."""

    def setoutputsize(self, size: Any, column: int | None = None) -> None:
        """Accepted and ignored (PEP 249 allows it)."""

    def close(self) -> None:
        self._local.clear()
        if not self._inner.closed and not self._portal.closed:
            self._portal.call(self._inner.close)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class Connection:
    """A PEP 249 connection to N shards. Make one with :func:`shardq.connect`."""

    def __init__(self, inner_factory: Any, *, portal: Portal | None = None):
        self._portal = portal or Portal()
        try:
            self._inner: AsyncConnection = self._portal.call(inner_factory)
        except BaseException:
            self._portal.close()
            raise

    def __repr__(self) -> str:
        return repr(self._inner).replace("AsyncConnection", "Connection")

    # PEP 249 exceptions as connection attributes (an optional extension).
    Warning = errors.Warning
    Error = errors.Error
    InterfaceError = errors.InterfaceError
    DatabaseError = errors.DatabaseError
    DataError = errors.DataError
    OperationalError = errors.OperationalError
    IntegrityError = errors.IntegrityError
    InternalError = errors.InternalError
    ProgrammingError = errors.ProgrammingError
    NotSupportedError = errors.NotSupportedError

    @property
    def config(self) -> Any:
        return self._inner.config

    @property
    def closed(self) -> bool:
        return self._inner.closed

    @property
    def paramstyle(self) -> str:
        return self._inner.paramstyle

    @property
    def autocommit(self) -> bool:
        """See :attr:`shardq.aio.AsyncConnection.autocommit` (True by default)."""
        return self._inner.autocommit

    @autocommit.setter
    def autocommit(self, value: bool) -> None:
        self._inner.autocommit = value

    @property
    def read_policy(self) -> str:
        """See :attr:`shardq.aio.AsyncConnection.read_policy` (``primary`` by default)."""
        return self._inner.read_policy

    @read_policy.setter
    def read_policy(self, policy: str) -> None:
        self._inner.read_policy = policy

    @property
    def arrow_reads(self) -> Literal["auto", "adbc", "rows"]:
        """See :attr:`shardq.aio.AsyncConnection.arrow_reads` ("auto" by default)."""
        return self._inner.arrow_reads

    @arrow_reads.setter
    def arrow_reads(self, value: Literal["auto", "adbc", "rows"]) -> None:
        if value not in ("auto", "adbc", "rows"):
            raise ValueError(f"arrow_reads is 'auto', 'adbc' or 'rows', not {value!r}")
        self._inner.arrow_reads = value

    @property
    def allow_partial(self) -> bool:
        """See :attr:`shardq.aio.AsyncConnection.allow_partial` (False by default)."""
        return self._inner.allow_partial

    @allow_partial.setter
    def allow_partial(self, value: bool) -> None:
        self._inner.allow_partial = value

    @property
    def read_your_writes(self) -> bool:
        """See :attr:`shardq.aio.AsyncConnection.read_policy` (False by default)."""
        return self._inner.read_your_writes

    @read_your_writes.setter
    def read_your_writes(self, value: bool) -> None:
        self._inner.read_your_writes = value

    @property
    def row_factory(self) -> RowFactory:
        return self._inner.row_factory

    @row_factory.setter
    def row_factory(self, value: RowFactory) -> None:
        self._inner.row_factory = value

    @property
    def async_connection(self) -> AsyncConnection:
        """The :class:`~shardq.aio.AsyncConnection` this facade drives."""
        return self._inner

    def cursor(self, *, row_factory: RowFactory | None = None) -> Cursor:
        return Cursor(self, self._inner.cursor(row_factory=row_factory))

    def execute(
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
        """Run a statement on a new cursor and return it (as psycopg does).

        Given a list of statements (and optionally a list of parameter sets),
        run them concurrently and return their :class:`~shardq.ResultSet`
        list, as :meth:`shardq.aio.AsyncConnection.execute` does.
        """
        if is_many(sql):
            return self._portal.call(self._inner.execute, sql, params, timeout=timeout)
        return self.cursor()._run(
            sql, params, timeout, cache, cache_key, read_policy, allow_partial, max_gather_rows
        )

    def read_arrow(self, sql: Any, params: Any = None, **options: Any) -> pyarrow.Table:
        """Run a read and return its rows as a ``pyarrow.Table`` (``shardq[arrow]``).

        ``options`` are :meth:`execute`'s (``timeout``, ``cache``, ...). See
        :meth:`shardq.aio.AsyncConnection.read_arrow` for the reads that go
        straight into Arrow (:attr:`arrow_path` tells). polars can read one
        too: ``polars.read_database(sql, conn.cursor())``.
        """
        require("pyarrow", "arrow", "read_arrow()")
        why = self._inner._arrow_refused(options)
        if why is None:
            found: pyarrow.Table = self._portal.call(self._inner.read_arrow, sql, params, **options)
            return found
        # Through a cursor of this thread: its warnings are issued here.
        with self.execute(sql, params, **options) as cursor:
            table: pyarrow.Table = cursor.fetch_arrow_table()
        self._inner.arrow_path, self._inner.arrow_fallback = "rows", why
        return table

    @property
    def arrow_path(self) -> str | None:
        """How the last :meth:`read_arrow` read: "adbc" or "rows" (then :attr:`arrow_fallback`)."""
        return self._inner.arrow_path

    @property
    def arrow_fallback(self) -> str | None:
        """Why the last :meth:`read_arrow` read rows; None when it read with ADBC."""
        return self._inner.arrow_fallback

    def shard_for(self, table: str, key_value: object) -> str:
        """Return the name of the shard holding ``table``'s rows whose key is ``key_value``."""
        return self._inner.shard_for(table, key_value)

    def execute_concurrent(
        self,
        statements_and_params: Iterable[Any],
        concurrency: int = DEFAULT_CONCURRENCY,
        raise_on_first_error: bool = True,
        results_generator: bool = False,
        *,
        timeout: float | None = None,
        progress: Callable[[Progress], object] | None = None,
        row_factory: RowFactory | None = None,
    ) -> Any:
        """Run many statements concurrently; one :class:`ExecutionResult` each, in order.

        See :meth:`shardq.aio.AsyncConnection.execute_concurrent`. With
        ``results_generator=True`` this returns a generator; results cross
        from the event loop in chunks of up to ``concurrency``. ``progress``
        is called on the connection's event loop thread.
        """
        results = self._portal.call(
            self._inner.execute_concurrent,
            statements_and_params,
            concurrency,
            raise_on_first_error,
            results_generator,
            timeout=timeout,
            progress=progress,
            row_factory=row_factory,
        )
        return self._iterate(results, concurrency) if results_generator else results

    def execute_concurrent_with_args(
        self,
        statement: Any,
        parameters: Iterable[Any],
        concurrency: int = DEFAULT_CONCURRENCY,
        raise_on_first_error: bool = True,
        results_generator: bool = False,
        *,
        timeout: float | None = None,
        progress: Callable[[Progress], object] | None = None,
        row_factory: RowFactory | None = None,
    ) -> Any:
        """See :meth:`shardq.aio.AsyncConnection.execute_concurrent_with_args`."""
        results = self._portal.call(
            self._inner.execute_concurrent_with_args,
            statement,
            parameters,
            concurrency,
            raise_on_first_error,
            results_generator,
            timeout=timeout,
            progress=progress,
            row_factory=row_factory,
        )
        return self._iterate(results, concurrency) if results_generator else results

    def gather(
        self,
        queries: Iterable[Any],
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        timeout: float | None = None,
        row_factory: RowFactory | None = None,
    ) -> list[ResultSet]:
        """See :meth:`shardq.aio.AsyncConnection.gather`."""
        return self._portal.call(
            self._inner.gather,
            queries,
            concurrency=concurrency,
            timeout=timeout,
            row_factory=row_factory,
        )

    def _iterate(
        self, results: AsyncIterator[ExecutionResult], chunk: int
    ) -> Iterator[ExecutionResult]:
        """A batch's async iterator as a generator: one call into the loop per chunk."""

        async def take() -> tuple[list[ExecutionResult], BaseException | None]:
            out: list[ExecutionResult] = []
            try:
                async for outcome in results:
                    out.append(outcome)
                    if len(out) >= chunk:
                        break
            except Exception as exc:  # after the results before it are handed out
                return out, exc
            return out, None

        finished = False
        try:
            while True:
                outcomes, error = self._portal.call(take)
                yield from outcomes
                if error is not None:
                    finished = True
                    raise error
                if not outcomes:
                    finished = True
                    return
        finally:
            if not finished and not self._portal.closed:
                aclose = getattr(results, "aclose", None)
                if aclose is not None:
                    self._portal.call(aclose)  # stop the batch: the caller left early

    def copy_in(
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
        """Bulk-load rows into ``table``: :meth:`shardq.AsyncConnection.copy_in`'s arguments.

        The source is read on the connection's event loop thread; ``progress``
        is called there too.
        """
        return self._portal.call(
            self._inner.copy_in, table, source, columns,
            header=header, delimiter=delimiter, quote=quote, escape=escape, null=null,
            encoding=encoding, atomic=atomic, progress=progress,
        )  # fmt: skip

    def explain(
        self,
        sql: SQL,
        params: Params = None,
        *,
        analyze: bool = False,
        timeout: float | None = None,
    ) -> str:
        """See :meth:`shardq.aio.AsyncConnection.explain`."""
        return self._portal.call(self._inner.explain, sql, params, analyze=analyze, timeout=timeout)

    def verify(
        self,
        sql: SQL,
        params: Params = None,
        *,
        against: str,
        limit: int = 10,
        timeout: float | None = None,
    ) -> VerifyResult:
        """See :meth:`shardq.aio.AsyncConnection.verify`."""
        return self._portal.call(
            self._inner.verify, sql, params, against=against, limit=limit, timeout=timeout
        )

    def check(self) -> CheckReport:
        """See :meth:`shardq.aio.AsyncConnection.check`."""
        return self._portal.call(self._inner.check)

    def stats(self) -> list[HostStats]:
        """See :meth:`shardq.aio.AsyncConnection.stats`."""
        return self._inner.stats()

    def commit(self) -> None:
        """See :meth:`shardq.aio.AsyncConnection.commit`."""
        self._inner._check_open()
        self._portal.call(self._inner.commit)

    def rollback(self) -> None:
        """See :meth:`shardq.aio.AsyncConnection.rollback`.

        With no transaction open (autocommit), as psycopg's and sqlite3's
        ``rollback()``, this undoes nothing and raises nothing on an open
        connection, so an error handler calling it re-raises the real error.
        """
        self._inner._check_open()
        self._portal.call(self._inner.rollback)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """See :meth:`shardq.aio.AsyncConnection.transaction`: commit at the end, rollback on
        an exception, a savepoint when nested."""
        token = self._portal.call(self._inner._enter_transaction)
        try:
            yield token[0]
        except BaseException as exc:
            self._portal.call(self._inner._exit_transaction, token, exc)
            raise
        self._portal.call(self._inner._exit_transaction, token, None)

    @property
    def in_transaction(self) -> bool:
        """Whether a transaction is open on this connection."""
        return self._inner.in_transaction

    def savepoint(self) -> str:
        """See :meth:`shardq.aio.AsyncConnection.savepoint`: take one, return its name."""
        return self._portal.call(self._inner.savepoint)

    def rollback_to_savepoint(self, name: str) -> None:
        """See :meth:`shardq.aio.AsyncConnection.rollback_to_savepoint`."""
        self._portal.call(self._inner.rollback_to_savepoint, name)

    def release_savepoint(self, name: str) -> None:
        """See :meth:`shardq.aio.AsyncConnection.release_savepoint`."""
        self._portal.call(self._inner.release_savepoint, name)

    def recover(self, *, wait: float = RECOVERY_WAIT) -> Recovery:
        """See :meth:`shardq.aio.AsyncConnection.recover`."""
        return self._portal.call(self._inner.recover, wait=wait)

    def close(self) -> None:
        """Close the shards' pools and stop the connection's loop thread."""
        if self._portal.closed:
            return
        try:
            self._portal.call(self._inner.close)
        finally:
            self._portal.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Commit an open transaction (roll it back on an exception), then close (as psycopg)."""
        try:
            if not self.closed and self._inner.in_transaction:
                if e is None:
                    self.commit()
                else:
                    self.rollback()
        finally:
            self.close()

    def __del__(self) -> None:
        portal = getattr(self, "_portal", None)
        if portal is None or portal.closed or sys.is_finalizing():
            # At interpreter exit the portal's thread may be frozen already:
            # waiting for it would never end, and the process is ending anyway.
            return
        try:
            self.close()  # closes the pools (sessions end cleanly), then the loop
        except Exception:
            portal.close()


def connect(
    config: ConfigSource,
    *,
    row_factory: RowFactory = tuple_row,
    timeout: float | None = None,
    fetch_size: int = DEFAULT_FETCH_SIZE,
    cache: CacheChoice = None,
    allow_partial: bool = False,
) -> Connection:
    """Open a PEP 249 :class:`Connection` over the shards of ``config``.

    Args:
        config: a ``shardq.toml`` path, the same structure as a dict, or a Config.
        row_factory: how rows are built (:mod:`shardq.rows`); tuples by default.
        timeout: default seconds per statement (``None``: no limit).
        fetch_size: rows fetched from a shard per round trip.
        cache: cache every read in the result cache (see :mod:`shardq.cache`):
            True for the default region, a region's name, or a CacheRegion.
        allow_partial: reads outside a transaction leave out the shards that
            cannot answer (:attr:`Connection.allow_partial`); False by default.
    """

    async def make() -> AsyncConnection:
        return await AsyncConnection.connect(
            config,
            row_factory=row_factory,
            timeout=timeout,
            fetch_size=fetch_size,
            cache=cache,
            allow_partial=allow_partial,
        )

    return Connection(make)


def connection_from_engine(
    engine: Engine, *, row_factory: RowFactory = tuple_row, timeout: float | None = None
) -> Connection:
    """Wrap an engine built elsewhere (the PEP 249 adapter) in a blocking connection."""

    async def make() -> AsyncConnection:
        return AsyncConnection(engine, row_factory=row_factory, timeout=timeout)

    return Connection(make)


# PEP 249 type objects and constructors.


class _TypeObject:
    """Compares equal to the type codes of one family (PostgreSQL OIDs, or names)."""

    def __init__(self, name: str, oids: frozenset[int], names: frozenset[str]):
        self._name = name
        self._oids = oids
        self._names = names

    def __eq__(self, other: object) -> bool:
        if isinstance(other, int):
            return other in self._oids
        if isinstance(other, str):
            return other.lower() in self._names
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._name)

    def __repr__(self) -> str:
        return f"<shardq.{self._name}>"


STRING = _TypeObject("STRING", frozenset({18, 19, 25, 1042, 1043}), frozenset({"text", "varchar"}))
BINARY = _TypeObject("BINARY", frozenset({17}), frozenset({"blob", "bytea"}))
NUMBER = _TypeObject(
    "NUMBER",
    frozenset({20, 21, 23, 26, 700, 701, 790, 1700}),
    frozenset({"integer", "int", "real", "numeric", "bigint", "double precision"}),
)
DATETIME = _TypeObject(
    "DATETIME",
    frozenset({1082, 1083, 1114, 1184, 1186, 1266}),
    frozenset({"date", "timestamp", "timestamptz", "time", "interval"}),
)
ROWID = _TypeObject("ROWID", frozenset({26, 27}), frozenset({"rowid", "oid"}))

Date = dt.date
Time = dt.time
Timestamp = dt.datetime


def DateFromTicks(ticks: float) -> dt.date:
    return dt.date(*time.localtime(ticks)[:3])


def TimeFromTicks(ticks: float) -> dt.time:
    return dt.time(*time.localtime(ticks)[3:6])


def TimestampFromTicks(ticks: float) -> dt.datetime:
    return dt.datetime(*time.localtime(ticks)[:6])


def Binary(data: bytes | bytearray | memoryview) -> bytes:
    return bytes(data)
