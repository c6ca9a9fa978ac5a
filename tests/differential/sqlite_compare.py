"""The differential check on SQLite shards: shardq's answer against one SQLite file.

Two answers are the same when:

- their column names are the same strings (``cursor.description[i][0]``:
  SQLite names an unaliased column by its text as written, and a user's code
  reads them);
- they have the same number of rows, and the rows match value for value with
  the same Python type (``int``, ``float``, ``str``, ``bytes``, ``None``: SQLite's
  storage classes, which its arithmetic, ``typeof()`` and comparisons depend on);
- in the same order when the query's ORDER BY fixes it, as a multiset otherwise.

Floats match to 1e-9 relative: a sum of floats depends on the order of its terms
(also in the multiset comparison, which matches rows one by one when sorting
puts two such floats apart).

Rows "in the same order" are compared row by row: right for hand-written
queries whose keys are exact. A query whose ORDER BY is given term by term
(``order``, a list of :class:`.sqlite_order.Term`, as the random generator
gives it) is compared as a multiset, then shardq's rows must be sorted by
those terms and equal the single file's wherever its order is fully
determined: floats near-tied in a key may come either way round
(:mod:`.sqlite_order` says why and how).

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

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shardq.compare import same_value  # shared with ``shardq verify``
from tests.differential.sqlite_order import Fold, Row, Term, boundary, check_order, keys_for

if TYPE_CHECKING:
    import sqlite3
    from collections.abc import Mapping, Sequence

    import shardq

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


def _fold(row: Row, folds: Mapping[int, Fold]) -> Row:
    return tuple(folds[i](v) if i in folds else v for i, v in enumerate(row))


def _order_fold(row: Row, folds: Mapping[int, Fold]) -> Row:
    # ORDER BY never tells 0 from 0.0 (or 1 from 1.0): such rows tie, in any order.
    return tuple(number(v) for v in _fold(row, folds))


def _same_row(a: Row, b: Row) -> bool:
    return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b, strict=True))


def _same_multiset(got: list[Row], want: list[Row]) -> None:
    assert len(got) == len(want), f"{len(got)} rows, expected {len(want)}"
    got, want = sorted(got, key=_sort_key), sorted(want, key=_sort_key)
    first = next((i for i, (g, w) in enumerate(zip(got, want, strict=True)) if not _same_row(g, w)),
                 None)  # fmt: skip
    if first is None:
        return
    # Floats equal to 1e-9 may still sort apart: match row by row before calling it a difference.
    unmatched = list(want)
    for row in got:
        match = next((j for j, w in enumerate(unmatched) if _same_row(row, w)), None)
        assert match is not None, f"row (sorted) {first}: {got[first]!r} != {want[first]!r}"
        del unmatched[match]


def _without(rows: list[Row], taken: list[Row]) -> list[Row]:
    """``rows`` less one equal row for each of ``taken``, every one of which must be there."""
    left = list(rows)
    for row in taken:
        match = next((j for j, r in enumerate(left) if _same_row(row, r)), None)
        assert match is not None, f"expected row {row!r} is missing"
        del left[match]
    return left


def same_rows(
    got: list[Row],
    want: list[Row],
    *,
    ordered: bool,
    loose: Mapping[int, Fold] | None = None,
    tie: Mapping[int, Fold] | None = None,
    order: Sequence[Term] = (),
    keys: tuple[Sequence[Row], Sequence[Row]] | None = None,
    cut: bool = False,
) -> None:
    """Assert two row lists are the same (see the module docstring).

    Args:
        got: shardq's rows.
        want: the single file's rows.
        ordered: the ORDER BY fixes the order (up to the ``tie`` columns).
        loose: column index -> fold, for values SQLite chooses arbitrarily.
        tie: column index -> fold, for columns ordered under that collation.
        order: the ORDER BY term by term: if given, the order is checked against
            it (:mod:`.sqlite_order`) rather than row by row, and ``ordered`` is ignored.
        keys: shardq's and the single file's values of the terms that are not
            output columns, one tuple per row.
        cut: a LIMIT or OFFSET may have cut through rows the ORDER BY ties.
    """
    loose = loose or {}
    order_folds = {**(tie or {}), **loose}
    if order:
        _same_by_order(got, want, loose, order_folds, order, keys, cut=cut)
        return
    if ordered:
        folded_got = [_order_fold(r, order_folds) for r in got]
        folded_want = [_order_fold(r, order_folds) for r in want]
        for i, (g, w) in enumerate(zip(folded_got, folded_want, strict=False)):
            same = _same_row(g, w)
            assert same, f"row {i}: {got[i]!r} != expected {want[i]!r} (the order differs)"
    _same_multiset([_fold(r, loose) for r in got], [_fold(r, loose) for r in want])


def _same_by_order(
    got: list[Row],
    want: list[Row],
    loose: Mapping[int, Fold],
    order_folds: Mapping[int, Fold],
    order: Sequence[Term],
    keys: tuple[Sequence[Row], Sequence[Row]] | None,
    *,
    cut: bool,
) -> None:
    assert len(got) == len(want), f"{len(got)} rows, expected {len(want)}"
    got_keys, want_keys = keys if keys is not None else ([()] * len(got), [()] * len(want))
    full_got = [r + k for r, k in zip(got, got_keys, strict=True)]
    full_want = [r + k for r, k in zip(want, want_keys, strict=True)]
    if cut and want:
        # The single file's rows away from the edges must all be shardq's; shardq's others
        # must sort with an edge (tied, near-tied, or of an unknown key).
        edges = [full_want[0], full_want[-1]]
        at_edge = boundary(full_want, edges, order)
        inner = [_fold(r, loose) for r, b in zip(want, at_edge, strict=True) if not b]
        others = _without([_fold(r, loose) for r in got], inner)
        extra = [r for r, b in zip(full_got, boundary(full_got, edges, order), strict=True)
                 if not b and _fold(r[: len(want[0])], loose) in others]  # fmt: skip
        assert not extra, f"row {extra[0]!r} is not expected (it sorts away from the LIMIT's cut)"
    else:
        _same_multiset([_fold(r, loose) for r in got], [_fold(r, loose) for r in want])
    width = len(want[0]) if want else 0

    def same(g: Row, w: Row) -> bool:
        return _same_row(_order_fold(g[:width], order_folds), _order_fold(w[:width], order_folds))

    check_order(full_got, full_want, order, same, cut=cut)


def row_keys(
    got: list[Row], want: list[Row], want_keys: list[Row], loose: Mapping[int, Fold] | None = None
) -> list[Row]:
    """The keys of shardq's rows, from the single file's rows equal to them (see sqlite_order)."""
    folds = loose or {}
    return keys_for(got, want, want_keys, lambda r: _fold(r, folds), _same_row)


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
