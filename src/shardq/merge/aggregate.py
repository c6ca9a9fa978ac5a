"""Regrouping: the shards' partial aggregates folded into one row per group.

Each shard returns, per group, its group key and its partial aggregates
(a count, a sum, a minimum, ...). Folding them by key gives what one
database would compute over all the rows: counts and sums add up, minima and
maxima compare, and the distinct values of ``COUNT(DISTINCT x)`` are united.
Memory holds one entry per group, never the rows.
"""

from __future__ import annotations

import decimal
from typing import TYPE_CHECKING, Any

from shardq.merge.evaluate import EXACT
from shardq.merge.steps import Aggregation, Combine

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

__all__ = ["Regroup"]


def _add(a: Any, b: Any) -> Any:
    if a is None:
        return b
    return a if b is None else a + b


def _least(a: Any, b: Any) -> Any:
    if a is None:
        return b
    return a if b is None or not b < a else b


def _greatest(a: Any, b: Any) -> Any:
    if a is None:
        return b
    return a if b is None or not b > a else b


def _both(a: Any, b: Any) -> Any:
    if a is None:
        return b
    return a if b is None else a and b


def _either(a: Any, b: Any) -> Any:
    if a is None:
        return b
    return a if b is None else a or b


def _keep(a: Any, b: Any) -> Any:
    return a


_FOLD: dict[Combine, Callable[[Any, Any], Any]] = {
    Combine.COUNT: _add,
    Combine.SUM: _add,
    Combine.MIN: _least,
    Combine.MAX: _greatest,
    Combine.BOOL_AND: _both,
    Combine.BOOL_OR: _either,
    Combine.ANY: _keep,
}


class Regroup:
    """Fold partial rows by group key.

    Sums of numerics are exact: they are added with enough precision for
    every digit, as PostgreSQL adds them.

    >>> r = Regroup(Aggregation(1, (Combine.COUNT, Combine.SUM, Combine.SET)))
    >>> r.feed([("a", 2, 10, 1), ("b", 1, None, None), ("a", 3, 5, 2), ("a", 1, None, 1)])
    >>> sorted(r.rows())
    [('a', 6, 15, {1, 2}), ('b', 1, None, set())]
    """

    def __init__(self, spec: Aggregation):
        self.spec = spec
        self._width = spec.groups
        self._groups: dict[Any, list[Any]] = {}
        self._sets = [i for i, c in enumerate(spec.combines) if c is Combine.SET]
        self._folds = [(i, _FOLD[c]) for i, c in enumerate(spec.combines) if c is not Combine.SET]

    def feed(self, rows: Iterable[tuple[Any, ...]]) -> None:
        """Fold a batch of partial rows in."""
        width = self._width
        groups = self._groups
        folds = self._folds
        sets = self._sets
        with decimal.localcontext(EXACT):
            self._feed(rows, width, groups, folds, sets)

    @staticmethod
    def _feed(
        rows: Iterable[tuple[Any, ...]],
        width: int,
        groups: dict[Any, list[Any]],
        folds: list[tuple[int, Callable[[Any, Any], Any]]],
        sets: list[int],
    ) -> None:
        for row in rows:
            key = row[:width]
            state = groups.get(key)
            partials = row[width:]
            if state is None:
                state = list(partials)
                for i in sets:
                    value = state[i]
                    state[i] = set() if value is None else {value}
                groups[key] = state
                continue
            for i, fold in folds:
                state[i] = fold(state[i], partials[i])
            for i in sets:
                value = partials[i]
                if value is not None:
                    state[i].add(value)

    def rows(self) -> list[tuple[Any, ...]]:
        """The merged groups: key columns, then the folded partials."""
        if not self._groups and self.spec.scalar:
            empty = [0 if c is Combine.COUNT else None for c in self.spec.combines]
            return [
                tuple(
                    set() if c is Combine.SET else v
                    for c, v in zip(self.spec.combines, empty, strict=True)
                )
            ]
        counts = [i for i, c in enumerate(self.spec.combines) if c is Combine.COUNT]
        out = []
        for key, state in self._groups.items():
            for i in counts:
                if state[i] is None:
                    state[i] = 0
            out.append(key + tuple(state))
        return out
