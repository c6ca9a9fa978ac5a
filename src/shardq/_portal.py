"""A portal: an event loop on its own thread, called into by blocking code.

The DB-API facade owns one portal per connection. Every blocking method is
one call through it into the async core, so the sync API is the async one,
not a second implementation, and it works where the caller's thread already
runs an event loop (a notebook, an async web app calling sync code).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from typing import TYPE_CHECKING, Any, TypeVar

from shardq.errors import InterfaceError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

__all__ = ["Portal"]

T = TypeVar("T")


class Portal:
    """Runs coroutines on a private event loop thread."""

    def __init__(self, name: str = "shardq-portal"):
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        self.closed = False
        self._calls: set[asyncio.Task[Any]] = set()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()
        # Let async generators and tasks left behind finish their cleanup.
        self._loop.run_until_complete(self._loop.shutdown_asyncgens())
        self._loop.close()

    def call(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """Run ``fn(*args, **kwargs)`` on the portal's loop and wait for its result.

        If the wait is interrupted (Ctrl-C), the coroutine is cancelled, which
        cancels its statements on the servers, before the interruption goes on.
        """
        if self.closed:
            raise InterfaceError("the connection is closed")
        if threading.current_thread() is self._thread:
            raise InterfaceError(
                "a blocking shardq call was made from shardq's own event loop thread; "
                "use the AsyncConnection API there"
            )

        finished = threading.Event()

        async def run() -> T:
            task = asyncio.current_task()
            assert task is not None
            self._calls.add(task)
            try:
                return await fn(*args, **kwargs)
            finally:
                self._calls.discard(task)
                finished.set()

        future = asyncio.run_coroutine_threadsafe(run(), self._loop)
        try:
            return future.result()
        except concurrent.futures.CancelledError:
            if self.closed:
                raise InterfaceError(
                    "the connection was closed while this call was running"
                ) from None
            raise
        except BaseException:
            if not future.done():
                future.cancel()
                # Wait for the cancelled coroutine's cleanup (server-side
                # cancellation, connections back to their pools).
                finished.wait(timeout=30)
            raise

    async def _cancel_pending(self) -> None:
        # Cancel the calls only, once each: their cancellation flows down to
        # the shard tasks. Cancelling those too would interrupt psycopg's own
        # server-side cancellation, leaving the statements running.
        tasks = list(self._calls)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def close(self) -> None:
        """Cancel what still runs (other threads' calls), stop the loop, join its thread."""
        if self.closed:
            return
        self.closed = True
        if threading.current_thread() is not self._thread:
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._cancel_pending(), self._loop).result(30)
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._loop.stop)
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=30)
