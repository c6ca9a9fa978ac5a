"""Batches observed on real PostgreSQL servers: bounds, cancellation, ordering, memory.

Each bound is checked on the servers (``pg_stat_activity``), not inferred
from timings.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from typing import TYPE_CHECKING, Any

import pytest

import shardq
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


def test_concurrency_bound_is_never_exceeded_on_the_servers(pg_dataset: list[PgCluster]) -> None:
    with shardq.connect(pg_config(pg_dataset, pool_max_size=8)) as conn:
        keys = [k for shard in conn.config.shard_names for k in keys_on(conn, shard, 4)]
        items = [
            ("SELECT id, pg_sleep(0.3) AS bound_probe FROM items WHERE id = %s", [k]) for k in keys
        ]
        with Watch(pg_dataset, "bound_probe") as watch:
            results = conn.execute_concurrent(items, concurrency=3)
        assert all(r.success for r in results)
        assert watch.most_active <= 3
        assert watch.most_active >= 2  # the statements did run concurrently


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
