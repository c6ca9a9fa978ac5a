"""The merger of a :class:`~shardq.merge.steps.MergePlan`, and its description.

Plans that allow it stream: rows pass from the shards to the caller batch by
batch (k-way merge, DISTINCT, OFFSET/LIMIT, dropping helper columns), and a
LIMIT that is reached stops reading the shards. A plan that regroups or sorts
after regrouping holds the groups (never the rows) until the shards are done.
"""

from __future__ import annotations

import heapq
import operator
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from shardq.execute.driver import Column
from shardq.merge import Fetch, Merger, Rows
from shardq.merge.aggregate import Regroup
from shardq.merge.concat import concat
from shardq.merge.evaluate import (
    BOOL,
    FLOAT4,
    FLOAT8,
    INT2,
    INT4,
    INT8,
    NUMERIC,
    TEXT,
    Semantics,
    coerce,
    compile_expr,
    compile_row,
    output_type,
)
from shardq.merge.final import FinalTable
from shardq.merge.order import kway, sort_key, sqlite_value
from shardq.merge.setop import Counter
from shardq.merge.steps import Call, Col, Combine, Const, Output, SortKey

if TYPE_CHECKING:
    from shardq.merge.steps import FinalStep, MergePlan

__all__ = ["compared_columns", "describe", "merger"]

_CHUNK = 2000  # rows per emitted batch from an in-memory stage

Transform = Callable[[Rows], tuple[Rows, bool]]


def merger(
    plan: MergePlan, sources: int, sem: Semantics, types: Sequence[Any] | None = None
) -> Merger:
    """The merger that carries out ``plan`` over ``sources`` shard streams.

    ``types`` are the type codes of the shards' columns: computed columns
    take the types the database would give them.

    >>> from shardq.merge.drive import drive_sync
    >>> from shardq.merge.evaluate import semantics
    >>> from shardq.merge.steps import MergePlan, SortKey
    >>> plan = MergePlan(order=(SortKey(0),), offset=1, limit=2)
    >>> drive_sync(merger(plan, 2, semantics("postgres")), [[[(1,), (5,)]], [[(2,), (3,)]]])
    [(2,), (3,)]
    """
    if plan.final is not None:
        return _final(concat(sources), plan.final)
    if plan.first_source_only:
        return concat(1)  # the others did the same (a write to a reference table)
    if plan.limit == 0:
        return _nothing()
    if plan.setop is not None:
        return _counted(concat(sources), plan, sources, types)
    floats = _float_columns(types)
    inner = kway(sources, plan.order, floats) if plan.order else concat(sources)
    if plan.trivial:
        return inner
    if plan.streaming:
        return _through(inner, _streaming(plan, _nan_columns(types)))
    aggregate = plan.aggregate
    if aggregate is not None and aggregate.sorted and not (floats & set(range(aggregate.groups))):
        # NaN keys would not compare equal in Python: those take the hash path.
        return _sorted_groups(inner, plan, sem, types)
    return _in_memory(inner, plan, sem, types)


def _float_columns(types: Sequence[Any] | None) -> frozenset[int]:
    """The columns (also as negative indices) that can hold NaN: float and numeric."""
    if types is None:
        return frozenset()
    width = len(types)
    found = {i for i, t in enumerate(types) if t in _NAN_TYPES}
    return frozenset(found | {i - width for i in found})


def _nothing() -> Merger:
    return
    yield  # pragma: no cover


def _through(inner: Merger, transform: Transform) -> Merger:
    """Forward ``inner``'s requests, passing its emitted rows through ``transform``."""
    try:
        request = next(inner)
        while True:
            if isinstance(request, Fetch):
                request = inner.send((yield request))
                continue
            rows, done = transform(request)
            if rows:
                yield rows
            if done:
                return
            request = inner.send(None)
    except StopIteration:
        return
    finally:
        inner.close()


class _Window:
    """OFFSET and LIMIT over rows that arrive in order, and the helper columns dropped.

    With ``ties`` (FETCH FIRST ... WITH TIES) the rows after the LIMIT's last
    one are kept while their ``ties`` columns equal its own; the window is
    full at the first row that does not tie.
    """

    def __init__(self, plan: MergePlan, ties: Sequence[SortKey] = ()):
        self._skip = plan.offset
        self._left = plan.limit
        self._hidden = plan.hidden
        self._tie = _tie(ties) if plan.ties else None
        self._last: tuple[Any, ...] | None = None

    def __call__(self, rows: Rows) -> tuple[Rows, bool]:
        """The rows of this batch inside the window, and whether the window is full."""
        if self._skip:
            taken = rows[: self._skip]
            rows = rows[self._skip :]
            self._skip -= len(taken)
        full = False
        if self._left is not None:
            kept = rows[: self._left]
            self._left -= len(kept)
            full = self._left == 0
            if full and self._tie is not None and (kept or self._last is not None):
                last = kept[-1] if kept else self._last
                assert last is not None
                rest = rows[len(kept) :]
                tied = 0
                while tied < len(rest) and self._tie(rest[tied], last):
                    tied += 1
                kept += rest[:tied]
                self._last = last
                full = tied < len(rest)  # a row that does not tie ends the window
            rows = kept
        if self._hidden:
            rows = [row[: -self._hidden] for row in rows]
        return rows, full


def _tie(keys: Sequence[SortKey]) -> Callable[[tuple[Any, ...], tuple[Any, ...]], bool]:
    """Whether two rows are peers in the ORDER BY of ``keys`` (NULLs, NaNs alike)."""
    columns = [k.column for k in keys]

    def same(a: Any, b: Any) -> bool:
        return a is b or bool(a == b) or (a is not None and b is not None and a != a and b != b)

    return lambda row, last: all(same(row[i], last[i]) for i in columns)


def _with_ties(rows: Rows, plan: MergePlan) -> Rows:
    """The OFFSET and LIMIT window of sorted ``rows``, with the rows tying with its last."""
    end = None if plan.limit is None else plan.offset + plan.limit
    window = rows[plan.offset : end]
    if plan.ties and end is not None and window:
        tie = _tie(plan.sort)
        while end < len(rows) and tie(rows[end], window[-1]):
            window.append(rows[end])
            end += 1
    return window


def _final(inner: Merger, step: FinalStep) -> Merger:
    """Load the rows into SQLite as they arrive; emit what ``step`` computes from them."""
    table = FinalTable(step)
    try:

        def load(rows: Rows) -> tuple[Rows, bool]:
            table.load(rows)
            return [], False

        yield from _through(inner, load)
        rows = table.compute()
    finally:
        table.close()
    for start in range(0, len(rows), _CHUNK):
        yield rows[start : start + _CHUNK]


def _streaming(plan: MergePlan, nan_columns: Sequence[int] | None) -> Transform:
    window = _Window(plan, plan.order)
    width = -plan.hidden or None
    seen: set[tuple[Any, ...]] | None = set() if plan.distinct else None
    canonical = _canonical_nans(nan_columns)
    if plan.collations is not None:
        # SQLite: values equal under the column's collation are one (1 and 1.0 too).
        keys = [sqlite_value(c) for c in plan.collations]

        def canonical(row: tuple[Any, ...]) -> tuple[Any, ...]:
            return tuple(k(v) for k, v in zip(keys, row, strict=False))

    def transform(rows: Rows) -> tuple[Rows, bool]:
        if seen is not None:
            fresh = []
            for row in rows:
                visible = canonical(row[:width] if width is not None else row)
                if visible not in seen:
                    seen.add(visible)
                    fresh.append(row)
            rows = fresh
        return window(rows)

    return transform


def _sorted_groups(
    inner: Merger, plan: MergePlan, sem: Semantics, types: Sequence[Any] | None
) -> Merger:
    """Regroup partial rows that arrive sorted on the group key, emitting each group as it closes.

    Memory holds one group; a LIMIT stops reading the shards.
    """
    assert plan.aggregate is not None
    assert plan.outputs is not None
    regroup = _regroup(plan, types)
    assert regroup is not None
    keep = compile_expr(plan.having, sem) if plan.having is not None else None
    compute = compile_row([o.expr for o in plan.outputs], sem)
    window = _Window(plan, plan.sort)
    finished = False

    def finish(groups: Rows) -> tuple[Rows, bool]:
        nonlocal finished
        if keep is not None:
            groups = [row for row in groups if keep(row) is True]
        rows = [compute(row) for row in groups]
        if types is not None:
            rows = _typed(rows, plan, types, sem)
        rows, finished = window(rows)
        return rows, finished

    def transform(rows: Rows) -> tuple[Rows, bool]:
        regroup.feed(rows)
        return finish(regroup.complete())

    yield from _through(inner, transform)
    if not finished:
        rows, _ = finish(regroup.rows())
        for start in range(0, len(rows), _CHUNK):
            yield rows[start : start + _CHUNK]


def _counted(inner: Merger, plan: MergePlan, sources: int, types: Sequence[Any] | None) -> Merger:
    """A set operation: rows counted per branch, then sorted and windowed."""
    assert plan.setop is not None
    values = None if types is None else types[:-1]  # the branch number is the last column
    canonical = _canonical_nans(_nan_columns(values))
    if plan.collations is not None:
        keys = [sqlite_value(c) for c in plan.collations]

        def canonical(row: tuple[Any, ...]) -> tuple[Any, ...]:
            return tuple(k(v) for k, v in zip(keys, row, strict=False))

    counter = Counter(plan.setop, sources, canonical)

    def count(rows: Rows) -> tuple[Rows, bool]:
        counter.feed(rows)
        return [], False

    yield from _through(inner, count)
    rows = counter.rows()
    if plan.sort:
        rows = _ordered(rows, plan.sort, plan, _float_columns(values))
    rows = _with_ties(rows, plan)
    for start in range(0, len(rows), _CHUNK):
        yield rows[start : start + _CHUNK]


def _in_memory(
    inner: Merger, plan: MergePlan, sem: Semantics, types: Sequence[Any] | None
) -> Merger:
    regroup = _regroup(plan, types)
    collected: Rows = []

    def collect(rows: Rows) -> tuple[Rows, bool]:
        if regroup is not None:
            regroup.feed(rows)
        else:
            collected.extend(rows)
        return [], False

    yield from _through(inner, collect)
    rows = regroup.rows() if regroup is not None else collected
    if plan.having is not None:
        keep = compile_expr(plan.having, sem)
        rows = [row for row in rows if keep(row) is True]
    outputs = plan.outputs
    if outputs is not None and plan.sort and not plan.distinct and _columns_only(outputs):
        # The output columns are columns of these rows: sort these rows by the
        # same columns, and take the output columns of the rows kept only.
        sort = tuple(replace(k, column=_column(outputs[k.column])) for k in plan.sort)
        rows = _ordered(rows, sort, plan, _float_columns(types))
        take = compile_row([o.expr for o in outputs], sem)
        rows = [take(row) for row in rows]
    else:
        if outputs is not None:
            compute = compile_row([o.expr for o in outputs], sem)
            rows = [compute(row) for row in rows]
            if types is not None:
                rows = _typed(rows, plan, types, sem)
        out_types = (
            [output_type(o.type, types, sem) for o in outputs]
            if outputs is not None and types is not None
            else types
        )
        if plan.distinct:
            width = -plan.hidden or None
            canonical = _canonical_nans(_nan_columns(out_types))
            firsts: dict[tuple[Any, ...], tuple[Any, ...]] = {}
            for row in rows:
                firsts.setdefault(canonical(row[:width] if width is not None else row), row)
            rows = list(firsts.values())
        if plan.sort:
            rows = _ordered(rows, plan.sort, plan, _float_columns(out_types))
    rows = _with_ties(rows, plan)
    if plan.hidden:
        rows = [row[: -plan.hidden] for row in rows]
    for start in range(0, len(rows), _CHUNK):
        yield rows[start : start + _CHUNK]


_NAN_TYPES = frozenset({FLOAT4, FLOAT8, NUMERIC})
# Types whose Python values compare with == as the database compares them: bool,
# integers, numeric, floats, text, varchar, char, name, date, timestamp(tz), uuid.
_SCALAR_TYPES = frozenset({BOOL, INT2, INT4, INT8, NUMERIC, FLOAT4, FLOAT8, TEXT})
_SCALAR_TYPES |= {1043, 1042, 19, 1082, 1114, 1184, 2950}


def _nan_columns(types: Sequence[Any] | None) -> tuple[int, ...] | None:
    """The columns whose type can hold NaN (float, numeric, or unknown); None: every column."""
    if types is None:
        return None
    return tuple(i for i, t in enumerate(types) if t is None or t in _NAN_TYPES)


def _regroup(plan: MergePlan, types: Sequence[Any] | None) -> Regroup | None:
    if plan.aggregate is None:
        return None
    groups = plan.aggregate.groups
    nan_columns = _nan_columns(types)
    keys = None if nan_columns is None else [i for i in nan_columns if i < groups]
    scalar = types is not None and all(types[i] in _SCALAR_TYPES for i in range(1, groups))
    return Regroup(plan.aggregate, keys, scalar_keys=scalar)


def _canonical_nans(columns: Sequence[int] | None) -> Callable[[tuple[Any, ...]], tuple[Any, ...]]:
    """A function giving a row with each NaN replaced by the first NaN of its type seen.

    NaN is not equal to itself in Python, and two NaN objects hash apart;
    DISTINCT in PostgreSQL keeps one. ``columns`` are those that can hold NaN
    (None: any); a row without NaN is returned as it is.
    """
    if columns is not None and not columns:
        return lambda row: row
    nans: dict[type, Any] = {}

    def canonical(row: tuple[Any, ...]) -> tuple[Any, ...]:
        places = range(len(row)) if columns is None else columns
        if not any(i < len(row) and row[i] != row[i] for i in places):
            return row
        return tuple(nans.setdefault(type(v), v) if v != v else v for v in row)

    return canonical


def _columns_only(outputs: Sequence[Output]) -> bool:
    return all(isinstance(o.expr, Col) for o in outputs)


def _column(output: Output) -> int:
    assert isinstance(output.expr, Col)
    return output.expr.index


def _ordered(rows: Rows, sort: Sequence[SortKey], plan: MergePlan, floats: frozenset[int]) -> Rows:
    """``rows`` in the ORDER BY's order; only the first OFFSET + LIMIT of them when that is set.

    (Every row, with WITH TIES: the rows after the window that tie are kept too.)
    """
    end = None if plan.limit is None or plan.ties else plan.offset + plan.limit
    if len(sort) == 1 and sort[0].column not in floats and sort[0].collation is None:
        # One term: the NULLs apart, the values by the column itself (a C-level
        # key, no tuple per row). NaN, which needs a key of its own, takes the general way.
        term = sort[0]
        nulls = [row for row in rows if row[term.column] is None]
        if nulls:
            rows = [row for row in rows if row[term.column] is not None]
        ordered = _pick(rows, end, operator.itemgetter(term.column), term.descending)
        return nulls + ordered if term.nulls_first else ordered + nulls
    key, reverse = sort_key(sort, floats)
    return _pick(rows, end, key, reverse)


def _pick(rows: Rows, end: int | None, key: Callable[[Any], Any], reverse: bool) -> Rows:
    """``rows`` sorted by ``key`` (at least their first ``end``), ties in their order."""
    if end is not None and end * _TOP_K_RATIO < len(rows):
        # The first rows of many (TPC-H Q10: 20 of ~4,000 groups): a heap
        # selection, which heapq defines as sorted(...)[:end], ties included.
        pick = heapq.nlargest if reverse else heapq.nsmallest
        return pick(end, rows, key=key)
    rows.sort(key=key, reverse=reverse)
    return rows


#: A LIMIT below this fraction of the rows is selected with a heap, not a full sort.
_TOP_K_RATIO = 4

_CASTABLE = frozenset({NUMERIC, FLOAT4, FLOAT8})
_RANGED = frozenset({INT2, INT4})  # computed smallint and integer results: range-checked


def _typed(rows: Rows, plan: MergePlan, types: Sequence[Any], sem: Semantics) -> Rows:
    """Computed columns as the database types them.

    A computed column has one type, whatever each row's value came from
    (``coalesce(sum(n), -1)`` is numeric even where it is -1), and a smallint or
    integer result out of its range is the database's error. Columns and
    arithmetic already come typed; coalesce and constants may not.
    """
    assert plan.outputs is not None
    casts = []
    for i, output in enumerate(plan.outputs):
        if isinstance(output.expr, Col):
            continue
        type_code = output_type(output.type, types, sem)
        untyped = isinstance(output.expr, Const) or (
            isinstance(output.expr, Call)
            and output.expr.op in ("coalesce", "case", "greatest", "least")
        )
        if type_code in _RANGED or (type_code in _CASTABLE and untyped):
            casts.append((i, type_code))
    return [_cast(row, casts) for row in rows] if casts else rows


def _cast(row: tuple[Any, ...], casts: list[tuple[int, Any]]) -> tuple[Any, ...]:
    values = list(row)
    for i, type_code in casts:
        values[i] = coerce(values[i], type_code)
    return tuple(values)


def compared_columns(plan: MergePlan, types: Sequence[Any], sem: Semantics) -> list[Any]:
    """The type codes of the values the merge orders (ORDER BY terms, MIN and MAX)."""
    found = [
        types[k.column]
        for k in plan.order
        if not k.code_point and -len(types) <= k.column < len(types)
    ]
    if plan.aggregate is not None:
        start = plan.aggregate.groups
        found += [
            types[start + i]
            for i, c in enumerate(plan.aggregate.combines)
            if c in (Combine.MIN, Combine.MAX) and start + i < len(types)
        ]
    if plan.setop is not None:
        found += [types[k.column] for k in plan.sort if not k.code_point]
    if plan.outputs is not None and plan.sort:
        found += [
            output_type(plan.outputs[k.column].type, types, sem)
            for k in plan.sort
            if not k.code_point
        ]
    return found


def describe(
    plan: MergePlan, shards: Sequence[Column] | None, sem: Semantics
) -> tuple[Column, ...] | None:
    """The merged result's ``description``, from one shard's."""
    if shards is None:
        return None
    if plan.final is not None:
        return tuple(Column(name, None) for name in plan.final.names)
    if plan.outputs is None:
        columns = tuple(shards)
    else:
        types = [c.type_code for c in shards]
        columns = tuple(_described(o, shards, types, sem) for o in plan.outputs)
    return columns[: -plan.hidden] if plan.hidden else columns


def _described(
    output: Output, shards: Sequence[Column], types: list[Any], sem: Semantics
) -> Column:
    """An output column's entry: its type, and a numeric's precision and scale when known.

    A copied column keeps its source's; a cast to ``numeric(p, s)`` has the
    cast's (as PostgreSQL describes it: columnar results type it by them).
    """
    type_code = output_type(output.type, types, sem)
    source = output.type.copy
    if source is not None and -len(shards) <= source < len(shards):
        column = shards[source]
        return Column(output.name, type_code, precision=column.precision, scale=column.scale)
    expr = output.expr
    if isinstance(expr, Call) and expr.op == "to_numeric" and len(expr.args) == 3:
        precision, scale = expr.args[1], expr.args[2]
        if isinstance(precision, Const) and isinstance(scale, Const):
            return Column(output.name, type_code, precision=precision.value, scale=scale.value)
    return Column(output.name, type_code)
