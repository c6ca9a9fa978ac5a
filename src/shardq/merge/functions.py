"""PostgreSQL's scalar functions over merged values: the few whose rules are small.

``abs(sum(k))``, ``floor(avg(n))``, ``greatest(max(k), 3)``,
``length(max(name))``, ``substr(max(name), 1, 2)``, ``max(a) || '-' ||
min(a)`` and ``count(*)::text`` are computed after a merge with
PostgreSQL's result types and values:

* ``floor``, ``ceil``, ``trunc`` and ``sign`` exist for numeric and float8
  only: an integer argument is a float8 (PostgreSQL's preferred numeric
  type), a numeric result has scale 0 and no negative zero; ``sqrt`` and
  ``power`` are computed for integers and floats (float8, with PostgreSQL's
  errors), not for numerics, whose result scale is their own;
* ``greatest`` and ``least`` ignore NULLs and return the arguments' common
  type;
* text from a value is PostgreSQL's output of it for text, booleans,
  integers and numerics (all digits, no exponent); other types (a timestamp, whose text
  follows the session's DateStyle) are refused.

Functions whose result depends on the server's locale (``upper`` of
non-ASCII text) or settings are not here: the planner refuses them.

>>> from decimal import Decimal
>>> [FUNCTIONS[f].call(*a) for f, a in [("floor", [Decimal("-1.5")]), ("ceil", [3]),
...  ("substr", ["hello", 0, 3]), ("text", [Decimal("1E-7")])]]
[Decimal('-2'), 3.0, 'he', '0.0000001']
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_DOWN, ROUND_FLOOR, Decimal
from typing import TYPE_CHECKING, Any

from shardq.errors import DataError, NotSupportedError
from shardq.merge.numeric import unsigned_zero

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

__all__ = ["FUNCTIONS", "Function", "text_of"]

_INT2, _INT4, _INT8, _NUMERIC, _FLOAT4, _FLOAT8, _TEXT = 21, 23, 20, 1700, 700, 701, 25
_RANK = {_INT2: 0, _INT4: 1, _INT8: 2, _NUMERIC: 3, _FLOAT4: 4, _FLOAT8: 5}


def _is_number(value: object) -> bool:
    return isinstance(value, int | Decimal | float) and not isinstance(value, bool)


def _number(name: str, value: Any) -> int | Decimal | float:
    if not _is_number(value):
        raise NotSupportedError(
            f"shardq cannot compute {name}({type(value).__name__}) after a merge"
        )
    return value  # type: ignore[no-any-return]


def _rounding(name: str, rounding: str, to_int: Callable[[float], int]) -> Callable[..., Any]:
    def call(value: Any) -> Any:
        if value is None:
            return None
        value = _number(name, value)
        if isinstance(value, Decimal):
            if not value.is_finite():
                return value
            return unsigned_zero(value.to_integral_value(rounding=rounding))
        number = float(value)
        return number if math.isinf(number) or math.isnan(number) else float(to_int(number))

    return call


def _sign(value: Any) -> Any:
    if value is None:
        return None
    value = _number("sign", value)
    if isinstance(value, Decimal):
        return value if value.is_nan() else Decimal((value > 0) - (value < 0))
    number = float(value)
    return number if math.isnan(number) else float((number > 0) - (number < 0))


def _abs(value: Any) -> Any:
    if value is None:
        return None
    result = abs(_number("abs", value))
    if isinstance(result, int) and result >= 2**63:
        raise DataError("bigint out of range")
    return result


def _float_argument(name: str, value: Any) -> float:
    # sqrt() and power() of numerics have their own result scale: only float8 is computed.
    if isinstance(value, Decimal) or not _is_number(value):
        raise NotSupportedError(
            f"shardq cannot compute {name}({type(value).__name__}) after a merge; cast the "
            "argument to float8, or pin the query to one shard"
        )
    return float(value)


def _sqrt(value: Any) -> float | None:
    if value is None:
        return None
    number = _float_argument("sqrt", value)
    if number < 0:
        raise DataError("cannot take square root of a negative number")
    return math.sqrt(number)


def _power(base: Any, exponent: Any) -> float | None:
    if base is None or exponent is None:
        return None
    x, y = _float_argument("power", base), _float_argument("power", exponent)
    if x == 0 and y < 0:
        raise DataError("zero raised to a negative power is undefined")
    if x < 0 and not y.is_integer() and math.isfinite(y):
        raise DataError("a negative number raised to a non-integer power yields a complex result")
    try:
        result = math.pow(x, y)
    except OverflowError:
        raise DataError("value out of range: overflow") from None
    if math.isinf(result) and math.isfinite(x) and math.isfinite(y):
        raise DataError("value out of range: overflow")
    if result == 0 and x != 0 and math.isfinite(x) and math.isfinite(y):
        raise DataError("value out of range: underflow")
    return result


def _to_hex(value: Any, minus_one: Any) -> str | None:
    """to_hex(value): a negative value in two's complement of its type's width.

    ``minus_one`` is the shards' ``to_hex(-1)`` in that type (see
    :mod:`shardq.sql.rewrite.aggregates`): eight digits for integer, sixteen
    for bigint.
    """
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not isinstance(minus_one, str):
        raise NotSupportedError(f"shardq cannot compute to_hex({type(value).__name__})")
    return format(value if value >= 0 else value + 16 ** len(minus_one), "x")


def _float8(types: Sequence[Any]) -> Any:
    return _FLOAT8 if types and all(t in _RANK and t != _NUMERIC for t in types) else None


def _float_of_ints(types: Sequence[Any]) -> Any:
    """floor, ceil, trunc, sign: numeric stays numeric, other numbers are float8."""
    if not types or types[0] not in _RANK:
        return None
    return _NUMERIC if types[0] == _NUMERIC else _FLOAT8


def _extreme(pick: Callable[..., Any]) -> Callable[..., Any]:
    def call(*values: Any) -> Any:
        known = [v for v in values if v is not None]
        if not known:
            return None
        if any(isinstance(v, float) for v in known) and all(_is_number(v) for v in known):
            known = [float(v) for v in known]
        elif len({type(v) for v in known}) > 1 and not all(_is_number(v) for v in known):
            raise NotSupportedError(
                f"shardq cannot compare {', '.join(sorted({type(v).__name__ for v in known}))} "
                "after a merge; cast them to one type, or pin the query to one shard"
            )
        return pick(known)

    return call


def _common(types: Sequence[Any]) -> Any:
    known = {t for t in types if t is not None}
    if len(known) == 1:
        return known.pop()
    if known and all(t in _RANK for t in known):
        return max(known, key=_RANK.__getitem__)
    return None


def text_of(value: Any) -> str:
    """PostgreSQL's text of ``value`` (text, boolean, integer or numeric), else refused."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):  # bool's output function (concat); CAST(b AS text) is 'true'
        return "t" if value else "f"
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, Decimal):
        return "NaN" if value.is_nan() else format(value, "f")
    raise NotSupportedError(
        f"shardq cannot write a merged {type(value).__name__} as text (PostgreSQL's text of it "
        "follows the session's settings); pin the query to one shard"
    )


def _to_text(value: Any) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    return None if value is None else text_of(value)


def _concat_op(left: Any, right: Any) -> str | None:
    # ``||``: NULL if either is NULL; a non-text operand is cast to text (true, not t).
    if left is None or right is None:
        return None
    return f"{_to_text(left)}{_to_text(right)}"


def _concat(*values: Any) -> str:  # concat(): NULLs are skipped
    return "".join(text_of(v) for v in values if v is not None)


def _length(value: Any) -> int | None:
    if value is None:
        return None
    if not isinstance(value, str | bytes):
        raise NotSupportedError(f"shardq cannot compute length({type(value).__name__})")
    return len(value)


def _substr(value: Any, start: Any, count: Any = ...) -> str | None:
    if value is None or start is None or count is None:
        return None
    if not isinstance(value, str):
        raise NotSupportedError(f"shardq cannot compute substr({type(value).__name__})")
    begin = max(start, 1)
    if count is ...:
        return value[begin - 1 :]
    if count < 0:
        raise DataError("negative substring length not allowed")
    end = start + count
    return value[begin - 1 : end - 1] if end > begin else ""


@dataclass(frozen=True, slots=True)
class Function:
    """A function: what it computes, and its result type from its arguments' types."""

    call: Callable[..., Any]
    type_of: Callable[[Sequence[Any]], Any]
    arity: tuple[int, ...]  # the numbers of arguments it takes


def _first(types: Sequence[Any]) -> Any:
    return types[0] if types else None


def _fixed(code: int) -> Callable[[Sequence[Any]], Any]:
    return lambda types: code


#: By name (``text`` is ``CAST(x AS text)``, ``||`` the operator).
FUNCTIONS: dict[str, Function] = {
    "abs": Function(_abs, _first, (1,)),
    "floor": Function(_rounding("floor", ROUND_FLOOR, math.floor), _float_of_ints, (1,)),
    "ceil": Function(_rounding("ceil", ROUND_CEILING, math.ceil), _float_of_ints, (1,)),
    "ceiling": Function(_rounding("ceil", ROUND_CEILING, math.ceil), _float_of_ints, (1,)),
    "trunc": Function(_rounding("trunc", ROUND_DOWN, math.trunc), _float_of_ints, (1,)),
    "sign": Function(_sign, _float_of_ints, (1,)),
    "sqrt": Function(_sqrt, _float8, (1,)),
    "power": Function(_power, _float8, (2,)),
    "pow": Function(_power, _float8, (2,)),
    "to_hex": Function(_to_hex, _fixed(_TEXT), (2,)),
    "greatest": Function(_extreme(max), _common, tuple(range(1, 100))),
    "least": Function(_extreme(min), _common, tuple(range(1, 100))),
    "length": Function(_length, _fixed(_INT4), (1,)),
    "char_length": Function(_length, _fixed(_INT4), (1,)),
    "character_length": Function(_length, _fixed(_INT4), (1,)),
    "substr": Function(_substr, _fixed(_TEXT), (2, 3)),
    "text": Function(_to_text, _fixed(_TEXT), (1,)),
    "||": Function(_concat_op, _fixed(_TEXT), (2,)),
    "concat": Function(_concat, _fixed(_TEXT), tuple(range(1, 100))),
}
