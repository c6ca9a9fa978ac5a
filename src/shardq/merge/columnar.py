"""Merges on Arrow tables: the columnar twin of :mod:`shardq.merge.pipeline` for common plans.

When the shards' rows arrive as Arrow (:mod:`shardq.execute.arrowread`),
the merge runs on whole columns with pyarrow compute instead of Python rows:

1. each shard's table is conformed to the row path's types
   (:mod:`shardq.merge.arrowtypes`) and the tables are concatenated;
2. a plan that regroups folds the partial aggregates by group key with
   ``Table.group_by`` (COUNT and SUM summed, MIN, MAX, BOOL_AND, BOOL_OR;
   without GROUP BY, one row even from none), in the group key's order when
   the shards sorted their partial rows for the result; HAVING and computed output columns (``avg``
   from its sum and count, expressions) are then evaluated per *group* by
   the row path's own evaluator (:mod:`shardq.merge.evaluate`), so they
   mean what they mean there; plain output columns stay Arrow;
3. the result is sorted when the plan orders it (``sort_indices`` over the
   whole result: the order of the k-way merge, which only interleaves runs
   sorted the same way), OFFSET and LIMIT are a slice, the helper columns
   are dropped.

:func:`unsupported` says why a plan or a column type is not one of these;
the row path answers those, so the answer never differs: DISTINCT, WITH
TIES, set operations, COUNT(DISTINCT) and the float aggregates' states
(stddev, variance), float group keys and MIN or MAX of floats (NaN and -0.0), and
columns of a type ADBC reads otherwise than psycopg (interval, uuid, JSON,
arrays, timetz, oid, enums, ...).

Ordering matches PostgreSQL's: NULLs first or last per key (a helper key),
NaN above every number in either direction, text by code point (the engine
refuses to merge text ordered under another collation before this runs),
bytea bytewise.
"""

from __future__ import annotations

import decimal
from typing import TYPE_CHECKING, Any

from shardq.errors import DataError
from shardq.export import arrow_type
from shardq.merge.arrowtypes import READABLE, conform, python_values, settle
from shardq.merge.evaluate import compile_expr, output_type
from shardq.merge.pipeline import _typed
from shardq.merge.steps import Call, Col, Combine, Param
from shardq.pgtypes import NUMERIC, TIMESTAMPTZ

if TYPE_CHECKING:
    from collections.abc import Sequence

    import pyarrow

    from shardq.execute.driver import Column
    from shardq.merge.evaluate import Semantics
    from shardq.merge.steps import Aggregation, Expr, MergePlan, SortKey

__all__ = ["finish", "merge", "unsupported", "unsupported_plan"]

_FLOATS = frozenset({700, 701})
#: pyarrow's (hash) aggregate folding each combine's partial values across shards.
_COMBINES = {
    Combine.COUNT: "sum", Combine.SUM: "sum", Combine.MIN: "min", Combine.MAX: "max",
    Combine.BOOL_AND: "all", Combine.BOOL_OR: "any",
    Combine.ANY: "min",  # equal in every partial row of its group: any one of them
}  # fmt: skip


def unsupported_plan(plan: MergePlan) -> str | None:
    """Why the columnar merge cannot carry out ``plan``, whatever its columns; None if it can.

    >>> from shardq.merge.steps import MergePlan, SortKey
    >>> unsupported_plan(MergePlan(order=(SortKey(0),), limit=3)) is None
    True
    >>> unsupported_plan(MergePlan(distinct=True))
    'DISTINCT'
    """
    why = (
        "a merge in SQLite" if plan.final is not None
        else "a set operation" if plan.setop is not None
        else "a write's result" if plan.first_source_only
        else "DISTINCT" if plan.distinct
        else "WITH TIES" if plan.ties
        else None
    )  # fmt: skip
    if why is not None:
        return why
    if plan.aggregate is not None:
        if any(c not in _COMBINES for c in plan.aggregate.combines):
            return "COUNT(DISTINCT) or a float aggregate's state"
        if plan.outputs is None:
            return "a regroup without output columns"
        exprs = [o.expr for o in plan.outputs]
        if plan.having is not None:
            exprs.append(plan.having)
        if any(_has_param(e) for e in exprs):
            return "a bound parameter in the merge"
    elif plan.outputs is not None or plan.sort or plan.having is not None:
        return "a computed output column"
    if any(key.collation is not None for key in (*plan.order, *plan.sort)):
        return "a SQLite collation"
    return None


def _has_param(expr: Expr) -> bool:
    if isinstance(expr, Param):
        return True
    return isinstance(expr, Call) and any(_has_param(a) for a in expr.args)


def unsupported(plan: MergePlan, columns: Sequence[Column], sem: Semantics) -> str | None:
    """Why the columnar merge cannot carry out ``plan`` over ``columns``; None if it can.

    >>> from shardq.execute.driver import Column
    >>> from shardq.merge.evaluate import semantics
    >>> from shardq.merge.steps import MergePlan, SortKey
    >>> pg = semantics("postgres")
    >>> unsupported(MergePlan(order=(SortKey(0),), limit=3), [Column("x", 23)], pg)
    >>> unsupported(MergePlan(distinct=True), [Column("x", 23)], pg)
    'DISTINCT'
    >>> unsupported(MergePlan(), [Column("x", 114)], pg)
    "column 'x' of type OID 114"
    """
    why = unsupported_plan(plan)
    if why is not None:
        return why
    for column in columns:
        if column.type_code not in READABLE:
            return f"column {column.name!r} of type OID {column.type_code}"
    types = [c.type_code for c in columns]
    keys = plan.order
    if plan.aggregate is not None:
        aggregate = plan.aggregate
        if any(types[i] in _FLOATS for i in range(aggregate.groups)):
            return "a float group key"
        for offset, combine in enumerate(aggregate.combines):
            if (
                combine in (Combine.MIN, Combine.MAX, Combine.ANY)
                and types[aggregate.groups + offset] in _FLOATS
            ):
                return "MIN or MAX of floats"
        if aggregate.sorted and any(not -len(types) <= k.column < len(types) for k in plan.order):
            return "a sort key outside the columns"
        assert plan.outputs is not None
        outputs = [output_type(o.type, types, sem) for o in plan.outputs]
        for output, kind in zip(plan.outputs, outputs, strict=True):
            if not isinstance(output.expr, Col) and (kind not in READABLE or kind == TIMESTAMPTZ):
                return f"a computed column {output.name!r} of type OID {kind}"
        types = outputs
        keys = plan.sort
    for key in keys:
        if not -len(types) <= key.column < len(types):
            return "a sort key outside the columns"
    return None


def finish(
    tables: Sequence[pyarrow.Table],
    columns: Sequence[Column],
    plan: MergePlan,
    description: Sequence[Column],
    sem: Semantics,
) -> pyarrow.Table:
    """The result of the shards' tables from :func:`~shardq.merge.arrowtypes.prepare`, typed
    as rows give it.

    ``columns`` are the shards' (:func:`~shardq.merge.arrowtypes.columns_of`),
    ``description`` the merged result's.
    """
    return settle(merge(conform(tables, columns), plan, columns, sem), description)


def merge(
    tables: Sequence[pyarrow.Table], plan: MergePlan, columns: Sequence[Column], sem: Semantics
) -> pyarrow.Table:
    """The merged result of the shards' conformed ``tables`` (see the module docstring).

    >>> import pyarrow as pa
    >>> from shardq.execute.driver import Column
    >>> from shardq.merge.evaluate import semantics
    >>> from shardq.merge.steps import MergePlan, SortKey
    >>> a, b = pa.table({"c0": [1, 4, None]}), pa.table({"c0": [2, 3]})
    >>> plan = MergePlan(order=(SortKey(0, descending=True, nulls_first=True),), limit=3)
    >>> merge([a, b], plan, [Column("x", 20)], semantics("postgres")).column("c0").to_pylist()
    [None, 4, 3]
    """
    import pyarrow as pa

    table = pa.concat_tables(tables)
    width = len(columns)
    keys = plan.order
    if plan.aggregate is not None:
        assert plan.outputs is not None
        table = _regroup(table, plan.aggregate, width)
        if plan.aggregate.sorted and plan.order:
            # The groups in the order the shards sorted their partial rows (the result's).
            table = table.take(_order(table, plan.order, width))
        table = _outputs(table, plan, [c.type_code for c in columns], sem)
        width = len(plan.outputs)
        keys = plan.sort
    if keys:
        table = table.take(_order(table, keys, width))
    if plan.offset or plan.limit is not None:
        table = table.slice(plan.offset, plan.limit)
    if plan.hidden:
        gone = {f"{p}{i}" for i in range(width - plan.hidden, width) for p in "cs"}
        table = table.select([n for n in table.column_names if n not in gone])
    return table


def _regroup(table: pyarrow.Table, aggregate: Aggregation, width: int) -> pyarrow.Table:
    """Fold the partial rows by group key: columns ``c<i>`` as the partial rows have them."""
    import pyarrow as pa
    import pyarrow.compute as pc

    groups = [f"c{i}" for i in range(aggregate.groups)]
    folds = [(f"c{aggregate.groups + i}", _COMBINES[c]) for i, c in enumerate(aggregate.combines)]
    # A MIN or MAX keeps its value's own scale (the least of 1.5 and 2.500 is 1.5); every
    # other scale column is the widest of its group's (a sum's, a group's constant's).
    picked: dict[str, Combine] = {
        f"s{aggregate.groups + i}": c
        for i, c in enumerate(aggregate.combines)
        if c in (Combine.MIN, Combine.MAX) and f"s{aggregate.groups + i}" in table.column_names
    }
    folds += [(n, "max") for n in table.column_names if n.startswith("s") and n not in picked]
    summed_wide: dict[str, Any] = {}  # integer sums done in decimal: name -> integer type
    for name, function in folds:
        column = table.column(name)
        if function == "sum" and pa.types.is_integer(column.type) and len(column):
            # pyarrow's integer sums wrap around; PostgreSQL's (and the rows') do not.
            low, high = pc.min_max(column).values()
            widest = max(abs(low.as_py() or 0), abs(high.as_py() or 0))
            if widest * len(column) >= 2**63:
                summed_wide[name] = column.type
                index = table.column_names.index(name)
                table = table.set_column(index, name, column.cast(pa.decimal128(38, 0)))
        elif function == "sum" and pa.types.is_decimal128(column.type) and len(column):
            # A sum may need more digits than its terms: decimal256 when 38 may not hold it.
            low, high = pc.min_max(column).values()
            widest = max(abs(low.as_py() or 0), abs(high.as_py() or 0))
            digits = (widest.adjusted() + 1 if widest >= 1 else 0) + len(str(len(column)))
            if digits + column.type.scale > 38:
                wide = pa.decimal256(76, column.type.scale)
                table = table.set_column(table.column_names.index(name), name, column.cast(wide))
    if picked and groups:
        # The groups in their keys' order, as _picked_scales folds them.
        table = table.take(pc.sort_indices(table, [(g, "ascending") for g in groups]))
    arrays: dict[str, Any] = {}
    if aggregate.scalar:  # exactly one row, even from no rows
        for name, function in folds:
            column = table.column(name)
            value = getattr(pc, function)(column).as_py()
            if value is None and _is_count(aggregate, name):
                value = 0  # count() of no rows
            arrays[name] = pa.array([value], type=column.type)
    else:
        folded = table.group_by(groups, use_threads=False).aggregate(folds)
        arrays = {name: folded.column(name) for name in groups}
        for name, function in folds:
            arrays[name] = folded.column(f"{name}_{function}")
    if picked:
        arrays.update(_picked_scales(table, groups, picked, scalar=aggregate.scalar))
    for name, kind in summed_wide.items():
        try:
            arrays[name] = arrays[name].cast(kind)
        except pa.ArrowInvalid as exc:
            raise DataError(f"a sum is out of the range of its type ({kind}): {exc}") from exc
    return pa.table(arrays)


def _picked_scales(
    table: pyarrow.Table, groups: list[str], picked: dict[str, Combine], *, scalar: bool
) -> dict[str, Any]:
    """The scale of each group's MIN or MAX value: the scale column ``s<i>`` of the row
    holding it (``picked``: scale column -> combine), one per group in the group keys'
    order (``table`` is sorted on them), or one value when ``scalar``."""
    import pyarrow as pa
    import pyarrow.compute as pc

    found: dict[str, Any] = {}
    for name, combine in picked.items():
        direction = "ascending" if combine is Combine.MIN else "descending"
        keys = [*((g, "ascending") for g in groups), (f"c{name[1:]}", direction)]
        ranked = table.take(pc.sort_indices(table, keys))
        if scalar:
            # The first scale not NULL: a NULL value's, and only it, is NULL.
            scales = pc.drop_null(ranked.column(name))
            found[name] = pa.array([scales[0].as_py() if len(scales) else None], pa.int32())
        else:
            folded = ranked.group_by(groups, use_threads=False).aggregate([(name, "first")])
            found[name] = folded.column(f"{name}_first")
    return found


def _is_count(aggregate: Aggregation, name: str) -> bool:
    if not name.startswith("c"):
        return False
    offset = int(name[1:]) - aggregate.groups
    return 0 <= offset < len(aggregate.combines) and aggregate.combines[offset] is Combine.COUNT


def _outputs(
    table: pyarrow.Table, plan: MergePlan, types: Sequence[Any], sem: Semantics
) -> pyarrow.Table:
    """HAVING, then the output columns ``c<j>`` (and their scale columns) of the groups."""
    import pyarrow as pa

    assert plan.outputs is not None
    if plan.having is not None:
        keep = compile_expr(plan.having, sem)
        rows = _rows(table, [plan.having], len(types))
        table = table.filter(pa.array([keep(row) is True for row in rows], type=pa.bool_()))
    computed = [o.expr for o in plan.outputs if not isinstance(o.expr, Col)]
    values: dict[int, list[Any]] = {}
    if computed:
        rows = _rows(table, computed, len(types))
        outputs = [
            None if isinstance(o.expr, Col) else compile_expr(o.expr, sem) for o in plan.outputs
        ]
        shaped = [tuple(f(row) if f else None for f in outputs) for row in rows]
        typed = _typed(shaped, plan, types, sem)
        values = {j: [row[j] for row in typed] for j, f in enumerate(outputs) if f is not None}
    arrays: dict[str, Any] = {}
    for j, output in enumerate(plan.outputs):
        if isinstance(output.expr, Col):
            index = output.expr.index
            arrays[f"c{j}"] = table.column(f"c{index}")
            if f"s{index}" in table.column_names:
                arrays[f"s{j}"] = table.column(f"s{index}")
            continue
        kind = output_type(output.type, types, sem)
        arrays.update(_computed(output.name, j, values[j], kind))
    return pa.table(arrays)


def _refs(expr: Expr, found: set[int]) -> set[int]:
    if isinstance(expr, Col):
        found.add(expr.index)
    elif isinstance(expr, Call):
        for arg in expr.args:
            _refs(arg, found)
    return found


def _rows(table: pyarrow.Table, exprs: Sequence[Expr], width: int) -> list[tuple[Any, ...]]:
    """The groups as the row path's rows, with only the columns ``exprs`` use filled in."""
    used: set[int] = set()
    for expr in exprs:
        _refs(expr, used)
    if not used:
        return [()] * table.num_rows
    empty = [None] * table.num_rows  # (read only: one list serves every unused column)
    columns = [python_values(table, i) if i in used else empty for i in range(width)]
    return list(zip(*columns, strict=True))


def _computed(name: str, j: int, values: list[Any], kind: Any) -> dict[str, Any]:
    """A computed output column ``c<j>`` of type ``kind`` (OID), with its scale column."""
    import pyarrow as pa

    from shardq.execute.driver import Column

    if kind != NUMERIC:
        return {f"c{j}": pa.array(values, type=arrow_type(Column(name, kind)))}
    scales: list[int | None] = []
    for value in values:
        if value is None:
            scales.append(None)
            continue
        exponent = decimal.Decimal(value).as_tuple().exponent
        if not isinstance(exponent, int):
            raise DataError(
                f"column {name!r} holds numeric {value}, which no Arrow decimal holds; "
                "cast the column to float8 or text in the SQL"
            )
        scales.append(max(-exponent, 0))
    widest = max((s for s in scales if s is not None), default=0)
    kind = pa.decimal128(38, widest)
    try:
        array = pa.array(values, type=kind)
    except (pa.ArrowInvalid, OverflowError):
        array = pa.array(values, type=pa.decimal256(76, widest))
    return {f"c{j}": array, f"s{j}": pa.array(scales, type=pa.int32())}


def _order(table: pyarrow.Table, keys: Sequence[SortKey], width: int) -> pyarrow.Array:
    """The row indices of ``table`` in the order of ``keys``, PostgreSQL's order."""
    import pyarrow as pa
    import pyarrow.compute as pc

    helpers: dict[str, Any] = {}
    sort: list[tuple[str, str]] = []
    for n, key in enumerate(keys):
        column = table.column(f"c{key.column % width}")
        # NULLs first or last per key: a boolean helper key before the value.
        helpers[f"n{n}"] = pc.is_null(column)
        sort.append((f"n{n}", "descending" if key.nulls_first else "ascending"))
        direction = "descending" if key.descending else "ascending"
        if pa.types.is_floating(column.type):
            # NaN is above every number in PostgreSQL, in either direction.
            helpers[f"f{n}"] = pc.fill_null(pc.is_nan(column), False)
            sort.append((f"f{n}", direction))
        helpers[f"v{n}"] = column
        sort.append((f"v{n}", direction))
    return pc.sort_indices(pa.table(helpers), sort_keys=sort)
