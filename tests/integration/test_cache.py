"""The result cache against a real Redis (and real PostgreSQL shards).

Counts of computations are the assertions: a creator that counts its calls,
in this process or (across processes) in Redis itself.
"""

from __future__ import annotations

import asyncio
import datetime
import decimal
import json
import logging
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import redis

import shardq
from shardq.cache import CacheRegion, MemoryBackend, RedisBackend
from shardq.cache.backend import Entry, Result
from tests.fixtures.servers import RedisServer
from tests.fixtures.shards import PG_DATABASE, pg_config

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from tests.fixtures.servers import PgCluster

pytestmark = pytest.mark.redis

ROOT = Path(__file__).resolve().parents[2]


def result(*values: Any) -> Result:
    return Result(None, [tuple(values)], 1, ("s0",))


class Counting:
    """A creator that counts its calls and takes ``delay`` seconds."""

    def __init__(self, delay: float = 0.0):
        self.calls = 0
        self.delay = delay

    async def __call__(self) -> Result:
        self.calls += 1
        await asyncio.sleep(self.delay)
        return result(self.calls)


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    """A key prefix of the test's own, so tests sharing the server never meet."""
    return f"t{uuid.uuid4().hex[:8]}:"


@pytest.fixture(params=["memory", "redis"])
async def region(
    request: pytest.FixtureRequest, redis_server: RedisServer, prefix: str
) -> AsyncIterator[CacheRegion]:
    backend: Any = (
        MemoryBackend()
        if request.param == "memory"
        else RedisBackend(redis_server.url, prefix=prefix, lock_timeout=2)
    )
    made = CacheRegion(backend, ttl=0.4, grace=0.0)
    yield made
    await made.close()


async def test_a_miss_computes_and_a_hit_does_not(region: CacheRegion) -> None:
    creator = Counting()
    assert (await region.get_or_create("k", ("t",), creator)).rows == [(1,)]
    assert (await region.get_or_create("k", ("t",), creator)).rows == [(1,)]
    assert creator.calls == 1
    assert (await region.get_or_create("other", ("t",), creator)).rows == [(2,)]
    stats = await region.stats()
    assert stats["lookup"] == 3
    assert stats["miss"] == 2


async def test_an_entry_expires_after_its_time_to_live(region: CacheRegion) -> None:
    creator = Counting()
    await region.get_or_create("k", ("t",), creator)
    await asyncio.sleep(0.5)  # ttl 0.4, no grace
    assert (await region.get_or_create("k", ("t",), creator)).rows == [(2,)]
    assert creator.calls == 2


async def test_a_write_to_a_table_read_makes_the_entry_unservable(region: CacheRegion) -> None:
    creator = Counting()
    await region.get_or_create("k", ("a", "b"), creator)
    await region.invalidate(("c",))  # another table: still served
    assert (await region.get_or_create("k", ("a", "b"), creator)).rows == [(1,)]
    await region.invalidate(("b",))
    assert (await region.get_or_create("k", ("a", "b"), creator)).rows == [(2,)]


async def test_clear_drops_what_this_process_holds_too(region: CacheRegion) -> None:
    creator = Counting()
    await region.get_or_create("k", (), creator)
    assert await region.clear() == 1
    assert (await region.get_or_create("k", (), creator)).rows == [(2,)]


async def test_stale_results_are_served_while_one_refresh_runs(
    redis_server: RedisServer, prefix: str
) -> None:
    region = CacheRegion(RedisBackend(redis_server.url, prefix=prefix), ttl=0.3, grace=30)
    refreshing = asyncio.Event()
    release = asyncio.Event()
    calls = 0

    async def creator() -> Result:
        nonlocal calls
        calls += 1
        if calls > 1:  # the refresh: held until the stale reads are all answered
            refreshing.set()
            await release.wait()
        return result(calls)

    try:
        assert (await region.get_or_create("k", (), creator)).rows == [(1,)]
        await asyncio.sleep(0.4)  # stale now, within grace
        stale = await asyncio.gather(*(region.get_or_create("k", (), creator) for _ in range(50)))
        assert {r.rows[0][0] for r in stale} == {1}  # answered while the refresh is held
        await asyncio.wait_for(refreshing.wait(), timeout=10)
        assert calls == 2  # one refresh for the 50 stale reads
        release.set()
        for _ in range(100):  # the refresh stores its result
            if (await region.get_or_create("k", (), creator)).rows == [(2,)]:
                break
            await asyncio.sleep(0.02)
        assert (await region.get_or_create("k", (), creator)).rows == [(2,)]
        assert calls == 2
    finally:
        release.set()
        await region.close()


async def test_200_concurrent_callers_cause_one_computation(region: CacheRegion) -> None:
    creator = Counting(delay=0.3)
    results = await asyncio.gather(*(region.get_or_create("cold", (), creator) for _ in range(200)))
    assert creator.calls == 1
    assert {r.rows[0][0] for r in results} == {1}


STAMPEDE = """
import asyncio, sys, time, json
import redis.asyncio
from shardq.cache import CacheRegion, RedisBackend
from shardq.cache.backend import Entry, Result

url, prefix, start, callers = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])

async def main():
    counter = redis.asyncio.Redis.from_url(url)
    region = CacheRegion(RedisBackend(url, prefix=prefix, lock_timeout=30), ttl=60)
    async def creator():
        await counter.incr(prefix + "computations")
        await asyncio.sleep(0.5)
        return Result(None, [(42,)], 1, ("s0",))
    await asyncio.sleep(start - time.time())
    async def one():
        began = time.time()
        found = await region.get_or_create("cold", (), creator)
        return found.rows[0][0], time.time() - began
    out = await asyncio.gather(*(one() for _ in range(callers)))
    await region.close()
    await counter.aclose()
    print(json.dumps(out))

asyncio.run(main())
"""


def test_four_processes_share_one_computation(redis_server: RedisServer, prefix: str) -> None:
    start = time.time() + 2.0  # every process ready before the stampede
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", STAMPEDE, redis_server.url, prefix, str(start), "50"],
            stdout=subprocess.PIPE,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        )
        for _ in range(4)
    ]
    outs = []
    for proc in procs:
        stdout, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0
        outs += json.loads(stdout)
    client = redis.Redis.from_url(redis_server.url)
    assert int(client.get(prefix + "computations") or 0) == 1
    assert len(outs) == 200
    assert {value for value, _ in outs} == {42}
    # Waiters are told when it is done, not left to the lock's 30 s expiry.
    assert max(wait for _, wait in outs) < 15


HOLDER = """
import asyncio, sys
from shardq.cache import CacheRegion, RedisBackend
from shardq.cache.backend import Entry, Result

url, prefix = sys.argv[1], sys.argv[2]

async def main():
    region = CacheRegion(RedisBackend(url, prefix=prefix, lock_timeout=1), ttl=60)
    async def creator():
        print("computing", flush=True)
        await asyncio.sleep(60)
        return Result(None, [(0,)], 1, ("s0",))
    await region.get_or_create("k", (), creator)

asyncio.run(main())
"""


async def test_when_the_lock_holder_dies_another_takes_over(
    redis_server: RedisServer, prefix: str
) -> None:
    holder = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        HOLDER,
        redis_server.url,
        prefix,
        stdout=asyncio.subprocess.PIPE,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    try:
        assert holder.stdout is not None
        assert await holder.stdout.readline() == b"computing\n"
        region = CacheRegion(RedisBackend(redis_server.url, prefix=prefix, lock_timeout=1), ttl=60)
        try:
            waiting = asyncio.ensure_future(region.get_or_create("k", (), Counting()))
            await asyncio.sleep(0.2)
            assert not waiting.done()  # the holder computes: this caller waits
            holder.kill()  # SIGKILL: the lock is never released, only expires
            await holder.wait()
            found = await asyncio.wait_for(waiting, timeout=10)
            assert found.rows == [(1,)]  # computed here once the lock expired
        finally:
            await region.close()
    finally:
        if holder.returncode is None:
            holder.kill()
            await holder.wait()


# ---------------------------------------------------------------- through connections

NOTES = "cache_notes"


@pytest.fixture(scope="module")
def notes(pg_dataset: list[PgCluster]) -> list[PgCluster]:
    for cluster in pg_dataset:
        cluster.execute(
            f"DROP TABLE IF EXISTS {NOTES}; CREATE TABLE {NOTES} (id int PRIMARY KEY, body text)",
            PG_DATABASE,
        )
    return pg_dataset


def cached_config(clusters: list[PgCluster], redis_url: str, prefix: str) -> dict[str, Any]:
    config = pg_config(clusters)
    config["tables"] = {**config["tables"], NOTES: {"shard_key": "id"}}
    config["cache"] = {"url": redis_url, "prefix": prefix, "ttl": 60}
    return config


async def test_a_write_through_any_connection_invalidates_what_read_the_table(
    notes: list[PgCluster], redis_server: RedisServer, prefix: str
) -> None:
    config = cached_config(notes, redis_server.url, prefix)
    read = f"SELECT count(*) FROM {NOTES}"
    async with (
        shardq.AsyncConnection(config, cache=True) as reader,
        shardq.AsyncConnection(config) as writer,
    ):
        before = await (await reader.execute(read)).fetchall()
        await writer.execute(f"INSERT INTO {NOTES} (id, body) VALUES (%s, %s)", [1, "x"])
        assert await (await reader.execute(read)).fetchall() == [(before[0][0] + 1,)]
        # The same connection's own write too; other tables' entries stay.
        other = "SELECT count(*) FROM items"
        items = await (await reader.execute(other)).fetchall()
        await reader.execute(f"DELETE FROM {NOTES} WHERE id = %s", [1])
        assert await (await reader.execute(read)).fetchall() == before
        stats = await reader._caches.named("default").stats()
        misses = stats["miss"]
        assert await (await reader.execute(other)).fetchall() == items
        assert (await reader._caches.named("default").stats())["miss"] == misses  # a hit


TYPED = (
    "SELECT id, 1.50::numeric(5, 2) AS n, 0.25::float8 AS f, 'x'::text AS t, "
    "'\\x00ff'::bytea AS b, true AS bo, DATE '2024-02-29' AS d, TIME '10:11:12' AS ti, "
    "TIMESTAMPTZ '2024-01-01 10:00+02' AS tz, INTERVAL '1 year 2 days' AS iv, "
    "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid AS u, '{\"k\": [1, null]}'::jsonb AS j, "
    "ARRAY[1, NULL] AS arr, NULL::int AS nothing FROM items WHERE id <= 3 ORDER BY id"
)


async def test_a_cached_result_is_the_uncached_one(
    pg_dataset: list[PgCluster], redis_server: RedisServer, prefix: str
) -> None:
    config = cached_config(pg_dataset, redis_server.url, prefix)
    async with shardq.AsyncConnection(config) as conn:
        fresh = await conn.execute(TYPED)
        rows = await fresh.fetchall()
        first = await conn.execute(TYPED, cache=True)  # a miss: computed, stored
        assert await first.fetchall() == rows
        hit = await conn.execute(TYPED, cache=True)
        assert await hit.fetchall() == rows
        assert hit.description == fresh.description
        assert hit.shards == fresh.shards
        assert (await conn._caches.named("default").stats())["miss"] == 1
        # Keyword case and spacing do not matter; parameters do.
        same = await conn.execute(TYPED.replace("SELECT", "select  ", 1), cache=True)
        assert await same.fetchall() == rows
        assert (await conn._caches.named("default").stats())["miss"] == 1
    assert isinstance(rows[0][1], decimal.Decimal)
    assert isinstance(rows[0][6], datetime.date)


async def test_users_never_read_each_others_cached_rows(
    pg_dataset: list[PgCluster], redis_server: RedisServer, prefix: str
) -> None:
    for cluster in pg_dataset:
        cluster.execute(
            "DO $$ BEGIN CREATE ROLE cache_reader LOGIN PASSWORD 'pw2'; "
            "EXCEPTION WHEN duplicate_object THEN NULL; END $$",
            PG_DATABASE,
        )
        cluster.execute("GRANT SELECT ON items, kinds TO cache_reader", PG_DATABASE)
    config = cached_config(pg_dataset, redis_server.url, prefix)
    other = json.loads(json.dumps(config))
    for entry in other["shards"]:
        user = entry["dsn"].split("//", 1)[1].split(":", 1)[0]
        entry["dsn"] = entry["dsn"].replace(f"//{user}:", "//cache_reader:", 1)
        entry["dsn"] = (
            entry["dsn"].split("@", 1)[0].rsplit(":", 1)[0]
            + ":pw2@"
            + (entry["dsn"].split("@", 1)[1])
        )
    sql = "SELECT current_user, count(*) FROM items GROUP BY 1"
    async with (
        shardq.AsyncConnection(config, cache=True) as owner,
        shardq.AsyncConnection(other, cache=True) as reader,
    ):
        mine = await (await owner.execute(sql)).fetchall()
        theirs = await (await reader.execute(sql)).fetchall()
    assert mine[0][0] != "cache_reader"
    assert theirs[0][0] == "cache_reader"


async def test_a_user_key_replaces_the_statement(
    pg_dataset: list[PgCluster], redis_server: RedisServer, prefix: str
) -> None:
    config = cached_config(pg_dataset, redis_server.url, prefix)
    async with shardq.AsyncConnection(config) as conn:
        first = await conn.execute("SELECT 1 AS n", cache=True, cache_key="answer")
        assert await first.fetchall() == [(1,)]
        second = await conn.execute("SELECT 2 AS n", cache=True, cache_key="answer")
        assert await second.fetchall() == [(1,)]  # the key is the caller's to choose


async def test_refusals_are_clear(pg_dataset: list[PgCluster]) -> None:
    async with shardq.AsyncConnection(pg_config(pg_dataset)) as conn:
        with pytest.raises(shardq.ProgrammingError, match="only reads are cached"):
            await conn.execute("UPDATE items SET val = val WHERE id = %s", [1], cache=True)
        with pytest.raises(shardq.ProgrammingError, match="no cache region named 'nope'"):
            await conn.execute("SELECT 1", cache="nope")


def test_a_dead_redis_never_fails_a_query(
    pg_dataset: list[PgCluster], prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    server = RedisServer()
    server.start()
    try:
        config = pg_config(pg_dataset)
        config["cache"] = {"url": server.url, "prefix": prefix}
        sql = "SELECT count(*) FROM items"
        with shardq.connect(config, cache=True) as conn:
            expected = conn.execute(sql).fetchall()
            assert conn.execute(sql).fetchall() == expected  # served by Redis
            server.stop()  # killed mid-run
            with caplog.at_level(logging.WARNING, logger="shardq.cache"):
                for _ in range(3):
                    assert conn.execute(sql).fetchall() == expected
                conn.execute("UPDATE items SET val = val WHERE id = %s", [1])
            warnings = [r for r in caplog.records if r.name == "shardq.cache"]
            assert len(warnings) == 1
            assert "uncached" in warnings[0].getMessage()
            assert server.password not in caplog.text
    finally:
        if server.running:
            server.stop()


def test_cli_shows_and_clears_the_cache(
    pg_dataset: list[PgCluster], redis_server: RedisServer, prefix: str, tmp_path: Path
) -> None:
    config = cached_config(pg_dataset, redis_server.url, prefix)
    with shardq.connect(config, cache=True) as conn:
        conn.execute("SELECT count(*) FROM items").fetchall()
        conn.execute("SELECT count(*) FROM items").fetchall()
    path = tmp_path / "shardq.toml"
    path.write_text(_toml(config))

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "shardq.cli", "cache", *args, "-c", str(path)],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
            check=False,
        )

    stats = cli("stats")
    assert stats.returncode == 0, stats.stderr
    assert "lookups  2" in stats.stdout
    assert "hits     1" in stats.stdout
    assert "entries  1" in stats.stdout
    assert redis_server.password not in stats.stdout
    assert "results that read items" in cli("clear", "--table", "items").stdout
    assert cli("clear", "--table", "nowhere").returncode == 4
    assert "dropped 1" in cli("clear").stdout
    assert "entries  0" in cli("stats").stdout


def _toml(config: dict[str, Any]) -> str:
    lines = [f'dialect = "{config["dialect"]}"']
    for shard in config["shards"]:
        lines += ["[[shards]]", f'name = "{shard["name"]}"', f'dsn = "{shard["dsn"]}"']
    for name, table in config["tables"].items():
        lines.append(f"[tables.{name}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in table.items()]
    lines.append("[cache]")
    lines += [f"{k} = {json.dumps(v)}" for k, v in config["cache"].items()]
    return "\n".join(lines) + "\n"


async def test_writes_in_a_batch_invalidate_at_its_end(
    notes: list[PgCluster], redis_server: RedisServer, prefix: str
) -> None:
    config = cached_config(notes, redis_server.url, prefix)
    read = f"SELECT count(*) FROM {NOTES}"
    async with shardq.AsyncConnection(config, cache=True) as conn:
        before = (await (await conn.execute(read)).fetchall())[0][0]
        insert = f"INSERT INTO {NOTES} (id, body) VALUES (%s, %s)"
        await conn.cursor().executemany(insert, [(i, "b") for i in range(100, 110)])
        assert await (await conn.execute(read)).fetchall() == [(before + 10,)]
        deletes = [(f"DELETE FROM {NOTES} WHERE id = %s", [i]) for i in range(100, 105)]
        await conn.execute_concurrent(deletes)
        assert await (await conn.execute(read)).fetchall() == [(before + 5,)]
        await conn.execute_concurrent_with_args(
            f"DELETE FROM {NOTES} WHERE id = %s", [(i,) for i in range(105, 110)]
        )
        assert await (await conn.execute(read)).fetchall() == [(before,)]


async def test_redis_over_tls_with_a_password(prefix: str) -> None:
    server = RedisServer(tls=True)
    await asyncio.to_thread(server.start)
    try:
        assert server.url.startswith("rediss://")
        region = CacheRegion(RedisBackend(server.url, prefix=prefix), ttl=60)
        try:
            creator = Counting()
            await region.get_or_create("k", ("t",), creator)
            assert (await region.get_or_create("k", ("t",), creator)).rows == [(1,)]
            assert creator.calls == 1
            assert server.password not in repr(region)
        finally:
            await region.close()
    finally:
        await asyncio.to_thread(server.stop)


# ------------------------------------------------------------ found by review: races


async def test_a_result_stored_between_the_miss_and_the_lock_releases_the_lock() -> None:
    class Racing(MemoryBackend):
        """Another process stores the key just before this one takes its lock."""

        raced = False

        async def acquire(self, key: str) -> Any:
            if not self.raced:
                self.raced = True
                now = time.time()
                await self.set(key, Entry(result(0), now + 60, now + 60, ()))
            return await super().acquire(key)

    backend = Racing()
    region = CacheRegion(backend, ttl=60)
    creator = Counting()
    assert (await region.get_or_create("k", (), creator)).rows == [(0,)]
    assert creator.calls == 0
    held = await backend.acquire("default:k")  # the lock was given back
    assert held is not None
    await held.release()


async def test_many_keys_waited_on_at_once_share_one_notifier(
    redis_server: RedisServer, prefix: str
) -> None:
    # Another process (a backend of its own) holds 20 keys' locks; this one
    # waits on all 20 at once, then reads what the other stored.
    other = RedisBackend(redis_server.url, prefix=prefix)
    region = CacheRegion(RedisBackend(redis_server.url, prefix=prefix), ttl=60)
    keys = [f"default:k{i}" for i in range(20)]
    try:
        held = [await other.acquire(k) for k in keys]
        creator = Counting()
        waiting = asyncio.gather(*(region.get_or_create(k[8:], (), creator) for k in keys))
        await asyncio.sleep(0.3)
        now = time.time()
        for key, lock in zip(keys, held, strict=True):
            await other.set(key, Entry(result(key), now + 60, now + 60, ()))
            assert lock is not None
            await lock.release()
        found = await asyncio.wait_for(waiting, timeout=10)
        assert [r.rows[0][0] for r in found] == keys
        assert creator.calls == 0  # every waiter was told, none computed
    finally:
        await region.close()
        await other.close()


async def test_a_computation_begun_before_a_write_is_not_shared_after_it() -> None:
    region = CacheRegion(MemoryBackend(), ttl=60)
    release = asyncio.Event()
    calls = 0

    async def creator() -> Result:
        nonlocal calls
        calls += 1
        if calls == 1:
            await release.wait()  # the first computation read the table before the write
        return result(calls)

    first = asyncio.ensure_future(region.get_or_create("k", ("t",), creator))
    await asyncio.sleep(0.05)
    await region.invalidate(("t",))
    second = asyncio.ensure_future(region.get_or_create("k", ("t",), creator))
    await asyncio.sleep(0.05)
    release.set()
    assert (await first).rows == [(1,)]
    assert (await second).rows == [(2,)]  # computed after the write, not the older result


async def test_regions_sharing_a_backend_keep_their_own_time_to_live() -> None:
    backend = MemoryBackend()
    long = CacheRegion(backend, ttl=3600, name="long")
    short = CacheRegion(backend, ttl=60, name="short")
    creator = Counting()
    await long.get_or_create("k", (), creator)
    assert (await short.get_or_create("k", (), creator)).rows == [(2,)]


async def test_a_caller_changing_its_rows_does_not_change_the_cache(region: CacheRegion) -> None:
    async def creator() -> Result:
        return Result(None, [({"tags": ["a"]}, [1])], 1, ("s0",))

    mine = await region.get_or_create("k", (), creator)
    mine.rows[0][0]["tags"].append("changed")
    mine.rows[0][1].append(2)
    again = await region.get_or_create("k", (), creator)
    again.rows[0][0]["tags"].append("changed again")
    assert (await region.get_or_create("k", (), creator)).rows == [({"tags": ["a"]}, [1])]


async def test_connections_of_one_process_share_its_memory_cache(
    notes: list[PgCluster],
) -> None:
    config = pg_config(notes)
    config["tables"] = {**config["tables"], NOTES: {"shard_key": "id"}}
    read = f"SELECT count(*) FROM {NOTES}"
    async with (
        shardq.AsyncConnection(config, cache=True) as reader,
        shardq.AsyncConnection(config, cache=True) as writer,
    ):
        before = (await (await reader.execute(read)).fetchall())[0][0]
        await writer.execute(f"INSERT INTO {NOTES} (id, body) VALUES (%s, %s)", [500, "m"])
        assert await (await reader.execute(read)).fetchall() == [(before + 1,)]
        await writer.execute(f"DELETE FROM {NOTES} WHERE id = %s", [500])


async def test_parameters_the_cache_cannot_key_run_uncached(
    pg_dataset: list[PgCluster],
) -> None:
    from psycopg.types.json import Jsonb

    async with shardq.AsyncConnection(pg_config(pg_dataset), cache=True) as conn:
        cursor = await conn.execute("SELECT %s::jsonb -> 'a' AS a", [Jsonb({"a": 1})])
        assert await cursor.fetchall() == [(1,)]


def test_connections_given_as_objects_never_share_cached_rows(tmp_path: Path) -> None:
    import sqlite3

    region = CacheRegion(MemoryBackend(), ttl=60)
    answers = []
    for name in ("alice", "bob"):
        path = tmp_path / f"{name}.db"
        with sqlite3.connect(path) as setup:
            setup.execute("CREATE TABLE who (name TEXT)")
            setup.execute("INSERT INTO who VALUES (?)", [name])
        raw = sqlite3.connect(path, check_same_thread=False)
        with shardq.from_connections(
            [raw], tables={"who": {"reference": True}}, dialect="sqlite"
        ) as conn:
            answers.append(conn.execute("SELECT name FROM who", cache=region).fetchall())
        raw.close()
    assert answers == [[("alice",)], [("bob",)]]


async def test_a_transaction_invalidates_what_it_wrote_at_commit_not_before(
    notes: list[PgCluster], redis_server: RedisServer, prefix: str
) -> None:
    config = cached_config(notes, redis_server.url, prefix)
    read = f"SELECT count(*) FROM {NOTES}"
    async with (
        shardq.AsyncConnection(config, cache=True) as reader,
        shardq.AsyncConnection(config, cache=True) as writer,
    ):
        before = (await (await reader.execute(read)).fetchall())[0][0]
        insert = f"INSERT INTO {NOTES} (id, body) VALUES (%s, %s)"
        async with writer.transaction():
            await writer.execute(insert, [201, "t"])
            await writer.execute(insert, [202, "t"])
            # Not committed: a reader filling the cache now stores the old count,
            # which the commit must then drop.
            await reader._caches.named("default").clear()
            assert await (await reader.execute(read)).fetchall() == [(before,)]
            assert await (await reader.execute(read)).fetchall() == [(before,)]  # a hit
        assert await (await reader.execute(read)).fetchall() == [(before + 2,)]
        # A rolled back transaction changes nothing the cache holds.
        writer.autocommit = False
        await writer.execute(f"DELETE FROM {NOTES} WHERE id IN (201, 202)")
        await writer.rollback()
        writer.autocommit = True
        assert await (await reader.execute(read)).fetchall() == [(before + 2,)]
        await writer.execute(f"DELETE FROM {NOTES} WHERE id IN (201, 202)")
        assert await (await reader.execute(read)).fetchall() == [(before,)]
