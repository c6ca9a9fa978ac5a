"""The in-process backend: an LRU of entries, bounded in bytes, with time to live.

Entries are kept as Python objects (a hit costs no decoding); each is
measured by the size of its encoding (:mod:`shardq.cache.codec`), so the
bound is in bytes, and a result the codec cannot encode is not cached, as in
Redis. Table versions and locks live in this process only: a write made by
another process does not reach this cache (use Redis for that).
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections import OrderedDict
from typing import TYPE_CHECKING

from shardq.cache import codec
from shardq.cache.backend import holds_mutable, shared

if TYPE_CHECKING:
    from shardq.cache.backend import Entry

__all__ = ["MemoryBackend"]

#: The default bound on the encoded size of the entries held, in bytes.
DEFAULT_MAX_BYTES = 64 * 1024 * 1024


class _Held:
    def __init__(self, backend: MemoryBackend, key: str):
        self._backend = backend
        self._key = key

    async def release(self) -> None:
        event = self._backend._locks.pop(self._key, None)
        if event is not None:
            event.set()


class MemoryBackend:
    """Entries in this process's memory, the least recently used dropped first.

    Args:
        max_bytes: the most bytes of encoded results held at once.
    """

    remote = False

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES):
        if max_bytes < 1:
            raise ValueError("max_bytes must be positive")
        self.max_bytes = max_bytes
        # key -> (entry, its encoded size, whether its rows hold mutable values)
        self._entries: OrderedDict[str, tuple[Entry, int, bool]] = OrderedDict()
        self._bytes = 0
        self._versions: dict[str, int] = {}
        self._locks: dict[str, asyncio.Event] = {}
        self._counts: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"<MemoryBackend entries={len(self._entries)} bytes={self._bytes}/{self.max_bytes}>"

    async def get(self, key: str, tables: tuple[str, ...]) -> tuple[Entry | None, tuple[int, ...]]:
        versions = tuple(self._versions.get(t, 0) for t in tables)
        found = self._entries.get(key)
        if found is None:
            return None, versions
        entry = found[0]
        if time.time() >= entry.stale_until:
            self._drop(key)
            return None, versions
        self._entries.move_to_end(key)
        return shared(entry, found[2]), versions

    async def set(self, key: str, entry: Entry) -> None:
        result = entry.result
        try:
            size = len(
                codec.encode(result.description, result.rows, result.rowcount, result.shards)
            )
        except codec.CodecError:
            return  # not cacheable here either
        if size > self.max_bytes:
            return
        self._drop(key)
        mutable = holds_mutable(result.rows)
        if mutable:  # the caller that computed it holds the same objects
            entry = copy.deepcopy(entry)
        self._entries[key] = (entry, size, mutable)
        self._bytes += size
        while self._bytes > self.max_bytes:
            oldest = next(iter(self._entries))
            self._drop(oldest)

    def _drop(self, key: str) -> None:
        found = self._entries.pop(key, None)
        if found is not None:
            self._bytes -= found[1]

    async def acquire(self, key: str) -> _Held | None:
        if key in self._locks:
            return None
        self._locks[key] = asyncio.Event()
        return _Held(self, key)

    async def wait(self, key: str) -> None:
        event = self._locks.get(key)
        if event is not None:
            await event.wait()

    async def bump(self, tables: tuple[str, ...]) -> None:
        for table in tables:
            self._versions[table] = self._versions.get(table, 0) + 1

    async def clear(self) -> int:
        count = len(self._entries)
        self._entries.clear()
        self._bytes = 0
        return count

    async def count(self, event: str) -> None:
        self._counts[event] = self._counts.get(event, 0) + 1

    async def stats(self) -> dict[str, int]:
        return {**self._counts, "entries": len(self._entries), "bytes": self._bytes}

    async def close(self) -> None:
        return None
