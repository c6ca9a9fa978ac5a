"""The columnar path where a review found it differing from one PostgreSQL or the row path.

Each test reads on the columnar path (``read_arrow()``, ADBC per shard,
merged on Arrow data) and checks the answer against the single node, or
the call's timing against its deadline as the row path keeps it:

- MIN and MAX of an unconstrained numeric keep the scale of the value they
  pick (PostgreSQL's ``min(1.5, 2.500)`` is ``1.5``), not the widest scale
  of the group's partial rows;
- a float compared after the merge (HAVING, a computed column) orders NaN
  as PostgreSQL does: equal to NaN and above every other number;
- a shard that stops answering (connections accepted, nothing sent back)
  fails the read at its deadline, with a connection already open or not,
  without blocking the event loop;
- a read waiting for one of a shard's ``pool_max_size`` ADBC connections
  still ends at its deadline.
"""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import psycopg
import pytest

import shardq
from tests.differential.test_arrow import rows_of, same_as_rows, single_table
from tests.fixtures.edge import DATABASE, TABLES
from tests.fixtures.proxy import Fault, ProxyLoop, proxied_config

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.fixtures.edge import Edge

pytestmark = pytest.mark.postgres

TABLE = "arrow_review"
SCHEMA = f"""
DROP TABLE IF EXISTS {TABLE};
CREATE TABLE {TABLE} (id integer PRIMARY KEY, g integer, u numeric, f float8);
"""


def _rows() -> list[tuple[Any, ...]]:
    """Groups of 8 rows on (most likely) several shards: in each, the least value has
    scale 1 and the greatest scale 0, the others scale 3; every group's float sum is NaN."""
    rows = []
    for g in range(6):
        values = [Decimal("1.5"), *(Decimal(f"{i}.250") for i in range(2, 8)), Decimal(9)]
        floats = [float("nan"), 1.0, -0.0, 2.0, 0.0, 3.0, 1.5, -1.0]
        for i, (u, f) in enumerate(zip(values, floats, strict=True)):
            rows.append((g * 8 + i + 1, g, u + g, f))
    return rows


@pytest.fixture(scope="module")
def review(edge: Edge) -> dict[str, Any]:
    """The edge configuration with the review's table, loaded on the shards and the single node."""
    config = {**edge.config, "tables": {**TABLES, TABLE: {"shard_key": "id"}}}
    placement = shardq.load_config(config).placement
    rows = _rows()
    for i, cluster in enumerate([*edge.clusters, edge.single]):
        cluster.execute(SCHEMA, DATABASE)
        single = i == len(edge.clusters)
        mine = [r for r in rows if single or placement.shard_for(r[0]) == f"s{i}"]
        with psycopg.connect(cluster.dsn(DATABASE), autocommit=True) as db:
            db.cursor().executemany(f"INSERT INTO {TABLE} VALUES (%s, %s, %s, %s)", mine)
    return config


@pytest.fixture(scope="module")
def conn(review: dict[str, Any]) -> Iterator[shardq.Connection]:
    with shardq.connect(review) as connection:
        yield connection


def columnar_is_single(conn: shardq.Connection, edge: Edge, sql: str) -> None:
    """``sql`` on the columnar path: the single node's schema and rows."""
    got = conn.read_arrow(sql)
    assert (conn.arrow_path, conn.arrow_fallback) == ("adbc", None), sql
    want = single_table(edge.dsn, sql)
    assert got.schema == want.schema.remove_metadata(), sql
    same_as_rows(got, [tuple(r) for r in rows_of(want)], ordered="ORDER BY" in sql)


@pytest.mark.parametrize(
    "sql",
    [
        f"SELECT min(u), max(u) FROM {TABLE}",
        f"SELECT g, min(u), max(u), sum(u) FROM {TABLE} GROUP BY g ORDER BY g",
        f"SELECT g, min(u) * 2 AS m FROM {TABLE} GROUP BY g HAVING max(u) > 0 ORDER BY g",
    ],
)
def test_min_and_max_keep_their_values_scale(sql: str, conn: shardq.Connection, edge: Edge) -> None:
    columnar_is_single(conn, edge, sql)


@pytest.mark.parametrize(
    "sql",
    [
        f"SELECT g FROM {TABLE} GROUP BY g HAVING sum(f) > 1000",
        f"SELECT g, sum(f) > 1000 AS big FROM {TABLE} GROUP BY g",
        f"SELECT g, sum(f) < 0 AS neg FROM {TABLE} GROUP BY g ORDER BY g",
    ],
)
def test_nan_compares_as_postgresql_compares_it(
    sql: str, conn: shardq.Connection, edge: Edge
) -> None:
    columnar_is_single(conn, edge, sql)
    # The row path evaluates HAVING and computed columns the same way.
    want = [tuple(r) for r in rows_of(single_table(edge.dsn, sql))]
    assert sorted(conn.execute(sql).fetchall()) == sorted(want)


@pytest.fixture
def proxied(edge: Edge) -> Iterator[tuple[dict[str, Any], list[Any]]]:
    """The edge shards behind fault-injecting proxies: the configuration and the proxies."""
    owner = ProxyLoop()
    try:
        proxies = [owner.proxy(c.host, c.port, name=f"s{i}") for i, c in enumerate(edge.clusters)]
        yield proxied_config(edge.clusters, proxies, DATABASE, "arrow_review", TABLES), proxies
    finally:
        owner.close()


@pytest.mark.parametrize("connected", [True, False], ids=["open", "new"])
def test_a_shard_that_stops_answering_fails_at_the_deadline(
    proxied: tuple[dict[str, Any], list[Any]], connected: bool
) -> None:
    config, proxies = proxied
    with shardq.connect(config) as conn:
        if connected:
            conn.read_arrow("SELECT id FROM facts")
            assert conn.arrow_path == "adbc"
        proxies[1].set(Fault.blackhole())
        began = time.monotonic()
        with pytest.raises(shardq.QueryTimeoutError) as late:
            conn.read_arrow("SELECT id FROM facts", timeout=0.5)
        # The row path's 0.5 s, and the cancel requests' grace: not libpq's 10 s
        # connect_timeout, nor a cancel request blocked forever on the event loop.
        assert time.monotonic() - began < 3.0
        assert late.value.shards == ("s1",)
        proxies[1].heal()
        table = conn.read_arrow("SELECT count(*) AS c FROM facts", timeout=10)
        assert conn.arrow_path == "adbc"
        assert table.column("c").to_pylist() == [240]


async def test_waiting_for_a_connection_ends_at_the_deadline(edge: Edge) -> None:
    shards = [{**s, "pool_max_size": 1} for s in edge.config["shards"]]
    async with shardq.AsyncConnection({**edge.config, "shards": shards}) as aconn:
        await aconn.read_arrow("SELECT id FROM facts")  # imports and connections: not timed
        # Both on the shard of id 1, whose one connection the first holds for 2 s.
        slow = "SELECT id FROM facts WHERE id = 1 AND pg_sleep(2) IS NOT NULL"
        holding = asyncio.create_task(aconn.read_arrow(slow))
        await asyncio.sleep(0.3)
        began = time.monotonic()
        with pytest.raises(shardq.QueryTimeoutError):
            await aconn.read_arrow("SELECT id FROM facts WHERE id = 1", timeout=0.5)
        assert time.monotonic() - began < 1.5
        assert (await holding).column("id").to_pylist() == [1]
