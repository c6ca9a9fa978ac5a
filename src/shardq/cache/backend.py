"""What a cache backend stores and the few operations a region needs from it.

An :class:`Entry` is one cached result with its clock: fresh until
``fresh_until``, servable as stale (while one caller refreshes it) until
``stale_until``, and the versions of the tables it read when it was computed.
A write through shardq bumps the versions of the tables it touches; an entry
whose versions are not the current ones is never served.

Times are wall-clock seconds (``time.time()``): entries are shared by
processes on several machines.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

if TYPE_CHECKING:
    from shardq.execute.driver import Column

__all__ = ["Backend", "BackendUnavailable", "Entry", "Held", "Result", "holds_mutable", "shared"]


class Result(NamedTuple):
    """A cached read: its columns, its rows (tuples), its row count and its shards."""

    description: tuple[Column, ...] | None
    rows: list[tuple[Any, ...]]
    rowcount: int
    shards: tuple[str, ...]


class Entry(NamedTuple):
    """One cached result and its clock."""

    result: Result
    fresh_until: float
    stale_until: float
    versions: tuple[int, ...]  #: of the tables read, in the order the key lists them

    def fresh(self, now: float) -> bool:
        return now < self.fresh_until

    def stale(self, now: float) -> bool:
        """Past its time to live, within its grace period."""
        return self.fresh_until <= now < self.stale_until


def shared(entry: Entry, mutable: bool) -> Entry:
    """``entry`` to hand to a caller; ``mutable`` is :func:`holds_mutable` of its rows.

    The rows list is always a new one; rows holding a JSON object or an array
    (a dict, a list), which one caller could change under every later one,
    are copied deeply.
    """
    result = entry.result
    rows = copy.deepcopy(result.rows) if mutable else list(result.rows)
    return entry._replace(result=result._replace(rows=rows))


def holds_mutable(rows: list[tuple[Any, ...]]) -> bool:
    """Whether a value in ``rows`` can be changed in place (checked once, when stored)."""
    return any(isinstance(v, dict | list) for row in rows for v in row)


class BackendUnavailable(Exception):
    """The backend cannot be reached or failed: the caller runs the query uncached."""


class Held(Protocol):
    """A computation lock, held by this process."""

    async def release(self) -> None:
        """Let the lock go (if still ours) and wake whoever waits for the key."""


class Backend(Protocol):
    """Storage for one region's entries, table versions and computation locks.

    Every method may raise :class:`BackendUnavailable`.
    """

    #: Whether a call is a round trip (callers asking at once then share one).
    remote: bool

    async def get(self, key: str, tables: tuple[str, ...]) -> tuple[Entry | None, tuple[int, ...]]:
        """The entry under ``key`` (None if absent) and the tables' current versions."""

    async def set(self, key: str, entry: Entry) -> None:
        """Store ``entry`` until its ``stale_until``. Results it cannot encode are skipped."""

    async def acquire(self, key: str) -> Held | None:
        """Take the computation lock of ``key`` at once, or None if another holds it."""

    async def wait(self, key: str) -> None:
        """Return when the holder of ``key``'s lock releases it (or dies and it expires)."""

    async def bump(self, tables: tuple[str, ...]) -> None:
        """Make every entry that read one of ``tables`` unservable."""

    async def clear(self) -> int:
        """Drop every entry; how many were dropped."""

    async def stats(self) -> dict[str, int]:
        """Counters and sizes, for ``shardq cache stats``."""

    async def count(self, event: str) -> None:
        """Count one event (``lookup``, ``miss``, ``stale``) for :meth:`stats`."""

    async def close(self) -> None:
        """Release the backend's connections."""
