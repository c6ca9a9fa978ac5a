"""Gather to one shard on SQLite shards: what it leaves behind (nothing), its limit, its EXPLAIN.

The SQLite twin of ``test_gather.py``. A gathered read holds one connection
of the chosen shard in a transaction with temporary tables, which exist for
that connection only: after success, an error of the statement, a timeout, a
cursor closed early or a task cancelled, every pooled connection must be idle
with no temporary table and no transaction, and every shard file free of
locks (a writer can take it at once). The answers themselves are compared
with one SQLite file in ``tests/differential/test_sqlite_edge.py``; here,
that they do not depend on the shard chosen (its own rows are copied inside
SQLite, the others' travel as Python values) and that the counts EXPLAIN
shows are the exact ones.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from typing import TYPE_CHECKING, Any

import pytest

import shardq
from tests.differential.sqlite_compare import same_answer
from tests.fixtures.sqlite_edge import TABLES, build

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from tests.fixtures.sqlite_edge import SqliteEdge

# A window over the whole table: no merge answers it, so it is gathered.
GATHERED = "SELECT id, grp, mixed, sum(qty) OVER (ORDER BY id) FROM ev"
# Many rows (25,600) from the gathered statement itself, to be stopped mid-stream.
LONG = "SELECT a.id, b.id, row_number() OVER (ORDER BY a.id, b.id) FROM ev a, ev b"
# Never ends by itself: an endless recursive CTE under the gathered window.
ENDLESS = (
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) "
    "SELECT e.id, count(*) OVER (ORDER BY e.grp) FROM ev e, c"
)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> SqliteEdge:
    """The edge dataset in files of this module's own (one test writes to them)."""
    return build(tmp_path_factory.mktemp("sqlite-gather"))


@pytest.fixture
async def conn(data: SqliteEdge) -> AsyncIterator[shardq.AsyncConnection]:
    connection = await shardq.connect_async(data.config, fetch_size=500)
    try:
        yield connection
    finally:
        await connection.close()


@pytest.fixture(scope="module")
def single(data: SqliteEdge) -> Iterator[sqlite3.Connection]:
    db = data.single_connection()
    yield db
    db.close()


def _counts(data: SqliteEdge, where: str = "") -> dict[str, int]:
    """Each shard's rows of ``ev`` (under ``where``), read from its file."""
    counts = {}
    for index, path in enumerate(data.shards):
        with sqlite3.connect(path) as db:
            counts[f"s{index}"] = db.execute(f"SELECT count(*) FROM ev {where}").fetchone()[0]
        db.close()
    return counts


async def _left_behind(conn: shardq.AsyncConnection, data: SqliteEdge) -> list[str]:
    """What a gather left: connections lent, temporary tables, transactions, locks."""
    found = []
    for name, pool in conn._engine.pools.items():
        lazy: Any = pool._pool  # type: ignore[attr-defined]
        if lazy.in_use:
            found.append(f"{name}: {lazy.in_use} connection(s) lent")
        for idle in list(lazy._idle):
            db = idle._conn

            def temp(db: sqlite3.Connection = db) -> list[Any]:
                return db.execute("SELECT name FROM sqlite_temp_master").fetchall()

            if tables := await idle.call(temp):
                found.append(f"{name}: temporary tables {tables}")
            if db.in_transaction:
                found.append(f"{name}: a connection in a transaction")
    for path in data.shards:
        # EXCLUSIVE waits for no reader: a shared lock still held fails it at once.
        db = sqlite3.connect(path, timeout=0, isolation_level=None)
        try:
            db.execute("BEGIN EXCLUSIVE")
            db.execute("ROLLBACK")
        except sqlite3.OperationalError as exc:
            found.append(f"{path.name}: {exc}")
        finally:
            db.close()
    return found


async def _assert_clean(conn: shardq.AsyncConnection, data: SqliteEdge) -> None:
    """Nothing left behind, polled to a deadline (a cancelled task ends in a moment)."""
    deadline = time.monotonic() + 5
    for _ in range(1000):
        left = await _left_behind(conn, data)
        if not left or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.02)
    assert left == []


async def _again(
    conn: shardq.AsyncConnection, data: SqliteEdge, single: sqlite3.Connection
) -> None:
    """The pools lend clean connections: the next gather answers as the single file does."""
    sql = GATHERED + " ORDER BY id"
    cur = await conn.execute(sql)
    assert await cur.fetchall() == single.execute(sql).fetchall()
    await _assert_clean(conn, data)


async def test_success_leaves_nothing(
    conn: shardq.AsyncConnection, data: SqliteEdge, single: sqlite3.Connection
) -> None:
    await _again(conn, data, single)
    await _again(conn, data, single)


async def test_an_error_of_the_statement_leaves_nothing(
    conn: shardq.AsyncConnection, data: SqliteEdge, single: sqlite3.Connection
) -> None:
    sql = "SELECT id, sum(big) OVER () FROM ev"
    with pytest.raises(sqlite3.OperationalError, match="integer overflow"):
        single.execute(sql).fetchall()
    with pytest.raises(shardq.OperationalError, match="integer overflow"):
        await (await conn.execute(sql)).fetchall()
    await _assert_clean(conn, data)
    await _again(conn, data, single)


async def test_a_timeout_leaves_nothing(
    conn: shardq.AsyncConnection, data: SqliteEdge, single: sqlite3.Connection
) -> None:
    began = time.monotonic()
    with pytest.raises(shardq.QueryTimeoutError):
        await (await conn.execute(ENDLESS, timeout=0.5)).fetchall()
    assert time.monotonic() - began < 3.0
    await _assert_clean(conn, data)
    await _again(conn, data, single)


async def test_a_cursor_closed_mid_stream_leaves_nothing(
    conn: shardq.AsyncConnection, data: SqliteEdge, single: sqlite3.Connection
) -> None:
    cur = await conn.execute(LONG)
    assert len(await cur.fetchmany(10)) == 10
    # Mid-stream the chosen shard's connection is lent, in its transaction, and holds
    # its file's shared lock: what the checks look for is there.
    during = await _left_behind(conn, data)
    assert any("lent" in found for found in during), during
    assert any("locked" in found for found in during), during
    await cur.close()
    await _assert_clean(conn, data)
    await _again(conn, data, single)


async def test_a_task_cancelled_mid_stream_leaves_nothing(
    conn: shardq.AsyncConnection, data: SqliteEdge, single: sqlite3.Connection
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
    await _assert_clean(conn, data)
    await _again(conn, data, single)


async def test_a_task_cancelled_while_rows_move_leaves_nothing(
    conn: shardq.AsyncConnection, data: SqliteEdge, single: sqlite3.Connection
) -> None:
    # Cancelled at once: somewhere in the counts, the move or the statement.
    for delay in (0.0, 0.001, 0.003, 0.006, 0.01, 0.02):
        task = asyncio.create_task(conn.execute(LONG))
        await asyncio.sleep(delay)
        task.cancel()
        try:
            cur = await task
        except asyncio.CancelledError:
            pass
        else:
            await cur.close()
        await _assert_clean(conn, data)
    await _again(conn, data, single)


async def test_max_gather_rows_refuses_before_anything_moves(
    data: SqliteEdge, single: sqlite3.Connection
) -> None:
    counts = _counts(data)
    target = max(counts, key=lambda s: counts[s])
    moving = sum(counts.values()) - counts[target]  # counted, not estimated: exact
    conn = await shardq.connect_async({**data.config, "max_gather_rows": moving - 1})
    try:
        with pytest.raises(shardq.UnsupportedQueryError) as info:
            await conn.execute(GATHERED)
        message = str(info.value)
        assert f"gathering about {moving:,} rows to one shard" in message
        assert f"to shard {target}, which is more than max_gather_rows ({moving - 1:,})" in message
        await _assert_clean(conn, data)
        sql = GATHERED + " ORDER BY id"
        cur = await conn.execute(sql, max_gather_rows=moving)
        assert await cur.fetchall() == single.execute(sql).fetchall()
    finally:
        await conn.close()


async def test_explain_names_the_shard_the_pushdowns_and_the_rows_moved(
    conn: shardq.AsyncConnection, data: SqliteEdge
) -> None:
    sql = (
        "SELECT e.grp, f.tag, rank() OVER (PARTITION BY f.tag ORDER BY e.id) FROM ev e "
        "JOIN ev2 f ON f.seq = e.flag WHERE e.id > 40"
    )
    counts = _counts(data, "WHERE id > 40")
    text = await conn.explain(sql)
    assert "as no merge answers it exactly (" in text
    assert 'ev (SELECT "id", "grp", "flag" FROM ev AS e WHERE e.id > 40)' in text
    assert 'ev2 (SELECT "id", "seq", "tag" FROM ev2)' in text
    analyzed = await conn.explain(sql, analyze=True)
    chosen = analyzed.split("gathered to shard ", 1)[1].split()[0]
    assert counts[chosen] >= max(counts.values()) - 8  # (ev2's rows count too)
    moved = {line.split()[2]: line for line in analyzed.splitlines() if "rows moved" in line}
    assert list(moved) == ["ev", "ev2"]
    assert moved["ev"].endswith(
        f"ev {sum(counts.values()) - counts[chosen]} from the other shards, "
        f"{counts[chosen]} of its own"
    )
    await _assert_clean(conn, data)


async def test_what_a_gather_does_not_do_is_refused(conn: shardq.AsyncConnection) -> None:
    async with conn.transaction():
        with pytest.raises(shardq.UnsupportedQueryError, match="in a transaction"):
            await conn.execute(GATHERED)
    with pytest.raises(shardq.UnsupportedQueryError, match="named with its schema"):
        await conn.execute("SELECT id, rank() OVER (ORDER BY grp) FROM main.ev")
    # The temporary table's rowid numbers rows as they arrived, not as the table does.
    with pytest.raises(shardq.UnsupportedQueryError, match="the rowid of a gathered table"):
        await conn.execute("SELECT rowid, rank() OVER (ORDER BY grp) FROM ev")


async def test_a_gather_in_a_batch(
    conn: shardq.AsyncConnection, single: sqlite3.Connection, data: SqliteEdge
) -> None:
    sqls = [GATHERED + " ORDER BY id", "SELECT count(*) FROM ev"] * 2
    results = await conn.gather(sqls, concurrency=4)
    for sql, result in zip(sqls, results, strict=True):
        assert result.rows == single.execute(sql).fetchall(), sql
    await _assert_clean(conn, data)


@pytest.mark.parametrize("target", ["s0", "s1", "s2", "s3"])
def test_the_answer_does_not_depend_on_the_shard_chosen(
    data: SqliteEdge, single: sqlite3.Connection, target: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The chosen shard copies its own rows inside SQLite; the others' arrive as Python
    # values: both must keep each value's storage class, affinity and collation.
    from shardq import engine

    def choose(counts: dict[str, list[int]]) -> tuple[str, int]:
        return target, sum(sum(c) for s, c in counts.items() if s != target)

    monkeypatch.setattr(engine, "choose", choose)
    with shardq.connect(data.config) as conn:
        for sql in [
            "SELECT *, typeof(grp), typeof(amount), typeof(mixed), "
            "rank() OVER (ORDER BY mixed, id) FROM ev ORDER BY id",
            "SELECT id, note, count(*) OVER (PARTITION BY note) FROM ev ORDER BY id",
            "SELECT e.id, f.id, f.seq FROM ev e JOIN ev2 f ON f.tag = e.name ORDER BY 1, 2, 3",
        ]:
            cur = conn.execute(sql)
            assert cur.shards == (target,)
            same_answer(conn, single, sql, ordered=True)


def test_a_write_while_a_gathered_result_is_read(data: SqliteEdge) -> None:
    # The gather's transaction holds the chosen file's shared lock: a write there must
    # not wait it out (busy_timeout) and fail; the result is read into memory first.
    counts = _counts(data)
    target = max(counts, key=lambda s: counts[s])
    with shardq.connect(data.config, fetch_size=100) as conn:
        key = next(k for k in range(5000, 6000) if conn.shard_for("ev2", k) == target)
        cur = conn.execute(LONG)
        assert cur.shards == (target,)
        first = cur.fetchmany(10)
        began = time.monotonic()
        conn.execute("INSERT INTO ev2 (id, seq, tag) VALUES (?, 0, 'w')", [key])
        assert time.monotonic() - began < 2
        assert len(first) + len(cur.fetchall()) == 160 * 160
        conn.execute("DELETE FROM ev2 WHERE id = ?", [key])


def test_pep249_sqlite_connections_gather_and_keep_nothing(
    data: SqliteEdge, single: sqlite3.Connection
) -> None:
    # A user's sqlite3 connections, opening their transactions themselves (sqlite3's
    # default): the temporary tables, made outside a transaction, are dropped after.
    mine = [sqlite3.connect(p, check_same_thread=False) for p in data.shards]
    try:
        with shardq.from_connections(mine, tables=TABLES) as conn:
            for sql in [GATHERED + " ORDER BY id", LONG + " ORDER BY 1, 2 LIMIT 50"]:
                assert conn.execute(sql).fetchall() == single.execute(sql).fetchall()
        for db in mine:
            assert db.execute("SELECT name FROM sqlite_temp_master").fetchall() == []
            assert not db.in_transaction
    finally:
        for db in mine:
            db.close()
