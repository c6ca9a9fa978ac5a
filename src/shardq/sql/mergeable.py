"""Which multi-shard reads a plain concatenation answers exactly.

Until the planner rewrites queries and merges their results, a read that
runs on several shards is answered by concatenating the shards' rows. That is
exact only for a filter over one distributed table (and reference tables):
each answer row comes from exactly one shard. Anything that combines rows
across shards (aggregates, grouping, DISTINCT, ORDER BY, LIMIT, window
functions, set operations, joins of two distributed tables) would come back
wrong, so it is refused with an error that names the construct.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlglot import exp

from shardq.errors import UnsupportedQueryError
from shardq.sql.colocation import joined_on_keys

if TYPE_CHECKING:
    from shardq.config import Config
    from shardq.sql.analyze import Analysis

__all__ = ["check_concatenable"]

_REASON = (
    "the query runs on several shards and its rows would have to be combined "
    "across shards, which this version of shardq cannot do exactly yet; pin it to "
    "one shard with a shard-key condition"
)
_CLAUSES = {
    "group": "GROUP BY",
    "having": "HAVING",
    "distinct": "DISTINCT",
    "order": "ORDER BY",
    "limit": "LIMIT",
    "offset": "OFFSET",
}


# Aggregates sqlglot parses as plain function calls (exp.Anonymous). A
# user-defined aggregate cannot be told from a function by its text: the
# README says so.
_AGGREGATE_NAMES = frozenset(
    {
        "array_agg", "bit_and", "bit_or", "bit_xor", "bool_and", "bool_or", "every",
        "group_concat", "json_agg", "json_group_array", "json_group_object", "json_object_agg",
        "jsonb_agg", "jsonb_object_agg", "range_agg", "range_intersect_agg", "string_agg",
        "total", "xmlagg", "mode", "percentile_cont", "percentile_disc", "regr_count",
        "regr_avgx", "regr_avgy", "regr_intercept", "regr_r2", "regr_slope", "regr_sxx",
        "regr_sxy", "regr_syy", "corr", "covar_pop", "covar_samp", "stddev", "stddev_pop",
        "stddev_samp", "variance", "var_pop", "var_samp", "any_value",
        "count", "sum", "avg", "min", "max", "json_agg_strict", "jsonb_agg_strict",
        "json_object_agg_strict", "json_object_agg_unique", "json_object_agg_unique_strict",
        "jsonb_object_agg_strict", "jsonb_object_agg_unique", "jsonb_object_agg_unique_strict",
        "json_arrayagg", "json_objectagg", "jsonb_group_array", "jsonb_group_object",
        "percentile", "median",
    }
)  # fmt: skip


def _is_aggregate(node: exp.Expr) -> bool:
    if isinstance(node, exp.AggFunc):
        return True
    if isinstance(node, exp.Anonymous):
        return str(node.this).lower() in _AGGREGATE_NAMES
    # FILTER (WHERE ...) and WITHIN GROUP (...) only follow aggregates.
    return isinstance(node, exp.Filter | exp.WithinGroup)


def _check_outer_joins(statement: exp.Select, analysis: Analysis) -> None:
    """Refuse outer joins whose preserved side is not the distributed table.

    ``dist LEFT JOIN ref`` is exact: each distributed row is on one shard.
    But every shard would emit the unmatched rows of a preserved reference
    table (``ref LEFT JOIN dist``, ``RIGHT``, ``FULL``), once per shard.
    """
    from_ = statement.args.get("from_") or statement.args.get("from")
    first = from_.this if isinstance(from_, exp.From) else None
    first_is_distributed = any(ref.node is first for ref in analysis.distributed)
    top = statement.args.get("joins") or []
    for join in statement.find_all(exp.Join):
        if join.parent_select is statement and not any(join is j for j in top):
            # A parenthesized join, FROM (a LEFT JOIN b): which side is preserved
            # is not checked here, so outer ones are refused.
            side = (join.side or "").upper()
            if side in ("LEFT", "RIGHT", "FULL"):
                raise UnsupportedQueryError(f"a nested {side} JOIN across shards", _OUTER_REASON)
    for join in top:
        side = (join.side or "").upper()
        if side in ("RIGHT", "FULL") or (side == "LEFT" and not first_is_distributed):
            raise UnsupportedQueryError(f"a {side} JOIN across shards", _OUTER_REASON)


_OUTER_REASON = (
    "every shard would return the rows of the preserved side that find no match, so they "
    "would repeat once per shard; write the distributed table first and LEFT JOIN the "
    "reference tables to it, or pin the query to one shard"
)


def _may_aggregate_outer(node: exp.Expr) -> bool:
    """Whether an aggregate in a subquery might refer to the outer query's columns.

    Only columns qualified by a table of the subquery's own FROM are known to
    be its own; an unqualified one may belong to an outer table.
    """
    inner = node.parent_select
    if inner is None:
        return True
    own = {
        (t.alias_or_name or "").lower()
        for t in inner.find_all(exp.Table, exp.Subquery)
        if t.parent_select is inner
    }
    columns = list(node.find_all(exp.Column))
    if not own:
        return True
    return any(not c.table or c.table.lower() not in own for c in columns)


def _own(node: exp.Expr, select: exp.Select) -> bool:
    """Whether ``node`` belongs to ``select`` itself, not to a nested query."""
    return node.parent_select is select


def check_concatenable(analysis: Analysis, config: Config) -> None:
    """Raise :class:`UnsupportedQueryError` unless concatenation answers the read exactly.

    >>> import sqlglot
    >>> from shardq.config import load_config
    >>> from shardq.sql.analyze import analyze
    >>> from shardq.sql.parse import parse
    >>> cfg = load_config({"shards": [{"name": "a", "dsn": "a.db"}],
    ...                    "tables": {"t": {"shard_key": "k"}}})
    >>> check_concatenable(analyze(parse("SELECT * FROM t WHERE x > 1", "sqlite"), cfg), cfg)
    >>> check_concatenable(analyze(parse("SELECT count(*) FROM t", "sqlite"), cfg), cfg)
    Traceback (most recent call last):
    ...
    shardq.errors.UnsupportedQueryError: the aggregate COUNT(*) across shards is not supported: ...
    """
    statement = analysis.parsed.expression
    if not isinstance(statement, exp.Select):
        raise UnsupportedQueryError(f"{statement.key.upper()} across shards", _REASON)
    for arg, clause in _CLAUSES.items():
        if statement.args.get(arg):
            raise UnsupportedQueryError(f"{clause} across shards", _REASON)
    dialect = analysis.parsed.dialect
    for node in statement.find_all(exp.Func, exp.Window, exp.Filter, exp.WithinGroup):
        if not _own(node, statement):
            if _is_aggregate(node) and _may_aggregate_outer(node):
                raise UnsupportedQueryError(
                    f"the aggregate {node.sql(dialect)} in a subquery across shards",
                    "it may aggregate the outer query's rows (a column of the outer query "
                    "makes it an aggregate of the outer query); " + _REASON,
                )
            continue
        if isinstance(node, exp.Window):
            raise UnsupportedQueryError(
                f"the window function {node.sql(dialect)} across shards", _REASON
            )
        if _is_aggregate(node):
            raise UnsupportedQueryError(f"the aggregate {node.sql(dialect)} across shards", _REASON)
    _check_outer_joins(statement, analysis)
    distributed = analysis.distributed
    if len(distributed) > 1 and not joined_on_keys(analysis, config):
        names = ", ".join(sorted({r.table.name for r in distributed}))
        raise UnsupportedQueryError(
            f"a query over several distributed tables ({names})",
            "they are not co-located (colocate_with) and joined on their shard keys, so "
            "matching rows may be on different shards; " + _REASON,
        )
    for ref in distributed:
        if ref.node.parent_select is not statement:
            raise UnsupportedQueryError(
                f"a subquery over the distributed table {ref.table.name}", _REASON
            )
