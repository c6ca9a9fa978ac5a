"""PostgreSQL's numeric arithmetic, and casts, on the values the drivers return.

PostgreSQL stores numerics in base 10000 and picks the scale of a quotient
from the operands' leading base-10000 digits (``select_div_scale``); it
rounds half away from zero; it has no negative zero. These functions give
the same results as the server, digit for digit (checked against it).

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
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from shardq.errors import DataError, NotSupportedError

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["CASTS", "EXACT", "numeric_avg", "numeric_div", "numeric_round", "unsigned_zero"]

EXACT = decimal.Context(prec=100_000, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN)
_INT8 = (-(2**63), 2**63 - 1)
_NBASE_DIGITS = 4  # PostgreSQL stores numerics in base 10000
_MIN_SIG_DIGITS = 16
_MAX_DISPLAY_SCALE = 1000


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
    return _divide(Decimal(a), Decimal(b), adjusted1 - adjusted2, scale)


def _divide(a: Decimal, b: Decimal, magnitude: int, scale: int) -> Decimal:
    """``a / b`` to ``scale`` digits, halves away from zero.

    ``magnitude`` is ``a.adjusted() - b.adjusted()``. The quotient is truncated
    two digits beyond the scale, then rounded: truncation never turns a value
    below a half into a half.
    """
    precision = max(magnitude + 1, 0) + scale + 2
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
    return unsigned_zero(context.divide(a, b).quantize(quantum, decimal.ROUND_HALF_UP, EXACT))


def unsigned_zero(value: Decimal) -> Decimal:
    """``value``, with a negative zero made positive: PostgreSQL's numeric has no -0."""
    return value.copy_abs() if not value and value.is_signed() else value


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
    return _divide(total, Decimal(count), adjusted1 - adjusted2, scale)


def numeric_round(value: Decimal, digits: int) -> Decimal:
    """PostgreSQL's ``round(numeric, int)``: halves away from zero, scale ``max(digits, 0)``."""
    rounded = value.quantize(Decimal(1).scaleb(-digits), decimal.ROUND_HALF_UP, EXACT)
    if digits < 0:
        rounded = rounded.quantize(Decimal(1), context=EXACT)
    return unsigned_zero(rounded)


def _is_number(value: object) -> bool:
    return isinstance(value, int | Decimal | float) and not isinstance(value, bool)


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


CASTS: dict[str, Callable[..., Any]] = {
    "to_int2": _to_int(16, "smallint"),
    "to_int4": _to_int(32, "integer"),
    "to_int8": _to_int(64, "bigint"),
    "to_numeric": _to_numeric,
    "to_float8": _to_float(False),
    "to_float4": _to_float(True),
}
