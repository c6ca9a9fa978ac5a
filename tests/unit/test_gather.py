"""Planning a gather to one shard: which columns and filters are pushed down.

What a pushdown leaves out must not change the statement's answer: columns
the statement never names, rows its WHERE would drop anyway. Anything
doubtful (a table read twice, an outer join, a function, a subquery, a
placeholder, a column of another table) is not pushed down.
"""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal

import pytest

import shardq
from shardq.config import load_config
from shardq.sql.catalog import ColumnInfo
from shardq.sql.gather import bind_gather
from shardq.sql.plan import Planner

CONFIG = load_config(
    {
        "dialect": "postgres",
        "shards": [{"name": f"s{i}", "dsn": f"postgresql://u@h{i}/d"} for i in range(3)],
        "tables": {
            "orders": {"shard_key": "id"},
            "items": {"shard_key": "id"},
            "countries": {"reference": True},
            "v": {"shard_key": "id"},
        },
    }
)
COLUMNS = {
    "orders": tuple(ColumnInfo(c) for c in ("id", "customer", "status", "total")),
    "items": tuple(ColumnInfo(c) for c in ("id", "order_id", "qty", "price")),
    "countries": tuple(ColumnInfo(c) for c in ("code", "name")),
}


def gathered(planner: Planner, sql: str, construct: str) -> None:
    """Assert that every merge refuses ``sql`` for ``construct``, so that it is gathered."""
    plan = planner.plan(sql)
    assert plan.gather is not None, plan.strategy
    assert plan.sql == sql  # runs as written
    assert re.search(construct, plan.strategy), plan.strategy
    assert "no merge answers it exactly" in plan.strategy


@pytest.fixture
def planner() -> Planner:
    planner = Planner(CONFIG)
    planner.set_catalog({t: frozenset(c.name for c in cs) for t, cs in COLUMNS.items()}, COLUMNS)
    return planner


def selects(planner: Planner, sql: str) -> dict[str, str]:
    plan = planner.plan(sql)
    assert plan.gather is not None, plan.strategy
    return {t.name: t.select for t in plan.gather.tables}


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        # only the columns named; the filters on one table each
        (
            "SELECT o.status, string_agg(i.price::text, ',' ORDER BY i.id) FROM orders o "
            "JOIN items i ON i.order_id = o.customer WHERE o.total > 10 AND i.qty IN (1, 2) "
            "AND o.total < i.price GROUP BY o.status",
            {
                "orders": 'SELECT "id", "customer", "status", "total" FROM orders AS o '
                "WHERE o.total > 10",
                "items": 'SELECT "id", "order_id", "qty", "price" FROM items AS i '
                "WHERE i.qty IN (1, 2)",
            },
        ),
        # unqualified columns of the one table; a literal date and an interval
        (
            "SELECT status, percentile_cont(0.5) WITHIN GROUP (ORDER BY total) FROM orders "
            "WHERE status BETWEEN 'a' AND 'f' AND total >= 3 * 2 GROUP BY status",
            {
                "orders": 'SELECT "status", "total" FROM orders '
                "WHERE status BETWEEN 'a' AND 'f' AND total >= 3 * 2"
            },
        ),
        # count(*) alone: one column keeps the rows
        ("SELECT count(*) FROM orders GROUP BY ROLLUP (1)", {"orders": 'SELECT "id" FROM orders'}),
        # * and a whole-row reference: every column
        ("SELECT DISTINCT ON (status) * FROM orders", {"orders": "SELECT * FROM orders"}),
        (
            "SELECT array_agg(o ORDER BY o.id) FROM orders o",
            {"orders": "SELECT * FROM orders"},
        ),
    ],
)
def test_columns_and_filters_pushed_down(
    planner: Planner, sql: str, expected: dict[str, str]
) -> None:
    assert selects(planner, sql) == expected


@pytest.mark.parametrize(
    "sql",
    [
        # the null-extended side of an outer join: IS NULL keeps the unmatched rows
        "SELECT o.id, count(i.id) FROM orders o LEFT JOIN items i ON i.order_id = o.customer "
        "WHERE i.qty > 1 GROUP BY ROLLUP (o.id)",
        # functions (volatile, or failing on rows the statement would skip), casts of columns
        "SELECT string_agg(status, ',') FROM orders WHERE random() < 0.5",
        "SELECT string_agg(status, ',') FROM orders WHERE total::int > 3",
        "SELECT string_agg(status, ',') FROM orders WHERE total / 0 > 3",
        # a subquery
        "SELECT string_agg(status, ',') FROM orders WHERE id IN (SELECT 1)",
        # a literal with "%": "%%" with parameters, "%" without
        "SELECT string_agg(status, ',') FROM orders WHERE status = '100%%'",
        "SELECT string_agg(status, ',') FROM orders WHERE status LIKE 'a%'",
        # the table read twice: each reference would need its own rows
        "SELECT string_agg(a.status, ',') FROM orders a JOIN orders b ON b.customer = a.total "
        "WHERE a.total > 3",
    ],
)
def test_doubtful_filters_are_not_pushed_down(planner: Planner, sql: str) -> None:
    for select in selects(planner, sql).values():
        assert "WHERE" not in select


def test_a_correlated_filter_is_not_pushed_down(planner: Planner) -> None:
    sql = (
        "SELECT o.id FROM orders o WHERE o.total > "
        "(SELECT avg(i.price) FROM items i WHERE i.qty = o.customer AND i.price > 0)"
    )
    assert selects(planner, sql)["items"] == (
        'SELECT "id", "qty", "price" FROM items AS i WHERE i.price > 0'
    )


def test_reference_tables_are_not_gathered(planner: Planner) -> None:
    sql = (
        "SELECT c.name, string_agg(o.status, ',') FROM orders o JOIN countries c ON TRUE GROUP BY 1"
    )
    assert list(selects(planner, sql)) == ["orders"]


def test_a_table_named_with_its_schema_is_refused(planner: Planner) -> None:
    with pytest.raises(shardq.UnsupportedQueryError, match="named with its schema"):
        planner.plan("SELECT string_agg(status, ',') FROM public.orders")


def test_a_gathered_read_is_not_a_distributed_view(planner: Planner) -> None:
    with pytest.raises(shardq.UnsupportedQueryError, match="merged across shards"):
        planner.plan("CREATE VIEW v AS SELECT id, rank() OVER (ORDER BY total) AS r FROM orders")


def bound(planner: Planner, sql: str, params: object) -> dict[str, str]:
    plan = planner.plan(sql, params)
    assert plan.gather is not None, plan.strategy
    return {t.name: t.select for t in bind_gather(plan.gather, params).tables}


@pytest.mark.parametrize(
    ("where", "params", "pushed"),
    [
        ("total > %s", [5], "total > (5)"),
        ("total - %s > 0", [-3], "total - (-3) > 0"),  # not "--": a comment
        ("total > %s", [1.5], "total > ('1.5'::float8)"),  # psycopg binds float8
        ("total > %s", [float("-inf")], "total > ('-Infinity'::float8)"),
        ("total > %s", [Decimal("2.50")], "total > (2.50)"),
        ("status = %s", ["o'k"], "status = ('o''k')"),
        ("status = %s", [None], "status = (NULL)"),
        ("status BETWEEN %s AND %s", ["a", "f"], "status BETWEEN ('a') AND ('f')"),
        ("customer = %(c)s", {"c": dt.date(2024, 1, 2)}, "customer = ('2024-01-02'::date)"),
        (
            "customer >= %(c)s",
            {"c": dt.datetime(2024, 1, 2, 3, 4, tzinfo=dt.UTC)},
            "customer >= ('2024-01-02 03:04:00+00:00'::timestamptz)",
        ),
    ],
)
def test_placeholders_are_bound_into_the_pushdown(
    planner: Planner, where: str, params: object, pushed: str
) -> None:
    # COPY takes no parameters: each value is written in as the literal of
    # what psycopg binds, so the pushdown keeps what the statement keeps.
    sql = f"SELECT string_agg(status, ',' ORDER BY id) FROM orders WHERE {where}"
    select = bound(planner, sql, params)["orders"]
    assert select.partition(" FROM orders WHERE ")[2] == pushed


def test_a_value_without_a_literal_is_not_pushed_down(planner: Planner) -> None:
    sql = (
        "SELECT string_agg(status, ',' ORDER BY id) FROM orders "
        "WHERE total IN (%s, %s) AND status = %s AND status = '1%%'"
    )
    # a list (an array for psycopg) has no literal here; the other conjunct is pushed
    assert bound(planner, sql, [[1, 2], 3, "x"]) == {
        "orders": 'SELECT "id", "status", "total" FROM orders WHERE status = (\'x\')'
    }


SQLITE = load_config(
    {
        "dialect": "sqlite",
        "shards": [{"name": f"s{i}", "dsn": f"s{i}.db"} for i in range(3)],
        "tables": {"ev": {"shard_key": "id"}, "kinds": {"reference": True}},
    }
)
EV = (
    ColumnInfo("Id", "INTEGER"),
    ColumnInfo("name", "VARCHAR(20)", "nocase"),
    ColumnInfo("grp", "INTEGER"),
    ColumnInfo("blob", ""),
)


@pytest.fixture
def sqlite_planner() -> Planner:
    planner = Planner(SQLITE)
    planner.set_catalog({"ev": frozenset(c.name.lower() for c in EV)}, {"ev": EV})
    return planner


def test_sqlite_tables_are_declared_and_filled_from_main(sqlite_planner: Planner) -> None:
    plan = sqlite_planner.plan(
        "SELECT e.name, rank() OVER (ORDER BY e.grp) FROM ev e WHERE e.grp > 2 AND e.id < ?",
        (9,),
    )
    assert plan.gather is not None, plan.strategy
    (table,) = plan.gather.tables
    # The catalog's declarations of the columns moved (names as declared, case folded to match).
    assert table.declared == EV[:3]
    assert table.select == 'SELECT "Id", "name", "grp" FROM ev AS e WHERE e.grp > 2'
    # The shard's own rows, read once the temporary table shadows "ev": by its schema.
    assert table.local == 'SELECT "Id", "name", "grp" FROM main.ev AS e WHERE e.grp > 2'
    star = sqlite_planner.plan("SELECT *, rank() OVER (ORDER BY grp) FROM ev")
    assert star.gather is not None
    assert star.gather.tables[0].declared == EV  # every column, for the temporary table
    assert star.gather.tables[0].local == "SELECT * FROM main.ev AS ev"


def test_sqlite_does_not_push_down_a_cast(sqlite_planner: Planner) -> None:
    # CAST('5' AS STRING) is numeric in SQLite; the SQL written again may say TEXT.
    sql = "SELECT rank() OVER (ORDER BY grp) FROM ev WHERE grp > CAST('5' AS STRING) AND grp < 9"
    plan = sqlite_planner.plan(sql)
    assert plan.gather is not None
    assert plan.gather.tables[0].select.endswith(" WHERE grp < 9")


@pytest.mark.parametrize("rowid", ["rowid", "OID", "_rowid_"])
def test_sqlite_refuses_a_gathered_tables_rowid(sqlite_planner: Planner, rowid: str) -> None:
    with pytest.raises(shardq.UnsupportedQueryError, match="the rowid of a gathered table"):
        sqlite_planner.plan(f"SELECT {rowid}, rank() OVER (ORDER BY grp) FROM ev")


def test_sqlite_declarations_keep_affinity_and_collation() -> None:
    from shardq.execute.sqlite_gather import declaration

    assert [declaration(c) for c in EV] == [
        '"Id" INTEGER',
        '"name" TEXT COLLATE "nocase"',
        '"grp" INTEGER',
        '"blob"',
    ]
