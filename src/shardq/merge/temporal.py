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
  PostgreSQL takes its date), and so are the fields ``EXTRACT`` (numeric)
  and ``date_part`` (float8) take: :func:`extract`; ``date_trunc`` of a
  timestamp is truncated there too (:func:`date_trunc`).

Whatever else mixes these values (``timestamptz + interval``, which
PostgreSQL computes on the session's calendar, across daylight saving
changes) is refused rather than guessed: :func:`refusal` says so from the
operands' types, before any row is merged, so that such a read is gathered to
one shard instead (README, "Gather to one shard").

>>> import datetime as dt
>>> arith("-", dt.date(2024, 3, 1), dt.date(2024, 2, 1)), arith("+", 1, dt.date(2024, 2, 28))
(29, datetime.date(2024, 2, 29))
>>> arith("-", dt.datetime(2024, 3, 2, 1), dt.datetime(2024, 3, 1, 2))
datetime.timedelta(seconds=82800)
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from shardq.errors import DataError, NotSupportedError

__all__ = [
    "DATE",
    "FIELDS",
    "INTERVAL",
    "TIMESTAMP",
    "TIMESTAMPTZ",
    "TRUNC_FIELDS",
    "arith",
    "date_trunc",
    "extract",
    "field_name",
    "output_type",
    "refusal",
    "to_date",
]

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


_EPOCH = dt.datetime(1970, 1, 1)
_EPOCH_UTC = _EPOCH.replace(tzinfo=dt.UTC)
_MICRO = dt.timedelta(microseconds=1)
_TIME_FIELDS = {"hour", "minute", "second", "millisecond", "microsecond"}
#: The fields :func:`extract` takes, as PostgreSQL spells them (``years`` is ``year``).
FIELDS = frozenset(
    {*_TIME_FIELDS, "year", "month", "day", "epoch", "dow", "isodow", "doy", "week",
     "isoyear", "quarter", "decade", "century", "millennium"}
)  # fmt: skip


def field_name(text: str) -> str | None:
    """The field ``text`` names (``'Years'`` is ``year``), or None if :func:`extract` lacks it.

    >>> field_name("YEARS"), field_name("dow"), field_name("julian")
    ('year', 'dow', None)
    """
    name = text.lower()
    if name not in FIELDS and name.endswith("s"):
        name = name[:-1]
    return name if name in FIELDS else None


def _date_field(d: dt.date, field: str) -> int:
    year = d.year
    value = {
        "year": year, "month": d.month, "day": d.day, "dow": d.isoweekday() % 7,
        "isodow": d.isoweekday(), "doy": d.timetuple().tm_yday, "week": d.isocalendar()[1],
        "isoyear": d.isocalendar()[0], "quarter": (d.month - 1) // 3 + 1,
        "decade": year // 10, "century": (year + 99) // 100, "millennium": (year + 999) // 1000,
    }.get(field)  # fmt: skip
    assert value is not None, field
    return value


def extract(field: str, value: Any, as_float: bool) -> Decimal | float | None:
    """``EXTRACT(field FROM value)`` (numeric), or ``date_part`` (float8) if ``as_float``.

    >>> t = dt.datetime(2024, 3, 31, 22, 30, 5, 250000)
    >>> extract("second", t, False), extract("epoch", t, True), extract("dow", t, False)
    (Decimal('5.250000'), 1711924205.25, Decimal('0'))
    """
    if value is None:
        return None
    result: Decimal
    if type(value) is dt.datetime:
        micros = value.second * 1_000_000 + value.microsecond
        if field == "second":
            result = Decimal(micros).scaleb(-6)
        elif field == "millisecond":
            result = Decimal(micros).scaleb(-3)
        elif field == "microsecond":
            result = Decimal(micros)
        elif field == "epoch":
            start = _EPOCH if value.tzinfo is None else _EPOCH_UTC
            result = Decimal((value - start) // _MICRO).scaleb(-6)
        elif field in ("hour", "minute"):
            result = Decimal(value.hour if field == "hour" else value.minute)
        else:
            result = Decimal(_date_field(value.date(), field))
    elif type(value) is dt.date:
        if field in _TIME_FIELDS:
            raise NotSupportedError(f'unit "{field}" not supported for type date')
        days = (value - _EPOCH.date()).days
        result = Decimal(days * 86400 if field == "epoch" else _date_field(value, field))
    else:
        raise NotSupportedError(
            f"shardq cannot extract {field} from {type(value).__name__} after a merge; "
            "pin the query to one shard"
        )
    return float(result) if as_float else result


#: The units :func:`date_trunc` takes.
TRUNC_FIELDS = frozenset(
    {"microsecond", "millisecond", "second", "minute", "hour", "day", "week", "month",
     "quarter", "year", "decade", "century", "millennium"}
)  # fmt: skip


def date_trunc(field: str, value: Any) -> dt.datetime | None:
    """``date_trunc(field, value)`` of a timestamp, with or without time zone.

    A timestamp with time zone is truncated on its wall clock in the zone
    psycopg gave it (the session's), as PostgreSQL does, and keeps that zone.
    PostgreSQL truncates a date in the session's zone too, which the merge
    does not know: refused.

    >>> date_trunc("century", dt.datetime(2024, 3, 31, 22, 30))
    datetime.datetime(2001, 1, 1, 0, 0)
    >>> date_trunc("week", dt.datetime(2024, 3, 31, 22, 30))
    datetime.datetime(2024, 3, 25, 0, 0)
    """
    if value is None:
        return None
    if type(value) is not dt.datetime:
        raise NotSupportedError(
            f"shardq cannot compute date_trunc of a {type(value).__name__} after a merge "
            "(PostgreSQL truncates a date in the session's time zone); pin the query to one shard"
        )
    t = value
    if field == "microsecond":
        return t
    if field == "millisecond":
        return t.replace(microsecond=t.microsecond // 1000 * 1000)
    if field == "second":
        return t.replace(microsecond=0)
    if field == "minute":
        return t.replace(second=0, microsecond=0)
    if field == "hour":
        return t.replace(minute=0, second=0, microsecond=0)
    day = t.replace(hour=0, minute=0, second=0, microsecond=0)
    if field == "day":
        return day
    if field == "week":  # ISO weeks start on Monday
        return (day.replace(tzinfo=None) - dt.timedelta(days=day.weekday())).replace(
            tzinfo=t.tzinfo
        )
    year = t.year
    month = {"month": t.month, "quarter": (t.month - 1) // 3 * 3 + 1}.get(field, 1)
    year = {
        "decade": year // 10 * 10,
        "century": (year - 1) // 100 * 100 + 1,
        "millennium": (year - 1) // 1000 * 1000 + 1,
    }.get(field, year)
    return day.replace(year=year, month=month, day=1)


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


_NAMES = {DATE: "date", TIMESTAMP: "timestamp", TIMESTAMPTZ: "timestamptz", INTERVAL: "interval",
          1083: "time", 1266: "timetz"}  # fmt: skip
_TIMESTAMPS = (TIMESTAMP, TIMESTAMPTZ)
_ARITHMETIC = frozenset({"+", "-", "*", "/", "%"})
_COMPARED = frozenset({"=", "<>", "<", "<=", ">", ">="})
# Text of a value (casts, ||, concat, length, substr): a date's follows the session's DateStyle.
_TEXT_OPS = frozenset({"text", "||", "concat", "length", "char_length", "character_length",
                       "substr"})  # fmt: skip


def refusal(op: str, types: list[Any]) -> str | None:
    """What in ``op`` over operands of ``types`` the merge cannot compute, if anything.

    Only operands of date and time types (:data:`DATE`, :data:`TIMESTAMP`,
    :data:`TIMESTAMPTZ`, :data:`INTERVAL`, time) are judged; ``None`` (unknown)
    types are not. Arithmetic is computed where :func:`output_type` knows its
    result; comparisons, ``greatest``/``least``/``coalesce`` and CASE results of one type;
    ``EXTRACT``/``date_part`` of dates and timestamps; ``date_trunc`` of
    timestamps; no text of any of them.

    >>> refusal("+", [TIMESTAMPTZ, INTERVAL]), refusal("-", [TIMESTAMPTZ, TIMESTAMPTZ])
    ('timestamptz + interval', None)
    >>> refusal("extract", [25, INTERVAL]), refusal("<", [DATE, TIMESTAMPTZ])
    ('extract of interval', 'date < timestamptz')
    """
    known = [t for t in types if t is not None]
    if not any(t in _NAMES for t in known):
        return None
    names = [_NAMES.get(t, f"type OID {t}") for t in known]
    if op in _COMPARED or op in _ARITHMETIC:
        if len(types) != 2 or len(known) != 2:
            return None
        computed = types[0] == types[1] if op in _COMPARED else output_type(op, *types)
        return None if computed else f"{names[0]} {op} {names[1]}"
    if op in ("extract", "date_part") and types[-1] not in (DATE, *_TIMESTAMPS):
        return f"{op} of {names[-1]}"
    if op == "date_trunc" and types[-1] not in _TIMESTAMPS:
        return f"date_trunc of {names[-1]}"
    if op in ("greatest", "least", "coalesce") and len(set(known)) > 1:
        return f"{op} of {', '.join(names)}"
    if op == "case":  # results of two types: PostgreSQL casts them to the common one
        results = sorted({t for t in [*types[1:-1:2], types[-1]] if t is not None})
        if len(results) > 1:
            return f"CASE with results of {', '.join(_NAMES.get(t, str(t)) for t in results)}"
    if op in _TEXT_OPS:
        return f"the text of {next(n for n in names if n in _NAMES.values())}"
    return None
