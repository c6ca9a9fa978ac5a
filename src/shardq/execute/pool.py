"""A small lazy connection pool, shared by every driver.

Connections are opened on demand, in the task that needs one, so a shard that
cannot be reached fails that task at once with the connection error (fail
fast), instead of the caller waiting out a pool timeout while a background
task retries (what ``psycopg_pool`` does). Idle connections are kept for
reuse; one that is broken or mid-transaction when it comes back is closed
instead of being lent again.

Healing: a pool outlives the servers' restarts, so an idle connection may be
dead when it is lent. The rule:

- Every checkout checks the idle connection it takes with the driver's
  ``alive`` test, which costs no round trip (for PostgreSQL: not closed, not
  broken, and nothing to read on its socket; see
  :func:`~shardq.execute.drivers.postgres.socket_quiet`). A dead one is
  closed and the next idle one, or a new one, is lent instead: a statement
  never starts on a connection already known to be dead. A server that shut
  down (fast or immediate), restarted, crashed and reset its sessions, or
  ended one session leaves the socket readable (its FATAL message, or the
  end of the stream), so all of these are caught here.
- When a lent connection comes back ``broken`` (its statement found the
  connection lost), every connection idle at that moment is suspect: they
  are closed at once, not lent again. This covers what the cheap test cannot
  see: a host that crashed or a network that dropped the connection sends
  nothing, and its idle connections would otherwise fail one statement each.
  A needless close costs a reconnection, never a failed statement.
- A statement that fails because its connection broke is not retried: the
  driver cannot tell whether the server received it (psycopg reports a lost
  connection the same way before and after the statement's bytes left), so
  a retry might run it twice. Only the statements that were running on a
  connection when it broke fail; the checkout test keeps the others from
  starting on it.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Generic, TypeVar

from shardq.errors import OperationalError, shard_error

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

__all__ = ["LazyPool"]

C = TypeVar("C")


class LazyPool(Generic[C]):
    """Up to ``max_size`` connections to one shard, opened when first needed.

    Args:
        name: the shard's name, for errors.
        open: opens one connection (raising the shard's error if it cannot).
        close: closes one connection; must not raise for a broken one.
        reusable: whether a returned connection may be lent again.
        alive: whether an idle connection may be lent (checked at every
            checkout, so it must not wait on the network); None: always.
        broken: whether a returned connection was lost (not closed on
            purpose): the connections idle then are closed too.
        max_size: the most connections open at once.
        min_size: connections opened together on first use (a warm-up).
        acquire_timeout: seconds to wait for a connection when all are lent.
    """

    def __init__(
        self,
        name: str,
        *,
        open: Callable[[], Awaitable[C]],
        close: Callable[[C], Awaitable[None]],
        reusable: Callable[[C], bool],
        alive: Callable[[C], bool] | None = None,
        broken: Callable[[C], bool] | None = None,
        max_size: int,
        min_size: int = 0,
        acquire_timeout: float = 30.0,
    ):
        self.name = name
        self._open = open
        self._close = close
        self._reusable = reusable
        self._alive = alive
        self._broken = broken
        self.max_size = max_size
        self._min_size = min_size  # opened together on first use, then 0
        self._acquire_timeout = acquire_timeout
        self._idle: list[C] = []
        self._lent = 0
        self._slots: asyncio.Semaphore | None = None
        self.closed = False
        #: Idle connections found dead at checkout, and closed for a lost one (a count).
        self.discarded = 0
        #: Tasks waiting for a connection now (every one is lent).
        self.waiting = 0

    @property
    def size(self) -> int:
        """Connections open now (idle and lent)."""
        return len(self._idle) + self._lent

    @property
    def in_use(self) -> int:
        """Connections lent now."""
        return self._lent

    def __repr__(self) -> str:
        return f"<LazyPool shard={self.name!r} open={self.size}/{self.max_size}>"

    async def _acquire_slot(self) -> asyncio.Semaphore:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.max_size)
        if not self._slots.locked():
            # A connection slot is free: take it without arming a timer.
            await self._slots.acquire()
            return self._slots
        self.waiting += 1
        try:
            async with asyncio.timeout(self._acquire_timeout):
                await self._slots.acquire()
        except TimeoutError:
            raise shard_error(
                self.name,
                OperationalError,
                f"no connection available within {self._acquire_timeout:g} s: all "
                f"{self.max_size} are in use (by statements, or by results not yet read)",
            ) from None
        finally:
            self.waiting -= 1
        return self._slots

    def connection(self) -> _Lend[C]:
        """Lend a connection for the ``async with`` block."""
        return _Lend(self)

    async def acquire(self) -> C:
        """Take a connection (opening one if none is idle); give it back with :meth:`release`."""
        if self.closed:
            raise shard_error(self.name, OperationalError, "the pool is closed")
        if self._min_size:
            count, self._min_size = self._min_size, 0
            await self.fill(count)
        slots = await self._acquire_slot()
        try:
            conn = await self._lend_idle()
            if conn is None:
                conn = await self._open()
        except BaseException:
            slots.release()
            raise
        self._lent += 1
        return conn

    async def _lend_idle(self) -> C | None:
        """The most recently used idle connection that is alive, or None; dead ones are closed."""
        alive = self._alive
        # self._idle read anew after each await: a lost connection's release
        # may have taken the list away meanwhile (to close its connections).
        while self._idle:
            conn = self._idle.pop()
            if alive is None or alive(conn):
                return conn
            self.discarded += 1
            await self._discard(conn)
        return None

    async def _discard(self, conn: C) -> None:
        with contextlib.suppress(Exception):
            await self._close(conn)

    async def release(self, conn: C) -> None:
        """Take back a lent connection: kept if reusable, else closed."""
        self._lent -= 1
        try:
            # Over max_size only when a warm-up (fill) raced with checkouts
            # that opened their own: the extra ones go.
            if not self.closed and self.size < self.max_size and self._reusable(conn):
                self._idle.append(conn)
            else:
                if self._broken is not None and self._broken(conn):
                    await self._drop_idle()
                await self._close(conn)
        finally:
            assert self._slots is not None
            self._slots.release()

    async def _drop_idle(self) -> None:
        """A connection was lost: close the idle ones, which may be lost too (see the module)."""
        idle, self._idle = self._idle, []
        self.discarded += len(idle)
        for conn in idle:
            await self._discard(conn)

    async def fill(self, count: int) -> None:
        """Open connections until ``count`` are open (a warm-up for ``pool_min_size``)."""
        missing = min(count, self.max_size) - self.size
        if missing <= 0:
            return
        results = await asyncio.gather(
            *(self._open() for _ in range(missing)), return_exceptions=True
        )
        opened = [r for r in results if not isinstance(r, BaseException)]
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            for conn in opened:  # all or nothing: none left open unaccounted for
                with contextlib.suppress(Exception):
                    await self._close(conn)
            raise failures[0]
        # Checkouts meanwhile may have opened their own: keep what fits.
        room = max(self.max_size - self.size, 0)
        self._idle.extend(opened[:room])
        for conn in opened[room:]:
            await self._discard(conn)

    async def close(self) -> None:
        """Close the idle connections; lent ones are closed when they come back."""
        self.closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            with contextlib.suppress(Exception):
                await self._close(conn)


class _Lend(Generic[C]):
    """``async with pool.connection() as conn``: a class, cheaper than a generator."""

    __slots__ = ("_conn", "_pool")

    def __init__(self, pool: LazyPool[C]):
        self._pool = pool

    async def __aenter__(self) -> C:
        self._conn = await self._pool.acquire()
        return self._conn

    async def __aexit__(self, *exc_info: object) -> None:
        await self._pool.release(self._conn)
