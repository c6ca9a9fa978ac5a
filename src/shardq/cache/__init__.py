"""Result cache: query results kept in process memory or in Redis, shared by many processes.

>>> import shardq
>>> region = shardq.cache.CacheRegion("memory://", ttl=30, grace=10)

``connect(config, cache=True)`` caches every read in the default region;
``cursor.execute(sql, params, cache=True)`` (or a region's name, or a
:class:`CacheRegion`) caches one. See :mod:`shardq.cache.regions` for how a
connection picks its regions, :mod:`shardq.cache.region` for the algorithm
(single flight, stale-while-revalidate, invalidation by writes) and
:mod:`shardq.cache.codec` for the format (never pickle).
"""

from shardq.cache.backend import BackendUnavailable, Result
from shardq.cache.memory import MemoryBackend
from shardq.cache.redis import RedisBackend
from shardq.cache.region import CacheRegion

__all__ = ["BackendUnavailable", "CacheRegion", "MemoryBackend", "RedisBackend", "Result"]
