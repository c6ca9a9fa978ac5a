"""An ``executemany`` INSERT through the shardq dialect stores what one PostgreSQL stores.

On PostgreSQL shards the dialect loads such an INSERT with a COPY per shard
(:meth:`shardq.sqlalchemy.ShardqPGDialect.do_executemany`). COPY reads each
value's text as its column's type, where the INSERT casts the value to the
type SQLAlchemy bound it as first, so the two can differ: text into a date
column, a bool into a text column, an aware datetime into a naive timestamp.
Each case here runs the same statement and rows through the shardq engine and
through SQLAlchemy's psycopg dialect on one database: both store the same
rows, or both refuse them. The cases are values of one Python type into a
column of another, as pandas' ``to_sql`` sends them (it declares the types of
the frame, not of the table), and at the edges of a type.
"""

from __future__ import annotations

import datetime as dt
import decimal
import math
import uuid
from typing import TYPE_CHECKING, Any

import pandas as pd
import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

import shardq
import shardq.sqlalchemy  # registers the dialects

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.fixtures.servers import PgCluster

pytestmark = pytest.mark.postgres

DATABASE = "sqla_types"
SCHEMA = """
CREATE TABLE typed (
    k integer NOT NULL, i integer, si smallint, b boolean, n numeric, n2 numeric(6, 2),
    f float8, r real, d date, vc varchar(5), t text, ts timestamp, tstz timestamptz,
    j json, jb jsonb, tm time, u uuid, by bytea, nn text NOT NULL DEFAULT 'x'
);
CREATE TABLE ruled (k integer NOT NULL, t text);
CREATE RULE skip AS ON INSERT TO ruled WHERE NEW.t = 'skip' DO INSTEAD NOTHING;
"""
KEYS = [1, 2, 3, 4, 5, 6, 7, 8]  # on several of the four shards
NAIVE = dt.datetime(2024, 1, 2, 10, 30, 15, 123456)
AWARE = dt.datetime(2024, 1, 2, 10, 30, 15, tzinfo=dt.timezone(dt.timedelta(hours=5)))
ID = uuid.UUID("12345678-1234-5678-1234-567812345678")

#: (column, the SQLAlchemy type the client declares for it, the value of every row).
CASES: list[tuple[str, sa.types.TypeEngine[Any], Any]] = [
    # text into typed columns
    ("d", sa.String(), "2024-01-02"),
    ("d", sa.Date(), "2024-01-02"),
    ("d", sa.Text(), "not a date"),
    ("i", sa.String(), "12"),
    ("i", sa.Integer(), "12"),
    ("i", sa.Integer(), " 12 "),
    ("i", sa.Integer(), "x"),
    ("b", sa.String(), "yes"),
    ("n", sa.String(), "1.5"),
    ("n", sa.Numeric(), "1.5"),
    ("ts", sa.String(), "2024-01-02 10:30"),
    ("tstz", sa.DateTime(timezone=True), "2024-01-02 10:30+02"),
    ("j", sa.String(), '{"a": 1}'),
    ("j", sa.String(), "{not json"),
    # numbers into other numbers
    ("i", sa.Integer(), True),
    ("i", sa.Boolean(), True),
    ("t", sa.Boolean(), True),
    ("i", sa.Integer(), 1.5),
    ("i", sa.Float(), 1.5),
    ("i", sa.Float(), 2.0),
    ("i", sa.Integer(), decimal.Decimal("1.5")),
    ("i", sa.Numeric(), decimal.Decimal("2")),
    ("i", sa.BigInteger(), 7),
    ("n", sa.BigInteger(), 7),
    ("n", sa.Float(), 1 / 3),
    ("n2", sa.Float(), 1 / 3),
    ("n2", sa.Numeric(), decimal.Decimal("1.005")),
    ("n", sa.Numeric(), decimal.Decimal("NaN")),
    ("f", sa.Float(), 0.1),
    ("f", sa.Float(), 1 / 3),
    ("r", sa.Float(), 1 / 3),
    ("f", sa.Integer(), 2**53 + 1),
    ("t", sa.Integer(), 5),
    ("t", sa.Float(), 0.1),
    # out of range
    ("si", sa.Integer(), 40000),
    ("si", sa.SmallInteger(), 40000),
    ("i", sa.SmallInteger(), 40000),
    ("i", sa.Integer(), 2**40),
    ("i", sa.BigInteger(), 2**40),
    ("n2", sa.Numeric(), decimal.Decimal("123456.7")),
    # NaN
    ("f", sa.Float(), math.nan),
    ("n", sa.Float(), math.nan),
    ("i", sa.Float(), math.nan),
    ("f", sa.Float(), math.inf),
    # text lengths and bytes
    ("vc", sa.String(), "abcdefgh"),
    ("vc", sa.String(5), "abcdefgh"),
    ("vc", sa.Text(), "abc      "),
    ("t", sa.Text(), "tab\tnew\nline\\back"),
    ("t", sa.Text(), "nul\x00byte"),
    # NULL
    ("nn", sa.Text(), None),
    ("i", sa.Integer(), None),
    # JSON
    ("j", sa.JSON(), {"a": [1, 2]}),
    ("jb", sa.JSON(), {"a": [1, 2]}),
    ("jb", postgresql.JSONB(), {"b": None}),
    ("j", sa.JSON(), [1, "two"]),
    ("j", sa.Text(), {"a": 1}),
    ("jb", sa.Text(), [1, 2]),
    # dates and times
    ("ts", sa.DateTime(), NAIVE),
    ("ts", sa.DateTime(), AWARE),
    ("ts", sa.DateTime(timezone=True), AWARE),
    ("tstz", sa.DateTime(), NAIVE),
    ("tstz", sa.DateTime(), AWARE),
    ("tstz", sa.DateTime(timezone=True), NAIVE),
    ("tstz", sa.DateTime(timezone=True), AWARE),
    ("d", sa.DateTime(), NAIVE),
    ("ts", sa.Date(), NAIVE.date()),
    ("d", sa.Date(), NAIVE.date()),
    ("t", sa.Date(), NAIVE.date()),
    ("t", sa.DateTime(), AWARE),
    ("tm", sa.Time(), NAIVE.time()),
    ("tm", sa.String(), "10:30"),
    ("ts", sa.Time(), NAIVE.time()),
    # UUIDs and bytes
    ("u", sa.Uuid(), ID),
    ("u", sa.String(), str(ID)),
    ("t", sa.Uuid(), ID),
    ("by", sa.LargeBinary(), b"\x00\\ab\n"),
    ("t", sa.LargeBinary(), b"ab"),
]


def _load(cluster: PgCluster) -> None:
    cluster.drop_database(DATABASE)
    cluster.create_database(DATABASE)
    cluster.execute(SCHEMA, DATABASE)


@pytest.fixture(scope="module")
def engines(
    pg_clusters: list[PgCluster], pg_single: PgCluster
) -> Iterator[tuple[sa.Engine, sa.Engine]]:
    """(the shardq engine, one PostgreSQL's psycopg engine), over empty ``typed`` tables."""
    for cluster in [*pg_clusters, pg_single]:
        _load(cluster)
    shards = [{"name": f"s{i}", "dsn": c.dsn(DATABASE)} for i, c in enumerate(pg_clusters)]
    config = {
        "dialect": "postgres",
        "shards": shards,
        "tables": {"typed": {"shard_key": "k"}, "ruled": {"shard_key": "k"}},
    }
    sharded = sa.create_engine("shardq+postgresql://", connect_args={"config": config})
    single = sa.create_engine(
        pg_single.dsn(DATABASE).replace("postgresql://", "postgresql+psycopg://")
    )
    yield sharded, single
    sharded.dispose()
    single.dispose()


def _outcome(engine: sa.Engine, statement: Any, rows: list[dict[str, Any]], column: str) -> Any:
    """The rows stored (as text, in key order), or "refused" (and nothing stored)."""
    refused = False
    try:
        with engine.begin() as conn:
            conn.execute(statement, rows)
    except (sa.exc.DBAPIError, sa.exc.StatementError):
        refused = True
    with engine.begin() as conn:
        stored = conn.execute(sa.text(f"SELECT k, {column}::text FROM typed ORDER BY k")).all()
        conn.execute(sa.text("DELETE FROM typed"))
    assert not (refused and stored)
    return "refused" if refused else [tuple(row) for row in stored]


@pytest.mark.parametrize(("column", "type_", "value"), CASES, ids=repr)
def test_executemany_stores_what_one_database_stores(
    engines: tuple[sa.Engine, sa.Engine], column: str, type_: Any, value: Any
) -> None:
    sharded, single = engines
    table = sa.Table("typed", sa.MetaData(), sa.Column("k", sa.Integer), sa.Column(column, type_))
    rows = [{"k": k, column: value} for k in KEYS]
    expected = _outcome(single, table.insert(), rows, column)
    assert _outcome(sharded, table.insert(), rows, column) == expected


@pytest.fixture
def copies(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The tables shardq.Cursor.copy_in is asked to load, in order."""
    calls: list[str] = []
    copy_in = shardq.Cursor.copy_in

    def spy(self: shardq.Cursor, table: str, *args: Any, **kw: Any) -> Any:
        calls.append(table)
        return copy_in(self, table, *args, **kw)

    monkeypatch.setattr(shardq.Cursor, "copy_in", spy)
    return calls


def _to_sql(engine: sa.Engine, frame: pd.DataFrame) -> Any:
    """The rows ``to_sql`` stored (every column as text, in key order), or "refused"."""
    try:
        frame.to_sql("typed", engine, if_exists="append", index=False)
    except (sa.exc.DBAPIError, sa.exc.StatementError, pd.errors.DatabaseError):
        return "refused"
    columns = ", ".join(f"{c}::text" for c in frame.columns)
    with engine.begin() as conn:
        stored = conn.execute(sa.text(f"SELECT {columns} FROM typed ORDER BY k")).all()
        conn.execute(sa.text("DELETE FROM typed"))
    return [tuple(row) for row in stored]


def test_to_sql_of_a_frame_typed_as_the_table_is_a_copy(
    engines: tuple[sa.Engine, sa.Engine], copies: list[str]
) -> None:
    sharded, single = engines
    count = 200
    frame = pd.DataFrame(
        {
            "k": range(count),
            "i": [k * 7 for k in range(count)],
            "f": [k / 3 if k % 5 else math.nan for k in range(count)],
            "t": [f"text {k}\t\\" if k % 7 else None for k in range(count)],
            "b": [k % 2 == 0 for k in range(count)],
            "d": [dt.date(2024, 1, 1) + dt.timedelta(days=k) for k in range(count)],
            "ts": pd.date_range("2024-01-01 10:00", periods=count, freq="37min"),
            "tstz": pd.date_range("2024-03-30", periods=count, freq="1h", tz="Europe/Paris"),
        }
    )
    assert _to_sql(sharded, frame) == _to_sql(single, frame)
    assert copies == ["typed"]


@pytest.mark.parametrize(
    "column",
    [
        pd.Series(["2024-01-02", "2024-02-30"], name="d"),  # text into a date: both refuse
        pd.Series(["2024-01-02", "2024-01-03"], name="d"),
        pd.Series(pd.to_datetime(["2024-01-02 10:00+05:00"] * 2), name="ts"),  # aware, naive
        pd.Series([1.0, math.nan], name="i"),  # pandas' ints with a NaN: floats
        pd.Series([True, False], name="t"),
    ],
    ids=lambda s: f"{s.name}-{s.dtype}",
)
def test_to_sql_of_a_frame_typed_otherwise_stores_what_one_database_does(
    engines: tuple[sa.Engine, sa.Engine], copies: list[str], column: pd.Series
) -> None:
    sharded, single = engines
    frame = pd.DataFrame({"k": [1, 2], column.name: column})
    assert _to_sql(sharded, frame) == _to_sql(single, frame)
    assert copies == []


def test_text_for_an_integer_shard_key_is_routed_as_the_insert_routes_it(
    engines: tuple[sa.Engine, sa.Engine], copies: list[str]
) -> None:
    sharded, _ = engines
    table = sa.Table("typed", sa.MetaData(), sa.Column("k", sa.Integer), sa.Column("t", sa.Text))
    rows = [{"k": str(k), "t": "x"} for k in KEYS]
    refused = pytest.raises(sa.exc.DBAPIError, match="may become another key once cast")
    with refused, sharded.begin() as conn:
        conn.execute(table.insert(), rows)
    assert copies == []  # not loaded by COPY, which would place the text as its number
    with sharded.begin() as conn:  # a key of its own type goes by COPY
        conn.execute(table.insert(), [{**row, "k": int(row["k"])} for row in rows])
        conn.execute(sa.text("DELETE FROM typed"))
    assert copies == ["typed"]


def test_an_insert_rule_is_applied_as_one_database_applies_it(
    engines: tuple[sa.Engine, sa.Engine], copies: list[str]
) -> None:
    ruled = sa.Table("ruled", sa.MetaData(), sa.Column("k", sa.Integer), sa.Column("t", sa.Text))
    rows = [{"k": k, "t": "skip" if k % 2 else "keep"} for k in KEYS]
    stored = []
    for engine in engines:
        with engine.begin() as conn:
            conn.execute(ruled.insert(), rows)
            stored.append(conn.execute(sa.text("SELECT k, t FROM ruled ORDER BY k")).all())
            conn.execute(sa.text("DELETE FROM ruled"))
    assert stored[0] == stored[1] == [(k, "keep") for k in KEYS if k % 2 == 0]
    assert copies == []  # COPY does not apply rules
