"""The Redis backend: entries, table versions and computation locks shared by processes.

Keys, under a prefix (``shardq:`` by default):

- ``e:<key>``: an entry: a small header (its clock and the versions of the
  tables it read) and the result in :mod:`shardq.cache.codec`'s format. It
  expires at the end of its grace period.
- ``t:<key>``: the entry's tag, a random token written with it (in one
  transaction). Each process keeps the entries it decoded, by tag: a hit on
  one of them reads the tag and the versions only, and decodes nothing.
- ``v:<table>``: the table's version, bumped (``INCR``) by every write.
- ``l:<key>``: the computation lock of a key: a random token, set with
  ``NX`` and an expiry, renewed while its holder computes, deleted only by
  its holder (a script compares the token). If the holder dies, the lock
  expires and another process takes over.
- channel ``d:<key>``: published when a lock is released, so that waiting
  processes learn it at once, without polling.
- ``stats``: a hash of counters.

A hit is one round trip (``MGET`` of the tag and the versions), plus one
more for the entry the first time this process sees it. Any Redis
error becomes :class:`~shardq.cache.backend.BackendUnavailable`: the region
then runs the query uncached.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import secrets
import struct
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from shardq.cache import codec
from shardq.cache.backend import BackendUnavailable, Entry, Result, holds_mutable, shared
from shardq.errors import missing_dependency

if TYPE_CHECKING:
    import redis.asyncio

__all__ = ["RedisBackend", "require_redis"]

_HEADER = struct.Struct("<4sddH")
_MAGIC = b"SQE1"
#: Seconds a computation lock lives unless renewed; renewed every third of it.
DEFAULT_LOCK_TIMEOUT = 10.0

_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    redis.call('del', KEYS[1])
    redis.call('publish', KEYS[2], '1')
    return 1
end
return 0
"""
_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""


def require_redis() -> None:
    """Import redis-py, or raise :class:`~shardq.errors.MissingDependencyError` naming the extra."""
    try:
        import redis.asyncio  # noqa: F401  (imported to learn whether it can be)
    except ImportError as exc:
        hint = missing_dependency(exc, "the Redis cache backend")
        if hint is None:
            raise
        raise hint from exc


def _errors() -> tuple[type[BaseException], ...]:
    import redis.exceptions

    return (redis.exceptions.RedisError, OSError)


def pack(entry: Entry) -> bytes:
    """An entry as stored: header, versions, then the encoded result."""
    result = entry.result
    body = codec.encode(result.description, result.rows, result.rowcount, result.shards)
    versions = entry.versions
    head = _HEADER.pack(_MAGIC, entry.fresh_until, entry.stale_until, len(versions))
    return head + struct.pack(f"<{len(versions)}q", *versions) + body


def unpack(data: bytes) -> Entry:
    """The entry stored as ``data``; raises :class:`codec.CodecError` if it is not one."""
    try:
        magic, fresh_until, stale_until, count = _HEADER.unpack_from(data)
        if magic != _MAGIC:
            raise codec.CodecError("not a shardq cache entry")
        versions = struct.unpack_from(f"<{count}q", data, _HEADER.size)
    except struct.error as exc:
        raise codec.CodecError(f"truncated cache entry: {exc}") from None
    body = data[_HEADER.size + 8 * count :]
    return Entry(Result(*codec.decode(body)), fresh_until, stale_until, versions)


class _Held:
    """A lock this process holds, renewed until released."""

    def __init__(self, backend: RedisBackend, key: str, token: str):
        self._backend = backend
        self._key = key
        self._token = token
        self._renewal = asyncio.get_running_loop().create_task(self._renew())

    async def _renew(self) -> None:
        backend = self._backend
        every = backend.lock_timeout / 3
        keys = [backend._lock_key(self._key)]
        ms = int(backend.lock_timeout * 1000)
        while True:
            await asyncio.sleep(every)
            try:
                if not await backend._renew_script(keys=keys, args=[self._token, ms]):
                    return  # lost (expired while this process stalled): nothing to renew
            except _errors():
                continue  # one failed call: the lock still has two thirds of its time

    async def release(self) -> None:
        self._renewal.cancel()
        backend = self._backend
        keys = [backend._lock_key(self._key), backend._channel(self._key)]
        try:
            await backend._release_script(keys=keys, args=[self._token])
        except _errors() as exc:
            raise BackendUnavailable(str(exc)) from exc


class _Notifier:
    """One pub/sub connection per backend, shared by every waiting caller."""

    def __init__(self, client: redis.asyncio.Redis, idle_channel: str):
        self._client = client
        self._pubsub = client.pubsub()
        self._idle = idle_channel  # always subscribed: the reader never runs out of channels
        self._subscribed: dict[str, list[asyncio.Future[None]]] = {}
        self._released: dict[str, list[asyncio.Future[None]]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._starting = asyncio.Lock()

    async def _start(self) -> None:
        async with self._starting:  # one reader: two would read one connection at once
            await self._start_reader()

    async def _start_reader(self) -> None:
        if self._reader is not None and not self._reader.done():
            return
        if self._reader is not None:  # it died with its connection: start afresh
            with contextlib.suppress(*_errors()):
                await self._pubsub.aclose()
            self._pubsub = self._client.pubsub()
        await self._pubsub.subscribe(self._idle)
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        try:
            while True:
                message = await self._pubsub.get_message(timeout=None)
                if message is None:
                    continue
                channel = message["channel"]
                channel = channel.decode() if isinstance(channel, bytes) else str(channel)
                kind = message["type"]
                waiting = self._subscribed if kind == "subscribe" else self._released
                if kind in ("subscribe", "message"):
                    for future in waiting.pop(channel, []):
                        if not future.done():
                            future.set_result(None)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            error = BackendUnavailable(f"Redis pub/sub failed: {exc}")
            for waiting in (self._subscribed, self._released):
                for futures in waiting.values():
                    for future in futures:
                        if not future.done():
                            future.set_exception(error)
                waiting.clear()

    async def wait(self, channel: str, still_held: Any) -> None:
        """Subscribe to ``channel``; unless ``still_held()`` says no, wait for a message.

        ``still_held()`` returns the lock's remaining seconds (0 if gone): the
        wait ends at the message, or when the lock would have expired.
        """
        loop = asyncio.get_running_loop()
        await self._start()
        subscribed: asyncio.Future[None] = loop.create_future()
        released: asyncio.Future[None] = loop.create_future()
        self._subscribed.setdefault(channel, []).append(subscribed)
        self._released.setdefault(channel, []).append(released)
        try:
            await self._pubsub.subscribe(channel)
            await asyncio.wait_for(subscribed, timeout=5)
            # Subscribed: a release from now on is heard. Is there one to wait for?
            left = await still_held()
            if left > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(released, timeout=left + 0.01)
        finally:
            for waiting, future in ((self._subscribed, subscribed), (self._released, released)):
                futures = waiting.get(channel, [])
                if future in futures:
                    futures.remove(future)
                if not futures:
                    waiting.pop(channel, None)
            if channel not in self._released:
                with contextlib.suppress(*_errors()):
                    await self._pubsub.unsubscribe(channel)

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(BaseException):
                await self._reader
        with contextlib.suppress(*_errors()):
            await self._pubsub.aclose()


class RedisBackend:
    """Entries in Redis, shared by every process that uses the same server and prefix.

    Args:
        url: ``redis://[[user]:password@]host[:port][/db]``, or ``rediss://``
            for TLS (redis-py's URL syntax; ``?ssl_cert_reqs=...`` and the
            like go there too).
        prefix: put before every key, so that several applications can share
            a server.
        lock_timeout: seconds a computation lock lives without renewal: how
            long others wait before taking over from a holder that died.
        socket_timeout: seconds any Redis call may take before the query runs
            uncached.
        max_connections: the connection pool's size; callers beyond it wait
            for a connection rather than fail.
        near_bytes: the most bytes of decoded entries this process keeps, so
            that a hit on an entry it has seen costs one small round trip (its
            tag is checked) instead of moving and decoding the result again.
        options: more keyword arguments for the redis-py connection pool.
    """

    remote = True

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "shardq:",
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
        socket_timeout: float = 1.0,
        max_connections: int = 32,
        near_bytes: int = 32 * 1024 * 1024,
        **options: Any,
    ):
        require_redis()
        import redis.asyncio

        if lock_timeout <= 0:
            raise ValueError("lock_timeout must be positive")
        self.prefix = prefix
        self.lock_timeout = lock_timeout
        # redis-py's plain pool (its blocking one costs ~40 us a call): the
        # bound is a semaphore of ours, so a burst waits for a connection
        # instead of failing with MaxConnectionsError.
        pool = redis.asyncio.ConnectionPool.from_url(
            url, socket_timeout=socket_timeout, socket_connect_timeout=socket_timeout, **options
        )
        self._client = redis.asyncio.Redis(connection_pool=pool)
        self._pool = pool
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: list[Any] = []  # connections of the hit path, between commands
        self._release_script = self._client.register_script(_RELEASE)
        self._renew_script = self._client.register_script(_RENEW)
        self._notifier: _Notifier | None = None
        self._location = _location(url)
        self._counts: dict[str, int] = {}
        # Entries this process decoded, by key: (Redis's tag for it, entry, size,
        # whether its rows hold mutable values).
        self._near: OrderedDict[str, tuple[bytes, Entry, int, bool]] = OrderedDict()
        self._near_bytes = 0
        self._near_max = near_bytes
        self._flushed = 0.0
        self._flush: asyncio.Task[None] | None = None

    def __repr__(self) -> str:  # never the URL: it may hold a password
        return f"<RedisBackend {self._location} prefix={self.prefix!r}>"

    async def _command(self, *args: Any) -> Any:
        """One command on a connection held by this backend: the hit path.

        redis-py's client wraps every call in retries, response callbacks and
        a pool checkout; sending on an idle connection of our own and reading
        its reply costs about 60 us less a call here.
        """
        async with self._slots:
            pool: Any = self._pool
            conn = self._idle.pop() if self._idle else await pool.get_connection()
            try:
                await conn.send_command(*args)
                response = await conn.read_response()
            except BaseException:
                # Cut short (cancelled, a timeout): the reply may still come, so
                # the connection cannot carry another command.
                with contextlib.suppress(Exception):
                    await conn.disconnect()
                await self._pool.release(conn)
                raise
            self._idle.append(conn)
            return response

    def _entry_key(self, key: str) -> str:
        return f"{self.prefix}e:{key}"

    def _tag_key(self, key: str) -> str:
        return f"{self.prefix}t:{key}"

    def _lock_key(self, key: str) -> str:
        return f"{self.prefix}l:{key}"

    def _channel(self, key: str) -> str:
        return f"{self.prefix}d:{key}"

    def _version_key(self, table: str) -> str:
        return f"{self.prefix}v:{table}"

    async def get(self, key: str, tables: tuple[str, ...]) -> tuple[Entry | None, tuple[int, ...]]:
        # One small round trip: the entry's tag and the tables' versions. The
        # entry itself crosses the network (and is decoded) only when this
        # process has not got it under that tag already.
        names = [self._tag_key(key), *map(self._version_key, tables)]
        try:
            found = await self._command("MGET", *names)
            versions = tuple(int(v) if v is not None else 0 for v in found[1:])
            tag = found[0]
            if tag is None:
                return None, versions
            near = self._near.get(key)
            if near is not None and near[0] == tag:
                self._near.move_to_end(key)
                return shared(near[1], near[3]), versions
            tag, data = await self._command("MGET", self._tag_key(key), self._entry_key(key))
        except _errors() as exc:
            raise BackendUnavailable(str(exc)) from exc
        if not isinstance(data, bytes) or not isinstance(tag, bytes):
            return None, versions
        try:
            entry = unpack(data)
        except codec.CodecError:
            return None, versions  # written by another version of shardq, or damaged
        mutable = self._keep(key, tag, entry, len(data))
        return shared(entry, mutable), versions

    def _keep(self, key: str, tag: bytes, entry: Entry, size: int) -> bool:
        """Hold a decoded entry in this process, under the tag Redis has for it.

        Returns whether its rows hold values a caller could change in place.
        """
        self._drop_near(key)
        mutable = holds_mutable(entry.result.rows)
        if size > self._near_max:
            return mutable
        if mutable:  # the caller that computed or decoded it may hold the same objects
            entry = copy.deepcopy(entry)
        self._near[key] = (tag, entry, size, mutable)
        self._near_bytes += size
        while self._near_bytes > self._near_max:
            self._drop_near(next(iter(self._near)))
        return mutable

    def _drop_near(self, key: str) -> None:
        found = self._near.pop(key, None)
        if found is not None:
            self._near_bytes -= found[2]

    async def set(self, key: str, entry: Entry) -> None:
        try:
            data = pack(entry)
        except codec.CodecError:
            return  # a value the format does not carry: not cached
        ms = int((entry.stale_until - time.time()) * 1000)
        if ms <= 0:
            return
        tag = secrets.token_hex(8).encode()
        try:
            async with self._slots, self._client.pipeline(transaction=True) as pipe:
                pipe.set(self._entry_key(key), data, px=ms)
                pipe.set(self._tag_key(key), tag, px=ms)
                await pipe.execute()
        except _errors() as exc:
            raise BackendUnavailable(str(exc)) from exc
        self._keep(key, tag, entry, len(data))

    async def acquire(self, key: str) -> _Held | None:
        token = secrets.token_hex(16)
        ms = int(self.lock_timeout * 1000)
        try:
            taken = await self._command("SET", self._lock_key(key), token, "NX", "PX", ms)
        except _errors() as exc:
            raise BackendUnavailable(str(exc)) from exc
        return _Held(self, key, token) if taken else None

    async def wait(self, key: str) -> None:
        if self._notifier is None:
            self._notifier = _Notifier(self._client, f"{self.prefix}d:")

        async def still_held() -> float:
            ms = await self._command("PTTL", self._lock_key(key))
            return max(0.0, int(ms) / 1000)

        try:
            await self._notifier.wait(self._channel(key), still_held)
        except _errors() as exc:
            raise BackendUnavailable(str(exc)) from exc

    async def bump(self, tables: tuple[str, ...]) -> None:
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for table in tables:
                    pipe.incr(self._version_key(table))
                await pipe.execute()
        except _errors() as exc:
            raise BackendUnavailable(str(exc)) from exc

    async def clear(self) -> int:
        # Tags too: a process holding a decoded entry serves it while its tag is there.
        entry = f"{self.prefix}e:".encode()
        dropped = 0
        try:
            batch: list[bytes] = []
            async for name in self._client.scan_iter(match=f"{self.prefix}[et]:*", count=500):
                batch.append(name)
                if len(batch) >= 500:
                    await self._client.unlink(*batch)
                    dropped += sum(n.startswith(entry) for n in batch)
                    batch = []
            if batch:
                await self._client.unlink(*batch)
                dropped += sum(n.startswith(entry) for n in batch)
        except _errors() as exc:
            raise BackendUnavailable(str(exc)) from exc
        self._near.clear()
        self._near_bytes = 0
        return dropped

    async def count(self, event: str) -> None:
        # Counted here and added to Redis at most once a second: a hit stays
        # one round trip.
        self._counts[event] = self._counts.get(event, 0) + 1
        now = time.monotonic()
        if now - self._flushed >= 1.0 and (self._flush is None or self._flush.done()):
            self._flushed = now
            self._flush = asyncio.get_running_loop().create_task(self._add_counts())

    async def _add_counts(self) -> None:
        counts, self._counts = self._counts, {}
        if not counts:
            return
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for event, n in counts.items():
                    pipe.hincrby(f"{self.prefix}stats", event, n)
                await pipe.execute()
        except _errors():
            pass  # counters are best effort

    async def stats(self) -> dict[str, int]:
        await self._add_counts()
        try:
            counters = await self._client.hgetall(f"{self.prefix}stats")
            entries = 0
            async for _ in self._client.scan_iter(match=f"{self.prefix}e:*", count=1000):
                entries += 1
        except _errors() as exc:
            raise BackendUnavailable(str(exc)) from exc
        out = {_text(k): int(v) for k, v in counters.items()}
        out["entries"] = entries
        return out

    async def close(self) -> None:
        if self._flush is not None:
            with contextlib.suppress(BaseException):
                await self._flush
        await self._add_counts()
        if self._notifier is not None:
            await self._notifier.close()
        idle, self._idle = self._idle, []
        for conn in idle:
            await self._pool.release(conn)
        with contextlib.suppress(*_errors()):
            await self._client.aclose(close_connection_pool=True)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _location(url: str) -> str:
    """Host, port and database of a Redis URL, without credentials."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        return f"{parts.scheme}://{parts.hostname}:{parts.port or 6379}{parts.path or '/0'}"
    except ValueError:
        return "<unparsable URL>"
