"""Scatter: one statement on several shards at once.

The statement starts on every target shard concurrently, in an
``asyncio.TaskGroup``: the first failure cancels the others (cancelling
their statements on the servers) and is raised as one
:class:`~shardq.errors.ShardError` naming the shard. A deadline bounds every
wait on the shards, from the start to the last row; when it passes, the
statements still running are cancelled on the servers and
:class:`~shardq.errors.QueryTimeoutError` is raised. A cancel that cannot be
delivered within a grace after the deadline is given up, and its connection
closed (see :mod:`~shardq.execute.deadline`): the call returns within the
timeout and its grace whatever the network does. Whatever happens, every
connection goes back to its pool (which discards a closed one).

A *partial* scatter (``allow_partial``, reads only) leaves out a shard that
cannot answer instead of failing the statement: a shard whose host is
unreachable, lost or shutting down (:func:`~shardq.execute.hosts.host_failed`),
or that has not answered by the deadline, is recorded in :attr:`Scatter.missing`
with its error, its connection released, and the others go on; the rows it
sent before it failed are kept. An error of the statement itself (a division
by zero, a bad cast) still fails it: one database would fail it too. A
scatter none of whose shards could start fails with the first error.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any

from shardq import tracing
from shardq.errors import Error, OperationalError, QueryTimeoutError, ShardError
from shardq.execute.deadline import CANCEL_WAIT, bounded, loop_deadlines
from shardq.execute.hosts import host_failed

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping, Sequence

    from shardq.execute.driver import Column, Row, ShardConnection, ShardPool, ShardStream

__all__ = ["Scatter", "unavailable"]


def unavailable(exc: BaseException, *, connecting: bool = False) -> bool:
    """Whether ``exc`` says its shard could not answer (a partial result leaves it out).

    A timeout, or a host that is down, lost or shutting down; not an error of
    the statement, which one database would raise as well. PostgreSQL says
    which is which (SQLSTATE); of another database (SQLite), only a failure
    to connect (``connecting``: a missing or unreadable file) counts.
    """
    if isinstance(exc, QueryTimeoutError):
        return True
    if type(exc.__cause__).__module__.startswith("psycopg"):
        return host_failed(exc)
    return connecting and isinstance(exc, ShardError) and isinstance(exc, OperationalError)


class _Lease:
    """One shard's part: a borrowed connection and the stream running on it."""

    def __init__(self, pool: ShardPool):
        self.shard = pool.name
        self.pool = pool
        self._cm: AbstractAsyncContextManager[ShardConnection] | None = None
        self.stream: ShardStream | None = None
        self.connected = False  # a connection was lent
        self.started = False
        #: Rows received before they were asked for (a partial scatter's wait), given first.
        self.buffered: list[Row] = []

    async def start(self, sql: str, params: object, fetch_size: int, stream: bool) -> None:
        cm = self.pool.connection()
        conn = await cm.__aenter__()
        self.connected = True
        self._cm = cm
        try:
            self.stream = await conn.execute(sql, params, fetch_size=fetch_size, stream=stream)
        except BaseException as exc:
            self._cm = None
            await cm.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        self.started = True
        if not self.stream.holds_connection:
            # The whole result is in memory: let the connection serve others now.
            self._cm = None
            await cm.__aexit__(None, None, None)

    async def keep(self, rows: list[Row]) -> None:
        """Hold the rest of the result as ``rows`` (read whole) and give the connection back."""
        assert self.stream is not None
        self.stream = _Received(self.stream, rows)
        cm, self._cm = self._cm, None
        if cm is not None:
            await cm.__aexit__(None, None, None)

    @property
    def holds(self) -> bool:
        """Whether a connection is still borrowed."""
        return self._cm is not None

    async def close(self) -> None:
        stream, self.stream = self.stream, None
        cm, self._cm = self._cm, None
        try:
            if stream is not None:
                await stream.aclose()
        finally:
            if cm is not None:
                await cm.__aexit__(None, None, None)


class _Received:
    """The rest of a shard's result, read into memory: a stream that holds no connection."""

    holds_connection = False

    def __init__(self, stream: ShardStream, rows: list[Row]):
        self.description = stream.description
        self.rowcount = stream.rowcount
        self._rows = rows

    async def fetch(self) -> list[Row]:
        rows, self._rows = self._rows, []
        return rows

    async def aclose(self) -> None:
        self._rows = []


def _unwrap(group: BaseExceptionGroup[Any]) -> BaseException:
    first: BaseException = group
    while isinstance(first, BaseExceptionGroup):
        first = first.exceptions[0]
    return first


class Scatter:
    """A statement running on its target shards.

    Use :meth:`start`, then :meth:`fetch` from each shard, then :meth:`close`
    (also called on any error).
    """

    def __init__(
        self,
        pools: Mapping[str, ShardPool],
        shards: Sequence[str],
        timeout: float | None,
        *,
        deadline: float | None = None,
        partial: bool = False,
    ):
        self._leases = [_Lease(pools[name]) for name in shards]
        self._partial = partial
        #: The shards a partial scatter left out (in the order they failed), with why.
        self.missing: dict[str, Error] = {}
        #: The statement's id in log records (the engine's).
        self.statement = 0
        self._prepare: Callable[[str, ShardPool], Awaitable[None]] | None = None
        self._ahead: dict[int, asyncio.Future[list[Row]]] = {}
        self._timeout = timeout
        # ``deadline`` (time.monotonic()) when the statement started before
        # the scatter (asking the shards about collations first).
        if deadline is None and timeout is not None:
            deadline = time.monotonic() + timeout
        self._deadline = deadline
        self._failure: BaseException | None = None  # met by receive(), raised by fetch()
        self._receiving: asyncio.Future[None] | None = None
        self.closed = False
        #: Told ``(shard, rows)`` for each batch a shard's rows are taken in (the CLI's
        #: progress display); None, the default, costs one test per batch.
        self.on_rows: Callable[[str, int], None] | None = None

    @property
    def shards(self) -> tuple[str, ...]:
        return tuple(lease.shard for lease in self._leases)

    @property
    def streams(self) -> list[ShardStream]:
        return [lease.stream for lease in self._leases if lease.stream is not None]

    @property
    def description(self) -> tuple[Column, ...] | None:
        for stream in self.streams:
            if stream.description is not None:
                return stream.description
        return None

    @property
    def in_memory(self) -> bool:
        """Whether every shard's remaining rows are already received (no connection held)."""
        return all(
            lease.stream is None or not lease.stream.holds_connection for lease in self._leases
        )

    @property
    def rowcount(self) -> int:
        counts = [stream.rowcount for stream in self.streams]
        return -1 if not counts or -1 in counts else sum(counts)

    def _timed_out(self, pending: Sequence[str]) -> QueryTimeoutError:
        assert self._timeout is not None
        return QueryTimeoutError(self._timeout, tuple(pending))

    async def start(
        self,
        sql: str,
        params: object,
        *,
        fetch_size: int,
        stream: bool = True,
        each: Mapping[str, tuple[str, object]] | None = None,
        prepare: Callable[[str, ShardPool], Awaitable[None]] | None = None,
    ) -> None:
        """Start the statement on every target shard; wait until all have answered.

        ``stream=False`` for writes: their RETURNING rows are received whole.
        ``each`` gives some shards a statement of their own (sql, params)
        instead: the parts of a split INSERT. ``prepare(shard, pool)``, when given,
        runs first in each shard's task, under the same deadline (learning
        what the merge needs to know of the shard): a shard slow to answer it
        holds back no other.
        """
        each = each or {}
        self._prepare = prepare
        await self._start_leases(self._leases, sql, params, fetch_size, stream, each)

    async def restart(
        self, pools: Mapping[str, ShardPool], sql: str, params: object, *, fetch_size: int
    ) -> None:
        """Start the statement again on the shards ``pools`` names, each on the pool given.

        For the shards a partial scatter left out at its start, on another
        host of theirs; they are missing no more unless they fail again.
        """
        leases = []
        for index, lease in enumerate(self._leases):
            if lease.shard in pools:
                self.missing.pop(lease.shard, None)
                lease = self._leases[index] = _Lease(pools[lease.shard])
                leases.append(lease)
        await self._start_leases(leases, sql, params, fetch_size, True, {})

    async def _start_leases(
        self,
        leases: list[_Lease],
        sql: str,
        params: object,
        fetch_size: int,
        stream: bool,
        each: Mapping[str, tuple[str, object]],
    ) -> None:
        settled = asyncio.Event()  # every shard started or left out

        def settle() -> None:
            if all(lease.started or lease.shard in self.missing for lease in leases):
                settled.set()

        async def start(lease: _Lease) -> None:
            if lease.shard in self.missing:
                return
            own_sql, own_params = each.get(lease.shard, (sql, params))
            try:
                # Bounded in each shard's own task: a TaskGroup cancelled twice
                # does not cancel its tasks twice (see shardq.execute.deadline).
                with tracing.shard_span(lease.pool):  # in the shard's task: see shardq.tracing
                    async with bounded(self._deadline, self._timeout):
                        if self._prepare is not None:
                            await self._prepare(lease.shard, lease.pool)
                        await lease.start(own_sql, own_params, fetch_size, stream)
                        if self._partial:
                            settle()
                            await self._read_while_waiting(lease, settled)
            except (TimeoutError, ShardError) as exc:
                if not self._partial:
                    raise
                failure: Error = (
                    self._timed_out([lease.shard]) if isinstance(exc, TimeoutError) else exc
                )
                if not unavailable(failure, connecting=not lease.connected):
                    raise
                if lease.started:  # lost while its rows were read ahead
                    await self._leave(self._leases.index(lease), failure)
                else:
                    self.missing[lease.shard] = failure  # (lease.start released its connection)
                settle()

        try:
            if len(leases) == 1:
                await start(leases[0])
            else:
                async with asyncio.TaskGroup() as group:
                    for lease in leases:
                        group.create_task(start(lease))
        except TimeoutError:
            pending = [lease.shard for lease in leases if not lease.started]
            await self._close_quietly()
            raise self._timed_out(pending) from None
        except BaseExceptionGroup as group:
            await self._close_quietly()
            first = _unwrap(group)
            if isinstance(first, TimeoutError):
                pending = [lease.shard for lease in leases if not lease.started]
                raise self._timed_out(pending) from None
            raise first from first.__cause__
        except BaseException:
            await self._close_quietly()
            raise
        if self.missing and len(self.missing) == len(self._leases):
            # No shard answered: no partial result, the error.
            await self._close_quietly()
            failures = list(self.missing.values())
            if all(isinstance(f, QueryTimeoutError) for f in failures):
                raise self._timed_out(list(self.missing))
            raise next(f for f in failures if not isinstance(f, QueryTimeoutError))

    async def _read_while_waiting(self, lease: _Lease, settled: asyncio.Event) -> None:
        """Receive a started shard's rows while other shards are still to answer (partial).

        A merge gives no row until every shard has answered or been left
        out, and a shard silent until the deadline leaves no time after it:
        the rows of the shards that answered come in meanwhile (into memory,
        :attr:`_Lease.buffered`), so that the answer has them. Once every
        shard is settled, the read under way goes on as a read ahead.
        """
        index = self._leases.index(lease)
        while not settled.is_set() and lease.stream is not None and lease.stream.holds_connection:
            ahead = asyncio.ensure_future(lease.stream.fetch())
            waiting = asyncio.ensure_future(settled.wait())
            try:
                await asyncio.wait({ahead, waiting}, return_when=asyncio.FIRST_COMPLETED)
            except BaseException:
                ahead.cancel()  # (the deadline: the driver cancels the statement)
                await asyncio.gather(ahead, return_exceptions=True)
                raise
            finally:
                waiting.cancel()
            if not ahead.done():
                self._ahead[index] = ahead
                return
            lease.buffered += ahead.result()

    async def fetch(self, index: int) -> list[Row]:
        """Return the next batch of shard ``index``'s rows (empty when it is done).

        With several shards, the batch after the one returned is read ahead
        in the background, so that every shard keeps sending while the merge
        works on what has arrived.
        """
        rows = await self._fetch(index)
        if self.on_rows is not None and rows:
            self.on_rows(self._leases[index].shard, len(rows))
        return rows

    async def _fetch(self, index: int) -> list[Row]:
        receiving = self._receiving
        if receiving is not None and not receiving.done():
            await asyncio.shield(receiving)  # the rows are coming into memory
        if self._failure is not None:
            raise self._failure
        lease = self._leases[index]
        if lease.buffered:  # received while other shards were still to answer
            rows, lease.buffered = lease.buffered, []
            return rows
        stream = lease.stream
        if stream is None:
            return []
        if index not in self._ahead and not stream.holds_connection:
            # The rest of the result is in memory: no I/O, no task (most
            # results of a scatter are whole after start()). The deadline
            # still bounds the statement to its last row, as on the I/O path
            # (a partial result keeps what it has received).
            if (
                self._deadline is not None
                and time.monotonic() > self._deadline
                and not self._partial
            ):
                await self._close_quietly()
                raise self._timed_out([lease.shard])
            return await stream.fetch()
        try:
            ahead = self._ahead.pop(index, None)
            if ahead is None:
                ahead = asyncio.ensure_future(stream.fetch())
            if self._deadline is None:
                rows = await ahead
            else:
                async with bounded(self._deadline, self._timeout):
                    rows = await ahead
            if rows and len(self._leases) > 1 and stream.holds_connection:
                self._ahead[index] = asyncio.ensure_future(stream.fetch())
            return rows
        except TimeoutError:
            failure = self._timed_out([lease.shard])
            if self._partial:
                await self._leave(index, failure)
                return []
            await self._close_quietly()
            raise failure from None
        except ShardError as exc:
            if self._partial and unavailable(exc):
                await self._leave(index, exc)
                return []
            await self._close_quietly()
            raise
        except BaseException:
            await self._close_quietly()
            raise

    async def _leave(self, index: int, failure: Error, rows: list[Row] | None = None) -> None:
        """Leave shard ``index`` out of a partial result: it failed ``failure`` mid-stream.

        Its statement is stopped and its connection released, within the
        deadline's grace; ``rows`` it sent before, not yet delivered, stay.
        """
        lease = self._leases[index]
        self.missing[lease.shard] = failure
        ahead = self._ahead.pop(index, None)
        stopping: list[asyncio.Future[Any]] = [asyncio.ensure_future(lease.close())]
        if ahead is not None:
            ahead.cancel()
            stopping.append(ahead)
        stream = lease.stream
        await self._settle(stopping)
        if rows and stream is not None:
            lease.stream = _Received(stream, rows)

    async def receive(self) -> None:
        """Read the rest of every shard's rows into memory and give the connections back.

        For a statement that the open one would block (see
        :class:`~shardq.execute.driver.ShardPool`'s ``readers_block_writers``):
        the rows stay those of the statement as it started, as a database
        reading a snapshot would return them. The deadline still applies. A
        failure is the reader's: it is raised by the next :meth:`fetch`, not
        here, and the shards are released all the same.

        One task reads, whoever asks (the writes of a batch ask together), and
        it goes on if the caller is cancelled: rows read are never dropped.
        """
        if self.closed:
            return
        if self._receiving is None:
            self._receiving = asyncio.ensure_future(self._receive())
        await asyncio.shield(self._receiving)

    async def _receive(self) -> None:
        for index, lease in enumerate(self._leases):
            stream = lease.stream
            if stream is None or not stream.holds_connection:
                continue
            rows: list[Row] = []
            try:
                async with bounded(self._deadline, self._timeout):
                    ahead = self._ahead.pop(index, None)
                    if ahead is not None:
                        rows = await ahead
                    while stream.holds_connection:
                        rows += await stream.fetch()
                await lease.keep(rows)
                continue
            except TimeoutError:
                failure: Exception = self._timed_out([lease.shard])
            except Exception as exc:
                failure = exc
            if self._partial and isinstance(failure, Error) and unavailable(failure):
                await self._leave(index, failure, rows)
                continue
            self._failure = failure
            await self._close_quietly()
            return

    async def _close_quietly(self) -> None:
        """Close while another error is being raised: that error is the one to report.

        The shards are closed together, each in a task of its own, and by
        the end of the deadline's grace at the latest: a stream still running
        is cancelled on its server (by its driver), and one whose cancel
        cannot be delivered in time is cancelled again, which closes its
        connection without waiting (see :mod:`~shardq.execute.deadline`).
        """
        if self.closed:
            return
        self.closed = True
        await self._stop_reading()
        leases = [lease for lease in self._leases if lease.stream or lease.holds]
        if leases:
            await self._settle([asyncio.ensure_future(lease.close()) for lease in leases])

    async def close(self) -> None:
        """Stop whatever still runs and return every connection to its pool."""
        if self.closed:
            return
        self.closed = True
        await self._stop_reading()
        errors: list[BaseException] = []
        for lease in self._leases:
            try:
                await lease.close()
            except Exception as exc:
                errors.append(exc)
        if errors:
            raise errors[0]

    async def _stop_reading(self) -> None:
        """Cancel the reads in the background (the receiving task, the batches read ahead)."""
        tasks: list[asyncio.Future[Any]] = [*self._ahead.values()]
        self._ahead = {}
        receiving = self._receiving
        if receiving is not None and not receiving.done():
            tasks.append(receiving)
        for task in tasks:
            task.cancel()
        if tasks:
            await self._settle(tasks)  # their errors, if any, are not this close's to report

    async def _settle(self, tasks: list[asyncio.Future[Any]]) -> None:
        """Wait for ``tasks``, cancelling them (again) at the end of the deadline's grace.

        A statement cancelled on a host that does not answer would keep its
        task waiting for psycopg's own bounds (seconds); cancelled a second
        time, the driver closes its connection at once.
        """
        _, until = loop_deadlines(self._deadline, self._timeout)
        if until is None:
            until = asyncio.get_running_loop().time() + CANCEL_WAIT
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(until):
                await asyncio.gather(*tasks, return_exceptions=True)
        # Cut short: the gather cancelled each task; they now end without waiting.
        await asyncio.gather(*tasks, return_exceptions=True)
