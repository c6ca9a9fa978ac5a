"""When an ``executemany`` INSERT may run as a COPY and store what the INSERT would.

The PostgreSQL dialect (:mod:`shardq.sqlalchemy`) loads SQLAlchemy's
``executemany`` of a plain INSERT (``to_sql``'s) with a COPY per shard:
0.3 s for 20,000 rows where routed INSERTs take seconds. The bar is one
PostgreSQL running the same INSERT: the same rows stored, or refused. The
two read a value differently:

- the INSERT binds the value as psycopg dumps it (a ``float`` as
  ``float8``, an aware ``datetime`` as ``timestamptz``, a ``str`` as
  ``unknown``), casts it to the type SQLAlchemy rendered
  (``%(d)s::VARCHAR``), then assigns that to the column;
- COPY reads the value's text (psycopg's text dumper, the same) with the
  column type's input function.

So text into a date column bound as ``VARCHAR`` loads by COPY and is refused
by the INSERT; ``1.5`` into an integer column is rounded by the INSERT's
cast and refused by COPY; ``True`` into a text column is ``true`` one way
and ``t`` the other; an aware datetime into a ``timestamp`` is converted to
the session's time zone by the cast and loses its offset in COPY; a float
into ``numeric`` keeps 15 digits through ``float8``, 17 through its text.
:func:`copy_agrees` says yes only for values whose type, cast and column
are a pair known to agree (:func:`_agree`, checked against one PostgreSQL by
``tests/differential/test_sqlalchemy_executemany.py``); anything else runs as
the INSERT itself, row by row. What pandas sends for a frame whose dtypes
match the table (ints, floats, text, bools, dates, datetimes) agrees.
"""

from __future__ import annotations

import datetime as dt
import decimal
import functools
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sqlglot
import sqlglot.errors
from sqlglot import exp

from shardq.errors import UndeclaredTableError
from shardq.pgtypes import (
    BOOL,
    BYTEA,
    DATE,
    FLOAT4,
    FLOAT8,
    INT2,
    INT4,
    INT8,
    JSON,
    JSONB,
    NUMERIC,
    TEXT,
    TIME,
    TIMESTAMP,
    TIMESTAMPTZ,
    UUID,
    VARCHAR,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    from shardq.config import Config

__all__ = ["COLUMN_TYPES_SQL", "CopyTarget", "copy_agrees", "copy_target"]


#: The type of each cast SQLAlchemy's psycopg dialect renders, by sqlglot's name for it.
_CASTS = {
    exp.DataType.Type.BOOLEAN: BOOL, exp.DataType.Type.SMALLINT: INT2,
    exp.DataType.Type.INT: INT4, exp.DataType.Type.BIGINT: INT8,
    exp.DataType.Type.DECIMAL: NUMERIC, exp.DataType.Type.FLOAT: FLOAT4,
    exp.DataType.Type.DOUBLE: FLOAT8, exp.DataType.Type.TEXT: TEXT,
    exp.DataType.Type.VARCHAR: VARCHAR, exp.DataType.Type.DATE: DATE,
    exp.DataType.Type.TIME: TIME, exp.DataType.Type.TIMESTAMP: TIMESTAMP,
    exp.DataType.Type.TIMESTAMPTZ: TIMESTAMPTZ, exp.DataType.Type.JSON: JSON,
    exp.DataType.Type.JSONB: JSONB, exp.DataType.Type.UUID: UUID,
}  # fmt: skip

#: A cast to a type not in :data:`_CASTS` (a domain, an enum, an array, a length).
OTHER = -1

_INTS = {INT2: (-(2**15), 2**15 - 1), INT4: (-(2**31), 2**31 - 1), INT8: (-(2**63), 2**63 - 1)}
_TEXTS = (TEXT, VARCHAR)


class _Naive:
    """A ``datetime`` without ``tzinfo`` (psycopg dumps it as ``timestamp``)."""


class _Aware:
    """A ``datetime`` with ``tzinfo`` (psycopg dumps it as ``timestamptz``)."""


def _json_types() -> tuple[type, ...]:
    from psycopg.types.json import Json, Jsonb

    return (Json, Jsonb)


@functools.cache  # (psycopg is imported then: the SQLite dialect does without it)
def _agree() -> dict[type, dict[int, frozenset[int | None]]]:
    """Python type -> column type -> the casts (None: no cast) under which COPY agrees.

    Each pair is one where the INSERT's cast and assignment give the value
    COPY's input function gives, refusals included: a ``str`` cast to the
    column's own type is read by that type's input function both ways; an
    ``int`` cast to an integer type in whose range it is (checked per value)
    is then assigned with the column's range check, as COPY checks it; a
    naive ``datetime`` into ``timestamptz`` is read in the session's time
    zone both ways. NULL agrees everywhere (``NOT NULL`` refuses it both ways).
    """
    numbers = frozenset({None, INT2, INT4, INT8, NUMERIC})
    table: dict[type, dict[int, frozenset[int | None]]] = {
        bool: {BOOL: frozenset({None, BOOL})},
        int: {INT2: numbers, INT4: numbers, INT8: numbers, NUMERIC: numbers},
        float: {FLOAT8: frozenset({None, FLOAT8})},
        decimal.Decimal: {NUMERIC: frozenset({None, NUMERIC})},
        dt.date: {DATE: frozenset({None, DATE})},
        # (an aware one into a timestamp: the cast converts it to the session's
        # zone, COPY drops its offset)
        _Naive: {
            TIMESTAMP: frozenset({None, TIMESTAMP}),
            TIMESTAMPTZ: frozenset({None, TIMESTAMP, TIMESTAMPTZ}),
        },
        _Aware: {TIMESTAMPTZ: frozenset({None, TIMESTAMPTZ})},
        dt.time: {TIME: frozenset({None, TIME})},
        uuid.UUID: {UUID: frozenset({None, UUID})},
        bytes: {BYTEA: frozenset({None})},
    }
    for json in _json_types():  # what SQLAlchemy's JSON types bind a value as
        table[json] = {JSON: frozenset({None, JSON, JSONB}), JSONB: frozenset({None, JSON, JSONB})}
    return table


def _str_casts(column: int) -> frozenset[int | None]:
    """A ``str`` is psycopg's ``unknown``: read by its cast's input function, or the column's."""
    return frozenset({None, column, *(_TEXTS if column in _TEXTS else ())})


#: A catalog read (one shard answers it): the table's columns and their type OIDs;
#: none for a table with an INSERT rule, which COPY does not apply, or not a table.
COLUMN_TYPES_SQL = (
    "SELECT a.attname, a.atttypid::int FROM pg_catalog.pg_attribute a "
    "JOIN pg_catalog.pg_class c ON c.oid = a.attrelid "
    "WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped "
    "AND c.relkind IN ('r', 'p') AND NOT EXISTS "
    "(SELECT FROM pg_catalog.pg_rewrite r WHERE r.ev_class = c.oid AND r.ev_type = '3')"
)


@dataclass(frozen=True, slots=True)
class CopyTarget:
    """What a COPY needs from an INSERT, and what :func:`copy_agrees` checks.

    Attributes:
        table: the declared table (for :meth:`shardq.Connection.copy_in`).
        relation: the table as the statement names it, quoted (for ``to_regclass``).
        columns: the columns written, as the statement names them.
        catalog_names: the same as the catalog spells them (unquoted names folded).
        names: each column's parameter name.
        casts: the type each value is cast to: an OID, :data:`OTHER`, None (no cast).
        key: the shard key's index in ``columns`` (None: not among them; COPY says so).
    """

    table: str
    relation: str
    columns: tuple[str, ...]
    catalog_names: tuple[str, ...]
    names: tuple[str, ...]
    casts: tuple[int | None, ...]
    key: int | None = None


#: The parts of a plain ``INSERT INTO t (columns) VALUES (...)`` in sqlglot's tree.
_PLAIN_INSERT = frozenset({"this", "expression"})


def copy_target(statement: str, parameters: Sequence[Any], config: Config) -> CopyTarget | None:
    """The target of an INSERT of one row of named parameters into a distributed table.

    None for anything else: RETURNING, ON CONFLICT, a value computed in SQL,
    a reference table (its INSERT checks every copy comes out the same).

    >>> from shardq.config import load_config
    >>> config = load_config({"dialect": "postgres", "shards": [{"name": "a", "dsn": "postgresql://h/a"}],
    ...                       "tables": {"t": {"shard_key": "k"}}})
    >>> target = copy_target("INSERT INTO t (k, d) VALUES (%(k)s::INTEGER, %(d)s)", [{}], config)
    >>> target.columns, target.names, target.casts
    (('k', 'd'), ('k', 'd'), (23, None))
    >>> copy_target("INSERT INTO t (k) VALUES (%(k)s + 1)", [{}], config) is None
    True
    """
    if not parameters or not all(isinstance(row, Mapping) for row in parameters):
        return None
    try:
        tree = sqlglot.parse_one(statement, read="postgres")
    except sqlglot.errors.SqlglotError:
        return None
    if not isinstance(tree, exp.Insert) or {k for k, v in tree.args.items() if v} - _PLAIN_INSERT:
        return None
    schema, values = tree.this, tree.expression
    if not isinstance(schema, exp.Schema) or not isinstance(values, exp.Values):
        return None
    if len(values.expressions) != 1 or not isinstance(schema.this, exp.Table):
        return None
    table = schema.this
    if table.args.get("alias") or table.catalog:
        return None
    cells = values.expressions[0].expressions
    inner = [c.this if isinstance(c, exp.Cast) else c for c in cells]
    if len(cells) != len(schema.expressions) or not all(
        isinstance(cell, exp.Placeholder) and cell.name for cell in inner
    ):
        return None
    name = f"{table.db}.{table.name}" if table.db else table.name
    try:
        declared = config.table(name)
    except UndeclaredTableError:
        return None
    if not declared.distributed:
        return None
    columns = schema.expressions
    wanted = (declared.shard_key or "").lower()
    keys = [i for i, column in enumerate(columns) if column.name.lower() == wanted]
    return CopyTarget(
        table=name,
        relation=table.sql("postgres"),
        columns=tuple(column.name for column in columns),
        catalog_names=tuple(
            column.name if column.args.get("quoted") else column.name.lower() for column in columns
        ),
        names=tuple(cell.name for cell in inner),
        casts=tuple(_cast_type(cell) for cell in cells),
        key=keys[0] if keys else None,
    )


def _cast_type(cell: exp.Expression) -> int | None:
    if not isinstance(cell, exp.Cast):
        return None
    to = cell.to
    return OTHER if to.expressions else _CASTS.get(to.this, OTHER)


def copy_agrees(
    target: CopyTarget, column_types: Mapping[str, int], parameters: Sequence[Mapping[str, Any]]
) -> bool:
    """Whether COPY stores every row of ``parameters`` as the INSERT would (or refuses it).

    ``column_types`` is the table's columns' type OIDs by name
    (:data:`COLUMN_TYPES_SQL`). A value's type is taken exactly (a subclass,
    whose psycopg dumper may differ, runs as INSERT).

    >>> t = CopyTarget("t", "t", ("k", "d"), ("k", "d"), ("k", "d"), (INT4, VARCHAR))
    >>> copy_agrees(t, {"k": INT4, "d": TEXT}, [{"k": 1, "d": "x"}, {"k": 2, "d": None}])
    True
    >>> copy_agrees(t, {"k": INT4, "d": DATE}, [{"k": 1, "d": "2024-01-02"}])  # ::VARCHAR
    False
    >>> copy_agrees(t, {"k": INT4, "d": TEXT}, [{"k": 2**40, "d": "x"}])  # ::INTEGER refuses
    False
    >>> keyed = CopyTarget("t", "t", ("k",), ("k",), ("k",), (INT4,), key=0)
    >>> copy_agrees(keyed, {"k": INT4}, [{"k": 1}]), copy_agrees(keyed, {"k": INT4}, [{"k": "1"}])
    (True, False)
    """
    agree = _agree()
    for index, (catalog_name, name, cast) in enumerate(
        zip(target.catalog_names, target.names, target.casts, strict=True)
    ):
        column = column_types.get(catalog_name)
        if column is None or cast == OTHER:
            return False
        kinds = {type(row[name]) for row in parameters}
        kinds.discard(type(None))
        if index == target.key and str in kinds and column not in _TEXTS:
            # Text for a key of another type: the INSERT's routing decides whether
            # its cast may read it as another key than placement does.
            return False
        if dt.datetime in kinds:  # naive or aware: not the same pairs
            kinds.discard(dt.datetime)
            kinds.update(
                _Aware if row[name].tzinfo is not None else _Naive
                for row in parameters
                if type(row[name]) is dt.datetime
            )
        for kind in kinds:
            casts = _str_casts(column) if kind is str else agree.get(kind, {}).get(column)
            if casts is None or cast not in casts:
                return False
        if int in kinds and cast in _INTS:
            low, high = _INTS[cast]
            ints = [v for row in parameters if type(v := row[name]) is int]
            if min(ints) < low or max(ints) > high:
                return False
    return True
