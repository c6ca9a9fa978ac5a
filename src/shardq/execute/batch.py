"""Batches: many statements at once, with a bound, results in the order given.

:func:`run_batch` takes statements one by one from an iterable (so a batch of
millions is never held whole), starts each as soon as fewer than
``concurrency`` are in flight, and yields one :class:`ExecutionResult` per
statement in input order. With ``window`` set, at most that many statements
are between their start and the moment their result is taken, so a slow
consumer or one slow statement holds memory bounded by the window, not by the
batch.

The first failure, with ``raise_on_first_error``, stops the batch: no new
statement starts, those in flight are cancelled (on the servers too) and the
error is raised, with a note naming the statement.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterable
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable

    #: Called once when a statement ends: with its result, or with what it raised.
    Done = Callable[[Any, BaseException | None], None]
    #: Makes the awaitable of one statement's result: called in its task, when the task runs.
    Run = Callable[[], Awaitable[Any]]

__all__ = ["ExecutionResult", "Progress", "run_batch"]

T = TypeVar("T")


class ExecutionResult(NamedTuple):
    """The outcome of one statement of a batch.

    ``success`` is True and ``result_or_exc`` the statement's
    :class:`~shardq.results.ResultSet`, or ``success`` is False and
    ``result_or_exc`` the exception it raised.
    """

    success: bool
    result_or_exc: Any


class Progress(NamedTuple):
    """How far a batch is: passed to its ``progress`` callback after each statement."""

    completed: int  #: statements finished, with success or not
    failed: int  #: of which failed
    total: int | None  #: statements in the batch, None while an iterator is not exhausted


class _Stop(NamedTuple):
    """Stands for the result of a statement cancelled because the batch stopped."""


_STOPPED = ExecutionResult(False, _Stop())


class _Batch:
    """The state of one batch: slots, finished results, and who waits for what."""

    def __init__(
        self,
        start: Callable[[Any, Done], Run | None],
        concurrency: int,
        raise_on_first_error: bool,
        window: int | None,
        progress: Callable[[Progress], object] | None,
        total: int | None,
    ):
        self.start = start
        self.free = concurrency  # slots: statements that may still start
        self.window = window
        self.raise_on_first_error = raise_on_first_error
        self.progress = progress
        self.total = total
        self.started = 0  # statements started (the next one's index)
        self.taken = 0  # results handed out (the next one's index)
        self.finished: dict[int, ExecutionResult] = {}  # finished, not yet taken
        self.completed = self.failed = 0
        self.failure: BaseException | None = None
        self.exhausted = False  # no statement will start any more
        self.tasks: set[asyncio.Task[None]] = set()
        self.dispatcher: asyncio.Task[None] | None = None
        self.wait_room: asyncio.Future[None] | None = None  # the dispatcher waits
        self.wait_result: asyncio.Future[None] | None = None  # the consumer waits

    def _wake_consumer(self) -> None:
        waiter = self.wait_result
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _wake_dispatcher(self) -> None:
        waiter = self.wait_room
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _has_room(self) -> bool:
        return self.free > 0 and (self.window is None or self.started - self.taken < self.window)

    def stop(self, exc: BaseException) -> None:
        """No new statement starts, those running are cancelled; ``exc`` will be raised."""
        if self.failure is None:
            self.failure = exc
        self.exhausted = True
        if self.dispatcher is not None:
            self.dispatcher.cancel()
        for task in list(self.tasks):
            task.cancel()
        self._wake_consumer()

    def done(self, index: int, result: Any, exc: BaseException | None) -> None:
        """Statement ``index`` ended (called once for each)."""
        self.free += 1
        if isinstance(exc, asyncio.CancelledError):
            outcome = _STOPPED  # withdrawn: the batch is over
        else:
            self.completed += 1
            if exc is None:
                outcome = ExecutionResult(True, result)
            else:
                self.failed += 1
                exc.add_note(f"(statement {index} of the batch, counting from 0)")
                outcome = ExecutionResult(False, exc)
        self.finished[index] = outcome
        if index == self.taken:
            self._wake_consumer()
        self._wake_dispatcher()
        if outcome is _STOPPED:
            return
        if exc is not None and self.raise_on_first_error:
            self.stop(exc)
        elif self.progress is not None:
            try:
                self.progress(Progress(self.completed, self.failed, self.total))
            except Exception as error:
                self.stop(error)

    def _launch(self, item: Any) -> None:
        index = self.started
        self.started += 1
        self.free -= 1

        def done(result: Any, exc: BaseException | None) -> None:
            self.done(index, result, exc)

        try:
            run = self.start(item, done)
        except Exception as exc:
            done(None, exc)
            return
        if run is not None:
            task = asyncio.ensure_future(self._follow(run, done))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    @staticmethod
    async def _follow(run: Run, done: Done) -> None:
        # The statement's coroutine is made here, in the task, not by start(): a
        # task cancelled before its first step (the batch stopped) never runs its
        # body, and a coroutine made outside it would be dropped unawaited.
        try:
            result = await run()
        except asyncio.CancelledError as exc:  # withdrawn: the batch is over
            done(None, exc)
            raise
        except Exception as exc:
            done(None, exc)
        else:
            done(result, None)

    async def _room(self) -> None:
        while not self._has_room():
            self.wait_room = asyncio.get_running_loop().create_future()
            await self.wait_room

    async def dispatch(self, items: Iterable[Any] | AsyncIterable[Any]) -> None:
        try:
            if isinstance(items, AsyncIterable):
                async for item in items:
                    await self._room()
                    self._launch(item)
                    if self.failure is not None:
                        break
            else:
                for item in items:  # read on the event loop's thread: see the README
                    if not self._has_room():
                        await self._room()
                    self._launch(item)
                    if self.failure is not None:
                        break
        finally:
            self.exhausted = True
            if self.total is None:
                self.total = self.started
            self._wake_consumer()

    async def results(self) -> AsyncIterator[ExecutionResult]:
        finished = self.finished
        while True:
            outcome = finished.pop(self.taken, None)
            if outcome is None:
                if self.failure is not None:
                    raise self.failure
                if self.exhausted and self.taken >= self.started:
                    dispatcher = self.dispatcher
                    if dispatcher is not None and dispatcher.done() and not dispatcher.cancelled():
                        error = dispatcher.exception()
                        if error is not None:
                            raise error  # the items' own error
                    if self.taken >= self.started:
                        return
                self.wait_result = asyncio.get_running_loop().create_future()
                await self.wait_result
                continue
            self.taken += 1
            if self.window is not None:
                self._wake_dispatcher()
            if outcome is _STOPPED or (not outcome.success and self.raise_on_first_error):
                raise self.failure if self.failure is not None else outcome.result_or_exc
            yield outcome

    async def close(self) -> None:
        pending: list[asyncio.Future[Any]] = list(self.tasks)
        if self.dispatcher is not None:
            self.dispatcher.cancel()
            pending.append(self.dispatcher)
        for task in self.tasks:
            task.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.gather(*pending, return_exceptions=True)


async def run_batch(
    start: Callable[[Any, Done], Run | None],
    items: Iterable[T] | AsyncIterable[T],
    *,
    concurrency: int,
    raise_on_first_error: bool,
    window: int | None = None,
    progress: Callable[[Progress], object] | None = None,
    total: int | None = None,
) -> AsyncGenerator[ExecutionResult, None]:
    """Start every item, ``concurrency`` at most at once; yield the results in order.

    Args:
        start: ``start(item, done)`` starts one item. It either returns a
            function of no argument that makes the awaitable of the item's
            result (called in a task of the batch's own when that task runs,
            so an item withdrawn before it runs leaves no coroutine
            unawaited), or returns None and calls ``done(result, None)`` or
            ``done(None, exc)`` once, now or later, without a task of the
            batch's own (a lane's worker calls it). Raising is the item's
            failure.
        items: the statements, consumed as they are started.
        concurrency: the most items in flight at once.
        raise_on_first_error: stop at the first failure and raise it; else
            failures are yielded as ``ExecutionResult(False, exc)``.
        window: the most items started and not yet yielded (None: no bound).
        progress: called with a :class:`Progress` after each item finishes.
        total: the number of items, when known, for ``progress``.
    """
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    if window is not None and window < concurrency:
        raise ValueError("window must be at least concurrency")
    batch = _Batch(start, concurrency, raise_on_first_error, window, progress, total)
    batch.dispatcher = asyncio.get_running_loop().create_task(batch.dispatch(items))
    try:
        async for outcome in batch.results():
            yield outcome
    finally:
        await batch.close()
