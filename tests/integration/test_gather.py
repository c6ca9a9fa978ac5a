"""Gather to one shard: what it leaves behind (nothing), its limit and its EXPLAIN.

A gathered read holds one connection of the chosen shard in a transaction
with temporary tables: after success, an error of the statement, a timeout,
a cursor closed early or a task cancelled mid-stream, the servers must show
no temporary table and no session still in a transaction or running, and the
pool must lend a clean connection again (the next gather works). The servers
are asked directly (pg_stat_activity, pg_class), not shardq.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import time
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import psycopg
import pytest

import shardq
from shardq.execute.driver import read_whole
from tests.differential.compare import same_result
from tests.fixtures.edge import DATABASE

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from tests.fixtures.edge import Edge
    from tests.fixtures.servers import PgCluster

pytestmark = pytest.mark.postgres

APP = "shardq-gather"
# A window over the whole table: no merge answers it, so it is gathered.
GATHERED = "SELECT id, k, sum(k) OVER (ORDER BY k, id) FROM facts"
# Many rows from the gathered statement itself, to be stopped mid-stream.
LONG = (
    "SELECT f.id, g, row_number() OVER (ORDER BY f.id, g) FROM facts f, "
    "generate_series(1, 3000) AS g"
)


def _config(edge: Edge, **extra: Any) -> dict[str, Any]:
    shards = [
        {"name": s["name"], "dsn": f"{s['dsn']}?application_name={APP}"}
        for s in edge.config["shards"]
    ]
    return {**edge.config, "shards": shards, **extra}


def _left_behind(clusters: list[PgCluster]) -> list[tuple[Any, ...]]:
    """What shardq's sessions leave on the servers: busy sessions and temporary tables."""
    found: list[tuple[Any, ...]] = []
    for cluster in clusters:
        found += cluster.execute(
            "SELECT state, query FROM pg_stat_activity WHERE application_name = %s "
            "AND state <> 'idle'",
            DATABASE,
            [APP],
        )
        found += cluster.execute(
            "SELECT relname FROM pg_class WHERE relpersistence = 't' AND relkind = 'r'", DATABASE
        )
    return found


def _assert_clean(clusters: list[PgCluster]) -> None:
    """Nothing left behind, polled to a deadline (a cancel or close takes a moment)."""
    deadline = time.monotonic() + 5
    while (left := _left_behind(clusters)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert left == []


@pytest.fixture
async def conn(edge: Edge) -> AsyncIterator[shardq.AsyncConnection]:
    connection = await shardq.connect_async(_config(edge))
    try:
        yield connection
    finally:
        await connection.close()


async def _single(edge: Edge, sql: str) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in edge.single.execute(sql, DATABASE)]


async def _rows(
    conn: shardq.AsyncConnection, sql: str, timeout: float | None = None
) -> list[tuple[Any, ...]]:
    cur = await conn.execute(sql, timeout=timeout)
    return [tuple(r) for r in await cur.fetchall()]


async def _again(conn: shardq.AsyncConnection, edge: Edge) -> None:
    """The pools lend clean connections: the next gather answers as one database does."""
    cur = await conn.execute(GATHERED + " ORDER BY id")
    assert [tuple(r) for r in await cur.fetchall()] == await _single(
        edge, GATHERED + " ORDER BY id"
    )
    _assert_clean(edge.clusters)


async def test_success_leaves_nothing(conn: shardq.AsyncConnection, edge: Edge) -> None:
    await _again(conn, edge)
    await _again(conn, edge)


async def test_an_error_of_the_statement_leaves_nothing(
    conn: shardq.AsyncConnection, edge: Edge
) -> None:
    with pytest.raises(shardq.DataError, match="division by zero"):
        await _rows(
            conn, "SELECT string_agg(grp, ',' ORDER BY id), 1 / (count(*) - count(*)) FROM facts"
        )
    _assert_clean(edge.clusters)
    await _again(conn, edge)


async def test_a_timeout_leaves_nothing(conn: shardq.AsyncConnection, edge: Edge) -> None:
    began = time.monotonic()
    with pytest.raises(shardq.QueryTimeoutError):
        await _rows(conn, "SELECT pg_sleep(30), string_agg(grp, ',' ORDER BY id) FROM facts", 1.0)
    assert time.monotonic() - began < 3.0
    _assert_clean(edge.clusters)
    await _again(conn, edge)


async def test_a_cursor_closed_mid_stream_leaves_nothing(
    conn: shardq.AsyncConnection, edge: Edge
) -> None:
    cur = await conn.execute(LONG)
    assert len(await cur.fetchmany(10)) == 10
    # Mid-stream the chosen shard's session is in its transaction: what the
    # checks look for is there (its temporary table, uncommitted, is visible
    # to that session only; one left committed would show in pg_class).
    during = _left_behind(edge.clusters)
    assert any(row[0] in ("active", "idle in transaction") for row in during)
    await cur.close()
    _assert_clean(edge.clusters)
    await _again(conn, edge)


async def test_a_task_cancelled_mid_stream_leaves_nothing(
    conn: shardq.AsyncConnection, edge: Edge
) -> None:
    reading = asyncio.Event()

    async def read() -> None:
        cur = await conn.execute(LONG)
        async for _ in cur:
            reading.set()

    task = asyncio.create_task(read())
    await asyncio.wait_for(reading.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    _assert_clean(edge.clusters)
    await _again(conn, edge)


async def test_a_task_cancelled_while_rows_move_leaves_nothing(
    conn: shardq.AsyncConnection, edge: Edge
) -> None:
    # Cancelled at once: somewhere in the estimate, the move or the statement.
    for delay in (0.0, 0.01, 0.03, 0.06):
        task = asyncio.create_task(conn.execute(GATHERED))
        await asyncio.sleep(delay)
        task.cancel()
        try:
            cur = await task
        except asyncio.CancelledError:
            pass
        else:
            await cur.close()
        _assert_clean(edge.clusters)
    await _again(conn, edge)


async def test_max_gather_rows_refuses_before_anything_moves(edge: Edge) -> None:
    conn = await shardq.connect_async(_config(edge, max_gather_rows=5))
    try:
        with pytest.raises(shardq.UnsupportedQueryError, match=r"max_gather_rows \(5\)") as info:
            await conn.execute(GATHERED)
        assert "rows to one shard" in str(info.value)
        cur = await conn.execute(GATHERED + " ORDER BY id", max_gather_rows=10_000)
        assert len(await cur.fetchall()) == len(await _single(edge, GATHERED))
    finally:
        await conn.close()
    _assert_clean(edge.clusters)


TX_SCHEMA = """
DROP TABLE IF EXISTS gx, gxref;
CREATE TABLE gx (id integer PRIMARY KEY, g integer, v integer);
CREATE TABLE gxref (g integer PRIMARY KEY, name text);
INSERT INTO gxref VALUES (0, 'zero'), (1, 'one'), (2, 'two');
"""
# A window over every row, and a subquery correlated on a non-key column to a
# reference table: gathered, the reference table with it in a transaction.
TX_READ = (
    "SELECT id, g, v, rank() OVER (PARTITION BY g ORDER BY v, id) AS r, "
    "(SELECT name FROM gxref WHERE gxref.g = gx.g) AS name FROM gx ORDER BY id"
)
TX_WRITES = [
    "INSERT INTO gx VALUES (100, 1, 5), (101, 2, 0), (102, 0, 0)",
    "UPDATE gxref SET name = 'changed' WHERE g = 1",
    "DELETE FROM gx WHERE id = 3",
    "UPDATE gx SET v = v + 100 WHERE g = 2",
]
TX_MORE = "INSERT INTO gx SELECT g, g % 3, g % 5 FROM generate_series(200, 239) AS g"


@pytest.fixture
def tx_tables(edge: Edge) -> Iterator[dict[str, Any]]:
    for cluster in [*edge.clusters, edge.single]:
        cluster.execute(TX_SCHEMA, DATABASE)  # the reference table: every row everywhere
    edge.load("gx", [(i, i % 3, i * 7 % 11) for i in range(1, 41)])
    tables = {**edge.config["tables"], "gx": {"shard_key": "id"}, "gxref": {"reference": True}}
    yield _config(edge, tables=tables)
    for cluster in [*edge.clusters, edge.single]:
        cluster.execute("DROP TABLE IF EXISTS gx, gxref", DATABASE)


def _rotate_targets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Gather to s0, s1, s2, s3 in turn, whatever the estimates say."""
    from shardq import engine

    turn = itertools.cycle(["s0", "s1", "s2", "s3"])

    def choose(estimates: dict[str, list[int]]) -> tuple[str, int]:
        target = next(turn)
        return target, sum(sum(c) for s, c in estimates.items() if s != target)

    monkeypatch.setattr(engine, "choose", choose)


def _single_after(edge: Edge, writes: list[str], sql: str) -> list[tuple[Any, ...]]:
    """``sql``'s rows on the single node after ``writes``, in a transaction rolled back."""
    with psycopg.connect(edge.dsn) as single:
        for write in writes:
            single.execute(write)
        rows = [tuple(r) for r in single.execute(sql).fetchall()]
        single.rollback()
    return rows


async def test_a_gather_in_a_transaction_sees_its_writes_and_lets_it_commit(
    edge: Edge, tx_tables: dict[str, Any]
) -> None:
    async with shardq.AsyncConnection(tx_tables) as conn:
        assert "gathered to shard" in await conn.explain(TX_READ)
        async with conn.transaction():
            for write in TX_WRITES:
                await conn.execute(write)
            # Its own writes, to the distributed table and the reference table.
            assert await _rows(conn, TX_READ) == _single_after(edge, TX_WRITES, TX_READ)
            # Then a write on every shard: the commit prepares on each, the
            # gathered shard's too (no temporary table touched the transaction).
            await conn.execute(TX_MORE)
            after = [*TX_WRITES, TX_MORE]
            assert await _rows(conn, TX_READ) == _single_after(edge, after, TX_READ)
        assert await _rows(conn, TX_READ) == _single_after(edge, after, TX_READ)
        # Outside the transaction the same read gathers as before.
        sql = (
            "SELECT g, count(*), percentile_disc(0.5) WITHIN GROUP (ORDER BY v) FROM gx GROUP BY g"
        )
        assert sorted(await _rows(conn, sql)) == sorted(_single_after(edge, after, sql))
    _assert_clean(edge.clusters)


async def test_a_gather_failing_in_a_transaction_aborts_it(
    edge: Edge, tx_tables: dict[str, Any]
) -> None:
    async with shardq.AsyncConnection(tx_tables) as conn:
        # As on one database: the transaction is aborted, the next statement refused.
        with pytest.raises(shardq.InFailedTransactionError):  # noqa: PT012
            async with conn.transaction():
                await conn.execute("INSERT INTO gx VALUES (300, 1, 5)")
                with pytest.raises(shardq.DataError, match="division by zero"):
                    await conn.execute("SELECT id, sum(10 / (v - 5)) OVER (ORDER BY id) FROM gx")
                await conn.execute("SELECT count(*) FROM gx")
        # Rolled back: the write did not stay.
        assert await _rows(conn, "SELECT count(*) FROM gx WHERE id = 300") == [(0,)]
    _assert_clean(edge.clusters)


async def test_an_insert_from_a_gathered_read(edge: Edge, tx_tables: dict[str, Any]) -> None:
    # INSERT ... SELECT whose SELECT no merge answers: the rows are read by a
    # gather inside the write's transaction, then routed to their shards.
    insert = (
        "INSERT INTO gx SELECT id + 1000, g, rank() OVER (ORDER BY v, id) FROM gx WHERE id < 20"
    )
    check = "SELECT id, g, v FROM gx ORDER BY id"
    async with shardq.AsyncConnection(tx_tables) as conn:
        cur = await conn.execute(insert)
        assert cur.rowcount == 19
        assert await _rows(conn, check) == _single_after(edge, [insert], check)
    _assert_clean(edge.clusters)


def test_a_gather_through_the_dbapi_outside_autocommit(
    edge: Edge, tx_tables: dict[str, Any]
) -> None:
    with shardq.connect(tx_tables) as conn:
        conn.autocommit = False
        cur = conn.cursor()
        cur.execute(TX_WRITES[0])
        cur.execute(TX_READ)
        assert [tuple(r) for r in cur.fetchall()] == _single_after(edge, TX_WRITES[:1], TX_READ)
        conn.rollback()
        cur.execute(TX_READ)
        assert [tuple(r) for r in cur.fetchall()] == _single_after(edge, [], TX_READ)
        conn.rollback()
    _assert_clean(edge.clusters)


async def test_explain_names_the_shard_and_the_pushdown(
    conn: shardq.AsyncConnection, edge: Edge
) -> None:
    sql = (
        "SELECT f.grp, s.v, rank() OVER (PARTITION BY s.v ORDER BY f.id) FROM facts f "
        "JOIN sparse s ON s.v = f.k WHERE f.k > 3"
    )
    text = await conn.explain(sql)
    assert "gathered to shard s" in text
    assert "as no merge answers it exactly (" in text
    assert 'facts (SELECT "id", "grp", "k" FROM facts AS f WHERE f.k > 3)' in text
    assert 'sparse (SELECT "id", "v" FROM sparse)' in text
    analyzed = await conn.explain(sql, analyze=True)
    moved = [line for line in analyzed.splitlines() if "rows moved" in line]
    assert [line.split()[2] for line in moved] == ["facts", "sparse"]
    single = await _single(edge, "SELECT count(*) FROM facts WHERE k > 3")
    facts = [int(word) for word in moved[0].split() if word.isdigit()]
    assert sum(facts) == single[0][0]  # from the others + its own: every row the filter keeps


def test_sync_connection_gathers(edge: Edge) -> None:
    with shardq.connect(_config(edge)) as conn:
        same_result(conn, edge.dsn, "SELECT DISTINCT ON (grp) grp, id FROM facts ORDER BY grp, id")
    _assert_clean(edge.clusters)


async def test_gathers_in_a_batch(conn: shardq.AsyncConnection, edge: Edge) -> None:
    sqls = [
        GATHERED + " ORDER BY id",
        "SELECT count(*) FROM facts",
        "SELECT grp, string_agg(label, ',' ORDER BY id) FROM facts GROUP BY grp ORDER BY grp",
        "SELECT id, k FROM facts WHERE k > (SELECT percentile_cont(0.5) WITHIN GROUP "
        "(ORDER BY k) FROM facts) ORDER BY id",
    ] * 3
    results = await conn.gather(sqls, concurrency=6)
    for sql, result in zip(sqls, results, strict=True):
        assert [tuple(r) for r in result] == await _single(edge, sql), sql
    _assert_clean(edge.clusters)


async def test_concurrent_gathers_to_different_shards_do_not_wait_for_each_other(
    edge: Edge, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each gather holds a connection of its shard while it waits for one of
    # every other shard: with two connections a pool, twelve gathers to four
    # different shards would hold them all and wait for each other.
    _rotate_targets(monkeypatch)
    config = _config(edge)
    config["shards"] = [{**shard, "pool_max_size": 2} for shard in config["shards"]]
    sql = GATHERED + " ORDER BY id"
    async with shardq.AsyncConnection(config) as conn:
        answers = await asyncio.gather(*(_rows(conn, sql, timeout=60) for _ in range(12)))
    expected = await _single(edge, sql)
    assert all(answer == expected for answer in answers)
    _assert_clean(edge.clusters)


@pytest.mark.parametrize("target", ["s0", "s1", "s2", "s3"])
async def test_the_answer_does_not_depend_on_the_shard_chosen(
    conn: shardq.AsyncConnection, edge: Edge, target: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shardq import engine

    def choose(estimates: dict[str, list[int]]) -> tuple[str, int]:
        return target, sum(sum(c) for s, c in estimates.items() if s != target)

    monkeypatch.setattr(engine, "choose", choose)
    for sql in [
        "SELECT id, e FROM odd ORDER BY e, id",
        "SELECT max(e), min(e), string_agg(e::text, ',' ORDER BY e, id) FROM odd",
        "SELECT f.grp, s.v, rank() OVER (PARTITION BY s.v ORDER BY f.id) FROM facts f "
        "JOIN sparse s ON s.v = f.k ORDER BY 1, 2, 3",
    ]:
        assert await _rows(conn, sql) == await _single(edge, sql), sql


async def test_a_derived_table_that_needs_a_gather_gathers_the_whole_read(
    conn: shardq.AsyncConnection, edge: Edge
) -> None:
    # Run first, the ranking would be gathered, all its rows brought back to the
    # client and shipped out again: the whole read is gathered instead.
    sql = (
        "SELECT grp, id, r FROM (SELECT grp, id, rank() OVER (PARTITION BY grp "
        "ORDER BY k, id) AS r FROM facts WHERE k > 1) ranked WHERE r <= 2 ORDER BY grp, id"
    )
    text = await conn.explain(sql)
    assert text.startswith("Gathered query on s")
    assert "the whole read is gathered instead" in text
    assert 'facts (SELECT "id", "grp", "k" FROM facts WHERE k > 1)' in text
    assert await _rows(conn, sql) == await _single(edge, sql)
    # A subquery read as a value stays run first: the rest is distributed.
    scalar = (
        "SELECT id, k FROM facts WHERE k > (SELECT percentile_cont(0.5) WITHIN GROUP "
        "(ORDER BY k) FROM facts) ORDER BY id"
    )
    assert "subqueries run first (1)" in await conn.explain(scalar)
    assert await _rows(conn, scalar) == await _single(edge, scalar)
    _assert_clean(edge.clusters)


async def test_a_copy_failing_mid_stream_raises_and_leaves_the_connection_clean(
    conn: shardq.AsyncConnection,
) -> None:
    # The fast COPY reader (below psycopg's Copy) must report an error the
    # server sends after rows, and leave the connection ready for the next
    # statement; closed early, the COPY is cancelled and drained.
    pool = conn._engine.pools["s0"]
    failing = "COPY (SELECT 10 / (500 - g) FROM generate_series(1, 1000) AS g) TO STDOUT"
    async with pool.connection() as lent:
        received = bytearray()

        async def read_all() -> None:
            async for block in lent.copy_to(failing, 64):  # type: ignore[attr-defined]
                received.extend(block)

        with pytest.raises(shardq.DataError, match="division by zero") as info:
            await read_all()
        assert isinstance(info.value, shardq.ShardError)
        assert info.value.shard == "s0"
        assert received.count(b"\n") >= 400  # the rows before the error came
        outcome = await read_whole(lent, "SELECT 1", None, stream=False)
        assert outcome.rows == [(1,)]
        whole = bytearray()
        async for block in lent.copy_to(  # type: ignore[attr-defined]
            "COPY (SELECT g FROM generate_series(1, 5000) AS g) TO STDOUT", 1000
        ):
            whole += block
        assert whole == b"".join(b"%d\n" % g for g in range(1, 5001))
        blocks = lent.copy_to(  # type: ignore[attr-defined]
            "COPY (SELECT g FROM generate_series(1, 10000000) AS g) TO STDOUT", 1000
        )
        first = await blocks.__anext__()
        assert first.startswith(b"1\n2\n")
        await blocks.aclose()  # stopped early: cancelled on the server and drained
        outcome = await read_whole(lent, "SELECT 2", None, stream=False)
        assert outcome.rows == [(2,)]


async def test_gathered_tables_stay_in_memory(conn: shardq.AsyncConnection, edge: Edge) -> None:
    from shardq.execute.gather import TEMP_BUFFERS

    await _rows(conn, GATHERED)
    settings = []
    for shard in ("s0", "s1", "s2", "s3"):
        async with conn._engine.pools[shard].connection() as lent:
            outcome = await read_whole(lent, "SHOW temp_buffers", None, stream=False)
            settings.append(outcome.rows[0][0])
    assert TEMP_BUFFERS in settings  # the shard gathered to: for its session


async def test_a_session_that_used_temporary_tables_still_gathers(edge: Edge) -> None:
    # PostgreSQL refuses to change temp_buffers once a session has used a
    # temporary table: the gather keeps the session's limit and runs as well.
    async with shardq.AsyncConnection(_config(edge)) as conn:
        for shard in ("s0", "s1", "s2", "s3"):
            async with conn._engine.pools[shard].connection() as lent:
                for statement in (
                    "SET temp_buffers = '1MB'",
                    "CREATE TEMP TABLE scratch (x int)",
                    "INSERT INTO scratch VALUES (1)",
                    "DROP TABLE scratch",
                ):
                    await read_whole(lent, statement, None, stream=False)
        sql = GATHERED + " ORDER BY id"
        assert await _rows(conn, sql) == await _single(edge, sql)
        for shard in ("s0", "s1", "s2", "s3"):
            async with conn._engine.pools[shard].connection() as lent:
                outcome = await read_whole(lent, "SHOW temp_buffers", None, stream=False)
                assert outcome.rows == [("1MB",)]
    _assert_clean(edge.clusters)


async def test_arrays_and_composites_of_types_made_in_the_database(
    edge: Edge, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Binary COPY carries the OID of an array's elements and of a composite's
    # fields, and types made in a database get a different OID on each server
    # (a type made first on one shard shifts them): the receiving server
    # takes them (PostgreSQL 15 checks neither against its own), and the
    # gathered answer is the single node's.
    schema = """
        DROP TABLE IF EXISTS gxu; DROP TYPE IF EXISTS gxmood, gxpair, gxpad;
        CREATE TYPE gxmood AS ENUM ('sad', 'ok', 'happy');
        CREATE TYPE gxpair AS (a integer, b text, m gxmood);
        CREATE TABLE gxu (id integer PRIMARY KEY, ms gxmood[], pair gxpair, n numeric);
    """
    edge.clusters[0].execute("DROP TYPE IF EXISTS gxpad; CREATE TYPE gxpad AS ENUM ('x')", DATABASE)
    for cluster in [*edge.clusters, edge.single]:
        cluster.execute(
            schema.replace(
                "DROP TYPE IF EXISTS gxmood, gxpair, gxpad;", "DROP TYPE IF EXISTS gxmood, gxpair;"
            ),
            DATABASE,
        )
    moods = ["sad", "ok", "happy"]
    rows = [
        (
            i,
            "{" + ",".join(moods[(i + j) % 3] for j in range(i % 3)) + "}",
            f'({i % 4},"t {i}",{moods[i % 3]})',
            i / 8,
        )
        for i in range(1, 41)
    ]
    edge.load("gxu", rows)
    tables = {**edge.config["tables"], "gxu": {"shard_key": "id"}}
    sql = (
        "SELECT id, ms, pair, (pair).b, rank() OVER (PARTITION BY (pair).a ORDER BY n DESC, id) "
        "FROM gxu ORDER BY id"
    )
    oids = "SELECT 'gxmood[]'::regtype::oid, 'gxpair'::regtype::oid"
    assert edge.clusters[0].execute(oids, DATABASE) != edge.clusters[1].execute(oids, DATABASE)
    from shardq import engine

    def choose(estimates: dict[str, list[int]]) -> tuple[str, int]:  # s0: OIDs of its own
        return "s0", sum(sum(c) for s, c in estimates.items() if s != "s0")

    monkeypatch.setattr(engine, "choose", choose)
    try:
        async with shardq.AsyncConnection(_config(edge, tables=tables)) as conn:
            assert "gathered to shard s0" in await conn.explain(sql)
            assert await _rows(conn, sql) == await _single(edge, sql)
    finally:
        for cluster in [*edge.clusters, edge.single]:
            cluster.execute("DROP TABLE gxu; DROP TYPE gxmood, gxpair", DATABASE)
        edge.clusters[0].execute("DROP TYPE gxpad", DATABASE)
    _assert_clean(edge.clusters)


@pytest.mark.parametrize(
    ("where", "params"),
    [
        ("f.k > %s AND f.grp <> %s", [2, "apple"]),
        ("f.n >= %s AND f.n < %s", [Decimal("-1.5"), Decimal("2")]),
        ("f.f > %s", [0.1]),
        ("f.ts >= %(since)s", {"since": dt.datetime(2024, 4, 1, tzinfo=dt.UTC)}),
        ("f.k = %s OR f.k IS NULL", [None]),
        ("f.grp = %s", ["o'k"]),
        ("f.k IN (%s, %s) AND f.id - %s > 0", [1, 3, -5]),
    ],
)
async def test_a_parameterized_gather_moves_only_the_rows_it_keeps(
    conn: shardq.AsyncConnection, edge: Edge, where: str, params: Any
) -> None:
    sql = (
        f"SELECT f.id, f.grp, rank() OVER (PARTITION BY f.grp ORDER BY f.k, f.id) FROM facts f "
        f"WHERE {where} ORDER BY f.id"
    )
    text = await conn.explain(sql, params)
    assert "gathered to shard" in text
    pushdown = next(line for line in text.splitlines() if line.startswith("  facts ("))
    assert " WHERE " in pushdown, pushdown
    assert "%" not in pushdown, pushdown
    with psycopg.connect(edge.dsn) as single:
        expected = [tuple(r) for r in single.execute(sql, params).fetchall()]
    cur = await conn.execute(sql, params)
    assert [tuple(r) for r in await cur.fetchall()] == expected
    analyzed = await conn.explain(sql, params, analyze=True)
    moved = next(line for line in analyzed.splitlines() if "rows moved" in line)
    rows = sum(int(word) for word in moved.split() if word.isdigit())
    with psycopg.connect(edge.dsn) as single:
        kept = single.execute(f"SELECT count(*) FROM facts f WHERE {where}", params).fetchone()
    assert kept is not None
    assert rows == kept[0]  # no more than the statement keeps
    _assert_clean(edge.clusters)


async def test_a_gather_after_truncate_or_alter_in_the_transaction(
    edge: Edge, tx_tables: dict[str, Any]
) -> None:
    # The transaction holds gx locked: the estimate and the temporary table's
    # columns go through its connections, not sessions that would wait for it.
    writes = [
        "TRUNCATE gx",
        "ALTER TABLE gx ADD COLUMN w integer",
        "INSERT INTO gx VALUES (1, 0, 5, 7), (2, 1, 6, NULL), (3, 0, 4, 9), (4, 2, 1, 1)",
    ]
    sql = "SELECT *, rank() OVER (PARTITION BY g ORDER BY v, id) FROM gx ORDER BY id"
    async with shardq.AsyncConnection(tx_tables) as conn:
        with pytest.raises(_RollBack):  # noqa: PT012
            async with conn.transaction():
                for write in writes:
                    await conn.execute(write)
                assert await _rows(conn, sql, timeout=20) == _single_after(edge, writes, sql)
                raise _RollBack
        assert await _rows(conn, "SELECT count(*) FROM gx") == [(40,)]
    _assert_clean(edge.clusters)


class _RollBack(Exception):
    """Raised in a transaction's block to roll it back."""


async def test_a_gather_in_a_transaction_needs_two_connections(
    edge: Edge, tx_tables: dict[str, Any]
) -> None:
    config = {**tx_tables, "shards": [{**s, "pool_max_size": 1} for s in tx_tables["shards"]]}
    async with shardq.AsyncConnection(config) as conn, conn.transaction():
        with pytest.raises(shardq.UnsupportedQueryError, match="pool_max_size"):
            await conn.execute(TX_READ, timeout=20)
    _assert_clean(edge.clusters)


async def test_open_gathered_results_leave_later_gathers_free(
    edge: Edge, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A slot is held while the tables fill, not while the result is read.
    _rotate_targets(monkeypatch)
    config = _config(edge)
    config["shards"] = [{**shard, "pool_max_size": 2} for shard in config["shards"]]
    async with shardq.AsyncConnection(config) as conn:
        open_ = [await conn.execute(LONG) for _ in range(2)]  # to s0 and s1, unread
        sql = GATHERED + " ORDER BY id"
        assert await _rows(conn, sql, timeout=20) == await _single(edge, sql)
        for cursor in open_:
            await cursor.close()
    _assert_clean(edge.clusters)


async def test_a_slot_is_given_back_whatever_ends_the_gather(edge: Edge) -> None:
    # One slot (pools of one connection): a slot kept by any ending would
    # leave the last gather waiting until its timeout.
    config = _config(edge)
    config["shards"] = [{**shard, "pool_max_size": 1} for shard in config["shards"]]
    async with shardq.AsyncConnection(config) as conn:
        with pytest.raises(shardq.DataError):
            await conn.execute("SELECT id, sum(10 / (k - k)) OVER (ORDER BY id) FROM facts")
        with pytest.raises(shardq.QueryTimeoutError):
            await _rows(conn, LONG, timeout=0.3)
        task = asyncio.create_task(_rows(conn, LONG))
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        cur = await conn.execute(LONG)
        await cur.fetchmany(5)
        await cur.close()
        sql = GATHERED + " ORDER BY id"
        assert await _rows(conn, sql, timeout=20) == await _single(edge, sql)
    _assert_clean(edge.clusters)


async def test_a_derived_table_beside_another_distributed_table_runs_first(
    conn: shardq.AsyncConnection, edge: Edge
) -> None:
    # Gathered whole, notes would move too; run first, it stays on its shards.
    sql = (
        "SELECT n.fact_id, n.v, x.r FROM notes n JOIN (SELECT id, rank() OVER "
        "(ORDER BY k, id) AS r FROM facts) x ON x.id = n.fact_id ORDER BY 1, 2, 3"
    )
    assert "subqueries run first (1)" in await conn.explain(sql)
    assert await _rows(conn, sql) == await _single(edge, sql)
    _assert_clean(edge.clusters)


async def test_a_session_whose_tables_outgrew_the_default_buffers_is_closed(
    conn: shardq.AsyncConnection, edge: Edge, monkeypatch: pytest.MonkeyPatch
) -> None:
    # PostgreSQL keeps a session's temporary buffers until it ends.
    from shardq.execute import gather

    sql = "SELECT pg_backend_pid(), rank() OVER (ORDER BY k, id) FROM facts"

    def alive(pid: int) -> bool:
        return any(
            c.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", DATABASE, [pid])
            for c in edge.clusters
        )

    small = (await _rows(conn, sql))[0][0]  # a few kB: the session stays
    assert alive(small)
    monkeypatch.setattr(gather, "_DEFAULT_TEMP_BUFFERS", 0)
    large = (await _rows(conn, sql))[0][0]

    def gone(pid: int) -> bool:
        deadline = time.monotonic() + 5
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        return not alive(pid)

    assert await asyncio.to_thread(gone, large)
    assert await _rows(conn, GATHERED + " ORDER BY id") == await _single(
        edge, GATHERED + " ORDER BY id"
    )
    _assert_clean(edge.clusters)
