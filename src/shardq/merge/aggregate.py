"""Regrouping: the shards' partial aggregates folded into one row per group.

Each shard returns, per group, its group key and its partial aggregates
(a count, a sum, a minimum, ...). Folding them by key gives what one
database would compute over all the rows: counts and sums add up, minima and
maxima compare, and the distinct values of ``COUNT(DISTINCT x)`` are united.
Memory holds one entry per group, never the rows.
"""

from __future__ import annotations

import decimal
import functools
from collections.abc import Callable, Iterable
from typing import Any

from shardq.merge.numeric import EXACT
from shardq.merge.steps import Aggregation, Combine
from shardq.merge.variance import float_combine

__all__ = ["Regroup"]


def _regroup_source(
    groups: int, combines: tuple[Combine, ...], split: bool, nan_keys: tuple[int, ...]
) -> str:
    """Python source of ``feed``, folding rows into group states, and ``emit``, the merged rows.

    Generated for one plan (as :func:`collections.namedtuple` generates its
    class): the loop body has one statement per partial column and no
    per-value dispatch, which makes regrouping several times faster. Only
    integers are formatted into the source.

    With ``split`` (two or more key columns), ``groups`` is keyed by the first
    key column alone and each state starts with the rest of its key: a row
    whose first column is known compares the rest, which costs less than
    hashing it (the strings of a row just read are hashed for the first
    time: TPC-H Q10 groups by 7 columns, 5 of them text). A different group
    with the same first column goes to ``others``, keyed by its whole key,
    with ``None`` in that first slot. Equality is the same as a dict's of
    whole keys: each value compared by identity, then ``==``.

    Unless a partial gathers a set, a group seen in one row only is that row:
    it is stored as it came and emitted as it is (most groups of a regroup,
    when the key is spread over the shards), and becomes a list of its
    partials when a second row of its group comes. States are exact lists,
    rows are tuples (the drivers make them so): the list's class tells them
    apart, and an exact list keeps CPython's specialized indexing, which a
    subclass would lose.

    NaN is not equal to itself in Python, and two NaN objects hash apart, but
    PostgreSQL puts every NaN of a column in one group: a row with NaN in one
    of the key columns ``nan_keys`` (those that can hold it: float and
    numeric) has it replaced by the first NaN of its type seen.
    """
    g = int(groups)
    raw = Combine.SET not in combines
    base = 1 if split else 0
    key = "r[0]" if g == 1 else f"r[:{g}]" if g else "()"
    fresh = []
    fold = []
    for i, combine in enumerate(combines):
        c = g + i
        fresh.append(
            f"set() if r[{c}] is None else {{nans.setdefault(type(r[{c}]), r[{c}]) "
            f"if r[{c}] != r[{c}] else r[{c}]}}"
            if combine is Combine.SET
            else f"r[{c}]"
        )
        if combine is Combine.ANY:
            continue
        slot = base + i
        fold.append(f"        v = r[{c}]")
        fold.append("        if v is not None:")
        if combine is Combine.SET:
            # NaN is not equal to itself in Python but is one value to the
            # database: every NaN of a type is replaced by the first one seen.
            fold.append("            if v != v:")
            fold.append("                v = nans.setdefault(type(v), v)")
            fold.append(f"            s[{slot}].add(v)")
            continue
        fold.append(f"            t = s[{slot}]")
        update = {
            Combine.COUNT: "t + v",
            Combine.SUM: "t + v",
            # NaN is the greatest float to PostgreSQL: max keeps it, min drops it.
            Combine.MIN: "v if v < t or t != t else t",
            Combine.MAX: "v if v > t or v != v else t",
            Combine.BOOL_AND: "t and v",
            Combine.BOOL_OR: "t or v",
            Combine.FLOAT_VAR: "float_combine(t, v)",
        }[combine]
        fold.append(f"            s[{slot}] = v if t is None else {update}")
    fresh_state = ", ".join(fresh)
    partials = ", ".join(f"s[{g + i}]" for i in range(len(combines)))  # of a stored row
    if split and raw:
        find = [
            "        s = get(r[0])",
            "        if s is None:",
            "            groups[r[0]] = r",
            "            continue",
            "        if s.__class__ is not list:",
            f"            if s[1:{g}] == r[1:{g}]:",
            f"                s = groups[r[0]] = [s[1:{g}], {partials}]",
            "            else:",
            "                s = None",
            f"        elif s[0] != r[1:{g}]:",
            "            s = None",
            "        if s is None:",
            f"            k = {key}",
            "            s = others.get(k)",
            "            if s is None:",
            "                others[k] = r",
            "                continue",
            "            if s.__class__ is not list:",
            f"                s = others[k] = [None, {partials}]",
        ]
    elif split:
        find = [
            "        s = get(r[0])",
            "        if s is None:",
            f"            groups[r[0]] = [r[1:{g}], {fresh_state}]",
            "            continue",
            f"        if s[0] != r[1:{g}]:",
            f"            k = {key}",
            "            s = others.get(k)",
            "            if s is None:",
            f"                others[k] = [None, {fresh_state}]",
            "                continue",
        ]
    elif raw:
        find = [
            f"        k = {key}",
            "        s = get(k)",
            "        if s is None:",
            "            groups[k] = r",
            "            continue",
            "        if s.__class__ is not list:",
            f"            s = groups[k] = [{partials}]",
        ]
    else:
        find = [
            f"        k = {key}",
            "        s = get(k)",
            "        if s is None:",
            f"            groups[k] = [{fresh_state}]",
            "            continue",
        ]
    # The merged rows: key columns, then the partials (a count of no rows is 0).
    counts = [g + i for i, combine in enumerate(combines) if combine is Combine.COUNT]
    values = [
        f"0 if s[{base + i}] is None else s[{base + i}]"
        if combine is Combine.COUNT
        else f"s[{base + i}]"
        for i, combine in enumerate(combines)
    ]
    head = "k, *s[0]" if split else "k" if g == 1 else "*k"
    stored = "s"  # a group's one row, as it came (a count of no rows, NULL, made 0)
    if counts:
        known = " and ".join(f"s[{j}] is not None" for j in counts)
        whole = ", ".join(
            f"0 if s[{j}] is None else s[{j}]" if j in counts else f"s[{j}]"
            for j in range(g + len(combines))
        )
        stored = f"(s if {known} else ({whole},))"
    row = f"{stored} if s.__class__ is not list else " if raw else ""
    emit = [
        "def emit(groups, others):",
        f"    out = [{row}({', '.join([head, *values])},) for k, s in groups.items()]",
    ]
    if split:
        emit.append(f"    out += [{row}({', '.join(['*k', *values])},) for k, s in others.items()]")
    emit.append("    return out")
    canonical = []
    if nan_keys:
        nan_test = " or ".join(f"r[{int(i)}] != r[{int(i)}]" for i in nan_keys)
        canonical = [
            f"        if {nan_test}:",
            "            r = tuple([nans.setdefault(type(v), v) if v != v else v for v in r])",
        ]
    return "\n".join(
        [
            *emit,
            "def feed(rows, groups, others, nans):",
            "    get = groups.get",
            "    for r in rows:",
            *canonical,
            *find,
            *(fold or ["        pass"]),
        ]
    )


#: A group's state: its one row as it came, or a list (see :func:`_regroup_source`).
State = list[Any] | tuple[Any, ...]
Fold = Callable[
    [Iterable[tuple[Any, ...]], dict[Any, State], dict[Any, State], dict[type, Any]], None
]
Emit = Callable[[dict[Any, State], dict[Any, State]], list[tuple[Any, ...]]]


@functools.lru_cache(maxsize=256)
def _compiled(
    groups: int, combines: tuple[Combine, ...], split: bool, nan_keys: tuple[int, ...]
) -> tuple[Fold, Emit]:
    """``feed`` and ``emit`` for one shape of partial rows, compiled once.

    Compiling costs about as much as regrouping a few hundred rows; a plan
    run again (the planner caches plans) reuses the functions.
    """
    namespace: dict[str, Any] = {"float_combine": float_combine}
    exec(_regroup_source(groups, combines, split, nan_keys), namespace)
    return namespace["feed"], namespace["emit"]


class Regroup:
    """Fold partial rows by group key.

    Sums of numerics are exact: they are added with enough precision for
    every digit, as PostgreSQL adds them.

    >>> r = Regroup(Aggregation(1, (Combine.COUNT, Combine.SUM, Combine.SET)))
    >>> r.feed([("a", 2, 10, 1), ("b", 1, None, None), ("a", 3, 5, 2), ("a", 1, None, 1)])
    >>> sorted(r.rows())
    [('a', 6, 15, {1, 2}), ('b', 1, None, set())]
    """

    def __init__(
        self, spec: Aggregation, nan_keys: Iterable[int] | None = None, scalar_keys: bool = False
    ):
        """``nan_keys``: the key columns that can hold NaN (default: every one).

        ``scalar_keys``: the key columns after the first are known to hold
        scalars whose ``==`` is the database's (text, numbers, dates, ...), which
        the split by first column compares without hashing. Arrays or JSON,
        compared so, would meet where the database keeps them apart (``[1]``
        and ``[true]``); hashing them raises, which refuses the query.
        """
        self.spec = spec
        # Rows sorted on the key close their groups in order (complete()), which
        # needs one dict in arrival order: the split by first column is for the rest.
        self._split = scalar_keys and spec.groups >= 2 and not spec.sorted
        self._groups: dict[Any, State] = {}
        self._others: dict[Any, State] = {}
        self._nans: dict[type, Any] = {}  # the first NaN of each type: see _regroup_source
        keys = tuple(range(spec.groups)) if nan_keys is None else tuple(sorted(set(nan_keys)))
        self._fold, self._emit = _compiled(spec.groups, spec.combines, self._split, keys)

    def feed(self, rows: Iterable[tuple[Any, ...]]) -> None:
        """Fold a batch of partial rows in."""
        with decimal.localcontext(EXACT):
            self._fold(rows, self._groups, self._others, self._nans)

    def complete(self) -> list[tuple[Any, ...]]:
        """Take the groups before the last one, when rows arrive sorted on the key.

        Every group but the newest is complete: no later row can belong to it.
        """
        assert not self._split, "complete() needs rows sorted on the key"
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
        return self._emit(self._groups, self._others)
