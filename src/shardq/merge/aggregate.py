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

from shardq.merge.numeric import EXACT
from shardq.merge.steps import Aggregation, Combine

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

__all__ = ["Regroup"]


def _fold_source(groups: int, combines: tuple[Combine, ...]) -> str:
    """Python source of a function folding rows into a dict of group states.

    Generated for one plan (as :func:`collections.namedtuple` generates its
    class): the loop body has one statement per partial column and no
    per-value dispatch, which makes regrouping several times faster. Only
    integers are formatted into the source.
    """
    key = "r[0]" if groups == 1 else f"r[:{int(groups)}]" if groups else "()"
    fresh = []
    fold = []
    for i, combine in enumerate(combines):
        c = int(groups + i)
        fresh.append(
            f"set() if r[{c}] is None else {{nans.setdefault(type(r[{c}]), r[{c}]) "
            f"if r[{c}] != r[{c}] else r[{c}]}}"
            if combine is Combine.SET
            else f"r[{c}]"
        )
        if combine is Combine.ANY:
            continue
        fold.append(f"            v = r[{c}]")
        fold.append("            if v is not None:")
        if combine is Combine.SET:
            # NaN is not equal to itself in Python but is one value to the
            # database: every NaN of a type is replaced by the first one seen.
            fold.append("                if v != v:")
            fold.append("                    v = nans.setdefault(type(v), v)")
            fold.append(f"                s[{i}].add(v)")
            continue
        fold.append(f"                t = s[{i}]")
        update = {
            Combine.COUNT: "t + v",
            Combine.SUM: "t + v",
            # NaN is the greatest float to PostgreSQL: max keeps it, min drops it.
            Combine.MIN: "v if v < t or t != t else t",
            Combine.MAX: "v if v > t or v != v else t",
            Combine.BOOL_AND: "t and v",
            Combine.BOOL_OR: "t or v",
        }[combine]
        fold.append(f"                s[{i}] = v if t is None else {update}")
    return "\n".join(
        [
            "def feed(rows, groups):",
            "    get = groups.get",
            "    for r in rows:",
            f"        k = {key}",
            "        s = get(k)",
            "        if s is None:",
            f"            groups[k] = [{', '.join(fresh)}]",
            "        else:",
            *(fold or ["            pass"]),
        ]
    )


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
        self._groups: dict[Any, list[Any]] = {}
        namespace: dict[str, Any] = {"nans": {}}
        exec(_fold_source(spec.groups, spec.combines), namespace)
        self._fold: Callable[[Iterable[tuple[Any, ...]], dict[Any, list[Any]]], None] = namespace[
            "feed"
        ]

    def feed(self, rows: Iterable[tuple[Any, ...]]) -> None:
        """Fold a batch of partial rows in."""
        with decimal.localcontext(EXACT):
            self._fold(rows, self._groups)

    def complete(self) -> list[tuple[Any, ...]]:
        """Take the groups before the last one, when rows arrive sorted on the key.

        Every group but the newest is complete: no later row can belong to it.
        """
        if len(self._groups) < 2:
            return []
        last = next(reversed(self._groups))
        kept = self._groups.pop(last)
        done = self.rows()
        self._groups = {last: kept}
        return done

    def rows(self) -> list[tuple[Any, ...]]:
        """The merged groups: key columns, then the folded partials."""
        combines = self.spec.combines
        if not self._groups and self.spec.scalar:
            return [tuple(0 if c is Combine.COUNT else set() if c is Combine.SET else None
                          for c in combines)]  # fmt: skip
        counts = [i for i, c in enumerate(combines) if c is Combine.COUNT]
        single = self.spec.groups == 1
        out = []
        for key, state in self._groups.items():
            for i in counts:
                if state[i] is None:
                    state[i] = 0
            out.append(((key,) if single else key) + tuple(state))
        return out
