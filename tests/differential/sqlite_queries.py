"""Random SELECTs over the SQLite edge dataset, and the outcome of comparing their answers.

:func:`queries` draws a SELECT over ``ev`` (:mod:`tests.fixtures.sqlite_edge`),
alone or joined with the co-located ``ev2`` or the reference table ``kind``,
from the pools of :mod:`.sqlite_pools`: SQLite's functions, collations,
aggregates (DISTINCT ones under collations, ``group_concat`` with
separators), CASE, CAST to each affinity, LIKE/GLOB, BETWEEN, IN lists,
uncorrelated scalar subqueries, mixed integer and real arithmetic; plain rows
(with DISTINCT), or groups with aggregates and HAVING (by alias, by the
grouped column, by an aggregate, with a parameter); filters (some pinning one
shard by ``id``), bound ``?`` parameters of every type, LIMIT/OFFSET (as
parameters too). Every query orders by all its output columns, and sometimes
by expressions outside the select list too; :class:`Query` hands the ORDER BY
over term by term, and :mod:`.sqlite_compare` checks the order against it
(near-tied float keys may come either way round: :mod:`.sqlite_order`).
What SQLite leaves open is compared loosely:

- an expression under NOCASE or RTRIM (``name COLLATE NOCASE``, the column
  ``note``) orders its equal spellings in any order: its term orders under
  that collation; when DISTINCT, GROUP BY or a LIMIT picks one spelling, the
  column is ``loose``;
- ``min``/``max`` under a collation return any of the equal spellings: loose,
  and ordered under that collation (``ORDER BY 2 COLLATE NOCASE``) so that the
  order does not depend on the spelling picked;
- DISTINCT and GROUP BY keep one of the values they find equal, and an
  integer equals a real (``qty % 3`` is ``0`` or ``0.0``; the untyped ``mixed``
  holds ``1`` and ``1.0``): every column of a DISTINCT query, and every
  group key, is loose as a number (types are still compared exactly
  elsewhere, and in the hand-written cases);
- ``group_concat()`` concatenates in any order: loose as a multiset of its
  elements, and such a query is compared as a multiset, without LIMIT;
- an ORDER BY expression outside the select list: the single file runs the
  query once more with it selected (``keyed_sql``, after the output columns)
  to give the keys its rows were sorted by; shardq's rows take the keys of the
  single file's rows equal to them. So that this adds no rows, such terms are
  drawn only without DISTINCT.

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
    nocase,
    number,
    row_keys,
    rtrim,
    same_rows,
    single_file,
    through_shardq,
)
from tests.differential.sqlite_order import Row, Term
from tests.differential.sqlite_pools import (
    AGGREGATES,
    FILTERS,
    GROUP_KEYS,
    HAVINGS,
    PARAM_AGGREGATES,
    PARAM_FILTERS,
    PARAM_ROWS,
    ROW_EXPRS,
    SOURCES,
    Expr,
    Param,
    Source,
    qualified,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

COLLATION_NAMES = {nocase: "NOCASE", rtrim: "RTRIM"}
# (text, fold, parameters) of one output column
Column = tuple[str, "Fold | None", tuple[Any, ...]]


@dataclass(frozen=True)
class Query:
    """A drawn query and how to compare its answer."""

    sql: str
    params: tuple[Any, ...] = ()
    ordered: bool = True
    loose: dict[int, Fold] = field(default_factory=dict)
    tie: dict[int, Fold] = field(default_factory=dict)
    columns: tuple[str, ...] = ()  # the expression of each output column
    order: tuple[Term, ...] = ()  # the ORDER BY, when the order is compared
    # The query with the ORDER BY's expressions that are not output columns added to its
    # select list (after the others): the single file's values of those keys.
    keyed_sql: str = ""
    cut: bool = False  # a LIMIT or OFFSET may cut through tied rows


def _is_concatenation(fold: Fold | None) -> bool:
    return fold is not None and fold not in (nocase, rtrim, number)


@st.composite
def _output(
    draw: st.DrawFn, pool: Sequence[Expr], params: Sequence[Param], source: Source
) -> Column:
    if params and (not pool or draw(st.integers(0, 11)) == 0):
        param = draw(st.sampled_from(params))
        return param.text, param.fold, draw(st.sampled_from(param.values))
    text, fold = draw(st.sampled_from(pool))
    return qualified(text, source), fold, ()


@st.composite
def _where(draw: st.DrawFn, source: Source) -> tuple[str, tuple[Any, ...]]:
    pool = [*FILTERS, *source.filters]
    terms = [qualified(t, source) for t in draw(st.lists(st.sampled_from(pool), max_size=2,
                                                         unique=True))]  # fmt: skip
    params: tuple[Any, ...] = ()
    if draw(st.booleans()):
        param = draw(st.sampled_from(PARAM_FILTERS))
        terms.append(qualified(param.text, source))
        params = draw(st.sampled_from(param.values))
    if source.condition:
        terms.insert(0, source.condition)
    return (" WHERE " + " AND ".join(terms) if terms else ""), params


@st.composite
def _having(
    draw: st.DrawFn, source: Source, columns: Sequence[Column], keys: int, aliases: bool
) -> tuple[str, tuple[Any, ...]]:
    choice = draw(st.integers(0, 3))
    if choice == 1 and aliases:  # by the alias of an output column
        i = draw(st.integers(0, len(columns) - 1))
        test = draw(st.sampled_from(["IS NOT NULL", "> 1", "<> 'b'"]))
        return f" HAVING c{i} {test}", ()
    if choice == 2 and keys:  # by the input column (or expression) grouped by
        key = columns[draw(st.integers(0, keys - 1))][0]
        test = draw(st.sampled_from(["IS NOT NULL", "> 1", "< ?"]))
        value = draw(st.sampled_from([2, 2.5, "b", b"b", None]))
        if re.search(r"\b(GLOB|LIKE|IN|BETWEEN|REGEXP|MATCH)\b", key, re.IGNORECASE):
            key = f"({key})"  # SQLite ranks these below < and >: shardq refuses them bare
        return f" HAVING {key} {test}", ((value,) if "?" in test else ())
    if choice == 3:
        return " HAVING count(*) > ?", (draw(st.sampled_from([2, 2.5, "3", None])),)
    return f" HAVING {qualified(draw(st.sampled_from(HAVINGS)), source)}", ()


@st.composite
def _order_by(
    draw: st.DrawFn, columns: Sequence[Column], hidden: Sequence[Expr], aliases: bool
) -> tuple[str, list[tuple[int, bool, bool | None]]]:
    """ORDER BY every output column and ``hidden``: its text and (index, DESC, NULLS FIRST)."""
    every = [(c[0], c[1]) for c in columns] + list(hidden)
    texts, terms = [], []
    for i in draw(st.permutations(range(len(every)))):
        expression, fold = every[i]
        if i >= len(columns):
            text = expression
        else:
            text = f"c{i}" if aliases and draw(st.booleans()) else str(i + 1)
        if fold in COLLATION_NAMES and expression.startswith(("min(", "max(")):
            # min/max return text without a collation: order it under the one that picked it,
            # so that the order does not depend on the spelling picked.
            text += f" COLLATE {COLLATION_NAMES[fold]}"
        direction = draw(st.sampled_from(["", " ASC", " DESC"]))
        nulls = draw(st.sampled_from(["", "", " NULLS FIRST", " NULLS LAST"]))
        texts.append(text + direction + nulls)
        terms.append((i, direction == " DESC", {"": None, " NULLS FIRST": True}.get(nulls, False)))
    return " ORDER BY " + ", ".join(texts), terms


@st.composite
def _window(draw: st.DrawFn) -> tuple[str, tuple[Any, ...]]:
    if not draw(st.booleans()):
        return "", ()
    limit = draw(st.sampled_from([0, 1, 3, 10, -1]))
    offset = draw(st.none() | st.integers(0, 12))
    if draw(st.booleans()):  # as parameters
        return " LIMIT ?" + ("" if offset is None else " OFFSET ?"), (
            (limit,) if offset is None else (limit, offset)
        )
    return f" LIMIT {limit}" + ("" if offset is None else f" OFFSET {offset}"), ()


SET_OPERATIONS = ["UNION", "UNION ALL", "INTERSECT", "EXCEPT"]


@st.composite
def _set_operation(draw: st.DrawFn) -> Query:
    """Two or three SELECTs of row expressions over ``ev`` under UNION, INTERSECT or EXCEPT.

    Compared as a multiset: each column is loose as a number and under the
    collation of its expressions (of equal values, the one shown is SQLite's choice).
    """
    source = SOURCES[0]
    pool = [(e, f) for e, f in [*ROW_EXPRS, *source.rows] if not _is_concatenation(f)]
    width = draw(st.integers(1, 2))
    sql, params = "", ()
    folds: dict[int, list[Fold]] = {i: [] for i in range(width)}
    names: tuple[str, ...] = ()
    kinds: list[Fold | None] = []
    for branch in range(draw(st.integers(2, 3))):
        # Each column under one collation in every branch: which of two collations SQLite
        # picks depends on whether the first is the rowid (the twin file's schema differs).
        columns = [
            draw(_output([(e, f) for e, f in pool if not kinds or f is kinds[i]], (), source))
            for i in range(width)
        ]
        kinds = kinds or [c[1] for c in columns]
        where, where_params = draw(_where(source))
        if branch:
            sql += f" {draw(st.sampled_from(SET_OPERATIONS))} "
        else:
            names = tuple(c[0] for c in columns)
        sql += f"SELECT {', '.join(c[0] for c in columns)} FROM {source.text}{where}"
        params += where_params
        for i, column in enumerate(columns):
            if column[1] is not None:
                folds[i].append(column[1])
    loose = {i: _then_number(_all_of(f) if f else None) for i, f in folds.items()}
    return Query(sql, params, ordered=False, loose=loose, columns=names)


@st.composite
def queries(draw: st.DrawFn) -> Query:
    """A SELECT over ``ev`` (maybe joined) and how to compare its answer (see the docstring)."""
    if draw(st.integers(0, 7)) == 0:
        return draw(_set_operation())
    source = draw(st.just(SOURCES[0]) | st.sampled_from(SOURCES[1:]))
    distinct = draw(st.booleans())
    grouped = draw(st.booleans())
    keys: list[Column] = []
    if grouped:
        keys = draw(st.lists(_output([*GROUP_KEYS, *source.keys], (), source), max_size=2,
                             unique_by=lambda c: c[0]))  # fmt: skip
        # At least one aggregate from the pool: a select list of constants is no aggregate query.
        aggs = draw(st.lists(_output([*AGGREGATES, *source.aggregates], (), source),
                             min_size=1, max_size=3, unique_by=lambda c: c[0]))  # fmt: skip
        if draw(st.integers(0, 5)) == 0:
            aggs.append(draw(_output([], PARAM_AGGREGATES, source)))
        columns = keys + aggs
    else:
        columns = draw(st.lists(_output([*ROW_EXPRS, *source.rows], PARAM_ROWS, source),
                                min_size=1, max_size=4, unique_by=lambda c: c[0]))  # fmt: skip
    grouped_by = {i: f for i, (_, f, _) in enumerate(keys) if f is not None}
    aliases = draw(st.booleans())
    select = ", ".join(e + (f" AS c{i}" if aliases else "") for i, (e, _, _) in enumerate(columns))
    params = tuple(p for _, _, values in columns for p in values)
    where, where_params = draw(_where(source))
    body = f" FROM {source.text}{where}"
    params += where_params
    if grouped and keys:
        by_text = draw(st.booleans())
        body += " GROUP BY " + ", ".join(
            e if by_text else str(i + 1) for i, (e, _, _) in enumerate(keys)
        )
    if grouped and draw(st.booleans()):
        having, having_params = draw(_having(source, columns, len(keys), aliases))
        body += having
        params += having_params
    hidden: list[Expr] = []
    if not distinct and draw(st.integers(0, 2)) == 0:
        pool = [*AGGREGATES, *source.aggregates] if grouped else [*ROW_EXPRS, *source.rows]
        shown = {c[0] for c in columns}
        pool = [(qualified(e, source), f) for e, f in pool if not _is_concatenation(f)]
        pool = [(e, f) for e, f in pool if e not in shown]
        hidden = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=2,
                               unique_by=lambda c: c[0]))  # fmt: skip
    order_by, spec = draw(_order_by(columns, hidden, aliases))
    folds = {i: f for i, (_, f, _) in enumerate(columns) if f is not None}
    concatenated = any(_is_concatenation(f) for f in folds.values())
    window, window_params = ("", ()) if concatenated else draw(_window())
    params += window_params
    # A fold picks among equal values when the query keeps one of them, or may cut between them.
    picks = distinct or bool(window) or grouped
    loose = folds if picks else grouped_by
    if picks:
        loose = _joint(loose, [(c[0], c[1]) for c in (keys if grouped else columns)])
    # DISTINCT and GROUP BY keep one of equal values, and 0 equals 0.0: either may show;
    # so may a LIMIT or OFFSET that cuts between rows tied but for 0 against 0.0.
    numbers = range(len(columns)) if distinct or window else range(len(keys))
    loose = {**dict.fromkeys(numbers, number), **loose}
    # Each term orders under its own collation (not the loose folds, which say what may show);
    # where 0 or 0.0 may show, numbers are compared as reals, so that the two sides agree on
    # which rows are near-tied.
    term_folds = [_then_number(folds.get(i)) if i in numbers else folds.get(i)
                  for i in range(len(columns))] + [f for _, f in hidden]  # fmt: skip
    order = tuple(Term(i, desc, nulls, term_folds[i]) for i, desc, nulls in spec)
    sql = f"SELECT {'DISTINCT ' if distinct else ''}{select}{body}{order_by}{window}"
    keyed = ""
    if hidden and not concatenated:
        extra = "".join(f", {e} AS _key{j}" for j, (e, _) in enumerate(hidden))
        keyed = f"SELECT {select}{extra}{body}{order_by}{window}"
    return Query(sql, params, not concatenated, loose, folds, tuple(c[0] for c in columns),
                 () if concatenated else order, keyed, bool(window))  # fmt: skip


def _then_number(fold: Fold | None) -> Fold:
    if fold is None:
        return number

    def both(value: Any) -> Any:
        return number(fold(value))

    return both


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
        keyed = single_file(db, query.keyed_sql, query.params) if query.keyed_sql else None
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
    for i, (g, w) in enumerate(zip(got.names, want.names, strict=False)):
        if g != w:
            return Outcome("differ", f"column name of {query.columns[i]}")
    if keyed is None:
        return _differences(query, got.rows, want.rows, None)
    # The same statement with the ORDER BY's other keys selected: its rows, in its order,
    # each with the keys it was sorted by.
    width = len(want.names)
    return _differences(query, got.rows, [r[:width] for r in keyed.rows],
                        [r[width:] for r in keyed.rows])  # fmt: skip


def _differences(
    query: Query, got: list[Row], want: list[Row], want_keys: list[Row] | None
) -> Outcome:
    keys = None
    if want_keys is not None:
        keys = (row_keys(got, want, want_keys, query.loose), want_keys)
    try:
        same_rows(got, want, ordered=query.ordered, loose=query.loose, tie=query.tie,
                  order=query.order, keys=keys, cut=query.cut)  # fmt: skip
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
