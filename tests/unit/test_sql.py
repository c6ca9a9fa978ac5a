"""Parsing, routing and planning: pure, no database."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import shardq
from shardq.config import load_config
from shardq.merge.steps import Counting, SetOp, SetOpKind, SortKey
from shardq.sql.analyze import StatementKind
from shardq.sql.catalog import ColumnInfo
from shardq.sql.parse import parse
from shardq.sql.plan import Planner
from shardq.sql.route import RouteKind
from tests.unit.test_gather import gathered

TABLES = {
    "orders": {"shard_key": "customer_id"},
    "items": {"shard_key": "customer_id", "colocate_with": "orders"},
    "countries": {"reference": True},
}


def planner(dialect: str = "postgres") -> Planner:
    dsn = "host=x" if dialect == "postgres" else "x.db"
    shards = [{"name": f"s{i}", "dsn": dsn} for i in range(4)]
    return Planner(load_config({"dialect": dialect, "shards": shards, "tables": TABLES}))


P = planner()


def shards_of(sql: str, params: Any = None, p: Planner = P) -> tuple[str, ...] | str:
    route = p.plan(sql, params).route
    return route.kind.value if route.kind is not RouteKind.SHARDS else route.shards


def test_placeholders_are_numbered_in_text_order() -> None:
    parsed = parse("SELECT %s FROM t WHERE a = %s LIMIT %s", "postgres")
    assert parsed.positional == 3
    sql = parsed.expression.sql("postgres")
    assert sql.index("_p0") < sql.index("_p1") < sql.index("_p2")


def test_percent_escapes_are_not_placeholders() -> None:
    parsed = parse("SELECT a %% 2 FROM t WHERE s LIKE 'x%%' AND c = %s", "postgres")
    assert parsed.positional == 1
    assert not parsed.hidden_placeholders


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM orders WHERE note <> '%s' AND customer_id = %s",
        "SELECT * FROM orders /* %s */ WHERE customer_id = %s",
    ],
)
def test_placeholders_psycopg_would_bind_inside_strings_are_refused(sql: str) -> None:
    # psycopg binds "%s" anywhere in the text: the key would get the wrong value.
    assert parse(sql, "postgres").hidden_placeholders
    with pytest.raises(shardq.ProgrammingError, match="inside a string literal"):
        P.plan(sql, [7, 42])
    P.plan(sql.replace("%s", "1"))  # without parameters nothing is bound: fine


def test_escaped_percent_in_a_key_literal_is_unescaped_with_parameters() -> None:
    sql = "SELECT * FROM orders WHERE customer_id = 'a%%b' AND total > %s"
    assert shards_of(sql, [1]) == (P.config.shard_for("orders", "a%b"),)


def test_sqlite_numbered_placeholders_are_refused() -> None:
    with pytest.raises(shardq.ProgrammingError, match=r"\?1"):
        parse("SELECT * FROM t WHERE id = ?1 AND x = ?2", "sqlite")


def test_mixed_placeholder_styles_are_refused() -> None:
    with pytest.raises(shardq.ProgrammingError, match="mix"):
        parse("SELECT * FROM t WHERE a = %s AND b = %(b)s", "postgres")


@pytest.mark.parametrize(
    ("sql", "line", "column"),
    [("SELECT * FORM t", 1, 15), ("SELECT 1,\n  2 +", 2, 5), ("SELECT (1", 1, 9)],
)
def test_syntax_errors_carry_the_position(sql: str, line: int, column: int) -> None:
    with pytest.raises(shardq.SQLSyntaxError) as info:
        parse(sql, "postgres")
    assert (info.value.line, info.value.column) == (line, column)
    assert f"line {line}" in str(info.value)


@pytest.mark.parametrize(
    ("sql", "dialect", "message"),
    [
        ("SELECT * FORM t", "postgres", 'syntax error at or near "t" (line 1, column 15)'),
        ("SELECT 1 +", "postgres", "syntax error at end of input (line 1, column 10)"),
        ("SELECT a IN (1, 2", "postgres", "syntax error at end of input (line 1, column 17)"),
        ("SELECT a\nWHERE b ==== 3", "postgres", 'at or near "==" (line 2, column 11)'),
        ("SELECT 'it''s' || 'abc", "postgres", 'unterminated quoted string at or near "\'abc"'),
        ('SELECT a,\n "abc', "postgres", 'unterminated quoted identifier at or near ""abc"'),
        ("SELECT * FORM t", "sqlite", 'near "t": syntax error (line 1, column 15)'),
        ("SELECT * FROM t WHERE (", "sqlite", "incomplete input (line 1, column 23)"),
        ("SELECT 'abc", "sqlite", 'unrecognized token: "\'abc" (line 1, column 8)'),
        ("SELECT * FROM t WHERE a = %(a)s", "sqlite", 'near "%": syntax error (line 1, column 27)'),
    ],
)
def test_syntax_errors_are_worded_as_the_database_words_them(
    sql: str, dialect: str, message: str
) -> None:
    with pytest.raises(shardq.SQLSyntaxError) as info:
        parse(sql, dialect)
    assert message in str(info.value)
    assert "sqlglot" not in str(info.value)
    assert "Required keyword" not in str(info.value)
    assert info.value.line is not None
    assert info.value.column is not None


def test_a_psycopg_placeholder_on_sqlite_gets_a_hint() -> None:
    with pytest.raises(shardq.SQLSyntaxError) as info:
        parse("SELECT * FROM orders WHERE customer_id = %s", "sqlite")
    assert str(info.value) == (
        'near "%": syntax error (line 1, column 42); '
        "SQLite shards take ? placeholders (or :name), not %s"
    )
    assert (info.value.line, info.value.column) == (1, 42)
    # a modulo by a column named s is not a placeholder
    assert parse("SELECT a %s FROM t", "sqlite").positional == 0


def test_unparseable_statements_and_several_statements_are_refused() -> None:
    with pytest.raises(shardq.SQLSyntaxError, match="VACUUM"):
        parse("VACUUM orders", "postgres")
    with pytest.raises(shardq.ProgrammingError, match="2 statements"):
        parse("SELECT 1; SELECT 2", "postgres")


@pytest.mark.parametrize(
    ("sql", "params"),
    [
        ("SELECT * FROM orders WHERE customer_id = 42", None),
        ("SELECT * FROM orders WHERE customer_id = '42'", None),
        ("SELECT * FROM orders WHERE customer_id = %s", [42]),
        ("SELECT * FROM orders WHERE customer_id = %(c)s", {"c": 42}),
        ("SELECT * FROM orders WHERE 42 = customer_id", None),
        ("SELECT * FROM orders WHERE customer_id = 42::bigint", None),
        ("SELECT * FROM orders o WHERE o.customer_id = 42 AND o.total > 3", None),
        ("SELECT * FROM orders WHERE (customer_id = 42) AND status = 'x'", None),
        ("SELECT * FROM orders WHERE customer_id IN (42)", None),
    ],
)
def test_equality_on_the_key_pins_one_shard(sql: str, params: Any) -> None:
    assert shards_of(sql, params) == (P.config.shard_for("orders", 42),)


def test_in_list_targets_the_shards_of_its_values() -> None:
    keys = [1, 2, 3, 4, 5, 6]
    expected = {P.config.shard_for("orders", k) for k in keys}
    got = shards_of("SELECT * FROM orders WHERE customer_id IN (%s, %s, %s, %s, %s, %s)", keys)
    assert set(got) == expected


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM orders WHERE customer_id = 42 OR total > 1",
        "SELECT * FROM orders WHERE customer_id > 42",
        "SELECT * FROM orders WHERE customer_id = total",
        "SELECT * FROM orders WHERE NOT customer_id = 42",
        "SELECT * FROM orders o JOIN countries c ON c.code = o.country WHERE customer_id = 42",
        "SELECT * FROM orders o WHERE x.customer_id = 42",
    ],
)
def test_conditions_that_do_not_pin_fan_out(sql: str) -> None:
    assert shards_of(sql) == "all"


def test_a_null_key_or_contradiction_still_answers_correctly() -> None:
    # key = NULL matches no row: any one shard gives the (empty) answer.
    null = shards_of("SELECT * FROM orders WHERE customer_id = %s", [None])
    assert isinstance(null, tuple)
    assert len(null) == 1
    one, two = 1, next(k for k in range(2, 50) if P.config.shard_for("orders", k) != "s1")
    contradiction = shards_of(
        "SELECT * FROM orders WHERE customer_id = %s AND customer_id = %s", [one, two]
    )
    assert isinstance(contradiction, tuple)
    assert len(contradiction) == 1


def test_reference_only_reads_go_to_any_one_shard() -> None:
    assert shards_of("SELECT * FROM countries") == "any"
    assert shards_of("SELECT 1") == "any"
    assert shards_of("SELECT * FROM generate_series(1, 3)") == "any"
    assert shards_of("WITH x AS (SELECT 1) SELECT * FROM x") == "any"
    assert shards_of("SELECT count(*) FROM countries") == "any"


@pytest.mark.parametrize(
    ("sql", "construct"),
    [
        ("SELECT count(*) FROM orders UNION SELECT code FROM countries", "aggregates in the"),
        (
            "(SELECT status FROM orders ORDER BY 1 LIMIT 1) UNION SELECT code FROM countries",
            "inside a branch",
        ),
        ("SELECT row_number() OVER () FROM orders", "window function"),
        ("SELECT * FROM orders o JOIN items i USING (customer_id)", "several distributed"),
        ("SELECT * FROM orders o JOIN items i ON i.total = o.customer_id", "several distributed"),
        (
            "SELECT * FROM orders o JOIN items i ON i.customer_id = o.customer_id OR true",
            "several distributed",
        ),
        ("SELECT jsonb_agg(total) FROM orders", "aggregate"),
        ("SELECT string_agg(status, ',') FROM orders", "aggregate"),
        ("SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY total) FROM orders", "aggregate"),
        (
            "SELECT n.code, o.id FROM countries n LEFT JOIN orders o ON o.country = n.code",
            "LEFT JOIN",
        ),
        ("SELECT * FROM orders o RIGHT JOIN countries n ON o.country = n.code", "RIGHT JOIN"),
        ("SELECT * FROM orders o FULL JOIN countries n ON o.country = n.code", "FULL JOIN"),
        ("WITH s AS (SELECT status FROM orders) SELECT count(*) FROM s, orders", "several"),
        (
            "SELECT * FROM countries c WHERE EXISTS (SELECT 1 FROM orders o "
            "WHERE o.status = c.code)",
            "correlated subquery",
        ),
        (
            "SELECT * FROM orders o WHERE EXISTS (SELECT 1 FROM items i WHERE i.total = o.total)",
            "correlated subquery",
        ),
    ],
)
def test_reads_that_cannot_be_merged_exactly_are_gathered(sql: str, construct: str) -> None:
    # Refused by every merge, for the construct named; gathered to one shard instead.
    gathered(P, sql, construct)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM countries WHERE code IN (SELECT country FROM orders)",
        "SELECT * FROM countries WHERE code IN (SELECT country FROM orders LIMIT 3)",
        "SELECT * FROM (SELECT status, count(*) FROM orders GROUP BY 1) s",
        "SELECT count(*) FROM (SELECT DISTINCT status FROM orders) s",
        # Unqualified, customer_id is the subquery's own column, as PostgreSQL reads it.
        "SELECT * FROM orders o WHERE EXISTS (SELECT 1 FROM items i "
        "WHERE i.customer_id = customer_id)",
        "SELECT * FROM orders o WHERE customer_id NOT IN (SELECT customer_id FROM items)",
        "SELECT * FROM orders WHERE total > (SELECT avg(total) FROM items)",
    ],
)
def test_subqueries_that_are_not_local_run_first(sql: str) -> None:
    plan = P.plan(sql)
    assert plan.deferred is not None
    assert len(plan.deferred.subplans) == 1


def test_left_join_from_the_distributed_table_is_exact() -> None:
    sql = "SELECT o.id, n.name FROM orders o LEFT JOIN countries n ON n.code = o.country"
    assert shards_of(sql) == "all"


def test_the_same_reads_pinned_to_one_shard_are_accepted() -> None:
    plan = P.plan("SELECT count(*) FROM orders WHERE customer_id = 5 GROUP BY status ORDER BY 1")
    assert plan.route.kind is RouteKind.SHARDS
    assert len(plan.route.shards) == 1


def test_writes_route_to_the_key_shard() -> None:
    home = P.config.shard_for("orders", 9)
    plan = P.plan("INSERT INTO orders (customer_id, total) VALUES (%s, %s)", [9, 1])
    assert plan.kind is StatementKind.INSERT
    assert plan.route.shards == (home,)
    assert shards_of("UPDATE orders SET total = 0 WHERE customer_id = 9") == (home,)
    assert shards_of("DELETE FROM orders WHERE customer_id = %s", [9]) == (home,)
    same = [k for k in range(100) if P.config.shard_for("orders", k) == home][:3]
    sql = "INSERT INTO orders (customer_id) VALUES (%s), (%s), (%s)"
    assert shards_of(sql, same) == (home,)


@pytest.mark.parametrize(
    ("sql", "match"),
    [
        ("INSERT INTO orders (total) VALUES (1)", "shard key in its column list"),
        ("INSERT INTO orders VALUES (1, 2)", "shard key in its column list"),
        ("INSERT INTO orders (total) SELECT 1", "INSERT ... SELECT without the shard key"),
        ("INSERT INTO orders (customer_id) VALUES (random())", "literal or a bound"),
        ("INSERT INTO countries (code) VALUES ('x')", "reference table"),
        ("UPDATE orders SET customer_id = customer_id + 1", "each row could move"),
        ("UPDATE orders SET customer_id = total WHERE customer_id = 2", "each row could move"),
        ("UPDATE orders SET (customer_id, total) = (7, 1) WHERE customer_id = 42", "shard key"),
        (
            "INSERT INTO orders (customer_id) VALUES (42) "
            "ON CONFLICT (customer_id) DO UPDATE SET customer_id = 43",
            "shard key",
        ),
        ("INSERT INTO orders (customer_id) VALUES (%s)", "NULL"),
        ("DELETE FROM countries WHERE code IN (SELECT status FROM orders)", "distributed"),
        ("UPDATE countries SET name = random()::text", "another value"),
        ("CREATE VIEW x AS SELECT 1", "not declared"),
        ("CREATE TABLE x (a int)", "not declared"),
        ("CREATE TABLE orders AS SELECT 1", "CREATE TABLE ... AS"),
        ("SELECT * INTO copy FROM orders", "SELECT ... INTO"),
        ("WITH d AS (DELETE FROM orders RETURNING *) SELECT * FROM d", "DELETE inside"),
        (
            "WITH d AS (UPDATE orders SET total = 0 WHERE customer_id = 1 RETURNING *) "
            "SELECT * FROM d",
            "UPDATE inside",
        ),
        ("SET search_path = x", "SET"),
    ],
)
def test_writes_that_are_not_safe_yet_are_refused(sql: str, match: str) -> None:
    with pytest.raises((shardq.UnsupportedQueryError, shardq.ProgrammingError), match=match):
        P.plan(sql, [None] if "%s" in sql else None)


def test_an_update_setting_the_key_moves_rows_to_its_shard() -> None:
    shard_for = P.config.placement.shard_for
    key = next(k for k in range(3, 100) if shard_for(k) != shard_for(2))
    plan = P.plan("UPDATE orders SET customer_id = %s, total = 0 WHERE customer_id = 2", [key])
    assert plan.move is not None
    assert plan.move.target == shard_for(key)
    assert set(plan.route.shards) == {shard_for(2), shard_for(key)}
    assert "RETURNING ctid, CAST(ROW(orders.*) AS TEXT)" in plan.move.pick
    assert plan.move.params == {"_p0": key}
    # The rows already on the new key's shard: a plain UPDATE there.
    same = P.plan(f"UPDATE orders SET customer_id = {key} WHERE customer_id = {key}")
    assert same.move is None
    assert same.route.shards == (shard_for(key),)
    with pytest.raises(shardq.UnsupportedQueryError, match="no two-phase commit"):
        planner("sqlite").plan(f"UPDATE orders SET customer_id = {key} WHERE customer_id = 2")


@pytest.mark.parametrize(
    "sql",
    [
        "WITH orders AS (SELECT 1) DELETE FROM orders WHERE customer_id = 1 OR true",
        "UPDATE orders SET total = 0",
        "DELETE FROM orders WHERE customer_id IN (1, 2, 3, 4, 5, 6, 7, 8)",
    ],
)
def test_updates_and_deletes_not_pinned_run_everywhere_on_postgres_only(sql: str) -> None:
    plan = P.plan(sql)
    assert plan.route.kind is RouteKind.ALL or len(plan.route.shards) > 1
    assert "two-phase commit" in plan.strategy
    sqlite = sql.replace("WITH orders AS (SELECT 1) ", "")
    with pytest.raises(shardq.UnsupportedQueryError, match="no two-phase commit"):
        planner("sqlite").plan(sqlite)


def test_set_operations_concatenate_or_count() -> None:
    # UNION ALL of distributed branches: each shard runs it, ORDER BY merged, LIMIT pushed.
    plan = P.plan(
        "SELECT status FROM orders UNION ALL SELECT status FROM items ORDER BY 1 LIMIT 3 OFFSET 1"
    )
    assert plan.merge.order == (SortKey(0),)
    assert (plan.merge.offset, plan.merge.limit) == (1, 3)
    assert plan.merge.setop is None
    assert plan.sql.endswith("LIMIT 4")
    # the others: each branch's rows tagged with its number, counted by the merge
    plan = P.plan("SELECT status FROM orders EXCEPT ALL SELECT code FROM countries ORDER BY 1")
    assert plan.merge.setop == Counting(SetOp(SetOpKind.EXCEPT, True, 0, 1), 2, frozenset({1}))
    assert plan.merge.sort == (SortKey(0),)
    assert plan.merge.hidden == 1
    assert "1 AS _shardq_branch" in plan.sql
    assert "ORDER BY" not in plan.sql
    # no ALL anywhere: the shards de-duplicate (tagged rows) already
    assert " UNION SELECT " in P.plan("SELECT status FROM orders INTERSECT SELECT 'x'").sql


def test_distinct_on_the_shard_key_runs_on_the_shards() -> None:
    sql = "SELECT DISTINCT ON (customer_id) customer_id, total FROM orders ORDER BY 1, 2 DESC"
    plan = P.plan(sql)
    assert plan.sql == sql
    assert not plan.merge.distinct
    assert plan.merge.order == (SortKey(0), SortKey(1, descending=True, nulls_first=True))
    # Without the key: no merge answers it, the gather does.
    gathered(
        P,
        "SELECT DISTINCT ON (status) status, total FROM orders ORDER BY 1",
        "DISTINCT ON without the shard key",
    )


def test_undeclared_tables_are_refused_but_ctes_are_not_tables() -> None:
    with pytest.raises(shardq.UndeclaredTableError, match="'customers'"):
        P.plan("SELECT * FROM orders o JOIN customers c ON true WHERE o.customer_id = 1")
    P.plan("WITH customers AS (SELECT 1 AS id) SELECT * FROM customers")


@pytest.mark.parametrize(
    ("dialect", "sql"),
    [
        ("postgres", "SELECT c.relname FROM pg_catalog.pg_class c JOIN pg_namespace n "
         "ON n.oid = c.relnamespace WHERE n.nspname = 'public'"),
        ("postgres", "SELECT column_name FROM information_schema.columns WHERE table_name = 'x'"),
        ("sqlite", "SELECT name FROM sqlite_master WHERE type = 'table'"),
        ("sqlite", "SELECT sql FROM (SELECT * FROM main.sqlite_master UNION ALL "
         "SELECT * FROM sqlite_temp_master) WHERE name = 'orders'"),
    ],
)  # fmt: skip
def test_a_read_of_system_catalogs_only_goes_to_the_first_shard(dialect: str, sql: str) -> None:
    # Every shard's catalog describes the same declared tables (SQLAlchemy's reflection),
    # under OIDs of its own: reflection passes one query's OIDs to the next, so always one.
    p = planner(dialect)
    assert shards_of(sql, p=p) == p.config.shard_names[:1]
    assert shards_of("SELECT 1", p=p) == "any"  # a table-free read: any one


@pytest.mark.parametrize(
    ("dialect", "sql"),
    [
        ("postgres", "SELECT * FROM orders, pg_catalog.pg_class"),
        ("postgres", "DELETE FROM pg_catalog.pg_description"),
        ("sqlite", "SELECT * FROM countries JOIN sqlite_master ON name = code"),
        ("sqlite", "DELETE FROM sqlite_master"),
    ],
)
def test_a_system_catalog_beside_a_table_or_written_is_refused(dialect: str, sql: str) -> None:
    with pytest.raises(shardq.UnsupportedQueryError, match="system catalog"):
        planner(dialect).plan(sql)


def test_a_declared_table_named_like_a_catalog_is_the_declared_one() -> None:
    shards = [{"name": f"s{i}", "dsn": "host=x"} for i in range(4)]
    tables = {"pg_items": {"shard_key": "id"}}
    p = Planner(load_config({"dialect": "postgres", "shards": shards, "tables": tables}))
    assert shards_of("SELECT * FROM pg_items WHERE id = 1", p=p) != "any"
    with pytest.raises(shardq.UndeclaredTableError, match="sqlite_master"):
        P.plan("SELECT * FROM sqlite_master")  # a user table on PostgreSQL


def test_sqlite_dialect_routes_qmark_and_named_parameters() -> None:
    p = planner("sqlite")
    home = p.config.shard_for("orders", 77)
    assert shards_of("SELECT * FROM orders WHERE customer_id = ?", [77], p) == (home,)
    assert shards_of("SELECT * FROM orders WHERE customer_id = :c", {"c": 77}, p) == (home,)


def test_missing_parameter_is_a_programming_error() -> None:
    with pytest.raises(shardq.ProgrammingError, match="no value bound"):
        P.plan("SELECT * FROM orders WHERE customer_id = %s", [])


def test_analysis_is_cached_by_text() -> None:
    p = planner()
    sql = "SELECT * FROM orders WHERE customer_id = %s"
    assert p.analyze(sql) is p.analyze(sql)
    # Routing is redone per call: the same text goes where each value lives.
    for key in range(1, 20):
        assert p.plan(sql, [key]).route.shards == (p.config.shard_for("orders", key),)


def _literal(value: object) -> str:
    if isinstance(value, bool | int):
        return str(value)
    if isinstance(value, uuid.UUID):
        return f"'{value}'::uuid"
    if isinstance(value, dt.date):
        return f"DATE '{value.isoformat()}'"
    assert isinstance(value, str)
    return "'" + value.replace("'", "''") + "'"


@given(
    st.one_of(
        st.integers(min_value=-(2**63), max_value=2**63 - 1),
        st.text(alphabet=st.characters(exclude_categories=["Cs", "Cc"]), max_size=20),
        st.uuids(),
        st.dates(),
    )
)
def test_literals_and_bound_parameters_route_alike(value: object) -> None:
    bound = P.plan("SELECT * FROM orders WHERE customer_id = %s", [value]).route
    literal = P.plan(f"SELECT * FROM orders WHERE customer_id = {_literal(value)}").route
    assert bound == literal
    assert bound.shards == (P.config.shard_for("orders", value),)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM orders WHERE customer_id = CAST(42.6 AS INTEGER)",
        "SELECT * FROM orders WHERE customer_id = 42.6::int",
        "SELECT * FROM orders WHERE customer_id = '2024-01-31'::timestamp",
        "SELECT * FROM orders WHERE customer_id = %s::int",
    ],
)
def test_casts_that_may_change_the_value_do_not_pin(sql: str) -> None:
    assert shards_of(sql, ["42.6"] if "%s" in sql else None) == "all"


def test_casts_that_keep_the_value_still_pin() -> None:
    key = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
    assert shards_of(f"SELECT * FROM orders WHERE customer_id = '{key}'::uuid") == (
        P.config.shard_for("orders", uuid.UUID(key)),
    )
    assert shards_of("SELECT * FROM orders WHERE customer_id = 42::bigint") == (
        P.config.shard_for("orders", 42),
    )


@pytest.mark.parametrize(
    ("value", "pinned"),
    [(42, True), (None, True), ("42", False), (42.0, False), (True, False)],
)
def test_a_cast_placeholder_pins_when_its_value_is_of_the_casts_kind(
    value: object, pinned: bool
) -> None:
    # SQLAlchemy's psycopg dialect writes "%(id_1)s::INTEGER" for a typed column.
    sql = "SELECT * FROM orders WHERE orders.customer_id = %(k)s::INTEGER"
    shards = shards_of(sql, {"k": value})
    if pinned and value is not None:
        assert shards == (P.config.shard_for("orders", value),)
    elif pinned:
        assert shards != "all"  # key = NULL matches no row: one shard answers
    else:
        assert shards == "all"
    insert = "INSERT INTO orders (order_id, customer_id) VALUES (1, %(k)s::INTEGER)"
    if pinned and value is not None:
        assert P.plan(insert, {"k": value}).route.shards == (P.config.shard_for("orders", value),)
    elif not pinned:
        with pytest.raises(shardq.UnsupportedQueryError, match="once cast"):
            P.plan(insert, {"k": value})


def test_quoted_identifiers_and_other_schemas_are_not_confused() -> None:
    # "O" (quoted) is orders; the unquoted o is countries: o.customer_id does not pin orders.
    sql = 'SELECT * FROM orders "O" JOIN countries o ON true WHERE o.customer_id = 42'
    assert shards_of(sql) == "all"
    assert shards_of('SELECT * FROM orders WHERE "Customer_Id" = 42') == "all"
    with pytest.raises(shardq.UndeclaredTableError):
        P.plan("SELECT * FROM archive.orders WHERE customer_id = 42")
    assert shards_of("SELECT * FROM public.orders WHERE customer_id = 42") == (
        P.config.shard_for("orders", 42),
    )
    assert shards_of("SELECT * FROM ORDERS WHERE CUSTOMER_ID = 42") == (
        P.config.shard_for("orders", 42),
    )


def test_a_cte_hides_a_table_only_where_it_is_visible() -> None:
    # Inside its own (non-recursive) body, "orders" is the real table.
    assert P.analyze("WITH orders AS (SELECT * FROM orders) SELECT 1 FROM orders").distributed
    # A CTE in a subquery does not hide the outer table.
    analysis = P.analyze(
        "SELECT id FROM orders WHERE EXISTS (WITH orders AS (SELECT 1) SELECT * FROM orders)"
    )
    assert len(analysis.distributed) == 1
    # A later CTE sees an earlier one; a recursive CTE sees itself.
    assert not P.analyze("WITH a AS (SELECT 1), b AS (SELECT * FROM a) SELECT * FROM b").refs
    recursive = "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT * FROM r"
    assert not P.analyze(recursive).refs


def test_parameters_may_be_any_sequence_or_mapping() -> None:
    from types import MappingProxyType

    home = (P.config.shard_for("orders", 5),)
    assert shards_of("SELECT * FROM orders WHERE customer_id = %s", range(5, 6)) == home
    sql = "SELECT * FROM orders WHERE customer_id = %(c)s"
    assert shards_of(sql, MappingProxyType({"c": 5})) == home


SECOND_REVIEW = Planner(
    load_config(
        {
            "dialect": "postgres",
            "shards": [{"name": f"s{i}", "dsn": "host=x"} for i in range(4)],
            "tables": {
                **TABLES,
                "events": {"shard_key": "day"},
                "users": {"shard_key": "login"},
            },
        }
    )
)


@pytest.mark.parametrize(
    ("sql", "match"),
    [
        # An aggregate of an outer column aggregates the outer query.
        ("SELECT (SELECT sum(o.total)) FROM orders o", "in a subquery"),
        ("SELECT (SELECT count(total) FROM countries) FROM orders", "in a subquery"),
        # Parenthesized outer joins hide which side is preserved.
        ("SELECT * FROM (countries n LEFT JOIN orders o ON o.country = n.code)", "nested LEFT"),
        ("SELECT pg_catalog.count(o.id) FROM orders o", "aggregate"),
        ("SELECT jsonb_agg_strict(o.id) FROM orders o", "aggregate"),
    ],
)
def test_second_review_refusals(sql: str, match: str) -> None:
    gathered(SECOND_REVIEW, sql, match)


def test_a_subquery_aggregate_over_its_own_reference_table_is_fine() -> None:
    sql = "SELECT * FROM orders o WHERE o.total > (SELECT max(c.rate) FROM countries c)"
    assert shards_of(sql, None, SECOND_REVIEW) == "all"


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM users WHERE login = 'abcdef'::varchar(3)",
        "SELECT * FROM users WHERE login = CAST('abcdef' AS char)",
        "SELECT * FROM events WHERE day = '20240131'::date",
        "SELECT * FROM events WHERE day = DATE 'Jan 31 2024'",
        "SELECT * FROM events WHERE day = '2024-01-31 10:00:00+05'",
        "SELECT * FROM orders AS o(customer_id, id) WHERE customer_id = 42",
    ],
)
def test_keys_whose_value_depends_on_the_column_type_do_not_pin(sql: str) -> None:
    assert shards_of(sql, None, SECOND_REVIEW) == "all"


def test_canonical_spellings_still_pin() -> None:
    p = SECOND_REVIEW
    assert shards_of("SELECT * FROM events WHERE day = DATE '2024-01-31'", None, p) == (
        p.config.shard_for("events", dt.date(2024, 1, 31)),
    )
    assert shards_of("SELECT * FROM users WHERE login = 'abc'::text", None, p) == (
        p.config.shard_for("users", "abc"),
    )


TYPED = Planner(
    load_config(
        {
            "dialect": "postgres",
            "shards": [{"name": f"s{i}", "dsn": "host=x"} for i in range(4)],
            "tables": {
                "events": {"shard_key": "day", "key_type": "date"},
                "ticks": {"shard_key": "at", "key_type": "timestamptz"},
                "nums": {"shard_key": "n", "key_type": "integer"},
            },
        }
    )
)


@pytest.mark.parametrize(
    ("sql", "params", "pins"),
    [
        ("SELECT * FROM events WHERE day = '2024-01-31'", None, True),
        ("SELECT * FROM events WHERE day = '20240131'", None, False),
        ("SELECT * FROM events WHERE day = 'today'", None, False),
        ("SELECT * FROM events WHERE day = %s", ["20240131"], False),
        ("SELECT * FROM events WHERE day = %s", [dt.date(2024, 1, 31)], True),
        ("SELECT * FROM ticks WHERE at = '2024-01-31 10:00:00'", None, False),
        ("SELECT * FROM ticks WHERE at = %s", ["2024-01-31 10:00:00+00"], True),
        ("SELECT * FROM nums WHERE n = '42'", None, True),
        ("SELECT * FROM nums WHERE n = '4e1'", None, False),
    ],
)
def test_a_declared_key_type_decides_which_text_pins(sql: str, params: Any, pins: bool) -> None:
    assert (shards_of(sql, params, TYPED) != "all") is pins


@pytest.mark.parametrize("dialect", ["postgres", "sqlite"])
def test_an_insert_without_a_column_list_fills_the_columns_in_table_order(dialect: str) -> None:
    p = planner(dialect)
    mark = "%s" if dialect == "postgres" else "?"
    insert = f"INSERT INTO orders VALUES ({mark}, {mark})"
    assert p.wants_catalog(insert)  # where the key is depends on the table's columns
    p.set_catalog(
        {"orders": frozenset({"total", "customer_id"}), "countries": frozenset({"code", "name"})},
        {
            "orders": (ColumnInfo("total"), ColumnInfo("customer_id")),
            "countries": (ColumnInfo("code"), ColumnInfo("name")),
        },
    )
    assert shards_of(insert, [1, 9], p) == (p.config.shard_for("orders", 9),)
    assert shards_of(insert, [9, 1], p) == (p.config.shard_for("orders", 1),)
    # The key column is left to its default: no shard is known.
    with pytest.raises(shardq.UnsupportedQueryError, match="shard key"):
        p.plan(f"INSERT INTO orders VALUES ({mark})", [1])
    if dialect == "sqlite":
        return  # SQLite shards refuse reference writes (no two-phase commit)
    # A reference table's row with every column given is written everywhere; one
    # leaving a column to its default is refused, as with a column list.
    assert shards_of("INSERT INTO countries VALUES ('fr', 'France')", p=p) == "all"
    with pytest.raises(shardq.UnsupportedQueryError, match="without name"):
        p.plan("INSERT INTO countries VALUES ('fr')")


def test_insert_with_text_the_key_type_reads_otherwise_is_refused() -> None:
    with pytest.raises(shardq.UnsupportedQueryError, match="ISO form"):
        TYPED.plan("INSERT INTO events (day) VALUES ('Jan 31 2024')")


def test_colocated_tables_joined_on_their_keys_run_whole_and_pin_together() -> None:
    sql = "SELECT * FROM orders o JOIN items i ON i.customer_id = o.customer_id"
    assert shards_of(sql) == "all"
    home = (P.config.shard_for("orders", 9),)
    assert shards_of(sql + " WHERE o.customer_id = 9") == home
    assert shards_of(sql + " WHERE i.customer_id = %s", [9]) == home
    left = "SELECT * FROM orders o LEFT JOIN items i ON i.customer_id = o.customer_id"
    assert shards_of(left) == "all"


def test_tables_not_declared_colocated_are_refused_even_on_equal_keys() -> None:
    p = Planner(
        load_config(
            {
                "dialect": "postgres",
                "shards": [{"name": f"s{i}", "dsn": "host=x"} for i in range(2)],
                "tables": {"a": {"shard_key": "k"}, "b": {"shard_key": "k"}},
            }
        )
    )
    gathered(p, "SELECT * FROM a JOIN b ON b.k = a.k", "not co-located")


@pytest.mark.parametrize(
    "sql",
    [
        # A LEFT join's ON never links two preserved tables, directly or through the joined one.
        "SELECT * FROM orders o CROSS JOIN items i "
        "LEFT JOIN orders m ON o.customer_id = i.customer_id AND m.customer_id = o.customer_id",
        "SELECT * FROM orders o LEFT JOIN items i ON o.total = i.total "
        "LEFT JOIN orders m ON m.customer_id = i.customer_id AND m.customer_id = o.customer_id",
    ],
)
def test_left_join_conditions_do_not_colocate_the_preserved_tables(sql: str) -> None:
    gathered(P, sql, "several distributed")


def test_colocated_tables_must_share_their_key_type() -> None:
    with pytest.raises(shardq.ConfigError, match="same key_type"):
        load_config(
            {
                "shards": [{"name": "a", "dsn": "a.db"}],
                "tables": {
                    "a": {"shard_key": "k", "key_type": "date"},
                    "b": {"shard_key": "k", "key_type": "timestamptz", "colocate_with": "a"},
                },
            }
        )


def test_a_trailing_semicolon_and_comment_are_one_statement() -> None:
    for sql in ["SELECT * FROM orders WHERE customer_id = 1;",
                "SELECT * FROM orders WHERE customer_id = 1; -- trailing"]:  # fmt: skip
        assert P.plan(sql).route.kind is RouteKind.SHARDS
    with pytest.raises(shardq.ProgrammingError, match="2 statements"):
        P.plan("SELECT 1; SELECT 2")


def _router_planner() -> Planner:
    tables = {
        "orders": {"shard_key": "customer_id"},  # no declared type: text taken as written
        "accounts": {"shard_key": "id", "key_type": "integer"},
        "countries": {"reference": True},
    }
    shards = [{"name": f"s{i}", "dsn": "host=x"} for i in range(4)]
    return Planner(load_config({"dialect": "postgres", "shards": shards, "tables": tables}))


ROUTED = _router_planner()
_VALUES = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.booleans(),
    st.none(),
    st.floats(allow_nan=False),
    st.text(alphabet="0123456789-ab ", max_size=6),
    st.uuids(),
    st.dates(),
)


@given(
    st.sampled_from(
        [
            "SELECT * FROM orders WHERE customer_id = %s",
            "SELECT * FROM accounts WHERE id = %s AND 1 = 1",
            "SELECT * FROM orders WHERE customer_id = %(key)s",
            "SELECT * FROM accounts WHERE %s = id",
        ]
    ),
    _VALUES,
    st.sampled_from(["tuple", "list", "dict", "short"]),
)
def test_the_batch_router_agrees_with_the_planner(sql: str, value: object, shape: str) -> None:
    # The quick router of a batch may decline (None: the general path plans
    # it), but whatever shard it names is the plan's one shard, the SQL and
    # the parameters passed through unchanged.
    params: Any
    if "%(key)s" in sql:
        params = {"key": value} if shape != "short" else {}
    else:
        params = {"tuple": (value,), "list": [value], "dict": {"key": value}, "short": ()}[shape]
    router = ROUTED.router(sql)
    assert router is not None
    shard = router(params)
    if shard is None:
        return
    plan = ROUTED.plan(sql, params)
    assert plan.route.shards == (shard,)
    assert (plan.sql, plan.params) == (sql, params)
    assert plan.merge.trivial
    assert plan.deferred is None


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM orders WHERE customer_id IN (%s, %s)",  # two values
        "SELECT * FROM orders WHERE customer_id = %s AND customer_id = %s",  # two terms
        "SELECT * FROM orders WHERE customer_id = %s::int",  # a cast
        "SELECT * FROM orders WHERE customer_id = 7",  # a literal
        "SELECT count(*) FROM orders",  # no key term
        "SELECT * FROM countries WHERE code = %s",  # a reference table
        "UPDATE orders SET total = 1 WHERE customer_id = %s",  # a write
        "SELECT * FROM orders o JOIN items i ON i.customer_id = o.customer_id "
        "WHERE o.customer_id = %s",  # two distributed tables
    ],
)
def test_other_shapes_have_no_batch_router(sql: str) -> None:
    assert P.router(sql) is None
