"""Planning decorrelation: which correlated subqueries become grouped CTEs, and how.

A subquery is decorrelated only when the grouped form is provably the same
answer (shardq.sql.decorrelate); everything else is left to the gather, and
the plan says which it chose. The answers themselves are checked against one
PostgreSQL in tests/differential (test_edge.py, test_tpch.py).
"""

from __future__ import annotations

import pytest

from shardq.config import load_config
from shardq.errors import UnsupportedQueryError
from shardq.sql.catalog import ColumnInfo
from shardq.sql.decorrelate import decorrelate
from shardq.sql.plan import Planner

CONFIG = {
    "dialect": "postgres",
    "shards": [{"name": f"s{i}", "dsn": f"postgresql://u@h{i}/d"} for i in range(3)],
    "tables": {"items": {"shard_key": "id"}, "parts": {"reference": True}},
}
COLUMNS = {
    "items": (
        ColumnInfo("id", "integer"),
        ColumnInfo("part", "integer"),
        ColumnInfo("supplier", "bigint"),
        ColumnInfo("qty", "numeric(15,2)"),
        ColumnInfo("weight", "double precision"),
        ColumnInfo("label", "text"),
        ColumnInfo("shipped", "date"),
    ),
    "parts": (
        ColumnInfo("pk", "integer"),
        ColumnInfo("supplier", "bigint"),
        ColumnInfo("label", "text"),
        ColumnInfo("size", "integer"),
    ),
}


def planner(**settings: object) -> Planner:
    planner = Planner(load_config({**CONFIG, **settings}))
    planner.set_catalog({t: frozenset(c.name for c in cs) for t, cs in COLUMNS.items()}, COLUMNS)
    return planner


DECORRELATED = [
    # LEFT JOINed after the one FROM item the outer column is of
    (
        "SELECT count(*) FROM items i, parts p WHERE p.pk = i.part AND i.qty < "
        "(SELECT 0.2 * avg(qty) FROM items WHERE items.part = p.pk)",
        [
            "parts AS p LEFT JOIN _shardq_d0 ON _shardq_d0._shardq_k0 = p.pk",
            "i.qty < (0.2 * _shardq_d0._shardq_a0)",
            "GROUP BY items.part",
        ],
    ),
    # count of no group: 0
    (
        "SELECT pk FROM parts p WHERE (SELECT count(*) FROM items i WHERE i.part = p.pk) = 0",
        ["(COALESCE(_shardq_d0._shardq_a0, 0)) = 0"],
    ),
    # two correlation columns, a local condition kept in the CTE
    (
        "SELECT pk FROM parts p WHERE p.size > (SELECT sum(i.qty) FROM items i "
        "WHERE i.part = p.pk AND i.supplier = p.supplier AND i.shipped >= DATE '2024-01-01')",
        [
            "WHERE i.shipped >= CAST('2024-01-01' AS DATE) GROUP BY i.part, i.supplier",
            "_shardq_d0._shardq_k0 = p.pk AND _shardq_d0._shardq_k1 = p.supplier",
        ],
    ),
    # SELECT *: a lookup, not a join (its columns would show)
    (
        "SELECT * FROM parts p WHERE p.size > (SELECT max(i.qty) FROM items i WHERE i.part = p.pk)",
        ["(SELECT _shardq_d0._shardq_a0 FROM _shardq_d0 WHERE _shardq_d0._shardq_k0 = p.pk)"],
    ),
    # NOT EXISTS over the groups
    (
        "SELECT pk FROM parts p WHERE NOT EXISTS (SELECT 1 FROM items i WHERE i.part = p.pk)",
        ["NOT EXISTS(SELECT 1 FROM _shardq_d0 WHERE _shardq_d0._shardq_k0 = p.pk)"],
    ),
]


@pytest.mark.parametrize(("sql", "fragments"), DECORRELATED, ids=range(len(DECORRELATED)))
def test_decorrelated(sql: str, fragments: list[str]) -> None:
    plan = planner().plan(sql)
    assert plan.gather is None
    assert plan.deferred is not None
    assert plan.strategy.startswith("decorrelated"), plan.strategy
    assert all(s.max_rows == 100_000 for s in plan.deferred.subplans)
    for fragment in fragments:
        assert fragment in plan.sql, plan.sql


NOT_DECORRELATED = [
    ("SELECT pk FROM parts p WHERE p.size > (SELECT sum(i.weight) FROM items i "
     "WHERE i.part = p.pk)", "float sum"),
    ("SELECT pk FROM parts p WHERE p.size > (SELECT max(i.label) FROM items i "
     "WHERE i.part = p.pk)", "not a number, date or time"),
    ("SELECT pk FROM parts p WHERE p.size > (SELECT max(i.qty) FROM items i "
     "WHERE i.label = p.label)", "not an integer, numeric or date"),
    ("SELECT pk FROM parts p WHERE p.size > (SELECT max(i.qty) FROM items i "
     "WHERE i.part = p.pk OR i.supplier = p.supplier)", "refers to the outer query"),
    ("SELECT pk FROM parts p WHERE p.size > (SELECT max(i.qty) FROM items i "
     "WHERE i.part < p.pk)", "refers to the outer query"),
    ("SELECT pk FROM parts p WHERE p.size > (SELECT max(i.qty) FROM items i "
     "WHERE i.part = p.pk LIMIT 1)", "LIMIT"),
    ("SELECT pk FROM parts p WHERE p.size > (SELECT max(i.qty) FROM items i "
     "WHERE i.part = p.pk AND 10 / i.qty > 1)", "could fail"),
    ("SELECT pk FROM parts p WHERE p.size > (SELECT max(i.qty) FROM items i "
     "WHERE i.part = p.pk GROUP BY i.supplier)", "GROUP"),
    ("SELECT pk FROM parts p WHERE p.size > (SELECT max(i.qty) + i.part FROM items i "
     "WHERE i.part = p.pk)", "outside the aggregates"),
    ("SELECT pk FROM parts p WHERE p.size > (SELECT avg(DISTINCT i.qty) FROM items i "
     "WHERE i.part = p.pk)", "DISTINCT"),
    ("SELECT pk FROM parts p WHERE p.size > (SELECT max(i.qty) FROM items i "
     "WHERE i.part = p.pk + 1)", "refers to the outer query"),
    ("SELECT pk FROM parts p WHERE p.size > (SELECT max(i.qty) FROM items i "
     "WHERE i.part = tableoid)", "system column"),
    ("SELECT pk, (SELECT max(i.qty) FROM items i WHERE i.part = p.pk) FROM parts p",
     "not in a WHERE"),
    ("WITH items AS (SELECT * FROM parts) SELECT pk FROM parts p WHERE p.size > "
     "(SELECT max(i.qty) FROM items i WHERE i.part = p.pk)", None),
    ("SELECT pk FROM parts p WHERE EXISTS (SELECT count(*) FROM items i WHERE i.part = p.pk)",
     "more than columns and constants"),
    # evaluated maybe before the other conditions: nothing that can fail
    ("SELECT pk FROM parts p WHERE p.size > 0 AND 1 / p.size < (SELECT max(i.qty) FROM items i "
     "WHERE i.part = p.pk)", "could fail"),
    ("SELECT pk FROM parts p WHERE p.size > (SELECT 1 / sum(i.qty) FROM items i "
     "WHERE i.part = p.pk)", "could fail"),
    ("SELECT pk FROM parts p WHERE p.size > (SELECT sum(i.part * i.part) FROM items i "
     "WHERE i.supplier = p.supplier)", "integer arithmetic"),
]  # fmt: skip


@pytest.mark.parametrize(("sql", "why"), NOT_DECORRELATED, ids=range(len(NOT_DECORRELATED)))
def test_not_provably_the_same_is_gathered(sql: str, why: str | None) -> None:
    chosen = planner()
    plan = chosen.plan(sql)
    assert plan.deferred is None or not plan.strategy.startswith("decorrelated")
    if why is not None:
        assert plan.gather is not None, plan.strategy
        refusal = chosen.analyze(sql).memo[("decorrelated", True, len(COLUMNS))]
        assert why in refusal.reason, refusal.reason


def test_a_statement_that_locks_rows_is_not_decorrelated() -> None:
    chosen = planner()
    analysis = chosen.analyze(DECORRELATED[1][0] + " FOR UPDATE")
    with pytest.raises(UnsupportedQueryError, match="locks rows"):
        decorrelate(analysis, chosen.columns)


def test_max_decorrelated_rows_zero_turns_it_off() -> None:
    sql = DECORRELATED[0][0]
    assert planner(max_decorrelated_rows=0).plan(sql).gather is not None


def test_the_catalog_is_needed() -> None:
    # Without it, an unqualified name cannot be told to be the subquery's own.
    bare = Planner(load_config(CONFIG))
    assert bare.plan(DECORRELATED[0][0]).gather is not None
