"""Random analytic reads over ``ana`` and ``anb``, and the outcome of comparing their answers.

The constructs issue 17 made answerable on PostgreSQL shards, by a merge or by
the gather to one shard (README, "Gather to one shard"):

- window functions (``row_number``, ``rank``, ``dense_rank``, ``ntile``,
  ``sum``/``avg``/``count``/``min``/``max`` with FILTER, ``lag``/``lead``,
  ``first_value``/``nth_value``), partitioned by the key, by other columns or
  not at all, with frames (``ROWS``, ``RANGE`` with offsets, ``GROUPS``,
  ``EXCLUDE``), named (``WINDOW w AS``), under DISTINCT, over rows or over
  groups, the top-n-per-group pattern (a window in a derived table, filtered
  outside) and a window in a CTE grouped outside;
- ordered aggregates (``string_agg``/``array_agg ... ORDER BY``, with and
  without DISTINCT), ``percentile_cont``/``percentile_disc``/``mode() WITHIN
  GROUP``, ``stddev``/``variance`` (DISTINCT too), date and time arithmetic
  over merged aggregates, HAVING against literals of timestamps and dates;
  ``ROLLUP``, ``CUBE``, ``GROUPING SETS`` and ``grouping()``;
- ``DISTINCT ON`` the key or other columns;
- set operations (``UNION``, ``INTERSECT``, ``EXCEPT``, ``ALL``, nested) of
  branches that read either table, the reference table ``labels``, a CTE or
  nothing, group, or carry their own ``LIMIT``;
- subqueries correlated on columns other than the key (TPC-H Q17's
  ``x < (SELECT avg(x) ... WHERE t2.c = t.c)``), ``EXISTS``/``NOT EXISTS``,
  ``IN``/``NOT IN`` (NULLs included), ``ALL``/``ANY``, scalar subqueries in
  the select list, and in HAVING, correlated on the group key;
- joins of the two tables, which are not co-located (inner, outer, on ``id``
  or other columns), and LATERAL subqueries;
- ``LIMIT`` (a bound parameter too), ``OFFSET`` and ``FETCH FIRST n ROWS
  ONLY``/``WITH TIES``; filters with bound parameters (``%(name)s``).

Every answer is deterministic on one database: the ORDER BY of a query lists
all its output columns (rows equal in every column cannot be told apart), a
window's ORDER BY ends with the unique ``id`` wherever a frame of rows, an
offset or a row number depends on the order of peers, and ordered aggregates
order by their argument (or by ``id`` too). ``WITH TIES`` under an ORDER BY
of one column keeps a determined set of rows in an open order: such a query
is compared as a multiset. Numerics that are equal but written with other
scales (``1.50`` and ``1.5000``) never meet in a set operation or under
DISTINCT: which one is kept depends on the plan (PostgreSQL puts the smaller
input of an INTERSECT first, by its estimates), on one database too. No
float column exists: sums are of integers and numerics, exact in any order
(``percentile_cont`` and ``percent_rank`` give float8, computed by one server
from the same rows).

:mod:`.pg_constructs` writes each entry of these pools once, and compares
answers (:func:`~tests.differential.pg_constructs.outcome`).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from hypothesis import strategies as st

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence


BASE_TS = dt.datetime(2024, 2, 28, 22, 0, tzinfo=dt.UTC)  # across a leap day and a month's end
BASE_DATE = dt.date(2024, 2, 26)
TEXTS = ["a", "A", "b", "é", "É", "", None]


def _ana_row() -> st.SearchStrategy[tuple[Any, ...]]:
    return st.tuples(
        st.one_of(st.none(), st.integers(0, 3)),
        st.sampled_from(TEXTS),
        st.one_of(st.none(), st.decimals(min_value=-99, max_value=99, places=2)),
        st.one_of(st.none(), st.integers(-5, 5)),
        st.one_of(st.none(), st.integers(-50, 50).map(lambda h: BASE_TS + dt.timedelta(hours=h))),
        st.one_of(st.none(), st.integers(0, 6).map(lambda n: BASE_DATE + dt.timedelta(days=n))),
    )


def _anb_row() -> st.SearchStrategy[tuple[Any, ...]]:
    return st.tuples(
        st.one_of(st.none(), st.integers(0, 4)),
        st.sampled_from(TEXTS),
        st.one_of(st.none(), st.decimals(min_value=-99, max_value=99, places=2)),
    )


def _numbered(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    return [(i + 1, *row) for i, row in enumerate(rows)]


ana_rows = st.lists(_ana_row(), max_size=30).map(_numbered)
anb_rows = st.lists(_anb_row(), max_size=12).map(_numbered)


@dataclass(frozen=True)
class Query:
    """A drawn query; ``ordered`` when its ORDER BY fixes the order of every row."""

    sql: str
    shape: str
    ordered: bool = True
    params: dict[str, Any] | None = None


# ----------------------------------------------------------------------------- pieces

FILTERS = [
    "x > 0", "c IS NOT NULL", "g = 'a'", "q < 0", "g > 'B'", "ts < '2024-02-29 12:00'",
    "d BETWEEN '2024-02-27' AND '2024-03-01'", "c IN (1, 2)", "x IS NULL OR q > 2",
]  # fmt: skip


# Filters with a bound parameter (psycopg's %(name)s), and the values each may take.
PARAM_FILTERS = ["x > %(px)s", "g = %(pg)s", "ts < %(pts)s", "d >= %(pd)s", "q <> %(pq)s"]
PARAM_VALUES: dict[str, list[Any]] = {
    "px": [Decimal("1.5"), 0, -20], "pg": ["a", "é", ""],
    "pts": [BASE_TS, BASE_TS + dt.timedelta(hours=30)], "pd": [dt.date(2024, 2, 28)],
    "pq": [0, 3], "pl": [0, 2, 5],
}  # fmt: skip


@st.composite
def _filter(draw: st.DrawFn, alias: str = "") -> str:
    text = draw(st.sampled_from(FILTERS + PARAM_FILTERS))
    if alias:
        text = re.sub(r"\b(x|c|g|q|ts|d)\b", rf"{alias}.\1", text)
    return text


@st.composite
def _where(draw: st.DrawFn) -> str:
    return f" WHERE {draw(_filter())}" if draw(st.booleans()) else ""


def _direction(draw: st.DrawFn) -> str:
    return draw(st.sampled_from(["", " ASC", " DESC"])) + draw(
        st.sampled_from(["", "", " NULLS FIRST", " NULLS LAST"])
    )


@st.composite
def order_by(draw: st.DrawFn, count: int) -> str:
    """ORDER BY every output column (ordinals), in a random order and direction."""
    positions = draw(st.permutations(range(1, count + 1)))
    return " ORDER BY " + ", ".join(f"{p}{_direction(draw)}" for p in positions)


@st.composite
def suffix(draw: st.DrawFn) -> str:
    """LIMIT/OFFSET, FETCH FIRST n ROWS ONLY or WITH TIES, or nothing."""
    choice = draw(st.integers(0, 3))
    if choice == 0:
        return ""
    if choice == 1:
        offset = f" OFFSET {draw(st.integers(0, 8))} ROWS" if draw(st.booleans()) else ""
        count = draw(st.sampled_from(["", " 0", " 1", " 3", " 7"]))
        row = "ROW" if count in ("", " 1") else "ROWS"
        ties = draw(st.sampled_from(["ONLY", "WITH TIES"]))
        return f"{offset} FETCH FIRST{count} {row} {ties}"
    text = ""
    if draw(st.booleans()):
        limit = draw(st.integers(-1, 10))
        text = " LIMIT %(pl)s" if limit < 0 else f" LIMIT {limit}"
    if choice == 3 or not text:
        text += f" OFFSET {draw(st.integers(0, 10))}"
    return text


@st.composite
def _ordered(draw: st.DrawFn, sql: str, count: int, shape: str, ties: bool = True) -> Query:
    """``sql`` ordered by all its ``count`` columns with a suffix; or, when ``ties``
    allows it, ordered by its first column only and cut WITH TIES (a multiset)."""
    if ties and draw(st.integers(0, 5)) == 0:
        n = draw(st.integers(0, 6))
        return Query(
            f"{sql} ORDER BY 1{_direction(draw)} FETCH FIRST {n} ROWS WITH TIES", shape, False
        )
    return Query(sql + draw(order_by(count)) + draw(suffix()), shape)


# ----------------------------------------------------------------------------- windows

COLUMNS = ["id", "c", "g", "x", "q", "ts", "d"]
RANKING = ["rank()", "dense_rank()", "percent_rank()", "cume_dist()"]  # peers share a value
NUMBERING = ["row_number()", "ntile(3)"]  # need a total order
OFFSETS = [
    "lag(x)", "lag(q, 2)", "lead(g)", "lead(ts, 1)", "lag(d, 1, DATE '2024-01-01')",
    "lead(x, 2, 0)", "first_value(x)", "nth_value(g, 2)", "last_value(q)",
]  # fmt: skip
WINDOW_AGGREGATES = [
    "sum(x)", "sum(q)", "avg(x)", "avg(q)", "count(*)", "count(g)", "min(ts)", "max(d)",
    "min(g)", "max(x)", "sum(x) FILTER (WHERE q > 0)", "count(*) FILTER (WHERE g = 'a')",
]  # fmt: skip
# Over ``WINDOW w AS (PARTITION BY ... ORDER BY ..., id)``: a total order.
NAMED_WINDOWS = [
    "row_number() OVER w", "lag(x) OVER w", "sum(q) OVER w",
    "count(*) OVER (w ROWS BETWEEN 1 PRECEDING AND CURRENT ROW)", "first_value(g) OVER w",
]  # fmt: skip
PARTITIONS = [
    "", "PARTITION BY id", "PARTITION BY c", "PARTITION BY g", "PARTITION BY c, g",
    "PARTITION BY d", "PARTITION BY q % 2",
]  # fmt: skip
KEY_PARTITIONS = ["PARTITION BY id", "PARTITION BY id, c", "PARTITION BY g, id"]
SORT_KEYS = ["x", "q", "ts", "d", "g", "c"]
# Frames that depend only on peer groups (any ORDER BY) and those that count rows (a total one).
PEER_FRAMES = [
    "RANGE BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW",
    "RANGE BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING",
    "RANGE BETWEEN CURRENT ROW AND UNBOUNDED FOLLOWING",
    "GROUPS BETWEEN 1 PRECEDING AND CURRENT ROW",
    "GROUPS BETWEEN CURRENT ROW AND 1 FOLLOWING EXCLUDE TIES",
    "RANGE BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW EXCLUDE CURRENT ROW",
]
ROW_FRAMES = [
    "ROWS BETWEEN 1 PRECEDING AND CURRENT ROW",
    "ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW",
    "ROWS BETWEEN CURRENT ROW AND 2 FOLLOWING",
    "ROWS BETWEEN 2 PRECEDING AND 1 FOLLOWING EXCLUDE CURRENT ROW",
    "ROWS 3 PRECEDING",
]
# RANGE with an offset: one ORDER BY column, of a type the offset fits.
RANGE_OFFSETS = {
    "q": "RANGE BETWEEN 1 PRECEDING AND 1 FOLLOWING",
    "x": "RANGE BETWEEN 10 PRECEDING AND CURRENT ROW",
    "ts": "RANGE BETWEEN INTERVAL '6 hours' PRECEDING AND CURRENT ROW",
    "d": "RANGE BETWEEN CURRENT ROW AND INTERVAL '1 day' FOLLOWING",
}


@st.composite
def _sort(draw: st.DrawFn, total: bool, keys: Sequence[str] = SORT_KEYS) -> str:
    """A window's ORDER BY: one or two keys, then ``id`` when ``total``."""
    chosen = draw(st.lists(st.sampled_from(keys), min_size=1, max_size=2, unique=True))
    terms = [f"{key}{_direction(draw)}" for key in chosen]
    if total:
        terms.append(f"id{draw(st.sampled_from(['', ' DESC']))}")
    return "ORDER BY " + ", ".join(terms)


@st.composite
def window_term(draw: st.DrawFn, by_key: bool = False) -> str:
    """One window function call over ``ana``'s rows, deterministic on one database;
    partitioned by the shard key (each partition on one shard) if ``by_key``."""
    partition = draw(st.sampled_from(KEY_PARTITIONS if by_key else PARTITIONS))
    kind = draw(st.integers(0, 3))
    if kind == 0:
        function = draw(st.sampled_from(RANKING))
        spec = draw(_sort(total=draw(st.booleans())))
    elif kind == 1:
        function = draw(st.sampled_from(NUMBERING + OFFSETS))
        spec = draw(_sort(total=True))
        if function.startswith(("first_value", "nth_value", "last_value")) and draw(st.booleans()):
            spec += " " + draw(st.sampled_from(ROW_FRAMES))
    else:
        function = draw(st.sampled_from(WINDOW_AGGREGATES))
        frame = draw(st.integers(0, 4))
        if frame == 0:
            spec = ""  # the whole partition
        elif frame == 1:
            spec = draw(_sort(total=draw(st.booleans())))  # RANGE up to the last peer
        elif frame == 2:
            spec = draw(_sort(total=draw(st.booleans()))) + " " + draw(st.sampled_from(PEER_FRAMES))
        elif frame == 3:
            spec = draw(_sort(total=True)) + " " + draw(st.sampled_from(ROW_FRAMES))
        else:
            key = draw(st.sampled_from(sorted(RANGE_OFFSETS)))
            spec = f"ORDER BY {key}{_direction(draw)} {RANGE_OFFSETS[key]}"
    inside = " ".join(part for part in (partition, spec) if part)
    return f"{function} OVER ({inside})"


@st.composite
def window_queries(draw: st.DrawFn) -> Query:
    """Window functions over rows, over groups, filtered outside (top n per group) or grouped."""
    where = draw(_where())
    variant = draw(st.integers(0, 6))
    if variant == 0:  # over groups: windows of aggregates
        key = draw(st.sampled_from(["c", "g", "d"]))
        aggregate = draw(st.sampled_from(["sum(x)", "count(*)", "max(ts)", "avg(q)"]))
        function = draw(st.sampled_from(["rank()", "dense_rank()", "row_number()", "sum(count(*))",
                                         "lag(sum(q))", "avg(sum(x))"]))  # fmt: skip
        inner = f"ORDER BY {aggregate}{_direction(draw)}, {key}"
        if function.startswith("sum(") and draw(st.booleans()):
            inner = ""
        sql = (f"SELECT {key}, {aggregate}, {function} OVER ({inner}) FROM ana{where} "
               f"GROUP BY {key}")  # fmt: skip
        return draw(_ordered(sql, 3, "window over groups"))
    if variant == 1:  # top n per group
        partition = draw(st.sampled_from(["c", "g", "d", "id", "c, g"]))
        function = draw(st.sampled_from(["row_number()", "rank()", "dense_rank()"]))
        spec = draw(_sort(total=function == "row_number()"))
        n = draw(st.integers(1, 3))
        sql = (f"SELECT * FROM (SELECT id, c, g, x, {function} OVER (PARTITION BY {partition} "
               f"{spec}) AS r FROM ana{where}) s WHERE r <= {n}")  # fmt: skip
        return draw(_ordered(sql, 5, "top n per group"))
    if variant == 2:  # a window in a CTE, grouped outside
        partition = draw(st.sampled_from(["c", "g", "d", "id"]))
        function = draw(st.sampled_from(["row_number()", "rank()", "dense_rank()"]))
        spec = draw(_sort(total=function == "row_number()"))
        key = draw(st.sampled_from(["c", "g"]))
        sql = (f"WITH r AS (SELECT id, c, g, x, {function} OVER (PARTITION BY {partition} "
               f"{spec}) AS rk FROM ana{where}) SELECT {key}, count(*), sum(x), max(rk) FROM r "
               f"WHERE rk <= 2 GROUP BY {key}")  # fmt: skip
        return draw(_ordered(sql, 4, "window in a CTE"))
    columns = draw(st.lists(st.sampled_from(COLUMNS), max_size=3, unique=True))
    # Windows partitioned by the key are merged (each shard computes its own partitions),
    # the others gathered: a third of the queries have only the former.
    by_key = draw(st.integers(0, 2)) == 0
    windows = draw(st.lists(window_term(by_key), min_size=1, max_size=3))
    named = ""
    if draw(st.integers(0, 3)) == 0:  # a named window, used as is or with a frame
        named = f" WINDOW w AS ({draw(st.sampled_from(PARTITIONS[1:]))} {draw(_sort(total=True))})"
        windows += draw(st.lists(st.sampled_from(NAMED_WINDOWS), min_size=1, max_size=2))
    # (Not over averages: of two equal ones written with other scales, which one DISTINCT
    # keeps depends on the plan.)
    averages = any("avg(" in w for w in windows)
    distinct = "DISTINCT " if not averages and draw(st.integers(0, 4)) == 0 else ""
    sql = f"SELECT {distinct}{', '.join(columns + windows)} FROM ana{where}{named}"
    return draw(_ordered(sql, len(columns) + len(windows), "window"))


# ----------------------------------------------------------------------------- aggregates

ORDERED_AGGREGATES = [
    "string_agg(g, ',' ORDER BY g)", "string_agg(DISTINCT g, ',' ORDER BY g)",
    "string_agg(g, '' ORDER BY g DESC NULLS FIRST)", "string_agg(x::text, ';' ORDER BY x, id)",
    "string_agg(DISTINCT x::text, ',' ORDER BY x::text)", "array_agg(x ORDER BY x)",
    "array_agg(DISTINCT c ORDER BY c)", "array_agg(g ORDER BY id DESC)",
    "array_agg(ts ORDER BY ts NULLS FIRST)", "array_agg(DISTINCT d ORDER BY d DESC)",
    "string_agg(g || ':' || q, ',' ORDER BY q, id) FILTER (WHERE q > 0)",
]  # fmt: skip
PERCENTILES = [
    "percentile_cont(0.5) WITHIN GROUP (ORDER BY x)",
    "percentile_cont(0.25) WITHIN GROUP (ORDER BY q DESC)",
    "percentile_disc(0.5) WITHIN GROUP (ORDER BY x)",
    "percentile_disc(0.9) WITHIN GROUP (ORDER BY ts)",
    "percentile_cont(ARRAY[0.1, 0.5, 0.9]) WITHIN GROUP (ORDER BY q)",
    "percentile_disc(0) WITHIN GROUP (ORDER BY d)",
    "percentile_cont(0.5) WITHIN GROUP (ORDER BY ts - TIMESTAMPTZ '2024-02-28 00:00+00')",
    "mode() WITHIN GROUP (ORDER BY c)",
]
STATISTICS = [
    "stddev(x)", "variance(q)", "stddev_pop(x)", "var_samp(x)", "var_pop(q)", "stddev_samp(q)",
    "stddev(DISTINCT q)", "variance(x) FILTER (WHERE c > 0)", "round(stddev(x), 3)",
]  # fmt: skip
DATETIME = [
    "max(ts) - min(ts)", "max(d) - min(d)", "max(ts) + interval '1 day'",
    "min(ts) - interval '90 minutes'", "min(d) + 7", "max(d) - 1", "date_trunc('day', max(ts))",
    "EXTRACT(epoch FROM max(ts) - min(ts))", "max(ts)::date - min(d)", "EXTRACT(hour FROM min(ts))",
    "min(d) + interval '1 hour'", "age(max(ts), min(ts))", "max(ts) > '2024-02-29 12:00'",
]  # fmt: skip
PLAIN = ["count(*)", "sum(x)", "avg(q)", "min(g)", "max(x)", "count(DISTINCT c)", "sum(q)"]
HAVINGS = [
    "min(ts) < '2024-02-29 06:00'", "max(d) >= '2024-03-01'",
    "max(ts) - min(ts) > interval '1 day'", "count(*) > 1", "stddev(x) > 10",
    "percentile_cont(0.5) WITHIN GROUP (ORDER BY x) > 0", "string_agg(g, '' ORDER BY g) LIKE '%a%'",
    "max(d) - min(d) >= 2", "min(ts) + interval '12 hours' < max(ts)",
    "min(d) < DATE '2024-02-28'",
]  # fmt: skip
GROUP_KEYS = ["c", "g", "d", "id", "q % 2", "date_trunc('day', ts)"]


@st.composite
def aggregate_queries(draw: st.DrawFn) -> Query:
    """Groups (or one; or grouping sets) with ordered aggregates, percentiles, statistics and
    date arithmetic."""
    keys = draw(st.lists(st.sampled_from(GROUP_KEYS), max_size=2, unique=True))
    # Statistics and date arithmetic merge directly; ordered aggregates and percentiles gather.
    family = draw(st.sampled_from([ORDERED_AGGREGATES, PERCENTILES, STATISTICS, STATISTICS,
                                   DATETIME, DATETIME, PLAIN]))  # fmt: skip
    aggregates = draw(st.lists(st.sampled_from(family), min_size=1, max_size=2, unique=True))
    aggregates += draw(st.lists(st.sampled_from(PLAIN + STATISTICS + DATETIME), max_size=1))
    grouping = ""
    if keys:
        grouping = ", ".join(keys)
        kind = draw(st.integers(0, 7))
        if kind == 0:
            grouping = f"ROLLUP ({grouping})"
        elif kind == 1:
            grouping = f"CUBE ({grouping})"
        elif kind == 2:
            grouping = f"GROUPING SETS (({grouping}), ({keys[-1]}), ())"
        if kind <= 2 and draw(st.booleans()):
            aggregates.append(f"grouping({keys[0]})")
    sql = f"SELECT {', '.join(keys + aggregates)} FROM ana{draw(_where())}"
    if keys:
        sql += f" GROUP BY {grouping}"
    if draw(st.booleans()):
        sql += " HAVING " + draw(st.sampled_from(HAVINGS))
    return draw(_ordered(sql, len(keys) + len(aggregates), "aggregates", ties=False))


# ----------------------------------------------------------------------------- DISTINCT ON

# With the key among them, each set of rows is on one shard: merged; else gathered.
DISTINCT_ON = [["c"], ["g"], ["c", "g"], ["id"], ["d"], ["q % 2"], ["c", "id"], ["id", "g"]]


@st.composite
def distinct_on_queries(draw: st.DrawFn) -> Query:
    """DISTINCT ON a set of expressions, the row kept fixed by the ORDER BY after them."""
    on = draw(st.sampled_from(DISTINCT_ON))
    shown = draw(st.lists(st.sampled_from(["id", "x", "q", "ts", "g"]), min_size=1, max_size=3,
                          unique=True))  # fmt: skip
    leading = [f"{e}{_direction(draw)}" for e in on]
    picks = draw(st.lists(st.sampled_from(["x", "q", "ts", "d", "g"]), max_size=2, unique=True))
    tail = [f"{e}{_direction(draw)}" for e in picks] + [f"id{draw(st.sampled_from(['', ' DESC']))}"]
    sql = (f"SELECT DISTINCT ON ({', '.join(on)}) {', '.join(on + shown)} FROM ana"
           f"{draw(_where())} ORDER BY {', '.join(leading + tail)}{draw(suffix())}")  # fmt: skip
    return Query(sql, "DISTINCT ON")


# ----------------------------------------------------------------------------- set operations

BRANCHES = {
    "int": [
        "SELECT c FROM ana", "SELECT q FROM ana WHERE x > 0", "SELECT c FROM anb",
        "SELECT c FROM ana GROUP BY c", "SELECT count(*) FROM ana GROUP BY g",
        "(SELECT c FROM ana ORDER BY c NULLS LAST, id LIMIT 3)", "SELECT id FROM anb",
        "SELECT c FROM w", "SELECT 2",
    ],
    "int, text": [
        "SELECT c, g FROM ana", "SELECT c, g FROM anb WHERE x < 0",
        "SELECT c, min(g) FROM ana GROUP BY c", "SELECT id % 3, g FROM ana", "SELECT c, g FROM w",
        "SELECT q, g FROM ana WHERE d > '2024-02-28'",
        "(SELECT c, g FROM anb ORDER BY id DESC LIMIT 4)",
        "SELECT length(code), name FROM labels", "SELECT 1, code FROM labels WHERE code < 'b'",
    ],
    "date": [
        "SELECT d FROM ana", "SELECT min(d) FROM ana GROUP BY c", "SELECT ts::date FROM ana",
        "SELECT DATE '2024-02-29'", "SELECT d FROM ana WHERE q > 0",
    ],
    "numeric": [
        "SELECT x FROM ana", "SELECT x FROM anb", "SELECT round(avg(x), 2) FROM ana GROUP BY c",
        "SELECT sum(x) FROM anb GROUP BY g", "SELECT x FROM ana WHERE c = 1",
        "SELECT max(x) FROM anb",
    ],
}  # fmt: skip
SET_OPERATIONS = [
    f"{op}{every}" for op in ("UNION", "INTERSECT", "EXCEPT") for every in ("", " ALL")
]
CTE = "WITH w AS (SELECT c, g FROM ana WHERE x > 0) "


@st.composite
def set_queries(draw: st.DrawFn) -> Query:
    """Two or three branches of one column signature under random set operations.

    A branch reads ``ana``, ``anb``, the reference table ``labels``, a CTE or
    nothing; groups across shards, or has its own ORDER BY and LIMIT.
    """
    signature = draw(st.sampled_from(sorted(BRANCHES)))
    # Plain reads of distributed or reference tables are merged by counting rows per branch;
    # a branch that groups, has a LIMIT or reads a CTE is gathered: two in three are plain.
    pool = BRANCHES[signature]
    plain = [b for b in pool if not re.search(r"GROUP BY|LIMIT| w\b", b)]
    branches = [
        draw(st.sampled_from(plain if draw(st.integers(0, 2)) else pool))
        for _ in range(draw(st.integers(2, 3)))
    ]
    operations = [draw(st.sampled_from(SET_OPERATIONS)) for _ in branches[1:]]
    if len(branches) == 3 and draw(st.booleans()):  # A op (B op C): the parentheses decide
        sql = f"{branches[0]} {operations[0]} ({branches[1]} {operations[1]} {branches[2]})"
    else:
        pairs = zip(operations, branches[1:], strict=True)
        sql = branches[0] + "".join(f" {o} {b}" for o, b in pairs)
    if " w" in sql:
        sql = CTE + sql
    width = signature.count(",") + 1
    return draw(_ordered(sql, width, "set operation"))


# ----------------------------------------------------------------------------- correlated

CONDITIONS = [
    "t.x < (SELECT avg(t2.x) FROM ana t2 WHERE t2.c = t.c)",
    "t.x >= (SELECT 0.5 * avg(x) FROM ana t2 WHERE t2.g = t.g)",
    "t.q > (SELECT min(b.c) FROM anb b WHERE b.g = t.g)",
    "EXISTS (SELECT 1 FROM anb b WHERE b.c = t.c)",
    "NOT EXISTS (SELECT 1 FROM anb b WHERE b.c = t.c AND b.x > t.x)",
    "EXISTS (SELECT 1 FROM ana t2 WHERE t2.g = t.g AND t2.id <> t.id)",
    "t.c IN (SELECT b.c FROM anb b WHERE b.x > 0)",
    "t.c NOT IN (SELECT b.c FROM anb b WHERE b.c IS NOT NULL)",
    "t.c NOT IN (SELECT b.c FROM anb b)",
    "t.g IN (SELECT b.g FROM anb b WHERE b.c = t.c)",
    "t.g NOT IN (SELECT t2.g FROM ana t2 WHERE t2.q > t.q AND t2.g IS NOT NULL)",
    "t.d = (SELECT max(t2.d) FROM ana t2 WHERE t2.c = t.c)",
    "t.x > ALL (SELECT b.x FROM anb b WHERE b.c = t.c)",
    "t.q = ANY (SELECT t2.c FROM ana t2 WHERE t2.g = t.g)",
]
# HAVING with a subquery correlated on the group key (of ``ana t``)
CORRELATED_HAVINGS = {
    "t.c": "count(*) >= (SELECT count(*) FROM anb b WHERE b.c = t.c)",
    "t.g": "max(t.x) > ALL (SELECT b.x FROM anb b WHERE b.g = t.g AND b.x IS NOT NULL)",
    "t.d": "NOT EXISTS (SELECT 1 FROM ana t2 WHERE t2.d = t.d + 1)",
}
SCALARS = [
    "(SELECT count(*) FROM anb b WHERE b.c = t.c)",
    "(SELECT max(b.x) FROM anb b WHERE b.g = t.g)",
    "(SELECT string_agg(b.g, ',' ORDER BY b.g) FROM anb b WHERE b.c = t.c)",
]


@st.composite
def correlated_queries(draw: st.DrawFn) -> Query:
    """Rows or groups of ``ana t`` filtered by subqueries correlated on non-key columns."""
    terms = draw(st.lists(st.sampled_from(CONDITIONS), min_size=1, max_size=2, unique=True))
    where = f" {draw(st.sampled_from(['AND', 'OR']))} ".join(terms)
    if draw(st.integers(0, 2)) == 0:
        where = f"({where}) AND ({draw(_filter('t'))})"
    if draw(st.integers(0, 2)) == 0:
        key = draw(st.sampled_from(["t.c", "t.g", "t.d"]))
        aggregates = draw(st.lists(st.sampled_from(["count(*)", "sum(t.x)", "max(t.ts)",
                                                    "avg(t.q)"]), min_size=1, max_size=2,
                                   unique=True))  # fmt: skip
        sql = f"SELECT {key}, {', '.join(aggregates)} FROM ana t WHERE {where} GROUP BY {key}"
        if draw(st.booleans()):
            sql += f" HAVING {CORRELATED_HAVINGS[key]}"
        return draw(_ordered(sql, 1 + len(aggregates), "correlated, grouped"))
    columns = draw(st.lists(st.sampled_from(["t.id", "t.c", "t.g", "t.x", "t.d"]), min_size=1,
                            max_size=3, unique=True))  # fmt: skip
    columns += draw(st.lists(st.sampled_from(SCALARS), max_size=1))
    sql = f"SELECT {', '.join(columns)} FROM ana t WHERE {where}"
    return draw(_ordered(sql, len(columns), "correlated"))


# ----------------------------------------------------------------------------- joins

JOINS = [
    "ana a JOIN anb b ON b.c = a.c", "ana a LEFT JOIN anb b ON b.c = a.c AND b.x > a.x",
    "ana a JOIN anb b ON b.id = a.id", "ana a FULL JOIN anb b ON b.id = a.id AND b.g = a.g",
    "ana a JOIN anb b ON b.g = a.g AND b.c <> a.c", "anb b RIGHT JOIN ana a ON a.q = b.c",
    "ana a CROSS JOIN LATERAL (SELECT b.id, b.x FROM anb b WHERE b.c = a.c "
    "ORDER BY b.x NULLS LAST, b.id LIMIT 1) b",
    "ana a LEFT JOIN LATERAL (SELECT b.id, b.x FROM anb b WHERE b.g = a.g "
    "ORDER BY b.id DESC LIMIT 2) b ON true",
]  # fmt: skip
JOIN_OUTPUTS = [
    ["a.id", "b.id"], ["a.id", "b.x", "a.x"],
    ["a.c", "count(*)", "sum(b.x)"], ["a.g", "count(b.id)", "max(a.ts)"],
    ["a.id", "b.id", "rank() OVER (PARTITION BY a.c ORDER BY b.x, a.id, b.id)"],
    ["a.id", "b.id", "count(*) OVER (PARTITION BY b.id)"],
]  # fmt: skip


@st.composite
def join_queries(draw: st.DrawFn) -> Query:
    """Joins of ``ana`` and ``anb`` (not co-located: on other columns, or on ``id`` without
    ``colocate_with``), LATERAL subqueries, with groups or windows over them."""
    source = draw(st.sampled_from(JOINS))
    outputs = draw(st.sampled_from(JOIN_OUTPUTS))
    where = f" WHERE {draw(_filter('a'))}" if draw(st.booleans()) else ""
    sql = f"SELECT {', '.join(outputs)} FROM {source}{where}"
    if outputs[1].startswith("count(") or outputs[1].startswith("sum("):
        sql += f" GROUP BY {outputs[0]}"
    return draw(_ordered(sql, len(outputs), "join"))


@st.composite
def queries(draw: st.DrawFn) -> Query:
    """A read of one of the shapes above (see the module docstring), with its parameters."""
    query = draw(
        st.one_of(
            window_queries(),
            aggregate_queries(),
            distinct_on_queries(),
            set_queries(),
            correlated_queries(),
            join_queries(),
        )
    )
    return bound(query, lambda name: draw(st.sampled_from(PARAM_VALUES[name])))


def bound(query: Query, value: Callable[[str], Any]) -> Query:
    """``query`` with a value for each ``%(name)s`` it holds, its other ``%`` written ``%%``.

    psycopg reads ``%`` as a placeholder's start only when parameters are
    given, so that the SQL of a query without any is left as it is.
    """
    names = re.findall(r"%\((\w+)\)s", query.sql)
    if not names:
        return query
    sql = re.sub(r"%(?!\()", "%%", query.sql)
    return replace(query, sql=sql, params={name: value(name) for name in dict.fromkeys(names)})
