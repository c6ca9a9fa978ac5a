"""Evaluation of merge expressions with the database's own semantics.

After the shards' partial aggregates are merged, what the query computes
over them (``sum(a) / count(*)``, ``round(avg(x), 2)``, a HAVING condition)
is evaluated here, and must give what the database would give: integer
division truncates, numeric division picks PostgreSQL's result scale and
rounds half away from zero, NULL propagates, division by zero is an error
(PostgreSQL) or NULL (SQLite). Values are those the drivers return: ``int``,
:class:`~decimal.Decimal` (numeric), ``float``, ``str``, ``bool``, ``None``.

Only the operators and functions listed in :data:`OPERATORS` exist; the
planner evaluates nothing else after a merge.

Why here, and not by PostgreSQL over the merged partials (``SELECT <final
expressions> FROM (VALUES ...)`` on one shard, which would apply every rule
of the server at once): that costs a round trip per query and a shard
connection inside a merge that is otherwise pure and streaming, and it
would need each partial's type spelled for the shard. The rules a merge
needs are few and small (numeric scale, date arithmetic, CASE's common
type, a handful of functions); what they do not cover exactly is refused
rather than approximated. The one rule that is not small, how PostgreSQL
reads a string literal as a timestamp (time zone, date style, ``'today'``),
is left to the shards (see :mod:`shardq.sql.rewrite.aggregates`).

PostgreSQL's numeric arithmetic itself is in :mod:`shardq.merge.numeric`,
its date and time arithmetic in :mod:`shardq.merge.temporal`.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

from shardq.errors import DataError, NotSupportedError
from shardq.merge import temporal
from shardq.merge.functions import FUNCTIONS
from shardq.merge.numeric import (
    CASTS,
    EXACT,
    numeric_avg,
    numeric_div,
    numeric_round,
    unsigned_zero,
)
from shardq.merge.steps import Col, Const, Expr, MergePlan, Param, TypeRule
from shardq.merge.variance import variance

__all__ = [
    "EXACT",
    "OPERATORS",
    "Semantics",
    "coerce",
    "compile_expr",
    "compile_row",
    "numeric_div",
    "numeric_round",
    "output_type",
    "semantics",
    "uncomputable",
]

# Enough digits that +, - and * of numerics are exact, as they are in PostgreSQL.
_INT8 = (-(2**63), 2**63 - 1)

# PostgreSQL type OIDs the merge produces or reasons about.
INT2, INT4, INT8, NUMERIC, FLOAT4, FLOAT8, BOOL, TEXT = 21, 23, 20, 1700, 700, 701, 16, 25
_INTS = (INT2, INT4, INT8)
_RANK = {INT2: 0, INT4: 1, INT8: 2, NUMERIC: 3, FLOAT4: 4, FLOAT8: 5}


def _is_number(value: object) -> bool:
    return isinstance(value, int | Decimal | float) and not isinstance(value, bool)


class Semantics:
    """The arithmetic of one database. This class is PostgreSQL's."""

    name = "postgres"
    division_by_zero_is_null = False

    def check_int(self, value: int) -> int | float:
        if not _INT8[0] <= value <= _INT8[1]:
            raise DataError("bigint out of range")
        return value

    def arith(self, op: str, a: Any, b: Any) -> Any:
        if a is None or b is None:
            return None
        if not (_is_number(a) and _is_number(b)):
            return temporal.arith(op, a, b)
        if isinstance(a, float) or isinstance(b, float):
            return self._float(op, float(a), float(b))
        if isinstance(a, Decimal) or isinstance(b, Decimal):
            return self._numeric(op, Decimal(a), Decimal(b))
        return self._int(op, a, b)

    def _zero(self) -> None:
        """Raise for a division by zero, unless the database makes it NULL."""
        if not self.division_by_zero_is_null:
            raise DataError("division by zero")
        return None

    def _int(self, op: str, a: int, b: int) -> int | float | None:
        if op == "+":
            return self.check_int(a + b)
        if op == "-":
            return self.check_int(a - b)
        if op == "*":
            return self.check_int(a * b)
        if b == 0:
            self._zero()
            return None
        quotient = abs(a) // abs(b)
        if op == "/":  # truncates toward zero
            return self.check_int(quotient if (a < 0) == (b < 0) else -quotient)
        remainder = abs(a) - quotient * abs(b)  # "%": the sign of the dividend
        return remainder if a >= 0 else -remainder

    def _numeric(self, op: str, a: Decimal, b: Decimal) -> Decimal | None:
        result = self._numeric_raw(op, a, b)
        return None if result is None else unsigned_zero(result)

    def _numeric_raw(self, op: str, a: Decimal, b: Decimal) -> Decimal | None:
        if op == "+":
            return EXACT.add(a, b)
        if op == "-":
            return EXACT.subtract(a, b)
        if op == "*":
            return EXACT.multiply(a, b)
        if not b:
            self._zero()
            return None
        if op == "/":
            return numeric_div(a, b)
        # numeric "%": truncated quotient, remainder with the dividend's sign and scale.
        return EXACT.remainder(a, b)

    def _float(self, op: str, a: float, b: float) -> float | None:
        if op in ("/", "%") and b == 0:
            self._zero()
            return None
        result = {"+": a + b, "-": a - b, "*": a * b}.get(op)
        if result is None:
            result = a / b if op == "/" else math.fmod(a, b)
        if math.isinf(result) and not (math.isinf(a) or math.isinf(b)):
            raise DataError("value out of range: overflow")
        return result

    def avg(self, total: Any, count: int) -> Any:
        """The average from a merged sum and count (NULL over no rows)."""
        if total is None or not count:
            return None
        if isinstance(total, float):
            return total / count
        if isinstance(total, Decimal) and isinstance(count, int):
            return numeric_avg(total, count)
        if isinstance(total, int | Decimal) and not isinstance(total, bool):
            return numeric_div(total, count)
        raise NotSupportedError(
            f"shardq cannot merge avg() over {type(total).__name__} values; "
            "pin the query to one shard"
        )

    def round(self, value: Any, *digits: Any) -> Any:
        """``round(x)`` or ``round(x, digits)``, NULL if any argument is NULL."""
        if value is None or (digits and digits[0] is None):
            return None
        if not digits:
            if isinstance(value, Decimal):
                return numeric_round(value, 0)
            if _is_number(value):
                return float(round(float(value)))  # round(float8) is rint: halves to even
        elif isinstance(value, Decimal | int) and not isinstance(value, bool):
            return numeric_round(Decimal(value), int(digits[0]))
        raise NotSupportedError(f"round() of {type(value).__name__} after a merge")

    def output_type(self, op: str, types: Sequence[Any]) -> Any:
        """The PostgreSQL type OID of ``op`` over operands of ``types`` (None if unknown)."""
        if op in _COMPARISONS or op in ("and", "or", "not") or op.startswith("is_"):
            return BOOL
        if op in ("count", "count_set"):
            return INT8
        if op in _CAST_TYPES:
            return _CAST_TYPES[op]
        if op == "sum_of":  # sum() over values of the given type
            t = types[0] if types else None
            return {INT2: INT8, INT4: INT8, INT8: NUMERIC}.get(t, t) if t is not None else None
        if op == "variance":  # float8 over floats, numeric over integers and numerics
            return FLOAT8 if len(types) > 2 and types[2] in (FLOAT4, FLOAT8) else NUMERIC
        if op in ("avg", "avg_of"):
            if op == "avg_of" and types and types[0] in _INTS:
                return NUMERIC
            return FLOAT8 if types and types[0] in (FLOAT4, FLOAT8) else NUMERIC
        if op == "round":  # round(x, n) is numeric's; round(x) keeps numeric, else float8
            return NUMERIC if len(types) == 2 or (types and types[0] == NUMERIC) else FLOAT8
        if op == "coalesce":  # the common type of the arguments
            known = [t for t in types if t is not None]
            if known and all(t in _RANK for t in known):
                return max(known, key=_RANK.__getitem__)
            return known[0] if known else None
        if op in FUNCTIONS:
            return FUNCTIONS[op].type_of(types)
        if op == "date_trunc":  # a date's is timestamptz, but refused: see temporal
            source = types[1] if len(types) == 2 else None
            return source if source in (temporal.TIMESTAMP, temporal.TIMESTAMPTZ) else None
        if op == "extract":
            return NUMERIC
        if op == "date_part":
            return FLOAT8
        if op in ("neg", "nullif"):  # nullif(a, b) has a's type
            return types[0] if types else None
        if op == "case":  # the common type of the results; NULL and '...' are unknown
            return _common_type([*types[1::2], types[-1]])
        if op in _ARITH:
            if len(types) != 2:
                return None
            if any(t not in _RANK for t in types):
                return temporal.output_type(op, *types)
            high = max(types, key=_RANK.__getitem__)
            if high in (FLOAT4, FLOAT8):
                return FLOAT4 if types[0] == types[1] == FLOAT4 else FLOAT8
            return high
        return None


def _common_type(types: Sequence[Any]) -> Any:
    """PostgreSQL's common type of CASE results (``None``: unknown, or not one shardq knows).

    Untyped literals are unknown (typed ``None``, or text for a string) and
    take the others' type; all unknown is text.
    """
    known = {t for t in types if t not in (None, TEXT)}
    if not known:
        return TEXT
    if len(known) == 1:
        return known.pop()
    if all(t in _RANK for t in known):
        return max(known, key=_RANK.__getitem__)
    return None


class SQLiteSemantics(Semantics):
    """SQLite: no numeric type, division by zero is NULL, avg is always a float."""

    name = "sqlite"
    division_by_zero_is_null = True

    def check_int(self, value: int) -> int | float:
        return value if _INT8[0] <= value <= _INT8[1] else float(value)

    def avg(self, total: Any, count: int) -> Any:
        if total is None or not count:
            return None
        return float(total) / count

    def round(self, value: Any, *digits: Any) -> Any:
        raise NotSupportedError("round() after a merge on SQLite shards")

    def output_type(self, op: str, types: Sequence[Any]) -> Any:
        return None


_SEMANTICS = {"postgres": Semantics(), "sqlite": SQLiteSemantics()}


def semantics(dialect: str) -> Semantics:
    """The :class:`Semantics` of a dialect."""
    return _SEMANTICS[dialect]


_ARITH = ("+", "-", "*", "/", "%")
_COMPARISONS = ("=", "<>", "<", "<=", ">", ">=")


def _compare(op: str, a: Any, b: Any) -> bool | None:
    """``a op b`` as PostgreSQL compares them, or an error where Python would not.

    Numbers of two types compare as the wider one (an integer or numeric with
    a float8 as float8); values of other, different types (a date and a
    timestamp, a number and text, naive and aware timestamps) are refused:
    Python's ``==`` would call them unequal where PostgreSQL casts one side.
    """
    if a is None or b is None:
        return None
    if type(a) is not type(b):
        if not (_is_number(a) and _is_number(b)):
            raise _incomparable(a, b)
        if isinstance(a, float) or isinstance(b, float):
            a, b = float(a), float(b)
    elif type(a) is dt.datetime and (a.tzinfo is None) != (b.tzinfo is None):
        raise _incomparable(a, b)
    if isinstance(a, float) and (math.isnan(a) or math.isnan(b)):
        # PostgreSQL's float order: NaN equals NaN and is above every other number.
        a, b = _nan_last(a), _nan_last(b)
    if op == "=":
        return bool(a == b)
    if op == "<>":
        return bool(a != b)
    if op == "<":
        return bool(a < b)
    if op == "<=":
        return bool(a <= b)
    if op == ">":
        return bool(a > b)
    return bool(a >= b)


def _nan_last(value: float) -> tuple[bool, float]:
    """A float's place in PostgreSQL's order, NaN last (Python's NaN compares to nothing).

    >>> nan = float("nan")
    >>> _nan_last(nan) > _nan_last(float("inf")), _nan_last(nan) == _nan_last(-nan)
    (True, True)
    """
    nan = math.isnan(value)
    return nan, 0.0 if nan else value


def _incomparable(a: Any, b: Any) -> NotSupportedError:
    return NotSupportedError(
        f"shardq cannot compare {type(a).__name__} with {type(b).__name__} after a merge; "
        "cast one side to the other's type, or pin the query to one shard"
    )


def _and(values: list[Any]) -> bool | None:
    if any(v is False for v in values):
        return False
    return None if any(v is None for v in values) else True


def _or(values: list[Any]) -> bool | None:
    if any(v is True for v in values):
        return True
    return None if any(v is None for v in values) else False


OPERATORS = frozenset(
    {*_ARITH, *_COMPARISONS, "neg", "and", "or", "not", "is_null", "is_not_null", "is_true",
     "is_not_true", "is_false", "is_not_false", "coalesce", "nullif", "case",
     "round", "avg", "count_set", "sum_set", "avg_set", "to_int2", "to_int4", "to_int8",
     "to_numeric", "to_float8", "to_float4", "to_date", "extract", "date_part", "date_trunc",
     "variance", *FUNCTIONS}
)  # fmt: skip

Evaluator = Callable[[Sequence[Any]], Any]


def compile_expr(expr: Expr, sem: Semantics) -> Evaluator:
    """Turn an expression into a function of a row.

    >>> from decimal import Decimal
    >>> from shardq.merge.steps import Call, Col
    >>> f = compile_expr(Call("/", (Col(0), Col(1))), semantics("postgres"))
    >>> f((7, 2)), f((Decimal("7.0"), 3)), f((None, 1))
    (3, Decimal('2.3333333333333333'), None)
    """
    if isinstance(expr, Col):
        index = expr.index
        return lambda row: row[index]
    if isinstance(expr, Const):
        value = expr.value
        return lambda row: value
    if isinstance(expr, Param):
        raise NotSupportedError(f"parameter {expr.name!r} was not bound before the merge")
    args = [compile_expr(a, sem) for a in expr.args]
    op = expr.op
    if op in _ARITH:
        left, right = args
        return lambda row: sem.arith(op, left(row), right(row))
    if op in _COMPARISONS:
        left, right = args
        return lambda row: _compare(op, left(row), right(row))
    if op == "neg":
        (inner,) = args
        return lambda row: sem.arith("-", 0, v) if (v := inner(row)) is not None else None
    if op == "and":
        return lambda row: _and([a(row) for a in args])
    if op == "or":
        return lambda row: _or([a(row) for a in args])
    if op == "not":
        (inner,) = args
        return lambda row: None if (v := inner(row)) is None else not v
    if op == "is_null":
        (inner,) = args
        return lambda row: inner(row) is None
    if op == "is_not_null":
        (inner,) = args
        return lambda row: inner(row) is not None
    if op in ("is_true", "is_not_true", "is_false", "is_not_false"):
        (inner,) = args
        wanted = op.endswith("true")
        negate = "_not_" in op
        return lambda row: (inner(row) is wanted) != negate
    if op in _ALL_CASTS:
        cast = _ALL_CASTS[op]
        inner, *rest = args
        extra = [a(()) for a in rest]  # constants: precision and scale
        return lambda row: None if (v := inner(row)) is None else cast(v, *extra)
    if op == "coalesce":
        return lambda row: next((v for a in args if (v := a(row)) is not None), None)
    if op in FUNCTIONS:
        call = FUNCTIONS[op].call
        return lambda row: call(*[a(row) for a in args])
    if op == "date_trunc":
        unit = expr.args[0]
        assert isinstance(unit, Const)
        (_, source) = args
        return lambda row: temporal.date_trunc(unit.value, source(row))
    if op in ("extract", "date_part"):
        field = expr.args[0]
        assert isinstance(field, Const)
        (_, source) = args
        as_float = op == "date_part"
        return lambda row: temporal.extract(field.value, source(row), as_float)
    if op == "nullif":
        first, second = args
        return lambda row: None if _compare("=", v := first(row), second(row)) else v
    if op == "case":  # (condition, result) pairs, then the ELSE result
        pairs = list(zip(args[:-1:2], args[1::2], strict=True))
        default = args[-1]
        return lambda row: _case(row, pairs, default)
    if op == "round":
        return lambda row: sem.round(*[a(row) for a in args])
    if op == "avg":
        total, count = args
        return lambda row: sem.avg(total(row), count(row))
    if op == "variance":
        kind, count, total, squares, state = args
        name = kind(())  # a constant
        return lambda row: variance(name, count(row), total(row), squares(row), state(row))
    if op == "count_set":
        (inner,) = args
        return lambda row: len(inner(row))
    if op == "sum_set":
        (inner,) = args
        return lambda row: _sum_set(inner(row), sem)
    if op == "avg_set":
        (inner,) = args
        return lambda row: sem.avg(_sum_set(inner(row), sem), len(inner(row)))
    raise NotSupportedError(f"no merge operator {op!r}")


def _case(row: Sequence[Any], pairs: list[tuple[Evaluator, Evaluator]], default: Evaluator) -> Any:
    for condition, result in pairs:
        if condition(row) is True:
            return result(row)
    return default(row)


def _sum_set(values: set[Any], sem: Semantics) -> Any:
    total: Any = None
    for value in values:
        total = value if total is None else sem.arith("+", total, value)
    return total


_CAST_TYPES = {"to_int2": INT2, "to_int4": INT4, "to_int8": INT8, "to_numeric": NUMERIC,
               "to_float8": FLOAT8, "to_float4": FLOAT4, "to_date": temporal.DATE}  # fmt: skip
_ALL_CASTS = {**CASTS, "to_date": temporal.to_date}


def compile_row(exprs: Sequence[Expr], sem: Semantics) -> Evaluator:
    """One function computing a whole output row (columns inline, calls compiled).

    >>> from shardq.merge.steps import Call, Col
    >>> f = compile_row([Col(1), Call("+", (Col(0), Col(1)))], semantics("postgres"))
    >>> f((1, 2))
    (2, 3)
    """
    namespace: dict[str, Any] = {}
    parts = []
    for j, expr in enumerate(exprs):
        if isinstance(expr, Col):
            parts.append(f"r[{int(expr.index)}]")
        else:
            namespace[f"f{j}"] = compile_expr(expr, sem)
            parts.append(f"f{j}(r)")
    # Only integers and generated names are formatted into the source.
    return eval(f"lambda r: ({', '.join(parts)},)", namespace)  # type: ignore[no-any-return]


_INT_RANGES = {INT2: (16, "smallint"), INT4: (32, "integer")}


def coerce(value: Any, type_code: Any) -> Any:
    """``value`` as the database returns a column of ``type_code`` (int in numeric, ...).

    An integer result out of its type's range is the database's error.
    """
    if value is None or isinstance(value, bool):
        return value
    if type_code in _INT_RANGES and isinstance(value, int):
        bits, name = _INT_RANGES[type_code]
        if not -(2 ** (bits - 1)) <= value < 2 ** (bits - 1):
            raise DataError(f"{name} out of range")
        return value
    if type_code == NUMERIC and isinstance(value, int):
        return Decimal(value)
    if type_code in (FLOAT4, FLOAT8) and isinstance(value, int | Decimal):
        return float(value)
    return value


def output_type(rule: TypeRule, source_types: Sequence[Any], sem: Semantics) -> Any:
    """The ``type_code`` of an output column, from the shards' column types."""
    if rule.copy is not None:
        return source_types[rule.copy]
    if rule.op is None:
        return rule.fixed
    return sem.output_type(rule.op, [output_type(a, source_types, sem) for a in rule.args])


def uncomputable(plan: MergePlan, types: Sequence[Any], sem: Semantics) -> str | None:
    """What ``plan`` computes after the merge that it cannot over the shards' column ``types``.

    The planner does not know the columns' types; the shards' descriptions
    do, before any row is merged. Arithmetic, comparisons and functions of
    dates, times and intervals are computed only as :func:`temporal.refusal`
    allows (``max(ts) + interval '1 day'`` follows the session's calendar);
    asked here, such a read is refused whole (and gathered to one shard)
    rather than failing at its first row.

    >>> from shardq.merge.steps import Call, Output
    >>> plus = Call("+", (Col(0), Col(1)))
    >>> plan = MergePlan(outputs=(Output("x", plus, TypeRule(op="+")),))
    >>> uncomputable(plan, [temporal.TIMESTAMPTZ, temporal.INTERVAL], semantics("postgres"))
    'timestamptz + interval'
    >>> uncomputable(plan, [temporal.DATE, INT4], semantics("postgres")) is None
    True
    """
    exprs = [o.expr for o in plan.outputs or ()]
    if plan.having is not None:
        exprs.append(plan.having)
    for expr in exprs:
        why = _typed(expr, types, sem)[1]
        if why is not None:
            return why
    return None


def _typed(expr: Expr, types: Sequence[Any], sem: Semantics) -> tuple[Any, str | None]:
    """``expr``'s type code (None if unknown), and what in it cannot be computed."""
    if isinstance(expr, Col):
        return (types[expr.index] if -len(types) <= expr.index < len(types) else None), None
    if isinstance(expr, Const):
        return expr.type_code, None
    if isinstance(expr, Param):
        return None, None
    args = []
    for arg in expr.args:
        type_code, why = _typed(arg, types, sem)
        if why is not None:
            return None, why
        args.append(type_code)
    why = temporal.refusal(expr.op, args)
    return (None, why) if why is not None else (sem.output_type(expr.op, args), None)
