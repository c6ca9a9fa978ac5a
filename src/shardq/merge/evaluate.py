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

>>> from decimal import Decimal
>>> numeric_div(Decimal(7), Decimal(3))
Decimal('2.3333333333333333')
>>> numeric_div(Decimal(1), Decimal("3.0"))
Decimal('0.33333333333333333333')
>>> numeric_round(Decimal("-2.5"), 0), numeric_round(Decimal("1234.5"), -2)
(Decimal('-3'), Decimal('1200'))
"""

from __future__ import annotations

import decimal
import functools
import math
import struct
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

from shardq.errors import DataError, NotSupportedError
from shardq.merge.steps import Col, Const, Expr, Param, TypeRule

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
]

# Enough digits that +, - and * of numerics are exact, as they are in PostgreSQL.
EXACT = decimal.Context(prec=100_000, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN)
_INT8 = (-(2**63), 2**63 - 1)
_NBASE_DIGITS = 4  # PostgreSQL stores numerics in base 10000
_MIN_SIG_DIGITS = 16
_MAX_DISPLAY_SCALE = 1000

# PostgreSQL type OIDs the merge produces or reasons about.
INT2, INT4, INT8, NUMERIC, FLOAT4, FLOAT8, BOOL, TEXT = 21, 23, 20, 1700, 700, 701, 16, 25
_INTS = (INT2, INT4, INT8)
_RANK = {INT2: 0, INT4: 1, INT8: 2, NUMERIC: 3, FLOAT4: 4, FLOAT8: 5}


def _shape(value: Decimal | int) -> tuple[int, int, int, int]:
    """``(weight, first digit, display scale, adjusted exponent)`` of a numeric.

    PostgreSQL stores numerics in base 10000: the weight is the power of
    10000 of the leading non-zero base-10000 digit, which is the first digit.
    """
    if isinstance(value, int):
        return _int_shape(value)
    _, digits, exponent = value.as_tuple()
    scale = -exponent if isinstance(exponent, int) and exponent < 0 else 0
    if not value:
        return 0, 0, scale, 0
    assert isinstance(exponent, int)
    adjusted = len(digits) - 1 + exponent
    weight = adjusted // _NBASE_DIGITS
    lead = adjusted - _NBASE_DIGITS * weight + 1
    first = 0
    for digit in digits[:lead]:
        first = first * 10 + digit
    first *= 10 ** max(0, lead - len(digits))
    return weight, first, scale, adjusted


@functools.lru_cache(maxsize=4096)
def _int_shape(value: int) -> tuple[int, int, int, int]:
    if not value:
        return 0, 0, 0, 0
    text = str(abs(value))
    adjusted = len(text) - 1
    weight = adjusted // _NBASE_DIGITS
    lead = adjusted - _NBASE_DIGITS * weight + 1
    return weight, int(text[:lead]), 0, adjusted


def _scale(value: Decimal) -> int:
    exponent = value.as_tuple().exponent
    return max(0, -exponent) if isinstance(exponent, int) else 0


_QUANTA: dict[int, Decimal] = {}
_TRUNCATING: dict[int, decimal.Context] = {}


def numeric_div(a: Decimal | int, b: Decimal | int) -> Decimal:
    """PostgreSQL's numeric division (``numeric_div``), result scale included.

    The quotient is computed truncated to two digits beyond the result's
    scale, then rounded half away from zero: truncation never turns a value
    below a half into a half, so the rounding is PostgreSQL's exact one.
    """
    if not b:
        raise DataError("division by zero")
    weight1, first1, scale1, adjusted1 = _shape(a)
    weight2, first2, scale2, adjusted2 = _shape(b)
    qweight = weight1 - weight2
    if first1 <= first2:
        qweight -= 1
    scale = _MIN_SIG_DIGITS - qweight * _NBASE_DIGITS
    scale = min(max(scale, scale1, scale2, 0), _MAX_DISPLAY_SCALE)
    if not a:
        return Decimal(0).scaleb(-scale, EXACT)
    precision = max(adjusted1 - adjusted2 + 1, 0) + scale + 2
    context = _TRUNCATING.get(precision)
    if context is None:
        context = decimal.Context(
            prec=precision, rounding=decimal.ROUND_DOWN, Emax=decimal.MAX_EMAX,
            Emin=decimal.MIN_EMIN,
        )  # fmt: skip
        _TRUNCATING[precision] = context
    quantum = _QUANTA.get(scale)
    if quantum is None:
        quantum = _QUANTA[scale] = Decimal(1).scaleb(-scale)
    quotient = context.divide(Decimal(a), Decimal(b)).quantize(
        quantum, decimal.ROUND_HALF_UP, EXACT
    )
    return quotient.copy_abs() if not quotient and quotient.is_signed() else quotient


_THRESHOLDS: dict[tuple[int, int], Decimal] = {}
_SCALE_OF: list[tuple[Decimal, int]] = []


def numeric_avg(total: Decimal, count: int) -> Decimal:
    """``numeric_div(total, count)`` for an average: the same result, computed faster.

    An average divides many sums by small counts: the count's shape is
    cached, the sum's leading base-10000 digit is compared with the count's
    by a cached threshold, and its scale is recognised with ``same_quantum``.
    """
    if not total or count <= 0:
        return numeric_div(total, count)
    weight2, first2, _, adjusted2 = _int_shape(count)
    adjusted1 = total.adjusted()
    weight1 = adjusted1 // _NBASE_DIGITS
    threshold = _THRESHOLDS.get((first2, weight1))
    if threshold is None:
        # first1 <= first2 exactly when |total| < (first2 + 1) * 10000 ** weight1.
        threshold = Decimal(first2 + 1).scaleb(_NBASE_DIGITS * weight1, EXACT)
        _THRESHOLDS[(first2, weight1)] = threshold
    qweight = weight1 - weight2 - (1 if abs(total) < threshold else 0)
    scale1 = next((known for like, known in _SCALE_OF if total.same_quantum(like)), None)
    if scale1 is None:
        exponent = total.as_tuple().exponent
        scale1 = -exponent if isinstance(exponent, int) and exponent < 0 else 0
        if len(_SCALE_OF) < 8:
            _SCALE_OF.append((Decimal(1).scaleb(-scale1), scale1))
    scale = min(max(_MIN_SIG_DIGITS - qweight * _NBASE_DIGITS, scale1, 0), _MAX_DISPLAY_SCALE)
    precision = max(adjusted1 - adjusted2 + 1, 0) + scale + 2
    context = _TRUNCATING.get(precision)
    if context is None:
        context = decimal.Context(
            prec=precision, rounding=decimal.ROUND_DOWN, Emax=decimal.MAX_EMAX,
            Emin=decimal.MIN_EMIN,
        )  # fmt: skip
        _TRUNCATING[precision] = context
    step = _QUANTA.get(scale)
    if step is None:
        step = _QUANTA[scale] = Decimal(1).scaleb(-scale)
    result = context.divide(total, Decimal(count)).quantize(step, decimal.ROUND_HALF_UP, EXACT)
    return result.copy_abs() if not result and result.is_signed() else result


def numeric_round(value: Decimal, digits: int) -> Decimal:
    """PostgreSQL's ``round(numeric, int)``: halves away from zero, scale ``max(digits, 0)``."""
    rounded = value.quantize(Decimal(1).scaleb(-digits), decimal.ROUND_HALF_UP, EXACT)
    if digits < 0:
        rounded = rounded.quantize(Decimal(1), context=EXACT)
    return rounded.copy_abs() if not rounded and rounded.is_signed() else rounded


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
            raise NotSupportedError(
                f"shardq cannot evaluate {type(a).__name__} {op} {type(b).__name__} after a merge"
            )
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
        # PostgreSQL's numeric has no negative zero.
        return (
            result.copy_abs()
            if result is not None and not result and result.is_signed()
            else result
        )

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
        if op == "neg":
            return types[0] if types else None
        if op in _ARITH:
            if len(types) != 2 or any(t not in _RANK for t in types):
                return None
            high = max(types, key=_RANK.__getitem__)
            if high in (FLOAT4, FLOAT8):
                return FLOAT4 if types[0] == types[1] == FLOAT4 else FLOAT8
            return high
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
    if a is None or b is None:
        return None
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
     "is_not_true", "is_false", "is_not_false", "coalesce",
     "round", "avg", "count_set", "sum_set", "avg_set", "to_int2", "to_int4", "to_int8",
     "to_numeric", "to_float8", "to_float4"}
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
    if op.startswith("to_"):
        cast = _CAST_FUNCTIONS[op]
        inner, *rest = args
        extra = [a(()) for a in rest]  # constants: precision and scale
        return lambda row: None if (v := inner(row)) is None else cast(v, *extra)
    if op == "coalesce":
        return lambda row: next((v for a in args if (v := a(row)) is not None), None)
    if op == "round":
        return lambda row: sem.round(*[a(row) for a in args])
    if op == "avg":
        total, count = args
        return lambda row: sem.avg(total(row), count(row))
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


def _to_int(bits: int, name: str) -> Callable[[Any], int]:
    low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1

    def cast(value: Any) -> int:
        if isinstance(value, bool) or not _is_number(value):
            raise NotSupportedError(f"cast of {type(value).__name__} to {name} after a merge")
        if isinstance(value, float):
            if math.isnan(value) or math.isinf(value):
                raise DataError(f"{name} out of range")
            result = round(value)  # float to integer is rint: halves to even
        elif isinstance(value, Decimal):
            result = int(numeric_round(value, 0))  # numeric to integer: halves away from zero
        else:
            result = value
        if not low <= result <= high:
            raise DataError(f"{name} out of range")
        return result

    return cast


def _to_numeric(value: Any, precision: int | None = None, scale: int = 0) -> Decimal:
    if isinstance(value, bool) or not _is_number(value):
        raise NotSupportedError(f"cast of {type(value).__name__} to numeric after a merge")
    # float8 to numeric keeps 15 significant digits, as PostgreSQL's float8_numeric,
    # written without an exponent.
    result = Decimal(format(value, ".15g")) if isinstance(value, float) else Decimal(value)
    exponent = result.as_tuple().exponent
    if isinstance(exponent, int) and exponent > 0:
        result = result.quantize(Decimal(1), context=EXACT)
    if precision is None:
        return result
    result = numeric_round(result, scale)
    if result and result.adjusted() + 1 > precision - scale:
        raise DataError("numeric field overflow")
    return result


def _float4(value: float) -> float:
    """``value`` as a real (float4) column reads back: its shortest exact decimal, as float."""
    if math.isnan(value) or math.isinf(value):
        return value
    try:
        (single,) = struct.unpack("f", struct.pack("f", value))
    except OverflowError:
        raise DataError("value out of range: overflow") from None
    for digits in range(1, 10):
        text = f"{single:.{digits}g}"
        if struct.unpack("f", struct.pack("f", float(text)))[0] == single:
            return float(text)
    return float(single)


def _to_float(single: bool) -> Callable[[Any], float]:
    def cast(value: Any) -> float:
        if isinstance(value, bool) or not _is_number(value):
            raise NotSupportedError(f"cast of {type(value).__name__} to float after a merge")
        result = float(value)
        return _float4(result) if single else result

    return cast


_CAST_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "to_int2": _to_int(16, "smallint"),
    "to_int4": _to_int(32, "integer"),
    "to_int8": _to_int(64, "bigint"),
    "to_numeric": _to_numeric,
    "to_float8": _to_float(False),
    "to_float4": _to_float(True),
}
_CAST_TYPES = {"to_int2": INT2, "to_int4": INT4, "to_int8": INT8, "to_numeric": NUMERIC,
               "to_float8": FLOAT8, "to_float4": FLOAT4}  # fmt: skip


def _sum_set(values: set[Any], sem: Semantics) -> Any:
    total: Any = None
    for value in values:
        total = value if total is None else sem.arith("+", total, value)
    return total


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
