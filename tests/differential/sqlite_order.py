"""Ordered answers whose sort keys may be near-tied floats: checked against the ORDER BY itself.

A float computed after a merge (``total(amount)``, ``avg(x)``) may differ in
its last bits from the single file's, its terms summed in another order
(:func:`.sqlite_compare.same_value` already accepts 1e-9 relative). When two
rows' keys are that close, say ``5.9`` and ``5.8999999999999995``, each side
orders them by the values it computed, so the two rows, and everything the
later ORDER BY terms would have decided between them, may come either way
round. Comparing row ``i`` with row ``i`` would then report a difference that
is not one. A query whose ORDER BY is known term by term (:class:`Term`) is
instead compared in three parts (:func:`check_order`, called by
:func:`.sqlite_compare.same_rows` after it compared the multisets):

- (b) shardq's rows are sorted by the terms: in each adjacent pair, the first
  term that tells the rows apart puts them in order. Values compare as
  SQLite's ORDER BY compares them: NULL (first or last as the term says; by
  default the smallest), then numbers (an integer equals the real of the same
  value), then text under the term's collation (a :data:`Fold`, such as
  ``nocase``), then blobs. Numbers within 1e-9 relative that are not equal
  (one a float) are a *near tie*: it decides nothing, and the pair passes in
  either order;
- (c) where the single file's order is fully determined, the rows are the
  same: if the single file's row ``i`` sorts strictly after row ``i-1`` and
  before row ``i+1``, with no near tie on the way, shardq's row ``i`` is that
  row (with the columns folded as the comparison folds them). Here floats
  within 1e-9 count as near-tied even when equal: shardq may have computed
  the two apart.

Together with the multiset comparison (a), that is all the ORDER BY promises.
A LIMIT or OFFSET (``cut``) may cut through a group of near-tied rows and keep
other members on each side: rows tied or near-tied with the first or the last
row may differ: the single file's other rows must all be among shardq's, and
shardq's remaining rows must be tied or near-tied with the first or last
(floats equal to 1e-9 counting as near-tied).

A term may read a value that is not an output column (``ORDER BY length(name)``
without ``length(name)`` in the select list): such *keys* follow a row's
columns. The single file computes its keys by running the query with them
added to the select list; shardq's rows take the keys of the single file's
rows that equal them (:func:`keys_for`), :data:`UNKNOWN` where those rows
disagree, and an unknown key decides nothing either.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

Fold = Callable[[Any], Any]
Row = tuple[Any, ...]


class _Unknown:
    """The type of :data:`UNKNOWN`."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "UNKNOWN"


#: A key shardq's row cannot be given: the single file's rows equal to it disagree on it.
UNKNOWN: Final = _Unknown()


@dataclass(frozen=True)
class Term:
    """One ORDER BY term.

    Attributes:
        column: the index it reads in the row followed by its keys.
        descending: ``DESC``.
        nulls_first: ``NULLS FIRST`` (True), ``NULLS LAST`` (False), or SQLite's
            default (None: NULL is the smallest value).
        fold: the collation, or the fold of a value SQLite picks among equal
            ones; None for BINARY.
    """

    column: int
    descending: bool = False
    nulls_first: bool | None = None
    fold: Fold | None = None


def _rank(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, (int, float)):
        return 1
    if isinstance(value, (str, tuple)):
        return 2
    return 3


def near(a: Any, b: Any, *, equal: bool = False) -> bool:
    """Numbers within 1e-9 relative, one of them a float, and not equal unless ``equal``.

    >>> near(5.9, 5.8999999999999995), near(5.9, 5.9), near(5.9, 5.9, equal=True)
    (True, False, True)
    >>> near(2**62, 2**62 + 1)
    False
    """
    if not isinstance(a, float) and not isinstance(b, float):
        return False
    return (equal or a != b) and math.isclose(a, b, rel_tol=1e-9)


def compare(a: Any, b: Any, term: Term, *, across: bool = False) -> int | None:
    """-1, 0 or 1 as ``a`` sorts before, with or after ``b`` under ``term``; None if undecided.

    ``across``: the values may come from two computations, so floats equal to
    1e-9 are near-tied even when they are equal here (the other side may have
    computed them apart).

    >>> compare(None, 1, Term(0)), compare(None, 1, Term(0, descending=True))
    (-1, 1)
    >>> compare("B", "a", Term(0)), compare("B", "a", Term(0, fold=str.lower))
    (-1, 1)
    >>> compare(1, 1.0, Term(0)), compare(5.9, 5.8999999999999995, Term(0))
    (0, None)
    >>> compare(2, "1", Term(0)), compare("b  ", "b", Term(0, fold=lambda v: v.rstrip(" ")))
    (-1, 0)
    """
    if a is UNKNOWN or b is UNKNOWN:
        return None
    if term.fold is not None:
        a, b = term.fold(a), term.fold(b)
    if a is None or b is None:
        if a is None and b is None:
            return 0
        first = term.nulls_first if term.nulls_first is not None else not term.descending
        return (-1 if a is None else 1) * (1 if first else -1)
    rank_a, rank_b = _rank(a), _rank(b)
    if rank_a != rank_b:
        order = -1 if rank_a < rank_b else 1
    elif near(a, b, equal=across):
        return None
    else:
        order = (a > b) - (a < b)
    return -order if term.descending else order


def compare_rows(a: Row, b: Row, terms: Sequence[Term], *, across: bool = False) -> int | None:
    """:func:`compare` at the first term that tells ``a`` and ``b`` apart; None if undecided."""
    for term in terms:
        order = compare(a[term.column], b[term.column], term, across=across)
        if order != 0:
            return order
    return 0


def keys_for(
    got: Sequence[Row],
    want: Sequence[Row],
    want_keys: Sequence[Row],
    fold: Callable[[Row], Row],
    same: Callable[[Row, Row], bool],
) -> list[Row]:
    """The keys of shardq's rows: those of the single file's rows ``same`` after ``fold``.

    A key on which those rows disagree, or of a row none equals, is :data:`UNKNOWN`.
    """
    width = len(want_keys[0]) if want_keys else 0
    wanted = [(fold(w), k) for w, k in zip(want, want_keys, strict=True)]
    buckets: dict[Row, list[tuple[Row, Row]]] = {}
    for w, k in wanted:
        buckets.setdefault(_coarse(w), []).append((w, k))
    keys = []
    for row in got:
        g = fold(row)
        found = [k for w, k in buckets.get(_coarse(g), []) if same(g, w)]
        if not found:  # a near-equal float may round into another bucket
            found = [k for w, k in wanted if same(g, w)]
        agreed = [bool(found) and all(_same_key(k[j], found[0][j]) for k in found)
                  for j in range(width)]  # fmt: skip
        keys.append(tuple(found[0][j] if agreed[j] else UNKNOWN for j in range(width)))
    return keys


def _coarse(row: Row) -> Row:
    return tuple((type(v).__name__, f"{v:.6g}" if isinstance(v, float) else v) for v in row)


def _same_key(a: Any, b: Any) -> bool:
    return type(a) is type(b) and (a == b or near(a, b))


def boundary(rows: Sequence[Row], edges: Sequence[Row], terms: Sequence[Term]) -> list[bool]:
    """Which rows are tied or near-tied with one of ``edges`` (where a LIMIT may cut)."""
    return [any(compare_rows(r, e, terms, across=True) in (0, None) for e in edges) for r in rows]


def check_order(
    got: Sequence[Row],
    want: Sequence[Row],
    terms: Sequence[Term],
    same: Callable[[Row, Row], bool],
    *,
    cut: bool = False,
) -> None:
    """Assert (b) and (c) of the module docstring; rows carry their keys after their columns.

    Args:
        got: shardq's rows, each followed by its keys.
        want: the single file's rows, each followed by its keys.
        terms: the ORDER BY.
        same: whether shardq's row is the single file's (the comparison's folds).
        cut: a LIMIT or OFFSET may have cut: the rows that sort with the first or last
            may have been swapped with rows left out, so their place is not determined.
    """
    for i in range(len(got) - 1):
        assert compare_rows(got[i], got[i + 1], terms) != 1, (
            f"rows {i} and {i + 1} are out of order: {got[i]!r} then {got[i + 1]!r}"
        )
    # Floats the single file found equal, shardq may have computed apart: undecided too.
    strict = [compare_rows(want[i], want[i + 1], terms, across=True) == -1
              for i in range(len(want) - 1)]  # fmt: skip
    at_edge = boundary(want, [want[0], want[-1]], terms) if cut and want else [False] * len(want)
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        determined = (i == 0 or strict[i - 1]) and (i == len(want) - 1 or strict[i])
        determined = determined and not at_edge[i]
        assert not determined or same(g, w), (
            f"row {i}: {g!r} != expected {w!r} (the order differs where the ORDER BY fixes it)"
        )


def folded(row: Row, folds: Mapping[int, Fold]) -> Row:
    """``row`` with the columns in ``folds`` folded."""
    return tuple(folds[i](v) if i in folds else v for i, v in enumerate(row))
