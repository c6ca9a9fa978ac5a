"""Which multi-shard reads have rows that each come from one shard.

Merging (aggregates, ORDER BY, DISTINCT, ...) works on the rows each shard
computes, so those rows must be the rows one database would compute, split
between the shards: every row of the query's FROM must be built from the
rows of one shard. That holds for one distributed table joined with
reference tables, and for co-located tables joined on their shard keys. It
fails for joins of distributed tables that are not co-located, outer joins
that preserve a reference table (every shard would emit its unmatched rows),
and subqueries over distributed tables; those are refused here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlglot import exp

from shardq.errors import UnsupportedQueryError
from shardq.sql.colocation import joined_on_keys
from shardq.sql.rewrite.aggregates import is_aggregate

if TYPE_CHECKING:
    from shardq.config import Config
    from shardq.sql.analyze import Analysis

__all__ = ["check_rows_local"]

_REASON = "shardq cannot merge it exactly yet; pin it to one shard with a shard-key condition"


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


def check_rows_local(analysis: Analysis, config: Config) -> None:
    """Raise :class:`UnsupportedQueryError` unless each FROM row comes from one shard.

    >>> from shardq.config import load_config
    >>> from shardq.sql.analyze import analyze
    >>> from shardq.sql.parse import parse
    >>> cfg = load_config({"shards": [{"name": "a", "dsn": "a.db"}],
    ...                    "tables": {"t": {"shard_key": "k"}, "u": {"shard_key": "k"}}})
    >>> check_rows_local(analyze(parse("SELECT count(*) FROM t WHERE x > 1", "sqlite"), cfg), cfg)
    >>> check_rows_local(analyze(parse("SELECT * FROM t JOIN u USING (k)", "sqlite"), cfg), cfg)
    Traceback (most recent call last):
    ...
    shardq.errors.UnsupportedQueryError: a query over several distributed tables (t, u) ...
    """
    statement = analysis.parsed.expression
    if not isinstance(statement, exp.Select):
        raise UnsupportedQueryError(f"{statement.key.upper()} across shards", _REASON)
    dialect = analysis.parsed.dialect
    for node in statement.find_all(exp.Func, exp.Filter, exp.WithinGroup):
        if not _own(node, statement) and is_aggregate(node) and _may_aggregate_outer(node):
            raise UnsupportedQueryError(
                f"the aggregate {node.sql(dialect)} in a subquery across shards",
                "it may aggregate the outer query's rows (a column of the outer query "
                "makes it an aggregate of the outer query); " + _REASON,
            )
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
