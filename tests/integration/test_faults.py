"""Faults between shardq and its shards, injected by the proxy: timeouts hold, answers stay exact.

Every shard is reached through a :class:`~tests.fixtures.proxy.Proxy`. A
blackholed shard (connections accepted, never answered) must fail a call
with :class:`~shardq.QueryTimeoutError` naming it within ``timeout`` plus
10 % (the grace given to cancelling, see :mod:`shardq.execute.deadline`)
plus :data:`SLACK`, a constant for closing and scheduling on the 2-core test
machine. Other faults fail fast, naming their shard; latency below the
timeout changes nothing. After each fault no session is left on the servers
once the client has closed, and the next statement succeeds.

The randomized test mixes faults on random shards with random timeouts:
``SHARDQ_FAULT_RUNS`` runs (24 by default; 1,000 in the full suite, which
``scripts/test`` with no arguments sets), several at once, each answer exact
or an error naming a faulted shard.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from typing import TYPE_CHECKING, Any

import pytest

import shardq
from shardq.errors import InFailedTransactionError, QueryTimeoutError, ShardError
from shardq.execute.transaction import ROLLBACK_TIMEOUT
from tests.fixtures.proxy import Fault, ProxyLoop, proxied_config
from tests.fixtures.shards import ITEMS, PG_DATABASE, TABLES

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from tests.fixtures.proxy import Proxy
    from tests.fixtures.servers import PgCluster

APP = "shardq-faults"
#: Seconds over ``timeout * 1.1`` allowed for closing and scheduling (2 cores, loaded).
SLACK = 0.25
RUNS = int(os.environ.get("SHARDQ_FAULT_RUNS", "24"))
WORKERS = int(os.environ.get("SHARDQ_FAULT_WORKERS", "3"))

COUNT = ("SELECT count(*), sum(val) FROM items", [(len(ITEMS), sum(r[2] for r in ITEMS))])
ORDERED = ("SELECT id, val FROM items ORDER BY id", [(r[0], r[2]) for r in ITEMS])
GROUPS = (
    "SELECT grp, count(*) FROM items GROUP BY grp ORDER BY grp",
    sorted({g: sum(1 for r in ITEMS if r[1] == g) for g in {r[1] for r in ITEMS}}.items()),
)
WIDE = (
    "SELECT id, repeat('x', 20000) AS pad FROM items ORDER BY id",
    [(r[0], "x" * 20000) for r in ITEMS],
)


def _sessions(clusters: list[PgCluster]) -> int:
    """shardq's sessions on the servers (asked directly, not through the proxies)."""
    return sum(
        c.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", "postgres", [APP]
        )[0][0]
        for c in clusters
    )


def _assert_no_sessions(clusters: list[PgCluster]) -> None:
    """No session of shardq's left on any server, polled to a deadline (a close takes a moment)."""
    deadline = time.monotonic() + 5
    while (left := _sessions(clusters)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert left == 0


@pytest.fixture
def config(pg_dataset: list[PgCluster], proxies: list[Proxy]) -> dict[str, Any]:
    return proxied_config(pg_dataset, proxies, PG_DATABASE, APP, TABLES)


@pytest.fixture
async def conn(
    config: dict[str, Any], pg_dataset: list[PgCluster]
) -> AsyncIterator[shardq.AsyncConnection]:
    connection = await shardq.connect_async(config)
    try:
        yield connection
    finally:
        await connection.close()
    _assert_no_sessions(pg_dataset)


async def _rows(conn: shardq.AsyncConnection, sql: str, timeout: float | None) -> list[Any]:
    cur = await conn.execute(sql, timeout=timeout)
    return [tuple(row) for row in await cur.fetchall()]


def _within(elapsed: float, timeout: float) -> None:
    assert elapsed <= timeout * 1.1 + SLACK, f"{elapsed:.3f} s for timeout={timeout}"


@pytest.mark.parametrize("timeout", [1.0, 2.0])
@pytest.mark.parametrize("when", ["pooled", "connecting"])
async def test_blackhole_times_out_in_time(
    conn: shardq.AsyncConnection, proxies: list[Proxy], timeout: float, when: str
) -> None:
    sql, expected = COUNT
    if when == "pooled":
        assert await _rows(conn, sql, timeout) == expected  # every shard's connection pooled
    proxies[1].set(Fault.blackhole())
    started = time.monotonic()
    with pytest.raises(QueryTimeoutError) as caught:
        await _rows(conn, sql, timeout)
    elapsed = time.monotonic() - started
    _within(elapsed, timeout)
    assert elapsed >= timeout
    assert caught.value.shards == ("s1",)
    proxies[1].heal()
    assert await _rows(conn, sql, timeout) == expected  # the pool replaced what it discarded


async def test_blackhole_mid_stream(
    config: dict[str, Any], pg_dataset: list[PgCluster], proxies: list[Proxy]
) -> None:
    """A stream that stops coming, after its first rows, is bounded as well.

    The rows come slowly (a sleep per row, each row over PostgreSQL's 8 KB
    output buffer so that it is sent at once), so that most of them are
    still on the server, not in a socket's buffer, when the shard goes silent.
    """
    sql = "SELECT id, repeat('x', 9000) || pg_sleep(0.01)::text AS z FROM items"
    expected = sorted((r[0], "x" * 9000) for r in ITEMS)
    conn = await shardq.connect_async(config, fetch_size=10)  # rows come as they are read
    try:
        await _mid_stream(conn, proxies, sql, expected)
    finally:
        await conn.close()
    _assert_no_sessions(pg_dataset)


async def _mid_stream(
    conn: shardq.AsyncConnection, proxies: list[Proxy], sql: str, expected: list[Any]
) -> None:
    started = time.monotonic()
    cur = await conn.execute(sql, timeout=1.0)
    assert await cur.fetchone() is not None
    proxies[2].set(Fault.blackhole())
    with pytest.raises(QueryTimeoutError) as caught:
        await cur.fetchall()
    _within(time.monotonic() - started, 1.0)
    assert caught.value.shards == ("s2",)
    proxies[2].heal()
    assert sorted(await _rows(conn, sql, 2.0)) == expected


@pytest.mark.parametrize("fault", [Fault.reset(), Fault.drop()], ids=["reset", "drop"])
async def test_closed_shard_fails_fast(
    conn: shardq.AsyncConnection, proxies: list[Proxy], fault: Fault
) -> None:
    sql, expected = ORDERED
    assert await _rows(conn, sql, 5.0) == expected
    proxies[2].set(fault)
    started = time.monotonic()
    with pytest.raises(ShardError) as caught:
        await _rows(conn, sql, 5.0)
    assert time.monotonic() - started < 1.0
    assert caught.value.shard == "s2"
    proxies[2].heal()
    assert await _rows(conn, sql, 5.0) == expected


async def test_latency_below_timeout(conn: shardq.AsyncConnection, proxies: list[Proxy]) -> None:
    for proxy in proxies:
        proxy.set(Fault.delayed(0.05))
    for sql, expected in (COUNT, ORDERED, GROUPS):
        assert await _rows(conn, sql, 2.0) == expected


async def test_stream_cut(conn: shardq.AsyncConnection, proxies: list[Proxy]) -> None:
    sql, expected = WIDE
    assert await _rows(conn, sql, 5.0) == expected
    proxies[3].set(Fault.cut(20000))
    with pytest.raises(ShardError) as caught:
        await _rows(conn, sql, 5.0)
    assert caught.value.shard == "s3"
    proxies[3].heal()
    assert await _rows(conn, sql, 5.0) == expected


async def test_slow_close(conn: shardq.AsyncConnection, proxies: list[Proxy]) -> None:
    """A shard that stops answering and closes later: the error or the timeout, whichever first."""
    sql, expected = COUNT
    assert await _rows(conn, sql, 5.0) == expected
    proxies[0].set(Fault.slow_close(0.3))
    started = time.monotonic()
    with pytest.raises(ShardError) as caught:
        await _rows(conn, sql, 5.0)
    assert 0.25 <= time.monotonic() - started < 1.5
    assert caught.value.shard == "s0"
    proxies[0].heal()
    assert await _rows(conn, sql, 5.0) == expected


@pytest.mark.parametrize("when", ["pooled", "connecting"])
async def test_batch_on_blackholed_shard(
    conn: shardq.AsyncConnection, proxies: list[Proxy], when: str
) -> None:
    """A batch's lookups: those of the silent shard time out in time, naming it; others exact."""
    keys = [row[0] for row in ITEMS[:40]]
    batch = [("SELECT val FROM items WHERE id = %s", (key,)) for key in keys]
    if when == "pooled":
        await conn.execute_concurrent(batch, timeout=5.0)
    proxies[1].set(Fault.blackhole())
    started = time.monotonic()
    results = await conn.execute_concurrent(batch, raise_on_first_error=False, timeout=1.0)
    _within(time.monotonic() - started, 1.0)
    for key, (success, result) in zip(keys, results, strict=True):
        if conn.shard_for("items", key) == "s1":
            assert not success
            assert isinstance(result, QueryTimeoutError)
            assert result.shards == ("s1",)
        else:
            assert success
            assert list(result) == [(key * 10,)]
    proxies[1].heal()
    results = await conn.execute_concurrent(batch, timeout=5.0)
    assert [list(r.result_or_exc) for r in results] == [[(key * 10,)] for key in keys]


async def test_transaction_on_blackholed_shard(
    conn: shardq.AsyncConnection, proxies: list[Proxy]
) -> None:
    """A timeout in a transaction fails it; the rollback does not wait on the silent shard."""
    sql, expected = COUNT
    marks: list[float] = []
    with pytest.raises(QueryTimeoutError) as caught:
        await _time_out_in_transaction(conn, proxies[2], marks)
    # The rollback (as the block raised) did not wait on the silent shard.
    assert time.monotonic() - marks[-1] < 1.0
    assert caught.value.shards == ("s2",)
    proxies[2].heal()
    assert await _rows(conn, sql, 5.0) == expected


async def test_rollback_on_blackholed_shard(
    conn: shardq.AsyncConnection, proxies: list[Proxy]
) -> None:
    """A ROLLBACK the shard never answers is given up after ROLLBACK_TIMEOUT (and its grace)."""
    sql, expected = COUNT
    marks: list[float] = []
    with pytest.raises(RuntimeError, match="rolled back"):
        await _silence_in_transaction(conn, [proxies[0], proxies[3]], marks)
    _within(time.monotonic() - marks[0], ROLLBACK_TIMEOUT)  # the two shards together
    for proxy in proxies:
        proxy.heal()
    assert await _rows(conn, sql, 5.0) == expected


async def _silence_in_transaction(
    conn: shardq.AsyncConnection, silent: list[Proxy], marks: list[float]
) -> None:
    sql, expected = COUNT
    async with conn.transaction():
        assert await _rows(conn, sql, 5.0) == expected  # every shard joined
        for proxy in silent:
            proxy.set(Fault.blackhole())
        marks.append(time.monotonic())
        raise RuntimeError("rolled back")


async def _time_out_in_transaction(
    conn: shardq.AsyncConnection, proxy: Proxy, marks: list[float]
) -> None:
    sql, expected = COUNT
    async with conn.transaction():
        assert await _rows(conn, sql, 5.0) == expected  # every shard joined
        proxy.set(Fault.blackhole())
        started = time.monotonic()
        try:
            await _rows(conn, sql, 1.0)
        finally:
            _within(time.monotonic() - started, 1.0)
            with pytest.raises(InFailedTransactionError):
                await _rows(conn, sql, 1.0)
            marks.append(time.monotonic())


#: Random faults, each made from a random.Random (also test_partial.py's).
FAULTS = [
    lambda r: Fault.passing(),
    lambda r: Fault.delayed(r.choice([0.005, 0.02])),
    lambda r: Fault.blackhole(),
    lambda r: Fault.reset(),
    lambda r: Fault.drop(),
    lambda r: Fault.cut(r.randrange(100, 40000)),
    lambda r: Fault.slow_close(r.choice([0.1, 0.3])),
]


async def test_random_faults(pg_dataset: list[PgCluster]) -> None:
    """Random faults on random shards, random timeouts: exact or a faulted shard named, in time.

    ``SHARDQ_FAULT_RUNS`` runs (24 by default; ``scripts/test`` with no
    arguments, the full suite, sets 1,000), shared by ``SHARDQ_FAULT_WORKERS``
    workers (3 by default) running at once, each with proxies of its own in
    front of the same clusters and a connection of its own per run: wall time
    is about runs / workers x one run (1,000 runs: about 2 minutes on 2
    cores). More workers overload 2 cores (the proxies are threads of this
    process): with 4 or 6, statements on shards without a fault missed 0.5 s
    timeouts, from load, not a late return. Each run draws from a generator
    seeded by its number, so a failing run is the same whatever the schedule.
    """
    runs = list(range(RUNS))
    outcomes = {"exact": 0, "timeout": 0, "error": 0}
    lateness: list[float] = []  # how long after its timeout each call ended
    owners = [ProxyLoop() for _ in range(min(WORKERS, RUNS))]
    try:
        workers = [
            [owner.proxy(c.host, c.port, name=f"s{i}") for i, c in enumerate(pg_dataset)]
            for owner in owners
        ]

        async def work(proxies: list[Proxy]) -> None:
            while runs:
                run = runs.pop(0)
                config = proxied_config(pg_dataset, proxies, PG_DATABASE, APP, TABLES)
                outcome, late = await _random_run(random.Random(16_000 + run), config, proxies)
                outcomes[outcome] += 1
                lateness.append(late)

        started = time.monotonic()
        async with asyncio.TaskGroup() as group:
            for proxies in workers:
                group.create_task(work(proxies))
        wall = time.monotonic() - started
    finally:
        for owner in owners:
            owner.close()
    _assert_no_sessions(pg_dataset)
    print(
        f"{RUNS} runs by {len(owners)} workers in {wall:.1f} s: {outcomes}, "
        f"at most {max(lateness):.3f} s after the timeout"
    )


async def _random_run(
    rng: random.Random, config: dict[str, Any], proxies: list[Proxy]
) -> tuple[str, float]:
    """One run: its outcome (exact, timeout, error) and how late after its timeout it ended."""
    conn = await shardq.connect_async(config)
    try:
        sql, expected = rng.choice([COUNT, ORDERED, GROUPS, WIDE])
        timeout = rng.choice([0.5, 1.0, 1.5])
        if rng.random() < 0.5:
            assert await _rows(conn, sql, 5.0) == expected  # faults on pooled connections
        faulted = set()
        faults = {}
        for i, proxy in enumerate(proxies):
            if rng.random() < 0.4:
                fault = faults[i] = rng.choice(FAULTS)(rng)
                # In a thread: a blocking call here would stall the other workers' runs.
                await asyncio.to_thread(proxy.set, fault)
                if fault.kind != "pass":  # a delay too may outlast a short timeout
                    faulted.add(f"s{i}")
        started = time.monotonic()
        named: set[str] | None = None
        error: Exception | None = None
        try:
            rows = await _rows(conn, sql, timeout)
        except QueryTimeoutError as exc:
            outcome, error = "timeout", exc
            named = set(exc.shards)
        except ShardError as exc:
            outcome, error = "error", exc
            named = {exc.shard}
        else:
            outcome = "exact"
            assert rows == expected
        elapsed = time.monotonic() - started
        if named is not None:  # an error: it names a shard that had a fault
            assert named & faulted, (named, faults, error)
        assert elapsed <= timeout * 1.1 + SLACK, (sql, timeout, faults, elapsed)
        return outcome, elapsed - timeout
    finally:
        for proxy in proxies:
            await asyncio.to_thread(proxy.heal)
        await conn.close()


async def test_a_cancelled_connect_leaves_no_session(pg_dataset: list[PgCluster]) -> None:
    """A connect cut by a deadline closes what it made, even while its error is kept.

    psycopg's half-made connection lives in the frames of the cancellation's
    traceback: a kept error (a batch's result, in a reference cycle) kept
    the session open, idle and never used, until the cycle collector ran.
    Connects are cancelled at random moments of their handshake here, their
    errors kept: no session may be left.
    """
    cluster = pg_dataset[0]
    dsn = f"{cluster.dsn(PG_DATABASE)}?application_name={APP}"
    config = {"dialect": "postgres", "shards": [{"name": "s0", "dsn": dsn}], "tables": TABLES}
    rng = random.Random(7)
    kept: list[BaseException] = []
    async with await shardq.connect_async(config) as conn:
        pool = conn._engine.pools["s0"]
        for _ in range(100):
            # The driver's connect itself: a pool's checkout would lend its idle one.
            task = asyncio.ensure_future(pool._connect())  # type: ignore[attr-defined]
            await asyncio.sleep(rng.uniform(0.0, 0.02))
            task.cancel()
            try:
                await (await task).close()  # made in time: closed
            except asyncio.CancelledError as exc:
                kept.append(exc)
        assert len(kept) > 20  # most were cut mid-connect
        for _ in range(100):  # polled for 5 s: a closed session ends in a moment
            if (left := _sessions([cluster])) == 0:
                break
            await asyncio.sleep(0.05)
        assert left == 0, f"{left} sessions left by {len(kept)} connects cancelled"
    kept.clear()
    _assert_no_sessions(pg_dataset)
