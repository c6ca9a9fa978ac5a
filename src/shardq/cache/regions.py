"""The cache regions of one connection, and what a statement's cache key is.

A connection caches nothing unless asked: ``connect(config, cache=True)``
caches every read in the default region, ``cache="name"`` in a named one,
``cache=CacheRegion(...)`` in that region; a call's own ``cache=`` argument
overrides the connection's (``False``: not this one). Regions come from the
configuration's ``[cache]`` section (the default one, and
``[cache.regions.NAME]``); without it, the default region is in this
process's memory, 60 seconds.

Every write through the connection bumps the versions of the tables it
touches in every configured region (and every region it used), so results
that read them stop being served, here and in every process sharing a Redis.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shardq.cache import codec, keys
from shardq.cache.memory import MemoryBackend
from shardq.cache.redis import require_redis
from shardq.cache.region import CacheRegion, backend_from_url
from shardq.config import CacheConfig
from shardq.errors import ProgrammingError
from shardq.sql.analyze import StatementKind

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from shardq.cache.backend import Backend, Result
    from shardq.config import Config
    from shardq.sql.plan import Planner

__all__ = ["CacheChoice", "Regions"]

#: What ``cache=`` accepts: off (None, False), the default region (True), a
#: configured region's name, or a region.
CacheChoice = bool | str | CacheRegion | None

DEFAULT = "default"

# The memory backends of this process, by size (see Regions._backend).
_MEMORY: dict[int, MemoryBackend] = {}


class Regions:
    """The regions a connection caches in, made on first use."""

    def __init__(self, config: Config, default: CacheChoice):
        self._config = config
        self._settings = config.cache
        self._default = default
        self._regions: dict[str, CacheRegion] = {}
        self._used: list[CacheRegion] = []  # regions given as objects
        self._backends: dict[tuple[Any, ...], Backend] = {}
        self._identity = keys.identity(config)
        if isinstance(default, str) and default != DEFAULT:
            self.named(default)  # an unknown name fails now, not at the first read
        settings = self._settings
        if settings is not None:
            urls = (settings.url, *(r.url for r in settings.regions.values()))
            if any(not url.startswith("memory:") for url in urls):
                require_redis()  # a missing extra fails now, not at the first read or write

    @property
    def configured(self) -> bool:
        """Whether writes must bump versions (a cache is configured or was used)."""
        return self._settings is not None or bool(self._regions) or bool(self._used)

    def pick(self, choice: CacheChoice | None) -> CacheRegion | None:
        """The region a call with ``cache=choice`` uses (None: not cached)."""
        if choice is None:
            choice = self._default
        if choice is None or choice is False:
            return None
        if choice is True:
            return self.named(DEFAULT)
        if isinstance(choice, CacheRegion):
            if choice not in self._used:
                self._used.append(choice)
            return choice
        if isinstance(choice, str):
            return self.named(choice)
        raise ProgrammingError(
            f"cache= takes True, False, a region name or a CacheRegion, not {type(choice).__name__}"
        )

    def named(self, name: str) -> CacheRegion:
        """The region called ``name`` in the configuration."""
        region = self._regions.get(name)
        if region is not None:
            return region
        settings = self._settings or CacheConfig()
        if name != DEFAULT:
            found = settings.regions.get(name)
            if found is None:
                known = ", ".join(sorted(settings.regions)) or "none"
                raise ProgrammingError(
                    f"no cache region named {name!r} (configured: {known}); declare it "
                    f"under [cache.regions.{name}]"
                )
            settings = found
        region = CacheRegion(
            self._backend(settings), ttl=settings.ttl, grace=settings.grace, name=name
        )
        self._regions[name] = region
        return region

    def _backend(self, settings: CacheConfig) -> Backend:
        """One backend per place: regions on the same server and prefix share it."""
        place = (settings.url, settings.prefix, settings.lock_timeout, settings.max_bytes)
        backend = self._backends.get(place)
        if backend is None:
            if settings.url.startswith("memory:"):
                # One per process and size, shared by its connections, so that a
                # write through one connection reaches what another cached.
                backend = _MEMORY.get(settings.max_bytes)
                if backend is None:
                    backend = _MEMORY[settings.max_bytes] = MemoryBackend(settings.max_bytes)
            else:
                backend = backend_from_url(
                    settings.url, prefix=settings.prefix, lock_timeout=settings.lock_timeout
                )
            self._backends[place] = backend
        return backend

    def key(
        self, planner: Planner, sql: str, params: object, user_key: str | None
    ) -> tuple[str, tuple[str, ...]] | None:
        """The cache key of a read and the tables it reads; None for a write."""
        analysis = planner.analyze(sql)
        if analysis.kind is not StatementKind.READ:
            return None
        memo = analysis.memo
        found: tuple[bytes, tuple[str, ...]] | None = memo.get("cache-key")
        if found is None:
            canonical = analysis.parsed.expression.sql(
                dialect=analysis.parsed.dialect, comments=False
            )
            tables = tuple(sorted({ref.table.name for ref in analysis.refs}))
            found = memo["cache-key"] = (keys.statement_prefix(self._identity, canonical), tables)
        prefix, tables = found
        if user_key is not None:
            return keys.key(keys.user_prefix(self._identity, user_key), None), tables
        return keys.key(prefix, params), tables

    async def read(
        self,
        region: CacheRegion,
        planner: Planner,
        sql: str,
        params: object,
        user_key: str | None,
        compute: Callable[[], Awaitable[Result]],
    ) -> Result | None:
        """The result of a read through ``region``; None if ``sql`` is a write."""
        try:
            found = self.key(planner, sql, params, user_key)
        except codec.CodecError:
            # A parameter the cache cannot key (an enum, a driver's wrapper):
            # run it uncached rather than fail.
            if planner.analyze(sql).kind is not StatementKind.READ:
                return None
            return await compute()
        if found is None:
            return None
        key, tables = found
        return await region.get_or_create(key, tables, compute)

    def written(self, planner: Planner, sql: str) -> tuple[str, ...]:
        """The tables a write touches (every table it names); () for a read."""
        analysis = planner.analyze(sql)
        if analysis.kind is StatementKind.READ:
            return ()
        memo = analysis.memo
        tables: tuple[str, ...] | None = memo.get("cache-written")
        if tables is None:
            tables = memo["cache-written"] = tuple(sorted({r.table.name for r in analysis.refs}))
        return tables

    async def invalidate(self, tables: tuple[str, ...]) -> None:
        """Bump ``tables`` in every region's backend (configured ones are made for it)."""
        if not tables or not self.configured:
            return
        regions = [self.named(DEFAULT)]
        if self._settings is not None:
            regions += [self.named(name) for name in self._settings.regions]
        regions += self._used
        seen: set[int] = set()
        for region in regions:
            first = id(region.backend) not in seen  # one bump per backend
            seen.add(id(region.backend))
            await region.invalidate(tables, bump=first)

    async def close(self) -> None:
        """Wait for background refreshes and close the backends made here."""
        for region in self._regions.values():
            await region.close()
