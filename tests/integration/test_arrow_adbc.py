"""The columnar path on PostgreSQL shards: ADBC reads, their deadline, cancellation and secrets.

A read ``read_arrow()`` takes straight into Arrow runs on ADBC's own
connections, in threads: these tests check that it behaves as the row path
does where the row path promises something: a timeout or a cancelled task
cancels the statement on the server (seen in ``pg_stat_activity``), the
connection reads again after it, a shard's error names the shard and never
the password, and bound parameters, transactions and caches keep the rows.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import psycopg
import pytest

import shardq
from shardq.config import load_config
from shardq.execute.arrowread import ArrowReader

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.fixtures.edge import Edge

pytestmark = pytest.mark.postgres

# No table: one shard runs it. generate_series materializes its rows before the first
# one is sent, so this runs for many seconds on the server with nothing received.
SLOW = "SELECT g FROM generate_series(1, {n}) AS g WHERE g > {n}"


@pytest.fixture(scope="module")
def conn(edge: Edge) -> Iterator[shardq.Connection]:
    with shardq.connect(edge.config) as connection:
        yield connection


def running(edge: Edge, marker: str) -> int:
    """How many backends of the shards run a statement containing ``marker``."""
    count = 0
    for shard in edge.config["shards"]:
        with psycopg.connect(shard["dsn"], autocommit=True) as db:
            row = db.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
                "AND query LIKE %s AND pid <> pg_backend_pid()",
                (f"%{marker}%",),
            ).fetchone()
            count += row[0] if row else 0
    return count


def gone(edge: Edge, marker: str, within: float = 5.0) -> bool:
    """Whether no shard runs ``marker`` any more, polled until ``within`` seconds pass."""
    deadline = time.monotonic() + within
    while running(edge, marker):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_a_timeout_cancels_the_read_on_the_server(conn: shardq.Connection, edge: Edge) -> None:
    conn.read_arrow("SELECT id FROM facts LIMIT 1")  # imports and connections: not timed
    began = time.monotonic()
    with pytest.raises(shardq.QueryTimeoutError) as late:
        conn.read_arrow(SLOW.format(n=400000001), timeout=0.5)
    assert time.monotonic() - began < 2.0
    assert late.value.timeout == 0.5
    assert gone(edge, "400000001")
    # The connection reads again, on the columnar path.
    table = conn.read_arrow("SELECT id FROM facts ORDER BY id LIMIT 3")
    assert conn.arrow_path == "adbc"
    assert table.column("id").to_pylist() == [1, 2, 3]


async def test_a_cancelled_task_cancels_the_read_on_the_server(edge: Edge) -> None:
    marker = "400000002"
    async with shardq.AsyncConnection(edge.config) as aconn:
        task = asyncio.create_task(aconn.read_arrow(SLOW.format(n=marker)))
        deadline = time.monotonic() + 10
        while not await asyncio.to_thread(running, edge, marker):
            assert time.monotonic() < deadline, "the read never started"
            await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await asyncio.to_thread(gone, edge, marker)
        table = await aconn.read_arrow("SELECT count(*) AS c, k FROM facts GROUP BY k")
        assert aconn.arrow_path == "adbc"
        assert sum(table.column("c").to_pylist()) > 100


def test_the_sessions_own_statement_timeout_is_kept(edge: Edge) -> None:
    # A statement_timeout the DSN sets is the session's, on both paths; a read with a
    # timeout of its own sets another for itself, and the next read has the session's again.
    options = "options=-c%20statement_timeout%3D300"
    shards = [{**s, "dsn": f"{s['dsn']}?{options}"} for s in edge.config["shards"]]
    slow = SLOW.format(n=400000003)
    with shardq.connect({**edge.config, "shards": shards}) as timed:
        with pytest.raises(shardq.OperationalError) as by_rows:
            timed.execute(slow).fetchall()
        for _ in range(2):
            began = time.monotonic()
            with pytest.raises(shardq.OperationalError) as by_adbc:
                timed.read_arrow(slow)
            assert time.monotonic() - began < 3.0  # the session's 0.3 s, not the 5 s set since
            assert type(by_adbc.value) is type(by_rows.value)
            assert by_adbc.value.sqlstate == by_rows.value.sqlstate == "57014"
            table = timed.read_arrow("SELECT id FROM facts WHERE id < 3", timeout=5)
            assert timed.arrow_path == "adbc"
            assert sorted(table.column("id").to_pylist()) == [1, 2]


def test_a_shards_error_names_it_without_the_password(edge: Edge) -> None:
    shards = [dict(s) for s in edge.config["shards"]]
    password = edge.clusters[1].password
    shards[1]["dsn"] = shards[1]["dsn"].replace(password, password + "-wrong")
    with shardq.connect({**edge.config, "shards": shards}) as wrong:
        with pytest.raises(shardq.ShardError) as failed:
            wrong.read_arrow("SELECT id FROM facts")
        assert failed.value.shard == "s1"
        for text in (str(failed.value), repr(failed.value), str(failed.value.__cause__)):
            assert password not in text
        reader = ArrowReader(load_config({**edge.config, "shards": shards}))
        assert password not in repr(reader)


def test_an_error_of_the_statement_is_the_databases(conn: shardq.Connection) -> None:
    with pytest.raises(shardq.ProgrammingError, match="no_such_column") as failed:
        conn.read_arrow("SELECT no_such_column FROM facts")
    assert failed.value.sqlstate == "42703"
    with pytest.raises(shardq.DataError) as by_rows:
        conn.execute("SELECT 1 / (id - id) AS x FROM facts").fetchall()
    with pytest.raises(shardq.DataError) as by_adbc:
        conn.read_arrow("SELECT 1 / (id - id) AS x FROM facts")
    assert by_adbc.value.sqlstate == by_rows.value.sqlstate == "22012"
    # PostgreSQL's words, as the row path gives them (ADBC's wrapping dropped).
    assert str(by_adbc.value).split(": ", 1)[1] == str(by_rows.value).split(": ", 1)[1]


def test_what_the_columnar_path_leaves_to_the_rows(edge: Edge, conn: shardq.Connection) -> None:
    same = conn.read_arrow("SELECT id FROM facts WHERE id < %s ORDER BY id", [5])
    assert (conn.arrow_path, conn.arrow_fallback) == ("rows", "bound parameters")
    assert same.column("id").to_pylist() == [1, 2, 3, 4]
    conn.read_arrow("SELECT DISTINCT k FROM facts")
    assert (conn.arrow_path, conn.arrow_fallback) == ("rows", "DISTINCT")
    conn.read_arrow("SELECT id, j FROM odd")
    assert conn.arrow_path == "rows"
    assert conn.arrow_fallback == "column 'j' of type jsonb"
    conn.read_arrow("SELECT id FROM facts", cache=False)
    assert conn.arrow_fallback == "the option(s) cache"
    with conn.transaction():
        conn.read_arrow("SELECT id FROM facts")
        assert conn.arrow_fallback == "a read in a transaction"
    conn.arrow_reads = "rows"
    try:
        conn.read_arrow("SELECT id FROM facts")
        assert conn.arrow_fallback == "arrow_reads is 'rows'"
    finally:
        conn.arrow_reads = "auto"


def test_a_cursor_reads_again_only_when_asked(conn: shardq.Connection) -> None:
    sql = "SELECT id, grp FROM facts ORDER BY id"
    cursor = conn.execute(sql)
    table = cursor.fetch_arrow_table()
    assert (cursor.arrow_path, cursor.arrow_fallback) == ("rows", "arrow_reads is 'auto'")
    conn.arrow_reads = "adbc"
    try:
        cursor = conn.execute(sql)
        again = cursor.fetch_arrow_table()
        assert (cursor.arrow_path, cursor.arrow_fallback) == ("adbc", None)
        assert again.equals(table)
        assert cursor.rowcount == table.num_rows
        cursor = conn.execute(sql)
        first = cursor.fetchone()
        rest = cursor.fetch_arrow_table()
        assert cursor.arrow_path == "rows"
        assert cursor.arrow_fallback == "rows were taken from the result before"
        assert [first[0], *rest.column("id").to_pylist()] == table.column("id").to_pylist()
    finally:
        conn.arrow_reads = "auto"


def test_setting_an_unknown_mode_is_refused(conn: shardq.Connection) -> None:
    with pytest.raises(ValueError, match="arrow_reads"):
        conn.arrow_reads = "fast"  # type: ignore[assignment]
