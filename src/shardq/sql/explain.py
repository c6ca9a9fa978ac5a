"""EXPLAIN: a plan in words a person can check.

:func:`explain` renders a :class:`~shardq.sql.plan.QueryPlan`: the target
shards, the exact SQL each runs, and the merge steps in the order the merger
applies them. With EXPLAIN ANALYZE the engine adds what happened: per shard,
the rows received and when its last row arrived.

>>> from shardq.config import load_config
>>> from shardq.sql.plan import Planner
>>> shards = [{"name": "a", "dsn": "postgresql:///a"}, {"name": "b", "dsn": "postgresql:///b"}]
>>> cfg = load_config({"dialect": "postgres", "shards": shards,
...                    "tables": {"t": {"shard_key": "k"}}})
>>> plan = Planner(cfg).plan("SELECT g, count(*) AS n FROM t GROUP BY g ORDER BY n DESC LIMIT 3")
>>> print(explain(plan, ("a", "b"), total=2))
Distributed query on 2 of 2 shards: a, b
Strategy: partial aggregates on each shard, regrouped after the merge
Each shard runs:
  SELECT g AS _shardq_g0, COUNT(*) AS _shardq_a0 FROM t GROUP BY g
Merge:
  1. regroup by column 1: column 2 = count (sum of partials)
  2. compute: g = col1, n = col2
  3. sort by n DESC NULLS FIRST
  4. keep rows 1 to 3

On SQLite shards the final step is SQLite's own:

>>> cfg = load_config({"shards": [{"name": "a", "dsn": "a.db"}, {"name": "b", "dsn": "b.db"}],
...                    "tables": {"t": {"shard_key": "k"}}})
>>> plan = Planner(cfg).plan("SELECT g, count(*) AS n FROM t GROUP BY g ORDER BY n DESC LIMIT 3")
>>> for line in explain(plan, ("a", "b"), total=2).splitlines()[2:]:
...     print(line)
Each shard runs:
  SELECT g AS _shardq_g0, COUNT(*) AS _shardq_a0 FROM t GROUP BY g
Merge:
  1. load the shards' rows into an in-memory SQLite table _shardq_p(_shardq_g0, _shardq_a0)
  2. compute there: SELECT _shardq_g0 AS "g", COALESCE(SUM(_shardq_a0), 0) AS "n" FROM _shardq_p ...
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from shardq.merge.steps import Call, Col, Combine, Const, Expr, MergePlan, Param, SetOp, SortKey

if TYPE_CHECKING:
    from shardq.sql.plan import QueryPlan

__all__ = ["Analyzed", "ShardRun", "explain", "merge_steps"]

_COMBINE_WORDS = {
    Combine.COUNT: "count (sum of partials)",
    Combine.SUM: "sum",
    Combine.MIN: "min",
    Combine.MAX: "max",
    Combine.BOOL_AND: "bool_and",
    Combine.BOOL_OR: "bool_or",
    Combine.SET: "distinct values (united)",
    Combine.ANY: "same on every shard (a function of the key)",
    Combine.FLOAT_VAR: "float variance states (combined as float8_combine)",
}
_INFIX = {"+", "-", "*", "/", "%", "=", "<>", "<", "<=", ">", ">=", "and", "or", "||"}


@dataclass(frozen=True, slots=True)
class ShardRun:
    """What one shard did under EXPLAIN ANALYZE."""

    shard: str
    rows: int
    seconds: float | None  # when its last row arrived; None if the merge stopped it early


@dataclass(frozen=True, slots=True)
class Analyzed:
    """The measured part of EXPLAIN ANALYZE."""

    runs: tuple[ShardRun, ...]
    rows: int
    seconds: float
    merge_seconds: float = 0.0
    notes: tuple[str, ...] = field(default=())


def _show(expr: Expr) -> str:
    if isinstance(expr, Col):
        return f"col{expr.index + 1}"
    if isinstance(expr, Const):
        return "NULL" if expr.value is None else repr(expr.value) if isinstance(
            expr.value, str) else str(expr.value)  # fmt: skip
    if isinstance(expr, Param):
        return f"%({expr.name})s"
    assert isinstance(expr, Call)
    if expr.op in _INFIX and len(expr.args) == 2:
        left, right = (_show(a) for a in expr.args)
        return f"({left} {expr.op.upper() if expr.op.isalpha() else expr.op} {right})"
    return f"{expr.op}({', '.join(_show(a) for a in expr.args)})"


def _sort(keys: tuple[SortKey, ...], names: list[str] | None) -> str:
    terms = []
    for key in keys:
        name = names[key.column] if names and key.column >= 0 else f"col{key.column + 1}"
        if key.column < 0:
            name = f"helper column {-key.column}"
        direction = "DESC" if key.descending else "ASC"
        nulls = "NULLS FIRST" if key.nulls_first else "NULLS LAST"
        terms.append(f"{name} {direction} {nulls}")
    return ", ".join(terms)


def _setop(node: SetOp | int) -> str:
    if isinstance(node, int):
        return f"branch {node + 1}"
    word = f"{node.kind.value.upper()}{' ALL' if node.all else ''}"
    return f"({_setop(node.left)} {word} {_setop(node.right)})"


def merge_steps(merge: MergePlan) -> list[str]:
    """The merge plan as numbered sentences."""
    steps = []
    if merge.final is not None:
        columns = ", ".join(merge.final.columns)
        return [
            f"load the shards' rows into an in-memory SQLite table {merge.final.table}({columns})",
            f"compute there: {merge.final.sql}",
        ]
    if merge.trivial:
        return ["concatenate the shards' rows as they arrive"]
    if merge.order:
        steps.append(f"k-way merge of the shards' sorted rows on {_sort(merge.order, None)}")
    if merge.setop is not None:
        steps.append(
            f"count each row per branch (the last column numbers the branch), then "
            f"{_setop(merge.setop.tree)}; each row as many times as that says"
        )
    if merge.aggregate is not None:
        spec = merge.aggregate
        keys = ", ".join(f"column {i + 1}" for i in range(spec.groups)) or "nothing (one row)"
        parts = ", ".join(
            f"column {spec.groups + i + 1} = {_COMBINE_WORDS[c]}"
            for i, c in enumerate(spec.combines)
        )
        how = ", each group as it closes (rows arrive sorted on it)" if spec.sorted else ""
        steps.append(f"regroup by {keys}{how}: {parts}")
    if merge.having is not None:
        steps.append(f"HAVING {_show(merge.having)}")
    names = None
    if merge.outputs is not None:
        names = [o.name for o in merge.outputs]
        shown = ", ".join(f"{o.name} = {_show(o.expr)}" for o in merge.outputs)
        steps.append(f"compute: {shown}")
    if merge.distinct:
        steps.append("remove duplicate rows")
    if merge.sort:
        steps.append(f"sort by {_sort(merge.sort, names)}")
    if merge.offset or merge.limit is not None:
        end = "the end" if merge.limit is None else str(merge.offset + merge.limit)
        ties = " and the rows tying with the last" if merge.ties else ""
        steps.append(f"keep rows {merge.offset + 1} to {end}{ties}")
    if merge.setop is not None:
        steps.append("drop the branch column")
    elif merge.hidden:
        steps.append(f"drop the {merge.hidden} helper column(s) added for sorting")
    return steps


def _feed_lines(plan: QueryPlan) -> list[str]:
    """A routed INSERT ... SELECT: its read, then the INSERT each batch of rows makes."""
    feed = plan.feed
    assert feed is not None
    insert, _ = feed.inserts.statement(1, feed.inserts.widest, feed.escaped)
    lines = ["Runs first, planned and merged as a query of its own:", f"  {feed.select}"]
    if feed.params:
        lines.append(f"  with parameters {feed.params!r}")
    lines.append(
        f"Then, on the shard of each row's key, up to {feed.rows_per_insert(feed.inserts.widest)} "
        "rows at a time (one VALUES row per selected row):"
    )
    lines.append(f"  {insert}")
    return lines


def explain(
    plan: QueryPlan, shards: tuple[str, ...], *, total: int, analyzed: Analyzed | None = None
) -> str:
    """Render ``plan`` (run on ``shards`` of ``total``); with ``analyzed``, what happened."""
    count = f"{len(shards)} of {total}"
    lines = []
    if len(shards) == 1:
        lines.append(f"Single-shard query on {shards[0]}")
    else:
        lines.append(f"Distributed query on {count} shards: {', '.join(shards)}")
    lines.append(f"Strategy: {plan.strategy}")
    if plan.deferred is not None:
        lines = [lines[-1], "Runs first, each planned and merged on its own:"]
        for i, subplan in enumerate(plan.deferred.subplans, 1):
            lines.append(f"  {i}. {subplan.sql}")
        lines.append("Then, with each result in place as parameters (one array per column):")
        lines.append(f"  {plan.deferred.template.sql(plan.deferred.dialect)}")
        if analyzed is not None:
            lines.append(f"Execution: {analyzed.rows} rows in {analyzed.seconds * 1000:.1f} ms")
            lines += [f"  {note}" for note in analyzed.notes]
        return "\n".join(lines)
    if plan.feed is not None:
        return "\n".join([*lines, *_feed_lines(plan)])
    if plan.gather is not None:
        lines = [f"Gathered query on {shards[0]}", lines[-1]]
        lines.append(f"Gathered to shard {shards[0]}, each into a temporary table of its name:")
        lines += [f"  {table.name} ({table.select})" for table in plan.gather.tables]
        lines.append("Then the shard runs, as written:")
        lines += [f"  {line}" for line in plan.sql.strip().splitlines()]
        if analyzed is not None:
            lines.append(f"Execution: {analyzed.rows} rows in {analyzed.seconds * 1000:.1f} ms")
            lines += [f"  {note}" for note in analyzed.notes]
        return "\n".join(lines)
    lines.append("Each shard runs:" if len(shards) > 1 else "The shard runs:")
    lines += [f"  {line}" for line in plan.sql.strip().splitlines()]
    if plan.params:
        lines.append(f"  with parameters {plan.params!r}")
    lines.append("Merge:")
    lines += [f"  {i}. {step}" for i, step in enumerate(merge_steps(plan.merge), 1)]
    if analyzed is not None:
        lines.append(
            f"Execution: {analyzed.rows} rows in {analyzed.seconds * 1000:.1f} ms "
            f"(merging {analyzed.merge_seconds * 1000:.1f} ms)"
        )
        for run in analyzed.runs:
            done = (
                f"done at {run.seconds * 1000:.1f} ms"
                if run.seconds is not None
                else "stopped early: the merge needed no more rows"
            )
            lines.append(f"  {run.shard}: {run.rows} rows received, {done}")
        lines += [f"  {note}" for note in analyzed.notes]
    return "\n".join(lines)
