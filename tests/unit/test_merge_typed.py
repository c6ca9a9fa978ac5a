"""The merge's typed evaluation: dates and times, CASE, NULLIF, functions, comparisons.

The differential suite checks these against PostgreSQL; these tests pin the
rules where no server is needed (errors, NULLs, result types).
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import pytest

import shardq
from shardq.merge import temporal
from shardq.merge.evaluate import compile_expr, semantics
from shardq.merge.steps import Call, Col, Const

PG = semantics("postgres")
INT4, INT8, NUMERIC, FLOAT8, TEXT, DATE = 23, 20, 1700, 701, 25, 1082


def _eval(op: str, *args: Any) -> Any:
    row = tuple(args)
    return compile_expr(Call(op, tuple(Col(i) for i in range(len(row)))), PG)(row)


def test_date_and_time_arithmetic_and_types() -> None:
    d1, d2 = dt.date(2024, 3, 1), dt.date(2024, 2, 1)
    assert _eval("-", d1, d2) == 29
    assert _eval("+", d1, 1) == dt.date(2024, 3, 2)
    assert _eval("-", dt.datetime(2024, 1, 2), dt.datetime(2024, 1, 1, 1)) == dt.timedelta(hours=23)
    assert PG.output_type("-", [DATE, DATE]) == INT4
    assert PG.output_type("+", [INT4, DATE]) == DATE
    assert PG.output_type("-", [temporal.TIMESTAMPTZ] * 2) == temporal.INTERVAL
    with pytest.raises(shardq.DataError, match="date out of range"):
        _eval("+", dt.date(9999, 12, 31), 1)
    aware = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    with pytest.raises(shardq.NotSupportedError):
        _eval("-", aware, dt.datetime(2024, 1, 1))  # timestamptz - timestamp: a cast we skip
    with pytest.raises(shardq.NotSupportedError):
        _eval("+", aware, dt.timedelta(days=1))  # the session's calendar: not guessed


def test_comparisons_refuse_what_python_compares_otherwise() -> None:
    assert _eval("=", 1, Decimal("1.0")) is True
    assert _eval("=", Decimal("0.1"), 0.1) is True  # numeric meets float8 as float8
    assert _eval("<", 1, None) is None
    for a, b in [(dt.date(2024, 1, 1), dt.datetime(2024, 1, 1)), (1, "1"), (True, 1)]:
        with pytest.raises(shardq.NotSupportedError, match="cannot compare"):
            _eval("=", a, b)


def test_case_and_nullif() -> None:
    case = Call("case", (Call(">", (Col(0), Const(0))), Col(0), Const(None, None)))
    f = compile_expr(case, PG)
    assert [f((5,)), f((-1,)), f((None,))] == [5, None, None]
    # Only the branch taken is computed: no division by zero.
    guarded = Call("case", (Call("=", (Col(0), Const(0))), Const(0), Call("/", (Const(1), Col(0)))))
    assert compile_expr(guarded, PG)((0,)) == 0
    assert PG.output_type("case", [16, INT4, 16, NUMERIC, None]) == NUMERIC
    assert PG.output_type("case", [16, TEXT, None]) == TEXT
    assert _eval("nullif", 0, 0) is None
    assert _eval("nullif", 3, 0) == 3
    assert _eval("nullif", None, 0) is None
    assert _eval("nullif", 3, None) == 3


def test_extract_fields() -> None:
    t = dt.datetime(1969, 12, 31, 23, 59, 59, 500000)
    assert temporal.extract("epoch", t, as_float=False) == Decimal("-0.500000")
    assert temporal.extract("century", t, as_float=True) == 20.0
    assert temporal.extract("isoyear", t, as_float=False) == Decimal(1970)
    assert temporal.extract("epoch", dt.date(2024, 3, 31), as_float=False) == Decimal(1711843200)
    with pytest.raises(shardq.NotSupportedError, match='unit "hour" not supported for type date'):
        temporal.extract("hour", dt.date(2024, 3, 31), as_float=False)
    assert temporal.date_trunc("quarter", dt.datetime(2024, 8, 9, 10)) == dt.datetime(2024, 7, 1)


def test_functions() -> None:
    assert _eval("floor", Decimal("-0.5")) == Decimal("-1")
    assert str(_eval("ceil", Decimal("-0.5"))) == "0"  # no negative zero in numeric
    assert _eval("floor", 3) == 3.0
    assert _eval("greatest", 1, None, Decimal("2.5")) == Decimal("2.5")
    assert _eval("least", None, None) is None
    assert _eval("substr", "hello", -1, 3) == "h"
    assert _eval("substr", "hello", 4) == "lo"
    with pytest.raises(shardq.DataError, match="negative substring length"):
        _eval("substr", "hello", 1, -1)
    assert _eval("to_hex", -3, "ffffffff") == "fffffffd"
    assert _eval("to_hex", 255, "ffffffffffffffff") == "ff"
    assert _eval("||", True, "x") == "truex"
    assert _eval("concat", True, None, Decimal("1E-7")) == "t0.0000001"
    with pytest.raises(shardq.DataError, match="bigint out of range"):
        _eval("abs", -(2**63))
    with pytest.raises(shardq.DataError, match="underflow"):
        _eval("power", 10.0, -400.0)
    with pytest.raises(shardq.NotSupportedError):
        _eval("sqrt", Decimal(2))
    with pytest.raises(shardq.NotSupportedError, match="as text"):
        _eval("text", dt.date(2024, 1, 1))
