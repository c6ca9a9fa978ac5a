"""The columnar merge against the row path's, on the same shards' rows (no server).

:func:`shardq.merge.columnar.merge` must give what :func:`shardq.merge.pipeline.merger`
gives: random rows split over random shards, merged both ways, by ORDER BY
(NULLs first or last, either direction, NaN), OFFSET/LIMIT, and the regroup of
partial aggregates with HAVING and computed columns.
"""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shardq.errors import DataError
from shardq.execute.driver import Column
from shardq.export import to_table
from shardq.merge.arrowtypes import conform, prepare, settle
from shardq.merge.columnar import merge, unsupported
from shardq.merge.drive import drive_sync
from shardq.merge.evaluate import semantics
from shardq.merge.order import sort_key
from shardq.merge.pipeline import describe, merger
from shardq.merge.steps import Aggregation, Call, Col, Combine, MergePlan, Output, SortKey, TypeRule

PG = semantics("postgres")
INT8, FLOAT8, TEXT, NUMERIC = 20, 701, 25, 1700
#: id (unique, the last sort key: a total order), an integer, a float, a text.
COLUMNS = [Column("id", INT8), Column("k", INT8), Column("f", FLOAT8), Column("t", TEXT)]

ints = st.one_of(st.none(), st.integers(-3, 3))
floats = st.one_of(st.none(), st.sampled_from([-1.5, 0.0, 2.0, math.nan, math.inf, -math.inf]))
texts = st.one_of(st.none(), st.sampled_from(["", "a", "B", "b", "é", "Zoë"]))


def adbc_table(rows: list[tuple[Any, ...]], columns: list[Column]) -> pa.Table:
    """A table as ADBC gives it: numeric as text, the PostgreSQL type in the metadata."""
    arrays = []
    fields = []
    kinds = {INT8: pa.int64(), FLOAT8: pa.float64(), TEXT: pa.string(), NUMERIC: pa.string()}
    for i, column in enumerate(columns):
        values = [row[i] for row in rows]
        if column.type_code == NUMERIC:
            values = [None if v is None else str(v) for v in values]
        arrays.append(pa.array(values, type=kinds[column.type_code]))
        fields.append(pa.field(column.name, kinds[column.type_code]))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return bool(a == b) and type(a) is type(b)


def columnar(shards: list[list[tuple[Any, ...]]], plan: MergePlan, columns: list[Column]) -> Any:
    tables = conform(
        [prepare(adbc_table(rows, columns), columns, "UTC") for rows in shards], columns
    )
    description = describe(plan, columns, PG)
    assert description is not None
    return settle(merge(tables, plan, columns, PG), description)


def rows_of(table: pa.Table) -> list[tuple[Any, ...]]:
    columns = [c.to_pylist() for c in table.columns]
    return [tuple(c[i] for c in columns) for i in range(table.num_rows)]


@st.composite
def ordered_reads(draw: st.DrawFn) -> tuple[list[list[tuple[Any, ...]]], MergePlan]:
    count = draw(st.integers(0, 40))
    rows = [(i, draw(ints), draw(floats), draw(texts)) for i in range(count)]
    shards = [[] for _ in range(draw(st.integers(1, 4)))]
    for row in rows:
        shards[draw(st.integers(0, len(shards) - 1))].append(row)
    keys = [
        SortKey(c, descending=draw(st.booleans()), nulls_first=draw(st.booleans()))
        for c in draw(st.lists(st.sampled_from([1, 2, 3]), max_size=3, unique=True))
    ]
    keys.append(SortKey(0, descending=draw(st.booleans())))
    offset = draw(st.integers(0, 5))
    limit = draw(st.one_of(st.none(), st.integers(0, 10)))
    return shards, MergePlan(order=tuple(keys), offset=offset, limit=limit)


@settings(max_examples=150, deadline=None)
@given(ordered_reads())
def test_order_offset_and_limit_are_postgres_order(
    read: tuple[list[list[tuple[Any, ...]]], MergePlan],
) -> None:
    shards, plan = read
    assert unsupported(plan, COLUMNS, PG) is None
    key, reverse = sort_key(plan.order, frozenset({2}))
    every = sorted((row for rows in shards for row in rows), key=key, reverse=reverse)
    end = None if plan.limit is None else plan.offset + plan.limit
    want = every[plan.offset : end]
    table = columnar(shards, plan, COLUMNS)
    assert table.schema == to_table(COLUMNS, [want]).schema
    got = rows_of(table)
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert all(same(a, b) for a, b in zip(g, w, strict=True)), (g, w)


PARTIALS = [Column("g", TEXT), Column("c", INT8), Column("s", NUMERIC), Column("lo", INT8)]
GROUPED = Aggregation(groups=1, combines=(Combine.COUNT, Combine.SUM, Combine.MIN))
numerics = st.one_of(st.none(), st.sampled_from(["1.5", "-2", "0.250", "10.00", "3"]))


@st.composite
def partial_rows(draw: st.DrawFn) -> list[list[tuple[Any, ...]]]:
    shards = []
    for _ in range(draw(st.integers(1, 4))):
        keys = draw(st.lists(texts, max_size=6, unique=True))
        shards.append([(key, draw(st.integers(0, 9)), draw(numerics), draw(ints)) for key in keys])
    return [
        [(g, c, None if s is None else Decimal(s), lo) for g, c, s, lo in rows] for rows in shards
    ]


OUTPUTS = (
    Output("g", Col(0), TypeRule(copy=0)),
    Output("count", Col(1), TypeRule(copy=1)),
    Output("sum", Col(2), TypeRule(copy=2)),
    Output(
        "avg",
        Call("avg", (Col(2), Col(1))),
        TypeRule(op="avg", args=(TypeRule(copy=2), TypeRule(copy=1))),
    ),
    Output("min", Col(3), TypeRule(copy=3)),
)


@pytest.mark.parametrize(
    "plan",
    [
        MergePlan(aggregate=GROUPED, outputs=OUTPUTS),
        MergePlan(
            aggregate=GROUPED,
            outputs=OUTPUTS,
            sort=(SortKey(1, descending=True), SortKey(0, nulls_first=True)),
            limit=3,
        ),
        MergePlan(
            aggregate=GROUPED,
            outputs=OUTPUTS,
            having=Call(">", (Col(1), Col(3))),
        ),
        MergePlan(
            aggregate=Aggregation(groups=1, combines=GROUPED.combines, scalar=False),
            outputs=OUTPUTS[:3],
            hidden=1,
        ),
    ],
    ids=["regroup", "sorted-limited", "having", "hidden"],
)
@settings(max_examples=60, deadline=None)
@given(shards=partial_rows())
def test_regroup_is_the_row_paths(plan: MergePlan, shards: list[list[tuple[Any, ...]]]) -> None:
    assert unsupported(plan, PARTIALS, PG) is None
    types = [c.type_code for c in PARTIALS]
    rows = drive_sync(merger(plan, len(shards), PG, types), [[rows] for rows in shards])
    description = describe(plan, PARTIALS, PG)
    assert description is not None
    want = to_table(description, [rows])  # the row path's table
    got = columnar(shards, plan, PARTIALS)
    assert got.schema == want.schema
    got_rows, want_rows = rows_of(got), rows_of(want)
    if not plan.sort:
        got_rows, want_rows = sorted(got_rows, key=repr), sorted(want_rows, key=repr)
    assert got_rows == want_rows


def test_a_scalar_regroup_of_no_rows_is_one_row() -> None:
    plan = MergePlan(
        aggregate=Aggregation(groups=0, combines=(Combine.COUNT, Combine.SUM), scalar=True),
        outputs=(
            Output("count", Col(0), TypeRule(copy=0)),
            Output("sum", Col(1), TypeRule(copy=1)),
        ),
    )
    columns = [Column("c", INT8), Column("s", NUMERIC)]
    table = columnar([[], []], plan, columns)
    assert rows_of(table) == [(0, None)]
    assert table.schema.types == [pa.int64(), pa.decimal128(38, 0)]


def test_an_unconstrained_numeric_is_sized_on_the_rows_kept() -> None:
    columns = [Column("id", INT8), Column("n", NUMERIC)]
    shards = [[(1, Decimal("1.5")), (3, Decimal("123456.125"))], [(2, Decimal("-2.25"))]]
    plan = MergePlan(order=(SortKey(0),), limit=2)
    table = columnar(shards, plan, columns)
    # The row kept with scale 3 is gone: the widest scale of the two kept is 2.
    assert table.schema.field("n").type == pa.decimal128(38, 2)
    assert rows_of(table) == [(1, Decimal("1.50")), (2, Decimal("-2.25"))]


def test_an_integer_sum_out_of_range_is_refused_not_wrapped() -> None:
    plan = MergePlan(
        aggregate=Aggregation(groups=1, combines=(Combine.SUM,)),
        outputs=(Output("g", Col(0), TypeRule(copy=0)), Output("sum", Col(1), TypeRule(copy=1))),
    )
    columns = [Column("g", INT8), Column("s", INT8)]
    near = 2**62 + 1
    fits = columnar([[(1, near)], [(1, -near)], [(2, 5)]], plan, columns)
    assert sorted(rows_of(fits)) == [(1, 0), (2, 5)]
    with pytest.raises(DataError, match="out of the range"):
        columnar([[(1, near)], [(1, near)]], plan, columns)
