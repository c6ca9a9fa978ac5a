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
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterable

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


async def _aiter(items: Iterable[T] | AsyncIterable[T]) -> AsyncIterator[T]:
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield item
    else:
        for item in items:
            yield item


async def run_batch(
    run: Callable[[T], Awaitable[Any]],
    items: Iterable[T] | AsyncIterable[T],
    *,
    concurrency: int,
    raise_on_first_error: bool,
    window: int | None = None,
    progress: Callable[[Progress], object] | None = None,
    total: int | None = None,
) -> AsyncIterator[ExecutionResult]:
    """Run ``run(item)`` for every item, ``concurrency`` at most at once; yield in order.

    Args:
        run: runs one item; what it returns is the item's result.
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
    loop = asyncio.get_running_loop()
    slots = asyncio.Semaphore(concurrency)
    room = asyncio.Semaphore(window) if window is not None else None
    futures: dict[int, asyncio.Future[ExecutionResult]] = {}
    tasks: set[asyncio.Task[None]] = set()
    arrived = asyncio.Event()
    completed = failed = 0
    failure: BaseException | None = None

    def stop(exc: BaseException) -> None:
        nonlocal failure
        if failure is None:
            failure = exc
        dispatcher.cancel()
        for task in tasks:
            task.cancel()
        for future in futures.values():
            if not future.done():
                future.set_result(_STOPPED)
        arrived.set()

    async def one(index: int, item: T, future: asyncio.Future[ExecutionResult]) -> None:
        nonlocal completed, failed
        try:
            outcome = ExecutionResult(True, await run(item))
        except asyncio.CancelledError:
            if not future.done():
                future.set_result(_STOPPED)
            raise
        except Exception as exc:
            exc.add_note(f"(statement {index} of the batch, counting from 0)")
            outcome = ExecutionResult(False, exc)
        finally:
            slots.release()
        completed += 1
        if not outcome.success:
            failed += 1
        if not future.done():
            future.set_result(outcome)
        if not outcome.success and raise_on_first_error:
            stop(outcome.result_or_exc)
            return
        if progress is not None:
            try:
                progress(Progress(completed, failed, total))
            except Exception as exc:
                stop(exc)

    def start(index: int, item: T) -> None:
        future = loop.create_future()
        futures[index] = future
        task = loop.create_task(one(index, item, future))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        arrived.set()

    async def dispatch() -> None:
        nonlocal total
        index = 0
        try:
            async for item in _aiter(items):
                if room is not None:
                    await room.acquire()
                await slots.acquire()
                start(index, item)
                index += 1
        finally:
            if total is None:
                total = index
            arrived.set()

    dispatcher = loop.create_task(dispatch())
    try:
        index = 0
        while True:
            future = futures.get(index)
            if future is None:  # not started yet, or never will be
                if failure is not None:
                    raise failure
                if dispatcher.done():
                    if not dispatcher.cancelled() and dispatcher.exception() is not None:
                        raise dispatcher.exception()  # type: ignore[misc]  # the items' own error
                    return
                arrived.clear()
                await arrived.wait()
                continue
            outcome = await future
            del futures[index]
            index += 1
            if room is not None:
                room.release()
            if outcome is _STOPPED or (not outcome.success and raise_on_first_error):
                raise failure if failure is not None else outcome.result_or_exc
            yield outcome
    finally:
        dispatcher.cancel()
        pending = [dispatcher, *tasks]
        for task in tasks:
            task.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.gather(*pending, return_exceptions=True)
