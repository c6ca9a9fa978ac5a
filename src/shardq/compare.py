"""Two answers to one query compared: shardq's and one database's holding every row.

The rules are the differential suite's (``tests/differential``), so that
``shardq verify`` finds what the suite would find and nothing it accepts:

- the column names are the same strings, and the type codes match (on
  PostgreSQL the type OIDs; SQLite gives none);
- the rows match value for value, with the same Python type (``1`` is not
  ``1.0``, ``Decimal("1.5")`` is not ``Decimal("1.50")``: the same scale);
- floats are the one tolerance, 1e-9 relative: a sum of floats depends on
  the order of its terms (on one server too, with parallel workers). NaN
  matches NaN;
- the rows are compared as a multiset, and in the order the ORDER BY fixes:
  rows whose ORDER BY keys tie may come in any order, so the order is checked
  on the keys, and each group of tied rows as a multiset. With a LIMIT (or
  OFFSET) the tied rows at the cut are arbitrary, but whether the key ties
  there is not known: a difference there is reported, saying so. A LIMIT
  without ORDER BY keeps any rows: only their number is compared.

The comparison is pure: it takes rows and returns :class:`Difference` values.
"""

from __future__ import annotations

import enum
import json
import math
from collections import Counter
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

__all__ = ["Difference", "DifferenceKind", "compare_rows", "row_key", "same_row", "same_value"]

Row = tuple[Any, ...]
_AT_CUT = (
    " [at the LIMIT/OFFSET's cut: if more rows tie on the ORDER BY key there, either answer"
    " may be right; add a unique column to the ORDER BY to tell]"
)
# Unmatched rows paired with a tolerance, one by one: quadratic, so bounded.
_MAX_PAIRING = 2000


class DifferenceKind(enum.Enum):
    """What differs."""

    COLUMNS = "columns"  # names or the number of columns
    COLUMN_TYPE = "column type"  # the driver's type code of a column
    ROW_COUNT = "row count"
    VALUE = "value"  # one value (or its Python type) of a row both answers hold
    MISSING = "missing"  # a row the single database returns and shardq does not
    EXTRA = "extra"  # a row shardq returns and the single database does not
    ORDER = "order"


@dataclass(frozen=True, slots=True)
class Difference:
    """One difference between shardq's answer and the single database's.

    Attributes:
        kind: what differs.
        message: one line saying where and what, for a person.
        row: the row's index (0-based) in shardq's answer, where one row is meant.
        column: the column's name, where one column is meant.
        shardq: shardq's value (row, key or type), if any.
        single: the single database's.
    """

    kind: DifferenceKind
    message: str
    row: int | None = None
    column: str | None = None
    shardq: Any = None
    single: Any = None

    def __str__(self) -> str:
        return self.message


def _is_nan(v: Any) -> bool:
    if isinstance(v, float):
        return math.isnan(v)
    return hasattr(v, "is_nan") and bool(v.is_nan())


def same_value(a: Any, b: Any) -> bool:
    """The same Python type and value; floats to 1e-9 relative, Decimals at the same scale.

    >>> from decimal import Decimal
    >>> same_value(0.1 + 0.2, 0.3), same_value(1, 1.0), same_value(Decimal("1.5"), Decimal("1.50"))
    (True, False, False)
    """
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return a == b or math.isclose(a, b, rel_tol=1e-9) or (math.isnan(a) and math.isnan(b))
    if _is_nan(a) and _is_nan(b):
        return True
    if isinstance(a, tuple):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b, strict=True))
    if hasattr(a, "as_tuple") and a == b:
        return bool(a.as_tuple().exponent == b.as_tuple().exponent)  # the same scale
    return bool(a == b)


def same_row(a: Row, b: Row) -> bool:
    """Rows of the same width whose values are :func:`same_value`."""
    return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b, strict=True))


def _rank(v: Any) -> tuple[Any, ...]:
    # One order over every type: NULLs, numbers (NaN after them), text, bytes, the rest by type.
    if v is None:
        return (0,)
    if isinstance(v, int | float) or hasattr(v, "as_tuple"):
        return (1, 1, 0) if _is_nan(v) else (1, 0, v)
    if isinstance(v, str):
        return (2, v)
    if isinstance(v, bytes | bytearray | memoryview):
        return (3, bytes(v))
    if isinstance(v, tuple):
        return (4, tuple(_rank(x) for x in v))
    if isinstance(v, dict | list):
        return (6, type(v).__name__, json.dumps(v, sort_keys=True, default=str))
    return (5, type(v).__name__, v)


def row_key(row: Row) -> tuple[Any, ...]:
    """A sort key for rows of any values, so two answers' rows sort alike.

    >>> sorted([(None,), (2,), ("a",), (1.5,), (float("nan"),)], key=row_key)
    [(None,), (1.5,), (2,), (nan,), ('a',)]
    """
    return tuple((_rank(v), type(v).__name__) for v in row)


def _exact(v: Any) -> Any:
    # A hashable form equal for values that are the same exactly (the type and a Decimal's scale).
    if _is_nan(v):
        return (type(v).__name__, "NaN")
    if hasattr(v, "as_tuple"):
        return ("Decimal", str(v))
    if isinstance(v, dict | list):
        return (type(v).__name__, json.dumps(v, sort_keys=True, default=str))
    if isinstance(v, tuple):
        return tuple(_exact(x) for x in v)
    if isinstance(v, memoryview | bytearray):
        return ("bytes", bytes(v))
    try:
        hash(v)
    except TypeError:
        return (type(v).__name__, repr(v))
    return (type(v).__name__, v)


def _sorted(rows: Sequence[Row]) -> list[Row]:
    try:
        return sorted(rows, key=row_key)
    except TypeError:  # values of one type that do not order (rare): by their text
        return sorted(rows, key=lambda r: tuple(repr(_exact(v)) for v in r))


def unmatched(got: Sequence[Row], want: Sequence[Row]) -> tuple[list[Row], list[Row]]:
    """The rows of ``got`` with no equal row in ``want``, and of ``want`` with none in ``got``.

    Exact matches are counted first; the rest (floats within the tolerance)
    are paired one by one.

    >>> unmatched([(1,), (2,), (2,), (0.1 + 0.2,)], [(2,), (1,), (3,), (0.3,)])
    ([(2,)], [(3,)])
    """
    exact_got = Counter(tuple(_exact(v) for v in r) for r in got)
    exact_want = Counter(tuple(_exact(v) for v in r) for r in want)
    left_got = _remaining(got, exact_got - exact_want)
    left_want = _remaining(want, exact_want - exact_got)
    if not left_got or not left_want or len(left_got) * len(left_want) > _MAX_PAIRING**2:
        return left_got, left_want
    extra: list[Row] = []
    pool = _sorted(left_want)
    for row in _sorted(left_got):
        match = next((j for j, w in enumerate(pool) if same_row(row, w)), None)
        if match is None:
            extra.append(row)
        else:
            del pool[match]
    return extra, pool


def _remaining(rows: Sequence[Row], counts: Counter[Any]) -> list[Row]:
    left = []
    for row in rows:
        key = tuple(_exact(v) for v in row)
        if counts[key] > 0:
            counts[key] -= 1
            left.append(row)
    return left


def _show(v: Any) -> str:
    return f"{v!r} ({type(v).__name__})" if v is not None else "NULL"


def _row_differences(i: int, names: Sequence[str], got: Row, want: Row) -> list[Difference]:
    found = []
    for j, (g, w) in enumerate(zip(got, want, strict=False)):
        name = names[j] if j < len(names) else f"#{j + 1}"
        if not same_value(g, w):
            kind = "type and value" if type(g) is not type(w) else "value"
            found.append(
                Difference(
                    DifferenceKind.VALUE,
                    f"row {i}, column {name!r}: shardq {_show(g)} vs single {_show(w)} ({kind})",
                    row=i,
                    column=name,
                    shardq=g,
                    single=w,
                )
            )
    return found


def _set_differences(
    got: Sequence[Row], want: Sequence[Row], where: str, limit: int
) -> list[Difference]:
    extra, missing = unmatched(got, want)
    if not extra and not missing:
        return []
    found = [
        Difference(
            DifferenceKind.ROW_COUNT if len(got) != len(want) else DifferenceKind.MISSING,
            f"{where}: {len(missing)} row(s) of the single database missing from shardq's "
            f"answer, {len(extra)} row(s) in shardq's answer not in the single database's "
            f"(here shardq has {len(got)} rows, single {len(want)})",
            shardq=len(got),
            single=len(want),
        )
    ]
    # Both kinds shown, within the limit: half for the missing rows if there are extra ones.
    missing = missing[: max(1, limit // 2) if extra else limit]
    found += [Difference(DifferenceKind.MISSING, f"missing: {r!r}", single=r) for r in missing]
    found += [Difference(DifferenceKind.EXTRA, f"extra: {r!r}", shardq=r) for r in extra]
    return found


def _groups(rows: Sequence[Row], key: Callable[[Row], Row]) -> list[tuple[int, int]]:
    """Runs of consecutive rows with the same key, as (start, end) index pairs."""
    spans = []
    start = 0
    for i in range(1, len(rows) + 1):
        if i == len(rows) or not same_row(key(rows[i]), key(rows[start])):
            spans.append((start, i))
            start = i
    return spans


def compare_rows(
    names: Sequence[str],
    got: Sequence[Row],
    want: Sequence[Row],
    *,
    order_keys: Sequence[int] | None = None,
    cut: bool = False,
    cut_start: bool = False,
    limit: int = 10,
) -> list[Difference]:
    """The first differences between shardq's rows (``got``) and the single database's.

    Args:
        names: the column names, to name a column in a message.
        order_keys: the output columns the ORDER BY sorts on, in its order
            (the leading terms that are output columns): None compares the
            rows as a multiset.
        cut: a LIMIT or OFFSET may cut through rows the ORDER BY ties at the
            end: a difference in the last group of tied rows says so (it is
            still reported: the key may be unique, and only the caller knows).
            Without ``order_keys`` only the number of rows is compared.
        cut_start: an OFFSET may cut through the first group too.
        limit: how many differences at most (a first line about counts included).

    >>> compare_rows(["id", "v"], [(1, "a"), (2, "b")], [(1, "a"), (2, "c")], order_keys=[0])
    [Difference(kind=<DifferenceKind.VALUE: 'value'>, message="row 1, column 'v': shardq 'b' (str) vs single 'c' (str) (value)", row=1, column='v', shardq='b', single='c')]
    >>> [d.kind.name for d in compare_rows(["v"], [(2,), (1,)], [(1,), (2,)], order_keys=[0])]
    ['ORDER']
    >>> compare_rows(["v"], [(2,), (1,)], [(1,), (2,)])
    []
    """  # noqa: E501
    got, want = [tuple(r) for r in got], [tuple(r) for r in want]
    if order_keys is None:
        if cut:  # LIMIT without ORDER BY: any rows will do, as many
            return _count_only(got, want)
        return _set_differences(got, want, "as a multiset", limit)[:limit]
    keys = list(order_keys)

    def key(row: Row) -> Row:
        return tuple(row[i] for i in keys)

    found: list[Difference] = []
    g_groups, w_groups = _groups(got, key), _groups(want, key)
    for n, ((gs, ge), (ws, we)) in enumerate(zip(g_groups, w_groups, strict=False)):
        if len(found) >= limit:
            break
        g_key, w_key = key(got[gs]), key(want[ws])
        if not same_row(g_key, w_key):
            found += _desynchronized(names, got, want, (gs, ws), keys, limit)
            break
        last = n == len(g_groups) - 1 or n == len(w_groups) - 1
        if ge - gs == 1 and we - ws == 1:
            here = _row_differences(gs, names, got[gs], want[ws])
        else:
            where = f"rows {gs}-{ge - 1} (tied on the ORDER BY key {g_key!r})"
            here = _set_differences(got[gs:ge], want[ws:we], where, limit)
        if (cut and last) or (cut_start and n == 0):
            here = [replace(d, message=d.message + _AT_CUT) for d in here]
        found += here
    else:
        done = min(len(g_groups), len(w_groups))
        if len(g_groups) != len(w_groups):  # one answer goes on: its rows are extra or missing
            gs = g_groups[done][0] if done < len(g_groups) else len(got)
            ws = w_groups[done][0] if done < len(w_groups) else len(want)
            found += _set_differences(got[gs:], want[ws:], f"from row {gs} on", limit)
    return found[:limit]


def _count_only(got: Sequence[Row], want: Sequence[Row]) -> list[Difference]:
    if len(got) == len(want):
        return []
    message = f"row count: shardq {len(got)} vs single {len(want)}"
    return [Difference(DifferenceKind.ROW_COUNT, message, shardq=len(got), single=len(want))]


def _desynchronized(
    names: Sequence[str],
    got: Sequence[Row],
    want: Sequence[Row],
    at: tuple[int, int],
    keys: Sequence[int],
    limit: int,
) -> list[Difference]:
    """The ORDER BY keys part at row ``at``: the rows differ, or the same rows come in
    another order. Rows before ``at`` were compared already: only the rest are."""
    gs, ws = at
    key_names = [names[i] for i in keys]
    g_key, w_key = tuple(got[gs][i] for i in keys), tuple(want[ws][i] for i in keys)
    where = (
        f"from row {gs} on (ORDER BY {', '.join(key_names)}: shardq {g_key!r} vs single {w_key!r})"
    )
    extra, missing = unmatched(got[gs:], want[ws:])
    if not extra and not missing:
        return [
            Difference(
                DifferenceKind.ORDER,
                f"row {gs}: the same rows in another order: ORDER BY {', '.join(key_names)} "
                f"is shardq {g_key!r} vs single {w_key!r}",
                row=gs,
                shardq=g_key,
                single=w_key,
            )
        ]
    if gs == ws and len(extra) == len(missing) == 1 and len(got) == len(want):
        # One row changed its key: show it column by column, where it was.
        return _row_differences(gs, names, got[gs], want[ws]) or _set_differences(
            got[gs:], want[ws:], where, limit
        )
    return _set_differences(got[gs:], want[ws:], where, limit)
