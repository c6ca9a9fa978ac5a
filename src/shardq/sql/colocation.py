"""Co-location: distributed tables joined on their shard keys stay on one shard.

Tables declared co-located (``colocate_with``, transitively) place equal key
values on the same shard. When a query joins such tables by equality of their
keys, every joined row combines rows of one shard only, so the join runs
whole on each shard and a condition pinning any one key pins them all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlglot import exp

from shardq.sql.analyze import normalize

if TYPE_CHECKING:
    from shardq.config import Config
    from shardq.sql.analyze import Analysis, TableRef

__all__ = [
    "Relation",
    "colocation_group",
    "conjuncts",
    "joined_on_keys",
    "key_relation",
    "link",
    "table_relation",
]


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


@dataclass(frozen=True, slots=True)
class Relation:
    """A distributed relation of one SELECT: a table or a local derived table.

    ``keys`` are the names, as the SELECT sees them, of its columns that hold
    the shard key; ``group`` is its co-location group.
    """

    node: exp.Expr
    alias: str
    keys: frozenset[str]
    group: str


def table_relation(ref: TableRef, config: Config) -> Relation:
    key = ref.table.shard_key
    keys = frozenset({key}) if key is not None and not ref.renames_columns else frozenset()
    return Relation(ref.node, ref.alias, keys, colocation_group(config, ref.table.name))


def conjuncts(condition: exp.Expr | None) -> list[exp.Expr]:
    if condition is None:
        return []
    if isinstance(condition, exp.Where):
        condition = condition.this
    parts = condition.flatten() if isinstance(condition, exp.And) else [condition]
    return [c.unnest() for c in parts]


def key_relation(node: exp.Expr, relations: list[Relation], dialect: str) -> Relation | None:
    """The relation whose shard key the column ``node`` is, resolved in its own SELECT."""
    if not isinstance(node, exp.Column) or not isinstance(node.this, exp.Identifier):
        return None
    name = normalize(node.this, dialect)
    if node.table:
        qualifier = normalize(node.args["table"], dialect)
        found = [r for r in relations if r.alias == qualifier]
        return found[0] if found and name in found[0].keys else None
    owners = [r for r in relations if name in r.keys]
    return owners[0] if len(owners) == 1 else None


def link(
    select: exp.Select, relations: list[Relation], dialect: str, nodes: set[int] | None = None
) -> bool:
    """Whether ``relations`` are co-located and joined on their keys in ``select``.

    Equalities that filter every output row (the WHERE, inner joins' ON) link
    their two sides; a LEFT join's ON links its nullable side to exactly one
    group of preserved relations, never two preserved relations together.
    """
    if len(relations) < 2:
        return True
    if len({r.group for r in relations}) != 1:
        return False
    parent = {id(r.node): id(r.node) for r in relations}

    def root(key: int) -> int:
        while parent[key] != key:
            key = parent[key]
        return key

    def pairs(conditions: list[exp.Expr]) -> list[tuple[Relation, Relation]]:
        found = []
        for term in conditions:
            if isinstance(term, exp.EQ):
                left = key_relation(term.this, relations, dialect)
                right = key_relation(term.expression, relations, dialect)
                if left is not None and right is not None:
                    found.append((left, right))
        return found

    joins = list(select.args.get("joins") or ())
    filtering = conjuncts(select.args.get("where"))
    for join in joins:
        if not (join.side or "") and join.args.get("on") is not None:
            filtering += conjuncts(join.args["on"])
    for left, right in pairs(filtering):
        parent[root(id(left.node))] = root(id(right.node))
    for join in joins:
        if (join.side or "").upper() != "LEFT" or join.args.get("on") is None:
            continue
        nullable = {id(r.node) for r in relations if any(n is r.node for n in join.this.walk())}
        touched = set()
        for left, right in pairs(conjuncts(join.args["on"])):
            ends = {id(left.node), id(right.node)}
            inside, outside = ends & nullable, ends - nullable
            if inside and outside:
                touched |= {root(key) for key in outside}
        if len(touched) == 1 and nullable:
            (preserved,) = touched
            for key in nullable:
                parent[root(key)] = preserved
    return len({root(id(r.node)) for r in relations}) == 1


def joined_on_keys(analysis: Analysis, config: Config) -> bool:
    """Whether the statement's distributed tables are in its own FROM and joined on their keys."""
    statement = analysis.parsed.expression
    refs = analysis.distributed
    if not isinstance(statement, exp.Select) or len(refs) < 2:
        return False
    if any(ref.node.parent_select is not statement for ref in refs):
        return False
    relations = [table_relation(ref, config) for ref in refs]
    return link(statement, relations, analysis.parsed.dialect)
