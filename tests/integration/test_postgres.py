"""Behaviour observed on real PostgreSQL servers: concurrency, cancellation, failures, leaks.

Each claim is checked on the servers themselves (``pg_stat_activity``), not
inferred from timings.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time
import traceback
import tracemalloc
from typing import TYPE_CHECKING, Any

import psycopg
import pytest

import shardq
from tests.fixtures.shards import PG_DATABASE, TABLES, pg_config

if TYPE_CHECKING:
    from tests.fixtures.servers import PgCluster

pytestmark = pytest.mark.postgres

DEADLINE = 20.0


def one_key_per_shard(conn: shardq.Connection | shardq.AsyncConnection) -> list[int]:
    """The smallest ``items`` key held by each shard, in shard order."""
    keys: dict[str, int] = {}
    key = 1
    while len(keys) < len(conn.config.shards):
        keys.setdefault(conn.shard_for("items", key), key)
        key += 1
    return [keys[name] for name in conn.config.shard_names]


def activity(cluster: PgCluster, marker: str) -> list[tuple[Any, ...]]:
    """Active statements on ``cluster`` whose text contains ``marker``."""
    return cluster.execute(
        "SELECT pid, query_start FROM pg_stat_activity "
        "WHERE datname = %s AND state = 'active' AND query LIKE %s AND pid <> pg_backend_pid()",
        params=[PG_DATABASE, f"%{marker}%"],
    )


def sessions(cluster: PgCluster) -> int:
    rows = cluster.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
        params=[PG_DATABASE],
    )
    return int(rows[0][0])


def wait_until(predicate: Any, what: str, timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.02)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def sleep_sql(seconds: float, marker: str) -> str:
    # A filter-only read over the distributed table: one pg_sleep per matching row.
    return f"SELECT id, pg_sleep({seconds}) AS {marker} FROM items WHERE id IN (%s, %s, %s, %s)"


async def test_every_shard_runs_the_statement_at_the_same_moment(
    pg_dataset: list[PgCluster],
) -> None:
    async with shardq.AsyncConnection(pg_config(pg_dataset)) as conn:
        keys = one_key_per_shard(conn)
        task = asyncio.create_task(conn.execute(sleep_sql(1.5, "concurrency_probe"), keys))
        seen: list[list[tuple[Any, ...]]] = []

        def all_active() -> bool:
            seen[:] = [activity(c, "concurrency_probe") for c in pg_dataset]
            return all(seen)

        await asyncio.to_thread(wait_until, all_active, "all four shards run the statement")
        starts = [rows[0][1] for rows in seen]
        assert (max(starts) - min(starts)).total_seconds() < 0.5
        cur = await task
        assert sorted(r[0] for r in await cur.fetchall()) == sorted(keys)
        assert sorted(cur.shards) == sorted(conn.config.shard_names)


def test_timeout_cancels_the_statements_on_the_servers(pg_dataset: list[PgCluster]) -> None:
    with shardq.connect(pg_config(pg_dataset)) as conn:
        keys = one_key_per_shard(conn)
        began = time.monotonic()
        with pytest.raises(shardq.QueryTimeoutError) as info:
            conn.execute(sleep_sql(60, "timeout_probe"), keys, timeout=0.5)
        elapsed = time.monotonic() - began
        assert isinstance(info.value, TimeoutError | shardq.OperationalError)
        assert elapsed < 10, f"the timeout took {elapsed:.1f} s to be raised"
        assert info.value.timeout == 0.5
        # Nothing is left running on any server: the statements were cancelled there.
        for cluster in pg_dataset:
            wait_until(lambda c=cluster: not activity(c, "timeout_probe"), "cancelled")
        # And the connection is still usable.
        assert conn.execute("SELECT id FROM items WHERE id = %s", [keys[0]]).fetchall() == [
            (keys[0],)
        ]


async def test_cancelling_the_task_cancels_on_the_servers(pg_dataset: list[PgCluster]) -> None:
    async with shardq.AsyncConnection(pg_config(pg_dataset)) as conn:
        keys = one_key_per_shard(conn)
        task = asyncio.create_task(conn.execute(sleep_sql(60, "cancel_probe"), keys))
        await asyncio.to_thread(
            wait_until, lambda: all(activity(c, "cancel_probe") for c in pg_dataset), "running"
        )
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        for cluster in pg_dataset:
            await asyncio.to_thread(
                wait_until, lambda c=cluster: not activity(c, "cancel_probe"), "cancelled"
            )


async def test_a_closed_connection_raises_the_shards_error(pg_dataset: list[PgCluster]) -> None:
    async with shardq.AsyncConnection(pg_config(pg_dataset)) as conn:
        pool = conn._engine.pools["s1"]
        async with pool.connection() as lent:
            await lent.conn.close()  # type: ignore[attr-defined]
            with pytest.raises(shardq.OperationalError, match="shard 's1'") as caught:
                await lent.execute("SELECT 1", None, fetch_size=10, stream=False)
            assert isinstance(caught.value, shardq.ShardError)
        # The pool dropped it: the next statement gets a working connection.
        assert await (await conn.execute("SELECT count(*) FROM items")).fetchall() == [(200,)]


def test_a_shard_down_fails_fast_and_names_the_shard(pg_dataset: list[PgCluster]) -> None:
    config = pg_config(pg_dataset)
    down = config["shards"][2]
    down["dsn"] = f"postgresql://shardq:{pg_dataset[2].password}@127.0.0.1:{closed_port()}/x"
    with shardq.connect(config) as conn:
        keys = one_key_per_shard(conn)
        began = time.monotonic()
        with pytest.raises(shardq.ShardError) as info:
            conn.execute(sleep_sql(30, "failfast_probe"), keys)
        assert time.monotonic() - began < 10
        assert info.value.shard == "s2"
        assert isinstance(info.value, shardq.OperationalError)
        assert "s2" in str(info.value)
        assert info.value.__cause__ is not None
        # The other shards' statements were cancelled, not left to run for 30 s.
        for cluster in pg_dataset:
            wait_until(lambda c=cluster: not activity(c, "failfast_probe"), "cancelled")


def test_no_connection_leaks_whatever_fails(pg_dataset: list[PgCluster]) -> None:
    before = [sessions(c) for c in pg_dataset]
    config = pg_config(pg_dataset, pool_max_size=2)
    with shardq.connect(config) as conn:
        keys = one_key_per_shard(conn)
        for _ in range(5):
            with pytest.raises(shardq.QueryTimeoutError):
                conn.execute(sleep_sql(30, "leak_probe"), keys, timeout=0.2)
            with pytest.raises(shardq.ShardError):
                conn.execute("SELECT 1 / (id - id) FROM items WHERE val > 0")
            cur = conn.execute("SELECT id FROM items WHERE val > 0")
            cur.fetchone()
            cur.close()  # abandoned mid-result
            assert len(conn.execute("SELECT id FROM items WHERE val > 0").fetchall()) == 200
        # The pools never hold more than their size, whatever happened.
        for cluster, base in zip(pg_dataset, before, strict=True):
            assert sessions(cluster) - base <= 2
    # Closing the connection closes every session it opened.
    for cluster, base in zip(pg_dataset, before, strict=True):
        wait_until(lambda c=cluster, b=base: sessions(c) <= b, "sessions closed")


def test_streaming_keeps_memory_bounded(pg_dataset: list[PgCluster]) -> None:
    # 400,000 rows of about 100 bytes: ~40 MB if held at once.
    sql = "SELECT g, repeat('x', 100) FROM generate_series(1, 400000) AS g"
    with shardq.connect(pg_config(pg_dataset), fetch_size=1000) as conn:
        cur = conn.execute(sql)
        tracemalloc.start()
        try:
            count = sum(1 for _ in cur)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert count == 400_000
    assert peak < 8_000_000, f"peak {peak / 1e6:.1f} MB while iterating"


@pytest.mark.parametrize("whole_chunks", [True, False], ids=["whole chunks", "row by row"])
def test_both_ways_of_streaming_read_the_same_rows(
    pg_dataset: list[PgCluster], monkeypatch: pytest.MonkeyPatch, whole_chunks: bool
) -> None:
    from shardq.execute.drivers import postgres

    monkeypatch.setattr(postgres, "_WHOLE_CHUNKS", whole_chunks and postgres._WHOLE_CHUNKS)
    with shardq.connect(pg_config(pg_dataset), fetch_size=7) as conn:
        # Exactly two chunks, a short last one, an empty result, and a merge.
        for n in (14, 15, 0):
            sql = f"SELECT g FROM generate_series(1, {n}) AS g WHERE g > 0"
            assert conn.execute(sql).fetchall() == [(g,) for g in range(1, n + 1)]
        cur = conn.execute("SELECT id FROM items ORDER BY id DESC LIMIT 20")
        assert cur.fetchall() == [(i,) for i in range(200, 180, -1)]
        # Stopping early cancels the statements, and the connections work on.
        cur = conn.execute("SELECT g FROM generate_series(1, 100000) AS g")
        assert len(cur.fetchmany(10)) == 10
        cur.close()
        assert conn.execute("SELECT count(*) FROM items").fetchall() == [(200,)]


def test_credentials_never_appear_in_errors_logs_or_reprs(
    pg_dataset: list[PgCluster], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = pg_dataset[0].password
    wrong = "definitely-wrong-pw-1234"
    config = pg_config(pg_dataset)
    config["shards"][1]["dsn"] = (
        pg_dataset[1].dsn(PG_DATABASE).replace(pg_dataset[1].password, wrong)
    )
    messages: list[str] = []
    with shardq.connect(config) as conn:
        messages += [repr(conn), repr(conn.config), repr(conn.config.shards)]
        with pytest.raises(shardq.ShardError) as info:
            conn.execute("SELECT id FROM items WHERE val > 0")
        assert info.value.shard == "s1"
        assert "password authentication failed" in str(info.value)
        chain: BaseException | None = info.value
        while chain is not None:
            messages.append(str(chain))
            chain = chain.__cause__ or chain.__context__
        messages.append("".join(traceback.format_exception(info.value)))
    # A password the client itself rejects ends up in the driver's own message.
    odd = pg_config(pg_dataset)
    odd["shards"][0]["dsn"] = f"postgresql://shardq:S3cr%zzet{secret}@127.0.0.1:1/x"
    with shardq.connect(odd) as conn, pytest.raises(shardq.ShardError) as odd_info:
        conn.execute("SELECT id FROM items WHERE id = %s", [2])
    messages.append("".join(traceback.format_exception(odd_info.value)))
    bad = pg_config(pg_dataset)
    bad["shards"][0]["dsn"] = f"postgresql://shardq:{secret}@127.0.0.1:notaport/x"
    with pytest.raises(shardq.ConfigError) as cfg_info:
        shardq.connect(bad)
    messages.append(str(cfg_info.value))
    messages += [record.getMessage() for record in caplog.records]
    for text in messages:
        for password in (secret, wrong, pg_dataset[1].password):
            assert password not in text, text


def test_sessions_open_lazily_and_pool_min_size_warms_up(pg_dataset: list[PgCluster]) -> None:
    before = [sessions(c) for c in pg_dataset]
    conn = shardq.connect(pg_config(pg_dataset, pool_min_size=2, pool_max_size=3))
    try:
        assert [sessions(c) for c in pg_dataset] == before  # nothing opened yet
        conn.execute("SELECT id FROM items WHERE val > 0").fetchall()
        assert all(sessions(c) - b == 2 for c, b in zip(pg_dataset, before, strict=True)), (
            "pool_min_size connections are opened together on first use"
        )
    finally:
        conn.close()


def test_check_reports_versions_and_table_differences(pg_dataset: list[PgCluster]) -> None:
    with shardq.connect(pg_config(pg_dataset)) as conn:
        report = conn.check()
        assert report.ok, report.problems
        assert all(s.version and s.version.startswith("PostgreSQL") for s in report.shards)
        pg_dataset[3].execute("ALTER TABLE kinds ADD COLUMN extra int", PG_DATABASE)
        try:
            report = conn.check()
        finally:
            pg_dataset[3].execute("ALTER TABLE kinds DROP COLUMN extra", PG_DATABASE)
        assert not report.ok
        assert any("kinds" in p and "s3" in p for p in report.problems)


def test_sync_facade_interrupt_cancels_on_the_server(pg_dataset: list[PgCluster]) -> None:
    """A blocking call interrupted (as by Ctrl-C) cancels its statements on the servers."""
    with shardq.connect(pg_config(pg_dataset)) as conn:
        keys = one_key_per_shard(conn)
        errors: list[BaseException] = []

        def run() -> None:
            try:
                conn.execute(sleep_sql(60, "interrupt_probe"), keys)
            except BaseException as exc:
                errors.append(exc)

        # Simulate Ctrl-C in the blocked thread: the portal cancels the call's
        # task (once, as Portal.call does), and the cancellation flows down.
        thread = threading.Thread(target=run)
        thread.start()
        wait_until(lambda: all(activity(c, "interrupt_probe") for c in pg_dataset), "running")
        loop = conn._portal._loop
        (task,) = [
            t
            for t in asyncio.all_tasks(loop)
            if t.get_coro().__qualname__.endswith("Portal.call.<locals>.run")  # type: ignore[union-attr]
        ]
        loop.call_soon_threadsafe(task.cancel)
        thread.join(DEADLINE)
        assert errors
        assert isinstance(errors[0], BaseException)
        for cluster in pg_dataset:
            wait_until(lambda c=cluster: not activity(c, "interrupt_probe"), "cancelled")
        with contextlib.suppress(shardq.Error):
            conn.execute("SELECT 1").fetchall()


def test_adapter_over_psycopg2_shares_the_tables_config(pg_dataset: list[PgCluster]) -> None:
    import psycopg2

    conns = [psycopg2.connect(c.dsn(PG_DATABASE)) for c in pg_dataset]
    try:
        with shardq.from_connections(conns, tables=TABLES) as conn:
            assert len(conn.execute("SELECT id FROM items WHERE val > 0").fetchall()) == 200
        # shardq does not close connections it did not open, and leaves no transaction open.
        assert all(not c.closed for c in conns)
        assert all(c.get_transaction_status() == 0 for c in conns)
    finally:
        for c in conns:
            c.close()


def test_adapter_over_psycopg2_dict_connections(pg_dataset: list[PgCluster]) -> None:
    # parallel-connection users pool RealDictCursor connections; rows must stay right.
    import psycopg2
    import psycopg2.extras

    conns = [
        psycopg2.connect(c.dsn(PG_DATABASE), connection_factory=psycopg2.extras.RealDictConnection)
        for c in pg_dataset
    ]
    try:
        with shardq.from_connections(conns, tables=TABLES, row_factory=shardq.dict_row) as conn:
            rows = conn.execute("SELECT id, grp FROM items WHERE id = %s", [12]).fetchall()
            assert rows == [{"id": 12, "grp": "g2"}]
    finally:
        for c in conns:
            c.close()


def test_abandoned_and_unread_results_give_their_connections_back(
    pg_dataset: list[PgCluster],
) -> None:
    import gc

    before = [sessions(c) for c in pg_dataset]
    conn = shardq.connect(pg_config(pg_dataset, pool_max_size=1), fetch_size=10)
    try:
        cur = conn.execute("SELECT id FROM items WHERE val > 0")
        assert cur.fetchone() is not None  # the rest is unread: connections are held
        del cur
        gc.collect()
        # With one connection per shard, this only runs once the dropped result let go.
        assert len(conn.execute("SELECT id FROM items WHERE val > 0", timeout=10).fetchall()) == 200
        held = conn.cursor()
        held.execute("SELECT id FROM items WHERE val > 0").fetchone()
    finally:
        conn.close()  # closes the unread result too
    for cluster, base in zip(pg_dataset, before, strict=True):
        wait_until(lambda c=cluster, b=base: sessions(c) <= b, "sessions closed")


def test_closing_from_another_thread_ends_a_blocked_call(pg_dataset: list[PgCluster]) -> None:
    conn = shardq.connect(pg_config(pg_dataset))
    keys = one_key_per_shard(conn)
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            conn.execute(sleep_sql(60, "close_probe"), keys)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    wait_until(lambda: all(activity(c, "close_probe") for c in pg_dataset), "running")
    conn.close()
    thread.join(DEADLINE)
    assert not thread.is_alive(), "the blocked call did not return after close()"
    assert outcome
    assert isinstance(outcome[0], shardq.InterfaceError)
    for cluster in pg_dataset:
        wait_until(lambda c=cluster: not activity(c, "close_probe"), "cancelled")


WORDS = ["apple", "Banana", "cherry", "Éclair", "zebra", "Zoë", "apple pie", "éa"]


@pytest.fixture(scope="module")
def icu_shards(pg_clusters: list[PgCluster]) -> dict[str, Any]:
    """Four shard databases whose default collation is ICU's linguistic en-US order."""
    name = "icu_text"
    config = {
        "dialect": "postgres",
        "shards": [{"name": f"s{i}", "dsn": c.dsn(name)} for i, c in enumerate(pg_clusters)],
        "tables": {"words": {"shard_key": "id"}},
    }
    placement = shardq.load_config(config).placement
    for i, cluster in enumerate(pg_clusters):
        cluster.drop_database(name)
        cluster.execute(
            f"CREATE DATABASE {name} TEMPLATE template0 LOCALE_PROVIDER icu "
            "ICU_LOCALE 'en-US' LOCALE 'C'"
        )
        cluster.execute("CREATE TABLE words (id integer PRIMARY KEY, w text)", name)
        for key, word in enumerate(WORDS):
            if placement.shard_for(key) == f"s{i}":
                cluster.execute("INSERT INTO words VALUES (%s, %s)", name, [key, word])
    return config


def test_text_is_not_merged_in_an_order_the_shards_do_not_use(icu_shards: dict[str, Any]) -> None:
    with shardq.connect(icu_shards) as conn:
        # The shards sort "apple" < "Banana" (linguistic); code point says "Banana" first.
        # The merge refuses, so the rows are gathered to one shard and ordered there,
        # as one database with the shards' collation orders them.
        for sql in ["SELECT w FROM words ORDER BY w", "SELECT max(w) FROM words",
                    "SELECT id, count(*) FROM words GROUP BY id ORDER BY min(w)"]:  # fmt: skip
            with psycopg.connect(icu_shards["shards"][0]["dsn"]) as one:
                one.execute(
                    "CREATE TEMP TABLE words AS SELECT * FROM unnest(%s::int[], %s::text[]) "
                    "AS v(id, w)",
                    [list(range(len(WORDS))), WORDS],
                )
                want = one.execute(sql).fetchall()
            assert conn.execute(sql).fetchall() == want
        assert conn.execute("SELECT w FROM words ORDER BY w LIMIT 1").fetchall() == [("apple",)]
        # Explicitly code-point order, and merges that compare no text, are exact.
        cur = conn.execute('SELECT w FROM words ORDER BY w COLLATE "C"')
        assert cur.fetchall() == [(w,) for w in sorted(WORDS)]
        assert conn.execute("SELECT count(*), min(id) FROM words").fetchall() == [(8, 0)]
        cur = conn.execute("SELECT id FROM words ORDER BY id DESC LIMIT 2")
        assert cur.fetchall() == [(7,), (6,)]


def test_stats_count_statements_errors_and_timeouts_per_shard(
    pg_dataset: list[PgCluster],
) -> None:
    with shardq.connect(pg_config(pg_dataset)) as conn:
        keys = one_key_per_shard(conn)
        for _ in range(5):
            conn.execute("SELECT count(*) FROM items").fetchall()
        with pytest.raises(shardq.ProgrammingError):
            conn.execute("SELECT no_such_column FROM items WHERE id = %s", [keys[1]])
        with pytest.raises(shardq.QueryTimeoutError):
            conn.execute(sleep_sql(5, "stats_probe"), keys, timeout=0.3).fetchall()
        by_shard = {h.shard: h for h in conn.stats()}
    assert sorted(by_shard) == ["s0", "s1", "s2", "s3"]
    assert all(h.host == "primary" for h in by_shard.values())
    failed = conn.shard_for("items", keys[1])
    assert by_shard[failed].errors == 1
    assert sum(h.errors for h in by_shard.values()) == 1
    assert all(h.timeouts == 1 for h in by_shard.values())
    assert all(h.statements == 7 - (h.shard != failed) for h in by_shard.values())
    assert all(h.p50 is not None and 0 < h.p50 < 5 for h in by_shard.values())


def test_log_records_carry_shard_host_and_statement_never_a_password(
    pg_dataset: list[PgCluster], caplog: pytest.LogCaptureFixture
) -> None:
    config = pg_config(pg_dataset)
    with caplog.at_level(logging.DEBUG, logger="shardq"), shardq.connect(config) as conn:
        keys = one_key_per_shard(conn)
        conn.execute("SELECT count(*) FROM items").fetchall()
        with pytest.raises(shardq.ProgrammingError):
            conn.execute("SELECT no_such_column FROM items WHERE id = %s", [keys[2]])
    records = [r for r in caplog.records if r.name == "shardq.engine"]
    started = [r for r in records if "started" in r.getMessage()]
    assert sorted(r.shard for r in started) == ["s0", "s1", "s2", "s3"]  # type: ignore[attr-defined]
    assert len({r.statement_id for r in started}) == 1  # type: ignore[attr-defined]
    (failed,) = [r for r in records if "failed" in r.getMessage()]
    assert failed.shard == conn.shard_for("items", keys[2])  # type: ignore[attr-defined]
    assert failed.host == "primary"  # type: ignore[attr-defined]
    assert failed.levelno == logging.INFO
    for cluster in pg_dataset:
        assert all(cluster.password not in r.getMessage() for r in caplog.records)
