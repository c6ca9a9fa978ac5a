"""Merges on Arrow tables: the columnar twin of :mod:`shardq.merge.pipeline` for common plans.

When the shards' rows arrive as Arrow (:mod:`shardq.execute.arrowread`),
the merge runs on whole columns with pyarrow compute instead of Python rows:

1. each shard's table is *conformed* to the types the row path gives
   (:func:`conform`: numeric(p, s) as decimal128(p, s), timestamptz in the
   session's zone, ADBC's column metadata dropped);
2. the tables are concatenated; a plan that regroups folds the partial
   aggregates by group key (COUNT and SUM summed, MIN, MAX) with
   ``Table.group_by``;
3. the result is sorted when the plan orders it (``sort_indices`` over the
   whole result: the same order as the k-way merge, which only interleaves
   runs already sorted the same way), then OFFSET and LIMIT are a slice, and
   the helper columns are dropped.

:func:`unsupported` says, before any row is read, why a plan or a column
type is not one of these (then the row path answers, so the answer never
differs): DISTINCT, HAVING, WITH TIES, set operations, computed outputs
(``avg``, expressions), a scalar aggregate, COUNT(DISTINCT), float group
keys or MIN/MAX of floats (NaN and -0.0), interval, uuid, JSON, array,
timetz, oid and unconstrained numeric columns (the row path sizes their
decimal to the values it emits), and any type it does not know.

Ordering matches PostgreSQL's: NULLs first or last per key (a helper key
per column), NaN above every number in either direction, text by code
point (the engine refuses to merge text ordered under another collation
before this runs), bytea bytewise.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shardq.errors import DataError
from shardq.export import arrow_type
from shardq.merge.steps import Col, Combine

if TYPE_CHECKING:
    from collections.abc import Sequence

    import pyarrow

    from shardq.execute.driver import Column
    from shardq.merge.steps import MergePlan, SortKey

__all__ = ["columns_of", "conform", "finish", "merge", "unsupported", "unsupported_plan"]

_FLOATS = frozenset({700, 701})
_NUMERIC, _TIMESTAMPTZ = 1700, 1184
#: Types whose ADBC column is the row path's as it is (or after a cast of the zone or
#: the numeric text): bool, bytea, "char", name, int8/2/4, text, float4/8, bpchar,
#: varchar, date, time, timestamp, timestamptz, numeric(p, s).
_READABLE = frozenset(
    {16, 17, 18, 19, 20, 21, 23, 25, 700, 701, 1042, 1043, 1082, 1083, 1114, 1184, 1700}
)
_COMBINES = {Combine.COUNT: "sum", Combine.SUM: "sum", Combine.MIN: "min", Combine.MAX: "max"}
#: ADBC's type names (its fields' ``POSTGRESQL:type`` metadata) of the readable types.
_OIDS = {
    b"bool": 16, b"bytea": 17, b"char": 18, b"name": 19, b"int8": 20, b"int2": 21,
    b"int4": 23, b"text": 25, b"float4": 700, b"float8": 701, b"bpchar": 1042,
    b"varchar": 1043, b"date": 1082, b"time": 1083, b"timestamp": 1114,
    b"timestamptz": 1184, b"numeric": 1700,
}  # fmt: skip


def columns_of(schema: pyarrow.Schema) -> tuple[Column, ...] | str:
    """The ``description`` of a result ADBC read, from its schema; or why it has none.

    ADBC names each column's PostgreSQL type, and a numeric's type modifier,
    in the field's metadata.

    >>> import pyarrow as pa
    >>> meta = {"POSTGRESQL:type": "numeric", "POSTGRESQL:typmod": str((12 << 16 | 3) + 4)}
    >>> [(c.name, c.type_code, c.precision, c.scale)
    ...  for c in columns_of(pa.schema([pa.field("n", pa.string(), metadata=meta)]))]
    [('n', 1700, 12, 3)]
    >>> columns_of(pa.schema([pa.field("j", pa.string(), metadata={"POSTGRESQL:type": "json"})]))
    "column 'j' of type json"
    """
    from shardq.execute.driver import Column

    columns = []
    for field in schema:
        meta = field.metadata or {}
        name = meta.get(b"POSTGRESQL:type", b"")
        oid = _OIDS.get(name)
        if oid is None:
            return f"column {field.name!r} of type {name.decode(errors='replace') or 'unknown'}"
        precision = scale = None
        typmod = int(meta.get(b"POSTGRESQL:typmod", b"-1"))
        if oid == _NUMERIC and typmod >= 4:
            precision, scale = (typmod - 4) >> 16 & 0xFFFF, (typmod - 4) & 0xFFFF
        columns.append(Column(field.name, oid, precision=precision, scale=scale))
    return tuple(columns)


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
        else "HAVING" if plan.having is not None
        else None
    )  # fmt: skip
    if why is not None:
        return why
    if plan.aggregate is not None:
        aggregate = plan.aggregate
        if aggregate.scalar or aggregate.sorted:
            return "an aggregate without GROUP BY" if aggregate.scalar else "a sorted regroup"
        if any(c not in _COMBINES for c in aggregate.combines):
            return "a combine other than count, sum, min and max"
        if plan.outputs is None or not all(isinstance(o.expr, Col) for o in plan.outputs):
            return "a computed output column"
    elif plan.outputs is not None or plan.sort:
        return "a computed output column"
    if any(key.collation is not None for key in (*plan.order, *plan.sort)):
        return "a SQLite collation"
    return None


def unsupported(plan: MergePlan, columns: Sequence[Column]) -> str | None:
    """Why the columnar merge cannot carry out ``plan`` over ``columns``; None if it can.

    >>> from shardq.execute.driver import Column
    >>> from shardq.merge.steps import MergePlan, SortKey
    >>> unsupported(MergePlan(order=(SortKey(0),), limit=3), [Column("x", 23)])
    >>> unsupported(MergePlan(distinct=True), [Column("x", 23)])
    'DISTINCT'
    >>> unsupported(MergePlan(), [Column("x", 114)])
    "column 'x' of type OID 114"
    """
    why = unsupported_plan(plan)
    if why is not None:
        return why
    for column in columns:
        if column.type_code not in _READABLE:
            return f"column {column.name!r} of type OID {column.type_code}"
        if column.type_code == _NUMERIC and (column.precision is None or column.scale is None):
            return f"column {column.name!r}: numeric without precision and scale"
    types = [c.type_code for c in columns]
    keys = plan.order
    if plan.aggregate is not None:
        aggregate = plan.aggregate
        if any(types[i] in _FLOATS for i in range(aggregate.groups)):
            return "a float group key"
        for offset, combine in enumerate(aggregate.combines):
            if (
                combine in (Combine.MIN, Combine.MAX)
                and types[aggregate.groups + offset] in _FLOATS
            ):
                return "MIN or MAX of floats"
        assert plan.outputs is not None
        types = [types[o.expr.index] for o in plan.outputs if isinstance(o.expr, Col)]
        keys = plan.sort
    for key in keys:
        if not -len(types) <= key.column < len(types):
            return "a sort key outside the columns"
    return None


def conform(table: pyarrow.Table, columns: Sequence[Column], zone: str) -> pyarrow.Table:
    """ADBC's table of one shard with the types the row path gives ``columns``.

    ``zone`` is the session's TimeZone, the zone psycopg gives timestamptz
    values. Numeric NaN or Infinity has no decimal: refused as the row path
    refuses it.
    """
    import pyarrow as pa

    arrays = []
    fields = []
    for column, array in zip(columns, table.columns, strict=True):
        wanted = arrow_type(column)
        if column.type_code == _TIMESTAMPTZ:
            wanted = pa.timestamp("us", tz=zone)
        if array.type != wanted:
            source = array
            if isinstance(array.type, pa.ExtensionType):  # numeric: arrow.opaque over text
                source = pa.chunked_array(
                    [c.storage for c in array.chunks], array.type.storage_type
                )
            try:
                array = source.cast(wanted)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise DataError(
                    f"column {column.name!r}: a value has no exact Arrow {wanted} form ({exc}); "
                    "cast the column in the SQL (to float8 or text)"
                ) from exc
        arrays.append(array)
        fields.append(pa.field(column.name, wanted))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def merge(tables: Sequence[pyarrow.Table], plan: MergePlan) -> pyarrow.Table:
    """The merged result of the shards' conformed ``tables`` (see the module docstring).

    >>> import pyarrow as pa
    >>> from shardq.merge.steps import MergePlan, SortKey
    >>> a = pa.table({"x": [1, 4, None]})
    >>> b = pa.table({"x": [2, 3]})
    >>> plan = MergePlan(order=(SortKey(0, descending=True, nulls_first=True),), limit=3)
    >>> merge([a, b], plan).column("x").to_pylist()
    [None, 4, 3]
    """
    import pyarrow as pa

    table = pa.concat_tables(tables)
    keys = plan.order
    if plan.aggregate is not None:
        table = _regroup(table, plan)
        keys = plan.sort
    if keys:
        table = table.take(_order(table, keys))
    if plan.offset or plan.limit is not None:
        table = table.slice(plan.offset, plan.limit)
    if plan.hidden:
        table = table.select(range(table.num_columns - plan.hidden))
    return table


def _regroup(table: pyarrow.Table, plan: MergePlan) -> pyarrow.Table:
    """Fold the partial rows by group key, then take the output columns."""
    import pyarrow as pa

    aggregate = plan.aggregate
    assert aggregate is not None
    assert plan.outputs is not None
    names = [f"c{i}" for i in range(table.num_columns)]
    renamed = table.rename_columns(names)
    groups = names[: aggregate.groups]
    folds = [
        (names[aggregate.groups + i], _COMBINES[combine])
        for i, combine in enumerate(aggregate.combines)
    ]
    folded = renamed.group_by(groups, use_threads=False).aggregate(folds)
    by_name = {name: folded.column(name) for name in groups}
    for name, function in folds:
        by_name[name] = folded.column(f"{name}_{function}")
    arrays = []
    fields = []
    for output in plan.outputs:
        assert isinstance(output.expr, Col)
        index = output.expr.index
        array = by_name[names[index]]
        kind = table.schema.field(index).type
        if array.type != kind:  # a sum's wider type: back to the column's (ranges checked)
            array = array.cast(kind)
        arrays.append(array)
        fields.append(pa.field(output.name, kind))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def _order(table: pyarrow.Table, keys: Sequence[SortKey]) -> pyarrow.Array:
    """The row indices of ``table`` in the order of ``keys``, PostgreSQL's order."""
    import pyarrow as pa
    import pyarrow.compute as pc

    width = table.num_columns
    helpers: dict[str, Any] = {}
    sort: list[tuple[str, str]] = []
    for n, key in enumerate(keys):
        column = table.column(key.column % width)
        # NULLs first or last per key: a boolean helper key before the value.
        nulls = f"n{n}"
        helpers[nulls] = pc.is_null(column)
        sort.append((nulls, "descending" if key.nulls_first else "ascending"))
        direction = "descending" if key.descending else "ascending"
        if pa.types.is_floating(column.type):
            # NaN is above every number in PostgreSQL, in either direction.
            nans = f"f{n}"
            helpers[nans] = pc.fill_null(pc.is_nan(column), False)
            sort.append((nans, direction))
        values = f"v{n}"
        helpers[values] = column
        sort.append((values, direction))
    keyed = pa.table(helpers)
    return pc.sort_indices(keyed, sort_keys=sort)


def finish(
    tables: Sequence[tuple[pyarrow.Table, str]],
    columns: Sequence[Column],
    plan: MergePlan,
    description: Sequence[Column],
) -> pyarrow.Table:
    """The result of the shards' ADBC ``(table, session zone)`` pairs, typed as rows give it.

    ``columns`` are the shards' (:func:`columns_of`), ``description`` the
    merged result's (its names).
    """
    import pyarrow as pa

    conformed = [conform(table, columns, zone) for table, zone in tables]
    table = merge(conformed, plan).rename_columns([c.name for c in description])
    # The row path gives an aware column with no value to tell its zone UTC.
    utc = pa.timestamp("us", tz="UTC")
    for i, field in enumerate(table.schema):
        if pa.types.is_timestamp(field.type) and field.type.tz is not None and field.type != utc:
            column = table.column(i)
            if column.null_count == len(column):
                table = table.set_column(i, pa.field(field.name, utc), column.cast(utc))
    return table
