"""The rewrite of multi-shard reads: per-shard SQL, merge plans, names, EXPLAIN."""

from __future__ import annotations

from typing import Any

import pytest

import shardq
from shardq.merge.steps import Call, Col, Combine, SortKey
from shardq.sql.plan import Planner
from tests.unit.test_gather import gathered

CONFIG = shardq.load_config(
    {
        "dialect": "postgres",
        "shards": [{"name": f"s{i}", "dsn": f"postgresql://u@h{i}/d"} for i in range(3)],
        "tables": {
            "orders": {"shard_key": "id"},
            "lines": {"shard_key": "order_id", "colocate_with": "orders"},
            "countries": {"reference": True},
        },
    }
)


@pytest.fixture
def planner() -> Planner:
    return Planner(CONFIG)


def test_a_plain_filter_runs_as_written(planner: Planner) -> None:
    sql = "SELECT * FROM orders WHERE total > %s"
    plan = planner.plan(sql, [5])
    assert plan.sql == sql
    assert plan.params == [5]
    assert plan.merge.trivial


def test_order_by_limit_offset_run_as_limit_n_plus_m(planner: Planner) -> None:
    plan = planner.plan("SELECT id, total FROM orders ORDER BY total DESC LIMIT 10 OFFSET 5")
    assert plan.sql == "SELECT id, total FROM orders ORDER BY total DESC LIMIT 15"
    assert plan.merge.order == (SortKey(1, descending=True, nulls_first=True),)
    assert (plan.merge.offset, plan.merge.limit) == (5, 10)


def test_bound_limits_stay_parameters_of_the_shard_sql(planner: Planner) -> None:
    plan = planner.plan("SELECT id FROM orders ORDER BY id LIMIT %s OFFSET %s", [3, 4])
    assert plan.sql == "SELECT id FROM orders ORDER BY id LIMIT %(_p0)s + %(_p1)s"
    assert plan.params == {"_p0": 3, "_p1": 4}
    assert (plan.merge.offset, plan.merge.limit) == (4, 3)
    again = planner.plan("SELECT id FROM orders ORDER BY id LIMIT %s OFFSET %s", [1, 0])
    assert (again.merge.offset, again.merge.limit) == (0, 1)


def test_sort_expressions_not_selected_become_helper_columns(planner: Planner) -> None:
    plan = planner.plan("SELECT * FROM orders ORDER BY total * 2, id")
    assert (
        plan.sql
        == "SELECT *, total * 2 AS _shardq_o0, id AS _shardq_o1 FROM orders ORDER BY total * 2, id"
    )
    assert plan.merge.order == (SortKey(-2), SortKey(-1))
    assert plan.merge.hidden == 2


def test_aggregates_become_partials(planner: Planner) -> None:
    plan = planner.plan(
        "SELECT status, avg(total) AS mean, count(DISTINCT customer) FROM orders "
        "GROUP BY status HAVING sum(total) > 10 ORDER BY mean DESC LIMIT 2"
    )
    assert plan.sql == (
        "SELECT status AS _shardq_g0, SUM(total) AS _shardq_a0, COUNT(total) AS _shardq_a1, "
        "customer AS _shardq_a2 FROM orders GROUP BY status, customer"
    )
    merge = plan.merge
    assert merge.aggregate is not None
    assert merge.aggregate.combines == (Combine.SUM, Combine.COUNT, Combine.SET)
    assert merge.having == Call(">", (Col(1), merge.having.args[1]))  # type: ignore[union-attr]
    assert [o.name for o in merge.outputs or ()] == ["status", "mean", "count"]
    assert merge.outputs[1].expr == Call("avg", (Col(1), Col(2)))  # type: ignore[index]
    assert merge.sort == (SortKey(1, descending=True, nulls_first=True),)
    assert (merge.offset, merge.limit) == (0, 2)


def test_groups_with_the_shard_key_run_whole_on_each_shard(planner: Planner) -> None:
    sql = (
        "SELECT o.id, count(*) FROM orders o JOIN lines l ON l.order_id = o.id "
        "GROUP BY o.id HAVING count(*) > 2 ORDER BY 2 DESC LIMIT 5"
    )
    plan = planner.plan(sql)
    assert plan.merge.aggregate is None
    assert "HAVING COUNT(*) > 2" in plan.sql
    assert plan.merge.order == (SortKey(1, descending=True, nulls_first=True),)
    assert "whole groups" in plan.strategy


def test_output_names_follow_postgresql(planner: Planner) -> None:
    plan = planner.plan(
        'SELECT count(*), sum(total) / 2, round(avg(total), 1), max(total) AS "Top", '
        "coalesce(min(total), 0)::int FROM orders"
    )
    assert [o.name for o in plan.merge.outputs or ()] == [
        "count", "?column?", "round", "Top", "coalesce"
    ]  # fmt: skip


def test_refusals_name_the_construct(planner: Planner) -> None:
    sql = "SELECT string_agg(status, ',') FROM orders"
    with pytest.raises(shardq.UnsupportedQueryError) as info:
        planner.distributed(planner.analyze(sql))
    assert info.value.construct == "the aggregate STRING_AGG(status, ',') across shards"
    assert "cannot be combined" in info.value.reason
    # The refusal is cached with the analysis and raised again, unchanged.
    with pytest.raises(shardq.UnsupportedQueryError, match="STRING_AGG"):
        planner.distributed(planner.analyze(sql))
    # No merge answers it: the plan gathers orders to one shard instead.
    plan = planner.plan(sql)
    assert plan.gather is not None
    assert [t.name for t in plan.gather.tables] == ["orders"]
    assert plan.sql == sql


def test_a_pinned_or_reference_read_is_not_rewritten(planner: Planner) -> None:
    sql = "SELECT status, count(*) FROM orders WHERE id = 7 GROUP BY status ORDER BY 2 LIMIT 1"
    plan = planner.plan(sql)
    assert plan.sql == sql
    assert plan.merge.trivial
    assert "pins" in plan.strategy
    assert planner.plan("SELECT count(*) FROM countries").merge.trivial


def test_explain_names_shards_sql_and_merge_steps(planner: Planner) -> None:
    from shardq.sql.explain import explain

    plan = planner.plan("SELECT status, count(*) FROM orders GROUP BY status ORDER BY 2 DESC")
    text = explain(plan, ("s0", "s1", "s2"), total=3)
    assert "Distributed query on 3 of 3 shards: s0, s1, s2" in text
    assert "SELECT status AS _shardq_g0, COUNT(*) AS _shardq_a0 FROM orders GROUP BY status" in text
    assert "regroup by column 1: column 2 = count (sum of partials)" in text
    assert "sort by count DESC NULLS FIRST" in text


def test_explain_shows_set_operations_ties_and_variance_states(planner: Planner) -> None:
    from shardq.sql.explain import explain

    plan = planner.plan(
        "SELECT status FROM orders EXCEPT ALL SELECT code FROM countries INTERSECT "
        "SELECT status FROM lines ORDER BY 1 FETCH FIRST 2 ROWS WITH TIES"
    )
    text = explain(plan, ("s0", "s1"), total=2)
    assert "(branch 1 EXCEPT ALL (branch 2 INTERSECT branch 3))" in text
    assert "keep rows 1 to 2 and the rows tying with the last" in text
    assert "drop the branch column" in text
    plan = planner.plan("SELECT status, stddev(total) FROM orders GROUP BY status")
    assert "float variance states" in explain(plan, ("s0", "s1"), total=2)


def test_a_repeated_statement_is_parsed_and_rewritten_once(
    planner: Planner, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shardq.sql.plan as plan_module

    calls = {"parse": 0, "distribute": 0}

    def counted(name: str) -> Any:
        original = getattr(plan_module, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            calls[name] += 1
            return original(*args, **kwargs)

        return wrapper

    for name in calls:
        monkeypatch.setattr(plan_module, name, counted(name))
    sql = "SELECT status, avg(total) FROM orders WHERE total > %s GROUP BY 1 ORDER BY 2 LIMIT %s"
    limits = [planner.plan(sql, [i, i + 1]).merge.limit for i in range(50)]
    assert limits == [i + 1 for i in range(50)]  # the parameters are bound per call
    assert calls == {"parse": 1, "distribute": 1}


def test_a_subquery_that_is_not_local_runs_first(planner: Planner) -> None:
    from shardq.sql.explain import explain
    from shardq.sql.subplans import Result

    sql = (
        "WITH per AS (SELECT status, sum(total) AS total FROM orders GROUP BY status) "
        "SELECT c.name, per.total FROM countries c JOIN per ON per.status = c.code "
        "WHERE per.total > %s"
    )
    plan = planner.plan(sql, [10])
    assert plan.deferred is not None
    (first,) = plan.deferred.subplans
    assert first.sql == "SELECT status, SUM(total) AS total FROM orders GROUP BY status"
    text = explain(plan, ("s0",), total=3)
    assert "Runs first, each planned and merged on its own:" in text
    final, params = plan.deferred.substitute(
        [Result(("status", "total"), (25, 1700), [("a", 1), ("b", None)])], [10]
    )
    assert final == (
        'WITH per AS (SELECT c1 AS "status", c2 AS "total" FROM UNNEST('
        "CAST(%(_shardq_m0_0)s AS TEXT[]), CAST(%(_shardq_m0_1)s AS DECIMAL[])) "
        "AS _shardq_m0(c1, c2)) "
        "SELECT c.name, per.total FROM countries AS c JOIN per ON per.status = c.code "
        "WHERE per.total > %(_p0)s"
    )
    assert params == {"_p0": 10, "_shardq_m0_0": ["a", "b"], "_shardq_m0_1": [1, None]}
    # The statement with its results in place reads reference tables only: one shard.
    assert planner.plan(final, params).route.kind.name == "ANY"


def test_a_correlated_subquery_is_not_run_first(planner: Planner) -> None:
    sql = "SELECT * FROM countries c WHERE EXISTS (SELECT 1 FROM orders o WHERE o.status = c.code)"
    gathered(planner, sql, "correlated subquery")


def test_the_catalog_tells_an_outer_column_from_the_subquerys_own() -> None:
    config = shardq.load_config(
        {
            "dialect": "postgres",
            "shards": [{"name": f"s{i}", "dsn": f"postgresql://u@h{i}/d"} for i in range(2)],
            "tables": {
                "orders": {"shard_key": "o_key"},
                "lines": {"shard_key": "l_key", "colocate_with": "orders"},
            },
        }
    )
    sql = (
        "SELECT o_status, count(*) FROM orders WHERE EXISTS "
        "(SELECT * FROM lines WHERE l_key = o_key AND l_qty > 5) GROUP BY o_status"
    )
    planner = Planner(config)
    assert planner.wants_catalog(sql)
    # Without the schema, o_key may be a column of lines: the subquery would run first.
    assert planner.plan(sql).deferred is not None
    planner.set_catalog(
        {"orders": frozenset({"o_key", "o_status"}), "lines": frozenset({"l_key", "l_qty"})}
    )
    assert not planner.wants_catalog(sql)
    plan = planner.plan(sql)
    assert plan.deferred is None  # correlated on the key: runs whole on each shard
    assert plan.merge.aggregate is not None
    # And a correlation on another column is refused by every merge before any
    # shard is asked: gathered to one shard instead.
    gathered(
        planner,
        "SELECT count(*) FROM orders WHERE EXISTS (SELECT * FROM lines WHERE l_qty = o_status)",
        "correlated subquery",
    )


def test_groups_ordered_by_their_key_are_merged_as_they_close(planner: Planner) -> None:
    from shardq.merge.drive import drive_sync
    from shardq.merge.evaluate import semantics
    from shardq.merge.pipeline import merger

    plan = planner.plan(
        "SELECT status, count(*) FROM orders GROUP BY status ORDER BY status DESC LIMIT 2"
    )
    assert plan.sql.endswith("GROUP BY status ORDER BY 1 DESC")  # NULLS FIRST: the default
    assert plan.merge.aggregate is not None
    assert plan.merge.aggregate.sorted
    # Each shard's partial rows, sorted on the key, in batches.
    shards = [[[("c", 1), ("b", 2)], [("a", 5)]], [[("c", 3)], [("a", 1)]]]
    rows = drive_sync(merger(plan.merge, 2, semantics("postgres")), shards)  # type: ignore[arg-type]
    assert rows == [("c", 4), ("b", 2)]
    # Ordered by something else, the groups are merged in memory and sorted.
    other = planner.plan("SELECT status, count(*) FROM orders GROUP BY status ORDER BY 2")
    assert other.merge.aggregate is not None
    assert not other.merge.aggregate.sorted
