"""Columnar results: the Arrow type of every PostgreSQL type, pandas, polars and the API.

The types are read from the shards of the edge dataset (four PostgreSQL
clusters) through shardq and compared with :mod:`shardq.export`'s table
(its docstring) and with the values ``fetchall()`` gives.
"""

from __future__ import annotations

import datetime as dt
import decimal
import sys
import uuid
import zoneinfo
from typing import TYPE_CHECKING, Any

import pandas as pd
import polars as pl
import pyarrow as pa
import pytest

import shardq
from shardq.execute.driver import Column
from shardq.export import to_table
from shardq.rows import dict_row
from tests.differential.test_arrow import same_as_rows, single_table

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.fixtures.edge import Edge
    from tests.fixtures.sqlite_edge import SqliteEdge

# Every column computed on the shards, so the shards' description reaches the cursor.
TYPED = """
SELECT id, id::int2 AS i2, id::int8 AS i8, n, n::numeric AS nu, f, f::real AS r, flag,
       grp, grp::varchar(3) AS vc, grp::char(2) AS ch, convert_to(label, 'UTF8') AS b,
       ts, ts::timestamp AS tsn, ts::date AS d, ts::time AS t, ts::timetz AS ttz,
       make_interval(days => id, hours => -id) AS iv, make_interval(mins => -id) AS neg,
       md5(id::text)::uuid AS u, jsonb_build_object('id', id, 'grp', grp, 'n', n) AS j,
       to_json(label) AS js, ARRAY[id, k] AS arr, ARRAY[[id], [k]] AS arr2,
       ARRAY[n, NULL] AS narr, ARRAY[grp] AS tarr, ARRAY[ts] AS tsarr
FROM facts
"""
TYPES = {
    "id": pa.int32(), "i2": pa.int16(), "i8": pa.int64(), "n": pa.decimal128(12, 3),
    "nu": pa.decimal128(38, 3), "f": pa.float64(), "r": pa.float32(), "flag": pa.bool_(),
    "grp": pa.string(), "vc": pa.string(), "ch": pa.string(), "b": pa.binary(),
    "ts": pa.timestamp("us", tz="UTC"), "tsn": pa.timestamp("us"), "d": pa.date32(),
    "t": pa.time64("us"), "ttz": pa.string(), "iv": pa.month_day_nano_interval(),
    "neg": pa.month_day_nano_interval(), "u": pa.uuid(), "j": pa.json_(), "js": pa.json_(),
    "arr": pa.list_(pa.int32()), "arr2": pa.list_(pa.list_(pa.int32())),
    "narr": pa.list_(pa.decimal128(38, 3)), "tarr": pa.list_(pa.string()),
    "tsarr": pa.list_(pa.timestamp("us", tz="UTC")),
}  # fmt: skip

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def conn(edge: Edge) -> Iterator[shardq.Connection]:
    with shardq.connect(edge.config) as connection:
        yield connection


def test_every_type_maps_to_its_arrow_type(conn: shardq.Connection, edge: Edge) -> None:
    sql = TYPED + " ORDER BY id"
    table = conn.read_arrow(sql)
    assert dict(zip(table.column_names, table.schema.types, strict=True)) == TYPES
    assert table.schema.types == single_table(edge.dsn, sql).schema.types
    rows = conn.execute(sql).fetchall()
    assert table.num_rows == len(rows) > 100
    same_as_rows(table, rows, ordered=True)
    for name in ("n", "grp", "ts", "flag"):  # NULLs stay NULLs
        assert table.column(name).null_count == sum(1 for r in table.to_pylist() if r[name] is None)
        assert table.column(name).null_count > 0, name


def test_an_empty_result_has_the_same_schema(conn: shardq.Connection) -> None:
    empty = conn.read_arrow(TYPED + " WHERE k > 10000")
    assert empty.num_rows == 0
    assert dict(zip(empty.column_names, empty.schema.types, strict=True)) == {
        **TYPES,
        "nu": pa.decimal128(38, 0),  # no value tells an unconstrained numeric's scale
        "narr": pa.list_(pa.decimal128(38, 0)),
        "arr2": pa.list_(pa.int32()),  # nor an array's dimensions
    }


def test_timestamptz_carries_the_sessions_time_zone(edge: Edge) -> None:
    zone = "options=-c%20TimeZone%3DAmerica/Sao_Paulo"
    shards = [{**s, "dsn": f"{s['dsn']}?{zone}"} for s in edge.config["shards"]]
    with shardq.connect({**edge.config, "shards": shards}) as paris:
        table = paris.read_arrow("SELECT id, ts FROM facts WHERE ts IS NOT NULL ORDER BY id")
        rows = paris.execute("SELECT id, ts FROM facts WHERE ts IS NOT NULL ORDER BY id").fetchall()
    assert table.schema.field("ts").type == pa.timestamp("us", tz="America/Sao_Paulo")
    assert rows[0][1].tzinfo == zoneinfo.ZoneInfo("America/Sao_Paulo")
    assert table.column("ts").to_pylist() == [r[1] for r in rows]


def test_merged_columns_keep_their_types(conn: shardq.Connection, edge: Edge) -> None:
    sql = (
        "SELECT grp, count(*), sum(n), avg(n)::numeric(10, 2) AS a, min(ts), max(f), "
        "bool_or(flag) FROM facts GROUP BY grp ORDER BY grp NULLS FIRST"
    )
    table = conn.read_arrow(sql)
    assert table.schema.types == single_table(edge.dsn, sql).schema.types
    assert table.schema.field("a").type == pa.decimal128(10, 2)
    same_as_rows(table, conn.execute(sql).fetchall(), ordered=True)


def test_enum_and_unconstrained_numeric(conn: shardq.Connection, edge: Edge) -> None:
    sql = "SELECT id, e, n, iv, j FROM odd WHERE n <> 'NaN' OR n IS NULL ORDER BY id"
    table = conn.read_arrow(sql)
    assert table.schema.field("e").type == pa.string()  # psycopg reads an enum as text
    assert pa.types.is_decimal(table.schema.field("n").type)
    assert table.schema.types == single_table(edge.dsn, sql).schema.types
    same_as_rows(table, conn.execute(sql).fetchall(), ordered=True)
    empty = conn.read_arrow("SELECT e FROM odd WHERE false")
    assert empty.schema.types == [pa.string()]


def test_numeric_nan_is_refused_by_column(conn: shardq.Connection) -> None:
    with pytest.raises(shardq.DataError, match="column 'n' holds numeric NaN"):
        conn.read_arrow("SELECT 'NaN'::numeric AS n")
    with pytest.raises(shardq.DataError, match="76 at most"):
        conn.read_arrow("SELECT 1e80::numeric AS big")


def test_the_rest_of_the_result_after_fetchone(conn: shardq.Connection) -> None:
    cur = conn.execute("SELECT id FROM facts ORDER BY id")
    first = cur.fetchone()
    many = cur.fetchmany(3)
    table = cur.fetch_arrow_table()
    rows = conn.execute("SELECT id FROM facts ORDER BY id").fetchall()
    assert [first, *many] == rows[:4]
    assert table.column("id").to_pylist() == [r[0] for r in rows[4:]]
    assert cur.fetch_arrow_table().num_rows == 0  # nothing left, schema kept
    assert cur.fetch_arrow_table().schema.types == [pa.int32()]


def test_a_large_result_crosses_in_batches(conn: shardq.Connection) -> None:
    sql = "SELECT g, g::numeric / 8 AS q FROM generate_series(1, 30000) AS g ORDER BY g"
    cur = conn.cursor()
    cur.execute(sql)
    table = cur.fetch_arrow_table()
    assert table.num_rows == 30000
    assert table.schema.field("q").type == pa.decimal128(38, 20)  # PostgreSQL's scale
    assert table.column("q").to_pylist()[:2] == [decimal.Decimal(1) / 8, decimal.Decimal(2) / 8]


def test_dict_rows_and_a_write(conn: shardq.Connection) -> None:
    cur = conn.cursor(row_factory=dict_row)
    table = cur.execute("SELECT id, grp FROM facts ORDER BY id LIMIT 3").fetch_arrow_table()
    assert (
        table.to_pylist() == cur.execute("SELECT id, grp FROM facts ORDER BY id LIMIT 3").fetchall()
    )
    cur.execute("UPDATE sparse SET v = v WHERE id = -1")
    with pytest.raises(shardq.ProgrammingError, match="returned no rows"):
        cur.fetch_arrow_table()


def test_pandas(conn: shardq.Connection) -> None:
    df = conn.execute("SELECT id, k, n, f, grp, ts, flag FROM facts ORDER BY id").fetch_df()
    rows = conn.execute("SELECT id, k, n, f, grp, ts, flag FROM facts ORDER BY id").fetchall()
    assert isinstance(df, pd.DataFrame)
    assert list(df.columns) == ["id", "k", "n", "f", "grp", "ts", "flag"]
    assert df["id"].dtype == "int32"
    assert df["id"].tolist() == [r[0] for r in rows]
    assert str(df["ts"].dtype).startswith("datetime64[us, UTC]")
    assert df["n"].dtype == object  # decimals stay Decimal
    nulls = [i for i, r in enumerate(rows) if r[2] is None]
    assert nulls
    assert df["n"].isna().tolist() == [r[2] is None for r in rows]
    assert [v for v in df["n"].tolist() if v is not None and v == v] == [
        r[2] for r in rows if r[2] is not None
    ]


def test_polars(conn: shardq.Connection) -> None:
    sql = (
        "SELECT id, n, grp, ts, make_interval(hours => id) AS iv, "
        "jsonb_build_object('i', id) AS j FROM facts ORDER BY id"
    )
    df = conn.execute(sql).fetch_polars()
    rows = conn.execute(sql).fetchall()
    assert isinstance(df, pl.DataFrame)
    assert df.schema["id"] == pl.Int32
    assert df.schema["n"] == pl.Decimal(12, 3)
    assert df.schema["grp"] == pl.String
    assert df.schema["ts"] == pl.Datetime("us", "UTC")
    assert df.schema["iv"] == pl.Duration("ns")
    assert df.schema["j"] == pl.String
    assert df["id"].to_list() == [r[0] for r in rows]
    assert df["n"].to_list() == [r[1] for r in rows]
    assert df["grp"].to_list() == [r[2] for r in rows]
    assert df["iv"].to_list() == [r[4] for r in rows]
    assert df["ts"].null_count() == sum(r[3] is None for r in rows) > 0


def test_polars_read_database_reads_the_rows(conn: shardq.Connection) -> None:
    # polars picks a cursor's Arrow methods by its driver's module name (ADBC, DuckDB, ...):
    # shardq's cursor is read through fetchall/fetchmany, and polars infers the types.
    df = pl.read_database("SELECT id, grp FROM facts ORDER BY id", conn.cursor())
    rows = conn.execute("SELECT id, grp FROM facts ORDER BY id").fetchall()
    assert df.rows() == rows


async def test_the_async_cursor(edge: Edge) -> None:
    async with shardq.AsyncConnection(edge.config) as aconn:
        cur = await aconn.execute("SELECT id, n FROM facts ORDER BY id")
        await cur.fetchone()
        table = await cur.fetch_arrow_table()
        rows = await (await aconn.execute("SELECT id, n FROM facts ORDER BY id")).fetchall()
        assert table.to_pylist() == [{"id": i, "n": n} for i, n in rows[1:]]
        read = await aconn.read_arrow("SELECT id FROM facts WHERE id < %s ORDER BY id", [5])
        assert read.column("id").to_pylist() == [r[0] for r in rows if r[0] < 5]
        df = await (await aconn.execute("SELECT id FROM facts ORDER BY id")).fetch_df()
        assert df["id"].tolist() == [r[0] for r in rows]
        pdf = await (await aconn.execute("SELECT id FROM facts ORDER BY id")).fetch_polars()
        assert pdf["id"].to_list() == [r[0] for r in rows]


@pytest.mark.parametrize(
    ("blocked", "call", "extra"),
    [
        ("pyarrow", lambda c: c.execute("SELECT 1").fetch_arrow_table(), "arrow"),
        ("pyarrow", lambda c: c.read_arrow("SELECT 1"), "arrow"),
        ("pandas", lambda c: c.execute("SELECT 1").fetch_df(), "pandas"),
        ("polars", lambda c: c.execute("SELECT 1").fetch_polars(), "polars"),
    ],
)
def test_a_missing_extra_is_named(
    blocked: str, call: Any, extra: str, conn: shardq.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, blocked, None)
    with pytest.raises(shardq.MissingDependencyError) as missing:
        call(conn)
    assert missing.value.extra == extra
    assert f"pip install 'shardq[{extra}]'" in str(missing.value)
    assert isinstance(missing.value, ModuleNotFoundError)
    assert missing.value.name == blocked


# SQLite


@pytest.fixture(scope="module")
def lite(sqlite_edge: SqliteEdge) -> Iterator[shardq.Connection]:
    with shardq.connect(sqlite_edge.config) as connection:
        yield connection


@pytest.mark.parametrize(
    ("sql", "types"),
    [
        ("SELECT 1 AS i, 1.5 AS r, 'a' AS t, x'00' AS b, NULL AS z",
         [pa.int64(), pa.float64(), pa.string(), pa.binary(), pa.null()]),
        ("SELECT 1 AS i WHERE 0", [pa.null()]),  # SQLite results carry no column types
    ],
)  # fmt: skip
def test_sqlite_types_come_from_the_values(
    sql: str, types: list[pa.DataType], lite: shardq.Connection
) -> None:
    table = lite.read_arrow(sql)
    assert table.schema.types == types
    assert [tuple(r.values()) for r in table.to_pylist()] == lite.execute(sql).fetchall()


def test_sqlite_mixed_storage_classes_are_refused(lite: shardq.Connection) -> None:
    sql = "SELECT 1 AS x UNION ALL SELECT 2.5 UNION ALL SELECT NULL"
    assert {type(r[0]) for r in lite.execute(sql).fetchall()} == {int, float, type(None)}
    with pytest.raises(shardq.DataError, match=r"column 'x' holds values of several types"):
        lite.read_arrow(sql)
    table = lite.read_arrow("SELECT CAST(x AS REAL) AS x FROM (" + sql + ")")
    assert table.schema.types == [pa.float64()]


def test_batches_of_different_scales_widen_to_one(lite: shardq.Connection) -> None:
    column = Column("n", 1700)
    d = decimal.Decimal
    table = to_table([column], [[(None,)], [(d("1.5"),)], [(d("-123.25"),), (None,)]])
    assert table.schema.types == [pa.decimal128(38, 2)]
    assert table.column("n").to_pylist() == [None, d("1.50"), d("-123.25"), None]


def test_uuid_values(conn: shardq.Connection) -> None:
    table = conn.read_arrow("SELECT md5(id::text)::uuid AS u FROM facts ORDER BY id LIMIT 2")
    assert all(isinstance(v, uuid.UUID) for v in table.column("u").to_pylist())
    assert table.column("u").to_pylist() == [
        r[0] for r in conn.execute("SELECT md5(id::text)::uuid FROM facts ORDER BY id LIMIT 2")
    ]


def test_intervals_keep_their_sign(conn: shardq.Connection) -> None:
    table = conn.read_arrow("SELECT interval '-1 hour' AS a, interval '-2 days' AS b")
    a, b = table.to_pylist()[0].values()
    assert (a.months, a.days, a.nanoseconds) == (0, 0, -3600 * 10**9)
    assert (b.months, b.days, b.nanoseconds) == (0, -2, 0)
    assert isinstance(dt.timedelta(days=b.days), dt.timedelta)
