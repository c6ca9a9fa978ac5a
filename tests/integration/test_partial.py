"""Partial results, opt-in (``allow_partial``): the shards that answered, and the ones missing.

Every shard is reached through a fault-injecting proxy. With
``allow_partial`` a read leaves out a shard that is unreachable, lost or
silent past the timeout: the rows are exactly those the other shards give
(checked against the rows each shard holds), the merge (a count, a LIMIT, an
ORDER BY) runs over them, ``cursor.missing_shards`` names the shards left out
and a :class:`shardq.PartialResultWarning` says so at the caller's line.
Without it, nothing changes: the same faults are errors. An error of the
statement itself, a write, a transaction and a read no shard answered are
never partial.
"""

from __future__ import annotations

import asyncio
import os
import random
import sqlite3
import time
import warnings
from typing import TYPE_CHECKING, Any

import pytest

import shardq
from shardq.errors import ProgrammingError, QueryTimeoutError, ShardError
from tests.fixtures.proxy import Fault, proxied_config
from tests.fixtures.shards import ITEMS, PG_DATABASE, SQLITE_SCHEMA, TABLES
from tests.integration.test_faults import APP, FAULTS, SLACK, _assert_no_sessions

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from tests.fixtures.proxy import Proxy
    from tests.fixtures.servers import PgCluster


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


def _without(conn: shardq.AsyncConnection | shardq.Connection, *shards: str) -> list[Any]:
    """The items held by every shard but ``shards``."""
    return [row for row in ITEMS if conn.shard_for("items", row[0]) not in shards]


async def _partial(
    conn: shardq.AsyncConnection, sql: str, timeout: float = 5.0, **options: Any
) -> tuple[list[Any], tuple[str, ...], list[warnings.WarningMessage]]:
    """Run ``sql`` with allow_partial: its rows, its missing shards, the warnings issued."""
    options.setdefault("allow_partial", True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cur = await conn.execute(sql, timeout=timeout, **options)
        rows = [tuple(row) for row in await cur.fetchall()]
    return rows, cur.missing_shards, list(caught)


def _partial_warning(caught: list[warnings.WarningMessage], *shards: str) -> str:
    """The one PartialResultWarning among ``caught``, naming ``shards``, issued here."""
    partial = [w for w in caught if issubclass(w.category, shardq.PartialResultWarning)]
    assert len(partial) == 1, [str(w.message) for w in caught]
    warning = partial[0]
    assert isinstance(warning.message, shardq.PartialResultWarning)
    assert warning.message.shards == shards
    assert warning.filename == __file__  # at the caller's line, not in shardq
    return str(warning.message)


@pytest.mark.parametrize("fault", [Fault.reset(), Fault.drop()], ids=["reset", "drop"])
async def test_unreachable_shard_left_out(
    conn: shardq.AsyncConnection, proxies: list[Proxy], fault: Fault
) -> None:
    proxies[2].set(fault)
    rows, missing, caught = await _partial(conn, "SELECT id, grp, val FROM items ORDER BY id")
    assert rows == _without(conn, "s2")
    assert missing == ("s2",)
    message = _partial_warning(caught, "s2")
    assert message.startswith("partial result: shard s2 left out (")
    # Without allow_partial, the same fault is the error it always was.
    with pytest.raises(ShardError) as failed:
        await conn.execute("SELECT id FROM items ORDER BY id", timeout=5.0)
    assert failed.value.shard == "s2"
    proxies[2].heal()
    rows, missing, caught = await _partial(conn, "SELECT id, grp, val FROM items ORDER BY id")
    assert (rows, missing, caught) == (ITEMS, (), [])


async def test_silent_shard_left_out_at_the_timeout(
    conn: shardq.AsyncConnection, proxies: list[Proxy]
) -> None:
    """A blackholed shard: the call returns within its timeout, without that shard."""
    await _partial(conn, "SELECT count(*) FROM items")  # every shard's connection pooled
    proxies[1].set(Fault.blackhole())
    started = time.monotonic()
    rows, missing, caught = await _partial(conn, "SELECT count(*), sum(val) FROM items", 1.0)
    elapsed = time.monotonic() - started
    assert 1.0 <= elapsed <= 1.0 * 1.1 + SLACK
    others = _without(conn, "s1")
    # The count is over the shards that answered: partial, and said so.
    assert rows == [(len(others), sum(r[2] for r in others))]
    assert missing == ("s1",)
    assert "timed out after 1 s" in _partial_warning(caught, "s1")
    proxies[1].heal()


async def test_merges_run_over_the_shards_that_answered(
    conn: shardq.AsyncConnection, proxies: list[Proxy]
) -> None:
    proxies[0].set(Fault.reset())
    proxies[3].set(Fault.reset())
    others = _without(conn, "s0", "s3")
    rows, missing, caught = await _partial(
        conn, "SELECT id, val FROM items ORDER BY val DESC LIMIT 7 OFFSET 2"
    )
    assert rows == [(r[0], r[2]) for r in sorted(others, key=lambda r: -r[2])[2:9]]
    assert set(missing) == {"s0", "s3"}
    _partial_warning(caught, *missing)
    rows, missing, _ = await _partial(
        conn, "SELECT grp, count(*), avg(val)::float FROM items GROUP BY grp ORDER BY grp"
    )
    groups: dict[str, list[int]] = {}
    for _, grp, val in others:
        groups.setdefault(grp, []).append(val)
    assert rows == [(g, len(v), sum(v) / len(v)) for g, v in sorted(groups.items())]
    rows, missing, _ = await _partial(conn, "SELECT DISTINCT grp FROM items ORDER BY grp")
    assert rows == sorted({(r[1],) for r in others})
    for proxy in proxies:
        proxy.heal()


async def test_subquery_missing_a_shard_makes_the_answer_partial(
    conn: shardq.AsyncConnection, proxies: list[Proxy]
) -> None:
    """A shard the subquery could not read is named though the outer query ran after."""
    sql = "SELECT count(*) FROM items WHERE val > (SELECT avg(val) FROM items)"
    proxies[3].set(Fault.reset())
    rows, missing, caught = await _partial(conn, sql)
    others = _without(conn, "s3")
    average = sum(r[2] for r in others) / len(others)
    assert rows == [(sum(1 for r in others if r[2] > average),)]
    assert missing == ("s3",)
    assert caught  # the subquery's warning (issued where the subquery ran)
    proxies[3].heal()


async def test_shard_lost_mid_stream(
    config: dict[str, Any], pg_dataset: list[PgCluster], proxies: list[Proxy]
) -> None:
    """Rows already received from a shard lost while streaming stay; the rest is missing.

    The rows come slowly (a sleep per row) so that most are still on the
    server when the shard's connection is reset.
    """
    sql = "SELECT id, repeat('x', 9000) || pg_sleep(0.01)::text AS pad FROM items ORDER BY id"
    conn = await shardq.connect_async(config, fetch_size=5, allow_partial=True)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            cur = await conn.execute(sql, timeout=5.0)
            first = await cur.fetchone()
            assert cur.missing_shards == ()
            assert not caught
            proxies[2].set(Fault.reset())
            rest = await cur.fetchall()
        rows = [first, *rest]
        ids = [row[0] for row in rows]
        assert ids == sorted(set(ids))  # in order, no row twice
        assert {r[1] for r in rows} == {"x" * 9000}
        held = {r[0] for r in _without(conn, "s2")}
        assert held <= set(ids)  # every row of the shards that answered
        lost = [r[0] for r in ITEMS if r[0] not in held]
        assert len(set(ids) - held) < len(lost)  # s2's stream was cut short
        assert cur.missing_shards == ("s2",)
        _partial_warning(caught, "s2")
    finally:
        for proxy in proxies:
            proxy.heal()
        await conn.close()
    _assert_no_sessions(pg_dataset)


async def test_statement_errors_are_never_partial(
    conn: shardq.AsyncConnection, proxies: list[Proxy]
) -> None:
    """A division by zero on one shard's rows fails the read, as on one database."""
    zero = ITEMS[41]
    sql = f"SELECT id, 1 / (val - {zero[2]}) FROM items"
    with pytest.raises(ShardError) as failed:
        await conn.execute(sql, timeout=5.0, allow_partial=True)
    assert failed.value.shard == conn.shard_for("items", zero[0])
    assert failed.value.sqlstate == "22012"


async def test_every_shard_missing_is_an_error(
    conn: shardq.AsyncConnection, proxies: list[Proxy]
) -> None:
    for proxy in proxies:
        proxy.set(Fault.reset())
    with pytest.raises(ShardError):
        await conn.execute("SELECT count(*) FROM items", timeout=5.0, allow_partial=True)
    for proxy in proxies:
        proxy.set(Fault.blackhole())
    with pytest.raises(QueryTimeoutError) as timed_out:
        await conn.execute("SELECT count(*) FROM items", timeout=0.5, allow_partial=True)
    assert set(timed_out.value.shards) == {"s0", "s1", "s2", "s3"}
    for proxy in proxies:
        proxy.heal()


async def test_routed_read_on_a_missing_shard(
    conn: shardq.AsyncConnection, proxies: list[Proxy]
) -> None:
    """A read pinned to one shard that cannot answer: nothing to be partial about."""
    key = ITEMS[10][0]
    shard = conn.shard_for("items", key)
    proxies[int(shard[1:])].set(Fault.reset())
    with pytest.raises(ShardError) as failed:
        await conn.execute(
            "SELECT val FROM items WHERE id = %s", [key], timeout=5.0, allow_partial=True
        )
    assert failed.value.shard == shard
    proxies[int(shard[1:])].heal()


async def test_writes_and_transactions_are_whole(conn: shardq.AsyncConnection) -> None:
    with pytest.raises(ProgrammingError, match="allow_partial is for reads"):
        await conn.execute("UPDATE writes SET note = 'x'", allow_partial=True)
    async with conn.transaction():
        with pytest.raises(ProgrammingError, match="allow_partial is for reads"):
            await conn.execute("SELECT count(*) FROM items", allow_partial=True)
    # The connection's allow_partial leaves writes and transactions as they are.
    conn.allow_partial = True
    cur = await conn.execute("DELETE FROM writes WHERE id < 0")
    assert cur.rowcount == 0
    async with conn.transaction():
        cur = await conn.execute("SELECT count(*) FROM items")
        assert await cur.fetchall() == [(len(ITEMS),)]


def test_sync_connection_partial(
    config: dict[str, Any], pg_dataset: list[PgCluster], proxies: list[Proxy]
) -> None:
    """The PEP 249 facade: the connection's allow_partial, the warning at the caller's line."""
    with shardq.connect(config, allow_partial=True) as conn:
        assert conn.allow_partial
        proxies[1].set(Fault.drop())
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            cur = conn.execute("SELECT id, grp, val FROM items ORDER BY id", timeout=5.0)
            rows = cur.fetchall()
        assert rows == _without(conn, "s1")
        assert cur.missing_shards == ("s1",)
        _partial_warning(caught, "s1")
        with warnings.catch_warnings():
            warnings.simplefilter("error", shardq.PartialResultWarning)
            with pytest.raises(shardq.PartialResultWarning):
                conn.cursor().execute("SELECT count(*) FROM items", timeout=5.0)
            with pytest.raises(shardq.Warning):  # also PEP 249's Warning
                conn.execute("SELECT count(*) FROM items", timeout=5.0)
        conn.allow_partial = False
        with pytest.raises(ShardError):
            conn.execute("SELECT count(*) FROM items", timeout=5.0)
        proxies[1].heal()
    _assert_no_sessions(pg_dataset)


async def test_sqlite_missing_file_left_out(tmp_path: Path) -> None:
    """SQLite: a shard file that cannot be opened is left out; a statement error is not."""
    paths = [tmp_path / f"s{i}.db" for i in range(3)]
    for path in paths[:2]:
        with sqlite3.connect(path) as db:
            db.executescript(SQLITE_SCHEMA)
        db.close()
    config = {
        "dialect": "sqlite",
        "shards": [{"name": f"s{i}", "dsn": str(p)} for i, p in enumerate(paths)],
        "tables": TABLES,
    }
    async with await shardq.connect_async(config) as conn:
        placed = [r for r in ITEMS if conn.shard_for("items", r[0]) != "s2"]
        for shard in ("s0", "s1"):
            with sqlite3.connect(paths[int(shard[1])]) as db:
                db.executemany(
                    "INSERT INTO items VALUES (?, ?, ?)",
                    [r for r in placed if conn.shard_for("items", r[0]) == shard],
                )
            db.close()
        rows, missing, caught = await _partial(conn, "SELECT id, grp, val FROM items ORDER BY id")
        assert rows == placed
        assert missing == ("s2",)
        _partial_warning(caught, "s2")
        with pytest.raises(ShardError):  # not partial: no such column, on every shard
            await conn.execute("SELECT nope FROM items", allow_partial=True)


async def test_cancelled_partial_read_releases_everything(
    config: dict[str, Any], pg_dataset: list[PgCluster], proxies: list[Proxy]
) -> None:
    """A partial read cancelled by its caller leaves no session (the missing shard's closed)."""
    conn = await shardq.connect_async(config, fetch_size=5, allow_partial=True)
    try:
        proxies[0].set(Fault.blackhole())
        task = asyncio.ensure_future(
            conn.execute("SELECT id, pg_sleep(0.01) FROM items", timeout=10.0)
        )
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        for proxy in proxies:
            proxy.heal()
        await conn.close()
    _assert_no_sessions(pg_dataset)


RUNS = int(os.environ.get("SHARDQ_PARTIAL_RUNS", "30"))


def _check_ordered(conn: shardq.AsyncConnection, rows: list[Any], missing: set[str]) -> None:
    """Every row of the shards that answered; of a missing one, its first rows at most."""
    ids = [row[0] for row in rows]
    assert ids == sorted(set(ids))
    assert {row[1] for row in rows} <= {"x" * 2000}
    by_shard: dict[str, list[int]] = {}
    for row in ITEMS:
        by_shard.setdefault(conn.shard_for("items", row[0]), []).append(row[0])
    got = set(ids)
    for shard, held in by_shard.items():
        kept = [i for i in held if i in got]
        if shard in missing:
            assert kept == held[: len(kept)], shard  # a prefix: what it sent before failing
        else:
            assert kept == held, shard


async def test_random_faults_partial(
    config: dict[str, Any], pg_dataset: list[PgCluster], proxies: list[Proxy]
) -> None:
    """Random faults, allow_partial: the answer is that of the shards that answered.

    ``SHARDQ_PARTIAL_RUNS`` runs (30 by default). A count is at least the
    count of the shards not missing and at most the total; streamed rows are
    those of the shards not missing, and a prefix of a missing shard's; the
    call ends within its timeout; a shard is missing only if it had a fault.
    """
    rng = random.Random(1616)
    outcomes = {"whole": 0, "partial": 0, "error": 0}
    count_sql = "SELECT count(*) FROM items"
    ordered_sql = "SELECT id, repeat('x', 2000) FROM items ORDER BY id"
    for _ in range(RUNS):
        conn = await shardq.connect_async(config, fetch_size=20, allow_partial=True)
        try:
            timeout = rng.choice([0.5, 1.0])
            if rng.random() < 0.5:
                await conn.execute(count_sql, timeout=5.0)  # faults on pooled connections
            faulted = set()
            for i, proxy in enumerate(proxies):
                if rng.random() < 0.4:
                    fault = rng.choice(FAULTS)(rng)
                    proxy.set(fault)
                    if fault.kind != "pass":
                        faulted.add(f"s{i}")
            sql = rng.choice([count_sql, ordered_sql])
            started = time.monotonic()
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    cur = await conn.execute(sql, timeout=timeout)
                    rows = [tuple(row) for row in await cur.fetchall()]
            except (QueryTimeoutError, ShardError) as exc:
                outcomes["error"] += 1  # every shard failed
                named = set(exc.shards) if isinstance(exc, QueryTimeoutError) else {exc.shard}
                assert named <= faulted
                assert len(faulted) == len(proxies) or faulted == named
            else:
                missing = set(cur.missing_shards)
                assert missing <= faulted
                outcomes["partial" if missing else "whole"] += 1
                warned = {s for w in caught for s in getattr(w.message, "shards", ())}
                assert warned == missing
                if sql == count_sql:
                    others = len(_without(conn, *missing))
                    assert others <= rows[0][0] <= len(ITEMS)
                    if not missing:
                        assert rows == [(len(ITEMS),)]
                else:
                    _check_ordered(conn, rows, missing)
            elapsed = time.monotonic() - started
            assert elapsed <= timeout * 1.1 + SLACK, (sql, timeout, faulted)
        finally:
            for proxy in proxies:
                proxy.heal()
            await conn.close()
    _assert_no_sessions(pg_dataset)
    print(f"{RUNS} partial runs: {outcomes}")
