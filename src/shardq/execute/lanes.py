"""Lanes: per-shard workers that run a batch's statements on held connections.

A batch runs thousands of small statements. Borrowing a pooled connection for
each one costs more than the statement (the issue measured a semaphore over a
pool checkout per statement at 6.0 k/s, against 16.4 k/s for a pipeline), so
each shard gets a lane: a queue of statements and up to ``max_size`` workers
(the pool's size), each holding one connection while the queue has work.
A worker takes a group of queued statements and runs it with
:func:`~shardq.execute.driver.run_statements`: on PostgreSQL consecutive reads
go as one pipeline, one round trip for the group.

A pipeline runs its statements one after the other on the server, so how
many go in one group, and how many workers a lane starts, follow what the
statements cost. Each lane keeps a running estimate of the seconds one
statement takes (a group's time over its size). A group holds as many
statements as run in about :data:`GROUP_TIME` (at most ``depth``), and the
first group of a lane, before anything is known, holds one. A lane starts
with one worker and starts more (up to the pool's size) only when a
statement has waited :data:`GROUP_TIME` in its queue with no worker free,
and the waiting is the statements' own doing (groups are kept smaller than
the queue by what they cost, or the lane's first statement is still running
after :data:`GROUP_TIME`). Cheap lookups then flow through one connection per
shard in deep pipelines, while slow queries each get a connection of their
own and run side by side.

A statement is queued with a future (:meth:`Lanes.run`, :meth:`Lanes.submit`
without ``done``) or with a ``done`` callback, which the worker calls with
the result: a batch of lookups then costs no task and no future per
statement.

Every statement has a deadline. A group runs under the earliest deadline of
its statements; when it passes, the group is cancelled on the server, the
statements out of time fail with :class:`~shardq.errors.QueryTimeoutError`
and the other reads of the group go back to the queue (a group holds reads
only, or one write alone, so nothing that may have been written runs twice).
A cancel the server does not take within the deadline's grace is given up and
its connection closed (see :mod:`~shardq.execute.deadline`); the worker then
takes another connection. Connecting, too, stops at the earliest deadline of
the statements waiting, which fail naming their shard.

Lanes belong to one batch: :meth:`Lanes.close` cancels the workers (and with
them the statements they run, on the servers) and gives their connections
back.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from shardq.errors import QueryTimeoutError
from shardq.execute.deadline import CANCEL_WAIT, bounded
from shardq.execute.driver import Outcome, Statement, run_statements

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from shardq.execute.driver import ShardPool

__all__ = ["DEFAULT_DEPTH", "GROUP_TIME", "Lanes"]

#: The most statements a worker sends to its shard as one group.
DEFAULT_DEPTH = 64
#: Seconds of server time a group aims at; also how long a statement may wait
#: in a lane's queue, with every worker busy, before the lane starts another.
GROUP_TIME = 0.02
#: Seconds an idle worker keeps its connection, waiting for more statements.
LINGER = 0.02


class _Job:
    """A statement waiting for, or running on, a lane's worker.

    Its end is told either through ``future`` (which the caller may cancel to
    withdraw it) or, without a future, through the ``done`` callback, called
    once.
    """

    __slots__ = ("convert", "deadline", "done", "future", "queued", "statement", "timeout")

    def __init__(
        self,
        statement: Statement,
        deadline: float | None,
        timeout: float | None,
        convert: Callable[[Outcome], Any] | None,
        done: Callable[[Any, BaseException | None], None] | None,
    ):
        self.statement = statement
        self.deadline = deadline
        self.timeout = timeout  # what the deadline was made of, for the error
        self.convert = convert  # applied to the outcome before it is told
        self.queued = 0.0  # time.monotonic() when it entered the queue
        self.done = done
        self.future: asyncio.Future[Any] | None = (
            asyncio.get_running_loop().create_future() if done is None else None
        )

    @property
    def settled(self) -> bool:
        """Told its end, or withdrawn."""
        return self.done is None if self.future is None else self.future.done()


class _Lane:
    """One shard's queue and workers."""

    def __init__(self, pool: ShardPool, depth: int, prepare: bool, ordered: bool):
        self.pool = pool
        self.shard = pool.name
        self.queue: deque[_Job] = deque()
        self.workers: set[asyncio.Task[None]] = set()
        self.active = 0  # workers that will still take jobs
        self.idle: deque[asyncio.Future[None]] = deque()  # workers waiting for a job
        self.max_workers = 1 if ordered else max(1, pool.max_size)
        self.depth = depth
        self.prepare = prepare
        self.cost: float | None = None  # estimated seconds per statement
        self.first_run: float | None = None  # when the first group started
        self.timer: asyncio.TimerHandle | None = None  # the next look at the queue

    def submit(self, job: _Job) -> None:
        job.queued = time.monotonic()
        self.queue.append(job)
        while self.idle:
            waiter = self.idle.popleft()
            if not waiter.done():  # else its worker has just stopped waiting
                waiter.set_result(None)
                return
        if not self.active:
            self._start_worker()
        elif self.timer is None and self.active < self.max_workers:
            self.timer = asyncio.get_running_loop().call_later(GROUP_TIME, self._grow)

    def _start_worker(self) -> None:
        # Counted now, not when the task starts or ends: a worker that has
        # decided to stop no longer counts, so no job is left without one.
        self.active += 1
        task = asyncio.ensure_future(self._work())
        self.workers.add(task)
        task.add_done_callback(self.workers.discard)

    def _grow(self) -> None:
        """Start workers for statements that waited too long with every worker busy.

        Only when waiting is the statements' own doing: when what they cost
        keeps groups smaller than the queue, or the lane's first statement
        has been running for :data:`GROUP_TIME`. Cheap statements queued
        behind a busy worker are better sent in its next, deeper, pipeline.
        """
        self.timer = None
        queue = self.queue
        if not queue or self.idle or self.active >= self.max_workers:
            return
        now = time.monotonic()
        if now - queue[0].queued >= GROUP_TIME:
            if self.cost is None:
                slow = self.first_run is not None and now - self.first_run >= GROUP_TIME
            else:
                slow = self._group_size() < len(queue)
            if slow:
                wanted = -(-len(queue) // self._group_size())  # the groups waiting
                for _ in range(min(wanted, self.max_workers - self.active)):
                    self._start_worker()
        if self.active < self.max_workers:
            self.timer = asyncio.get_running_loop().call_later(GROUP_TIME, self._grow)

    def _group_size(self) -> int:
        if self.cost is None:
            return 1  # nothing known yet: one statement tells what one costs
        return max(1, min(self.depth, int(GROUP_TIME / self.cost) if self.cost else self.depth))

    def _take(self) -> list[_Job]:
        """The next group: consecutive reads (a group's worth), or one write."""
        queue = self.queue
        now = time.monotonic()
        while queue and (queue[0].settled or _expired(queue[0], now, self.shard)):
            queue.popleft()  # withdrawn by its statement, or out of time before it ran
        if not queue:
            return []
        if queue[0].statement.write:
            return [queue.popleft()]
        size = self._group_size()
        group: list[_Job] = []
        while queue and len(group) < size and not queue[0].statement.write:
            job = queue.popleft()
            if not job.settled:
                group.append(job)
        return group

    async def _work(self) -> None:
        group: list[_Job] = []
        counted = True
        try:
            while counted:
                lend = self.pool.connection()
                try:
                    # A host that does not answer holds a connect for its
                    # connect_timeout: no longer than the statements can wait.
                    async with asyncio.timeout_at(_loop_time(self._earliest())):
                        conn = await lend.__aenter__()
                except TimeoutError:
                    now = time.monotonic()
                    for job in list(self.queue):
                        _expired(job, now, self.shard)
                    self.queue = deque(job for job in self.queue if not job.settled)
                    if not self.queue:
                        counted = False
                        self.active -= 1  # synchronously with finding the queue empty
                    continue
                try:
                    while True:
                        group = self._take()
                        if not group and not await self._linger():
                            counted = False
                            self.active -= 1  # synchronously with finding the queue empty
                            break
                        if group:
                            kept = await self._run(conn, group)
                            group = []
                            if not kept:
                                break  # timed out: give it back (the pool checks it), take another
                finally:
                    await lend.__aexit__(None, None, None)
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
        next statement open (or check out) a connection again. A new
        statement wakes one waiting worker, the one waiting longest.
        """
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.idle.append(waiter)
        try:
            async with asyncio.timeout(LINGER):
                await waiter
        except TimeoutError:
            pass
        finally:
            if waiter in self.idle:  # not woken: the timeout cancelled it
                self.idle.remove(waiter)
        return bool(self.queue)

    def _earliest(self) -> float | None:
        """The earliest deadline of the statements waiting (None: none has one)."""
        deadlines = [job.deadline for job in self.queue if job.deadline is not None]
        return min(deadlines) if deadlines else None

    async def _run(self, conn: object, group: list[_Job]) -> bool:
        """Run ``group`` on ``conn``; False when it timed out (the connection may be closed)."""
        timed = [job for job in group if job.deadline is not None]
        first = min(timed, key=lambda job: job.deadline or 0.0) if timed else None
        statements = [job.statement for job in group]
        started = time.monotonic()
        if self.first_run is None:
            self.first_run = started
        try:
            async with bounded(
                None if first is None else first.deadline, None if first is None else first.timeout
            ):
                outcomes = await run_statements(conn, statements, prepare=self.prepare)  # type: ignore[arg-type]
        except TimeoutError:
            now = time.monotonic()
            self._learn(now - started, 1)  # at least that slow, as far as we know
            for job in reversed(group):
                if job.deadline is not None and job.deadline <= now:
                    _settle(job, QueryTimeoutError(job.timeout or 0.0, (self.shard,)))
                elif not job.settled:
                    self.queue.appendleft(job)  # a read: run it again with the next group
            return False
        self._learn(time.monotonic() - started, len(group))
        skipped = [job for job, outcome in zip(group, outcomes, strict=True) if outcome is None]
        self.queue.extendleft(reversed(skipped))  # not run: first in line again
        for job, outcome in zip(group, outcomes, strict=True):
            if outcome is not None:
                _settle(job, outcome)
        return True

    def _learn(self, elapsed: float, statements: int) -> None:
        each = elapsed / statements
        # Mostly the latest group: a lane's statements change as a batch goes.
        self.cost = each if self.cost is None else 0.5 * self.cost + 0.5 * each


def _expired(job: _Job, now: float, shard: str) -> bool:
    if job.deadline is None or job.deadline > now:
        return False
    _settle(job, QueryTimeoutError(job.timeout or 0.0, (shard,)))
    return True


def _loop_time(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    return asyncio.get_running_loop().time() + (deadline - time.monotonic())


def _settle(job: _Job, outcome: Outcome | BaseException) -> None:
    """Tell ``job``'s end (once): its converted outcome, or an exception."""
    result: Any = None
    exc: BaseException | None = None
    if isinstance(outcome, BaseException):
        exc = outcome
    elif job.convert is None:
        result = outcome
    else:
        try:
            result = job.convert(outcome)
        except Exception as error:
            exc = error
    future, done = job.future, job.done
    if future is not None:
        if future.done():
            return  # withdrawn
        if isinstance(exc, asyncio.CancelledError):
            future.cancel()
        elif exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)
    elif done is not None:
        job.done = None
        done(result, exc)


def _fail(jobs: list[_Job], exc: BaseException | None) -> None:
    """Settle ``jobs`` with ``exc``, or cancel them (None)."""
    for job in jobs:
        _settle(job, asyncio.CancelledError() if exc is None else exc)


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

    def submit(
        self,
        shard: str,
        statement: Statement,
        *,
        deadline: float | None,
        timeout: float | None,
        convert: Callable[[Outcome], Any] | None = None,
        done: Callable[[Any, BaseException | None], None] | None = None,
    ) -> asyncio.Future[Any] | None:
        """Queue ``statement`` on ``shard``; its outcome (``convert``-ed) is told when it ends.

        ``deadline`` is in ``time.monotonic()`` seconds; ``timeout`` is what
        it was made of, for the error. With ``done``, the worker calls
        ``done(result, None)`` or ``done(None, exc)`` (a
        :class:`asyncio.CancelledError` when the lanes close first), and
        None is returned: no future, no task. Without, a future is returned;
        cancelling it withdraws the statement (one already sent is finished
        by its worker, and its result dropped).
        """
        lane = self._lanes.get(shard)
        if lane is None:
            if self.closed:
                raise RuntimeError("the batch is over")
            lane = self._lanes[shard] = _Lane(
                self._pools[shard], self._depth, self._prepare, self._ordered
            )
        job = _Job(statement, deadline, timeout, convert, done)
        lane.submit(job)
        return job.future

    async def run(
        self, shard: str, statement: Statement, *, deadline: float | None, timeout: float | None
    ) -> Outcome:
        """Run ``statement`` on ``shard`` by its deadline: :meth:`submit`, awaited.

        Cancelling the caller withdraws the statement.
        """
        future = self.submit(shard, statement, deadline=deadline, timeout=timeout)
        assert future is not None
        try:
            outcome: Outcome = await future
            return outcome
        finally:
            if not future.done():
                future.cancel()

    async def close(self) -> None:
        """Cancel every worker (their statements on the servers) and return the connections."""
        self.closed = True
        for lane in self._lanes.values():
            if lane.timer is not None:
                lane.timer.cancel()
        workers = [task for lane in self._lanes.values() for task in lane.workers]
        for task in workers:
            task.cancel()
        for lane in self._lanes.values():
            _fail(list(lane.queue), None)
            lane.queue.clear()
        if workers:
            # A worker whose cancel the server does not take within
            # CANCEL_WAIT is cancelled again: its connection is then closed.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CANCEL_WAIT):
                    await asyncio.gather(*workers, return_exceptions=True)
            await asyncio.gather(*workers, return_exceptions=True)
