"""The differential check on SQLite shards: shardq's answer against one SQLite file.

Two answers are the same when:

- their column names are the same strings (``cursor.description[i][0]``:
  SQLite names an unaliased column by its text as written, and a user's code
  reads them);
- they have the same number of rows, and the rows match value for value with
  the same Python type (``int``, ``float``, ``str``, ``bytes``, ``None``: SQLite's
  storage classes, which its arithmetic, ``typeof()`` and comparisons depend on);
- in the same order when the query's ORDER BY fixes it, as a multiset otherwise.

Floats match to 1e-9 relative: a sum of floats depends on the order of its terms.

Where SQLite itself documents a choice as arbitrary, a column is compared
loosely, through a :data:`Fold` that maps every acceptable value to one:

- the value shown for a group (or a DISTINCT row, or a min/max) under a
  case-insensitive collation is one of the values the collation finds equal
  (SQLite does not say which): it is compared folded under that collation,
  :func:`nocase` (ASCII ``A-Z`` only, as SQLite's NOCASE: ``'é'`` and ``'É'``
  stay distinct) or :func:`rtrim` (trailing spaces ignored);
- ``group_concat()`` without ORDER BY concatenates in an order SQLite calls
  arbitrary: compared as the multiset of its elements (:func:`elements`);
- ``GROUP BY`` a column of no type shows ``1`` or ``1.0`` for their common
  group: compared as a number (:func:`number`).

A column can also be loose only in its *order* (``tie``): rows that ORDER BY
``x COLLATE NOCASE`` finds equal may come in any order (as may rows whose
only difference is ``0`` against ``0.0``: every column is compared as a number
for the order). Then the rows are
compared in order with those columns folded (ties form groups), and as a
multiset without folding them, so each tie group must hold the same rows.
With a LIMIT that cuts through a tie group the rows kept are arbitrary too:
pass those columns as ``loose`` then.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import sqlite3

    import shardq

Fold = Callable[[Any], Any]
Row = tuple[Any, ...]
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def nocase(value: Any) -> Any:
    """SQLite's NOCASE: ASCII letters folded to lower case, other text and types unchanged.

    >>> nocase("ÉCOLE Ann"), nocase(5)
    ('École ann', 5)
    """
    return value.translate(_ASCII_LOWER) if isinstance(value, str) else value


def rtrim(value: Any) -> Any:
    """SQLite's RTRIM: trailing spaces (only U+0020) ignored.

    >>> rtrim("b  "), rtrim("b\\t")
    ('b', 'b\\t')
    """
    return value.rstrip(" ") if isinstance(value, str) else value


def elements(separator: str = ",") -> Fold:
    """``group_concat()`` without ORDER BY: the sorted elements.

    >>> elements("|")("b|a|b")
    ('a', 'b', 'b')
    """

    def fold(value: Any) -> Any:
        return tuple(sorted(value.split(separator))) if isinstance(value, str) else value

    return fold


def number(value: Any) -> Any:
    """Integers and reals that are equal group together: ``1`` and ``1.0`` are one value.

    >>> number(1) == number(1.0), type(number(1)), number("1")
    (True, <class 'float'>, '1')
    """
    if isinstance(value, int) and abs(value) < 2**53:
        return float(value)
    return value


def _rank(v: Any) -> tuple[int, Any]:
    # SQLite's order of storage classes, so that unordered rows sort the same way on both sides.
    if v is None:
        return (0, 0)
    if isinstance(v, (int, float)):
        return (1, v)
    if isinstance(v, str):
        return (2, v)
    if isinstance(v, tuple):
        return (3, tuple(_rank(x) for x in v))
    return (4, v)


def _sort_key(row: Row) -> tuple[Any, ...]:
    return tuple((_rank(v), type(v).__name__) for v in row)


def same_value(a: Any, b: Any) -> bool:
    """The same Python type and value; floats to 1e-9 relative."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return a == b or math.isclose(a, b, rel_tol=1e-9) or (math.isnan(a) and math.isnan(b))
    if isinstance(a, tuple):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def _fold(row: Row, folds: Mapping[int, Fold]) -> Row:
    return tuple(folds[i](v) if i in folds else v for i, v in enumerate(row))


def _order_fold(row: Row, folds: Mapping[int, Fold]) -> Row:
    # ORDER BY never tells 0 from 0.0 (or 1 from 1.0): such rows tie, in any order.
    return tuple(number(v) for v in _fold(row, folds))


def _same_list(got: list[Row], want: list[Row], what: str) -> None:
    assert len(got) == len(want), f"{len(got)} rows, expected {len(want)}"
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        same = len(g) == len(w) and all(same_value(a, b) for a, b in zip(g, w, strict=True))
        assert same, f"{what} {i}: {g!r} != expected {w!r}"


def same_rows(
    got: list[Row],
    want: list[Row],
    *,
    ordered: bool,
    loose: Mapping[int, Fold] | None = None,
    tie: Mapping[int, Fold] | None = None,
) -> None:
    """Assert two row lists are the same (see the module docstring).

    Args:
        got: shardq's rows.
        want: the single file's rows.
        ordered: the ORDER BY fixes the order (up to the ``tie`` columns).
        loose: column index -> fold, for values SQLite chooses arbitrarily.
        tie: column index -> fold, for columns ordered under that collation.
    """
    loose = loose or {}
    order_folds = {**(tie or {}), **loose}
    if ordered:
        folded_got = [_order_fold(r, order_folds) for r in got]
        folded_want = [_order_fold(r, order_folds) for r in want]
        for i, (g, w) in enumerate(zip(folded_got, folded_want, strict=False)):
            same = len(g) == len(w) and all(same_value(a, b) for a, b in zip(g, w, strict=True))
            assert same, f"row {i}: {got[i]!r} != expected {want[i]!r} (the order differs)"
    _same_list(
        sorted((_fold(r, loose) for r in got), key=_sort_key),
        sorted((_fold(r, loose) for r in want), key=_sort_key),
        "row (sorted)",
    )


class Twin:
    """A SQLite file in shardq's place: the comparison's own check (see sqlite_edge's twin)."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def execute(self, sql: str, params: Any = None) -> sqlite3.Cursor:
        return self.db.execute(sql, params or ())


@dataclass(frozen=True)
class Answer:
    """Column names and rows of one statement."""

    names: list[str]
    rows: list[Row]


def single_file(db: sqlite3.Connection, sql: str, params: Any = ()) -> Answer:
    """Run ``sql`` on the single SQLite file."""
    cur = db.execute(sql, params or ())
    rows = cur.fetchall()
    assert cur.description is not None
    return Answer([d[0] for d in cur.description], rows)


def through_shardq(conn: shardq.Connection | Twin, sql: str, params: Any = ()) -> Answer:
    """Run ``sql`` through shardq (rows as tuples), or on a :class:`Twin`."""
    cur = conn.execute(sql, params or None)
    rows = [tuple(r) for r in cur.fetchall()]
    assert cur.description is not None
    return Answer([d[0] for d in cur.description], rows)


def same_answer(
    conn: shardq.Connection | Twin,
    db: sqlite3.Connection,
    sql: str,
    params: Any = (),
    *,
    ordered: bool = False,
    loose: Mapping[int, Fold] | None = None,
    tie: Mapping[int, Fold] | None = None,
) -> Answer:
    """Run ``sql`` through shardq and on the single file; assert the answers are the same.

    Raises whatever shardq raises (a refusal included): callers decide what a
    refusal means. Returns shardq's answer.
    """
    want = single_file(db, sql, params)
    got = through_shardq(conn, sql, params)
    assert got.names == want.names, f"column names {got.names} != expected {want.names}"
    same_rows(got.rows, want.rows, ordered=ordered, loose=loose, tie=tie)
    return got
