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

if TYPE_CHECKING:
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


def _own(node: exp.Expr, select: exp.Select) -> bool:
    """Whether ``node`` belongs to ``select`` itself, not to a nested query."""
    return node.parent_select is select


def check_concatenable(analysis: Analysis) -> None:
    """Raise :class:`UnsupportedQueryError` unless concatenation answers the read exactly.

    >>> import sqlglot
    >>> from shardq.config import load_config
    >>> from shardq.sql.analyze import analyze
    >>> from shardq.sql.parse import parse
    >>> cfg = load_config({"shards": [{"name": "a", "dsn": "a.db"}],
    ...                    "tables": {"t": {"shard_key": "k"}}})
    >>> check_concatenable(analyze(parse("SELECT * FROM t WHERE x > 1", "sqlite"), cfg))
    >>> check_concatenable(analyze(parse("SELECT count(*) FROM t", "sqlite"), cfg))
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
    for node in statement.find_all(exp.AggFunc, exp.Window):
        if _own(node, statement):
            kind = "window function" if isinstance(node, exp.Window) else "aggregate"
            raise UnsupportedQueryError(f"the {kind} {node.sql(dialect)} across shards", _REASON)
    distributed = analysis.distributed
    if len(distributed) > 1:
        names = ", ".join(sorted({r.table.name for r in distributed}))
        raise UnsupportedQueryError(f"a query over several distributed tables ({names})", _REASON)
    for ref in distributed:
        if ref.node.parent_select is not statement:
            raise UnsupportedQueryError(
                f"a subquery over the distributed table {ref.table.name}", _REASON
            )
