"""Results: the merged rows of a statement, streamed in batches."""

from __future__ import annotations

import asyncio
import contextlib
import html
import warnings
from collections import deque
from typing import TYPE_CHECKING, Any

from shardq.display import MAX_ROWS, html_table, ran_on
from shardq.errors import PartialResultWarning
from shardq.merge.drive import drive
from shardq.merge.pipeline import describe
from shardq.rows import RowFactory, RowMaker, is_tuple_factory

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from shardq.execute.arrowread import ColumnarRead
    from shardq.execute.driver import Column
    from shardq.execute.scatter import Scatter
    from shardq.merge import Merger, Rows
    from shardq.merge.evaluate import Semantics
    from shardq.merge.steps import MergePlan

__all__ = ["AsyncResult", "ResultSet", "StoredResult", "issue"]


class ResultSet:
    """The whole result of one statement of a batch, already read.

    A sequence of its rows (built by the connection's row factory), with the
    cursor's attributes beside them:

    >>> from shardq.execute.driver import Column
    >>> result = ResultSet((Column("n"),), [(1,), (2,)], 2, ("s1", "s2"))
    >>> len(result), result[0], [row[0] for row in result]
    (2, (1,), [1, 2])
    >>> result
    <shardq.ResultSet rows=2 columns=['n'] shards=['s1', 's2']>

    Attributes:
        description: the columns (PEP 249), or ``None`` for a statement without rows.
        rows: the rows, in the order the statement returns them.
        rowcount: rows written by a write, rows returned by a read.
        shards: the shards the statement ran on.
        seconds: how long the statement took (run and read), if measured.
    """

    __slots__ = ("description", "rowcount", "rows", "seconds", "shards")

    def __init__(
        self,
        description: tuple[Column, ...] | None,
        rows: list[Any],
        rowcount: int,
        shards: tuple[str, ...],
        seconds: float | None = None,
    ):
        self.description = description
        self.rows = rows
        self.rowcount = rowcount
        self.shards = shards
        self.seconds = seconds

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.rows)

    def __getitem__(self, index: int) -> Any:
        return self.rows[index]

    def __repr__(self) -> str:
        if self.description is None:
            return f"<shardq.ResultSet rowcount={self.rowcount} shards={list(self.shards)}>"
        names = [c.name for c in self.description]
        shards = list(self.shards)
        return f"<shardq.ResultSet rows={len(self.rows)} columns={names} shards={shards}>"

    def _repr_html_(self) -> str:
        """The rows as an HTML table (Jupyter), with the shards that ran and the time."""
        if self.description is None:
            return html.escape(repr(self))
        names = [c.name for c in self.description]
        rows = [_values(r) for r in self.rows[:MAX_ROWS]]
        caption = ran_on(self.shards, self.seconds)
        return html_table(names, rows, total=len(self.rows), caption=caption)


def _values(row: Any) -> Any:
    # A row built by a row factory: a dict's values, a named tuple's or a tuple's items.
    return list(row.values()) if isinstance(row, dict) else row


_abandoned: set[asyncio.Task[None]] = set()  # strong references until they finish


def _close_abandoned(scatter: Scatter, batches: AsyncIterator[Rows]) -> None:
    async def close() -> None:
        try:
            if hasattr(batches, "aclose"):
                await batches.aclose()
        finally:
            await scatter.close()

    task = asyncio.ensure_future(close())
    _abandoned.add(task)
    task.add_done_callback(_abandoned.discard)


class _Fetching:
    """The cursor's fetch methods over ``next_batch()`` and a buffer of rows.

    And the shards a partial read left out (``allow_partial``): those of
    its subqueries, given by :meth:`left_out`, and (for a streaming result)
    those its scatter leaves out.
    """

    _buffer: deque[Any]
    _missing: dict[str, BaseException] | None = None  # left out before (its subqueries)
    _warned: frozenset[str] = frozenset()
    _pending: list[PartialResultWarning] | None = None

    @property
    def missing(self) -> dict[str, BaseException]:
        """The shards left out of this partial result so far, each with its error."""
        return dict(self._missing or {})

    @property
    def missing_shards(self) -> tuple[str, ...]:
        """The names of :attr:`missing`: empty unless the result is partial."""
        return tuple(self.missing)

    def left_out(self, missing: dict[str, BaseException]) -> None:
        """Note shards left out before, by the subqueries of the statement (warned already)."""
        self._missing = {**(self._missing or {}), **missing}
        self._warned |= missing.keys()

    def _warn(self) -> None:
        """Prepare a :class:`PartialResultWarning` for shards left out since the last one.

        The cursor issues it (:meth:`take_warnings`), in the caller's thread
        and at the caller's line.
        """
        new = {s: e for s, e in self.missing.items() if s not in self._warned}
        if new:
            self._warned |= new.keys()
            self._pending = [*(self._pending or ()), PartialResultWarning(new)]

    def take_warnings(self) -> list[PartialResultWarning]:
        """The warnings prepared and not yet taken."""
        pending, self._pending = self._pending, None
        return pending or []

    async def next_batch(self) -> list[Any]:
        raise NotImplementedError

    async def _fill(self) -> bool:
        if not self._buffer:
            self._buffer.extend(await self.next_batch())
        return bool(self._buffer)

    async def fetchone(self) -> Any | None:
        if await self._fill():
            return self._buffer.popleft()
        return None

    async def fetchmany(self, size: int) -> list[Any]:
        rows: list[Any] = []
        while len(rows) < size and await self._fill():
            take = min(size - len(rows), len(self._buffer))
            rows += [self._buffer.popleft() for _ in range(take)]
        return rows

    async def fetchall(self) -> list[Any]:
        rows = list(self._buffer)
        self._buffer.clear()
        while batch := await self.next_batch():
            rows += batch
        return rows

    async def __aiter__(self) -> AsyncIterator[Any]:
        while await self._fill():
            while self._buffer:
                yield self._buffer.popleft()


def issue(warned: list[PartialResultWarning], stacklevel: int) -> None:
    """Issue ``warned`` with :func:`warnings.warn`, at ``stacklevel`` from the caller."""
    for warning in warned:
        warnings.warn(warning, stacklevel=stacklevel + 1)


class StoredResult(_Fetching):
    """A result already whole in memory (a cache hit), read through the cursor.

    It holds no shard connection: ``closed`` and ``in_memory`` are True from
    the start.
    """

    closed = True
    in_memory = True

    def __init__(
        self,
        description: tuple[Column, ...] | None,
        rows: list[tuple[Any, ...]],
        rowcount: int,
        shards: tuple[str, ...],
        row_factory: RowFactory,
    ):
        self.description = description
        self.rowcount = rowcount
        self.shards = shards
        if description is not None and not is_tuple_factory(row_factory):
            make = row_factory(description)
            self._buffer = deque(make(row) for row in rows)
        else:
            self._buffer = deque(rows)

    async def next_batch(self) -> list[Any]:
        rows = list(self._buffer)
        self._buffer.clear()
        return rows

    async def close(self) -> None:
        self._buffer.clear()


class AsyncResult(_Fetching):
    """The rows of one statement, merged from its shards as they arrive.

    Rows are pulled from the shards one batch at a time, so a result larger
    than memory can be iterated. The shards' connections are returned to
    their pools when the last row has been read or :meth:`close` is called.
    """

    #: How the read can be read again into Arrow (the engine sets it), or why it cannot.
    columnar: ColumnarRead | str = "a write, or a statement of a transaction"

    def __init__(
        self,
        scatter: Scatter,
        merger: Merger,
        row_factory: RowFactory,
        plan: MergePlan | None = None,
        sem: Semantics | None = None,
    ):
        self._scatter = scatter
        self.description: tuple[Column, ...] | None = scatter.description
        if plan is not None and sem is not None and not plan.trivial:
            self.description = describe(plan, self.description, sem)
        self.shards = scatter.shards
        self._buffer: deque[Any] = deque()
        self._convert = not is_tuple_factory(row_factory)
        self._make: RowMaker = row_factory(self.description)
        self._batches: AsyncIterator[Rows] | None = drive(merger, scatter.fetch)
        self._rowcount = scatter.rowcount
        if plan is not None and plan.first_source_only and scatter.streams:
            self._rowcount = scatter.streams[0].rowcount  # every copy changed alike
        self._received = 0
        self._loop = asyncio.get_running_loop()

    @classmethod
    async def start(
        cls,
        scatter: Scatter,
        merger: Merger,
        row_factory: RowFactory,
        plan: MergePlan | None = None,
        sem: Semantics | None = None,
    ) -> AsyncResult:
        """Wrap a started scatter; a statement without rows releases its shards at once."""
        result = cls(scatter, merger, row_factory, plan, sem)
        if result.description is None:
            await result.close()
        result._warn()
        return result

    @property
    def missing(self) -> dict[str, BaseException]:
        return {**(self._missing or {}), **self._scatter.missing}

    @property
    def rowcount(self) -> int:
        """Rows written by a write; rows read so far by a read, once it is exhausted.

        -1 while a read still has rows to deliver (PEP 249's "not determined").
        """
        return self._rowcount

    @property
    def in_memory(self) -> bool:
        """Whether the rest of the result is already received: reading it needs no IO."""
        return self._batches is None or self._scatter.in_memory

    @property
    def closed(self) -> bool:
        return self._batches is None

    @property
    def untouched(self) -> bool:
        """Whether no row has been taken from the result yet."""
        return self._received == 0 and not self._buffer and self._batches is not None

    async def replaced(self, rows: int) -> None:
        """Close the result, read whole (``rows``) by another way (:attr:`columnar`)."""
        await self.close()
        self._rowcount = rows

    async def receive(self) -> None:
        """Read the rest of the shards' rows into memory, giving their connections back.

        Reading goes on as before, from memory (see :meth:`Scatter.receive`).
        """
        if self._batches is not None:
            await self._scatter.receive()

    async def next_batch(self) -> list[Any]:
        """Return the next rows (what is buffered, or one more merged batch); [] at the end."""
        if self._buffer:
            rows = list(self._buffer)
            self._buffer.clear()
            return rows
        if self._batches is None:
            return []
        try:
            batch = await anext(self._batches)
        except StopAsyncIteration:
            self._rowcount = self._received
            await self.close()
            self._warn()
            return []
        except BaseException:
            await self.close()
            raise
        if self._scatter.missing:
            self._warn()
        self._received += len(batch)
        return [self._make(row) for row in batch] if self._convert else batch

    def __del__(self) -> None:
        # A result dropped unread still holds shard connections: give them back.
        if self._batches is None or self._loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop is shutting down
            self._loop.call_soon_threadsafe(_close_abandoned, self._scatter, self._batches)

    async def close(self) -> None:
        """Stop reading: cancel what still runs on the shards and release their connections."""
        batches, self._batches = self._batches, None
        self._buffer.clear()
        try:
            if batches is not None and hasattr(batches, "aclose"):
                await batches.aclose()
        finally:
            await self._scatter.close()
