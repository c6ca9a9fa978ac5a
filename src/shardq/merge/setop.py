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

Rows equal but written otherwise (numerics ``1`` and ``1.00``) are one row to
the operations, which write it as their first input first does; UNION ALL
keeps each row's own writing (counted apart only when a tree mixes it with
another operation, :func:`_shown`).

>>> from shardq.merge.steps import Counting, SetOp, SetOpKind
>>> tree = SetOp(SetOpKind.EXCEPT, True, 0, 1)
>>> multiplicity(tree, [3, 1])
2
>>> multiplicity(SetOp(SetOpKind.INTERSECT, False, tree, 2), [3, 1, 5])
1
"""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal
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


# One writing of a row (numerics 1 and 1.00, SQLite's 'a' and 'A' under NOCASE) and how many
# times a branch has it: [values, count].
Written = list[Any]


def _exact(values: tuple[Any, ...]) -> tuple[Any, ...]:
    """``values`` told apart as written: equal numerics of other scales differ."""
    return tuple((type(v), str(v)) if isinstance(v, Decimal | float) else v for v in values)


def _operations(node: SetOp | int) -> set[tuple[SetOpKind, bool]]:
    if isinstance(node, int):
        return set()
    return {(node.kind, node.all)} | _operations(node.left) | _operations(node.right)


def _shown(node: SetOp | int, branches: list[list[Written]]) -> list[Written]:
    """How ``node`` writes one row, and how many times: UNION ALL keeps each input's writing;
    another operation writes the row as its first input first does (PostgreSQL's hashed
    set operations keep the first row of a group, and read their first input first)."""
    if isinstance(node, int):
        return branches[node]
    left, right = _shown(node.left, branches), _shown(node.right, branches)
    if node.kind is SetOpKind.UNION and node.all:
        return left + right
    counts = [sum(w[1] for w in left), sum(w[1] for w in right)]
    n = multiplicity(replace(node, left=0, right=1), counts)
    return [[(left or right)[0][0], n]] if n else []


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
        # UNION ALL with another operation: UNION ALL keeps each writing of a row, so
        # they are counted apart (canonical row -> per branch, exact writing -> Written),
        # which costs three times as much: only for such trees.
        operations = _operations(counting.tree)
        self._writings: dict[tuple[Any, ...], list[dict[tuple[Any, ...], Written]]] | None = (
            {} if (SetOpKind.UNION, True) in operations and len(operations) > 1 else None
        )

    def feed(self, rows: Rows) -> None:
        """Count ``rows`` (each ends with its branch number).

        Rows equal but written otherwise (numerics ``1`` and ``1.00``) are one
        row; the one shown is the first seen of the lowest branch, as
        PostgreSQL's hashed set operations show the first of their first input.
        """
        if self._writings is not None:
            self._feed_writings(rows)
            return
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

    def _feed_writings(self, rows: Rows) -> None:
        assert self._writings is not None
        writings = self._writings
        branches = self._counting.branches
        canonical = self._canonical
        for row in rows:
            values, branch = row[:-1], row[-1]
            key = canonical(values)
            entry = writings.get(key)
            if entry is None:
                entry = writings[key] = [{} for _ in range(branches)]
            written = entry[branch].get(exact := _exact(values))
            if written is None:
                entry[branch][exact] = [values, 1]
            else:
                written[1] += 1

    def rows(self) -> Rows:
        """Each distinct row, as many times as the operations say, in the order first seen."""
        replicated = self._counting.replicated
        tree = self._counting.tree
        out: Rows = []
        if self._writings is not None:
            for entry in self._writings.values():
                for branch in replicated:
                    # Every shard sent the rows of a branch over reference tables.
                    for written in entry[branch].values():
                        written[1] //= self._sources
                for values, count in _shown(tree, [list(b.values()) for b in entry]):
                    out.extend([values] * count)
            return out
        for values, _, counts in self._seen.values():
            for branch in replicated:
                # Every shard sent the rows of a branch over reference tables.
                counts[branch] //= self._sources
            out.extend([values] * multiplicity(tree, counts))
        return out
