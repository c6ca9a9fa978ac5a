"""Variance and standard deviation from partial aggregates, as PostgreSQL computes them.

Over integers and numerics PostgreSQL keeps exact sums ``N``, ``Sx`` and
``Sxx`` (the sum of squares) and computes ``(N * Sxx - Sx * Sx) / (N * (N -
1))`` (``N * N`` for the population) with its numeric division, then the
square root at the quotient's scale (``numeric_stddev_internal``). Those
sums add up across shards, so the merge gives its very digits.

Over floats it keeps ``(N, Sx, Sxx)`` with ``Sxx`` the sum of squared
deviations (the Youngs-Cramer algorithm), and merges two such states as
``float8_combine`` does; each shard sends its state as ``[N, Sx,
var_pop * N]``.

>>> from decimal import Decimal
>>> variance("var_samp", 3, 6, Decimal(14), None)
Decimal('1.00000000000000000000')
>>> variance("stddev_pop", 4, Decimal("10.0"), Decimal("30.00"), None)
Decimal('1.1180339887498948')
>>> variance("var_pop", 3, 6.0, None, [3.0, 6.0, 2.0])
0.6666666666666666
"""

from __future__ import annotations

import decimal
import math
from decimal import Decimal
from typing import Any

from shardq.errors import DataError
from shardq.merge.numeric import EXACT, numeric_div

__all__ = ["KINDS", "float_combine", "variance"]

#: The aggregate each kind computes (stddev and variance are the sample forms).
KINDS = frozenset({"var_samp", "var_pop", "stddev_samp", "stddev_pop"})


def float_combine(a: list[Any] | None, b: list[Any] | None) -> list[Any] | None:
    """Two ``[N, Sx, Sxx]`` float states as one (PostgreSQL's ``float8_combine``)."""
    if a is None or not a[0]:
        return b
    if b is None or not b[0]:
        return a
    n1, sx1, sxx1 = a
    n2, sx2, sxx2 = b
    n = n1 + n2
    tmp = sx1 / n1 - sx2 / n2
    sxx = sxx1 + sxx2 + n1 * n2 * tmp * tmp / n
    if math.isinf(sxx) and not (math.isinf(sxx1) or math.isinf(sxx2)):
        raise DataError("value out of range: overflow")
    return [n, sx1 + sx2, sxx]


def variance(kind: str, count: int, total: Any, squares: Any, state: list[Any] | None) -> Any:
    """The ``kind`` aggregate from the merged count, sum, sum of squares and float state."""
    sample = kind.endswith("_samp")
    root = kind.startswith("stddev")
    if not count or (sample and count <= 1):
        return None
    if isinstance(total, float):
        if state is None or not state[0]:
            return None
        n, _, sxx = state
        result = sxx / (n - 1.0) if sample else sxx / n
        return math.sqrt(result) if root and not math.isnan(result) else result
    if total is None or squares is None:
        return None
    if isinstance(total, Decimal) and not total.is_finite():
        return Decimal("NaN")  # a NaN or an infinity among the values
    if isinstance(squares, Decimal) and not squares.is_finite():
        return Decimal("NaN")
    with decimal.localcontext(EXACT):
        sx = Decimal(total)
        numerator = count * Decimal(squares) - sx * sx
        if numerator <= 0:  # (PostgreSQL guards against a negative one too)
            return Decimal(0)
        result = numeric_div(numerator, count * (count - 1 if sample else count))
    if not root:
        return result
    exponent = result.as_tuple().exponent
    assert isinstance(exponent, int)
    digits = result.adjusted() // 2 - exponent + 10
    context = decimal.Context(prec=max(digits, 30), rounding=decimal.ROUND_DOWN)
    return result.sqrt(context).quantize(Decimal(1).scaleb(exponent), decimal.ROUND_HALF_UP, EXACT)
