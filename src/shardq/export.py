"""Columnar results: a cursor's rows as an Arrow table, a pandas or a polars DataFrame.

``cursor.fetch_arrow_table()`` (the ADBC DB-API extension's name, which
polars' ``read_database`` looks for), ``fetch_df()`` and ``fetch_polars()``
read the rest of the current result, as ``fetchall()`` does, and build the
columns from the merged rows one batch at a time (the values are the ones
``fetchall()`` gives). On PostgreSQL shards ``read_arrow()`` reads most reads
without Python objects instead (:mod:`shardq.execute.arrowread`, merged by
:mod:`shardq.merge.columnar`), into the same schema as the one below.

The Arrow types carry the database's, taken from the cursor's
``description`` (PostgreSQL type OIDs, and a numeric column's precision and
scale), so an empty result has the same schema as a full one:

==========================  ============================================================
PostgreSQL                  Arrow
==========================  ============================================================
smallint, integer, bigint   int16, int32, int64 (oid: uint32)
real, double precision      float32, float64
numeric(p, s)               decimal128(p, s) (decimal256 above 38 digits)
numeric                     decimal128(38, s), s the widest scale of the values present
                            (decimal256(76, s) when 38 digits do not hold them)
boolean                     bool
text, varchar, char, name   string (in chunks, so no column needs large_string)
bytea                       binary
date                        date32
timestamp                   timestamp[us]
timestamptz                 timestamp[us, tz=the values' zone: psycopg gives the
                            session's TimeZone; UTC for an empty or all-NULL column]
time                        time64[us]
timetz                      string (ISO 8601, with the offset: Arrow has no zoned time)
interval                    month_day_nano_interval (psycopg gives months as 30 days,
                            so months are 0, as in fetchall's timedelta; intervals
                            always take this path)
uuid                        arrow.uuid (extension over fixed_size_binary(16))
json, jsonb                 arrow.json (extension over string): the value's JSON text
arrays of these             list<...> (nested lists for several dimensions)
anything else               from the values, as SQLite's columns below (an enum's are
                            text: string, also when no value tells)
==========================  ============================================================

Values that have no exact Arrow form are refused with a
:class:`~shardq.DataError` naming the column, never rounded: numeric NaN or
Infinity, or a numeric wider than 76 digits (cast it to float8 or text in the
SQL).

On SQLite (and for a column whose type the merge does not know) each column
takes its type from its values: integer int64, real float64, text string,
blob binary. SQLite's dynamic typing lets one column hold several storage
classes; Arrow has one type per column, so a column holding two (say
integer and real) is refused with a :class:`~shardq.DataError` that names
it and the classes (``CAST`` it in the SQL). A column with no value but
NULL, and every column of an empty SQLite result, is of Arrow's null type:
SQLite results carry no column types.

pandas gets the table's ``to_pandas()``; polars gets ``polars.from_arrow()``,
with interval columns as polars Durations (polars has no interval type) and
JSON as strings.
"""

from __future__ import annotations

import datetime as dt
import decimal
import importlib
import json
import uuid
from typing import TYPE_CHECKING, Any

from shardq.errors import DataError, MissingDependencyError
from shardq.pgtypes import (
    BOOL,
    BPCHAR,
    BYTEA,
    CHAR,
    DATE,
    FLOAT4,
    FLOAT8,
    INT2,
    INT4,
    INT8,
    INTERVAL,
    JSON,
    JSONB,
    NAME,
    NUMERIC,
    OID,
    TEXT,
    TIME,
    TIMESTAMP,
    TIMESTAMPTZ,
    TIMETZ,
    UUID,
    VARCHAR,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence
    from types import ModuleType

    import pandas
    import polars
    import pyarrow

    from shardq.execute.driver import Column

__all__ = [
    "TableBuilder",
    "arrow_type",
    "require",
    "rows_as_tuples",
    "to_pandas",
    "to_polars",
    "to_table",
]

_US = dt.timedelta(microseconds=1)
_NS_PER_DAY = 86_400 * 10**9


def require(module: str, extra: str, needed_for: str) -> ModuleType:
    """Import ``module``, or raise :class:`~shardq.MissingDependencyError` naming ``extra``.

    >>> require("json", "arrow", "a test").__name__
    'json'
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as missing:
        if missing.name != module:
            raise
        raise MissingDependencyError(module, extra, needed_for) from missing


def _pa() -> Any:
    return require("pyarrow", "arrow", "fetch_arrow_table()")


#: Array type OID -> its element's OID.
_ARRAYS = {
    1000: BOOL, 1001: BYTEA, 1002: CHAR, 1003: NAME, 1005: INT2, 1007: INT4, 1009: TEXT,
    1014: BPCHAR, 1015: VARCHAR, 1016: INT8, 1021: FLOAT4, 1022: FLOAT8, 1028: OID,
    1115: TIMESTAMP, 1182: DATE, 1183: TIME, 1185: TIMESTAMPTZ, 1187: INTERVAL,
    1231: NUMERIC, 1270: TIMETZ, 199: JSON, 2951: UUID, 3807: JSONB,
}  # fmt: skip


def _scalar_type(pa: Any, oid: Any, precision: int | None, scale: int | None) -> Any:
    """The Arrow type of a PostgreSQL scalar type, or None (from the values)."""
    simple = {
        BOOL: pa.bool_(), INT2: pa.int16(), INT4: pa.int32(), INT8: pa.int64(),
        OID: pa.uint32(), FLOAT4: pa.float32(), FLOAT8: pa.float64(), TEXT: pa.string(),
        VARCHAR: pa.string(), BPCHAR: pa.string(), NAME: pa.string(), CHAR: pa.string(),
        BYTEA: pa.binary(), DATE: pa.date32(), TIMESTAMP: pa.timestamp("us"),
        TIME: pa.time64("us"), TIMETZ: pa.string(), INTERVAL: pa.month_day_nano_interval(),
        UUID: pa.uuid(), JSON: pa.json_(), JSONB: pa.json_(),
    }  # fmt: skip
    if oid in simple:
        return simple[oid]
    if oid == TIMESTAMPTZ:
        return pa.timestamp("us", tz="UTC")  # the values' zone replaces it
    if oid == NUMERIC:
        if precision is not None and scale is not None:
            return (pa.decimal128 if precision <= 38 else pa.decimal256)(precision, scale)
        return pa.decimal128(38, 0)  # unconstrained: the values' scale widens it
    return None


def arrow_type(column: Column) -> pyarrow.DataType | None:
    """The Arrow type of ``column`` from its ``description`` entry; None: from the values.

    >>> from shardq.execute.driver import Column
    >>> [str(arrow_type(Column("x", oid))) for oid in (23, 1700, 1184, 1007)]
    ['int32', 'decimal128(38, 0)', 'timestamp[us, tz=UTC]', 'list<item: int32>']
    >>> str(arrow_type(Column("x", 1700, precision=12, scale=3))), arrow_type(Column("x"))
    ('decimal128(12, 3)', None)
    """
    pa = _pa()
    oid = column.type_code
    if oid in _ARRAYS:
        element = _scalar_type(pa, _ARRAYS[oid], None, None)
        return pa.list_(element) if element is not None else None
    return _scalar_type(pa, oid, column.precision, column.scale)


def _interval(value: dt.timedelta) -> tuple[int, int, int]:
    """(months, days, nanoseconds) of a timedelta, both parts of one sign, as PostgreSQL's.

    >>> _interval(dt.timedelta(hours=-1)), _interval(dt.timedelta(days=-2))
    ((0, 0, -3600000000000), (0, -2, 0))
    """
    sign = -1 if value < dt.timedelta(0) else 1
    whole = abs(value)
    return 0, sign * whole.days, sign * (whole.seconds * 10**6 + whole.microseconds) * 1000


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _iso_time(value: dt.time) -> str:
    return value.isoformat()


def _uuid(value: uuid.UUID) -> bytes:
    return value.bytes


#: How a value of a type is made ready for ``pyarrow.array`` (identity when missing).
_PREPARE: dict[Any, Callable[[Any], Any]] = {
    INTERVAL: _interval, JSON: _json, JSONB: _json, TIMETZ: _iso_time, UUID: _uuid,
}  # fmt: skip


def _prepare_nested(prepare: Callable[[Any], Any], value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, list):
        return [_prepare_nested(prepare, v) for v in value]
    return prepare(value)


def _depth(values: Sequence[Any]) -> int:
    """How many list levels the values of an array column have (1 if none tells)."""
    for value in values:
        depth = 0
        while isinstance(value, list) and value:
            depth += 1
            value = next((v for v in value if v is not None), None)
        if depth:
            return depth if not isinstance(value, list) else depth + 1
    return 1


# Python type of a value -> (its name in errors, the kind that picks its Arrow type).
_KINDS: dict[type, str] = {
    bool: "boolean", int: "integer", float: "real", str: "text", bytes: "blob",
    decimal.Decimal: "numeric", dt.date: "date", dt.datetime: "timestamp", dt.time: "time",
    dt.timedelta: "interval", uuid.UUID: "uuid", dict: "json", list: "array",
}  # fmt: skip
_KIND_OIDS = {"boolean": BOOL, "integer": INT8, "real": FLOAT8, "text": TEXT,
              "blob": BYTEA, "numeric": NUMERIC, "date": DATE, "timestamp": TIMESTAMP,
              "time": TIME, "interval": INTERVAL, "uuid": UUID, "json": JSONB}  # fmt: skip


def _kind_of(value: Any) -> str:
    kind = _KINDS.get(type(value))
    if kind is None:
        kind = next((k for t, k in _KINDS.items() if isinstance(value, t)), type(value).__name__)
    if kind == "timestamp" and value.tzinfo is not None:
        return "timestamptz"
    if kind == "time" and value.tzinfo is not None:
        return "timetz"
    return kind


def _inferred_oid(name: str, values: Sequence[Any]) -> Any:
    """The type OID standing for the one kind of the non-NULL ``values`` (None: all NULL).

    Raises:
        DataError: the values are of several kinds (SQLite's dynamic typing).
    """
    kinds = {_kind_of(v) for v in values if v is not None}
    if not kinds:
        return None
    if len(kinds) > 1:
        raise DataError(
            f"column {name!r} holds values of several types ({', '.join(sorted(kinds))}), "
            "and an Arrow column has one type; CAST the column to one type in the SQL "
            "(SQLite lets a column hold values of any storage class)"
        )
    kind = kinds.pop()
    if kind == "timestamptz":
        return TIMESTAMPTZ
    if kind == "timetz":
        return TIMETZ
    if kind == "array":
        return "array"
    if kind not in _KIND_OIDS:
        raise DataError(f"column {name!r} holds {kind} values, which have no Arrow type here")
    return _KIND_OIDS[kind]


def _zone(values: Sequence[Any]) -> str:
    """The Arrow time zone of aware datetimes: their ZoneInfo key or fixed offset."""
    for value in values:
        if value is not None:
            tz = value.tzinfo
            key = getattr(tz, "key", None)
            if isinstance(key, str):
                return key
            offset = value.utcoffset()
            if not offset:
                return "UTC"
            sign = "-" if offset < dt.timedelta(0) else "+"
            minutes = abs(offset) // dt.timedelta(minutes=1)
            return f"{sign}{minutes // 60:02d}:{minutes % 60:02d}"
    return "UTC"


class _ColumnBuilder:
    """One column's chunks, each built from one batch of rows."""

    def __init__(self, pa: Any, column: Column):
        self.pa = pa
        self.name = column.name
        self.oid = column.type_code
        self.declared = arrow_type(column) if self.oid is not None else None
        self.constrained = column.precision is not None and column.scale is not None
        self.chunks: list[Any] = []
        # An unconstrained numeric's widest integer digits and scale so far (None: none).
        self.digits: tuple[int, int] | None = None

    def add(self, values: Sequence[Any]) -> None:
        pa = self.pa
        if all(v is None for v in values):  # typed when the column is whole (finish)
            self.chunks.append(pa.chunked_array([pa.nulls(len(values))]))
            return
        oid, declared = self.oid, self.declared
        if declared is None:
            oid = _inferred_oid(self.name, values)
            if oid == "array":
                # An array of a type the description does not tell: pyarrow infers its items.
                self.chunks.append(self._array(values, None))
                return
            declared = None if oid is None else _scalar_type(pa, oid, None, None)
            if declared is None:
                self.chunks.append(pa.nulls(len(values)))
                return
        element = _ARRAYS.get(oid)
        if element is not None:
            prepare = _PREPARE.get(element)
            if prepare is not None:
                values = [_prepare_nested(prepare, v) for v in values]
        elif oid in _PREPARE:
            prepare = _PREPARE[oid]  # a JSON array is one value, not an array
            values = [None if v is None else prepare(v) for v in values]
        if pa.types.is_list(declared):
            for _ in range(_depth(values) - 1):
                declared = pa.list_(declared)
            if element == TIMESTAMPTZ:
                declared = _nest(pa, pa.timestamp("us", tz=_zone(_flat(values))), declared)
            elif element == NUMERIC:
                declared = _nest(pa, self._decimal(_flat(values)), declared)
        elif oid == TIMESTAMPTZ:
            declared = pa.timestamp("us", tz=_zone(values))
        elif oid == NUMERIC and not (self.constrained and self.declared is not None):
            declared = self._decimal(values)
        self.chunks.append(self._array(values, declared))

    def _decimal(self, values: Sequence[Any]) -> Any:
        """The decimal type holding ``values`` and every unconstrained numeric before."""
        digits, scale = _digits(self.name, values)
        if self.digits is not None:
            digits, scale = max(digits, self.digits[0]), max(scale, self.digits[1])
        self.digits = digits, scale
        return _decimal_type(self.pa, self.name, digits, scale)

    def _array(self, values: Sequence[Any], declared: Any) -> Any:
        pa = self.pa
        storage = _storage(pa, declared)
        try:
            array = pa.array(values, type=storage, from_pandas=False)
            if storage != declared:  # a list of UUIDs or JSON: pyarrow builds their storage
                array = array.cast(declared)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError) as exc:
            raise DataError(
                f"column {self.name!r}: a value has no exact Arrow {declared} form ({exc}); "
                "cast the column in the SQL (to float8 or text)"
            ) from exc
        if isinstance(array, pa.ChunkedArray):  # more than one array holds (2 GiB of text)
            return array
        return pa.chunked_array([array], type=array.type)

    def finish(self) -> Any:
        """The column as one chunked array, every chunk of one type."""
        pa = self.pa
        types = [c.type for c in self.chunks if not pa.types.is_null(c.type)]
        if self.digits is not None:  # every batch's decimals at the widest scale
            widest = _decimal_type(pa, self.name, *self.digits)
            types = [_nest_decimal(pa, t, widest) for t in types]
        final = _unify(pa, self.name, types)
        if final is None and self.declared is not None:
            final = self.declared
        elif final is None:
            # A PostgreSQL type of no mapping (an enum, a domain...) with no value to tell:
            # psycopg reads a type it has no loader for as text. SQLite's: no type at all.
            final = pa.null() if self.oid is None else pa.string()
        chunks = []
        for chunked in self.chunks:
            if pa.types.is_null(chunked.type):
                chunks.append(pa.nulls(len(chunked), type=final))
            else:
                chunks += [c if c.type == final else c.cast(final) for c in chunked.chunks]
        return pa.chunked_array(chunks, type=final)


def _storage(pa: Any, kind: Any) -> Any:
    """``kind`` with the extension types inside lists replaced by their storage types."""
    if kind is not None and pa.types.is_list(kind):
        inner = kind.value_type
        return pa.list_(_storage(pa, getattr(inner, "storage_type", inner)))
    return kind


def _flat(values: Iterable[Any]) -> list[Any]:
    out: list[Any] = []
    for value in values:
        if isinstance(value, list):
            out += _flat(value)
        elif value is not None:
            out.append(value)
    return out


def _nest(pa: Any, inner: Any, shape: Any) -> Any:
    """``shape`` (list of list of ...) with ``inner`` at the bottom."""
    if pa.types.is_list(shape):
        return pa.list_(_nest(pa, inner, shape.value_type))
    return inner


def _nest_decimal(pa: Any, kind: Any, decimal_type: Any) -> Any:
    """``kind`` with its (innermost) decimal type replaced by ``decimal_type``."""
    if pa.types.is_list(kind):
        return pa.list_(_nest_decimal(pa, kind.value_type, decimal_type))
    return decimal_type if pa.types.is_decimal(kind) else kind


def _digits(name: str, values: Sequence[Any]) -> tuple[int, int]:
    """The widest integer digits and scale of numeric ``values``.

    >>> _digits("x", [decimal.Decimal("1.50"), None, decimal.Decimal("-300")])
    (3, 2)
    """
    scale = digits = 0
    for value in values:
        if value is None:
            continue
        _sign, value_digits, exponent = value.as_tuple()
        if not isinstance(exponent, int):
            raise DataError(
                f"column {name!r} holds numeric {value}, which no Arrow decimal holds; "
                "cast the column to float8 or text in the SQL"
            )
        scale = max(scale, -exponent)
        digits = max(digits, len(value_digits) + exponent)
    return digits, scale


def _decimal_type(pa: Any, name: str, digits: int, scale: int) -> Any:
    """decimal128(38, scale) if 38 digits hold ``digits`` and ``scale``, else decimal256(76, ...).

    >>> import pyarrow as pa
    >>> str(_decimal_type(pa, "x", 3, 2)), str(_decimal_type(pa, "x", 30, 20))
    ('decimal128(38, 2)', 'decimal256(76, 20)')
    """
    if digits + scale <= 38:
        return pa.decimal128(38, scale)
    if digits + scale <= 76:
        return pa.decimal256(76, scale)
    raise DataError(
        f"column {name!r} holds a numeric of {digits + scale} digits; Arrow decimals hold "
        "76 at most: cast the column to float8 or text in the SQL"
    )


def _unify(pa: Any, name: str, types: list[Any]) -> Any:
    """The one type of a column whose batches came out as ``types`` (None if none)."""
    if not types:
        return None
    first = types[0]
    if all(t == first for t in types):
        return first
    if all(pa.types.is_timestamp(t) and t.tz is not None for t in types):
        return first  # one instant in any zone: the first batch's zone
    kinds = sorted({str(t) for t in types})
    raise DataError(
        f"column {name!r} holds values of several types ({', '.join(kinds)}), and an Arrow "
        "column has one type; CAST the column to one type in the SQL"
    )


class TableBuilder:
    """Builds an Arrow table from a result's ``description`` and its batches of rows."""

    def __init__(self, description: Sequence[Column]):
        self._pa = _pa()
        self._description = tuple(description)
        self._columns = [_ColumnBuilder(self._pa, c) for c in self._description]

    def add(self, rows: Sequence[Sequence[Any]]) -> None:
        """Add a batch of rows (tuples, in the description's order)."""
        if not rows:
            return
        width = len(self._columns)
        if any(len(row) != width for row in rows):
            raise DataError(f"a row's values do not match the {width} columns described")
        # Column by column: zip(*rows) over thousands of rows is ten times slower.
        for i, builder in enumerate(self._columns):
            builder.add([row[i] for row in rows])

    def finish(self) -> pyarrow.Table:
        """The table of every row added."""
        pa = self._pa
        arrays = [builder.finish() for builder in self._columns]
        fields = [pa.field(c.name, a.type) for c, a in zip(self._description, arrays, strict=True)]
        return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def rows_as_tuples(rows: list[Any]) -> list[Any]:
    """Rows of any row factory as sequences of values: dicts give their values.

    >>> rows_as_tuples([{"a": 1, "b": 2}]), rows_as_tuples([(1, 2)])
    ([(1, 2)], [(1, 2)])
    """
    if rows and isinstance(rows[0], dict):
        return [tuple(row.values()) for row in rows]
    return rows


def to_table(description: Sequence[Column], rows: Iterable[Sequence[Sequence[Any]]]) -> Any:
    """An Arrow table of the batches of ``rows`` (tuples) described by ``description``.

    >>> from shardq.execute.driver import Column
    >>> table = to_table([Column("id", 23), Column("name", 25)], [[(1, "a"), (2, None)]])
    >>> table.schema.types, table.to_pylist()
    ([DataType(int32), DataType(string)], [{'id': 1, 'name': 'a'}, {'id': 2, 'name': None}])
    """
    builder = TableBuilder(description)
    for batch in rows:
        builder.add(batch)
    return builder.finish()


def to_pandas(table: pyarrow.Table) -> pandas.DataFrame:
    """A pandas DataFrame of ``table`` (pyarrow's conversion: NULL integers become floats)."""
    require("pandas", "pandas", "fetch_df()")
    return table.to_pandas()


def to_polars(table: pyarrow.Table) -> polars.DataFrame:
    """A polars DataFrame of ``table``: intervals as Durations, JSON as strings.

    polars reads no Arrow interval type; an interval with no months is an
    exact Duration (phase 1 intervals have none). One with months is refused.
    """
    pl = require("polars", "polars", "fetch_polars()")
    pa = _pa()
    columns = []
    for field, column in zip(table.schema, table.columns, strict=True):
        columns.append(_polars_ready(pa, field.name, column))
    fields = [pa.field(f.name, c.type) for f, c in zip(table.schema, columns, strict=True)]
    ready = pa.Table.from_arrays(columns, schema=pa.schema(fields))
    return pl.from_arrow(ready)  # type: ignore[no-any-return]


def _polars_ready(pa: Any, name: str, column: Any) -> Any:
    kind = column.type
    if getattr(kind, "extension_name", None) == "arrow.json":
        return pa.chunked_array([c.storage for c in column.chunks], type=kind.storage_type)
    if kind == pa.month_day_nano_interval():
        values: list[int | None] = []
        for value in column.to_pylist():
            if value is None:
                values.append(None)
                continue
            if value.months:
                raise DataError(
                    f"column {name!r}: polars has no interval type, and an interval of "
                    "months is no exact Duration; cast it in the SQL (to text, or extract)"
                )
            values.append(value.days * _NS_PER_DAY + value.nanoseconds)
        return pa.array(values, type=pa.int64()).cast(pa.duration("ns"))
    return column
