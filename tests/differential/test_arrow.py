"""Columnar results against rows: every edge query read both ways.

Each query of :mod:`tests.differential.test_edge` and TPC-H (PostgreSQL) and of
:mod:`tests.differential.test_sqlite_edge` (SQLite) runs through shardq twice:
once read with ``fetchall()``, once with ``fetch_arrow_table()``. The table's
rows must be the fetched rows, value for value (in the Arrow forms
:mod:`shardq.export` documents: a decimal column's one scale, float4 as
float32, JSON as text, intervals as month-day-nano). On PostgreSQL the
table's types must be the ones the same mapping gives to the single node's
answer (its description and rows), so a merge that loses a column's type
shows up here. On SQLite each column's type is its values' storage class,
and a column whose values are of two classes is refused by name.

Every PostgreSQL query is also read both ways into Arrow: by the rows (phase
1, ``arrow_reads = "rows"``) and on the columnar path (ADBC per shard,
merged on Arrow data: ``read_arrow()``, and ``fetch_arrow_table()`` of an
executed read with ``arrow_reads = "adbc"``). The tables must be equal,
schema and values; a query the columnar path leaves to the rows must say
why with one of the documented reasons (:data:`FALLBACKS`), and the queries
of :data:`COLUMNAR` must take the columnar path.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import re
import sqlite3
import struct
from typing import TYPE_CHECKING, Any

import psycopg
import pyarrow as pa
import pytest

import shardq
from shardq.execute.driver import Column
from shardq.export import to_table
from tests.differential import test_edge, test_sqlite_edge, test_tpch
from tests.differential.compare import same_rows
from tests.fixtures.tpch import DATABASE as TPCH

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from tests.fixtures.edge import Edge
    from tests.fixtures.sqlite_edge import SqliteEdge
    from tests.fixtures.tpch import Tpch


def _f32(value: float) -> float:
    return float(struct.unpack("f", struct.pack("f", value))[0])


def want_value(value: Any, kind: pa.DataType) -> Any:
    """A ``fetchall()`` value in the form its Arrow column holds it."""
    if value is None:
        return None
    if pa.types.is_list(kind):
        return [want_value(v, kind.value_type) for v in value]
    if kind == pa.float32():
        return _f32(value)
    if pa.types.is_decimal(kind):
        return value.quantize(decimal.Decimal(1).scaleb(-kind.scale))
    if pa.types.is_string(kind) and isinstance(value, dt.time):
        return value.isoformat()  # timetz
    return value


def got_value(value: Any, kind: pa.DataType) -> Any:
    """An Arrow ``to_pylist()`` value in Python's form for comparing."""
    if value is None:
        return None
    if pa.types.is_list(kind):
        return [got_value(v, kind.value_type) for v in value]
    if kind == pa.month_day_nano_interval():
        assert value.months == 0
        return dt.timedelta(days=value.days, microseconds=value.nanoseconds // 1000)
    if getattr(kind, "extension_name", None) == "arrow.json":
        return json.loads(value)
    return value


def same_as_rows(table: pa.Table, rows: list[tuple[Any, ...]], ordered: bool) -> None:
    """Assert ``table`` holds ``rows`` (see the module docstring)."""
    kinds = table.schema.types
    # Column by column: to_pylist() as dicts would merge columns of one name.
    columns = [column.to_pylist() for column in table.columns]
    got = [
        tuple(got_value(c[i], k) for c, k in zip(columns, kinds, strict=True))
        for i in range(table.num_rows)
    ]
    want = [tuple(want_value(v, k) for v, k in zip(row, kinds, strict=True)) for row in rows]
    same_rows(got, want, ordered)


# PostgreSQL


@pytest.fixture(scope="module")
def pg_conn(edge: Edge) -> Iterator[shardq.Connection]:
    with shardq.connect(edge.config) as connection:
        yield connection


def single_table(dsn: str, sql: str, params: Any = None) -> pa.Table:
    """The single node's answer through the same mapping."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(sql, params)
        assert cur.description is not None
        description = [
            Column(c.name, c.type_code, c.display_size, c.internal_size, c.precision, c.scale)
            for c in cur.description
        ]
        return to_table(description, [cur.fetchall()])


def no_decimal(rows: list[tuple[Any, ...]]) -> bool:
    """Whether a numeric column of ``rows`` has no exact Arrow decimal (refused).

    NaN and the infinities have none; nor has a column whose integer digits
    and scale, at their widest, add up to more than decimal256's 76.
    """
    for i in range(len(rows[0]) if rows else 0):
        values = [row[i] for row in rows if isinstance(row[i], decimal.Decimal)]
        if not all(v.is_finite() for v in values):
            return True
        exponents = [v.as_tuple() for v in values]
        whole = max((max(len(t.digits) + int(t.exponent), 0) for t in exponents), default=0)
        scale = max((max(-int(t.exponent), 0) for t in exponents), default=0)
        if whole + scale > 76:
            return True
    return False


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("sql", "ordered"), test_edge.CASES, ids=[c[0][:60] for c in test_edge.CASES]
)
def test_postgres_table_is_the_rows(
    sql: str, ordered: bool, edge: Edge, pg_conn: shardq.Connection
) -> None:
    rows = pg_conn.execute(sql).fetchall()
    if no_decimal(rows):
        with pytest.raises(shardq.DataError, match=r"no Arrow decimal|76 at most"):
            pg_conn.execute(sql).fetch_arrow_table()
        return
    table = pg_conn.execute(sql).fetch_arrow_table()
    assert table.column_names == [c.name for c in pg_conn.execute(sql).description or ()]
    same_as_rows(table, rows, ordered)
    want = single_table(edge.dsn, sql)
    assert table.schema.types == want.schema.types, sql


@pytest.mark.postgres
@pytest.mark.parametrize("path", test_tpch.QUERIES, ids=[p.stem for p in test_tpch.QUERIES])
def test_tpch_table_is_the_rows(path: Path, tpch: Tpch) -> None:
    sql = path.read_text()
    with shardq.connect(tpch.config) as conn:
        rows = conn.execute(sql).fetchall()
        table = conn.execute(sql).fetch_arrow_table()
    same_as_rows(table, rows, ordered=True)
    assert table.schema.types == single_table(tpch.single.dsn(TPCH), sql).schema.types


# SQLite

SQLITE_KINDS = {int: pa.int64(), float: pa.float64(), str: pa.string(), bytes: pa.binary()}


@pytest.fixture(scope="module")
def sqlite_conn(sqlite_edge: SqliteEdge) -> Iterator[shardq.Connection]:
    with shardq.connect(sqlite_edge.config) as connection:
        yield connection


SQLITE_CASES = {k: c for k, c in test_sqlite_edge.ANSWERED.items() if c.known is None}


@pytest.mark.parametrize("case", SQLITE_CASES.values(), ids=SQLITE_CASES.keys())
def test_sqlite_table_is_the_rows(case: Any, sqlite_conn: shardq.Connection) -> None:
    params = case.params or None
    rows = sqlite_conn.execute(case.sql, params).fetchall()
    cursor = sqlite_conn.execute(case.sql, params)
    columns = [c.name for c in cursor.description or ()]
    classes = [{type(row[i]) for row in rows} - {type(None)} for i in range(len(columns))]
    mixed = [name for name, found in zip(columns, classes, strict=True) if len(found) > 1]
    if mixed:
        with pytest.raises(shardq.DataError, match="several types") as refused:
            cursor.fetch_arrow_table()
        assert any(repr(name) in str(refused.value) for name in mixed), refused.value
        return
    table = cursor.fetch_arrow_table()
    assert table.column_names == columns
    kinds = [SQLITE_KINDS[found.pop()] if found else pa.null() for found in classes]
    assert table.schema.types == kinds, case.sql
    same_as_rows(table, rows, case.ordered)


def test_sqlite_fetchall_is_unchanged_by_a_table_read(sqlite_conn: shardq.Connection) -> None:
    sql = "SELECT 1, 1.5, 'a', x'00', NULL"
    before = sqlite_conn.execute(sql).fetchall()
    sqlite_conn.execute(sql).fetch_arrow_table()
    assert sqlite_conn.execute(sql).fetchall() == before == [(1, 1.5, "a", b"\x00", None)]
    single = sqlite3.connect(":memory:")
    assert single.execute(sql).fetchall() == before
    single.close()


# Both ways: rows and the columnar path (ADBC, merged on Arrow data).

#: Why the columnar path leaves a read to the rows (shardq.merge.columnar and the engine).
FALLBACKS = re.compile(
    r"^(DISTINCT|WITH TIES|a set operation|a float group key"
    r"|MIN or MAX of floats|COUNT\(DISTINCT\) or a float aggregate's state"
    r"|a computed column '[^']*' of type OID (1186|1184|1266|114|3802|2950|\d{4,})"
    r"|bound parameters|a bound parameter in the merge|a statement that is not a plain read"
    r"|no shard to read|a numeric NaN or infinity"
    r"|column '[^']*' of type (json|jsonb|interval|timetz|uuid|oid|mood|_\w+|unknown))$"
)

#: Reads the columnar path must carry: concatenation, ORDER BY (NULLS FIRST/LAST, DESC,
#: NaN, text by code point), OFFSET/LIMIT, and the regroup of count, sum, min and max.
COLUMNAR = [
    ("SELECT id, grp, k, n, f, ts, flag, label FROM facts", False),
    ("SELECT id, k FROM facts WHERE k > 1000", False),
    ("SELECT id, f FROM facts ORDER BY f DESC NULLS LAST, id", True),
    ("SELECT id, f FROM facts ORDER BY f NULLS FIRST, id LIMIT 15 OFFSET 4", True),
    ('SELECT grp, id FROM facts ORDER BY grp COLLATE "C" DESC, id LIMIT 20', True),
    ("SELECT n, ts, id FROM facts ORDER BY n NULLS FIRST, ts DESC, id OFFSET 7", True),
    ("SELECT id FROM facts ORDER BY k, id LIMIT 0", True),
    ("SELECT grp, count(*), count(k), sum(k), min(k), max(ts) FROM facts GROUP BY grp", False),
    ("SELECT label, flag, count(*) AS c, min(n), max(n), sum(n) FROM facts GROUP BY 1, 2", False),
    ("SELECT grp, avg(k), avg(n), sum(f) FROM facts GROUP BY grp HAVING count(*) > 2", False),
    ("SELECT count(*), sum(n), min(ts), avg(k) FROM facts WHERE k > 10000", True),
    ("SELECT k, count(*) AS c FROM facts GROUP BY k ORDER BY c DESC, k NULLS FIRST LIMIT 3", True),
    ("SELECT grp, k, bool_and(flag), bool_or(flag) FROM facts GROUP BY 1, 2 ORDER BY 1, 2", True),
    ("SELECT id, v FROM sparse", False),
    ("SELECT id, k FROM facts WHERE false", False),
]


def rows_of(table: pa.Table) -> list[tuple[Any, ...]]:
    columns = [column.to_pylist() for column in table.columns]
    return [tuple(c[i] for c in columns) for i in range(table.num_rows)]


def both_ways(conn: shardq.Connection, sql: str, ordered: bool) -> tuple[str, str | None]:
    """Read ``sql`` by the rows and on the columnar path (both entries); assert the tables
    are equal; return how ``read_arrow`` read it, and why the rows when they did."""
    conn.arrow_reads = "rows"
    try:
        want = conn.read_arrow(sql)
    except shardq.DataError:
        conn.arrow_reads = "auto"
        with pytest.raises(shardq.DataError):
            conn.read_arrow(sql)
        return "error", None
    assert conn.arrow_path == "rows"
    conn.arrow_reads = "auto"
    got = conn.read_arrow(sql)
    path, why = conn.arrow_path, conn.arrow_fallback
    conn.arrow_reads = "adbc"
    cursor = conn.execute(sql)
    again = cursor.fetch_arrow_table()
    assert cursor.arrow_path == path, (cursor.arrow_path, cursor.arrow_fallback, path, why)
    conn.arrow_reads = "auto"
    for table in (got, again):
        assert table.schema == want.schema, sql
        same_rows(rows_of(table), rows_of(want), ordered)
    return path or "", why


def check_path(path: str, why: str | None, sql: str) -> None:
    if path == "rows":
        assert why is not None, sql
        assert FALLBACKS.match(why), f"undocumented fallback {why!r}: {sql}"


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("sql", "ordered"), test_edge.CASES, ids=[c[0][:60] for c in test_edge.CASES]
)
def test_postgres_columnar_path_is_the_row_path(
    sql: str, ordered: bool, pg_conn: shardq.Connection
) -> None:
    path, why = both_ways(pg_conn, sql, ordered)
    check_path(path, why, sql)


@pytest.mark.postgres
@pytest.mark.parametrize(("sql", "ordered"), COLUMNAR, ids=[c[0][:60] for c in COLUMNAR])
def test_postgres_common_plans_take_the_columnar_path(
    sql: str, ordered: bool, edge: Edge, pg_conn: shardq.Connection
) -> None:
    path, why = both_ways(pg_conn, sql, ordered)
    assert (path, why) == ("adbc", None), sql
    pg_conn.arrow_reads = "auto"
    table = pg_conn.read_arrow(sql)
    want = single_table(edge.dsn, sql)
    assert table.schema == want.schema.remove_metadata(), sql
    same_as_rows(table, [tuple(r) for r in rows_of(want)], ordered)


@pytest.mark.postgres
@pytest.mark.parametrize("path", test_tpch.QUERIES, ids=[p.stem for p in test_tpch.QUERIES])
def test_tpch_columnar_path_is_the_row_path(path: Path, tpch: Tpch) -> None:
    sql = path.read_text()
    with shardq.connect(tpch.config) as conn:
        way, why = both_ways(conn, sql, ordered=True)
    check_path(way, why, sql)
