"""Batches observed on real PostgreSQL servers: bounds, cancellation, ordering, memory.

Each bound is checked on the servers (``pg_stat_activity``), not inferred
from timings.
"""

from __future__ import annotations

import asyncio
import datetime
import decimal
import random
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any

import psycopg
import pytest

import shardq
from shardq.execute.driver import Outcome, Statement
from shardq.execute.drivers import pgpipeline
from tests.fixtures.shards import PG_DATABASE, pg_config
from tests.integration.test_postgres import activity, one_key_per_shard, wait_until

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from tests.fixtures.servers import PgCluster

pytestmark = pytest.mark.postgres


def keys_on(conn: shardq.AsyncConnection | shardq.Connection, shard: str, count: int) -> list[int]:
    """``count`` keys of ``items`` (1..200) held by ``shard``."""
    keys = [k for k in range(1, 201) if conn.shard_for("items", k) == shard]
    return keys[:count]


class Watch:
    """Samples, in a thread, the active statements carrying ``marker`` on every cluster."""

    def __init__(self, clusters: list[PgCluster], marker: str, application: str | None = None):
        self.clusters = clusters
        self.marker = marker
        self.application = application
        self.most_active = 0
        self.most_sessions = [0] * len(clusters)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.most_active = max(
                self.most_active, sum(len(activity(c, self.marker)) for c in self.clusters)
            )
            if self.application is not None:
                for i, cluster in enumerate(self.clusters):
                    rows = cluster.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
                        "AND application_name = %s",
                        params=[PG_DATABASE, self.application],
                    )
                    self.most_sessions[i] = max(self.most_sessions[i], int(rows[0][0]))
            time.sleep(0.01)

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def config_with(clusters: list[PgCluster], application: str, **shard: Any) -> dict[str, Any]:
    config = pg_config(clusters, **shard)
    for entry in config["shards"]:
        entry["dsn"] += f"?application_name={application}"
    return config


async def test_results_keep_input_order_whatever_finishes_first(
    pg_dataset: list[PgCluster],
) -> None:
    async with shardq.AsyncConnection(pg_config(pg_dataset)) as conn:
        rng = random.Random(5)
        items = [
            (
                "SELECT id, pg_sleep(%s) IS NULL AS order_probe FROM items WHERE id = %s",
                [rng.choice([0, 0.01, 0.05, 0.1]), key],
            )
            for key in range(1, 61)
        ]
        results = await conn.execute_concurrent(items, concurrency=20)
        assert [r.result_or_exc.rows[0][0] for r in results] == list(range(1, 61))
        assert [r.result_or_exc.shards for r in results] == [
            (conn.shard_for("items", key),) for key in range(1, 61)
        ]


def most_overlapping(intervals: list[tuple[Any, Any]]) -> int:
    """The most intervals ``(start, end)`` running at one instant (end to start: not at once)."""
    edges = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    running = most = 0
    for _, step in edges:  # at one instant, ends (-1) sort before starts
        running += step
        most = max(most, running)
    return most


def test_concurrency_bound_is_never_exceeded_on_the_servers(pg_dataset: list[PgCluster]) -> None:
    # Each statement reports when the server began it and when its sleep ended
    # (every cluster runs on this machine's clock): how many ran at once is exact,
    # where sampling pg_stat_activity cluster after cluster could see one statement
    # ending on a cluster and the next starting on another as running together.
    with shardq.connect(pg_config(pg_dataset, pool_max_size=8)) as conn:
        keys = [k for shard in conn.config.shard_names for k in keys_on(conn, shard, 4)]
        items = [
            (
                "SELECT statement_timestamp(), clock_timestamp() "
                "FROM items, pg_sleep(0.3) WHERE id = %s",
                [k],
            )
            for k in keys
        ]
        results = conn.execute_concurrent(items, concurrency=3)
    assert all(r.success for r in results)
    intervals = [r.result_or_exc.rows[0] for r in results]
    assert all(end - start >= datetime.timedelta(seconds=0.3) for start, end in intervals)
    assert most_overlapping(intervals) <= 3
    assert most_overlapping(intervals) >= 2  # the statements did run concurrently


def test_each_shard_opens_at_most_its_pool_size(pg_dataset: list[PgCluster]) -> None:
    application = "shardq_pool_bound"
    with shardq.connect(config_with(pg_dataset, application, pool_max_size=2)) as conn:
        shard = conn.config.shard_names[1]
        keys = keys_on(conn, shard, 12)
        items = [
            ("SELECT id, pg_sleep(0.2) AS pool_probe FROM items WHERE id = %s", [k]) for k in keys
        ]
        with Watch(pg_dataset, "pool_probe", application) as watch:
            results = conn.execute_concurrent(items, concurrency=50)
        assert [r.result_or_exc.rows[0][0] for r in results] == keys
        assert watch.most_sessions[1] == 2  # reached, never exceeded
        assert watch.most_active <= 2


async def test_first_error_cancels_what_is_in_flight_on_the_servers(
    pg_dataset: list[PgCluster],
) -> None:
    async with shardq.AsyncConnection(pg_config(pg_dataset)) as conn:
        keys = one_key_per_shard(conn)
        sleepy = "SELECT id, pg_sleep(60) AS first_error_probe FROM items WHERE id = %s"
        items: list[Any] = [(sleepy, [k]) for k in keys[:3]]
        items.append(("SELECT 1 / (val - val) FROM items WHERE id = %s", [keys[3]]))
        items += [(sleepy, [k]) for k in keys]  # never started: the batch has stopped

        def sleeping() -> int:
            return sum(len(activity(c, "first_error_probe")) for c in pg_dataset)

        async def failing() -> AsyncIterator[Any]:
            # The failure comes once the sleeps are running on the servers.
            for item in items[:3]:
                yield item
            await asyncio.to_thread(wait_until, lambda: sleeping() == 3, "the three sleeps run")
            for item in items[3:]:
                yield item

        began = time.monotonic()
        with pytest.raises(shardq.DataError) as info:
            await conn.execute_concurrent(failing(), concurrency=10)
        assert time.monotonic() - began < 30
        assert info.value.shard == conn.shard_for("items", keys[3])
        assert "statement 3 of the batch" in "".join(info.value.__notes__)
        await asyncio.to_thread(wait_until, lambda: sleeping() == 0, "cancelled")
        # Without raise_on_first_error, every statement runs and the failure stays in place.
        quick = [(sleepy.replace("60", "0"), [k]) for k in keys]
        quick.insert(2, items[3])
        results = await conn.execute_concurrent(quick, raise_on_first_error=False)
        assert [r.success for r in results] == [True, True, False, True, True]


def test_statement_timeout_in_a_batch_cancels_on_the_server(pg_dataset: list[PgCluster]) -> None:
    with shardq.connect(pg_config(pg_dataset)) as conn:
        keys = one_key_per_shard(conn)
        # Slow statements on two shards, quick ones on the other two (statements
        # to one shard may share a pipeline, and so wait for each other).
        sql = "SELECT id, pg_sleep(%s) AS batch_timeout_probe FROM items WHERE id = %s"
        items = [(sql, [60 if i < 2 else 0, key]) for i, key in enumerate(keys)]
        results = conn.execute_concurrent(items, raise_on_first_error=False, timeout=0.5)
        assert [r.success for r in results] == [False, False, True, True]
        for outcome in results[:2]:
            assert isinstance(outcome.result_or_exc, shardq.QueryTimeoutError)
        for cluster in pg_dataset:
            wait_until(lambda c=cluster: not activity(c, "batch_timeout_probe"), "cancelled")


def test_generator_mode_holds_a_bounded_window(pg_dataset: list[PgCluster]) -> None:
    pulled = 0
    most_ahead = 0

    def statements(count: int) -> Iterator[tuple[str, list[int]]]:
        nonlocal pulled
        for i in range(count):
            pulled += 1
            yield ("SELECT val FROM items WHERE id = %s", [1 + i % 200])

    with shardq.connect(pg_config(pg_dataset)) as conn:
        results = conn.execute_concurrent(statements(5000), concurrency=50, results_generator=True)
        for taken, outcome in enumerate(results, start=1):
            # Statements started and not yet handed out: the window (2 x 50), plus one
            # chunk (50) crossing from the event loop, plus the one being started.
            most_ahead = max(most_ahead, pulled - taken)
            assert outcome.result_or_exc.rows == [((1 + (taken - 1) % 200) * 10,)]
        assert taken == 5000
    assert most_ahead <= 2 * 50 + 50 + 1


async def test_a_mixed_batch_loads_the_catalog_through_its_own_lanes(
    pg_dataset: list[PgCluster],
) -> None:
    # pool_max_size=1: the lanes hold every connection, and the grouped read
    # needs the catalog (read from the first shard) in the middle of the batch.
    async with shardq.AsyncConnection(pg_config(pg_dataset, pool_max_size=1)) as conn:
        lookups = [("SELECT val FROM items WHERE id = %s", [k]) for k in range(1, 101)]
        grouped = "SELECT grp, count(*) FROM items GROUP BY grp ORDER BY grp"
        results = await asyncio.wait_for(
            conn.execute_concurrent([*lookups[:50], grouped, *lookups[50:]]), timeout=60
        )
        assert results[50].result_or_exc.rows == [(f"g{i}", 40) for i in range(5)]
        assert [r.result_or_exc.rows for r in results[:50]] == [[(k * 10,)] for k in range(1, 51)]


@pytest.mark.parametrize("same_text", [True, False])
def test_a_failure_inside_a_pipeline_fails_that_statement_only(
    pg_dataset: list[PgCluster], same_text: bool
) -> None:
    # One connection to the shard: the lookups go as one pipeline, where the
    # server skips everything after a failure; those are sent again.
    with shardq.connect(pg_config(pg_dataset, pool_max_size=1)) as conn:
        keys = keys_on(conn, conn.config.shard_names[0], 30)
        items: list[Any] = []
        for i, key in enumerate(keys):
            divisor = 0 if i == 12 else 1
            sql = "SELECT val / %s FROM items WHERE id = %s"
            if not same_text and i % 2:
                sql = "SELECT val / %s AS other FROM items WHERE id = %s"
            items.append((sql, [divisor, key]))
        results = conn.execute_concurrent(items, raise_on_first_error=False)
        assert [r.success for r in results] == [i != 12 for i in range(30)]
        assert isinstance(results[12].result_or_exc, shardq.DataError)
        assert [r.result_or_exc.rows for r in results if r.success] == [
            [(key * 10,)] for i, key in enumerate(keys) if i != 12
        ]


# Values of many types, literal and bound, read back by a batch (libpq pipelines)
# and by a cursor: the same rows, the same description.
TYPED_SQL = (
    "SELECT id, val, 1::int2 AS i2, 2::int4 AS i4, 3::int8 AS i8, 1.50::numeric(5, 2) AS n, "
    "0.25::float8 AS f, 'x'::text AS t, 'ab'::varchar(5) AS vc, '\\x0001'::bytea AS b, "
    "true AS bo, DATE '2024-02-29' AS d, TIME '10:11:12' AS ti, "
    "TIMESTAMP '2024-01-01 10:00' AS ts, TIMESTAMPTZ '2024-01-01 10:00+02' AS tz, "
    "INTERVAL '1 year 2 days 3 hours' AS iv, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid AS u, "
    "'{\"k\": [1, null]}'::jsonb AS j, ARRAY[1, 2] AS arr, ARRAY['a', NULL] AS tarr, "
    "NULL::int AS nothing, %s AS p_num, %s AS p_date, %s AS p_bytes, %s AS p_uuid, "
    "%s AS p_text FROM items WHERE id = %s"
)


def typed_params(key: int) -> list[Any]:
    return [
        decimal.Decimal("2.5"),
        datetime.date(2024, 3, 1),
        b"\x00\xff",
        uuid.UUID(int=key),
        f"k{key} %% 'q'",
        key,
    ]


@pytest.mark.parametrize("form", ["execute_concurrent", "with_args"])
def test_pipelined_reads_return_what_a_cursor_returns(
    pg_dataset: list[PgCluster], form: str
) -> None:
    # One connection per shard: every shard's statements go as pipelines.
    with shardq.connect(pg_config(pg_dataset, pool_max_size=1)) as conn:
        keys = keys_on(conn, conn.config.shard_names[2], 40)
        params = [typed_params(k) for k in keys]
        if form == "with_args":  # prepared on the server
            results = conn.execute_concurrent_with_args(TYPED_SQL, params)
        else:
            results = conn.execute_concurrent([(TYPED_SQL, p) for p in params])
        for key, p, outcome in zip(keys, params, results, strict=True):
            cursor = conn.execute(TYPED_SQL, p)
            expected = cursor.fetchall()
            assert outcome.result_or_exc.rows == expected
            assert outcome.result_or_exc.description == cursor.description
            assert expected[0][0] == key
        assert all(r.result_or_exc.shards == (conn.config.shard_names[2],) for r in results)


def test_a_value_that_cannot_be_sent_fails_its_statement_only(pg_dataset: list[PgCluster]) -> None:
    with shardq.connect(pg_config(pg_dataset, pool_max_size=1)) as conn:
        keys = keys_on(conn, conn.config.shard_names[0], 10)
        sql = "SELECT val, %s AS extra FROM items WHERE id = %s"
        items: list[Any] = [(sql, [object() if i == 4 else i, k]) for i, k in enumerate(keys)]
        results = conn.execute_concurrent(items, raise_on_first_error=False)
        assert [r.success for r in results] == [i != 4 for i in range(10)]
        with pytest.raises(type(results[4].result_or_exc)):
            conn.execute(*items[4])
        assert [r.result_or_exc.rows for r in results if r.success] == [
            [(k * 10, i)] for i, k in enumerate(keys) if i != 4
        ]


async def test_a_pipeline_left_early_is_cancelled_and_its_connection_kept(
    pg_dataset: list[PgCluster],
) -> None:
    cluster = pg_dataset[0]
    async with await psycopg.AsyncConnection.connect(
        cluster.dsn(PG_DATABASE), autocommit=True
    ) as conn:
        pipeline = pgpipeline.Pipeline(conn)
        sleeping = [
            Statement("SELECT 1"),
            Statement("SELECT pg_sleep(60) AS left_early_probe"),
            Statement("SELECT 2"),
        ]
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.5):
                await pipeline.run(sleeping, prepare=False)
        await asyncio.to_thread(
            wait_until, lambda: not activity(cluster, "left_early_probe"), "cancelled"
        )
        assert not conn.closed
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        again = await pipeline.run([Statement("SELECT %s::int", (3,))], prepare=True)
        assert isinstance(again[0], Outcome)
        assert again[0].rows == [(3,)]


def test_without_libpq_pipelines_statements_run_one_by_one(
    pg_dataset: list[PgCluster], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pgpipeline, "AVAILABLE", False)
    with shardq.connect(pg_config(pg_dataset, pool_max_size=1)) as conn:
        keys = keys_on(conn, conn.config.shard_names[1], 20)
        items: list[Any] = [("SELECT val FROM items WHERE id = %s", [k]) for k in keys]
        items[7] = ("SELECT val / 0 FROM items WHERE id = %s", [keys[7]])
        results = conn.execute_concurrent(items, raise_on_first_error=False)
        assert [r.success for r in results] == [i != 7 for i in range(20)]
        assert isinstance(results[7].result_or_exc, shardq.DataError)
        assert [r.result_or_exc.rows for r in results if r.success] == [
            [(k * 10,)] for i, k in enumerate(keys) if i != 7
        ]


async def test_a_statement_run_often_is_prepared_as_psycopg_would(
    pg_dataset: list[PgCluster],
) -> None:
    async with await psycopg.AsyncConnection.connect(
        pg_dataset[0].dsn(PG_DATABASE), autocommit=True
    ) as conn:
        pipeline = pgpipeline.Pipeline(conn)

        async def prepared() -> list[str]:
            cursor = await conn.execute("SELECT statement FROM pg_prepared_statements")
            return [str(row[0]) for row in await cursor.fetchall()]

        lookup = "SELECT %s::int + 1 AS often"
        runs = [Statement(lookup, (i,)) for i in range(pgpipeline.PREPARE_THRESHOLD - 1)]
        outcomes = await pipeline.run(runs, prepare=False)
        assert [o.rows for o in outcomes if isinstance(o, Outcome)] == [
            [(i + 1,)] for i in range(len(runs))
        ]
        assert await prepared() == []
        once_more = await pipeline.run([Statement(lookup, (41,))], prepare=False)
        assert isinstance(once_more[0], Outcome)
        assert once_more[0].rows == [(42,)]
        assert await prepared() == ["SELECT $1::int + 1 AS often"]
        # prepare=True prepares at once (a batch of one statement with many parameter sets).
        await pipeline.run([Statement("SELECT %s::text AS at_once", ("x",))], prepare=True)
        assert "SELECT $1::text AS at_once" in await prepared()


async def test_a_prepare_cut_short_is_forgotten(pg_dataset: list[PgCluster]) -> None:
    # The prepare after the cancelled statement never ran: the next run of its
    # text must prepare it again, not use a name the server does not know.
    async with await psycopg.AsyncConnection.connect(
        pg_dataset[0].dsn(PG_DATABASE), autocommit=True
    ) as conn:
        pipeline = pgpipeline.Pipeline(conn)
        lookup = Statement("SELECT %s::int + 1 AS cut_short", (1,))
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await pipeline.run([Statement("SELECT pg_sleep(2)"), lookup], prepare=True)
        again = await pipeline.run([lookup], prepare=True)
        assert isinstance(again[0], Outcome)
        assert again[0].rows == [(2,)]


async def test_each_result_is_described_and_loaded_on_its_own(
    pg_dataset: list[PgCluster],
) -> None:
    async with await psycopg.AsyncConnection.connect(
        pg_dataset[0].dsn(PG_DATABASE), autocommit=True
    ) as conn:
        pipeline = pgpipeline.Pipeline(conn)
        # One text, parameters of three types: three column types, as a cursor says.
        values = [1, "a", 10**10]
        outcomes = await pipeline.run(
            [Statement("SELECT %s AS x", (v,)) for v in values], prepare=False
        )
        for value, outcome in zip(values, outcomes, strict=True):
            cursor = await conn.execute("SELECT %s AS x", (value,))
            assert isinstance(outcome, Outcome)
            assert outcome.description is not None
            assert outcome.description[0].type_code == cursor.description[0].type_code
            assert outcome.rows == [(value,)]
        # A value psycopg cannot load fails its own statement only.
        mixed = [
            Statement("SELECT 1"),
            Statement("SELECT 'infinity'::date"),
            Statement("SELECT 2"),
        ]
        first, bad, last = await pipeline.run(mixed, prepare=False)
        assert isinstance(bad, psycopg.DataError)
        assert isinstance(first, Outcome)
        assert first.rows == [(1,)]
        assert isinstance(last, Outcome)
        assert last.rows == [(2,)]


@pytest.mark.parametrize("size", [1, 7], ids=["single-row", "chunked"])
async def test_a_pipeline_after_a_stream_reads_one_result_per_statement(
    pg_dataset: list[PgCluster], size: int
) -> None:
    # libpq keeps a stream's row-by-row mode after the stream ends, and the
    # first statement queued in pipeline mode inherits it (issue 14).
    async with await psycopg.AsyncConnection.connect(
        pg_dataset[0].dsn(PG_DATABASE), autocommit=True
    ) as conn:
        cursor = conn.cursor()
        streamed = [row async for row in cursor.stream("SELECT generate_series(1, 9)", size=size)]
        assert streamed == [(i,) for i in range(1, 10)]
        pipeline = pgpipeline.Pipeline(conn)
        first, second = await pipeline.run(
            [Statement("SELECT generate_series(1, 3)"), Statement("SELECT 'x'")], prepare=False
        )
        assert isinstance(first, Outcome)
        assert first.rows == [(1,), (2,), (3,)]
        assert isinstance(second, Outcome)
        assert second.rows == [("x",)]
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


def test_a_batch_after_a_scattered_read_on_one_connection(pg_dataset: list[PgCluster]) -> None:
    # The report of issue 14: every shard's one connection has streamed the
    # count, then the batch's statement goes to one of them as a pipeline.
    with shardq.connect(pg_config(pg_dataset, pool_max_size=1)) as conn:
        assert conn.cursor().execute("SELECT count(*) FROM items").fetchall() == [(200,)]
        (one,) = conn.gather(["SELECT 1"])
        assert one.rows == [(1,)]
        lookups = conn.gather([("SELECT val FROM items WHERE id = %s", [k]) for k in (1, 2, 3)])
        assert [r.rows for r in lookups] == [[(10,)], [(20,)], [(30,)]]


async def test_a_pipeline_cancelled_before_its_first_result_keeps_its_connection(
    pg_dataset: list[PgCluster],
) -> None:
    # Cancelled at its first wait: neither the opening Sync's result nor the
    # statements' have been read. Both are drained and the connection kept.
    async with await psycopg.AsyncConnection.connect(
        pg_dataset[0].dsn(PG_DATABASE), autocommit=True
    ) as conn:
        pipeline = pgpipeline.Pipeline(conn)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0):
                await pipeline.run([Statement("SELECT 1"), Statement("SELECT 2")], prepare=False)
        assert not conn.closed
        assert conn.pgconn.pipeline_status == psycopg.pq.PipelineStatus.OFF
        again = await pipeline.run([Statement("SELECT 3")], prepare=False)
        assert isinstance(again[0], Outcome)
        assert again[0].rows == [(3,)]
