"""The row path's Arrow types for tables ADBC read: columns, conforming, numeric scales.

ADBC's PostgreSQL driver types a result from the wire (its fields carry the
PostgreSQL type name and modifier); the row path types it from psycopg's
description and values (:mod:`shardq.export`). The columnar path must give
the same schema, so each shard's table is *conformed*:

- numeric(p, s) arrives as text (``arrow.opaque``) and becomes
  decimal128(p, s);
- an unconstrained numeric becomes a decimal of the widest scale found, and
  keeps a *scale column* (``s<i>``, each value's own scale, as PostgreSQL
  and Python's Decimal keep ``1.50`` apart from ``1.5``) through the merge,
  so the result's decimal is sized on the values it holds, as the row path
  sizes it (:func:`settle`);
- timestamptz arrives in UTC and takes the session's zone, as psycopg gives it.

Columns are named ``c0, c1, ...`` inside the merge (a result may repeat a
name); :func:`settle` gives them the result's names back.
"""

from __future__ import annotations

import decimal
from typing import TYPE_CHECKING, Any

from shardq.errors import DataError
from shardq.export import _decimal_type, arrow_type
from shardq.pgtypes import NUMERIC, TIMESTAMPTZ

if TYPE_CHECKING:
    from collections.abc import Sequence

    import pyarrow

    from shardq.execute.driver import Column

__all__ = [
    "NUMERIC",
    "TIMESTAMPTZ",
    "columns_of",
    "conform",
    "prepare",
    "python_values",
    "settle",
]

#: ADBC's type names (its fields' ``POSTGRESQL:type`` metadata) of the types it reads
#: as the row path does (bool, bytea, "char", name, integers, text, floats, bpchar,
#: varchar, date, time, timestamp, timestamptz, numeric) and their type OIDs.
OIDS = {
    b"bool": 16, b"bytea": 17, b"char": 18, b"name": 19, b"int8": 20, b"int2": 21,
    b"int4": 23, b"text": 25, b"float4": 700, b"float8": 701, b"bpchar": 1042,
    b"varchar": 1043, b"date": 1082, b"time": 1083, b"timestamp": 1114,
    b"timestamptz": 1184, b"numeric": 1700,
}  # fmt: skip
READABLE = frozenset(OIDS.values())
# How ADBC writes numeric NaN and the infinities, and how the row path names them.
_SPECIAL_TEXTS = ["nan", "NaN", "inf", "Infinity", "-inf", "-Infinity"]
_SPECIAL_NAMES = ["NaN", "NaN", "Infinity", "Infinity", "-Infinity", "-Infinity"]


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
        oid = OIDS.get(name)
        if oid is None:
            return f"column {field.name!r} of type {name.decode(errors='replace') or 'unknown'}"
        precision = scale = None
        typmod = int(meta.get(b"POSTGRESQL:typmod", b"-1"))
        if oid == NUMERIC and typmod >= 4:
            precision, scale = (typmod - 4) >> 16 & 0xFFFF, (typmod - 4) & 0xFFFF
        columns.append(Column(field.name, oid, precision=precision, scale=scale))
    return tuple(columns)


def _unconstrained(column: Column) -> bool:
    return column.type_code == NUMERIC and (column.precision is None or column.scale is None)


def _text(pa: Any, array: Any) -> Any:
    """A numeric column's text (ADBC gives it as ``arrow.opaque`` over string)."""
    if isinstance(array.type, pa.BaseExtensionType):
        return pa.chunked_array([c.storage for c in array.chunks], array.type.storage_type)
    return array


def _scales(pc: Any, text: Any) -> tuple[Any, int, int]:
    """Each numeric text's scale (digits after the point), the widest, and the most
    integer digits (PostgreSQL writes no exponent)."""
    dot = pc.find_substring(text, ".")
    length = pc.utf8_length(text)
    has_dot = pc.greater_equal(dot, 0)
    scales = pc.if_else(has_dot, pc.subtract(pc.subtract(length, dot), 1), 0).cast("int32")
    whole = pc.if_else(has_dot, dot, length)
    whole = pc.subtract(whole, pc.starts_with(text, "-").cast("int32"))
    widest = pc.max(scales).as_py() or 0
    return scales, widest, pc.max(whole).as_py() or 0


class NumericSpecial(DataError):
    """A numeric NaN or infinity read into Arrow: no decimal holds it.

    The columnar path gives the read to the row path then: the value may be
    in a column of the merge's own (a sort key, a partial aggregate) that the
    answer does not show, and the row path refuses it only where it does.
    """


def _finite(pc: Any, column: Column, text: Any) -> None:
    """Refuse numeric NaN and the infinities as the row path does: no decimal holds them."""
    import pyarrow as pa

    special = pc.index_in(text, value_set=pa.array(_SPECIAL_TEXTS))
    found = pc.max(special).as_py()
    if found is not None:
        raise NumericSpecial(
            f"column {column.name!r} holds numeric {_SPECIAL_NAMES[found]}, which no Arrow decimal "
            "holds; cast the column to float8 or text in the SQL"
        )


def _cast(pa: Any, column: Column, array: Any, wanted: Any) -> Any:
    try:
        return array.cast(wanted)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        if column.type_code == NUMERIC:  # NaN or an infinity, named as the row path names it
            import pyarrow.compute as pc

            _finite(pc, column, array)
        raise DataError(
            f"column {column.name!r}: a value has no exact Arrow {wanted} form ({exc}); "
            "cast the column in the SQL (to float8 or text)"
        ) from exc


def prepare(table: pyarrow.Table, columns: Sequence[Column], zone: str) -> pyarrow.Table:
    """One shard's ADBC table with the row path's types, but for unconstrained numerics.

    Columns become ``c<i>``; timestamptz takes ``zone`` (the session's
    TimeZone, the zone psycopg gives the values); numeric(p, s) becomes
    decimal128(p, s); an unconstrained numeric stays text until
    :func:`conform` sees every shard's. Numeric NaN or Infinity has no
    decimal: refused as the row path refuses it.
    """
    import pyarrow as pa

    arrays: dict[str, Any] = {}
    for i, (column, array) in enumerate(zip(columns, table.columns, strict=True)):
        if _unconstrained(column):
            arrays[f"c{i}"] = _text(pa, array)
            continue
        wanted = pa.timestamp("us", tz=zone) if column.type_code == TIMESTAMPTZ else None
        wanted = wanted or arrow_type(column)
        if array.type != wanted:
            source = _text(pa, array) if column.type_code == NUMERIC else array
            array = _cast(pa, column, source, wanted)
        arrays[f"c{i}"] = array
    return pa.table(arrays)


def conform(tables: Sequence[pyarrow.Table], columns: Sequence[Column]) -> list[pyarrow.Table]:
    """The shards' tables from :func:`prepare`, each unconstrained numeric ``i`` made a decimal
    at the widest scale of every shard's values, with its scale column ``s<i>``."""
    import pyarrow as pa
    import pyarrow.compute as pc

    loose = [i for i, c in enumerate(columns) if _unconstrained(c)]
    if not loose:
        return list(tables)
    out = [{name: table.column(name) for name in table.column_names} for table in tables]
    for i in loose:
        found = [_scales(pc, table.column(f"c{i}")) for table in tables]
        widest = max((scale for _, scale, _ in found), default=0)
        digits = max((whole for _, _, whole in found), default=0)
        kind = _decimal_type(pa, columns[i].name, digits, widest)  # > 76 digits: refused
        for arrays, table, (scales, _, _) in zip(out, tables, found, strict=True):
            arrays[f"c{i}"] = _cast(pa, columns[i], table.column(f"c{i}"), kind)
            arrays[f"s{i}"] = scales
    return [pa.table(arrays) for arrays in out]


def python_values(table: pyarrow.Table, index: int) -> list[Any]:
    """Column ``c<index>``'s values as the row path holds them (each decimal at its scale)."""
    values: list[Any] = table.column(f"c{index}").to_pylist()
    name = f"s{index}"
    if name not in table.column_names:
        return values
    exponents = [decimal.Decimal(1).scaleb(-s) for s in range(77)]
    scales = table.column(name).to_pylist()
    pairs = zip(values, scales, strict=True)
    return [v if v is None else v.quantize(exponents[s]) for v, s in pairs]


def settle(table: pyarrow.Table, description: Sequence[Column]) -> pyarrow.Table:
    """The merged ``table`` as the row path gives it: the result's names, each decimal
    of an unconstrained numeric sized on the values it holds, the scale columns dropped.

    An aware timestamp column with no value to tell its zone is UTC, as rows give it.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    arrays = []
    fields = []
    utc = pa.timestamp("us", tz="UTC")
    for i, column in enumerate(description):
        array = table.column(f"c{i}")
        kind = array.type
        if f"s{i}" in table.column_names:
            scale = pc.max(table.column(f"s{i}")).as_py() or 0
            low, high = pc.min_max(array).values()
            widest = max(abs(low.as_py() or 0), abs(high.as_py() or 0))
            digits = widest.adjusted() + 1 if widest >= 1 else 0
            kind = _decimal_type(pa, column.name, digits, scale)
            array = _cast(pa, column, array, kind)
        elif pa.types.is_timestamp(kind) and kind.tz is not None and array.null_count == len(array):
            kind = utc
            array = array.cast(utc)
        arrays.append(array)
        fields.append(pa.field(column.name, kind))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))
