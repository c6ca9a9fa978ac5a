"""Each analytic construct once, over fixed rows, and the outcome of comparing an answer.

:func:`constructs` writes every entry of :mod:`.pg_analytics`' pools into a
plain query, for :func:`fixed_rows`: where the random queries may leave an
entry undrawn, these draw each one.

:func:`outcome` runs one query and says what happened: ``same``, ``refused``
(``UnsupportedQueryError``, with its construct and reason), ``differ`` (the
description or the rows, with how), ``error`` (any other exception from
shardq) or ``invalid`` (the single node fails: a query the generator should
not draw).
"""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import psycopg

import shardq
from tests.differential.compare import same_rows, single_node
from tests.differential.pg_analytics import (
    BASE_DATE,
    BASE_TS,
    BRANCHES,
    CONDITIONS,
    CORRELATED_HAVINGS,
    CTE,
    DATETIME,
    DISTINCT_ON,
    GROUP_KEYS,
    HAVINGS,
    JOINS,
    NAMED_WINDOWS,
    NUMBERING,
    OFFSETS,
    ORDERED_AGGREGATES,
    PARAM_FILTERS,
    PARAM_VALUES,
    PARTITIONS,
    PEER_FRAMES,
    PERCENTILES,
    PLAIN,
    RANGE_OFFSETS,
    RANKING,
    ROW_FRAMES,
    SCALARS,
    SET_OPERATIONS,
    STATISTICS,
    TEXTS,
    WINDOW_AGGREGATES,
    Query,
    bound,
)

if TYPE_CHECKING:
    from tests.fixtures.edge import Edge


def fixed_rows() -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """40 rows of ``ana`` and 12 of ``anb`` like those drawn, the same on every run."""
    rng = random.Random(17)

    def maybe(value: Any) -> Any:
        return None if rng.random() < 0.15 else value

    def number() -> Decimal:
        return Decimal(rng.randint(-9999, 9999)).scaleb(-2)

    ana = [
        (i, maybe(rng.randint(0, 3)), rng.choice(TEXTS), maybe(number()),
         maybe(rng.randint(-5, 5)), maybe(BASE_TS + dt.timedelta(hours=rng.randint(-50, 50))),
         maybe(BASE_DATE + dt.timedelta(days=rng.randint(0, 6))))
        for i in range(1, 41)
    ]  # fmt: skip
    anb = [(i, maybe(rng.randint(0, 4)), rng.choice(TEXTS), maybe(number())) for i in range(1, 13)]
    return ana, anb


def constructs() -> list[Query]:
    """Each construct of the pools above once, in a plain query (for a fixed dataset).

    Where the random queries may leave a pool's entry undrawn, this draws
    every one: each window function (partitions in turn), partition, frame,
    named window, aggregate, grouping set, HAVING, DISTINCT ON, set operation
    branch and operation, filter with a parameter, join, and correlated
    condition.
    """
    found: list[Query] = []
    functions = RANKING + NUMBERING + OFFSETS + WINDOW_AGGREGATES
    for i, function in enumerate(functions):
        partition = PARTITIONS[i % len(PARTITIONS)]
        sql = f"SELECT id, {function} OVER ({partition} ORDER BY x, id) FROM ana ORDER BY 1, 2"
        found.append(Query(sql, "window"))
    for partition in PARTITIONS:
        sql = f"SELECT id, sum(q) OVER ({partition}) FROM ana ORDER BY 1"
        found.append(Query(sql, "window"))
    for frame in PEER_FRAMES:
        sql = f"SELECT id, sum(x) OVER (PARTITION BY c ORDER BY q {frame}) FROM ana ORDER BY 1"
        found.append(Query(sql, "window"))
    for frame in ROW_FRAMES:
        sql = f"SELECT id, avg(q) OVER (ORDER BY g, id {frame}) FROM ana ORDER BY 1"
        found.append(Query(sql, "window"))
    for key, frame in RANGE_OFFSETS.items():
        sql = f"SELECT id, count(*) OVER (PARTITION BY g ORDER BY {key} {frame}) FROM ana"
        sql += " ORDER BY 1"
        found.append(Query(sql, "window"))
    pool = ORDERED_AGGREGATES + PERCENTILES + STATISTICS + DATETIME + PLAIN
    for i, aggregate in enumerate(pool):
        key = GROUP_KEYS[i % len(GROUP_KEYS)]
        sql = f"SELECT {key}, {aggregate} FROM ana GROUP BY {key} ORDER BY 1, 2"
        found.append(Query(sql, "aggregates"))
    for having in HAVINGS:
        sql = f"SELECT c, count(*) FROM ana GROUP BY c HAVING {having} ORDER BY 1, 2"
        found.append(Query(sql, "aggregates"))
    for on in DISTINCT_ON:
        sql = (f"SELECT DISTINCT ON ({', '.join(on)}) {', '.join(on)}, id FROM ana "
               f"ORDER BY {', '.join(on)}, x DESC, id")  # fmt: skip
        found.append(Query(sql, "DISTINCT ON"))
    for branches in BRANCHES.values():
        width = branches[0].count(",") + 1
        order = " ORDER BY " + ", ".join(str(i + 1) for i in range(width))
        for branch in branches[1:]:
            sql = f"{branches[0]} UNION ALL {branch}{order}"
            found.append(Query(CTE + sql if " w" in sql else sql, "set operation"))
        for operation in SET_OPERATIONS:
            sql = f"{branches[0]} {operation} {branches[1]}{order} LIMIT 5"
            found.append(Query(sql, "set operation"))
    for i, condition in enumerate(PARAM_FILTERS):

        def value(name: str, i: int = i) -> Any:  # the filters' values in turn
            return PARAM_VALUES[name][i % len(PARAM_VALUES[name])]

        window = (f"SELECT id, rank() OVER (PARTITION BY c ORDER BY x) FROM ana "
                  f"WHERE {condition} ORDER BY 1 LIMIT %(pl)s")  # fmt: skip
        grouped = (f"SELECT g, string_agg(g, '%' ORDER BY id) FROM ana WHERE {condition} "
                   "GROUP BY g HAVING g NOT LIKE '%b%' ORDER BY 1")  # fmt: skip
        found += [bound(Query(window, "window"), value), bound(Query(grouped, "aggregates"), value)]
    for named in NAMED_WINDOWS:
        sql = f"SELECT id, {named} FROM ana WINDOW w AS (PARTITION BY g ORDER BY d, id) ORDER BY 1"
        found.append(Query(sql, "window"))
    for keys, grouping in [("c, g", "ROLLUP (c, g)"), ("c, d", "CUBE (c, d)"),
                           ("c, g", "GROUPING SETS ((c), (g), ())")]:  # fmt: skip
        sql = (f"SELECT {keys}, grouping(c), count(*), string_agg(g, ',' ORDER BY g) FROM ana "
               f"GROUP BY {grouping} ORDER BY 1, 2, 3, 4, 5")  # fmt: skip
        found.append(Query(sql, "aggregates"))
    for source in JOINS:
        sql = f"SELECT a.id, b.id FROM {source} ORDER BY 1, 2"
        found.append(Query(sql, "join"))
    for key, having in CORRELATED_HAVINGS.items():
        sql = f"SELECT {key}, count(*) FROM ana t GROUP BY {key} HAVING {having} ORDER BY 1, 2"
        found.append(Query(sql, "correlated, grouped"))
    for condition in CONDITIONS:
        sql = f"SELECT t.id FROM ana t WHERE {condition} ORDER BY 1"
        found.append(Query(sql, "correlated"))
    for scalar in SCALARS:
        sql = f"SELECT t.id, {scalar} FROM ana t ORDER BY 1"
        found.append(Query(sql, "correlated"))
    return found


@dataclass(frozen=True)
class Outcome:
    """What happened to one query: ``kind`` and, but for ``same``, a short ``detail``."""

    kind: str  # same, refused, differ, error, invalid
    detail: str = ""


def outcome(conn: shardq.Connection, edge: Edge, query: Query, **options: Any) -> Outcome:
    """Run ``query`` through shardq (with ``options``, e.g. ``max_gather_rows``) and on
    the single node, and classify the result."""
    try:
        want_description, want = single_node(edge.dsn, query.sql, query.params)
    except psycopg.Error as error:  # a query the generator should not draw
        return Outcome("invalid", f"on the single node: {error}")
    try:
        cur = conn.execute(query.sql, query.params, **options)
        got = cur.fetchall()
    except shardq.UnsupportedQueryError as refusal:
        return Outcome("refused", f"{refusal.construct}: {refusal.reason}")
    except shardq.Error as error:
        return Outcome("error", f"{type(error).__name__}: {error}")
    assert cur.description is not None
    got_description = [(d.name, d.type_code) for d in cur.description]
    if got_description != want_description:
        return Outcome("differ", f"description {got_description} != {want_description}")
    try:
        same_rows(got, want, query.ordered)
    except AssertionError as difference:
        return Outcome("differ", str(difference))
    return Outcome("same")
