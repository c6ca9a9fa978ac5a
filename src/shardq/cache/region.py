"""Cache regions: dogpile.cache's algorithm, async, over a shared backend.

A region holds results for ``ttl`` seconds. A lookup is one of:

- a **hit**: the entry is fresh and no table it read was written since;
- **stale**: past ``ttl`` but within ``grace``: the old result is returned at
  once and one background task computes the new one;
- a **miss**: one computation for the key, however many callers ask. In this
  process they share one task; across processes the backend's lock picks one
  computer, and the others wait to be told it is done (Redis pub/sub, no
  polling), then read its result. If the computer dies, its lock expires and
  a waiter takes over.

Callers of this process asking for one key at once share one lookup (one
round trip), and a caller finding the key being computed here joins that
computation without asking the backend first, unless this process has
written to a table since it began: a burst of callers then costs one lookup,
not one each queued before the computer's lock request.

If the backend fails (Redis down, a timeout), a warning is logged once (and
not again within a minute), the query runs uncached, and the caller never
sees the error; a notice is logged (at INFO) when the backend answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import time
from typing import TYPE_CHECKING

from shardq.cache.backend import BackendUnavailable, Entry, holds_mutable

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from shardq.cache.backend import Backend, Held, Result

__all__ = ["CacheRegion", "backend_from_url"]

logger = logging.getLogger("shardq.cache")

Versions = tuple[int, ...]

#: Seconds between two warnings that the backend failed.
_WARN_EVERY = 60.0


class _Computing:
    """This process's computation of one key, and the table versions it computes as of."""

    __slots__ = ("epoch", "task", "versions")

    task: asyncio.Task[Result | None]

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch  # the region's count of invalidations when it began
        self.versions: tuple[int, ...] | None = None  # known once it has the lock


class CacheRegion:
    """A named cache with its backend, time to live and grace period.

    Args:
        backend: a :class:`~shardq.cache.memory.MemoryBackend`, a
            :class:`~shardq.cache.redis.RedisBackend`, or a URL for one
            (``memory://``, ``redis://...``, ``rediss://...``).
        ttl: seconds a result is served as fresh.
        grace: seconds after ``ttl`` during which the stale result is served
            at once while one caller refreshes it (0: none).
        name: for logs and ``shardq cache stats``; also part of every key, so
            that regions sharing a backend keep their own entries.

    A region object (its Redis connections) belongs to the event loop that
    first uses it: share one between asyncio connections of one loop. Sync
    connections each run their own loop: give them ``cache=True`` or a
    region's name, and each makes its own (sharing the server's entries).
    """

    def __init__(
        self,
        backend: Backend | str = "memory://",
        *,
        ttl: float = 60.0,
        grace: float = 0.0,
        name: str = "default",
    ):
        if ttl <= 0:
            raise ValueError("ttl must be positive")
        if grace < 0:
            raise ValueError("grace must not be negative")
        self.backend: Backend = backend_from_url(backend) if isinstance(backend, str) else backend
        self.ttl = ttl
        self.grace = grace
        self.name = name
        self._computing: dict[str, _Computing] = {}
        # Lookups under way, by key, with the invalidation count they began at.
        self._lookups: dict[str, tuple[asyncio.Future[tuple[Entry | None, Versions]], int]] = {}
        self._background: set[asyncio.Task[Result | None]] = set()
        self._down = False
        self._warned = -_WARN_EVERY
        self._epoch = 0

    def __repr__(self) -> str:
        return f"<CacheRegion {self.name!r} ttl={self.ttl} grace={self.grace} {self.backend!r}>"

    async def get_or_create(
        self, key: str, tables: tuple[str, ...], creator: Callable[[], Awaitable[Result]]
    ) -> Result:
        """The result cached under ``key``, computed by ``creator()`` when there is none.

        ``tables`` are the tables the result reads: a write to one of them
        (through :meth:`invalidate`) makes the entry unservable.
        """
        # Entries are the region's own: regions sharing a backend keep their ttl.
        key = f"{self.name}:{key}"
        backend = self.backend
        computing = self._computing.get(key)
        if computing is not None and computing.epoch == self._epoch:
            # Being computed here, since this process's last write to a table:
            # join it at once, without a round trip to the backend (a burst of
            # callers would otherwise queue its lock request behind their lookups).
            result = await asyncio.shield(computing.task)
            if result is not None:
                return result
        while True:
            try:
                if backend.remote:
                    entry, versions = await self._lookup(key, tables)
                else:  # answers without a round trip: nothing to share
                    entry, versions = await backend.get(key, tables)
                await backend.count("lookup")
            except BackendUnavailable as exc:
                self._unavailable(exc)
                return await creator()
            self._available()
            if entry is not None and entry.versions == versions:
                now = time.time()
                if entry.fresh(now):
                    return entry.result
                if entry.stale(now):
                    await self._count("stale")
                    if key not in self._computing:
                        self._start(key, tables, creator, wait=False, background=True)
                    return entry.result
            computing = self._computing.get(key)
            if computing is None:
                computing = self._start(key, tables, creator, wait=True, background=False)
            elif computing.versions is not None and computing.versions != versions:
                # It read the tables before a write this caller has seen: its
                # result may be older than that write. Let it end, then look again.
                await asyncio.wait([computing.task])
                continue
            result = await asyncio.shield(computing.task)
            if result is not None:
                return result
            # That was a background refresh that found another process at it.

    async def _lookup(self, key: str, tables: tuple[str, ...]) -> tuple[Entry | None, Versions]:
        """The backend's answer for ``key``, one round trip for the callers asking at once."""
        pending = self._lookups.get(key)
        if pending is not None and pending[1] == self._epoch:
            future = pending[0]
            try:
                entry, versions = await asyncio.shield(future)
            except asyncio.CancelledError:
                if not future.cancelled():
                    raise  # this caller was cancelled
                return await self._lookup(key, tables)  # the one asking was: ask again
            if entry is not None:  # its rows are the asker's: these are this caller's
                result = entry.result
                rows = result.rows
                rows = copy.deepcopy(rows) if holds_mutable(rows) else list(rows)
                entry = entry._replace(result=result._replace(rows=rows))
            return entry, versions
        future = asyncio.get_running_loop().create_future()
        self._lookups[key] = (future, self._epoch)
        try:
            found = await self.backend.get(key, tables)
        except asyncio.CancelledError:
            future.cancel()
            raise
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: no waiter may be there to read it
            raise
        else:
            future.set_result(found)
            return found
        finally:
            if self._lookups.get(key, (None, 0))[0] is future:
                del self._lookups[key]

    def _start(
        self,
        key: str,
        tables: tuple[str, ...],
        creator: Callable[[], Awaitable[Result]],
        *,
        wait: bool,
        background: bool,
    ) -> _Computing:
        """The one task of this process computing ``key``."""
        computing = _Computing(self._epoch)
        computing.task = asyncio.get_running_loop().create_task(
            self._compute(key, tables, creator, wait, computing)
        )

        def finished(done: asyncio.Task[Result | None]) -> None:
            if self._computing.get(key) is computing:
                del self._computing[key]
            self._background.discard(done)
            if background and not done.cancelled() and done.exception() is not None:
                logger.warning(
                    "cache %s: refreshing a stale result failed: %s", self.name, done.exception()
                )

        self._computing[key] = computing
        if background:
            self._background.add(computing.task)
        computing.task.add_done_callback(finished)
        return computing

    async def _compute(
        self,
        key: str,
        tables: tuple[str, ...],
        creator: Callable[[], Awaitable[Result]],
        wait: bool,
        computing: _Computing,
    ) -> Result | None:
        """Compute ``key`` under the backend's lock; None if not waiting and it is taken."""
        backend = self.backend
        held: Held | None = None
        try:
            while True:
                held = await backend.acquire(key)
                if held is not None:
                    break
                if not wait:
                    return None
                await backend.wait(key)
                entry, versions = await backend.get(key, tables)
                if entry is not None and entry.versions == versions and entry.fresh(time.time()):
                    return entry.result
            # Between the miss and the lock another process may have stored it.
            entry, versions = await backend.get(key, tables)
            if entry is not None and entry.versions == versions and entry.fresh(time.time()):
                return entry.result
            computing.versions = versions  # read before computing: what the result is as of
            await self._count("miss")
            result = await creator()
            now = time.time()
            # A write since the versions were read makes the entry unservable.
            entry = Entry(result, now + self.ttl, now + self.ttl + self.grace, versions)
            try:
                await backend.set(key, entry)
            except BackendUnavailable as exc:
                self._unavailable(exc)
            return result
        except BackendUnavailable as exc:
            self._unavailable(exc)
            return await creator()
        finally:
            if held is not None:
                await self._release(held)

    async def _release(self, held: Held) -> None:
        try:
            await held.release()
        except BackendUnavailable as exc:
            self._unavailable(exc)

    async def _count(self, event: str) -> None:
        with contextlib.suppress(BackendUnavailable):
            await self.backend.count(event)

    def _unavailable(self, exc: BaseException) -> None:
        # Once per outage, and not again within a minute of the last warning,
        # so that a backend failing on and off does not flood the log.
        now = time.monotonic()
        if not self._down and now - self._warned >= _WARN_EVERY:
            logger.warning(
                "cache %s: the backend failed (%s); queries run uncached until it answers",
                self.name,
                exc,
            )
            self._warned = now
        self._down = True

    def _available(self) -> None:
        if self._down:
            self._down = False
            logger.info("cache %s: the backend answers again", self.name)

    async def invalidate(self, tables: tuple[str, ...], *, bump: bool = True) -> None:
        """Make every result that read one of ``tables`` unservable (a write did).

        ``bump=False``: another region on the same backend bumps the versions;
        this one only stops joining computations begun before the write.
        """
        if not tables:
            return
        self._epoch += 1  # computations begun before this are not joined blindly
        if not bump:
            return
        try:
            await self.backend.bump(tables)
        except BackendUnavailable as exc:
            self._unavailable(exc)

    async def clear(self) -> int:
        """Drop every entry of the backend; how many."""
        return await self.backend.clear()

    async def stats(self) -> dict[str, int]:
        """The backend's counters (lookups, misses, stale) and size."""
        return await self.backend.stats()

    async def close(self) -> None:
        """Wait for background refreshes, then release the backend."""
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        await self.backend.close()


def backend_from_url(url: str, **options: object) -> Backend:
    """The backend a URL names: ``memory://`` or ``redis://``/``rediss://``."""
    from shardq.cache.memory import MemoryBackend

    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme == "memory":
        return MemoryBackend(**options)  # type: ignore[arg-type]
    if scheme in ("redis", "rediss", "unix"):
        from shardq.cache.redis import RedisBackend

        return RedisBackend(url, **options)  # type: ignore[arg-type]
    raise ValueError(f"a cache URL starts with memory://, redis:// or rediss://, not {scheme!r}")
