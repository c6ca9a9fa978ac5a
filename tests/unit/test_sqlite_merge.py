"""The SQLite merge: per-shard partials, the final step SQLite computes, names, refusals.

The answers themselves are checked against one SQLite file in
``tests/differential/``; these pin the plans and the refusals.
"""

from __future__ import annotations

import pytest
import sqlglot

import shardq
from shardq.errors import UnsupportedQueryError
from shardq.merge.final import compute
from shardq.merge.steps import SortKey
from shardq.sql.catalog import ColumnInfo, sqlite_columns
from shardq.sql.dialects import ShardqSQLite, generate
from shardq.sql.plan import Planner

CONFIG = shardq.load_config(
    {
        "dialect": "sqlite",
        "shards": [{"name": f"s{i}", "dsn": f"s{i}.db"} for i in range(3)],
        "tables": {"ev": {"shard_key": "id"}, "kinds": {"reference": True}},
    }
)
EV = (
    ColumnInfo("Id", "INTEGER"),
    ColumnInfo("name", "TEXT", "nocase"),
    ColumnInfo("grp", "INTEGER"),
    ColumnInfo("amount", "REAL"),
    ColumnInfo("note", "TEXT"),
    ColumnInfo("mixed", ""),
)


@pytest.fixture
def planner() -> Planner:
    planner = Planner(CONFIG)
    planner.set_catalog(
        {"ev": frozenset(c.name.lower() for c in EV), "kinds": frozenset({"code", "label"})},
        {"ev": EV, "kinds": (ColumnInfo("code", "TEXT"), ColumnInfo("label", "TEXT"))},
    )
    return planner


def test_the_final_step_is_the_query_over_the_partials(planner: Planner) -> None:
    plan = planner.plan(
        "SELECT note COLLATE NOCASE AS n, avg(amount) * 2, count(*) FROM ev GROUP BY 1 "
        "HAVING n >= 'b' ORDER BY 3 DESC LIMIT -1"
    )
    assert plan.sql == (
        "SELECT note COLLATE NOCASE AS _shardq_g0, TOTAL(amount) AS _shardq_a0, "
        "COUNT(amount) AS _shardq_a1, COUNT(*) AS _shardq_a2 FROM ev GROUP BY note COLLATE NOCASE"
    )
    final = plan.merge.final
    assert final is not None
    assert final.columns == ("_shardq_g0 TEXT", "_shardq_a0", "_shardq_a1", "_shardq_a2")
    assert final.names == ("n", "avg(amount) * 2", "count(*)")
    assert final.sql == (
        'SELECT _shardq_g0 COLLATE NOCASE AS "n", TOTAL(_shardq_a0) / SUM(_shardq_a1) * 2 AS '
        '"avg(amount) * 2", COALESCE(SUM(_shardq_a2), 0) AS "count(*)" FROM _shardq_p '
        "GROUP BY _shardq_g0 COLLATE NOCASE HAVING n >= 'b' ORDER BY 3 DESC LIMIT -1"
    )
    # Two shards' partial rows: 'B' and 'b' are one group under NOCASE.
    rows = compute(final, [("B", 3.0, 2, 2), ("b", 1.5, 1, 1), ("a", 1.0, 1, 1)])
    assert rows == [("B", 3.0, 3)] or rows == [("b", 3.0, 3)]


def test_declared_collations_and_affinities_carry_to_the_final_table(planner: Planner) -> None:
    plan = planner.plan("SELECT name, grp, min(mixed) FROM ev GROUP BY name, grp HAVING grp > '1'")
    final = plan.merge.final
    assert final is not None
    assert final.columns == (
        "_shardq_g0 TEXT COLLATE NOCASE",
        "_shardq_g1 INTEGER",
        "_shardq_a0",
    )
    # grp has INTEGER affinity: '1' compares as the number 1, as on one database.
    rows = compute(final, [("Ann", 2, "x"), ("ann", 2, 5), ("bob", 1, 1), ("bob", 10, b"z")])
    assert sorted(rows, key=repr) == sorted([("Ann", 2, 5), ("bob", 10, b"z")], key=repr) or (
        sorted(rows, key=repr) == sorted([("ann", 2, 5), ("bob", 10, b"z")], key=repr)
    )


def test_sqlite_arithmetic_and_functions_after_the_merge(planner: Planner) -> None:
    plan = planner.plan(
        "SELECT count(*) * 1.0 / 3, CAST(avg(grp) AS INTEGER), sum(amount) % 7, round(avg(grp), 1),"
        " typeof(sum(grp)), total(grp), group_concat(note, '-') FROM ev"
    )
    final = plan.merge.final
    assert final is not None
    assert final.columns == tuple(f"_shardq_a{i}" for i in range(6))
    # Per shard: count(*), total(grp), count(grp), sum(amount), sum(grp), group_concat.
    shard_rows = [(2, 7.0, 2, 12.5, 7, "a-b"), (1, 2.0, 1, 1.0, 2, None)]
    ((third, truncated, modulo, rounded, kind, total, joined),) = compute(final, shard_rows)
    assert third == 1.0
    assert isinstance(third, float)
    assert truncated == 3  # avg 3.0: CAST truncates
    assert modulo == 6.0  # 13.5 % 7 in SQLite: integer remainder of the truncated operands, a real
    assert rounded == 3.0
    assert kind == "integer"
    assert total == 9.0
    assert joined == "a-b"


def test_bare_columns_follow_the_one_min_or_max(planner: Planner) -> None:
    plan = planner.plan("SELECT name, max(amount), note FROM ev GROUP BY name")
    final = plan.merge.final
    assert final is not None
    assert "note AS _shardq_b0" in plan.sql
    rows = compute(final, [("a", 1.0, "low"), ("a", 9.0, "high"), ("b", 2.0, "only")])
    assert sorted(rows) == [("a", 9.0, "high"), ("b", 2.0, "only")]


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT name, note, count(*) FROM ev GROUP BY name",
        "SELECT name, note, min(grp), max(grp) FROM ev GROUP BY name",
    ],
)
def test_bare_columns_without_one_min_or_max_are_refused(planner: Planner, sql: str) -> None:
    with pytest.raises(UnsupportedQueryError, match="bare column note") as info:
        planner.plan(sql)
    assert "arbitrary" in str(info.value)
    # Not gathered either: SQLite would take it from another arbitrary row than one file does.
    assert not info.value.gatherable


def _gathered(planner: Planner, sql: str, refusal: str) -> None:
    """The merge refuses ``sql`` for ``refusal``: it is gathered to one shard instead."""
    plan = planner.plan(sql)
    assert plan.gather is not None, plan.strategy
    assert plan.sql == sql  # runs as written, by SQLite
    assert "no merge answers it exactly" in plan.strategy
    assert refusal in plan.strategy


def test_a_non_constant_separator_is_gathered(planner: Planner) -> None:
    _gathered(planner, "SELECT group_concat(note, name) FROM ev", "separator is not a constant")


def test_a_group_key_shown_without_its_collation(planner: Planner) -> None:
    # SQLite shows some row's name for a group formed under NOCASE.
    plan = planner.plan("SELECT note, count(*) FROM ev GROUP BY note COLLATE NOCASE ORDER BY note")
    assert plan.merge.final is not None
    assert plan.merge.final.sql.endswith("GROUP BY _shardq_g0 COLLATE NOCASE ORDER BY note")


def test_rows_merge_in_sqlite_order_and_collation(planner: Planner) -> None:
    plan = planner.plan("SELECT name, note FROM ev ORDER BY name DESC, note COLLATE RTRIM")
    assert plan.merge.order == (
        SortKey(0, descending=True, nulls_first=False, collation="nocase"),
        SortKey(-1, nulls_first=True, collation="rtrim"),
    )
    distinct = planner.plan("SELECT DISTINCT name, upper(note) FROM ev")
    assert distinct.merge.collations == ("nocase", "binary")


def test_rewritten_expressions_keep_their_written_names(planner: Planner) -> None:
    plan = planner.plan("SELECT note IS NOT NULL, Id FROM ev ORDER BY grp LIMIT 2")
    assert plan.sql.startswith('SELECT NOT note IS NULL AS "note IS NOT NULL", Id, ')


def test_star_is_expanded_for_an_ordinal(planner: Planner) -> None:
    plan = planner.plan("SELECT * FROM ev e ORDER BY 3 LIMIT 2")
    assert plan.sql.startswith('SELECT e."Id", e."name", e."grp", e."amount"')
    assert plan.merge.order == (SortKey(2, collation="binary", nulls_first=True),)


def test_limit_minus_one_is_no_limit(planner: Planner) -> None:
    plan = planner.plan("SELECT Id FROM ev ORDER BY Id LIMIT -1 OFFSET 3")
    assert plan.sql == "SELECT Id FROM ev ORDER BY Id"
    assert (plan.merge.offset, plan.merge.limit) == (3, None)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT grp, group_concat(name, '|' ORDER BY name, Id) FROM ev GROUP BY grp",
        "SELECT group_concat(note ORDER BY Id DESC) FROM ev",
    ],
)
def test_ordered_aggregates_are_gathered(planner: Planner, sql: str) -> None:
    # SQLite 3.44 orders inside aggregates: concatenating each shard's ordered partial
    # would not order the whole.
    _gathered(planner, sql, "ORDER BY orders the values of each shard's partial only")


def test_collations_the_merge_cannot_reproduce_are_gathered(planner: Planner) -> None:
    _gathered(planner, "SELECT note FROM ev ORDER BY note COLLATE my_collation", "BINARY, NOCASE")


def test_catalog_reads_declared_collations() -> None:
    rows = [("id", "INTEGER", None), ("Name", "text", None), ("q", "", None)]
    create = 'CREATE TABLE "t" (id INTEGER, "Name" text COLLATE NoCase, q COLLATE "RTRIM")'
    assert [c.collation for c in sqlite_columns(rows, create)] == ["binary", "nocase", "rtrim"]


@pytest.mark.parametrize(
    ("written", "sent"),
    [
        ("SELECT CAST(x AS numeric) FROM t", "SELECT CAST(x AS NUMERIC) FROM t"),
        ("SELECT CAST(x AS date) FROM t", "SELECT CAST(x AS NUMERIC) FROM t"),
        ("SELECT CAST(x AS boolean) FROM t", "SELECT CAST(x AS NUMERIC) FROM t"),
        ("SELECT CAST(x AS varchar(3)) FROM t", "SELECT CAST(x AS TEXT) FROM t"),
        ("SELECT CAST(x AS blob) FROM t", "SELECT CAST(x AS BLOB) FROM t"),
        ("SELECT CAST(x AS double) FROM t", "SELECT CAST(x AS REAL) FROM t"),
        ("SELECT substr(x, 1, 2) FROM t", "SELECT SUBSTR(x, 1, 2) FROM t"),
        ("SELECT 1 FROM t, u WHERE t.a = u.a", "SELECT 1 FROM t, u WHERE t.a = u.a"),
    ],
)
def test_sqlite_is_written_back_with_the_same_meaning(written: str, sent: str) -> None:
    assert generate(sqlglot.parse_one(written, read="sqlite"), "sqlite") == sent


@pytest.mark.parametrize(
    ("written", "sent"),
    [
        # Unary plus takes a column's affinity away in SQLite: kept (sqlglot drops it).
        ("SELECT +x FROM t WHERE +x > '2'", "SELECT +(x) FROM t WHERE +(x) > '2'"),
        # A CAST's affinity follows the type name as written: STRING is NUMERIC in SQLite.
        ("SELECT CAST(x AS STRING), CAST(x AS bytea) FROM t",
         "SELECT CAST(x AS NUMERIC), CAST(x AS NUMERIC) FROM t"),
    ],
)  # fmt: skip
def test_shardqs_sqlite_parser_keeps_what_sqlglots_loses(written: str, sent: str) -> None:
    assert generate(sqlglot.parse_one(written, read=ShardqSQLite), "sqlite") == sent
