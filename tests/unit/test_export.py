"""shardq.export without a server: descriptions and Python rows in, Arrow tables out."""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
import zoneinfo

import polars as pl
import pyarrow as pa
import pytest

import shardq
from shardq.execute.driver import Column
from shardq.export import arrow_type, to_polars, to_table

D = decimal.Decimal


@pytest.mark.parametrize(
    ("oid", "kind"),
    [
        (16, pa.bool_()), (17, pa.binary()), (18, pa.string()), (19, pa.string()),
        (20, pa.int64()), (21, pa.int16()), (23, pa.int32()), (25, pa.string()),
        (26, pa.uint32()), (114, pa.json_()), (700, pa.float32()), (701, pa.float64()),
        (1042, pa.string()), (1043, pa.string()), (1082, pa.date32()), (1083, pa.time64("us")),
        (1114, pa.timestamp("us")), (1184, pa.timestamp("us", tz="UTC")),
        (1186, pa.month_day_nano_interval()), (1266, pa.string()), (1700, pa.decimal128(38, 0)),
        (2950, pa.uuid()), (3802, pa.json_()), (1007, pa.list_(pa.int32())),
        (1009, pa.list_(pa.string())), (1231, pa.list_(pa.decimal128(38, 0))),
        (3807, pa.list_(pa.json_())), (2951, pa.list_(pa.uuid())),
        (600, None), (None, None),  # point, and a column the merge computed: from the values
    ],
)  # fmt: skip
def test_postgres_type_oids(oid: int | None, kind: pa.DataType | None) -> None:
    assert arrow_type(Column("c", oid)) == kind


def test_numeric_precision_and_scale() -> None:
    assert arrow_type(Column("c", 1700, precision=12, scale=3)) == pa.decimal128(12, 3)
    assert arrow_type(Column("c", 1700, precision=50, scale=0)) == pa.decimal256(50, 0)


def test_a_numeric_too_fine_for_its_scale_is_refused_not_rounded() -> None:
    with pytest.raises(shardq.DataError, match="column 'n'"):
        to_table([Column("n", 1700, precision=5, scale=2)], [[(D("1.255"),)]])


def test_batches_unify_to_one_type() -> None:
    zone = zoneinfo.ZoneInfo("Asia/Kolkata")
    ts = dt.datetime(2024, 5, 1, 12, tzinfo=zone)
    description = [Column("n", 1700), Column("ts", 1184), Column("x", None)]
    batches = [[(None, None, None)], [(D("12.5"), ts, 3)], [(D("-0.125"), None, None)]]
    table = to_table(description, batches)
    assert table.schema.types == [
        pa.decimal128(38, 3), pa.timestamp("us", tz="Asia/Kolkata"), pa.int64()
    ]  # fmt: skip
    assert table.column("n").to_pylist() == [None, D("12.500"), D("-0.125")]
    assert table.column("ts").to_pylist() == [None, ts, None]
    assert table.column("x").to_pylist() == [None, 3, None]


def test_values_of_two_types_in_one_column_are_refused() -> None:
    with pytest.raises(shardq.DataError, match=r"column 'v' holds values of several types"):
        to_table([Column("v")], [[(1,), ("a",)]])
    with pytest.raises(shardq.DataError, match=r"column 'v' holds values of several types"):
        to_table([Column("v")], [[(1,)], [(1.5,)]])  # across batches too
    with pytest.raises(shardq.DataError, match=r"boolean, integer"):
        to_table([Column("v")], [[(True,), (2,)]])  # bool is not an integer here


def test_arrays_json_timetz_and_duplicate_names() -> None:
    description = [Column("a", 1007), Column("a", 3802), Column("t", 1266), Column("u", 2951)]
    u = uuid.UUID(int=7)
    offset = dt.timezone(dt.timedelta(hours=-3))
    rows = [
        ([[1, None], [3, 4]], [1, {"k": "é"}], dt.time(1, 2, tzinfo=offset), [u, None]),
        (None, None, None, []),
    ]
    table = to_table(description, [rows])
    assert table.column_names == ["a", "a", "t", "u"]
    assert table.schema.types == [
        pa.list_(pa.list_(pa.int32())), pa.json_(), pa.string(), pa.list_(pa.uuid())
    ]  # fmt: skip
    assert table.column(0).to_pylist() == [[[1, None], [3, 4]], None]
    assert table.column(1).to_pylist() == ['[1, {"k": "é"}]', None]
    assert table.column(2).to_pylist() == ["01:02:00-03:00", None]
    assert table.column(3).to_pylist() == [[u, None], []]


def test_an_empty_result_keeps_its_types() -> None:
    table = to_table([Column("id", 23), Column("n", 1700, precision=4, scale=1), Column("x")], [])
    assert table.num_rows == 0
    assert table.schema.types == [pa.int32(), pa.decimal128(4, 1), pa.null()]
    enum = to_table([Column("e", 16390)], [])  # a type of no mapping: psycopg reads it as text
    assert enum.schema.types == [pa.string()]


def test_polars_gets_durations_and_refuses_months() -> None:
    table = to_table([Column("iv", 1186)], [[(dt.timedelta(days=1, microseconds=-1),), (None,)]])
    df = to_polars(table)
    assert df.schema["iv"] == pl.Duration("ns")
    assert df["iv"].to_list() == [dt.timedelta(days=1, microseconds=-1), None]
    months = pa.table({"iv": pa.array([(1, 0, 0)], type=pa.month_day_nano_interval())})
    with pytest.raises(shardq.DataError, match="months"):
        to_polars(months)
