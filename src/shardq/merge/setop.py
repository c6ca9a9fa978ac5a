"""Set operations merged by counting: each row's multiplicity per branch, across shards.

``UNION``, ``INTERSECT`` and ``EXCEPT`` act on each distinct row alone: how
many times a row is in the result follows from how many times it is in each
branch (multiset semantics, PostgreSQL's and the standard's), and rows equal
in every column are the same row, NULLs included. So the shards send each
branch's rows tagged with the branch number, the merge counts each distinct
row per branch over every shard, and the tree of operations turns the counts
into the row's multiplicity:

* ``UNION ALL``: ``a + b``; ``UNION``: 1 if ``a + b > 0``;
* ``INTERSECT ALL``: ``min(a, b)``; ``INTERSECT``: 1 if both are positive;
* ``EXCEPT ALL``: ``max(a - b, 0)``; ``EXCEPT``: 1 if ``a > 0`` and ``b == 0``.

>>> from shardq.merge.steps import Counting, SetOp, SetOpKind
>>> tree = SetOp(SetOpKind.EXCEPT, True, 0, 1)
>>> multiplicity(tree, [3, 1])
2
>>> multiplicity(SetOp(SetOpKind.INTERSECT, False, tree, 2), [3, 1, 5])
1
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shardq.merge.steps import SetOp, SetOpKind

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from shardq.merge import Rows
    from shardq.merge.steps import Counting

__all__ = ["Counter", "multiplicity"]


def multiplicity(node: SetOp | int, counts: Sequence[int]) -> int:
    """How many times a row is in the result of ``node``, given its count in each branch."""
    if isinstance(node, int):
        return counts[node]
    a = multiplicity(node.left, counts)
    b = multiplicity(node.right, counts)
    if node.kind is SetOpKind.UNION:
        n = a + b
    elif node.kind is SetOpKind.INTERSECT:
        n = min(a, b)
    else:
        n = max(a - b, 0) if node.all else (a if b == 0 else 0)
    return n if node.all else min(n, 1)


class Counter:
    """Counts tagged rows per branch; :meth:`rows` is the set operation's result.

    ``canonical`` maps a row to the value rows equal for the operation share
    (one NaN for every NaN, SQLite's collations).
    """

    def __init__(
        self,
        counting: Counting,
        sources: int,
        canonical: Callable[[tuple[Any, ...]], tuple[Any, ...]],
    ):
        self._counting = counting
        self._sources = max(sources, 1)
        self._canonical = canonical
        # canonical row -> [the row shown, its branch, the count in each branch]
        self._seen: dict[tuple[Any, ...], list[Any]] = {}

    def feed(self, rows: Rows) -> None:
        """Count ``rows`` (each ends with its branch number).

        Rows equal but written otherwise (numerics ``1`` and ``1.00``) are one
        row; the one shown is the first seen of the lowest branch, as
        PostgreSQL's hashed set operations show the first of their first input.
        """
        seen = self._seen
        branches = self._counting.branches
        canonical = self._canonical
        for row in rows:
            values, branch = row[:-1], row[-1]
            key = canonical(values)
            entry = seen.get(key)
            if entry is None:
                entry = seen[key] = [values, branch, [0] * branches]
            elif branch < entry[1]:
                entry[0], entry[1] = values, branch
            entry[2][branch] += 1

    def rows(self) -> Rows:
        """Each distinct row, as many times as the operations say, in the order first seen."""
        replicated = self._counting.replicated
        tree = self._counting.tree
        out: Rows = []
        for values, _, counts in self._seen.values():
            for branch in replicated:
                # Every shard sent the rows of a branch over reference tables.
                counts[branch] //= self._sources
            out.extend([values] * multiplicity(tree, counts))
        return out
