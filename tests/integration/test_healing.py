"""Pools that heal: a restarted server costs only the statements running on it.

Issue 16 measured 3 failures in the 42 reads after a server restart, each on a
pooled connection the restart had broken. Here a pool is warmed with several
connections, the server is shut down (fast or immediate) and started again,
and the reads after it must all succeed, on new connections: the pool finds
its dead idle connections at checkout (see :mod:`shardq.execute.pool`)
instead of sending a statement on each. Only a statement running during the
restart fails, naming its shard. The server's own ``pg_stat_activity`` shows
no session left after close.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING, Any

import pytest

import shardq
from tests.fixtures.servers import PgCluster

if TYPE_CHECKING:
    from collections.abc import Iterator

    from shardq.execute.pool import LazyPool

pytestmark = pytest.mark.postgres

DATABASES = ("healing_0", "healing_1")
ROWS = [(i, f"g{i % 3}", i * 10) for i in range(1, 61)]
WARM = 6  # connections per shard before the restart
READS = 48  # sequential reads after it (the issue measured 42)
ROUNDS = 4  # then rounds of WARM concurrent reads


@pytest.fixture(scope="module")
def cluster() -> Iterator[PgCluster]:
    """A cluster of this module's own: the tests restart it."""
    cluster = PgCluster(name="healing")
    try:
        cluster.start()
        for name in DATABASES:
            cluster.create_database(name)
            cluster.execute(
                "CREATE TABLE items (id int PRIMARY KEY, grp text NOT NULL, val int NOT NULL)",
                name,
            )
        yield cluster
    finally:
        cluster.stop()


def config(cluster: PgCluster) -> dict[str, Any]:
    return {
        "dialect": "postgres",
        "shards": [
            {"name": f"h{i}", "dsn": cluster.dsn(db), "pool_min_size": WARM, "pool_max_size": 8}
            for i, db in enumerate(DATABASES)
        ],
        "tables": {"items": {"shard_key": "id"}},
    }


@pytest.fixture(scope="module")
def loaded(cluster: PgCluster) -> PgCluster:
    """``items`` placed on its shards as shardq places it."""
    conn = shardq.connect(config(cluster))
    try:
        placed: dict[str, list[tuple[int, str, int]]] = {}
        for row in ROWS:
            placed.setdefault(conn.shard_for("items", row[0]), []).append(row)
    finally:
        conn.close()
    for i, db in enumerate(DATABASES):
        for row in placed.get(f"h{i}", []):
            cluster.execute("INSERT INTO items VALUES (%s, %s, %s)", db, row)
    return cluster


def sessions(cluster: PgCluster) -> int:
    """Sessions on the module's databases, but this one."""
    rows = cluster.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = ANY(%s) AND pid <> pg_backend_pid()",
        params=[list(DATABASES)],
    )
    return int(rows[0][0])


def no_session_left(cluster: PgCluster, timeout: float = 10.0) -> bool:
    """Whether the sessions end (a backend leaves a moment after its client's goodbye)."""
    deadline = time.monotonic() + timeout
    while sessions(cluster):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def lazy_pool(conn: shardq.AsyncConnection, shard: str) -> LazyPool[Any]:
    pool: LazyPool[Any] = conn._engine.pools[shard]._pool  # type: ignore[attr-defined]
    return pool


async def point_read(conn: shardq.AsyncConnection, key: int) -> None:
    cur = conn.cursor()
    await cur.execute("SELECT id, grp, val FROM items WHERE id = %s", (key,))
    assert await cur.fetchall() == [ROWS[key - 1]]


async def scatter_read(conn: shardq.AsyncConnection) -> None:
    cur = conn.cursor()
    await cur.execute("SELECT grp, count(*), sum(val) FROM items GROUP BY grp ORDER BY grp")
    expected = [
        (g, sum(1 for r in ROWS if r[1] == g), sum(r[2] for r in ROWS if r[1] == g))
        for g in ("g0", "g1", "g2")
    ]
    assert await cur.fetchall() == expected


async def reads_after_restart(conn: shardq.AsyncConnection) -> list[BaseException]:
    """The reads the issue counted: sequential, then concurrent; the failures, if any."""
    failures: list[BaseException] = []
    for n in range(READS):
        try:
            await (point_read(conn, n % len(ROWS) + 1) if n % 3 else scatter_read(conn))
        except Exception as exc:
            failures.append(exc)
    for _ in range(ROUNDS):
        reads = [point_read(conn, k + 1) for k in range(WARM - 1)] + [scatter_read(conn)]
        results = await asyncio.gather(*reads, return_exceptions=True)
        failures += [r for r in results if isinstance(r, BaseException)]
    return failures


async def warm(conn: shardq.AsyncConnection) -> dict[str, int]:
    """Every shard's pool holding ``WARM`` idle connections, each used by a read."""
    await scatter_read(conn)  # opens the pool_min_size connections together
    await asyncio.gather(*(scatter_read(conn) for _ in range(WARM)))
    idle = {shard: len(lazy_pool(conn, shard)._idle) for shard in conn.config.shard_names}
    assert idle == dict.fromkeys(conn.config.shard_names, WARM)
    return idle


@pytest.mark.parametrize("mode", ["fast", "immediate"])
async def test_reads_after_a_restart_all_succeed_on_new_connections(
    loaded: PgCluster, mode: str
) -> None:
    conn = await shardq.AsyncConnection.connect(config(loaded))
    try:
        idle = await warm(conn)
        before = {shard: lazy_pool(conn, shard).discarded for shard in idle}
        await asyncio.to_thread(loaded.halt, mode)
        restarted = time.time()
        await asyncio.to_thread(loaded.resume)

        failures = await reads_after_restart(conn)

        assert failures == [], f"{len(failures)} reads failed after a {mode} restart"
        # Each connection of before the restart was found dead when taken, and
        # closed: none ran a statement (that would have failed, above).
        discarded = {shard: lazy_pool(conn, shard).discarded - before[shard] for shard in idle}
        assert discarded == idle
        started = loaded.execute(
            "SELECT min(extract(epoch FROM backend_start)) FROM pg_stat_activity "
            "WHERE datname = ANY(%s) AND pid <> pg_backend_pid()",
            params=[list(DATABASES)],
        )
        assert started[0][0] is not None
        assert float(started[0][0]) >= restarted
    finally:
        await conn.close()
    assert no_session_left(loaded)


@pytest.mark.parametrize("mode", ["fast", "immediate"])
async def test_a_statement_running_during_a_restart_fails_naming_its_shard(
    loaded: PgCluster, mode: str
) -> None:
    conn = await shardq.AsyncConnection.connect(config(loaded))
    key = next(k for k, *_ in ROWS if conn.shard_for("items", k) == "h1")
    try:
        await warm(conn)
        cur = conn.cursor()
        running = asyncio.create_task(
            cur.execute("SELECT id, pg_sleep(30) AS healing_sleep FROM items WHERE id = %s", (key,))
        )
        deadline = time.monotonic() + 20
        while not loaded.execute(
            "SELECT 1 FROM pg_stat_activity WHERE state = 'active' AND query LIKE %s "
            "AND pid <> pg_backend_pid()",
            params=["%healing_sleep%"],
        ):
            assert time.monotonic() < deadline, "the statement never started"
            await asyncio.sleep(0.02)
        await asyncio.to_thread(loaded.halt, mode)
        with pytest.raises(shardq.ShardError) as caught:
            await running
        assert caught.value.shard == "h1"
        await asyncio.to_thread(loaded.resume)

        assert await reads_after_restart(conn) == []
    finally:
        with contextlib.suppress(Exception):
            await conn.close()
    assert no_session_left(loaded)


async def test_a_lost_connection_retires_the_idle_ones(loaded: PgCluster) -> None:
    """A connection lost mid-statement: those idle then are closed, not lent again.

    Its backend is ended with ``pg_terminate_backend``, which the other
    sessions do not notice; their closing is the rule for what a checkout
    cannot see (a crashed host sends nothing), checked here by its count.
    """
    conn = await shardq.AsyncConnection.connect(config(loaded))
    key = next(k for k, *_ in ROWS if conn.shard_for("items", k) == "h0")
    try:
        await warm(conn)
        pool = lazy_pool(conn, "h0")
        cur = conn.cursor()
        running = asyncio.create_task(
            cur.execute("SELECT id, pg_sleep(30) AS healing_lost FROM items WHERE id = %s", (key,))
        )
        deadline = time.monotonic() + 20
        while not (
            pids := loaded.execute(
                "SELECT pid FROM pg_stat_activity WHERE state = 'active' AND query LIKE %s "
                "AND pid <> pg_backend_pid()",
                params=["%healing_lost%"],
            )
        ):
            assert time.monotonic() < deadline, "the statement never started"
            await asyncio.sleep(0.02)
        idle_then = len(pool._idle)
        before = pool.discarded
        loaded.execute("SELECT pg_terminate_backend(%s)", params=[pids[0][0]])
        with pytest.raises(shardq.ShardError) as caught:
            await running
        assert caught.value.shard == "h0"
        assert pool._idle == []
        assert pool.discarded - before == idle_then == WARM - 1
        await point_read(conn, key)
        assert pool.size == 1
    finally:
        await conn.close()
    assert no_session_left(loaded)


def test_psycopg2_connections_passed_in_fail_naming_the_shard_after_a_restart(
    loaded: PgCluster,
) -> None:
    """A PEP 249 connection the user passed in cannot be reopened by shardq.

    psycopg2 learns that its connection is lost only from a statement, so
    the reads after the restart fail, each naming a shard, at once, until
    the user passes new connections. shardq does not close the user's
    connections.
    """
    psycopg2 = pytest.importorskip("psycopg2")
    raws = [psycopg2.connect(loaded.dsn(db)) for db in DATABASES]
    raws[0].autocommit = raws[1].autocommit = True
    try:
        conn = shardq.from_connections(raws, tables={"items": {"shard_key": "id"}})
        names = conn.config.shard_names
        query = "SELECT count(*) FROM items"
        try:
            assert conn.execute(query).fetchall() == [(len(ROWS),)]
            loaded.halt("fast")
            loaded.resume()
            for _ in range(2):
                with pytest.raises(shardq.ShardError) as caught:
                    conn.execute(query).fetchall()
                assert caught.value.shard in names
            assert any(raw.closed == 2 for raw in raws)  # psycopg2's "lost"
        finally:
            conn.close()
        assert all(raw.closed != 1 for raw in raws)  # lost, perhaps, but not closed by shardq
    finally:
        for raw in raws:
            raw.close()
    assert no_session_left(loaded)
