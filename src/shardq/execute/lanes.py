"""Lanes: per-shard workers that run a batch's statements on held connections.

A batch runs thousands of small statements. Borrowing a pooled connection for
each one costs more than the statement (the issue measured a semaphore over a
pool checkout per statement at 6.0 k/s, against 16.4 k/s for a pipeline), so
each shard gets a lane: a queue of statements and up to ``max_size`` workers
(the pool's size), each holding one connection while the queue has work.
A worker takes a group of queued statements and runs it with
:func:`~shardq.execute.driver.run_statements`: on PostgreSQL consecutive reads
go as one pipeline, one round trip for the group.

Every statement has a deadline. A group runs under the earliest deadline of
its statements; when it passes, the group is cancelled on the server, the
statements out of time fail with :class:`~shardq.errors.QueryTimeoutError`
and the other reads of the group go back to the queue (a group holds reads
only, or one write alone, so nothing that may have been written runs twice).

Lanes belong to one batch: :meth:`Lanes.close` cancels the workers (and with
them the statements they run, on the servers) and gives their connections
back.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from typing import TYPE_CHECKING

from shardq.errors import QueryTimeoutError
from shardq.execute.driver import Outcome, Statement, run_statements

if TYPE_CHECKING:
    from collections.abc import Mapping

    from shardq.execute.driver import ShardPool

__all__ = ["DEFAULT_DEPTH", "Lanes"]

#: The most statements a worker sends to its shard as one group.
DEFAULT_DEPTH = 32
#: Seconds an idle worker keeps its connection, waiting for more statements.
LINGER = 0.02


class _Job:
    __slots__ = ("deadline", "future", "statement", "timeout")

    def __init__(self, statement: Statement, deadline: float | None, timeout: float | None):
        self.statement = statement
        self.deadline = deadline
        self.timeout = timeout  # what the deadline was made of, for the error
        self.future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()


class _Lane:
    """One shard's queue and workers."""

    def __init__(self, pool: ShardPool, depth: int, prepare: bool, ordered: bool):
        self.pool = pool
        self.shard = pool.name
        self.queue: deque[_Job] = deque()
        self.workers: set[asyncio.Task[None]] = set()
        self.active = 0  # workers that will still take jobs
        self.idle = 0  # of which waiting for one
        self.wake = asyncio.Event()
        self.max_workers = 1 if ordered else max(1, pool.max_size)
        self.depth = depth
        self.prepare = prepare

    def submit(self, job: _Job) -> None:
        self.queue.append(job)
        if self.idle:
            self.wake.set()
        elif self.active < self.max_workers:
            # Counted now, not when the task starts or ends: a worker that has
            # decided to stop no longer counts, so no job is left without one.
            self.active += 1
            task = asyncio.ensure_future(self._work())
            self.workers.add(task)
            task.add_done_callback(self.workers.discard)

    def _take(self) -> list[_Job]:
        """The next group: consecutive reads (as many as ``depth``), or one write."""
        queue = self.queue
        now = time.monotonic()
        while queue and (queue[0].future.done() or _expired(queue[0], now)):
            queue.popleft()  # withdrawn by its statement, or out of time before it ran
        if not queue:
            return []
        if queue[0].statement.write:
            return [queue.popleft()]
        group: list[_Job] = []
        while queue and len(group) < self.depth and not queue[0].statement.write:
            job = queue.popleft()
            if not job.future.done():
                group.append(job)
        return group

    async def _work(self) -> None:
        group: list[_Job] = []
        counted = True
        try:
            async with self.pool.connection() as conn:
                while True:
                    group = self._take()
                    if not group and not await self._linger():
                        counted = False
                        self.active -= 1  # synchronously with finding the queue empty
                        break
                    if group:
                        await self._run(conn, group)
                        group = []
        except asyncio.CancelledError:
            _fail(group, None)
            raise
        except Exception as exc:
            # No connection (the shard is down), or it broke mid-group: the
            # statements waiting here would meet the same error.
            _fail(group, exc)
            _fail(list(self.queue), exc)
            self.queue.clear()
        finally:
            if counted:
                self.active -= 1

    async def _linger(self) -> bool:
        """Wait a moment for more work, holding the connection; whether some came.

        The batch refills the queues as results come back, a few event-loop
        turns after a group ends; a worker that left at once would make the
        next statement open (or check out) a connection again.
        """
        self.idle += 1
        try:
            async with asyncio.timeout(LINGER):
                while not self.queue:
                    self.wake.clear()
                    await self.wake.wait()
        except TimeoutError:
            return bool(self.queue)
        finally:
            self.idle -= 1
        return True

    async def _run(self, conn: object, group: list[_Job]) -> None:
        deadlines = [job.deadline for job in group if job.deadline is not None]
        deadline = min(deadlines) if deadlines else None
        statements = [job.statement for job in group]
        try:
            async with asyncio.timeout_at(_loop_time(deadline)):
                outcomes = await run_statements(conn, statements, prepare=self.prepare)  # type: ignore[arg-type]
        except TimeoutError:
            now = time.monotonic()
            for job in reversed(group):
                if job.deadline is not None and job.deadline <= now:
                    _settle(job, QueryTimeoutError(job.timeout or 0.0, (self.shard,)))
                elif not job.future.done():
                    self.queue.appendleft(job)  # a read: run it again with the next group
            return
        skipped = [job for job, outcome in zip(group, outcomes, strict=True) if outcome is None]
        self.queue.extendleft(reversed(skipped))  # not run: first in line again
        for job, outcome in zip(group, outcomes, strict=True):
            if outcome is not None:
                _settle(job, outcome)


def _expired(job: _Job, now: float) -> bool:
    if job.deadline is None or job.deadline > now:
        return False
    _settle(job, QueryTimeoutError(job.timeout or 0.0))
    return True


def _loop_time(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    return asyncio.get_running_loop().time() + (deadline - time.monotonic())


def _settle(job: _Job, outcome: Outcome | BaseException) -> None:
    if job.future.done():
        return
    if isinstance(outcome, BaseException):
        job.future.set_exception(outcome)
    else:
        job.future.set_result(outcome)


def _fail(jobs: list[_Job], exc: BaseException | None) -> None:
    """Settle ``jobs`` with ``exc``, or cancel them (None)."""
    for job in jobs:
        if job.future.done():
            continue
        if exc is None:
            job.future.cancel()
        else:
            job.future.set_exception(exc)


class Lanes:
    """The lanes of one batch, one per shard, made on first use.

    Args:
        pools: the shards' pools.
        depth: the most statements sent to a shard as one group.
        prepare: prepare statements on the server (the same text runs many times).
        ordered: one worker per shard, so each shard runs its statements in the
            order they were submitted (``executemany``'s writes).
    """

    def __init__(
        self,
        pools: Mapping[str, ShardPool],
        *,
        depth: int = DEFAULT_DEPTH,
        prepare: bool = False,
        ordered: bool = False,
    ):
        self._pools = pools
        self._lanes: dict[str, _Lane] = {}
        self._depth = depth
        self._prepare = prepare
        self._ordered = ordered
        self.closed = False

    async def run(
        self, shard: str, statement: Statement, *, deadline: float | None, timeout: float | None
    ) -> Outcome:
        """Run ``statement`` on ``shard`` by its deadline (``time.monotonic()`` seconds).

        Cancelling the caller withdraws the statement; one already sent is
        finished by its worker, and its result dropped.
        """
        lane = self._lanes.get(shard)
        if lane is None:
            if self.closed:
                raise RuntimeError("the batch is over")
            lane = self._lanes[shard] = _Lane(
                self._pools[shard], self._depth, self._prepare, self._ordered
            )
        job = _Job(statement, deadline, timeout)
        lane.submit(job)
        try:
            return await job.future
        finally:
            if not job.future.done():
                job.future.cancel()

    async def close(self) -> None:
        """Cancel every worker (their statements on the servers) and return the connections."""
        self.closed = True
        workers = [task for lane in self._lanes.values() for task in lane.workers]
        for task in workers:
            task.cancel()
        for lane in self._lanes.values():
            _fail(list(lane.queue), None)
            lane.queue.clear()
        if workers:
            with contextlib.suppress(Exception):
                await asyncio.gather(*workers, return_exceptions=True)
