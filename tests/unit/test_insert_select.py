"""INSERT ... SELECT: co-located (on each shard) or routed (by shardq), decided from the text."""

from __future__ import annotations

import pytest

import shardq
from shardq.config import load_config
from shardq.sql.plan import Planner
from shardq.sql.route import RouteKind
from tests.unit.test_sql import TABLES, P, planner

COPY = "INSERT INTO items (customer_id, total) "


@pytest.mark.parametrize(
    "select",
    [
        "SELECT customer_id, total FROM orders",
        "SELECT o.customer_id AS k, i.total FROM orders AS o JOIN items AS i "
        "ON i.customer_id = o.customer_id",
        "SELECT customer_id, c.name FROM orders JOIN countries AS c ON c.code = orders.status",
        "SELECT customer_id, sum(total) FROM orders GROUP BY customer_id",
        "SELECT DISTINCT customer_id, total FROM orders",
        "SELECT customer_id, sum(total) OVER (PARTITION BY customer_id) FROM orders",
        "SELECT customer_id, total FROM orders ORDER BY total",  # no RETURNING: order moot
        "SELECT customer_id, total FROM (SELECT customer_id, total FROM orders) AS d",
        "SELECT customer_id, total FROM orders WHERE customer_id IN "
        "(SELECT customer_id FROM items WHERE total > 1)",
    ],
)
def test_a_colocated_select_runs_on_each_shard(select: str) -> None:
    plan = P.plan(COPY + select)
    assert plan.feed is None
    assert "co-located" in plan.strategy
    assert plan.route.kind is RouteKind.ALL
    assert plan.sql == COPY + select  # as written


def test_a_colocated_select_is_routed_like_a_read() -> None:
    plan = P.plan(COPY + "SELECT customer_id, total FROM orders WHERE customer_id = %s", [9])
    assert plan.route.shards == (P.config.shard_for("orders", 9),)
    assert plan.params == [9]


@pytest.mark.parametrize(
    ("select", "why"),
    [
        ("SELECT customer_id + 1, total FROM orders", "computed"),
        ("SELECT customer_id, total FROM orders LIMIT 5", "LIMIT"),
        ("SELECT customer_id, total FROM orders FETCH FIRST 5 ROWS ONLY", "LIMIT"),
        ("SELECT max(customer_id), total FROM orders GROUP BY total", "aggregates"),
        ("SELECT DISTINCT ON (total) customer_id, total FROM orders", "DISTINCT"),
        ("SELECT customer_id, row_number() OVER () FROM orders", "window"),
        ("SELECT customer_id, total FROM orders UNION SELECT customer_id, 1 FROM items", "UNION"),
        ("SELECT 1, 2 FROM countries", "no distributed table"),
        ("SELECT o.customer_id, 1 FROM orders AS o JOIN orders AS p ON p.total = o.total", ""),
        ("SELECT * FROM orders", "*"),
        ("SELECT customer_id, total FROM orders WHERE total > (SELECT avg(total) FROM orders)", ""),
        ("SELECT customer_id, total FROM orders ORDER BY total RETURNING *", "ORDER BY"),
    ],
)
def test_other_selects_are_routed(select: str, why: str) -> None:
    plan = P.plan(COPY + select)
    assert plan.feed is not None
    assert "runs first as a query of its own" in plan.strategy
    assert why in plan.strategy
    assert plan.route.kind is RouteKind.ALL


def test_a_routed_insert_keeps_its_clauses_and_names_its_columns() -> None:
    cfg = P.config
    p = Planner(cfg)
    p.set_catalog({}, {})
    sql = (
        "INSERT INTO items (total, customer_id) SELECT total, customer_id + 1 FROM orders "
        "WHERE total > %s ON CONFLICT (customer_id) DO UPDATE SET total = %s RETURNING total"
    )
    with pytest.raises(shardq.UnsupportedQueryError, match="RETURNING"):
        p.plan(sql, [1, 2])
    feed = p.plan(sql.removesuffix(" RETURNING total"), [1, 2]).feed
    assert feed is not None
    assert feed.key == 1
    assert feed.select == "SELECT total, customer_id + 1 FROM orders WHERE total > %(_p0)s"
    assert feed.params == {"_p0": 1, "_p1": 2}
    insert, names = feed.inserts.statement(2, 2, escaped=True)
    assert insert == (
        "INSERT INTO items (total, customer_id) VALUES (%(_shardq_v0_0)s, %(_shardq_v0_1)s), "
        "(%(_shardq_v1_0)s, %(_shardq_v1_1)s) ON CONFLICT(customer_id) DO UPDATE SET "
        "total = %(_p1)s"
    )
    assert names == ("_shardq_v0_0", "_shardq_v0_1", "_shardq_v1_0", "_shardq_v1_1")


def test_without_a_column_list_the_catalog_gives_the_order() -> None:
    from shardq.sql.catalog import ColumnInfo

    p = Planner(P.config)
    columns = (ColumnInfo("total", "int"), ColumnInfo("customer_id", "int"))
    p.set_catalog({"items": frozenset({"total", "customer_id"})}, {"items": columns})
    plan = p.plan("INSERT INTO items SELECT total, customer_id FROM orders")
    assert "co-located" in plan.strategy
    feed = p.plan("INSERT INTO items SELECT 1, customer_id * 2 FROM orders").feed
    assert feed is not None
    assert feed.key == 1
    assert feed.inserts.statement(1, 2, escaped=False)[0] == (
        'INSERT INTO items ("total", "customer_id") VALUES (%(_shardq_v0_0)s, %(_shardq_v0_1)s)'
    )
    with pytest.raises(shardq.UnsupportedQueryError, match="column list"):
        Planner(P.config).plan("INSERT INTO items SELECT total, customer_id FROM orders")


@pytest.mark.parametrize(
    ("dialect", "sql", "match"),
    [
        ("sqlite", COPY + "SELECT customer_id, total FROM orders", "two-phase"),
        ("sqlite", COPY + "SELECT customer_id + 1, total FROM orders WHERE customer_id = 3",
         "two-phase"),
        ("postgres", "INSERT INTO items (total) SELECT total FROM orders", "without the shard key"),
        ("postgres", "INSERT INTO countries (code) SELECT status FROM orders", "distributed"),
        (
            "postgres",
            COPY + "SELECT customer_id, total FROM orders ON CONFLICT (customer_id) "
            "DO UPDATE SET customer_id = 1",
            "sets the shard key",
        ),
    ],
)  # fmt: skip
def test_sqlite_shards_and_unsafe_shapes_are_refused(dialect: str, sql: str, match: str) -> None:
    with pytest.raises(shardq.UnsupportedQueryError, match=match):
        planner(dialect).plan(sql)


def test_on_sqlite_shards_a_pinned_colocated_copy_runs() -> None:
    p = planner("sqlite")
    plan = p.plan(COPY + "SELECT customer_id, total FROM orders WHERE customer_id = ?", [3])
    assert plan.route.shards == (p.config.shard_for("orders", 3),)


def test_one_shard_runs_it_as_written() -> None:
    one = Planner(load_config({"shards": [{"name": "a", "dsn": "a.db"}], "tables": TABLES}))
    plan = one.plan(COPY + "SELECT customer_id + 1, total FROM orders ORDER BY total LIMIT 3")
    assert plan.feed is None
    assert plan.strategy == "an INSERT ... SELECT on the one shard, as written"
