"""The result cache's pure parts: configuration, keys, the memory backend's bounds."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

import shardq
from shardq.cache import CacheRegion, MemoryBackend, Result, codec
from shardq.cache.backend import Entry
from shardq.cache.regions import Regions
from shardq.config import load_config
from shardq.sql.plan import Planner

SHARDS = [{"name": f"s{i}", "dsn": f"postgresql://app:pw@db{i}/x"} for i in range(2)]
TABLES = {"orders": {"shard_key": "customer_id"}, "countries": {"reference": True}}


def config(**cache: Any) -> Any:
    raw: dict[str, Any] = {"dialect": "postgres", "shards": SHARDS, "tables": TABLES}
    if cache:
        raw["cache"] = cache
    return load_config(raw)


def test_the_cache_section_sets_regions_that_inherit_from_it() -> None:
    loaded = config(
        url="redis://:secret@cache:6380/2", ttl=30, grace=10, regions={"dash": {"ttl": 300}}
    ).cache
    assert loaded is not None
    assert (loaded.ttl, loaded.grace, loaded.prefix) == (30.0, 10.0, "shardq:")
    dash = loaded.regions["dash"]
    assert (dash.url, dash.ttl, dash.grace) == (loaded.url, 300.0, 10.0)
    assert "secret" not in repr(loaded)


@pytest.mark.parametrize(
    ("cache", "field"),
    [
        ({"url": "mysql://x"}, "cache.url"),
        ({"ttl": 0}, "cache.ttl"),
        ({"grace": -1}, "cache.grace"),
        ({"ttl": "60"}, "cache.ttl"),
        ({"size": 1}, "cache.size"),
        ({"regions": {"r": {"regions": {}}}}, "cache.regions.r.regions"),
    ],
)
def test_a_bad_cache_section_names_its_field(cache: dict[str, Any], field: str) -> None:
    with pytest.raises(shardq.ConfigError) as info:
        config(**cache)
    assert info.value.field == field


def test_the_redis_password_is_scrubbed_like_a_dsn_password() -> None:
    loaded = config(url="redis://:s3cr3t-pw@cache:6379/0")
    assert "s3cr3t-pw" not in loaded.secrets.scrub("AUTH failed for redis://:s3cr3t-pw@cache")


def keyed(sql: str, params: object = None, user_key: str | None = None, cfg: Any = None) -> str:
    cfg = cfg or config()
    found = Regions(cfg, None).key(Planner(cfg), sql, params, user_key)
    assert found is not None
    return found[0]


def test_keys_ignore_spelling_but_not_meaning() -> None:
    sql = "SELECT customer_id, count(*) FROM orders WHERE customer_id = %s GROUP BY 1"
    assert keyed(sql, [1]) == keyed(
        "select customer_id,COUNT(*)\n  from orders -- note\n where customer_id = %s group by 1",
        (1,),
    )
    assert keyed(sql, [1]) != keyed(sql, [2])
    assert keyed(sql, [1]) != keyed(sql, ["1"])
    assert keyed(sql, [1]) != keyed(sql.replace("count(*)", "count(customer_id)"), [1])
    # Another user of the same shards, or another database, has keys of its own.
    other = [{**s, "dsn": s["dsn"].replace("app:", "admin:")} for s in SHARDS]
    admin = load_config({"dialect": "postgres", "shards": other, "tables": TABLES})
    assert keyed(sql, [1]) != keyed(sql, [1], cfg=admin)
    # A caller's key replaces the statement and its parameters.
    assert keyed(sql, [1], "k") == keyed("SELECT 2", None, "k") != keyed(sql, [1], "k2")


def test_a_read_lists_its_tables_and_a_write_has_no_key() -> None:
    cfg = config()
    regions, planner = Regions(cfg, None), Planner(cfg)
    found = regions.key(
        planner,
        "SELECT o.customer_id FROM orders o JOIN countries c ON c.code = o.country",
        None,
        None,
    )
    assert found is not None
    assert found[1] == ("countries", "orders")
    assert regions.key(planner, "DELETE FROM orders WHERE customer_id = 1", None, None) is None
    assert regions.written(planner, "DELETE FROM orders WHERE customer_id = 1") == ("orders",)


def result(n: int, width: int = 10) -> Result:
    return Result(None, [("x" * width,)] * n, n, ("s0",))


def test_the_memory_backend_is_bounded_in_bytes_least_recently_used_first() -> None:
    async def run() -> None:
        one = len(codec.encode(*result(50)))
        backend = MemoryBackend(max_bytes=2 * one + one // 2)  # room for two
        now = time.time()
        for key in "abc":
            await backend.set(key, Entry(result(50), now + 60, now + 60, ()))
        stats = await backend.stats()
        assert stats["bytes"] == 2 * one
        assert stats["entries"] == 2
        assert (await backend.get("a", ()))[0] is None  # the oldest went first
        assert (await backend.get("c", ()))[0] is not None
        unencodable = Result(None, [(object(),)], 1, ("s0",))
        await backend.set("odd", Entry(unencodable, now + 60, now + 60, ()))
        assert (await backend.get("odd", ()))[0] is None  # not cacheable: skipped

    asyncio.run(run())


def test_regions_refuse_what_they_cannot_be() -> None:
    with pytest.raises(ValueError, match="ttl"):
        CacheRegion("memory://", ttl=0)
    with pytest.raises(ValueError, match="memory://, redis://"):
        CacheRegion("memcached://x")
    with pytest.raises(shardq.ProgrammingError, match="no cache region named 'dash'"):
        Regions(config(), "dash")
