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
    """The ref whose shard key the column ``node`` is.

    An unqualified column names the key of the one distributed table whose
    key has that name: were another table of the query to have such a column
    too, the database would refuse the name as ambiguous.
    """
    if not isinstance(node, exp.Column) or not isinstance(node.this, exp.Identifier):
        return None
    name = normalize(node.this, dialect)
    if not node.table:
        owners = [r for r in refs if r.table.shard_key == name and not r.renames_columns]
        return owners[0] if len(owners) == 1 else None
    qualifier = normalize(node.args["table"], dialect)
    for ref in refs:
        if ref.alias == qualifier and not ref.renames_columns:
            return ref if name == ref.table.shard_key else None
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
    the WHERE or in the ON of an inner join, or by a LEFT join's ON between its
    joined table and exactly one group of preserved tables (the preserved rows'
    matches, if any, are then on their own shard).
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
    parent = {id(ref.node): id(ref.node) for ref in refs}

    def root(key: int) -> int:
        while parent[key] != key:
            key = parent[key]
        return key

    def key_pairs(conditions: list[exp.Expr]) -> list[tuple[TableRef, TableRef]]:
        pairs = []
        for term in conditions:
            if isinstance(term, exp.EQ):
                left = _key_ref(term.this, refs, dialect)
                right = _key_ref(term.expression, refs, dialect)
                if left is not None and right is not None:
                    pairs.append((left, right))
        return pairs

    # Equalities that filter every output row: the WHERE and inner joins' ON.
    joins = list(statement.args.get("joins") or ())
    filtering = _conjuncts(statement.args.get("where"))
    for join in joins:
        if not (join.side or "") and join.args.get("on") is not None:
            filtering += _conjuncts(join.args["on"])
    for left, right in key_pairs(filtering):
        parent[root(id(left.node))] = root(id(right.node))
    # A LEFT join's ON only decides which rows of the joined (nullable) side
    # match: it links that side to the preserved rows it is compared with, and
    # never links two preserved tables to each other.
    for join in joins:
        if (join.side or "").upper() != "LEFT" or join.args.get("on") is None:
            continue
        nullable = {id(ref.node) for ref in refs if any(n is ref.node for n in join.this.walk())}
        touched = set()
        for left, right in key_pairs(_conjuncts(join.args["on"])):
            ends = {id(left.node), id(right.node)}
            inside, outside = ends & nullable, ends - nullable
            if inside and outside:
                touched |= {root(key) for key in outside}
        if len(touched) == 1 and nullable:
            (preserved,) = touched
            for key in nullable:
                parent[root(key)] = preserved
    return len({root(id(ref.node)) for ref in refs}) == 1
