"""PostgreSQL's date and time arithmetic over merged values.

After a merge, ``max(ts) - min(ts)`` or ``max(d) + 1`` is computed here over
the values the driver returned, with PostgreSQL's rules and result types:

* ``timestamp - timestamp`` (with or without time zone) is an interval,
  which psycopg returns as a :class:`~datetime.timedelta`: PostgreSQL
  justifies the hours into days, a timedelta normalizes the same way, so
  the two are equal value for value;
* ``date - date`` is an integer number of days; ``date + integer``,
  ``integer + date`` and ``date - integer`` are dates;
* ``interval +/- interval`` is an interval;
* ``CAST(x AS date)`` of a timestamp is its date where it is (psycopg
  returns a timestamp with time zone in the session's zone, in which
  PostgreSQL takes its date).

Whatever else mixes these values (``timestamptz + interval``, which
PostgreSQL computes on the session's calendar, across daylight saving
changes) is refused rather than guessed.

>>> import datetime as dt
>>> arith("-", dt.date(2024, 3, 1), dt.date(2024, 2, 1)), arith("+", 1, dt.date(2024, 2, 28))
(29, datetime.date(2024, 2, 29))
>>> arith("-", dt.datetime(2024, 3, 2, 1), dt.datetime(2024, 3, 1, 2))
datetime.timedelta(seconds=82800)
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from shardq.errors import DataError, NotSupportedError

__all__ = ["DATE", "INTERVAL", "TIMESTAMP", "TIMESTAMPTZ", "arith", "output_type", "to_date"]

DATE, TIMESTAMP, TIMESTAMPTZ, INTERVAL = 1082, 1114, 1184, 1186
_INT4, _INTS = 23, (21, 23)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def arith(op: str, a: Any, b: Any) -> Any:
    """``a op b`` for dates, timestamps and intervals (see the module docstring)."""
    ta, tb = type(a), type(b)
    try:
        if op == "-" and ta is tb is dt.datetime:
            if (a.tzinfo is None) != (b.tzinfo is None):
                raise _unsupported(op, a, b)
            return a - b
        if op == "-" and ta is tb is dt.date:
            return (a - b).days
        if op in ("+", "-") and ta is dt.date and _is_int(b):
            return a + dt.timedelta(days=b if op == "+" else -b)
        if op == "+" and _is_int(a) and tb is dt.date:
            return b + dt.timedelta(days=a)
        if op in ("+", "-") and ta is tb is dt.timedelta:
            return a + b if op == "+" else a - b
    except OverflowError:
        # Python's dates end at 9999 (as psycopg's do): what it cannot hold is an error.
        raise DataError("date out of range") from None
    raise _unsupported(op, a, b)


def to_date(value: Any) -> dt.date:
    """``CAST(value AS date)`` of a merged date or timestamp.

    >>> to_date(dt.datetime(2024, 3, 31, 23, 30, tzinfo=dt.timezone(dt.timedelta(hours=2))))
    datetime.date(2024, 3, 31)
    """
    if type(value) is dt.datetime:
        return value.date()
    if type(value) is dt.date:
        return value
    raise NotSupportedError(
        f"shardq cannot cast {type(value).__name__} to date after a merge; "
        "pin the query to one shard"
    )


def _unsupported(op: str, a: Any, b: Any) -> NotSupportedError:
    return NotSupportedError(
        f"shardq cannot evaluate {type(a).__name__} {op} {type(b).__name__} after a merge; "
        "pin the query to one shard"
    )


def output_type(op: str, left: Any, right: Any) -> Any:
    """The type OID of ``left op right`` for date and time operands (None if not one).

    >>> output_type("-", DATE, DATE), output_type("+", DATE, 23), output_type("-", 1184, 1184)
    (23, 1082, 1186)
    """
    if op == "-" and left == right and left in (TIMESTAMP, TIMESTAMPTZ):
        return INTERVAL
    if op == "-" and left == right == DATE:
        return _INT4
    if op in ("+", "-") and left == DATE and right in _INTS:
        return DATE
    if op == "+" and left in _INTS and right == DATE:
        return DATE
    if op in ("+", "-") and left == right == INTERVAL:
        return INTERVAL
    return None
