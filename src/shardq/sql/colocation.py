"""Co-location: distributed tables joined on their shard keys stay on one shard.

Tables declared co-located (``colocate_with``, transitively) place equal key
values on the same shard. When a query joins such tables by equality of their
keys, every joined row combines rows of one shard only, so the join runs
whole on each shard and a condition pinning any one key pins them all.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlglot import exp

from shardq.sql.analyze import normalize

if TYPE_CHECKING:
    from shardq.config import Config
    from shardq.sql.analyze import Analysis, TableRef

__all__ = ["colocation_group", "joined_on_keys"]


def colocation_group(config: Config, table: str) -> str:
    """The table at the root of ``table``'s ``colocate_with`` chain.

    >>> from shardq.config import load_config
    >>> cfg = load_config({"shards": [{"name": "a", "dsn": "a.db"}], "tables": {
    ...     "o": {"shard_key": "k"}, "l": {"shard_key": "k", "colocate_with": "o"},
    ...     "x": {"shard_key": "k"}}})
    >>> colocation_group(cfg, "l"), colocation_group(cfg, "x")
    ('o', 'x')
    """
    seen = {table}
    current = config.tables[table]
    while current.colocate_with is not None and current.colocate_with not in seen:
        seen.add(current.colocate_with)
        current = config.tables[current.colocate_with]
    return current.name


def _key_ref(node: exp.Expr, refs: tuple[TableRef, ...], dialect: str) -> TableRef | None:
    """The ref whose shard key the (qualified) column ``node`` is."""
    if not isinstance(node, exp.Column) or not node.table:
        return None
    qualifier = normalize(node.args["table"], dialect)
    for ref in refs:
        if ref.alias == qualifier and not ref.renames_columns:
            return ref if normalize(node.this, dialect) == ref.table.shard_key else None
    return None


def _conjuncts(condition: exp.Expr | None) -> list[exp.Expr]:
    if condition is None:
        return []
    if isinstance(condition, exp.Where):
        condition = condition.this
    return [
        c.unnest() for c in (condition.flatten() if isinstance(condition, exp.And) else [condition])
    ]


def joined_on_keys(analysis: Analysis, config: Config) -> bool:
    """Whether the statement's distributed tables are co-located and joined on their keys.

    Every distributed table must be in the statement's own FROM or JOINs, all
    in one co-location group, and connected by ``a.key = b.key`` equalities in
    the WHERE or in the ON of an inner or LEFT join (a LEFT join's preserved
    rows have their matches, if any, on their own shard).
    """
    statement = analysis.parsed.expression
    refs = analysis.distributed
    if not isinstance(statement, exp.Select) or len(refs) < 2:
        return False
    if any(ref.node.parent_select is not statement for ref in refs):
        return False
    if len({colocation_group(config, ref.table.name) for ref in refs}) != 1:
        return False
    dialect = analysis.parsed.dialect
    conditions = _conjuncts(statement.args.get("where"))
    for join in statement.args.get("joins") or ():
        if (join.side or "").upper() in ("", "LEFT") and join.args.get("on") is not None:
            conditions += _conjuncts(join.args["on"])
    parent = {id(ref.node): id(ref.node) for ref in refs}

    def root(key: int) -> int:
        while parent[key] != key:
            key = parent[key]
        return key

    for term in conditions:
        if isinstance(term, exp.EQ):
            left = _key_ref(term.this, refs, dialect)
            right = _key_ref(term.expression, refs, dialect)
            if left is not None and right is not None:
                parent[root(id(left.node))] = root(id(right.node))
    return len({root(id(ref.node)) for ref in refs}) == 1
