"""Set operations across shards: ``UNION [ALL]``, ``INTERSECT [ALL]``, ``EXCEPT [ALL]``.

Every branch must be a read each shard answers for its own rows (the rows
one database computes, split between the shards: filters, co-located joins,
groups containing the shard key), or read reference tables only. Then:

* a tree of ``UNION ALL`` over branches of distributed tables is a
  concatenation: each shard runs the statement as written, its ORDER BY
  merged k-way and its LIMIT pushed down as for one SELECT (:mod:`.limit`);
* anything else is merged by counting (:mod:`shardq.merge.setop`): each
  branch's select list gets the branch's number as a last column, the
  branches are sent joined by ``UNION ALL`` (by ``UNION`` when no operation
  is ALL, so each shard sends each row of a branch once), and the merge
  counts every row per branch and applies the operations; ORDER BY, OFFSET
  and LIMIT come after, in the merge.

Column names and types are the shards' (the first branch's names, and the
types the database resolves over the branches).

>>> import sqlglot
>>> tree = sqlglot.parse_one("SELECT a FROM t EXCEPT ALL SELECT b FROM u", read="postgres")
>>> shape(tree)
SetOp(kind=<SetOpKind.EXCEPT: 'except'>, all=True, left=0, right=1)
>>> tagged(tree, all_rows=True).sql("postgres")
'SELECT a, 0 AS _shardq_branch FROM t UNION ALL SELECT b, 1 AS _shardq_branch FROM u'
"""

from __future__ import annotations

from sqlglot import exp

from shardq.errors import UnsupportedQueryError
from shardq.merge.steps import SetOp, SetOpKind

__all__ = ["branches", "shape", "tagged"]

_KINDS = {exp.Union: SetOpKind.UNION, exp.Intersect: SetOpKind.INTERSECT,
          exp.Except: SetOpKind.EXCEPT}  # fmt: skip


def branches(node: exp.Expr) -> list[exp.Select]:
    """The SELECTs a set operation combines, left to right.

    Raises:
        UnsupportedQueryError: a parenthesized branch has its own ORDER BY,
            LIMIT or OFFSET, or a branch is not a SELECT.
    """
    if isinstance(node, exp.SetOperation):
        for clause in ("order", "limit", "offset"):
            if node.args.get(clause) is not None and node.parent is not None:
                raise _nested(node, clause)
        return [*branches(node.this), *branches(node.expression)]
    if (
        isinstance(node, exp.Subquery)
        and node.args.get("alias") is None
        and not any(node.args.get(c) is not None for c in ("order", "limit", "offset"))
    ):
        return branches(node.this)
    if isinstance(node, exp.Select):
        if node.parent is not None and not isinstance(node.parent, exp.SetOperation):
            for clause in ("order", "limit", "offset"):
                if node.args.get(clause) is not None:
                    raise _nested(node, clause)
        return [node]
    raise UnsupportedQueryError(
        f"the branch {node.sql()} of a set operation across shards",
        "shardq merges set operations over SELECTs only",
    )


def _nested(node: exp.Expr, clause: str) -> UnsupportedQueryError:
    return UnsupportedQueryError(
        f"{'ORDER BY' if clause == 'order' else clause.upper()} inside a branch of a set "
        "operation across shards",
        "each branch's own rows would have to be merged before the operation; put the "
        "ORDER BY, LIMIT or OFFSET after the whole operation, or pin the query to one shard",
    )


def shape(node: exp.Expr) -> SetOp:
    """The tree of operations, its leaves the branches' numbers (as :func:`branches`)."""
    counter = iter(range(1 << 30))

    def walk(node: exp.Expr) -> SetOp | int:
        while isinstance(node, exp.Subquery):
            node = node.this
        if isinstance(node, exp.SetOperation):
            left = walk(node.this)
            right = walk(node.expression)
            return SetOp(_KINDS[type(node)], not node.args.get("distinct"), left, right)
        return next(counter)

    tree = walk(node)
    assert isinstance(tree, SetOp)
    return tree


def only_union_all(tree: SetOp | int) -> bool:
    """Whether every operation of ``tree`` is UNION ALL."""
    if isinstance(tree, int):
        return True
    return (
        tree.kind is SetOpKind.UNION
        and tree.all
        and only_union_all(tree.left)
        and only_union_all(tree.right)
    )


def any_all(tree: SetOp | int) -> bool:
    """Whether some operation of ``tree`` is an ALL form."""
    if isinstance(tree, int):
        return False
    return tree.all or any_all(tree.left) or any_all(tree.right)


def tagged(node: exp.Expr, all_rows: bool) -> exp.Expr:
    """The branches of ``node``, each with its number as a last column, joined by UNION [ALL].

    Without ORDER BY, LIMIT or OFFSET (the merge applies them).
    """
    parts = []
    for number, branch in enumerate(branches(node)):
        select = branch.copy()
        select.select(
            exp.alias_(exp.Literal.number(number), "_shardq_branch"), append=True, copy=False
        )
        parts.append(select)
    joined: exp.Expr = parts[0]
    for part in parts[1:]:
        joined = exp.Union(this=joined, expression=part, distinct=not all_rows)
    return joined
