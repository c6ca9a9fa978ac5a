"""Random SELECTs over the SQLite edge dataset, and the outcome of comparing their answers.

:func:`queries` draws a SELECT over ``ev`` (:mod:`tests.fixtures.sqlite_edge`)
with SQLite's functions, collations, aggregates and mixed integer and real
arithmetic: plain rows (with DISTINCT), or groups with aggregates and HAVING
(by alias too), filters (some pinning one shard by ``id``), bound ``?``
parameters, LIMIT/OFFSET. Every query orders by all its output columns, so the
order is determined up to what :mod:`.sqlite_compare` compares loosely:

- an expression under NOCASE or RTRIM (``name COLLATE NOCASE``, the column
  ``note``) orders its equal spellings in any order: a ``tie`` column; when
  DISTINCT, GROUP BY or a LIMIT picks one spelling, a ``loose`` one;
- ``min``/``max`` under a collation return any of the equal spellings: loose,
  and ordered under that collation (``ORDER BY 2 COLLATE NOCASE``) so that the
  order does not depend on the spelling picked;
- DISTINCT and GROUP BY keep one of the values they find equal, and an
  integer equals a real (``qty % 3`` is ``0`` or ``0.0``; the untyped ``mixed``
  holds ``1`` and ``1.0``): every column of a DISTINCT query, and every
  group key, is loose as a number (types are still compared exactly
  elsewhere, and in the hand-written cases);
- ``group_concat()`` concatenates in any order: loose as a multiset of its
  elements, and such a query is compared as a multiset, without LIMIT.

:func:`outcome` runs one and says what happened: ``same``, ``refused``
(``UnsupportedQueryError``, with its construct), ``differ`` (naming the first
column that differs, or the row count or order), ``error`` (any other
exception from shardq), or ``both-error`` (the single file fails too, and
shardq fails with the same message).
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hypothesis import strategies as st

import shardq
from tests.differential.sqlite_compare import (
    Fold,
    Twin,
    elements,
    nocase,
    number,
    rtrim,
    same_rows,
    single_file,
    through_shardq,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

# (expression, fold): the fold when SQLite treats distinct values as equal (collation, number).
ROW_EXPRS: list[tuple[str, Fold | None]] = [
    ("id", None), ("name", None), ("name COLLATE NOCASE", nocase), ("name COLLATE RTRIM", rtrim),
    ("note", nocase), ("note COLLATE BINARY", None), ("grp", None), ("amount", None),
    ("qty", None), ("flag", None), ("ts", None), ("mixed", number), ("abs(qty)", None),
    ("round(amount, 1)", None), ("length(name)", None), ("lower(name)", None),
    ("upper(note)", None), ("trim(name)", None), ("substr(name, 2)", None),
    ("substr(ts, 1, 10)", None), ("coalesce(qty, flag, -1)", None),
    ("ifnull(note, 'none')", None), ("nullif(flag, 0)", None), ("iif(flag, 'y', 'n')", None),
    ("typeof(mixed)", None), ("typeof(grp)", None), ("instr(name, 'n')", None),
    ("replace(name, 'n', 'N')", None), ("printf('%.2f', amount)", None),
    ("format('%d-%s', qty, name)", None), ("strftime('%H', ts)", None), ("date(ts)", None),
    ("julianday(ts)", None), ("CAST(amount AS INTEGER)", None), ("CAST(grp AS REAL)", None),
    ("CAST(qty AS TEXT)", None), ("CAST(ts AS NUMERIC)", None), ("CAST(note AS TEXT)", nocase),
    ("qty * 1.5", None), ("qty + amount", None), ("qty / 2", None), ("qty % 3", None),
    ("grp * 2", None), ("-amount", None), ("flag + 0.5", None),
]  # fmt: skip
GROUP_KEYS: list[tuple[str, Fold | None]] = [
    ("grp", None), ("flag", None), ("name", None), ("name COLLATE NOCASE", nocase),
    ("note", nocase), ("name COLLATE RTRIM", rtrim), ("mixed", number), ("typeof(mixed)", None),
    ("lower(name)", None), ("length(name)", None), ("strftime('%H', ts)", None),
    ("substr(ts, 1, 10)", None), ("qty % 3", None), ("iif(flag, 'y', 'n')", None),
    ("CAST(amount AS INTEGER)", None),
]  # fmt: skip
AGGREGATES: list[tuple[str, Fold | None]] = [
    ("count(*)", None), ("count(name)", None), ("count(DISTINCT name)", None),
    ("count(DISTINCT name COLLATE NOCASE)", None), ("count(DISTINCT note)", None),
    ("count(DISTINCT mixed)", None), ("sum(qty)", None), ("sum(grp)", None),
    ("sum(amount)", None), ("sum(flag)", None), ("total(qty)", None), ("total(amount)", None),
    ("avg(qty)", None), ("avg(amount)", None), ("avg(flag)", None), ("min(name)", None),
    ("max(name)", None), ("min(name COLLATE NOCASE)", nocase), ("max(note)", nocase),
    ("min(name COLLATE RTRIM)", rtrim), ("min(grp)", None), ("max(grp)", None),
    ("min(mixed)", number), ("max(mixed)", number), ("min(ts)", None), ("max(amount)", None),
    ("group_concat(name, '|')", elements("|")), ("group_concat(DISTINCT flag)", elements()),
    ("group_concat(qty)", elements()), ("count(*) * 1.0 / 3", None), ("max(qty) * 1.5", None),
    ("sum(qty) / 3.0", None), ("sum(flag) + 0.5", None), ("sum(amount) % 7", None),
    ("CAST(avg(qty) AS INTEGER)", None), ("round(avg(amount), 2)", None),
    ("round(sum(qty))", None), ("typeof(sum(grp))", None), ("julianday(max(ts))", None),
    ("abs(min(qty))", None), ("coalesce(max(flag), -1)", None),
    ("iif(count(*) > 5, 'many', 'few')", None), ("sum(flag) / count(*)", None),
    ("printf('%.3f', avg(qty))", None), ("nullif(min(flag), 0)", None),
    ("length(max(name))", None), ("upper(min(name))", None), ("substr(max(ts), 1, 7)", None),
    ("CAST(max(amount) AS TEXT)", None), ("max(qty) - min(qty)", None),
    ("ifnull(sum(grp), 0)", None),
]  # fmt: skip
HAVINGS = [
    "count(*) > 3", "sum(qty) > 10", "min(flag) = 0", "max(name) > 5", "total(amount) > 0",
    "avg(qty) < 10", "count(DISTINCT name COLLATE NOCASE) > 1",
]  # fmt: skip
FILTERS = [
    "qty > 2", "name = 'ann'", "note = 'red'", "name COLLATE NOCASE = 'ann'", "grp > 5",
    "amount < 1", "mixed = 1", "ts >= '2024-03-15'", "flag", "id < 80", "name LIKE 'a%'",
    "qty IS NULL", "typeof(grp) = 'text'", "id = 5", "id = 77", "id IN (3, 50, 97)",
]  # fmt: skip
COLLATION_NAMES = {nocase: "NOCASE", rtrim: "RTRIM"}


@dataclass(frozen=True)
class Query:
    """A drawn query and how to compare its answer."""

    sql: str
    params: tuple[Any, ...] = ()
    ordered: bool = True
    loose: dict[int, Fold] = field(default_factory=dict)
    tie: dict[int, Fold] = field(default_factory=dict)
    columns: tuple[str, ...] = ()  # the expression of each output column


@st.composite
def _where(draw: st.DrawFn) -> tuple[str, tuple[Any, ...]]:
    terms = draw(st.lists(st.sampled_from(FILTERS), max_size=2, unique=True))
    params: tuple[Any, ...] = ()
    if draw(st.booleans()):
        value = draw(st.sampled_from([2, 2.5, "ann", "red", 1]))
        terms.append(draw(st.sampled_from(["qty > ?", "name >= ?", "note = ?", "mixed = ?"])))
        params = (value,)
    return (" WHERE " + " AND ".join(terms) if terms else ""), params


@st.composite
def _order_by(draw: st.DrawFn, columns: Sequence[tuple[str, Fold | None]], aliases: bool) -> str:
    terms = []
    for i in draw(st.permutations(range(len(columns)))):
        term = f"c{i}" if aliases and draw(st.booleans()) else str(i + 1)
        expression, fold = columns[i]
        if fold in COLLATION_NAMES and expression.startswith(("min(", "max(")):
            # min/max return text without a collation: order it under the one that picked it,
            # so that the order does not depend on the spelling picked.
            term += f" COLLATE {COLLATION_NAMES[fold]}"
        term += draw(st.sampled_from(["", " ASC", " DESC"]))
        term += draw(st.sampled_from(["", "", " NULLS FIRST", " NULLS LAST"]))
        terms.append(term)
    return " ORDER BY " + ", ".join(terms)


@st.composite
def _window(draw: st.DrawFn) -> str:
    text = ""
    if draw(st.booleans()):
        text += f" LIMIT {draw(st.sampled_from([0, 1, 3, 10, -1]))}"
        if draw(st.booleans()):
            text += f" OFFSET {draw(st.integers(0, 12))}"
    return text


@st.composite
def queries(draw: st.DrawFn) -> Query:
    """A SELECT over ``ev`` and how to compare its answer (see the module docstring)."""
    where, params = draw(_where())
    distinct = draw(st.booleans())
    grouped = draw(st.booleans())
    if grouped:
        keys = draw(st.lists(st.sampled_from(GROUP_KEYS), max_size=2, unique_by=lambda c: c[0]))
        aggs = draw(st.lists(st.sampled_from(AGGREGATES), min_size=1, max_size=3,
                             unique_by=lambda c: c[0]))  # fmt: skip
        columns = keys + aggs
        grouped_by = {i: f for i, (_, f) in enumerate(keys) if f is not None}
    else:
        columns = draw(st.lists(st.sampled_from(ROW_EXPRS), min_size=1, max_size=4,
                                unique_by=lambda c: c[0]))  # fmt: skip
        keys, grouped_by = [], {}
    aliases = draw(st.booleans())
    select = ", ".join(e + (f" AS c{i}" if aliases else "") for i, (e, _) in enumerate(columns))
    sql = f"SELECT {'DISTINCT ' if distinct else ''}{select} FROM ev{where}"
    if grouped and keys:
        by_text = draw(st.booleans())
        sql += " GROUP BY " + ", ".join(
            e if by_text else str(i + 1) for i, (e, _) in enumerate(keys)
        )
    if grouped and draw(st.booleans()):
        having = draw(st.sampled_from(HAVINGS))
        if aliases and draw(st.booleans()):
            having = f"c{len(columns) - 1} IS NOT NULL"
        sql += f" HAVING {having}"
    sql += draw(_order_by(columns, aliases))
    folds = {i: f for i, (_, f) in enumerate(columns) if f is not None}
    concatenated = any(f is not None and f not in (nocase, rtrim, number) for f in folds.values())
    window = "" if concatenated else draw(_window())
    # A fold picks among equal values when the query keeps one of them, or may cut between them.
    picks = distinct or bool(window) or grouped
    loose = folds if picks else grouped_by
    if picks:
        loose = _joint(loose, columns[: len(keys)] if grouped else columns)
    # DISTINCT and GROUP BY keep one of equal values, and 0 equals 0.0: either may show;
    # so may a LIMIT or OFFSET that cuts between rows tied but for 0 against 0.0.
    numbers = range(len(columns)) if distinct or window else range(len(keys))
    loose = {**dict.fromkeys(numbers, number), **loose}
    return Query(sql + window, params, not concatenated, loose, folds,
                 tuple(e for e, _ in columns))  # fmt: skip


def _joint(loose: dict[int, Fold], picked: Sequence[tuple[str, Fold | None]]) -> dict[int, Fold]:
    """Folds for values picked under several keys over one column.

    ``GROUP BY name COLLATE NOCASE, name COLLATE RTRIM`` puts ``'b'`` and
    ``'b  '`` in one group, so either may show in the first key's column: each
    key shows a value equal to the others under all the keys' collations.
    """
    joint = dict(loose)
    for i, (expression, fold) in enumerate(picked):
        same_column = [f for e, f in picked if f is not None and _column(e) == _column(expression)]
        if fold is not None and len(same_column) > 1:
            joint[i] = _all_of(same_column)
    return joint


def _column(expression: str) -> str:
    return re.split(r"\W", expression, maxsplit=1)[0]


def _all_of(folds: list[Fold]) -> Fold:
    def fold(value: Any) -> Any:
        for f in folds:
            value = f(value)
        return value

    return fold


@dataclass(frozen=True)
class Outcome:
    """What happened to one query: ``kind`` and, for grouping failures, a short ``detail``."""

    kind: str  # same, refused, differ, error, both-error
    detail: str = ""


def _normalize(text: str) -> str:
    return re.sub(r"\d+", "N", text)[:120]


def outcome(conn: shardq.Connection | Twin, db: sqlite3.Connection, query: Query) -> Outcome:
    """Run ``query`` through shardq and on the single file, and classify the result."""
    try:
        want = single_file(db, query.sql, query.params)
    except sqlite3.Error as single_error:
        try:
            through_shardq(conn, query.sql, query.params)
        except shardq.UnsupportedQueryError as refusal:
            return Outcome("refused", re.sub(r"\(.*\)", "(...)", refusal.construct))
        except shardq.Error as error:
            if str(single_error) in str(error):
                return Outcome("both-error", str(single_error))
            return Outcome("error", f"{type(error).__name__}: {_normalize(str(error))}")
        return Outcome("differ", f"answered where SQLite fails: {single_error}")
    try:
        got = through_shardq(conn, query.sql, query.params)
    except shardq.UnsupportedQueryError as refusal:
        return Outcome("refused", re.sub(r"\(.*\)", "(...)", refusal.construct))
    except Exception as error:  # every other failure is a finding
        return Outcome("error", f"{type(error).__name__}: {_normalize(str(error))}")
    return _differences(query, got.names, want.names, got.rows, want.rows)


def _differences(
    query: Query, got_names: list[str], want_names: list[str], got: list[Any], want: list[Any]
) -> Outcome:
    for i, (g, w) in enumerate(zip(got_names, want_names, strict=False)):
        if g != w:
            return Outcome("differ", f"column name of {query.columns[i]}")
    try:
        same_rows(got, want, ordered=query.ordered, loose=query.loose, tie=query.tie)
    except AssertionError:
        pass
    else:
        return Outcome("same")
    if len(got) != len(want):
        return Outcome("differ", "row count")
    for i, expression in enumerate(query.columns):
        fold = {0: query.loose[i]} if i in query.loose else {}
        try:
            same_rows([r[i : i + 1] for r in got], [r[i : i + 1] for r in want], ordered=False,
                      loose=fold)  # fmt: skip
        except AssertionError:
            return Outcome("differ", f"values of {expression}")
    return Outcome("differ", "order")
